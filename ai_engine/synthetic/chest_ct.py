"""Chest CT phantom: body with a fat layer, lungs, mediastinum, spine, ribs, vessels, optional nodule.

Vessels are straight tubes fanning out from each hilum: elongated soft-tissue structures in
the lung, the mimic a nodule detector must not report.
"""

from __future__ import annotations

import numpy as np

from ai_engine.errors import SyntheticError
from ai_engine.synthetic.geometry import axis_mm, ellipsoid_fraction, paint, to_voxel, tube_fraction
from ai_engine.synthetic.truth import LesionTruth

CHEST_FOV_MM = 360.0
CHEST_SLICE_MM = 2.5
CHEST_SLICES = 120
NOISE_HU = 12.0
LUNG_HU = -850.0
LUNG_CENTER_Z_MM = 10.0
VESSELS_PER_LUNG = 7


def chest_spacing(rows: int) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x) mm of a chest phantom with ``rows`` rows."""
    pixel = CHEST_FOV_MM / rows
    return (CHEST_SLICE_MM, pixel, pixel)


def make_chest_ct(rng: np.random.Generator, rows: int, slices: int,
                  lesion: bool) -> tuple[np.ndarray, list[LesionTruth]]:
    """HU volume (z, y, x) of a chest, and the truth of the nodule when ``lesion``."""
    shape = (slices, rows, rows)
    spacing = chest_spacing(rows)
    zs = axis_mm(slices, spacing[0])
    y = axis_mm(rows, spacing[1])[:, None]
    x = axis_mm(rows, spacing[2])[None, :]
    body_semi = np.array([115.0, 160.0]) * rng.uniform(0.93, 1.05, size=2)
    body_rho = np.sqrt((y / body_semi[0]) ** 2 + (x / body_semi[1]) ** 2)
    body_depth = (1.0 - body_rho) * float(body_semi.mean())
    lung_semi = np.array([max(140.0, slices * spacing[0] * 0.45), 85.0, 58.0]) * rng.uniform(0.95, 1.05, size=3)
    lung_centers = [(LUNG_CENTER_Z_MM, -5.0, side * 72.0) for side in (-1.0, 1.0)]
    spine = (y - 85.0) ** 2 + x**2 < 18.0**2
    rib_ring = (body_depth > 10.0) & (body_depth < 16.0) & (y > -60.0)
    rib_phase = rng.uniform(0.0, 30.0)

    hu = np.empty(shape, dtype=np.float32)
    base = np.full((rows, rows), -1000.0, dtype=np.float32)
    base[body_depth > 0] = -100.0  # subcutaneous fat
    base[body_depth > 9.0] = 40.0
    base[spine] = 350.0
    for k, z in enumerate(zs):
        plane = base.copy()
        if (z + rib_phase) % 30.0 < 8.0:
            plane[rib_ring] = 500.0
        for cz, cy, cx in lung_centers:
            scale = 1.0 - ((z - cz) / lung_semi[0]) ** 2
            if scale <= 0:
                continue
            r = np.sqrt(scale)
            inside = ((y - cy) / (lung_semi[1] * r)) ** 2 + ((x - cx) / (lung_semi[2] * r)) ** 2 < 1.0
            plane[inside] = LUNG_HU
        hu[k] = plane

    vessels = _add_vessels(hu, rng, spacing, lung_centers, lung_semi)
    truths: list[LesionTruth] = []
    if lesion:
        truths.append(_add_nodule(hu, rng, spacing, lung_centers, lung_semi, vessels))
    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(NOISE_HU)
    return hu, truths


def _add_vessels(hu: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float],
                 lung_centers: list[tuple[float, float, float]],
                 lung_semi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Tubes from each hilum toward random points in the lung; returns (start, end, radius) each."""
    vessels = []
    for cz, cy, cx in lung_centers:
        hilum = np.array([cz, cy + 5.0, np.sign(cx) * 25.0])
        for _ in range(VESSELS_PER_LUNG):
            direction = rng.normal(size=3) * lung_semi * np.array([0.5, 0.6, 0.6])
            end = np.array([cz, cy, cx]) + direction
            radius = float(rng.uniform(1.5, 3.0))
            box, frac = tube_fraction(hu.shape, spacing, hilum, end, radius)
            paint(hu, box, frac, 40.0)
            vessels.append((hilum, end, radius))
    return vessels


def _segment_distance(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    seg = end - start
    t = float(np.clip((point - start) @ seg / (seg @ seg), 0.0, 1.0))
    return float(np.linalg.norm(point - start - t * seg))


def _add_nodule(hu: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float],
                lung_centers: list[tuple[float, float, float]], lung_semi: np.ndarray,
                vessels: list[tuple[np.ndarray, np.ndarray, float]]) -> LesionTruth:
    """A solid 5-20 mm nodule (smaller if the scan is short) well inside one lung, clear of the vessels."""
    half_extent_z = (hu.shape[0] - 1) * spacing[0] / 2.0
    diameter = min(float(rng.uniform(5.0, 20.0)), 2.0 * (half_extent_z - 2.0 * spacing[0]))
    radius = diameter / 2.0
    margin = radius + 8.0
    z_reach = min(half_extent_z - radius - spacing[0], lung_semi[0] - margin)
    for _ in range(200):
        lung = np.array(lung_centers[int(rng.integers(2))])
        z = rng.uniform(-z_reach, z_reach)
        scale = np.sqrt(max(1.0 - ((z - lung[0]) / (lung_semi[0] - margin)) ** 2, 0.0))
        in_plane = rng.uniform(-1.0, 1.0, size=2) * (lung_semi[1:] - margin) * scale
        center = np.array([z, lung[1] + in_plane[0], lung[2] + in_plane[1]])
        inside = float(np.sum((in_plane / ((lung_semi[1:] - margin) * scale + 1e-6)) ** 2)) < 1.0
        clear = all(_segment_distance(center, s, e) > radius + r + 4.0 for s, e, r in vessels)
        if inside and clear:
            break
    else:
        raise SyntheticError(f"no place for a {diameter:.1f} mm nodule found in 200 tries "
                             f"within a {2 * half_extent_z:.0f} mm scan")
    box, frac = ellipsoid_fraction(hu.shape, spacing, tuple(float(c) for c in center), (radius,) * 3)
    paint(hu, box, frac, float(rng.uniform(20.0, 60.0)))
    voxel = to_voxel(tuple(float(c) for c in center), hu.shape, spacing)
    return LesionTruth(kind="nodule", center_voxel=voxel, view_index=0, size=diameter, subtype="solid")
