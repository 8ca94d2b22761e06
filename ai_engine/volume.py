"""One CT series as a regular volume in Hounsfield units, with its patient-space geometry.

Detectors need evenly spaced, parallel slices; anything else (a missing slice, mixed orientations,
a stack that is not straight) is rejected with the reason instead of being silently resampled. A gantry
tilt (each slice shifted in-plane from the last by the same amount) is kept as it was acquired: the
volume records the shift, so every voxel keeps its exact patient position.

A series comes as single-frame images (CT Image Storage) or as one enhanced multi-frame image (Enhanced CT,
Legacy Converted Enhanced CT), whose frames are placed by their functional groups (per frame, else shared).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from ai_engine.contrast import unnamed_agent
from ai_engine.errors import VolumeError

ORIENTATION_TOLERANCE = 1e-4
TILT_TOLERANCE = 1e-3  # in-plane drift per mm along the normal (about 0.06 degrees) counted as no tilt
STACK_TOLERANCE_MM = 0.05  # how far a slice may lie off the straight line of the others (rounded positions)
MAX_TILT_DEGREES = 30.0
SPACING_TOLERANCE = 0.1  # fraction of the median slice step
DEFERRED_BYTES = 4096  # values larger than this (pixel data) are read from the file when first used


@dataclass
class Volume:
    """HU voxels (z, y, x) float32 and where they lie in patient LPS space.

    ``direction`` rows are the row direction (+x index), the column direction (+y index) and
    the slice normal (+z index); ``origin_mm`` is the first voxel of the first slice;
    ``shear_mm`` is how far each slice lies shifted in-plane from the previous one (gantry tilt;
    zero for a straight stack), so slice k is ``k * (dz * normal + shear_mm)`` from the first.
    ``contrast_agent`` is the series' Contrast/Bolus Agent as the images declare it (empty: none declared).
    ``frame_numbers``: for a series sent as one multi-frame image, slice k is frame ``frame_numbers[k]`` (1-based)
    of ``paths[k]``; None when every slice is a single-frame image. ``slice_thickness_mm``: the thickest Slice
    Thickness the slices declare (an overlapping reconstruction's exceeds its spacing); None when none does.
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
    frame_numbers: list[int] | None = None
    slice_thickness_mm: float | None = None

    def voxel_to_patient(self, zyx: Sequence[float]) -> tuple[float, float, float]:
        """Patient LPS position (x, y, z) mm of a (possibly fractional) voxel index (z, y, x)."""
        z, y, x = (float(v) for v in zyx)
        dz, dy, dx = self.spacing_mm
        point = (np.asarray(self.origin_mm) + x * dx * self.direction[0] + y * dy * self.direction[1]
                 + z * (dz * self.direction[2] + np.asarray(self.shear_mm)))
        return (float(point[0]), float(point[1]), float(point[2]))

    def patient_to_voxel(self, xyz_mm: Sequence[float]) -> np.ndarray:
        """Fractional voxel index (z, y, x) of a patient position (x, y, z) mm: the inverse of ``voxel_to_patient``,
        gantry tilt (``shear_mm``) included."""
        dz, dy, dx = self.spacing_mm
        axes = np.stack([dx * self.direction[0], dy * self.direction[1],
                         dz * self.direction[2] + np.asarray(self.shear_mm)], axis=1)  # columns: x, y, z steps
        xyz = np.linalg.solve(axes, np.asarray(xyz_mm, dtype=np.float64) - np.asarray(self.origin_mm))
        return xyz[::-1]

    @property
    def tilt_degrees(self) -> float:
        """The gantry tilt: the angle between the slice normal and the line the slices are stacked on."""
        return float(np.degrees(np.arctan(np.linalg.norm(self.shear_mm) / self.spacing_mm[0])))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing_mm)) / 1000.0


@dataclass(frozen=True)
class _Image:
    """One slice as read: a single-frame image, or one frame (``number``, 1-based) of a multi-frame image."""

    path: Path
    dataset: pydicom.Dataset
    number: int | None
    orientation: tuple[float, ...]
    position: tuple[float, ...]
    pixel_spacing: tuple[float, ...]
    thickness: float | None
    slope: float
    intercept: float
    localizer: bool


