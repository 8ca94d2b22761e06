"""Axial CT volumes turned to the orientation the CT detectors were built for, and their findings turned back.

The detectors read a volume's array axes as anatomy: columns toward the patient's left, rows toward
the back, slices toward the head (LPS, the orientation of a head-first supine axial series). A series
stored another way (feet first, prone, a mirrored row direction, rows and columns exchanged) is the same
anatomy with flipped or exchanged axes; ``to_lps`` turns it into that orientation, and
``Reorientation.restore`` maps masks, heat maps and voxel centres of the findings back onto the stored
pixels, so reports reference the source images correctly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ai_engine.errors import VolumeError
from ai_engine.results import DetectorResult, Finding
from ai_engine.volume import Volume

AXIS_NAMES = ("row direction", "column direction", "slice normal")


@dataclass(frozen=True)
class Reorientation:
    """How a stored (z, y, x) volume becomes LPS order: rows and columns exchanged or not, then axes flipped.

    ``flips`` are on the LPS array's (z, y, x) axes; ``shape`` is the stored array's; ``notes`` say
    what the detector should report about the geometry it analysed (a gantry tilt).
    """

    swap: bool
    flips: tuple[bool, bool, bool]
    shape: tuple[int, int, int]
    notes: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        """True when the stored volume is not already in LPS order."""
        return self.swap or any(self.flips)

    @property
    def lps_shape(self) -> tuple[int, int, int]:
        """The array shape in LPS order."""
        z, y, x = self.shape
        return (z, x, y) if self.swap else (z, y, x)

    def to_lps(self, array: np.ndarray) -> np.ndarray:
        """A stored-order (z, y, x) array in LPS order (contiguous; the array itself when nothing changes)."""
        if not self.any:
            return array
        return np.ascontiguousarray(self._flip(np.swapaxes(array, -1, -2) if self.swap else array))

    def to_stored(self, array: np.ndarray) -> np.ndarray:
        """An LPS-order (z, y, x) array back in the stored order."""
        if not self.any:
            return array
        flipped = self._flip(array)
        return np.ascontiguousarray(np.swapaxes(flipped, -1, -2) if self.swap else flipped)

    def voxel_to_lps(self, zyx: tuple[float, ...]) -> tuple[float, ...]:
        """A stored (z, y, x) voxel index as an LPS-order index."""
        z, y, x = (float(v) for v in zyx)
        return self._flip_voxel((z, x, y) if self.swap else (z, y, x))

    def voxel_to_stored(self, zyx: tuple[float, ...]) -> tuple[float, ...]:
        """An LPS-order (z, y, x) voxel index as a stored index."""
        z, y, x = self._flip_voxel(zyx)
        return (z, x, y) if self.swap else (z, y, x)

    def restore(self, result: DetectorResult) -> DetectorResult:
        """``result`` computed on the LPS volume, with every finding mapped back onto the stored voxels
        and the geometry notes added."""
        findings = [self._restore(f) for f in result.findings] if self.any else result.findings
        return dataclasses.replace(result, findings=findings, notes=[*result.notes, *self.notes])

    def _restore(self, finding: Finding) -> Finding:
        return dataclasses.replace(
            finding, center_voxel=self.voxel_to_stored(finding.center_voxel),
            mask=None if finding.mask is None else self.to_stored(finding.mask),
            heatmap=None if finding.heatmap is None else self.to_stored(finding.heatmap))

    def _flip(self, array: np.ndarray) -> np.ndarray:
        return array[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def _flip_voxel(self, zyx: tuple[float, ...]) -> tuple[float, float, float]:
        z, y, x = (float(n - 1 - v) if f else float(v)
                   for v, f, n in zip(zyx, self.flips, self.lps_shape, strict=True))
        return (z, y, x)


def is_axial(direction: np.ndarray) -> bool:
    """True when ``direction`` (rows: the row direction, the column direction, the slice normal) is an axial
    series': the normal mostly along the patient's z axis, the rows and columns along x and y in either order."""
    dominant = [int(np.argmax(np.abs(axis))) for axis in np.asarray(direction, dtype=float)]
    return dominant[2] == 2 and sorted(dominant[:2]) == [0, 1]


def to_lps(volume: Volume) -> tuple[Volume, Reorientation]:
    """``volume`` in LPS order, and the reorientation that maps results back onto its stored voxels.

    Only axial series qualify: the slice normal must run mostly along the patient's z axis (a tilted or
    oblique axial reconstruction does) and the rows and columns along x and y, in either order (an axial
    series stored rotated by 90 degrees); a sagittal or coronal series is refused with a VolumeError.
    """
    direction = np.asarray(volume.direction, dtype=float)
    if not is_axial(direction):
        names = ", ".join(f"{name} {np.round(axis, 3).tolist()}" for name, axis in zip(AXIS_NAMES, direction, strict=True))
        raise VolumeError(f"not an axial series ({names}, in patient x, y, z): the CT detectors need axial slices")
    swap = int(np.argmax(np.abs(direction[0]))) == 1
    lps_direction = direction[[1, 0, 2]] if swap else direction
    flips = tuple(bool(lps_direction[i, i] < 0) for i in (2, 1, 0))
    notes = () if not any(volume.shear_mm) else (
        f"gantry tilt {volume.tilt_degrees:.1f} degrees: analysed on the acquired (sheared) slice grid; "
        "positions and volumes are exact, shapes are sheared by the tilt",)
    reorientation = Reorientation(swap, flips, tuple(int(n) for n in volume.array.shape), notes)  # type: ignore[arg-type]
    if not reorientation.any:
        return volume, reorientation
    corner = volume.voxel_to_patient(reorientation.voxel_to_stored((0.0, 0.0, 0.0)))
    signs = np.array([-1.0 if f else 1.0 for f in flips[::-1]])
    order = slice(None, None, -1) if flips[0] else slice(None)
    return dataclasses.replace(
        volume, array=reorientation.to_lps(volume.array), origin_mm=corner, direction=lps_direction * signs[:, None],
        spacing_mm=(volume.spacing_mm[0], *volume.spacing_mm[1:][::-1]) if swap else volume.spacing_mm,
        shear_mm=tuple(-v for v in volume.shear_mm) if flips[0] else volume.shear_mm,
        sop_instance_uids=volume.sop_instance_uids[order], paths=volume.paths[order],
        frame_numbers=None if volume.frame_numbers is None else volume.frame_numbers[order]), reorientation
