"""Chest CT phantoms.

``make_chest_ct`` (the demo/test study): body, lungs, spine, ribs, straight vessel tubes from
each hilum and an optional solid nodule. ``make_chest_phantom`` (the nodule cohorts): lungs with
apex and diaphragm dome, heart, branching vessel trees and airways (the mimics), and solid,
part-solid or ground-glass nodules that are parenchymal, juxtapleural or juxtavascular, under
acquisition settings (matrix, slices, noise, kernel) given as parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

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


# --- Richer chest phantom for the nodule cohorts -------------------------------------------------
# Lungs with an apex and a diaphragm dome, heart, branching vessel trees and airways, and
# solid / part-solid / ground-glass nodules (lobulated or spiculated) placed in the
# parenchyma, against the pleura or against a vessel. Acquisition settings are parameters so a
# held-out cohort can shift them.

NODULE_TYPES = ("solid", "part-solid", "ground-glass")
NODULE_PLACEMENTS = ("parenchymal", "juxtapleural", "juxtavascular")
VESSEL_HU = 40.0
AIRWAY_WALL_HU = 20.0
AIRWAY_LUMEN_HU = -960.0
MIN_VESSEL_RADIUS_MM = 0.45
MIN_AIRWAY_RADIUS_MM = 1.2


@dataclass(frozen=True)
class ChestAcquisition:
    """Scanner settings of one chest CT: matrix, field of view, slices, noise and kernel blur.

    ``blur_mm`` is the Gaussian sigma (mm) of the reconstruction kernel (0 = sharp kernel);
    ``noise_hu`` is the standard deviation of the white noise added after it.
    """

    rows: int = 512
    slices: int = 300
    slice_mm: float = 1.0
    fov_mm: float = 360.0
    noise_hu: float = 15.0
    blur_mm: float = 0.4
    signed: bool = True

    def __post_init__(self) -> None:
        if self.rows < 64 or self.slices < 8:
            raise SyntheticError(f"chest acquisition needs rows >= 64 and slices >= 8, got {self.rows}, {self.slices}")
        if not 0.3 <= self.slice_mm <= 10.0:
            raise SyntheticError(f"slice_mm must lie in 0.3..10 mm, got {self.slice_mm}")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) mm."""
        pixel = self.fov_mm / self.rows
        return (self.slice_mm, pixel, pixel)


@dataclass(frozen=True)
class NoduleSpec:
    """What nodule to draw: diameter (mm), type, placement, margin and, for part-solid, the core."""

    diameter_mm: float
    kind: str = "solid"
    placement: str = "parenchymal"
    spiculated: bool = False
    lobulated: bool = False
    solid_core_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in NODULE_TYPES:
            raise SyntheticError(f"nodule kind must be one of {NODULE_TYPES}, got {self.kind!r}")
        if self.placement not in NODULE_PLACEMENTS:
            raise SyntheticError(f"nodule placement must be one of {NODULE_PLACEMENTS}, got {self.placement!r}")
        if not 2.0 <= self.diameter_mm <= 40.0:
            raise SyntheticError(f"nodule diameter must lie in 2..40 mm, got {self.diameter_mm}")


@dataclass(frozen=True)
class PlacedNodule:
    """A drawn nodule: its spec, centre (voxel z, y, x), label value in ``ChestPhantom.labels``."""

    spec: NoduleSpec
    center_voxel: tuple[float, float, float]
    label: int
    upper_lobe: bool

    @property
    def truth(self) -> LesionTruth:
        """The nodule as the shared LesionTruth (size = diameter in mm, subtype = type)."""
        return LesionTruth(kind="nodule", center_voxel=self.center_voxel, view_index=0,
                           size=self.spec.diameter_mm, subtype=self.spec.kind)


