"""Head CT phantoms.

``make_head_ct`` is the simple phantom of the demo and the server tests: scalp, skull of
varying thickness, grey rim and white matter, ventricles, optional intraparenchymal bleed,
choroid-plexus and pineal calcifications, a beam-hardening rim along the inner table.

``make_head_case`` is the richer phantom the ICH model is trained and evaluated on: grey and
white matter with deep grey nuclei, sulci, ventricles of varying size, falx (sometimes with a
calcified plaque), choroid-plexus and pineal calcifications, skull-base beam-hardening streaks,
and any of the five bleed types (intraparenchymal, subdural crescent, epidural lens,
subarachnoid in sulci, intraventricular layering) at 50-90 HU and 0.1-80 mL. Acquisition
settings (matrix, field of view, slice thickness, kernel blur, noise, streaks) are parameters
(``HeadAcquisition``) so held-out cohorts can shift them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ai_engine.errors import SyntheticError
from ai_engine.results import HEMORRHAGE_SUBTYPES
from ai_engine.synthetic.geometry import ellipsoid_fraction, grid_3d, paint
from ai_engine.synthetic.truth import LesionTruth

HEAD_FOV_MM = 240.0
HEAD_SLICE_MM = 5.0
HEAD_SLICES = 40
NOISE_HU = 4.0
EFFACED_SULCI_RATE = 0.3  # heads with varied anatomy whose sulci are effaced (hardly any CSF between gyri)
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


# --- Rich head CT cases for training and evaluation (five bleed types, mimics, acquisition shifts) ---

SUBTYPES = HEMORRHAGE_SUBTYPES
SUBTYPE_VOLUME_ML: dict[str, tuple[float, float]] = {
    "intraparenchymal": (0.1, 80.0), "subdural": (1.0, 80.0), "epidural": (1.0, 60.0),
    "subarachnoid": (0.1, 15.0), "intraventricular": (0.2, 15.0),
}
SUB_SLICE_MM = 2.5  # thick slices are the average of sub-slices at most this thick (partial volume)


@dataclass(frozen=True)
class HeadAcquisition:
    """Scanner settings of a synthetic head CT; held-out cohorts shift these.

    ``kernel_mm`` is the in-plane Gaussian blur (sigma, mm) of the reconstruction kernel,
    ``streak_hu`` the amplitude of beam-hardening streaks at the skull base. ``varied_anatomy``
    (held-out cohorts) also varies what lies against the inner table: effaced sulci, a
    hyperdense rim of varying strength and width, a wider grey/white matter range.
    """

    rows: int = 256
    fov_mm: float = 240.0
    slice_mm: float = 5.0
    coverage_mm: float = 160.0
    noise_hu: float = 4.0
    kernel_mm: float = 0.5
    streak_hu: float = 12.0
    varied_anatomy: bool = False

    def __post_init__(self) -> None:
        if self.rows < 64 or not 0.5 <= self.slice_mm <= 10.0 or self.coverage_mm < 4 * self.slice_mm:
            raise SyntheticError(f"head acquisition out of range (rows >= 64, slice 0.5-10 mm, coverage >= 4 "
                                 f"slices): {self}")

    @property
    def slices(self) -> int:
        """Number of slices covering ``coverage_mm``."""
        return max(int(round(self.coverage_mm / self.slice_mm)), 4)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) in mm."""
        pixel = self.fov_mm / self.rows
        return (self.slice_mm, pixel, pixel)


@dataclass(frozen=True)
class HemorrhageSpec:
    """A bleed to draw: subtype (one of SUBTYPES), target volume, density, side (+1 left, -1 right)."""

    subtype: str
    volume_ml: float
    blood_hu: float
    side: float

    def __post_init__(self) -> None:
        if self.subtype not in SUBTYPES:
            raise SyntheticError(f"hemorrhage subtype must be one of {SUBTYPES}, got {self.subtype!r}")
        if not 0.05 <= self.volume_ml <= 120.0 or not 40.0 <= self.blood_hu <= 100.0:
            raise SyntheticError(f"hemorrhage volume 0.05-120 mL and density 40-100 HU, got {self.volume_ml} mL, "
                                 f"{self.blood_hu} HU")


