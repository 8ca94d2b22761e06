"""Root exception of the dicom_node package and its named subclasses."""

from __future__ import annotations


class DicomNodeError(Exception):
    """Base class of every error raised by dicom_node."""


class ConfigError(DicomNodeError):
    """A node configuration value breaks a rule (raised at construction, before listening)."""


class InvalidUidError(DicomNodeError):
    """A received UID is not a valid DICOM UID and must not become a path component."""


class SpoolPathError(DicomNodeError):
    """A spool path would resolve outside the spool root."""


class DeliveryError(DicomNodeError):
    """Sending to a remote node failed: connection, association or a failure status."""


class RuleError(DicomNodeError):
    """A series-matching rule is malformed; the message names the path inside the spec."""
