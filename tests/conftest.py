"""Shared fixtures: make the repository importable the same way in every test."""

from __future__ import annotations