@dataclass
class HeadCase:
    """One head CT: HU (z, y, x), labels (0 = none, i + 1 = SUBTYPES[i]), spacing, lesion truth."""

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    truths: list[LesionTruth]


def random_hemorrhage(rng: np.random.Generator, subtype: str | None = None, volume_scale: float = 1.0
                      ) -> HemorrhageSpec:
    """A bleed with log-uniform volume in its subtype's range (times ``volume_scale``, e.g. anticoagulation)."""
    subtype = subtype or str(rng.choice(SUBTYPES))
    low, high = SUBTYPE_VOLUME_ML[subtype]
    volume = float(np.exp(rng.uniform(np.log(low), np.log(high)))) * volume_scale
    return HemorrhageSpec(subtype, float(np.clip(volume, low, high)), float(rng.uniform(50.0, 90.0)),
                          float(rng.choice([-1.0, 1.0])))


@dataclass
class _Anatomy:
    """Fine-grid geometry shared by the tissue painter and the bleed painters."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    spacing: tuple[float, float, float]
    center_z: float
    semi: np.ndarray
    inner: np.ndarray  # mm inside the inner table (negative outside the brain)
    sulci: np.ndarray
    ventricles: np.ndarray


def _sulcal_field(rng: np.random.Generator, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Smooth random field (sum of plane waves, 14-26 mm wavelength) whose zero set draws sulci."""
    field = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), dtype=np.float32)
    for _ in range(5):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(14.0, 26.0) * direction
        field += np.sin(np.float32(k[0]) * z + np.float32(k[1]) * y + np.float32(k[2]) * x
                        + np.float32(rng.uniform(0, 2 * np.pi)))
    return field


def _paint_anatomy(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                   acquisition: HeadAcquisition) -> tuple[np.ndarray, _Anatomy]:
    """Scalp, skull, grey/white matter, deep grey nuclei, sulci, ventricles, falx and calcified mimics."""
    z, y, x = grid_3d(shape, spacing)
    semi = np.array([95.0, 92.0, 72.0]) * rng.uniform(0.9, 1.08, size=3)
    center_z = float(rng.uniform(-25.0, 0.0))
    rho = np.sqrt(((z - center_z) / semi[0]) ** 2 + (y / semi[1]) ** 2 + (x / semi[2]) ** 2)
    depth = (1.0 - rho) * float(np.mean(semi))
    del rho
    phi = np.arctan2(y, x)
    skull_t = rng.uniform(0.7, 1.3) * (5.0 + 1.8 * np.cos(2 * phi + rng.uniform(0, np.pi))
                                        + 0.8 * np.sin(3 * phi + rng.uniform(0, np.pi)))
    scalp_t = float(rng.uniform(3.0, 6.0))
    inner = (depth - scalp_t - skull_t).astype(np.float32)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[depth > 0] = 30.0
    bone = (depth > scalp_t) & (inner <= 0)
    mid = np.abs((depth - scalp_t) / skull_t - 0.5) * 2.0
    hu[bone] = np.broadcast_to(700.0 + 900.0 * mid, shape)[bone]
    del mid, bone, depth
    brain = inner > 0
    varied = acquisition.varied_anatomy
    white, grey = (rng.uniform(23.0, 30.0), rng.uniform(32.0, 42.0)) if varied else (rng.uniform(23.0, 29.0),
                                                                                      rng.uniform(33.0, 40.0))
    hu[brain] = white
    cortex_mm = rng.uniform(2.5, 4.0)
    hu[brain & (inner < cortex_mm)] = grey
    for side in (-1.0, 1.0):  # basal ganglia / thalami
        box, frac = ellipsoid_fraction(shape, spacing, (center_z / 4 + rng.uniform(-3, 3), 2.0, side * 20.0),
                                       (12.0, 18.0, 9.0))
        paint(hu, box, frac, grey - 2.0)
    field = _sulcal_field(rng, z, y, x)
    if varied:  # a young or swollen brain shows few sulci: the cortex runs as an unbroken band along the skull
        width = rng.uniform(0.0, 0.12) if rng.random() < EFFACED_SULCI_RATE else rng.uniform(0.25, 0.45)
        depth_mm = rng.uniform(7.0, 12.0)
    else:
        depth_mm = rng.uniform(7.0, 12.0)
        width = rng.uniform(0.25, 0.45)
    sulci = brain & (inner < depth_mm) & (np.abs(field) < width)
    hu[sulci] = rng.uniform(4.0, 12.0)
    del field
    ventricles = np.zeros(shape, dtype=bool)
    scale = rng.uniform(0.7, 1.5)
    radii = tuple(r * s for r, s in zip(VENTRICLE_RADII_MM, (1.0, 1.0, scale), strict=True))
    for center in VENTRICLE_CENTERS_MM:
        box, frac = ellipsoid_fraction(shape, spacing, (center[0] + center_z / 4, center[1],
                                                        np.sign(center[2]) * (4.0 + 5.0 * scale)), radii)
        ventricles[box] |= frac >= 0.5
        paint(hu, box, frac, 5.0)
    falx = brain & (np.abs(x) < 0.8) & ((z - center_z / 4) > 25.0)
    hu[falx] = 45.0
    anatomy = _Anatomy(z, y, x, spacing, center_z, semi, inner, sulci, ventricles)
    if rng.random() < 0.7:
        _add_calcifications(hu, rng, spacing, center_z)
    if rng.random() < 0.35:  # calcified falx plaque: dense, thin, midline
        spot = (center_z / 4 + rng.uniform(30.0, 60.0), rng.uniform(-40.0, 40.0), 0.0)
        box, frac = ellipsoid_fraction(shape, spacing, spot, (rng.uniform(3, 8), rng.uniform(4, 12), 1.2))
        paint(hu, box, frac, rng.uniform(150.0, 500.0))
    _add_skull_base_artifacts(hu, rng, anatomy, acquisition.streak_hu)
    # Beam hardening along the inner table: a hyperdense rim (of varying strength and width when varied).
    rim_mm, rim_hu = (rng.uniform(1.0, 3.0), rng.uniform(0.0, 12.0)) if varied else (2.0, 8.0)
    hu[brain & (inner < rim_mm)] += rim_hu
    return hu, anatomy


