"""Root exception of the ai_engine package."""

from __future__ import annotations


class AiEngineError(Exception):
    """Base class of every error raised by ai_engine."""


class SyntheticError(AiEngineError):
    """A synthetic phantom study could not be generated or written as asked."""


class VolumeError(AiEngineError):
    """DICOM files do not form one regular CT volume (or mammography view set) this engine accepts."""


class UnknownDetectorError(AiEngineError):
    """A detector name that the registry does not know."""


class DetectorInputError(AiEngineError):
    """A detector was given input that its task cannot use (e.g. a volume for mammography)."""
