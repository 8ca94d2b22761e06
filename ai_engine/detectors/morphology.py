"""Fast slice-wise mask operations for CT volumes (numpy + scipy.ndimage only)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def outside_per_slice(free: np.ndarray) -> np.ndarray:
    """Voxels of ``free`` connected, within their slice, to the slice border.

    One labelling pass instead of ``binary_fill_holes``' iterated dilation, which is slow on
    300x512x512 volumes.
    """
    labels, _ = ndimage.label(free, structure=IN_PLANE)
    border = np.zeros(free.shape, dtype=bool)
    border[:, 0, :] = border[:, -1, :] = border[:, :, 0] = border[:, :, -1] = True
    touching = np.unique(labels[border & free])
    touching = touching[touching > 0]
    return np.isin(labels, touching)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every in-slice hole filled."""
    return ~outside_per_slice(~mask)


def dilate_in_plane(mask: np.ndarray, radius_mm: float, pixel_mm: float) -> np.ndarray:
    """Dilate each slice by about ``radius_mm`` (no growth across slices)."""
    iterations = max(int(round(radius_mm / pixel_mm)), 1)
    return ndimage.binary_dilation(mask, structure=IN_PLANE, iterations=iterations)


def components(mask: np.ndarray) -> tuple[np.ndarray, list[tuple[slice, ...]]]:
    """3-D (6-connected) labels and the bounding box of each label (index i is label i + 1)."""
    labels, _ = ndimage.label(mask)
    return labels, ndimage.find_objects(labels)