def _add_skull_base_artifacts(hu: np.ndarray, rng: np.random.Generator, anatomy: _Anatomy,
                              amplitude: float) -> None:
    """Bright and dark streaks between the petrous bones, fading with height above the skull base."""
    base_z = anatomy.center_z - 0.45 * anatomy.semi[0]
    weight = np.clip(1.0 - (anatomy.z[:, 0, 0] - base_z) / 30.0, 0.0, 1.0)
    if not weight.any():
        return
    y, x = anatomy.y[0], anatomy.x[0]
    streaks = np.zeros((y.shape[0], x.shape[1]), dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):
        angle = rng.uniform(-0.5, 0.5) if rng.random() < 0.6 else rng.uniform(0, np.pi)
        offset_y = rng.uniform(-10.0, 30.0)
        distance = np.abs((y - offset_y) * np.cos(angle) - x * np.sin(angle))
        streaks += np.float32(rng.choice([-1.0, 1.0]) * amplitude * rng.uniform(0.5, 1.2)) * np.exp(
            -distance**2 / (2 * rng.uniform(1.0, 3.0) ** 2)).astype(np.float32)
    brain = anatomy.inner > 0
    for k in np.flatnonzero(weight):
        hu[k][brain[k]] += (weight[k] * streaks)[brain[k]]


def _direction_angle(anatomy: _Anatomy, direction: np.ndarray) -> np.ndarray:
    """Angle (rad) between each voxel's direction from the head centre and ``direction`` (z, y, x)."""
    u = ((anatomy.z - anatomy.center_z) / anatomy.semi[0], anatomy.y / anatomy.semi[1], anatomy.x / anatomy.semi[2])
    norm = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2) + 1e-6
    cos = (u[0] * direction[0] + u[1] * direction[1] + u[2] * direction[2]) / norm
    return np.arccos(np.clip(cos, -1.0, 1.0))


