"""Head CT phantom: scalp, skull of varying thickness, grey/white matter, ventricles, optional bleed.

Negatives may carry choroid-plexus and pineal calcifications, the classic hyperdense mimics,
and every head has a faint beam-hardening rim along the inner table.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ai_engine.synthetic.geometry import ellipsoid_fraction, grid_3d, paint
from ai_engine.synthetic.truth import LesionTruth

HEAD_FOV_MM = 240.0
HEAD_SLICE_MM = 5.0
HEAD_SLICES = 40
NOISE_HU = 4.0
VENTRICLE_CENTERS_MM = ((10.0, 2.0, -9.0), (10.0, 2.0, 9.0))  # (z, y, x): y posterior, x patient left
VENTRICLE_RADII_MM = (14.0, 24.0, 6.0)


def head_spacing(rows: int) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x) mm of a head phantom with ``rows`` rows."""
    pixel = HEAD_FOV_MM / rows
    return (HEAD_SLICE_MM, pixel, pixel)


def make_head_ct(rng: np.random.Generator, rows: int, slices: int, lesion: bool) -> tuple[np.ndarray, list[LesionTruth]]:
    """HU volume (z, y, x) of a head, and the truth of the bleed when ``lesion``."""
    shape = (slices, rows, rows)
    spacing = head_spacing(rows)
    z, y, x = grid_3d(shape, spacing)
    semi = np.array([95.0, 92.0, 72.0]) * rng.uniform(0.95, 1.05, size=3)
    z_center = -10.0
    rho = np.sqrt(((z - z_center) / semi[0]) ** 2 + (y / semi[1]) ** 2 + (x / semi[2]) ** 2)
    depth = (1.0 - rho) * float(np.mean(semi))  # mm inside the skin, approximately
    del rho
    phi = np.arctan2(y, x)
    skull_t = 5.0 + 1.8 * np.cos(2 * phi + rng.uniform(0, np.pi)) + 0.8 * np.sin(3 * phi + rng.uniform(0, np.pi))
    scalp_t = 4.0
    inner = depth - scalp_t - skull_t  # mm inside the inner table
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[depth > 0] = 30.0
    bone = (depth > scalp_t) & (inner <= 0)
    # Dense tables with a lighter diploe in the middle.
    mid = np.abs((depth - scalp_t) / skull_t - 0.5) * 2.0
    bone_hu = 700.0 + 800.0 * mid
    hu[bone] = np.broadcast_to(bone_hu, shape)[bone]
    del mid, bone_hu, bone
    brain = inner > 0
    hu[brain] = 27.0
    hu[brain & (inner < 3.5)] = 38.0
    rim = brain & (inner < 2.0)
    hu[rim] += 8.0  # beam hardening along the inner table
    del rim
    for center in VENTRICLE_CENTERS_MM:
        box, frac = ellipsoid_fraction(shape, spacing, (center[0] + z_center / 4, center[1], center[2]),
                                       VENTRICLE_RADII_MM)
        paint(hu, box, frac, 5.0)
    if rng.random() < 0.7:
        _add_calcifications(hu, rng, spacing, z_center)
    truths: list[LesionTruth] = []
    if lesion:
        truths.append(_add_hemorrhage(hu, rng, spacing, inner, z_center))
    del inner, depth
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0, 0.7, 0.7))
    noise *= NOISE_HU / max(float(noise.std()), 1e-6)
    hu += noise
    return hu, truths


def _add_calcifications(hu: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float],
                        z_center: float) -> None:
    """Choroid plexus (in the ventricle atria) and pineal calcifications, 2-4 mm, 120-400 HU."""
    spots = [(c[0] + z_center / 4, c[1] + 16.0, c[2]) for c in VENTRICLE_CENTERS_MM]
    spots.append((z_center / 4 + 5.0, 22.0, 0.0))  # pineal, midline behind the third ventricle
    for spot in spots:
        if rng.random() < 0.6:
            radius = rng.uniform(1.0, 2.0)
            box, frac = ellipsoid_fraction(hu.shape, spacing, spot, (radius, radius, radius))
            paint(hu, box, frac, rng.uniform(120.0, 400.0))


def _add_hemorrhage(hu: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float],
                    inner: np.ndarray, z_center: float) -> LesionTruth:
    """An intraparenchymal bleed of 3-40 mL made of two overlapping ellipsoids, 55-85 HU."""
    shape = hu.shape
    target_ml = rng.uniform(3.0, 40.0)
    radius = (3.0 * target_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    side = rng.choice([-1.0, 1.0])
    center = np.array([z_center / 4 + rng.uniform(-5.0, 25.0),
                       rng.uniform(-35.0, 35.0),
                       side * rng.uniform(22.0, 38.0)])
    value = rng.uniform(55.0, 85.0)
    mask = np.zeros(shape, dtype=bool)
    for offset_scale in (0.0, 0.5):
        offset = rng.normal(0.0, 1.0, size=3) * radius * offset_scale
        radii = tuple(float(r) for r in radius * rng.uniform(0.75, 1.15, size=3) * (1.0 - 0.25 * offset_scale))
        box, frac = ellipsoid_fraction(shape, spacing, tuple(float(c) for c in center + offset), radii)
        mask[box] |= frac >= 0.5
    mask &= inner > 4.0  # a parenchymal bleed stays off the inner table
    hu[mask] = value
    voxel_ml = float(np.prod(spacing)) / 1000.0
    centroid = ndimage.center_of_mass(mask)
    return LesionTruth(kind="hemorrhage", center_voxel=tuple(float(c) for c in centroid), view_index=0,
                       size=float(mask.sum()) * voxel_ml, subtype="intraparenchymal")
