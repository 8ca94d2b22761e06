"""Root exception of the radfusion package."""

from __future__ import annotations


class RadfusionError(Exception):
    """Base class of every error raised by radfusion."""