def _extra_axial(anatomy: _Anatomy, rng: np.random.Generator, spec: HemorrhageSpec) -> np.ndarray:
    """Subdural crescent (broad, thin, tapered) or epidural lens (focal, thick, biconvex) under the inner table."""
    elevation = rng.uniform(0.0, 0.6)
    azimuth = rng.uniform(-0.9, 0.9)  # around the lateral convexity
    direction = np.array([elevation, np.sin(azimuth) * 0.8, spec.side * np.cos(azimuth)])
    direction /= np.linalg.norm(direction)
    angle = _direction_angle(anatomy, direction)
    if spec.subtype == "subdural":
        extent = rng.uniform(0.8, 1.3)
        profile = np.sqrt(np.clip(np.cos(np.pi / 2 * angle / extent), 0.0, 1.0))
    else:
        extent = rng.uniform(0.35, 0.6)
        profile = np.clip(1.0 - (angle / extent) ** 2, 0.0, 1.0)
    voxel_ml = float(np.prod(anatomy.spacing)) / 1000.0
    thickness = 2.0
    own_side = (anatomy.x * spec.side) > 1.0  # the falx stops an extra-axial bleed at the midline
    for _ in range(4):  # volume grows about linearly with thickness: a few rescaling steps
        mask = own_side & (anatomy.inner > 0) & (anatomy.inner < thickness * profile)
        got = float(mask.sum()) * voxel_ml
        if got <= 0:
            thickness *= 2.0
            continue
        thickness = float(np.clip(thickness * spec.volume_ml / got, 0.5, 45.0))
    return own_side & (anatomy.inner > 0) & (anatomy.inner < thickness * profile)


def _ball_near(anatomy: _Anatomy, candidates: np.ndarray, rng: np.random.Generator, volume_ml: float,
               center: np.ndarray | None = None) -> np.ndarray:
    """The ``volume_ml`` of ``candidates`` voxels nearest to a centre (a random candidate by default)."""
    points = np.argwhere(candidates)
    if points.size == 0:
        return candidates.copy()
    seed_point = points[int(rng.integers(len(points)))] if center is None else center
    spacing = np.asarray(anatomy.spacing)
    distance = np.linalg.norm((points - seed_point) * spacing, axis=1)
    count = max(int(round(volume_ml * 1000.0 / float(np.prod(spacing)))), 1)
    chosen = points[np.argsort(distance, kind="stable")[:count]]
    mask = np.zeros(candidates.shape, dtype=bool)
    mask[tuple(chosen.T)] = True
    return mask


