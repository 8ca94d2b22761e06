"""One CT series as a regular volume in Hounsfield units, with its patient-space geometry.

Detectors need evenly spaced, parallel slices; anything else (a missing slice, mixed orientations,
a stack that is not straight) is rejected with the reason instead of being silently resampled. A gantry
tilt (each slice shifted in-plane from the last by the same amount) is kept as it was acquired: the
volume records the shift, so every voxel keeps its exact patient position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from ai_engine.errors import VolumeError

ORIENTATION_TOLERANCE = 1e-4
TILT_TOLERANCE = 1e-3  # in-plane drift per mm along the normal (about 0.06 degrees) counted as no tilt
STACK_TOLERANCE_MM = 0.05  # how far a slice may lie off the straight line of the others (rounded positions)
MAX_TILT_DEGREES = 30.0
SPACING_TOLERANCE = 0.1  # fraction of the median slice step


@dataclass
class Volume:
    """HU voxels (z, y, x) float32 and where they lie in patient LPS space.

    ``direction`` rows are the row direction (+x index), the column direction (+y index) and
    the slice normal (+z index); ``origin_mm`` is the first voxel of the first slice;
    ``shear_mm`` is how far each slice lies shifted in-plane from the previous one (gantry tilt;
    zero for a straight stack), so slice k is ``k * (dz * normal + shear_mm)`` from the first.
    ``contrast_agent`` is the series' Contrast/Bolus Agent as the images declare it (empty: none declared).
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: np.ndarray
    sop_instance_uids: list[str]
    paths: list[Path]
    series_instance_uid: str
    study_instance_uid: str
    shear_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    contrast_agent: str = ""

    def voxel_to_patient(self, zyx: Sequence[float]) -> tuple[float, float, float]:
        """Patient LPS position (x, y, z) mm of a (possibly fractional) voxel index (z, y, x)."""
        z, y, x = (float(v) for v in zyx)
        dz, dy, dx = self.spacing_mm
        point = (np.asarray(self.origin_mm) + x * dx * self.direction[0] + y * dy * self.direction[1]
                 + z * (dz * self.direction[2] + np.asarray(self.shear_mm)))
        return (float(point[0]), float(point[1]), float(point[2]))

    @property
    def tilt_degrees(self) -> float:
        """The gantry tilt: the angle between the slice normal and the line the slices are stacked on."""
        return float(np.degrees(np.arctan(np.linalg.norm(self.shear_mm) / self.spacing_mm[0])))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing_mm)) / 1000.0


