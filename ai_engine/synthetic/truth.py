"""Ground truth of a synthetic lesion, shared by the phantom generators and the study writer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LesionTruth:
    """Ground truth of one lesion.

    ``center_voxel`` is (z, y, x) for CT or (y, x) in the mammography view ``view_index``;
    ``size`` is volume_ml for a hemorrhage, diameter_mm for a nodule or mass, and the
    extent (mm) of a calcification cluster.
    """

    kind: str
    center_voxel: tuple[float, ...]
    view_index: int
    size: float
    subtype: str = ""
