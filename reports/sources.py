"""Picking the source image a finding lies on, with range checks that name the finding."""

from __future__ import annotations

from collections.abc import Sequence

import pydicom

from ai_engine.results import Finding
from reports.errors import ReportsError


def view_of(views: Sequence[pydicom.Dataset], index: int, finding: Finding) -> pydicom.Dataset:
    """The mammography view that finding ``index`` lies on."""
    if not 0 <= finding.view_index < len(views):
        raise ReportsError(
            f"finding {index}: view_index must address one of {len(views)} views, got {finding.view_index}"
        )
    return views[finding.view_index]


def slice_of(slices: Sequence[pydicom.Dataset], index: int, z: float) -> pydicom.Dataset:
    """The CT slice nearest to voxel coordinate ``z`` of finding ``index``."""
    position = int(round(z))
    if not 0 <= position < len(slices):
        raise ReportsError(f"finding {index}: center z must lie within {len(slices)} slices, got {z}")
    return slices[position]