HEADER_COUNTS = {"ImageOrientationPatient": 6, "ImagePositionPatient": 3, "PixelSpacing": 2,
                 "ImagerPixelSpacing": 2}


def header_numbers(path: Path, keyword: str, value: object) -> tuple[float, ...]:
    """``value`` of ``keyword`` as its ``HEADER_COUNTS`` finite numbers, positive ones for a spacing; a VolumeError
    naming the attribute otherwise (a negative Pixel Spacing put a left-sided bleed on the right, outside the
    head; a zero or single-valued one failed deep in a detector)."""
    try:
        numbers = tuple(float(item) for item in _values(value))
    except (TypeError, ValueError):
        numbers = ()
    spacing = keyword.endswith("PixelSpacing")
    if len(numbers) != HEADER_COUNTS[keyword] or not all(np.isfinite(n) and (n > 0 or not spacing) for n in numbers):
        raise VolumeError(f"{path}: {keyword} must be {HEADER_COUNTS[keyword]} {'positive ' * spacing}numbers, "
                          f"got {value!r}")
    return numbers


def image_type_values(image_type: object) -> list[str]:
    """The values of an Image Type (or Frame Type) as pydicom reads it or as the ingest stores it (a string, a list
    of strings, None)."""
    return [] if image_type is None else [str(v) for v in _values(image_type)]


def _values(value: object) -> list[object]:
    """A header value's values: those of a multi-valued one, else the one."""
    return list(value) if isinstance(value, list | tuple | MultiValue) else [value]


def is_localizer(image_type: object) -> bool:
    """Image Type (or Frame Type) says LOCALIZER: a scout, which no volume reads."""
    return any(v.upper() == "LOCALIZER" for v in image_type_values(image_type))


# Image Type / Frame Type values of images computed across slices (CT's Derived Pixel Contrast and the vendors'
# words): a slab MIP enlarges a nodule and turns vessels into blobs, so no detector may read one as acquired slices.
PROJECTIONS = frozenset({"MIP", "MINIP", "MIN IP", "MNIP", "MAXIP", "MAX_IP", "MIN_IP", "MAXIMUM", "MINIMUM",
                         "VOLUME_RENDER", "VOLUME RENDERING", "SURFACE_RENDER", "PROJECTION IMAGE", "CURVED", "CPR"})
"""Image Type (or Frame Type) values of projections and renderings: refused here, left out by the default CT
routing rules (``radfusion.settings``), so the two cannot disagree."""


def _refuse_projection(path: Path, image_type: object) -> None:
    """VolumeError for an image whose Image Type (or Frame Type) names a projection (``PROJECTIONS``)."""
    named = sorted({v.strip().upper() for v in image_type_values(image_type)} & PROJECTIONS)
    if named:
        raise VolumeError(f"{path}: a projection image (Image Type {'/'.join(named)}), not acquired slices; route "
                          "the study's axial reconstruction instead")


