"""Root exception of the radfusion package."""

from __future__ import annotations


class RadfusionError(Exception):
    """Base class of every error raised by radfusion."""


class MixedPatientError(RadfusionError):
    """The images of one job name more than one patient (a correction still arriving)."""


class ConfigError(RadfusionError):
    """The configuration is invalid; the message names each bad key and the reason."""
