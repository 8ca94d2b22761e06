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


# --------------------------------------------------------------------------------------------
# Four-view screening phantom: density A-D, mass shapes, clusters seen in both views, mimics.
# --------------------------------------------------------------------------------------------

DENSITIES = ("A", "B", "C", "D")
# Glandular area fraction and texture strength per BI-RADS density category.
_GLANDULAR_FRACTION = {"A": 0.08, "B": 0.28, "C": 0.55, "D": 0.82}
_TEXTURE_STRENGTH = {"A": 0.5, "B": 0.8, "C": 1.1, "D": 1.3}
MASS_SHAPES = ("round", "irregular", "spiculated")
MALIGNANT_KINDS = ("mass", "calcification_cluster")
MIMIC_KINDS = ("cyst", "lymph_node", "vascular_calcification", "coarse_calcification")
MLO_DEPTH_FACTOR = 1.05


@dataclass(frozen=True)
class Acquisition:
    """Detector and exposure settings; a held-out cohort shifts them to test robustness.

    ``gain`` scales the grey levels (a different detector or processing), ``blur_mm`` is the
    Gaussian sigma of the detector's unsharpness, ``noise_std`` the quantum noise in grey levels.
    """

    pixel_spacing_mm: float = 0.4
    noise_std: float = 12.0
    blur_mm: float = 0.15
    gain: float = 1.0
    bits_stored: int = 12
    image_height_mm: float = 240.0

    def __post_init__(self) -> None:
        if not 0.05 <= self.pixel_spacing_mm <= 1.0:
            raise ValueError(f"Acquisition.pixel_spacing_mm must lie in 0.05..1.0 mm, got {self.pixel_spacing_mm}")
        if self.bits_stored not in (12, 14, 16):
            raise ValueError(f"Acquisition.bits_stored must be 12, 14 or 16, got {self.bits_stored}")


@dataclass(frozen=True)
class PlacedLesion:
    """One lesion in 3-D breast coordinates, as fractions of the room available at its depth.

    ``depth_frac`` is depth from the chest wall over breast depth; ``ml_frac`` medio-lateral and
    ``cc_frac`` cranio-caudal position in -1..1. ``contrast`` scales the lesion's attenuation.
    """

    kind: str
    shape: str
    depth_frac: float
    ml_frac: float
    cc_frac: float
    size_mm: float
    contrast: float
    detail_seed: int

    @property
    def malignant(self) -> bool:
        """Masses and calcification clusters are the cancers of this phantom; the rest are mimics."""
        return self.kind in MALIGNANT_KINDS


@dataclass(frozen=True)
class BreastSpec:
    """What one breast holds: laterality, density category and lesions (malignant or mimics)."""

    laterality: str
    density: str
    lesions: tuple[PlacedLesion, ...] = ()


@dataclass
class RenderedBreast:
    """CC and MLO images of one breast, the truths per view and per-view masks of the cancers.

    ``cancer_masks[view]`` maps each malignant kind (MALIGNANT_KINDS) to its boolean mask.
    """

    images: list[np.ndarray]
    truths: list[LesionTruth]
    cancer_masks: list[dict[str, np.ndarray]]
    spacing_mm: float


def render_breast(rng: np.random.Generator, spec: BreastSpec, acquisition: Acquisition) -> RenderedBreast:
    """Render CC and MLO of one breast; lesions appear at corresponding depths in both views."""
    if spec.density not in DENSITIES:
        raise ValueError(f"BreastSpec.density must be one of {DENSITIES}, got {spec.density!r}")
    if spec.laterality not in ("L", "R"):
        raise ValueError(f"BreastSpec.laterality must be 'L' or 'R', got {spec.laterality!r}")
    spacing = acquisition.pixel_spacing_mm
    rows = int(round(acquisition.image_height_mm / spacing))
    depth_mm = rng.uniform(85.0, 125.0)
    half_width = rng.uniform(70.0, 95.0)
    geometries = [
        BreastGeometry(depth_mm, half_width, acquisition.image_height_mm * 0.5, pectoral=False),
        BreastGeometry(depth_mm * MLO_DEPTH_FACTOR, half_width * 1.12, acquisition.image_height_mm * 0.46,
                       pectoral=True),
    ]
    texture_seed = int(rng.integers(2**31))
    images, truths, masks = [], [], []
    for index, geometry in enumerate(geometries):
        row_mm, depth, _ = _coordinates(rows, spacing, spec.laterality)
        image, inside = _dense_breast(np.random.default_rng(texture_seed + index), geometry, row_mm, depth,
                                      spacing, spec.density)
        cancer = {kind: np.zeros(image.shape, dtype=bool) for kind in MALIGNANT_KINDS}
        for lesion in spec.lesions:
            truth = _render_lesion(image, cancer, lesion, geometry, index, row_mm, depth, spacing, spec.laterality)
            truths.append(truth)
        _add_isolated_calcifications(image, rng, inside, spacing)
        image *= np.float32(acquisition.gain)
        if acquisition.blur_mm > 0:
            image = ndimage.gaussian_filter(image, acquisition.blur_mm / spacing)
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(acquisition.noise_std)
        images.append(np.clip(image, 0.0, 2.0**acquisition.bits_stored - 1))
        masks.append(cancer)
    return RenderedBreast(images, truths, masks, spacing)


