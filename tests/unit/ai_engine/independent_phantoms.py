"""CT and mammography phantoms drawn here from plain geometry, independently of ``ai_engine.synthetic``.

The detectors were trained on the project's own generators; these heads, chests and breasts share none
of their code, textures or artefacts (ellipsoids, straight vessels, white noise), so a detector
that learned a generator's quirks instead of anatomy and density shows it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ai_engine.mammo import MammoView
from ai_engine.volume import Volume

BLEED_HU, BRAIN_HU, WHITE_MATTER_HU, CSF_HU, BONE_HU, SCALP_HU = 65.0, 33.0, 27.0, 6.0, 1100.0, 30.0
LUNG_HU, SOFT_TISSUE_HU, FAT_HU, SPINE_HU = -860.0, 40.0, -90.0, 600.0


@dataclass(frozen=True)
class Sphere:
    """A ball of ``hu`` at ``center_mm`` (x, y, z in the volume's LPS frame, origin at its centre)."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    hu: float


def _grid(slices: int, rows: int, slice_mm: float, pixel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = (np.arange(slices) - (slices - 1) / 2) * slice_mm
    y = (np.arange(rows) - (rows - 1) / 2) * pixel_mm
    return np.meshgrid(z.astype(np.float32), y.astype(np.float32), y.astype(np.float32), indexing="ij")


def _volume(hu: np.ndarray, slice_mm: float, pixel_mm: float) -> Volume:
    slices, rows, _ = hu.shape
    origin = (-(rows - 1) / 2 * pixel_mm, -(rows - 1) / 2 * pixel_mm, -(slices - 1) / 2 * slice_mm)
    return Volume(array=hu.astype(np.float32), spacing_mm=(slice_mm, pixel_mm, pixel_mm), origin_mm=origin,
                  direction=np.eye(3), sop_instance_uids=[], paths=[], series_instance_uid="1.2.3",
                  study_instance_uid="1.2")


def _ball(z: np.ndarray, y: np.ndarray, x: np.ndarray, sphere: Sphere) -> np.ndarray:
    cx, cy, cz = sphere.center_mm
    return (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < (sphere.diameter_mm / 2) ** 2


def head(seed: int, bleeds: tuple[Sphere, ...] = (), *, rows: int = 256, slices: int = 32, slice_mm: float = 5.0,
         noise_hu: float = 5.0) -> tuple[Volume, np.ndarray]:
    """An ellipsoid head (scalp, skull, grey and white matter, two ventricles) and the mask of its bleeds."""
    z, y, x = _grid(slices, rows, slice_mm, 240.0 / rows)
    radius = np.sqrt((x / 72) ** 2 + (y / 92) ** 2 + ((z - 10) / 80) ** 2)
    hu = np.full(x.shape, -1000.0, np.float32)
    hu[radius < 1.06] = SCALP_HU
    hu[radius < 1.0] = BONE_HU
    brain = radius < 0.92
    hu[brain] = BRAIN_HU
    hu[brain & ((x / 55) ** 2 + (y / 72) ** 2 + ((z - 10) / 55) ** 2 < 1)] = WHITE_MATTER_HU
    hu[((np.abs(x) - 9) / 6) ** 2 + (y / 25) ** 2 + ((z - 15) / 15) ** 2 < 1] = CSF_HU
    blood = np.zeros(x.shape, bool)
    for bleed in bleeds:
        blood |= _ball(z, y, x, bleed) & brain
    hu[blood] = BLEED_HU
    hu += np.random.default_rng(seed).normal(0.0, noise_hu, hu.shape).astype(np.float32)
    return _volume(hu, slice_mm, 240.0 / rows), blood


def chest(seed: int, nodules: tuple[Sphere, ...] = (), *, rows: int = 320, slices: int = 64, slice_mm: float = 2.0,
          noise_hu: float = 20.0, vessels: int = 30) -> Volume:
    """A chest (fat, muscle, spine, two lungs crossed by straight vessels from pleura to pleura) with ``nodules``."""
    rng = np.random.default_rng(seed)
    z, y, x = _grid(slices, rows, slice_mm, 350.0 / rows)
    hu = np.full(x.shape, -1000.0, np.float32)
    hu[(x / 160) ** 2 + (y / 110) ** 2 < 1] = FAT_HU
    hu[(x / 150) ** 2 + (y / 100) ** 2 < 1] = SOFT_TISSUE_HU
    lungs = np.zeros(x.shape, bool)
    for side in (-1.0, 1.0):
        lungs |= ((x - side * 65) / 55) ** 2 + ((y + 5) / 75) ** 2 + (z / 200) ** 2 < 1
    hu[lungs] = LUNG_HU
    points = np.stack([x, y, z], axis=-1)
    for _ in range(vessels):
        start = np.array([rng.uniform(-110, 110), rng.uniform(-70, 60), rng.uniform(z.min(), z.max())], np.float32)
        direction = rng.normal(size=3).astype(np.float32)
        direction /= np.linalg.norm(direction)
        offset = points - start
        along = offset @ direction
        distance = np.linalg.norm(offset - along[..., None] * direction, axis=-1)
        hu[(distance < rng.uniform(1.0, 3.0)) & lungs] = SOFT_TISSUE_HU
    hu[(x**2 + (y - 75) ** 2 < 20**2)] = SPINE_HU
    for nodule in nodules:
        hu[_ball(z, y, x, nodule)] = nodule.hu
    hu += rng.normal(0.0, noise_hu, hu.shape).astype(np.float32)
    return _volume(hu, slice_mm, 350.0 / rows)


def voxel_of(volume: Volume, center_mm: tuple[float, float, float]) -> np.ndarray:
    """Voxel index (z, y, x) of an LPS point of a volume from ``head`` or ``chest``."""
    x, y, z = np.subtract(center_mm, volume.origin_mm)
    dz, dy, dx = volume.spacing_mm
    return np.array([z / dz, y / dy, x / dx])


def breast_view(seed: int, laterality: str, view: str, mass_diameter_mm: float = 0.0, *,
                pixel_mm: float = 0.1) -> tuple[MammoView, tuple[float, float]]:
    """One view of a breast (a half ellipse against the chest wall, fat with smooth glandular texture that
    thins toward the skin), with a round mass 50 mm from the nipple when ``mass_diameter_mm`` > 0; the
    mass centre (row, col) in pixels. Brighter is denser; the chest wall is on the image's left for R."""
    rng = np.random.default_rng(seed)
    depth, half_height = (110.0, 85.0) if view == "CC" else (130.0, 105.0)
    rows, cols = int(2 * (half_height + 15) / pixel_mm), int((depth + 15) / pixel_mm)
    r, c = np.meshgrid((np.arange(rows) - rows / 2) * pixel_mm, np.arange(cols) * pixel_mm, indexing="ij")
    reach = (c / depth) ** 2 + (r / half_height) ** 2
    coarse = ndimage.gaussian_filter(rng.normal(size=(rows // 10, cols // 10)), 3.0)
    texture = ndimage.zoom(coarse / coarse.std(), (rows / coarse.shape[0], cols / coarse.shape[1]), order=1)
    glandular = np.clip(0.25 + 0.18 * texture[:rows, :cols], 0.0, 1.0) * np.exp(-1.5 * (c / depth) ** 2)
    image = np.where(reach <= 1, (1000.0 + 900.0 * glandular) * (0.75 + 0.25 * np.sqrt(np.clip(1 - reach, 0, 1))),
                     80.0)
    centre = (rows / 2 + 15.0 / pixel_mm, (depth - 50.0) / pixel_mm)
    if mass_diameter_mm > 0:
        disc = np.hypot(r - 15.0, c - (depth - 50.0)) <= mass_diameter_mm / 2
        image += ndimage.gaussian_filter(np.where(disc, 700.0, 0.0), 0.2 / pixel_mm)
    image = ndimage.gaussian_filter(image, 0.1 / pixel_mm) + rng.normal(0.0, 15.0, image.shape)
    if laterality == "L":
        image, centre = image[:, ::-1], (centre[0], cols - 1 - centre[1])
    return MammoView(array=image.astype(np.float32), pixel_spacing_mm=(pixel_mm, pixel_mm), laterality=laterality,
                     view=view, sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{seed}", path=Path("phantom.dcm"),
                     series_instance_uid="1.2.3", study_instance_uid="1.2"), centre