def _read(path: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise VolumeError(f"{path}: has no Pixel Data; a volume needs image instances")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise VolumeError(f"{path}: multi-frame images ({frames} frames) are not supported; "
                          "send the series as single-frame instances")
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if keyword not in ds:
            raise VolumeError(f"{path}: missing {keyword}, needed to place the slice in patient space")
    return ds


def _single(values: set[str], what: str) -> str:
    if len(values) != 1:
        raise VolumeError(f"files must belong to one {what}, got {len(values)}: {sorted(values)[:3]}")
    return next(iter(values))


def _slice_steps(positions: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check that slices stack without gaps on one straight line; return the steps along the normal (mm)
    and the in-plane shift per mm along the normal (a patient-space vector; zero unless the gantry was tilted)."""
    along = positions @ normal
    steps = np.diff(along)
    if np.any(steps <= 1e-3):
        index = int(np.argmin(steps))
        raise VolumeError(f"two slices share position {along[index]:.3f} mm along the normal; "
                          "duplicate instances or two stacks in one series")
    drift = (positions[1:] - positions[:-1] - steps[:, None] * normal) / steps[:, None]  # in-plane mm per mm
    tilt = np.median(drift, axis=0)
    off_mm = np.linalg.norm(drift - tilt, axis=1) * steps
    if np.max(off_mm) > STACK_TOLERANCE_MM:
        index = int(np.argmax(off_mm))
        raise VolumeError(f"slices are not stacked on one straight line: the step from slice {index} to slice "
                          f"{index + 1} is {off_mm[index]:.2f} mm off in-plane from the line of the others")
    angle = float(np.degrees(np.arctan(np.linalg.norm(tilt))))
    if angle > MAX_TILT_DEGREES:
        raise VolumeError(f"gantry tilt of {angle:.1f} degrees exceeds the {MAX_TILT_DEGREES:g} degrees analysed")
    median = float(np.median(steps))
    off = np.abs(steps - median) > SPACING_TOLERANCE * median
    if np.any(off):
        index = int(np.argmax(off))
        raise VolumeError(f"slice spacing must be regular: step {steps[index]:.3f} mm after slice {index} "
                          f"differs from the median {median:.3f} mm (missing slice or gap)")
    return steps, tilt


def _localizer(ds: pydicom.Dataset) -> bool:
    image_type = ds.get("ImageType", [])
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return any(str(v).upper() == "LOCALIZER" for v in values)


def load_series(paths: Sequence[Path | str]) -> Volume:
    """Read single-frame slices of one series, order them along the normal and stack them in HU.

    Localizer (scout) images that some scanners put into the axial series (ImageType LOCALIZER) are
    left out; a series of localizers only is not a volume.
    """
    if not paths:
        raise VolumeError("no files given for the volume")
    datasets = [(Path(p), _read(Path(p))) for p in paths]
    slices = [(path, ds) for path, ds in datasets if not _localizer(ds)]
    if not slices:
        raise VolumeError(f"all {len(datasets)} images are localizers (ImageType LOCALIZER); no volume to analyse")
    datasets = slices
    series_uid = _single({str(ds.SeriesInstanceUID) for _, ds in datasets}, "SeriesInstanceUID")
    study_uid = _single({str(ds.StudyInstanceUID) for _, ds in datasets}, "StudyInstanceUID")
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in datasets}
    if len(shapes) != 1:
        raise VolumeError(f"all slices must have the same rows x columns, got {sorted(shapes)}")
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in datasets])
    if np.max(np.abs(orientations - orientations[0])) > ORIENTATION_TOLERANCE:
        raise VolumeError("slices have mixed orientations (ImageOrientationPatient differs); "
                          "one volume needs one orientation")
    row_dir, col_dir = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    datasets = [datasets[i] for i in order]
    positions = positions[order]
    spacings = {tuple(round(float(v), 4) for v in ds.PixelSpacing) for _, ds in datasets}
    if len(spacings) != 1:
        raise VolumeError(f"all slices must have the same PixelSpacing, got {sorted(spacings)}")
    dy, dx = (float(v) for v in datasets[0][1].PixelSpacing)
    shear = np.zeros(3)
    if len(datasets) > 1:
        steps, tilt = _slice_steps(positions, normal)
        dz = float(np.mean(steps))
        if np.linalg.norm(tilt) > TILT_TOLERANCE:
            shear = tilt * dz
    else:
        dz = float(datasets[0][1].get("SliceThickness", 1.0) or 1.0)
    array = np.empty((len(datasets), *next(iter(shapes))), dtype=np.float32)
    for k, (path, ds) in enumerate(datasets):
        slope = float(ds.get("RescaleSlope", 1.0))
        intercept = float(ds.get("RescaleIntercept", 0.0))
        array[k] = ds.pixel_array.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return Volume(
        array=array,
        spacing_mm=(dz, float(dy), float(dx)),
        origin_mm=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=np.stack([row_dir, col_dir, normal]),
        sop_instance_uids=[str(ds.SOPInstanceUID) for _, ds in datasets],
        paths=[path for path, _ in datasets],
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        shear_mm=(float(shear[0]), float(shear[1]), float(shear[2])),
        contrast_agent=str(datasets[0][1].get("ContrastBolusAgent", "") or "").strip(),
    )
