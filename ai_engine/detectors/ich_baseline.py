"""Intracranial hemorrhage on head CT, classical baseline.

Steps: brain = inside the skull minus bone and a rim along the inner table (beam hardening
makes that rim hyperdense); candidate blood = smoothed HU within the acute-blood window,
away from calcification-dense voxels; 3-D components above a minimum volume become findings
with volume, hemisphere and region; the case score is a logistic of the total volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ai_engine.detectors.base import DetectorInput, lps_volume
from ai_engine.detectors.head_input import head_ct_notes, head_side
from ai_engine.detectors.common import BASELINE_NOTES, baseline_algorithm, logistic
from ai_engine.detectors.morphology import components, dilate_in_plane, fill_holes_per_slice
from ai_engine.results import SIDES, DetectorResult, Finding, FindingType, Task
from ai_engine.volume import Volume

NAME = "ich_baseline"
VERSION = "0.1.0"


@dataclass(frozen=True)
class IchParameters:
    """Thresholds (HU, mm, mL) of the ICH baseline; each one is part of the Device UID."""

    bone_hu: float = 300.0
    blood_low_hu: float = 50.0
    blood_high_hu: float = 90.0
    calcification_hu: float = 110.0
    calcification_margin_mm: float = 3.0
    inner_table_rim_mm: float = 3.0
    smoothing_mm: float = 1.0
    csf_high_hu: float = 15.0
    min_volume_ml: float = 0.2
    score_midpoint_ml: float = 0.8
    score_width_ml: float = 0.3
    positive_score: float = 0.5


class IchBaseline:
    """Hyperdense-component detector for intracranial hemorrhage (see module docstring)."""

    name = NAME
    task = Task.ICH

    def __init__(self, parameters: IchParameters | None = None) -> None:
        self.parameters = parameters or IchParameters()
        self.algorithm = baseline_algorithm(NAME, VERSION, self.parameters)

    def detect(self, inputs: DetectorInput) -> DetectorResult:
        """Find hyperdense intracranial components in ``inputs.volume``."""
        volume, reorientation = lps_volume(inputs, NAME, "head")
        coverage = head_ct_notes(volume, NAME)
        p = self.parameters
        hu = volume.array
        dz, dy, dx = volume.spacing_mm
        pixel = min(dy, dx)
        bone = hu > p.bone_hu
        intracranial = fill_holes_per_slice(bone) & ~bone
        brain = intracranial & ~dilate_in_plane(bone, p.inner_table_rim_mm, pixel)
        smooth = ndimage.gaussian_filter(hu, sigma=(0.0, p.smoothing_mm / dy, p.smoothing_mm / dx))
        dense = intracranial & (hu > p.calcification_hu)
        near_dense = dilate_in_plane(dense, p.calcification_margin_mm, pixel) if dense.any() else dense
        blood = brain & (smooth >= p.blood_low_hu) & (smooth <= p.blood_high_hu) & ~near_dense
        csf = brain & (smooth < p.csf_high_hu)
        findings = self._findings(volume, blood, brain, csf)
        total_ml = sum(f.volume_ml or 0.0 for f in findings)
        case_score = logistic(total_ml, p.score_midpoint_ml, p.score_width_ml) if findings else 0.0
        notes = [*BASELINE_NOTES, f"total hyperdense intracranial volume {total_ml:.2f} mL", *coverage]
        result = DetectorResult(task=self.task, algorithm=self.algorithm, findings=findings,
                                case_score=case_score, positive=case_score >= p.positive_score, notes=notes)
        return reorientation.restore(result)

    def _findings(self, volume: Volume, blood: np.ndarray, brain: np.ndarray, csf: np.ndarray) -> list[Finding]:
        p = self.parameters
        labels, boxes = components(blood)
        brain_points = np.argwhere(brain[:, ::4, ::4]) * np.array([1, 4, 4])
        if brain_points.size == 0:
            return []
        brain_low, brain_high = brain_points.min(axis=0), brain_points.max(axis=0)
        midline = float(brain_points[:, 2].mean())  # the brain's middle column
        findings = []
        for index, box in enumerate(boxes):
            if box is None:
                continue
            mask_box = labels[box] == index + 1
            volume_ml = float(mask_box.sum()) * volume.voxel_volume_ml
            if volume_ml < p.min_volume_ml:
                continue
            mask = np.zeros(blood.shape, dtype=bool)
            mask[box] = mask_box
            center = tuple(float(c) for c in ndimage.center_of_mass(mask))
            center_mm = volume.voxel_to_patient(center)
            shell = ndimage.binary_dilation(mask_box, iterations=2) & ~mask_box
            csf_fraction = float(csf[box][shell].mean()) if shell.any() else 0.0
            side = head_side(np.nonzero(mask)[2], midline)
            location = _location(center, side, brain_low, brain_high, csf_fraction)
            findings.append(Finding(
                finding_type=FindingType.HEMORRHAGE,
                score=logistic(volume_ml, p.score_midpoint_ml, p.score_width_ml),
                center_voxel=center, center_mm=center_mm, location=location, laterality=side, volume_ml=volume_ml,
                mask=mask,
                measurements={"mean_hu": float(volume.array[mask].mean()), "csf_contact_fraction": csf_fraction},
                attributes={"subtype": "intraventricular" if csf_fraction > 0.5 else "intraparenchymal"},
            ))
        return sorted(findings, key=lambda f: -(f.volume_ml or 0.0))


def _location(center: tuple[float, ...], side_code: str, low: np.ndarray, high: np.ndarray,
              csf_fraction: float) -> str:
    """'left|right|midline <region>' from the side ("L"/"R"/"B") and the position inside the brain's extent."""
    side = SIDES[side_code]
    if csf_fraction > 0.5:
        return f"{side} intraventricular"
    fraction = (np.asarray(center) - low) / np.maximum(high - low, 1)
    # Rows run anterior -> posterior and slices feet -> head: the volume is in LPS order (lps_volume).
    if fraction[1] < 0.4:
        region = "frontal"
    elif fraction[1] > 0.75:
        region = "occipital"
    elif fraction[0] > 0.55:
        region = "parietal"
    else:
        region = "temporal"
    return f"{side} {region}"
