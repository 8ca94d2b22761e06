"""Root exception of the ai_engine package."""

from __future__ import annotations


class AiEngineError(Exception):
    """Base class of every error raised by ai_engine."""