def _hemorrhage_mask(anatomy: _Anatomy, rng: np.random.Generator, spec: HemorrhageSpec) -> np.ndarray:
    """Boolean fine-grid mask of the bleed described by ``spec``."""
    if spec.subtype in ("subdural", "epidural"):
        return _extra_axial(anatomy, rng, spec)
    if spec.subtype == "intraventricular":
        lateral = anatomy.ventricles & ((anatomy.x * spec.side) > 0)
        if rng.random() < 0.5:
            lateral = anatomy.ventricles
        points = np.argwhere(lateral)
        if points.size == 0:
            return lateral
        # Blood layers in the dependent (posterior, since supine) part of the ventricle.
        order = np.argsort(-points[:, 1], kind="stable")
        count = max(int(round(spec.volume_ml * 1000.0 / float(np.prod(anatomy.spacing)))), 1)
        mask = np.zeros(lateral.shape, dtype=bool)
        mask[tuple(points[order[:count]].T)] = True
        return mask
    if spec.subtype == "subarachnoid":
        near_side = anatomy.sulci & ((anatomy.x * spec.side) > -5.0)
        return _ball_near(anatomy, near_side, rng, spec.volume_ml)
    deep = (anatomy.inner > 12.0) & ~ndimage.binary_dilation(anatomy.ventricles, iterations=2)
    deep &= (anatomy.x * spec.side) > 8.0
    points = np.argwhere(deep)
    center = points[int(rng.integers(len(points)))] if points.size else None
    radius = (3.0 * spec.volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    lobes = np.zeros(deep.shape, dtype=bool)
    if center is not None:
        center_mm = np.array([anatomy.z.ravel()[center[0]], anatomy.y.ravel()[center[1]], anatomy.x.ravel()[center[2]]])
        for offset_scale in (0.0, 0.5):
            offset = rng.normal(0.0, 1.0, size=3) * radius * offset_scale
            radii = tuple(float(r) for r in radius * rng.uniform(0.7, 1.2, size=3) * (1.0 - 0.2 * offset_scale))
            box, frac = ellipsoid_fraction(deep.shape, anatomy.spacing, tuple(center_mm + offset), radii)
            lobes[box] |= frac >= 0.5
    # Keep the requested volume inside the brain (the shape is clipped off the inner table).
    brain = (anatomy.inner > 3.0) & ~anatomy.ventricles
    return _ball_near(anatomy, lobes & brain, rng, spec.volume_ml, center) if center is not None else lobes


def make_head_case(rng: np.random.Generator, acquisition: HeadAcquisition,
                   hemorrhages: list[HemorrhageSpec] | tuple[HemorrhageSpec, ...] = ()) -> HeadCase:
    """A head CT with the given bleeds (none = a negative, which may still carry calcified mimics).

    The anatomy is drawn on sub-slices of at most 2.5 mm and averaged to ``slice_mm`` so thick
    slices show partial volume; then the kernel blur and correlated noise are applied.
    """
    spacing = acquisition.spacing
    n_sub = max(int(np.ceil(acquisition.slice_mm / SUB_SLICE_MM)), 1)
    fine_spacing = (spacing[0] / n_sub, spacing[1], spacing[2])
    fine_shape = (acquisition.slices * n_sub, acquisition.rows, acquisition.rows)
    hu, anatomy = _paint_anatomy(rng, fine_shape, fine_spacing, acquisition)
    fine_labels = np.zeros(fine_shape, dtype=np.uint8)
    inside = anatomy.inner > 0
    for spec in hemorrhages:
        mask = _hemorrhage_mask(anatomy, rng, spec)
        soft = ndimage.gaussian_filter(mask.astype(np.float32), sigma=(0.0, 0.6, 0.6))
        hu += soft * (np.float32(spec.blood_hu) - hu) * inside
        fine_labels[(soft >= 0.5) & inside] = SUBTYPES.index(spec.subtype) + 1
    del anatomy
    shape = (acquisition.slices, acquisition.rows, acquisition.rows)
    hu = hu.reshape(shape[0], n_sub, *shape[1:]).mean(axis=1)
    labels = _majority_labels(fine_labels.reshape(shape[0], n_sub, *shape[1:]),
                              inside.reshape(shape[0], n_sub, *shape[1:]))
    sigma_px = acquisition.kernel_mm / spacing[1]
    if sigma_px > 0.05:
        hu = ndimage.gaussian_filter(hu, sigma=(0.0, sigma_px, sigma_px))
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, max(sigma_px, 0.5), max(sigma_px, 0.5)))
    hu += noise * np.float32(acquisition.noise_hu / max(float(noise.std()), 1e-6))
    truths = bleed_truths(labels, spacing)
    return HeadCase(hu.astype(np.float32), labels, spacing, truths)


def _majority_labels(sub: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Per thick slice: the bleed label covering at least half of the sub-slices, else 0.

    ``inside`` marks the sub-slice voxels inside the inner table: a thick voxel that lies half
    outside it (blood averaged with bone, which reads as bone) is not labelled blood.
    """
    n_sub = sub.shape[1]
    labels = np.zeros((sub.shape[0], *sub.shape[2:]), dtype=np.uint8)
    within = inside.sum(axis=1) * 2 > n_sub
    for value in range(1, len(SUBTYPES) + 1):
        labels[((sub == value).sum(axis=1) * 2 >= n_sub) & within] = value
    return labels


def bleed_truths(labels: np.ndarray, spacing: tuple[float, float, float]) -> list[LesionTruth]:
    """One LesionTruth per bleed label present: centroid, volume (mL) and subtype."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    truths = []
    for value in np.unique(labels[labels > 0]):
        mask = labels == value
        centroid = ndimage.center_of_mass(mask)
        truths.append(LesionTruth(kind="hemorrhage", center_voxel=tuple(float(c) for c in centroid), view_index=0,
                                  size=float(mask.sum()) * voxel_ml, subtype=SUBTYPES[int(value) - 1]))
    return truths