@dataclass
class ChestPhantom:
    """HU volume (z, y, x), its spacing, the nodules drawn and their label volume (0 = none)."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    nodules: list[PlacedNodule]
    labels: np.ndarray
    lungs: np.ndarray


@dataclass(frozen=True)
class _Lung:
    center: np.ndarray  # (z, y, x) mm of the lung's middle
    semi: np.ndarray  # (half height, y, x) mm
    dome_mm: float


def make_chest_phantom(rng: np.random.Generator, acquisition: ChestAcquisition,
                       nodules: list[NoduleSpec]) -> ChestPhantom:
    """Draw a chest with vessel trees and airways and the requested nodules; add kernel blur and noise."""
    shape = (acquisition.slices, acquisition.rows, acquisition.rows)
    spacing = acquisition.spacing
    lungs_info = _lung_shapes(rng, shape, spacing)
    hu, lungs = _torso(rng, shape, spacing, lungs_info)
    vessels = _vessel_trees(hu, lungs, rng, spacing, lungs_info)
    _airways(hu, lungs, rng, spacing, lungs_info)
    labels = np.zeros(shape, dtype=np.uint8)
    placed: list[PlacedNodule] = []
    for index, spec in enumerate(nodules):
        placed.append(_place_nodule(hu, lungs, labels, rng, spacing, spec, vessels, lungs_info, index + 1))
    if acquisition.blur_mm > 0:
        sigma = [acquisition.blur_mm / s for s in spacing]
        hu = ndimage.gaussian_filter(hu, sigma=sigma, truncate=3.0)
    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(acquisition.noise_hu)
    return ChestPhantom(hu=hu, spacing=spacing, nodules=placed, labels=labels, lungs=lungs)


def _lung_shapes(rng: np.random.Generator, shape: tuple[int, int, int],
                 spacing: tuple[float, float, float]) -> list[_Lung]:
    """Two lungs whose height fits the scan (apex and dome inside when the scan is long enough)."""
    extent_z = shape[0] * spacing[0]
    half_height = min(125.0, 0.5 * extent_z + 20.0) * rng.uniform(0.92, 1.05)
    center_z = float(rng.uniform(-10.0, 10.0))
    lungs = []
    for side in (-1.0, 1.0):
        semi = np.array([half_height, 82.0, 58.0]) * rng.uniform(0.92, 1.06, size=3)
        lungs.append(_Lung(center=np.array([center_z, -5.0, side * rng.uniform(68.0, 76.0)]), semi=semi,
                           dome_mm=float(rng.uniform(25.0, 45.0))))
    return lungs


def _torso(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float],
           lungs_info: list[_Lung]) -> tuple[np.ndarray, np.ndarray]:
    """Body with fat, muscle, spine, ribs, heart and mediastinum; lungs at parenchymal HU. Returns (hu, lungs)."""
    slices, rows, _ = shape
    zs = axis_mm(slices, spacing[0])
    y = axis_mm(rows, spacing[1])[:, None]
    x = axis_mm(rows, spacing[2])[None, :]
    body_semi = np.array([118.0, 165.0]) * rng.uniform(0.93, 1.05, size=2)
    body_depth = (1.0 - np.sqrt((y / body_semi[0]) ** 2 + (x / body_semi[1]) ** 2)) * float(body_semi.mean())
    spine = (y - 92.0) ** 2 + x**2 < 17.0**2
    rib_ring = (body_depth > 9.0) & (body_depth < 15.0) & (y > -70.0)
    rib_phase, rib_period = rng.uniform(0.0, 28.0), rng.uniform(24.0, 30.0)
    base = np.full((rows, rows), -1000.0, dtype=np.float32)
    base[body_depth > 0] = -100.0
    base[body_depth > 8.0] = 45.0
    base[spine] = 400.0
    heart_center = np.array([lungs_info[0].center[0] - 0.45 * lungs_info[0].semi[0], -25.0, 22.0])
    heart_semi = np.array([55.0, 55.0, 62.0]) * rng.uniform(0.9, 1.1, size=3)
    texture = ndimage.gaussian_filter(rng.standard_normal((max(slices // 8, 2), rows // 8 + 1, rows // 8 + 1)),
                                      1.0).astype(np.float32)
    hu = np.empty(shape, dtype=np.float32)
    lungs = np.zeros(shape, dtype=bool)
    for k, z in enumerate(zs):
        plane = base.copy()
        if (z + rib_phase) % rib_period < 8.0:
            plane[rib_ring] = 550.0
        inside = np.zeros((rows, rows), dtype=bool)
        for lung in lungs_info:
            inside |= _lung_slice(lung, float(z), y, x)
        heart_scale = 1.0 - ((z - heart_center[0]) / heart_semi[0]) ** 2
        if heart_scale > 0:
            r = np.sqrt(heart_scale)
            heart = ((y - heart_center[1]) / (heart_semi[1] * r)) ** 2 + ((x - heart_center[2]) / (heart_semi[2] * r)) ** 2 < 1
            inside &= ~heart
        gradient = 45.0 * np.clip((y + 5.0) / 80.0, -1.0, 1.0)  # dependent (posterior) lung is denser
        tex = texture[min(k * texture.shape[0] // slices, texture.shape[0] - 1)]
        tex = np.kron(tex, np.ones((8, 8), dtype=np.float32))[:rows, :rows]
        plane[inside] = (LUNG_HU + gradient + 25.0 * tex)[inside]
        lungs[k] = inside
        hu[k] = plane
    return hu, lungs


def _lung_slice(lung: _Lung, z: float, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """In-plane lung cross-section at height ``z``: rounded apex, full width below, dome at the base."""
    top = lung.center[0] + lung.semi[0]
    bottom = lung.center[0] - lung.semi[0]
    if z >= top or z <= bottom:
        return np.zeros((y.shape[0], x.shape[1]), dtype=bool)
    width = float(np.sqrt(np.clip((top - z) / (0.7 * lung.semi[0]), 0.0, 1.0)))
    if width <= 0.05:
        return np.zeros((y.shape[0], x.shape[1]), dtype=bool)
    rho2 = ((y - lung.center[1]) / (lung.semi[1] * width)) ** 2 + ((x - lung.center[2]) / (lung.semi[2] * width)) ** 2
    dome = bottom + lung.dome_mm * np.clip(1.0 - rho2 * width**2, 0.0, 1.0)
    return (rho2 < 1.0) & (z > dome)


def _in_lungs(lungs: np.ndarray, spacing: tuple[float, float, float], point_mm: np.ndarray) -> bool:
    index = np.rint(np.asarray(to_voxel(tuple(point_mm), lungs.shape, spacing))).astype(int)
    if np.any(index < 0) or np.any(index >= lungs.shape):
        return False
    return bool(lungs[tuple(index)])


def _hilum(lung: _Lung) -> np.ndarray:
    return np.array([lung.center[0] + 0.1 * lung.semi[0], lung.center[1] + 5.0,
                     lung.center[2] - np.sign(lung.center[2]) * 0.6 * lung.semi[2]])


def _grow_tree(rng: np.random.Generator, lungs: np.ndarray, spacing: tuple[float, float, float],
               start: np.ndarray, direction: np.ndarray, radius: float, min_radius: float,
               length_per_radius: tuple[float, float], out: list[tuple[np.ndarray, np.ndarray, float]]) -> None:
    """Grow a bifurcating tree (iteratively): children narrower, shorter, turned 20-45 degrees."""
    stack = [(start, direction / np.linalg.norm(direction), radius, 0)]
    while stack:
        origin, heading, r, depth = stack.pop()
        length = r * rng.uniform(*length_per_radius)
        end = origin + heading * length
        if depth > 0 and not _in_lungs(lungs, spacing, end):
            continue
        out.append((origin, end, r))
        child_radius = r * rng.uniform(0.72, 0.84)
        if child_radius < min_radius or depth > 14:
            continue
        normal = np.cross(heading, rng.normal(size=3))
        normal /= np.linalg.norm(normal) + 1e-9
        for sign in (1.0, -1.0):
            angle = np.radians(rng.uniform(20.0, 45.0))
            child = np.cos(angle) * heading + sign * np.sin(angle) * normal
            stack.append((end, child / np.linalg.norm(child), child_radius, depth + 1))


def _paint_tubes(hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, float, float],
                 tubes: list[tuple[np.ndarray, np.ndarray, float]], value: float, shrink_mm: float = 0.0) -> None:
    """Paint tubes inside the lungs only (a tree must not spill into air outside the body)."""
    for start, end, radius in tubes:
        r = radius - shrink_mm
        if r <= 0.2:
            continue
        box, frac = tube_fraction(hu.shape, spacing, start, end, r)
        paint(hu, box, frac * lungs[box], value)


def _vessel_trees(hu: np.ndarray, lungs: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float],
                  lungs_info: list[_Lung]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Arterial and venous trees from each hilum toward the apex, base, front and back (the mimics)."""
    tubes: list[tuple[np.ndarray, np.ndarray, float]] = []
    for lung in lungs_info:
        hilum = _hilum(lung)
        lateral = np.sign(lung.center[2])
        for heading in ([1.0, 0.0, 0.5], [-1.0, 0.0, 0.5], [0.0, -1.0, 0.6], [0.0, 1.0, 0.6], [0.2, 0.0, 1.0]):
            direction = np.array(heading) * np.array([1.0, 1.0, lateral]) + rng.normal(scale=0.2, size=3)
            _grow_tree(rng, lungs, spacing, hilum + rng.normal(scale=3.0, size=3), direction,
                       float(rng.uniform(3.5, 5.0)), MIN_VESSEL_RADIUS_MM, (5.0, 9.0), tubes)
    _paint_tubes(hu, lungs | (hu > -200), spacing, tubes, VESSEL_HU)
    return tubes