def _single_frame(path: Path, ds: pydicom.Dataset) -> _Image:
    _refuse_projection(path, ds.get("ImageType"))
    if is_localizer(ds.get("ImageType")):  # left out of the volume: nothing of it is read but that it is a scout
        return _Image(path, ds, None, (), (), (), None, 1.0, 0.0, localizer=True)
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if not ds.get(keyword):  # absent, or present and empty
            raise VolumeError(f"{path}: missing {keyword}, needed to place the slice in patient space")
    if ds.get("RescaleIntercept") in (None, ""):  # Type 1 in CT; taken as 0, every HU read 1024 too high
        raise VolumeError(f"{path}: missing Rescale Intercept, needed to read the slice in Hounsfield units")
    slope = ds.get("RescaleSlope")
    thickness = ds.get("SliceThickness")
    located = [header_numbers(path, keyword, ds[keyword].value)
               for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")]
    return _Image(path, ds, None, *located, None if thickness in (None, "") else float(thickness),
                  1.0 if slope in (None, "") else float(slope), float(ds.RescaleIntercept), localizer=False)


def _frame_group(ds: pydicom.Dataset, k: int, sequence: str, keyword: str) -> pydicom.Dataset | None:
    """The item of functional group ``sequence`` that holds ``keyword`` for frame ``k`` (0-based): the frame's own,
    else the shared one."""
    for groups in (ds.PerFrameFunctionalGroupsSequence[k], *ds.get("SharedFunctionalGroupsSequence", [])[:1]):
        if sequence in groups and len(groups[sequence].value) and keyword in groups[sequence][0]:
            return groups[sequence][0]
    return None


def _located(path: Path, ds: pydicom.Dataset, k: int, sequence: str, keyword: str) -> tuple[float, ...]:
    item = _frame_group(ds, k, sequence, keyword)
    if item is None:
        raise VolumeError(f"{path}: frame {k + 1} has no {keyword} in its functional groups, needed to place it in "
                          "patient space")
    return header_numbers(path, keyword, item[keyword].value)


def _rescale(path: Path, ds: pydicom.Dataset, k: int) -> tuple[float, float]:
    """Frame ``k``'s Rescale Slope and Intercept: its Pixel Value Transformation, else the image's top level; a CT
    frame without either cannot be read in HU."""
    item = _frame_group(ds, k, "PixelValueTransformationSequence", "RescaleIntercept")
    source = item if item is not None else ds
    if "RescaleIntercept" not in source:
        raise VolumeError(f"{path}: frame {k + 1} has no Rescale Intercept (Pixel Value Transformation), needed to "
                          "read it in Hounsfield units")
    return float(source.get("RescaleSlope", 1.0)), float(source.RescaleIntercept)


def _enhanced_frames(path: Path, ds: pydicom.Dataset, count: int) -> list[_Image]:
    """The frames of an enhanced multi-frame image, each placed by its functional groups."""
    listed = len(ds.PerFrameFunctionalGroupsSequence)
    if listed != count:
        raise VolumeError(f"{path}: Number of Frames is {count} but the Per-frame Functional Groups Sequence has "
                          f"{listed} items")
    parts = int(ds.get("InConcatenationTotalNumber", 1) or 1)
    if parts > 1:
        raise VolumeError(f"{path}: one part of a concatenation of {parts} images; a volume is read from one "
                          "multi-frame image, so send the series unsplit or as single-frame images")
    images = []
    for k in range(count):
        measures = _frame_group(ds, k, "PixelMeasuresSequence", "SliceThickness")
        thickness = None if measures is None or measures.SliceThickness in (None, "") else measures.SliceThickness
        frame_type = _frame_group(ds, k, "CTImageFrameTypeSequence", "FrameType")
        image_type = ds.get("ImageType") if frame_type is None else frame_type.FrameType
        _refuse_projection(path, image_type)
        localizer = is_localizer(image_type)
        images.append(_Image(
            path, ds, k + 1, _located(path, ds, k, "PlaneOrientationSequence", "ImageOrientationPatient"),
            _located(path, ds, k, "PlanePositionSequence", "ImagePositionPatient"),
            _located(path, ds, k, "PixelMeasuresSequence", "PixelSpacing"),
            None if thickness is None else float(thickness), *_rescale(path, ds, k), localizer))
    return images


def _read(path: Path) -> list[_Image]:
    """The slices one file holds: itself, or the frames of an enhanced multi-frame image. Pixel data is read from the
    file when it is decoded (``_pixels``), so a series is never held twice over in memory."""
    ds = pydicom.dcmread(path, defer_size=DEFERRED_BYTES)
    if "PixelData" not in ds:
        raise VolumeError(f"{path}: has no Pixel Data; a volume needs image instances")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(path, ds, count)
    if count > 1:
        raise VolumeError(f"{path}: a multi-frame image of {count} frames without per-frame functional groups "
                          "(not an enhanced image): its frames cannot be placed in patient space")
    return [_single_frame(path, ds)]


def _declared_agent(ds: pydicom.Dataset) -> str:
    """Contrast/Bolus Agent as declared: the attribute, else the first coded agent of the Contrast/Bolus Agent
    Sequence (enhanced images always, single-frame ones may code it so), else ``unnamed_agent`` (another attribute
    of the module says one was given); empty when none of them does. The ingest's routing attributes read it the
    same way (``dicom_node.header`` and ``radfusion.ingest``)."""
    agent = str(ds.get("ContrastBolusAgent", "") or "").strip()
    if agent:
        return agent
    element = ds.data_element("ContrastBolusAgentSequence") if "ContrastBolusAgentSequence" in ds else None
    if element is not None and element.VR == "SQ" and len(element.value):  # a malformed optional sequence: absent
        item = element.value[0]
        coded = str(item.get("CodeMeaning", "") or item.get("CodeValue", "") or "").strip()
        if coded:
            return coded
    return unnamed_agent(ds)


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
        raise VolumeError(f"slice spacing must be regular: {_irregularity(steps, int(np.argmax(off)), median)}")
    return steps, tilt


def _regular(steps: np.ndarray) -> bool:
    return len(steps) > 0 and bool(np.all(np.abs(steps - np.median(steps)) <= SPACING_TOLERANCE * np.median(steps)))


def _irregularity(steps: np.ndarray, index: int, median: float) -> str:
    """What is irregular about the steps, the first one off the median being ``index``: two zones of spacing (a
    finer posterior fossa), or a step that is a multiple of the median (a missing slice), or some other gap."""
    split = next((k for k in range(1, len(steps)) if _regular(steps[:k]) and _regular(steps[k:])
                  and not _regular(steps[k - 1: k + 1])), None)
    if split is not None:
        before, after = float(np.median(steps[:split])), float(np.median(steps[split:]))
        return (f"the spacing changes from {before:.3f} mm to {after:.3f} mm after slice {split}: a series "
                "reconstructed at two spacings is not analysed; send a reconstruction of one spacing")
    step = float(steps[index])
    missing = round(step / median) - 1
    if missing >= 1 and abs(step - (missing + 1) * median) <= SPACING_TOLERANCE * median:
        return f"step {step:.3f} mm after slice {index} is {missing + 1} x the median {median:.3f} mm " \
               f"({missing} missing slice{'s' if missing > 1 else ''})"
    return f"step {step:.3f} mm after slice {index} differs from the median {median:.3f} mm (missing slice or gap)"


def _check_one_multiframe(images: list[_Image]) -> None:
    """A series as one enhanced image or as single-frame images: the results reference one or the other."""
    files = {image.path for image in images}
    multiframe = {image.path for image in images if image.number is not None}
    if multiframe and len(files) > 1:
        raise VolumeError(f"the series holds {len(multiframe)} multi-frame image(s) beside {len(files - multiframe)} "
                          "other image(s); a volume is read from one multi-frame image or from single-frame images "
                          "only")


def _decoded(image: _Image) -> np.ndarray:
    """The image's pixel data, read from its file now (``DEFERRED_BYTES``); a file replaced since its header was
    read (an instance sent again) is named, not a bare pydicom error (the resend reopens the study, so it is read
    again)."""
    try:
        return image.dataset.pixel_array
    except (OSError, ValueError) as exc:
        raise VolumeError(f"{image.path}: its pixel data could not be read ({type(exc).__name__}: {exc}); the file "
                          "changed or went since its header was read") from exc


AIR_HU = -1000.0  # what a padded pixel (outside the reconstructed field) reads as


def _padded(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Where ``stored`` holds the Pixel Padding Value (up to the Pixel Padding Range Limit): pixels outside the
    reconstructed field, which read as air; None when the image declares none that can be read. Unread, a padding of
    63536 in unsigned pixels (-2000 written without its sign, as some CT scanners do) read as 62512 HU around the
    head. The value is read in the pixels' own sign (-2000 over unsigned pixels is 63536). A padding value beyond
    Bits Stored is not recognised: pydicom reads the pixels without the bits above it."""
    value = ds.get("PixelPaddingValue")
    limit = ds.get("PixelPaddingRangeLimit", value)
    if not isinstance(value, int) or not isinstance(limit, int):  # absent, empty, or several values
        return None
    allocated = int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    value, limit = (_in_sign(v, allocated, signed) for v in (value, limit))
    return (stored >= min(value, limit)) & (stored <= max(value, limit))


def _in_sign(value: int, bits: int, signed: bool) -> int:
    """``value`` as a ``bits``-bit pixel of that sign reads it (US and SS name the same bits)."""
    unsigned = value % (1 << bits)
    return unsigned - (1 << bits) if signed and unsigned >= 1 << (bits - 1) else unsigned


def _pixels(images: list[_Image]) -> np.ndarray:
    """HU of each slice (rescaled per slice or frame), each file's pixel data decoded once; a single-frame image's
    pixel data is let go once it is copied (the series is in ``array`` then)."""
    decoded: dict[Path, np.ndarray] = {}
    first = images[0].dataset
    array = np.empty((len(images), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for k, image in enumerate(images):
        if image.number is None:
            stored = _decoded(image)
            del image.dataset.PixelData  # and the decoded copy pydicom keeps with it
        else:  # (frames, rows, columns) of a multi-frame image, decoded for its first frame
            if image.path not in decoded:
                decoded[image.path] = _decoded(image).reshape(-1, *array.shape[1:])
            stored = decoded[image.path][image.number - 1]
        array[k] = stored.astype(np.float32) * np.float32(image.slope) + np.float32(image.intercept)
        padded = _padded(image.dataset, stored)
        if padded is not None:
            array[k][padded] = AIR_HU
    return array


def image_direction(orientation: Sequence[float]) -> np.ndarray:
    """The direction rows of an image's Image Orientation (Patient): row, column, and their cross product (the
    slice normal), as ``Volume.direction`` holds them."""
    row, column = np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:6], dtype=float)
    return np.stack([row, column, np.cross(row, column)])


def load_series(paths: Sequence[Path | str]) -> Volume:
    """Read the slices of one series, order them along the normal and stack them in HU.

    Localizer (scout) images or frames that some scanners put into the axial series (Image Type or Frame Type
    LOCALIZER) are left out; a series of localizers only is not a volume.
    """
    if not paths:
        raise VolumeError("no files given for the volume")
    read = [image for p in paths for image in _read(Path(p))]
    images = [image for image in read if not image.localizer]
    if not images:
        raise VolumeError(f"all {len(read)} images or frames are localizers (Image Type or Frame Type LOCALIZER); "
                          "no volume to analyse")
    _check_one_multiframe(images)
    series_uid = _single({str(image.dataset.SeriesInstanceUID) for image in images}, "SeriesInstanceUID")
    study_uid = _single({str(image.dataset.StudyInstanceUID) for image in images}, "StudyInstanceUID")
    shapes = {(int(image.dataset.Rows), int(image.dataset.Columns)) for image in images}
    if len(shapes) != 1:
        raise VolumeError(f"all slices must have the same rows x columns, got {sorted(shapes)}")
    orientations = np.array([image.orientation for image in images])
    if np.max(np.abs(orientations - orientations[0])) > ORIENTATION_TOLERANCE:
        raise VolumeError("slices have mixed orientations (ImageOrientationPatient differs); "
                          "one volume needs one orientation")
    direction = image_direction(orientations[0])
    normal = direction[2]
    positions = np.array([image.position for image in images])
    order = np.argsort(positions @ normal, kind="stable")
    images = [images[i] for i in order]
    positions = positions[order]
    spacings = {tuple(round(v, 4) for v in image.pixel_spacing) for image in images}
    if len(spacings) != 1:
        raise VolumeError(f"all slices must have the same PixelSpacing, got {sorted(spacings)}")
    dy, dx = images[0].pixel_spacing
    shear = np.zeros(3)
    if len(images) > 1:
        steps, tilt = _slice_steps(positions, normal)
        dz = float(np.mean(steps))
        if np.linalg.norm(tilt) > TILT_TOLERANCE:
            shear = tilt * dz
    else:
        dz = images[0].thickness or 1.0
    frame_numbers = [image.number for image in images if image.number is not None]
    thicknesses = [image.thickness for image in images if image.thickness is not None]
    return Volume(
        array=_pixels(images),
        spacing_mm=(dz, float(dy), float(dx)),
        origin_mm=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=direction,
        sop_instance_uids=[str(image.dataset.SOPInstanceUID) for image in images],
        paths=[image.path for image in images],
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        shear_mm=(float(shear[0]), float(shear[1]), float(shear[2])),
        contrast_agent=_declared_agent(images[0].dataset),
        frame_numbers=frame_numbers or None,
        slice_thickness_mm=max(thicknesses) if thicknesses else None,
    )
