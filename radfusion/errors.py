"""Root exception of the radfusion package."""

from __future__ import annotations


class RadfusionError(Exception):
    """Base class of every error raised by radfusion."""


class ConfigError(RadfusionError):
    """The configuration is invalid; the message names each bad key and the reason."""