def _airways(hu: np.ndarray, lungs: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float],
             lungs_info: list[_Lung]) -> None:
    """Trachea, main bronchi and a few generations of bronchi (air lumen, soft-tissue wall)."""
    top = np.array([axis_mm(hu.shape[0], spacing[0])[-1] + 5.0, -30.0, 0.0])
    carina = np.array([lungs_info[0].center[0] + 0.35 * lungs_info[0].semi[0], -20.0, 0.0])
    central = [(top, carina, 9.0)] + [(carina, _hilum(lung), 6.0) for lung in lungs_info]
    body = hu > -500  # trachea and main bronchi run through the mediastinum
    _paint_tubes(hu, body, spacing, central, AIRWAY_WALL_HU)
    _paint_tubes(hu, body, spacing, central, AIRWAY_LUMEN_HU, shrink_mm=2.0)
    bronchi: list[tuple[np.ndarray, np.ndarray, float]] = []
    for lung in lungs_info:
        lateral = np.sign(lung.center[2])
        for heading in ([1.0, 0.0, 0.6], [-1.0, 0.0, 0.5], [0.0, -1.0, 0.7], [0.0, 1.0, 0.7]):
            direction = np.array(heading) * np.array([1.0, 1.0, lateral]) + rng.normal(scale=0.25, size=3)
            _grow_tree(rng, lungs, spacing, _hilum(lung), direction, float(rng.uniform(3.5, 4.5)),
                       MIN_AIRWAY_RADIUS_MM, (4.0, 7.0), bronchi)
    _paint_tubes(hu, lungs, spacing, bronchi, AIRWAY_WALL_HU)
    for start, end, radius in bronchi:
        wall = max(0.15 * radius, 0.5)
        box, frac = tube_fraction(hu.shape, spacing, start, end, radius - wall)
        paint(hu, box, frac * lungs[box], AIRWAY_LUMEN_HU)


