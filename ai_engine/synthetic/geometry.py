"""Shape primitives for the phantoms: coordinate grids in mm, and shapes drawn inside a bounding box.

Drawing only inside the bounding box of a small shape keeps a 300x512x512 phantom fast.
"""

from __future__ import annotations

import numpy as np


def axis_mm(n: int, spacing: float) -> np.ndarray:
    """Centre-relative coordinates (mm) of ``n`` samples along one axis."""
    return ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * spacing).astype(np.float32)


def grid_3d(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Broadcastable (z, y, x) coordinate arrays in mm, centred on the volume."""
    z = axis_mm(shape[0], spacing[0])[:, None, None]
    y = axis_mm(shape[1], spacing[1])[None, :, None]
    x = axis_mm(shape[2], spacing[2])[None, None, :]
    return z, y, x


def to_voxel(point_mm: tuple[float, ...], shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[float, ...]:
    """Centre-relative mm -> voxel index coordinates (inverse of ``axis_mm``)."""
    return tuple(p / s + (n - 1) / 2.0 for p, n, s in zip(point_mm, shape, spacing, strict=True))


def _box(center_mm: tuple[float, ...], reach_mm: float, shape: tuple[int, ...],
         spacing: tuple[float, ...]) -> tuple[slice, ...]:
    """Index slices covering ``reach_mm`` around ``center_mm``."""
    center = to_voxel(center_mm, shape, spacing)
    slices = []
    for c, n, s in zip(center, shape, spacing, strict=True):
        half = reach_mm / s + 1
        slices.append(slice(max(int(np.floor(c - half)), 0), min(int(np.ceil(c + half)) + 1, n)))
    return tuple(slices)


def _box_coords(box: tuple[slice, ...], shape: tuple[int, ...], spacing: tuple[float, ...]) -> list[np.ndarray]:
    """Broadcastable mm coordinates of the voxels inside ``box``."""
    coords = []
    ndim = len(shape)
    for axis, (sl, n, s) in enumerate(zip(box, shape, spacing, strict=True)):
        values = ((np.arange(sl.start, sl.stop, dtype=np.float32) - (n - 1) / 2.0) * s).astype(np.float32)
        view = [1] * ndim
        view[axis] = values.size
        coords.append(values.reshape(view))
    return coords


def ellipsoid_fraction(shape: tuple[int, ...], spacing: tuple[float, ...], center_mm: tuple[float, ...],
                       radii_mm: tuple[float, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
    """Partial-volume occupancy (0..1) of an axis-aligned ellipsoid/ellipse inside its bounding box."""
    box = _box(center_mm, max(radii_mm) + 1.0, shape, spacing)
    coords = _box_coords(box, shape, spacing)
    rho = np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip(coords, center_mm, radii_mm, strict=True)))
    # Distance from the surface in mm (approximate): positive inside.
    depth = (1.0 - rho) * float(np.mean(radii_mm))
    edge = 0.5 * float(min(spacing))
    return box, np.clip(depth / (2 * edge) + 0.5, 0.0, 1.0).astype(np.float32)


def tube_fraction(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                  start_mm: np.ndarray, end_mm: np.ndarray, radius_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """Partial-volume occupancy of a straight cylinder with rounded ends between two points."""
    mid = tuple(float(v) for v in (start_mm + end_mm) / 2.0)
    reach = float(np.linalg.norm(end_mm - start_mm)) / 2.0 + radius_mm + 1.0
    box = _box(mid, reach, shape, spacing)
    z, y, x = _box_coords(box, shape, spacing)
    seg = end_mm - start_mm
    length2 = float(seg @ seg)
    t = ((z - start_mm[0]) * seg[0] + (y - start_mm[1]) * seg[1] + (x - start_mm[2]) * seg[2]) / length2
    t = np.clip(t, 0.0, 1.0)
    dist = np.sqrt((z - start_mm[0] - t * seg[0]) ** 2 + (y - start_mm[1] - t * seg[1]) ** 2
                   + (x - start_mm[2] - t * seg[2]) ** 2)
    edge = 0.5 * float(min(spacing))
    return box, np.clip((radius_mm - dist) / (2 * edge) + 0.5, 0.0, 1.0).astype(np.float32)


def paint(volume: np.ndarray, box: tuple[slice, ...], fraction: np.ndarray, value: float) -> None:
    """Blend ``value`` into ``volume`` by occupancy ``fraction`` (in place)."""
    region = volume[box]
    region += fraction * (value - region)
