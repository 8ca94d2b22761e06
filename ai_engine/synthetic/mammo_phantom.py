"""Mammography phantom: one breast in CC and MLO views with parenchymal texture.

A lesion study has a round mass at the same depth from the chest wall in both views (the
cue radiologists use to match them) and, half the time, a cluster of microcalcifications.
Every breast may carry a few isolated benign calcifications: the cluster detector's mimic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ai_engine.synthetic.truth import LesionTruth

IMAGE_HEIGHT_MM = 220.0
VIEWS = ("CC", "MLO")
BACKGROUND = 40.0
FAT = 1300.0
NOISE = 12.0


@dataclass(frozen=True)
class BreastGeometry:
    """Half-ellipse breast outline of one view, in mm: depth ``u`` from the chest wall, ``v`` across."""

    depth_mm: float  # U: chest wall to nipple
    half_width_mm: float  # V
    axis_row_mm: float  # row position (mm from the top) of the nipple axis
    pectoral: bool


def mammo_spacing(rows: int) -> float:
    """Pixel spacing (mm) of a mammography phantom with ``rows`` rows."""
    return IMAGE_HEIGHT_MM / rows


def view_coordinates(rows: int, laterality: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-pixel (row mm from top, depth mm from the chest wall) and the pixel spacing."""
    spacing = mammo_spacing(rows)
    cols = int(round(rows * 0.75))
    row_mm = (np.arange(rows, dtype=np.float32) * spacing)[:, None]
    col_mm = (np.arange(cols, dtype=np.float32) * spacing)[None, :]
    # Left breast: chest wall at column 0; right breast: at the last column.
    depth = col_mm if laterality == "L" else (cols - 1) * spacing - col_mm
    return row_mm, depth, spacing


def to_pixel(depth_mm: float, row_mm: float, rows: int, laterality: str) -> tuple[float, float]:
    """(row, col) pixel of a point given by its row position and depth from the chest wall."""
    spacing = mammo_spacing(rows)
    cols = int(round(rows * 0.75))
    col = depth_mm / spacing if laterality == "L" else (cols - 1) - depth_mm / spacing
    return row_mm / spacing, col


def make_mammo_views(rng: np.random.Generator, rows: int, laterality: str,
                     lesion: bool) -> tuple[list[np.ndarray], list[LesionTruth]]:
    """CC and MLO images (12-bit scale) and the truths of the lesions in each view."""
    depth_mm = rng.uniform(95.0, 120.0)
    geometries = [
        BreastGeometry(depth_mm, rng.uniform(75.0, 90.0), IMAGE_HEIGHT_MM * 0.5, pectoral=False),
        BreastGeometry(depth_mm * 1.05, rng.uniform(85.0, 100.0), IMAGE_HEIGHT_MM * 0.45, pectoral=True),
    ]
    mass_depth = rng.uniform(0.3, 0.65) * depth_mm
    mass_diameter = rng.uniform(8.0, 22.0)
    has_cluster = lesion and rng.random() < 0.5
    cluster_depth = rng.uniform(0.3, 0.7) * depth_mm
    images: list[np.ndarray] = []
    truths: list[LesionTruth] = []
    for index, geometry in enumerate(geometries):
        row_mm, depth, spacing = view_coordinates(rows, laterality)
        image, inside = _breast(rng, geometry, row_mm, depth, spacing)
        _add_isolated_calcifications(image, rng, inside, spacing)
        if lesion:
            center_row_mm = _transverse_position(rng, geometry, mass_depth, mass_diameter)
            _add_mass(image, row_mm, depth, center_row_mm, mass_depth, mass_diameter, rng)
            truths.append(LesionTruth(kind="mass", center_voxel=to_pixel(mass_depth, center_row_mm, rows, laterality),
                                      view_index=index, size=mass_diameter))
        if has_cluster:
            cluster_row_mm = _transverse_position(rng, geometry, cluster_depth, 12.0)
            extent = _add_cluster(image, rng, spacing, rows, laterality, cluster_row_mm, cluster_depth)
            truths.append(LesionTruth(kind="calcification_cluster",
                                      center_voxel=to_pixel(cluster_depth, cluster_row_mm, rows, laterality),
                                      view_index=index, size=extent))
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(NOISE)
        images.append(np.clip(image, 0.0, 4095.0))
    return images, truths