def _coordinates(rows: int, spacing: float, laterality: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-pixel row position (mm) and depth from the chest wall (mm) at ``spacing``; and the width."""
    cols = int(round(rows * 0.75))
    row_mm = (np.arange(rows, dtype=np.float32) * spacing)[:, None]
    col_mm = (np.arange(cols, dtype=np.float32) * spacing)[None, :]
    depth = col_mm if laterality == "L" else (cols - 1) * spacing - col_mm
    return row_mm, depth, cols


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian random field; drawn at a coarser grid when smooth, for speed."""
    step = max(int(sigma_px // 3), 1)
    small = rng.standard_normal((shape[0] // step + 2, shape[1] // step + 2)).astype(np.float32)
    small = ndimage.gaussian_filter(small, sigma_px / step)
    field = ndimage.zoom(small, step, order=1)[: shape[0], : shape[1]]
    return field / max(float(field.std()), 1e-6)


def _dense_breast(rng: np.random.Generator, geometry: BreastGeometry, row_mm: np.ndarray, depth: np.ndarray,
                  spacing: float, density: str) -> tuple[np.ndarray, np.ndarray]:
    """Fat, fibroglandular tissue covering the density's fraction of the breast, ligaments, pectoral."""
    v = row_mm - geometry.axis_row_mm
    rho = np.sqrt((depth / geometry.depth_mm) ** 2 + (v / geometry.half_width_mm) ** 2)
    inside = (rho < 1.0) & (depth >= 0)
    thickness = np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))
    shape = rho.shape
    coarse = _smooth_field(rng, shape, 6.0 / spacing)
    medium = _smooth_field(rng, shape, 2.0 / spacing)
    fine = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 0.6 / spacing)
    fine /= max(float(fine.std()), 1e-6)
    # Glandular tissue concentrates behind the nipple and fades toward skin and chest wall.
    central = 1.2 * (1.0 - rho) - 0.35 * np.abs(depth / geometry.depth_mm - 0.45)
    field = coarse + 0.5 * medium + 1.5 * central
    fraction = _GLANDULAR_FRACTION[density]
    level = float(np.quantile(field[inside], 1.0 - fraction)) if inside.any() else 0.0
    glandular = 1.0 / (1.0 + np.exp(-(field - level) / 0.5))
    strength = _TEXTURE_STRENGTH[density]
    tissue = (FAT * (0.55 + 0.45 * thickness)
              + glandular * thickness * (380.0 + 90.0 * strength * medium)
              + strength * 25.0 * fine * (0.3 + glandular))
    # Cooper's ligaments: faint curvilinear ridges from the texture's zero crossings.
    ridges = np.exp(-(medium**2) / 0.02) * 30.0 * (1.0 - glandular)
    image = np.full(shape, BACKGROUND, dtype=np.float32)
    image[inside] = (tissue + ridges)[inside]
    if geometry.pectoral:
        pect = inside & (depth < 45.0 * (1.0 - row_mm / 120.0))
        image[pect] += 320.0
    return image, inside


def _lesion_center_mm(lesion: PlacedLesion, geometry: BreastGeometry, view_index: int) -> tuple[float, float]:
    """(row mm, depth mm) of a lesion in a view: CC sees medio-lateral, MLO the oblique mix."""
    depth = lesion.depth_frac * geometry.depth_mm
    room = geometry.half_width_mm * np.sqrt(max(1.0 - lesion.depth_frac**2, 0.0))
    reach = max(room - lesion.size_mm / 2.0 - 8.0, 0.0)
    transverse = lesion.ml_frac if view_index == 0 else (lesion.ml_frac + lesion.cc_frac) / np.sqrt(2.0)
    return float(geometry.axis_row_mm + np.clip(transverse, -1.0, 1.0) * reach), float(depth)


def _render_lesion(image: np.ndarray, cancer: dict[str, np.ndarray], lesion: PlacedLesion, geometry: BreastGeometry,
                   view_index: int, row_mm: np.ndarray, depth: np.ndarray, spacing: float,
                   laterality: str) -> LesionTruth:
    """Paint one lesion into a view and return its truth (centre in pixels of this view)."""
    center_row, center_depth = _lesion_center_mm(lesion, geometry, view_index)
    detail = np.random.default_rng(lesion.detail_seed + 7919 * view_index)
    dr, dd = row_mm - center_row, depth - center_depth
    footprint: np.ndarray
    if lesion.kind == "calcification_cluster":
        footprint = _paint_cluster(image, lesion, view_index, center_row, center_depth, spacing, laterality)
    elif lesion.kind == "vascular_calcification":
        footprint = _paint_vessel(image, detail, lesion, dr, dd)
    elif lesion.kind == "coarse_calcification":
        dist = np.hypot(dr, dd)
        footprint = dist < lesion.size_mm / 2.0
        image += np.float32(lesion.contrast) * np.clip((lesion.size_mm / 2.0 - dist) / 0.3 + 0.5, 0.0, 1.0)
    else:
        footprint = _paint_mass(image, detail, lesion, dr, dd)
    if lesion.malignant:
        cancer[lesion.kind] |= footprint
    cols = image.shape[1]
    col = center_depth / spacing if laterality == "L" else (cols - 1) - center_depth / spacing
    return LesionTruth(kind=lesion.kind, center_voxel=(center_row / spacing, float(col)), view_index=view_index,
                       size=lesion.size_mm, subtype=lesion.shape)


def _paint_mass(image: np.ndarray, detail: np.random.Generator, lesion: PlacedLesion, dr: np.ndarray,
                dd: np.ndarray) -> np.ndarray:
    """Masses, cysts and lymph nodes: outline by shape, margin sharpness, spicules, fatty hilum."""
    radius = lesion.size_mm / 2.0
    dist = np.hypot(dr, dd)
    angle = np.arctan2(dr, dd)
    outline = np.full(dist.shape, radius, dtype=np.float32)
    if lesion.kind == "lymph_node":
        tilt = detail.uniform(0, np.pi)
        outline = radius / np.sqrt((np.cos(angle - tilt) / 1.0) ** 2 + (np.sin(angle - tilt) / 0.6) ** 2)
    elif lesion.shape in ("irregular", "spiculated"):
        for harmonic in range(2, 7):
            outline = outline + radius * detail.uniform(0.05, 0.16) * np.cos(harmonic * angle + detail.uniform(0, 6.3))
    margin = {"cyst": 0.25, "lymph_node": 0.3}.get(lesion.kind, 0.6 if lesion.shape == "round" else 1.4)
    edge = np.clip((outline - dist) / margin + 0.5, 0.0, 1.0)
    profile = np.sqrt(np.clip(1.0 - (dist / np.maximum(outline, 1e-3)) ** 2, 0.0, 1.0))
    body = edge * (0.55 + 0.45 * profile)
    if lesion.kind == "lymph_node":  # fatty hilum: a darker notch on one side
        hilum = np.exp(-(np.hypot(dr - 0.5 * radius * np.sin(angle.mean()), dd - 0.6 * radius) ** 2)
                       / (2 * (0.35 * radius) ** 2))
        body = body * (1.0 - 0.7 * hilum)
    footprint = edge > 0.5
    if lesion.shape == "spiculated":
        spicules = np.zeros(dist.shape, dtype=np.float32)
        for theta in detail.uniform(0, 2 * np.pi, size=int(detail.integers(8, 16))):
            length = radius * detail.uniform(1.2, 2.4)
            along = dd * np.cos(theta) + dr * np.sin(theta)
            across = -dd * np.sin(theta) + dr * np.cos(theta)
            width = 0.45 * np.clip(1.0 - along / (radius + length), 0.0, 1.0)
            line = (along > 0) & (along < radius + length)
            spicules = np.maximum(spicules, np.where(line, np.exp(-(across**2) / (2 * np.maximum(width, 0.05) ** 2))
                                                     * np.clip(1.0 - along / (radius + length), 0, 1), 0.0))
        body = np.maximum(body, 0.5 * spicules)
        footprint = footprint | (spicules > 0.25)
    image += np.float32(lesion.contrast) * body.astype(np.float32)
    return footprint


def _paint_cluster(image: np.ndarray, lesion: PlacedLesion, view_index: int, center_row: float,
                   center_depth: float, spacing: float, laterality: str) -> np.ndarray:
    """Pleomorphic microcalcifications from one 3-D cloud, projected into this view."""
    cloud = np.random.default_rng(lesion.detail_seed)  # same specks in both views
    count = int(cloud.integers(6, 16))
    points = cloud.normal(0.0, lesion.size_mm / 4.0, size=(count, 3))  # (depth, ml, cc) offsets mm
    amplitudes = cloud.uniform(0.55, 1.0, size=count) * lesion.contrast
    sizes = cloud.uniform(0.2, 0.6, size=count)
    rows, cols = image.shape
    footprint = np.zeros(image.shape, dtype=bool)
    for (d, ml, cc), amplitude, size in zip(points, amplitudes, sizes, strict=True):
        transverse = ml if view_index == 0 else (ml + cc) / np.sqrt(2.0)
        depth = center_depth + d * (1.0 if view_index == 0 else MLO_DEPTH_FACTOR)
        row = (center_row + transverse) / spacing
        col = depth / spacing if laterality == "L" else (cols - 1) - depth / spacing
        _blob(image, row, col, size / spacing, float(amplitude))
    radius = lesion.size_mm / 2.0 + 1.5
    rr, cc_ = np.ogrid[:rows, :cols]
    center_col = center_depth / spacing if laterality == "L" else (cols - 1) - center_depth / spacing
    footprint |= (rr - center_row / spacing) ** 2 + (cc_ - center_col) ** 2 <= (radius / spacing) ** 2
    return footprint


def _blob(image: np.ndarray, row: float, col: float, size_px: float, amplitude: float) -> None:
    """A small bright dot of ``size_px`` pixels diameter (at least one pixel)."""
    half = max(int(np.ceil(size_px)), 1)
    r0, c0 = int(round(row)), int(round(col))
    r_lo, r_hi = max(r0 - half, 0), min(r0 + half + 1, image.shape[0])
    c_lo, c_hi = max(c0 - half, 0), min(c0 + half + 1, image.shape[1])
    if r_lo >= r_hi or c_lo >= c_hi:
        return
    rr, cc = np.mgrid[r_lo:r_hi, c_lo:c_hi]
    weight = np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * max(size_px / 2.0, 0.5) ** 2))
    image[r_lo:r_hi, c_lo:c_hi] += np.float32(amplitude) * weight.astype(np.float32)


def _paint_vessel(image: np.ndarray, detail: np.random.Generator, lesion: PlacedLesion, dr: np.ndarray,
                  dd: np.ndarray) -> np.ndarray:
    """A sinuous vessel with tram-track calcifications along both walls: linear, not clustered."""
    theta = detail.uniform(-0.6, 0.6)
    along = dd * np.cos(theta) + dr * np.sin(theta)
    across = -dd * np.sin(theta) + dr * np.cos(theta)
    wiggle = 2.0 * np.sin(along / 9.0 + detail.uniform(0, 6.3))
    offset = across - wiggle
    length = lesion.size_mm
    inside = np.abs(along) < length / 2.0
    vessel = inside * np.exp(-(offset**2) / (2 * 0.9**2))
    walls = inside * (np.exp(-((np.abs(offset) - 1.0) ** 2) / (2 * 0.2**2)))
    dashes = (np.sin(along * detail.uniform(1.5, 2.5)) > 0.2).astype(np.float32)
    image += np.float32(0.15 * lesion.contrast) * vessel.astype(np.float32)
    image += np.float32(lesion.contrast) * (walls * dashes).astype(np.float32)
    return (vessel > 0.3) | (walls > 0.3)