def _segment_distances(point: np.ndarray, tubes: list[tuple[np.ndarray, np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) from ``point`` to each tube's centre line, and the tube radii."""
    starts = np.array([s for s, _, _ in tubes])
    seg = np.array([e for _, e, _ in tubes]) - starts
    t = np.clip(np.einsum("ij,ij->i", point - starts, seg) / np.maximum(np.einsum("ij,ij->i", seg, seg), 1e-9), 0, 1)
    return np.linalg.norm(point - starts - t[:, None] * seg, axis=1), np.array([r for _, _, r in tubes])


def _lung_depth_ok(lungs: np.ndarray, spacing: tuple[float, float, float], center: np.ndarray, reach: float) -> bool:
    """True when points ``reach`` mm away along the 6 axes and 8 diagonals are all inside the lungs."""
    directions = np.vstack([np.eye(3), -np.eye(3), np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).T.reshape(-1, 3) / np.sqrt(3)])
    return all(_in_lungs(lungs, spacing, center + reach * d) for d in directions)


def _random_lung_point(rng: np.random.Generator, lungs: np.ndarray, spacing: tuple[float, float, float],
                       lungs_info: list[_Lung]) -> np.ndarray:
    lung = lungs_info[int(rng.integers(2))]
    return lung.center + rng.uniform(-1.0, 1.0, size=3) * lung.semi


def _place_nodule(hu: np.ndarray, lungs: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  spacing: tuple[float, float, float], spec: NoduleSpec,
                  vessels: list[tuple[np.ndarray, np.ndarray, float]], lungs_info: list[_Lung],
                  label: int) -> PlacedNodule:
    """Find a place for ``spec`` (by its placement rule) and draw it; raises SyntheticError if none fits."""
    radius = spec.diameter_mm / 2.0
    for _ in range(400):
        center = _candidate_center(rng, lungs, spacing, spec, radius, vessels, lungs_info)
        if center is None:
            continue
        existing = labels[tuple(np.clip(np.rint(to_voxel(tuple(center), hu.shape, spacing)).astype(int), 0,
                                        np.array(hu.shape) - 1))]
        if existing == 0 and not _near_labels(labels, spacing, center, radius + 4.0):
            _draw_nodule(hu, lungs, labels, rng, spacing, spec, center, label)
            voxel = tuple(float(c) for c in to_voxel(tuple(center), hu.shape, spacing))
            lung = min(lungs_info, key=lambda item: abs(item.center[2] - center[2]))
            return PlacedNodule(spec=spec, center_voxel=voxel, label=label,  # type: ignore[arg-type]
                                upper_lobe=bool(center[0] > lung.center[0]))
    raise SyntheticError(f"no place for a {spec.diameter_mm:.1f} mm {spec.placement} nodule in 400 tries "
                         f"in a scan of shape {hu.shape}")


def _near_labels(labels: np.ndarray, spacing: tuple[float, float, float], center: np.ndarray, reach: float) -> bool:
    box = tuple(slice(max(int(c - reach / s), 0), int(c + reach / s) + 1)
                for c, s in zip(to_voxel(tuple(center), labels.shape, spacing), spacing, strict=True))
    return bool(labels[box].any())


def _candidate_center(rng: np.random.Generator, lungs: np.ndarray, spacing: tuple[float, float, float],
                      spec: NoduleSpec, radius: float, vessels: list[tuple[np.ndarray, np.ndarray, float]],
                      lungs_info: list[_Lung]) -> np.ndarray | None:
    """One proposal for the nodule centre following its placement rule, or None if it does not fit."""
    if spec.placement == "juxtavascular":
        candidates = [i for i, (_, _, r) in enumerate(vessels) if 1.0 <= r <= 3.0]
        start, end, r = vessels[candidates[int(rng.integers(len(candidates)))]]
        along = start + rng.uniform(0.2, 0.8) * (end - start)
        side = np.cross(end - start, rng.normal(size=3))
        center = along + side / (np.linalg.norm(side) + 1e-9) * (radius + 0.3 * r)
        return center if _lung_depth_ok(lungs, spacing, center, radius + 1.0) else None
    if spec.placement == "juxtapleural":
        point = _random_lung_point(rng, lungs, spacing, lungs_info)
        if not _in_lungs(lungs, spacing, point):
            return None
        lung = min(lungs_info, key=lambda item: abs(item.center[2] - point[2]))
        outward = np.array([0.0, *(point[1:] - lung.center[1:])])
        outward /= np.linalg.norm(outward) + 1e-9
        step = 0.5 * min(spacing[1:])
        edge = point.copy()
        while _in_lungs(lungs, spacing, edge + outward * step):
            edge = edge + outward * step
        center = edge - outward * 0.55 * radius
        inner = center - outward * (radius + 1.0)
        return center if _in_lungs(lungs, spacing, inner) and _in_lungs(lungs, spacing, center) else None
    center = _random_lung_point(rng, lungs, spacing, lungs_info)
    if not _lung_depth_ok(lungs, spacing, center, radius + 3.0):
        return None
    distance, radii = _segment_distances(center, vessels)
    return center if np.all(distance > radius + radii + 1.5) else None


def _draw_nodule(hu: np.ndarray, lungs: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 spacing: tuple[float, float, float], spec: NoduleSpec, center: np.ndarray, label: int) -> None:
    """Draw a lobulated or smooth ball (and spicules), solid or ground-glass with an optional solid core."""
    radius = spec.diameter_mm / 2.0
    reach = radius * (1.9 if spec.spiculated else 1.4) + 1.0
    box = tuple(slice(max(int(np.floor(c - reach / s)), 0), min(int(np.ceil(c + reach / s)) + 1, n))
                for c, s, n in zip(to_voxel(tuple(center), hu.shape, spacing), spacing, hu.shape, strict=True))
    coords = [((np.arange(sl.start, sl.stop, dtype=np.float32) - (n - 1) / 2.0) * s - m).reshape(
        [-1 if a == axis else 1 for a in range(3)])
        for axis, (sl, n, s, m) in enumerate(zip(box, hu.shape, spacing, center, strict=True))]
    dist = np.sqrt(coords[0] ** 2 + coords[1] ** 2 + coords[2] ** 2) + 1e-6
    surface = np.full(dist.shape, radius, dtype=np.float32)
    bumps = int(rng.integers(3, 7)) if spec.lobulated else 2
    amplitude = 0.22 if spec.lobulated else 0.06
    for _ in range(bumps):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        cosine = (coords[0] * u[0] + coords[1] * u[1] + coords[2] * u[2]) / dist
        surface += radius * amplitude * np.clip(cosine, 0.0, 1.0) ** 3
    edge = 0.5 * float(min(spacing))
    fraction = np.clip((surface - dist) / (2 * edge) + 0.5, 0.0, 1.0)
    if spec.spiculated:
        for _ in range(int(rng.integers(6, 13))):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            start = center + u * radius * 0.7
            end = center + u * radius * rng.uniform(1.4, 1.85)
            sub_box, sub = tube_fraction(hu.shape, spacing, start, end, float(rng.uniform(0.35, 0.7)))
            local = tuple(slice(max(a.start, b.start) - b.start, min(a.stop, b.stop) - b.start)
                          for a, b in zip(sub_box, box, strict=True))
            inner = tuple(slice(max(a.start, b.start) - a.start, min(a.stop, b.stop) - a.start)
                          for a, b in zip(sub_box, box, strict=True))
            fraction[local] = np.maximum(fraction[local], sub[inner])
    fraction *= lungs[box]
    solid_hu = float(rng.uniform(-10.0, 55.0))
    if spec.kind == "solid":
        paint(hu, box, fraction, solid_hu)
    else:
        glass_hu = float(rng.uniform(-680.0, -480.0))
        paint(hu, box, fraction * rng.uniform(0.85, 1.0, size=fraction.shape).astype(np.float32), glass_hu)
        if spec.kind == "part-solid":
            core = radius * spec.solid_core_fraction
            core_fraction = np.clip((core - dist) / (2 * edge) + 0.5, 0.0, 1.0) * lungs[box]
            paint(hu, box, core_fraction, solid_hu)
    region = labels[box]
    region[(fraction >= 0.5) & (region == 0)] = label
