"""Root exception of the reports package."""

from __future__ import annotations


class ReportsError(Exception):
    """Base class of every error raised by reports."""
