"""Root exception of the dicom_node package."""

from __future__ import annotations


class DicomNodeError(Exception):
    """Base class of every error raised by dicom_node."""