def _breast(rng: np.random.Generator, geometry: BreastGeometry, row_mm: np.ndarray, depth: np.ndarray,
            spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Background, breast with texture fading toward the skin, and the MLO pectoral muscle."""
    v = row_mm - geometry.axis_row_mm
    rho = np.sqrt((depth / geometry.depth_mm) ** 2 + (v / geometry.half_width_mm) ** 2)
    inside = (rho < 1.0) & (depth >= 0)
    thickness = np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))  # compressed breast thins toward the skin
    coarse = ndimage.gaussian_filter(rng.standard_normal(rho.shape).astype(np.float32), 4.0 / spacing)
    fine = ndimage.gaussian_filter(rng.standard_normal(rho.shape).astype(np.float32), 1.2 / spacing)
    coarse /= max(float(coarse.std()), 1e-6)
    fine /= max(float(fine.std()), 1e-6)
    glandular = np.clip(1.0 - rho, 0.0, 1.0)
    image = np.full(rho.shape, BACKGROUND, dtype=np.float32)
    tissue = FAT * (0.55 + 0.45 * thickness) + glandular * (120.0 * coarse + 40.0 * fine + 150.0)
    image[inside] = tissue[inside]
    if geometry.pectoral:
        pect = inside & (depth < 40.0 * (1.0 - row_mm / 110.0))
        image[pect] += 300.0
    return image, inside


def _transverse_position(rng: np.random.Generator, geometry: BreastGeometry, depth_mm: float,
                         diameter_mm: float) -> float:
    """Row position (mm) of a lesion at ``depth_mm``, kept inside the outline with a margin."""
    room = geometry.half_width_mm * np.sqrt(max(1.0 - (depth_mm / geometry.depth_mm) ** 2, 0.0))
    reach = max(room - diameter_mm - 10.0, 0.0)
    return float(geometry.axis_row_mm + rng.uniform(-reach, reach) * 0.8)


def _add_mass(image: np.ndarray, row_mm: np.ndarray, depth: np.ndarray, center_row_mm: float,
              center_depth_mm: float, diameter_mm: float, rng: np.random.Generator) -> None:
    """A round mass with a soft edge, denser than the surrounding tissue."""
    dist = np.sqrt((row_mm - center_row_mm) ** 2 + (depth - center_depth_mm) ** 2)
    edge = np.clip((diameter_mm / 2.0 - dist) / 1.5 + 0.5, 0.0, 1.0)
    profile = np.sqrt(np.clip(1.0 - (dist / (diameter_mm / 2.0)) ** 2, 0.0, 1.0))
    image += edge * (250.0 + 250.0 * profile) * rng.uniform(0.9, 1.2)


def _speck(image: np.ndarray, row: float, col: float, amplitude: float) -> None:
    r, c = int(round(row)), int(round(col))
    if 0 <= r < image.shape[0] and 0 <= c < image.shape[1]:
        image[r, c] += amplitude


def _add_isolated_calcifications(image: np.ndarray, rng: np.random.Generator, inside: np.ndarray,
                                 spacing: float) -> None:
    """0-4 benign single calcifications, at least 3 cm apart, so none of them form a cluster."""
    candidates = np.argwhere(inside)
    placed: list[np.ndarray] = []
    for _ in range(int(rng.integers(0, 5))):
        point = candidates[int(rng.integers(len(candidates)))].astype(float)
        if all(np.linalg.norm(point - p) * spacing > 30.0 for p in placed):
            _speck(image, point[0], point[1], float(rng.uniform(700.0, 1000.0)))
            placed.append(point)


def _add_cluster(image: np.ndarray, rng: np.random.Generator, spacing: float, rows: int, laterality: str,
                 row_mm: float, depth_mm: float) -> float:
    """5-10 bright specks within a ~1 cm disk; returns the cluster's extent (mm)."""
    center_row, center_col = to_pixel(depth_mm, row_mm, rows, laterality)
    offsets = []
    for _ in range(int(rng.integers(5, 11))):
        radius, angle = rng.uniform(0.0, 5.0), rng.uniform(0.0, 2 * np.pi)
        offsets.append((radius * np.sin(angle), radius * np.cos(angle)))
        _speck(image, center_row + offsets[-1][0] / spacing, center_col + offsets[-1][1] / spacing,
               float(rng.uniform(800.0, 1100.0)))
    points = np.array(offsets)
    return float(np.max(np.linalg.norm(points[:, None] - points[None], axis=-1)))
