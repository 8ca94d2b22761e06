"""Lung nodules on chest CT, classical baseline.

Steps: air not connected to the outside of the body within its slice is lung (largest
components, holes filled so that nodules and vessels lie inside); soft-tissue components
inside the lungs are measured in mm; compact, roughly spherical ones of nodule size are
findings, elongated ones (vessels) are rejected by the ratio of their principal axes.
A nodule touching a vessel or the pleura merges with it and is missed: a known limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ai_engine.detectors.base import DetectorInput, lps_volume
from ai_engine.detectors.common import BASELINE_NOTES, baseline_algorithm, logistic
from ai_engine.detectors.morphology import components, fill_holes_per_slice, outside_per_slice
from ai_engine.errors import DetectorInputError
from ai_engine.results import SIDES, DetectorResult, Finding, FindingType, Task
from ai_engine.volume import Volume

NAME = "nodule_baseline"
VERSION = "0.1.0"
MAX_SLICE_GAP_MM = 2.0  # a nodule of 3 mm or more always reaches a slice
BODY_HU = -500.0  # above it: the body (soft tissue, bone), for its midline


@dataclass(frozen=True)
class NoduleParameters:
    """Thresholds (HU, mm, mL) of the nodule baseline; each one is part of the Device UID."""

    air_hu: float = -400.0
    min_sealed_run_mm: float = 20.0
    min_lung_ml: float = 100.0
    max_lungs: int = 2
    min_diameter_mm: float = 3.5
    max_diameter_mm: float = 30.0
    max_elongation: float = 1.5
    min_compactness: float = 0.7
    score_elongation_width: float = 0.15
    score_diameter_midpoint_mm: float = 4.0
    positive_score: float = 0.5


class NoduleBaseline:
    """Compact soft-tissue component detector for lung nodules (see module docstring)."""

    name = NAME
    task = Task.LUNG_NODULE

    def __init__(self, parameters: NoduleParameters | None = None) -> None:
        self.parameters = parameters or NoduleParameters()
        self.algorithm = baseline_algorithm(NAME, VERSION, self.parameters)

    def detect(self, inputs: DetectorInput) -> DetectorResult:
        """Find compact soft-tissue components inside the lungs of ``inputs.volume``."""
        volume, reorientation = lps_volume(inputs, NAME, "chest")
        refuse_slice_gaps(volume, NAME)
        lungs = self.lung_mask(volume)
        findings: list[Finding] = []
        if lungs.any():
            box = ndimage.find_objects(lungs.astype(np.uint8))[0]
            tissue = lungs[box] & (volume.array[box] > self.parameters.air_hu)
            findings = self._findings(volume, tissue, box, body_midline_x(volume))
        case_score = max((f.score for f in findings), default=0.0)
        lung_ml = float(lungs.sum()) * volume.voxel_volume_ml
        notes = [*BASELINE_NOTES, f"lung mask {lung_ml:.0f} mL"]
        result = DetectorResult(task=self.task, algorithm=self.algorithm, findings=findings, case_score=case_score,
                                positive=case_score >= self.parameters.positive_score, notes=notes)
        return reorientation.restore(result)

    def lung_mask(self, volume: Volume) -> np.ndarray:
        """Air inside the body, largest components only, with in-slice holes filled. A lung that the field of view
        cuts off at the image's side is closed there (``seal_cut_edges``), not taken for air outside the body."""
        p = self.parameters
        air = volume.array < p.air_hu
        inner_air = air & ~outside_per_slice(seal_cut_edges(air, _sealed_run(p, volume)))
        labels, boxes = components(inner_air)
        sizes = ndimage.sum_labels(inner_air, labels, index=np.arange(1, len(boxes) + 1))
        min_voxels = p.min_lung_ml / volume.voxel_volume_ml
        keep = [i + 1 for i in np.argsort(sizes)[::-1][: p.max_lungs] if sizes[i] >= min_voxels]
        if not keep:
            return np.zeros(air.shape, dtype=bool)
        return fill_holes_per_slice(np.isin(labels, keep))

    def _findings(self, volume: Volume, tissue: np.ndarray, box: tuple[slice, ...],
                  midline_x: float) -> list[Finding]:
        p = self.parameters
        spacing = np.asarray(volume.spacing_mm)
        offset = np.array([s.start for s in box])
        labels, boxes = components(tissue)
        findings = []
        for index, sub in enumerate(boxes):
            if sub is None:
                continue
            points = np.argwhere(labels[sub] == index + 1) + np.array([s.start for s in sub])
            volume_ml = len(points) * volume.voxel_volume_ml
            diameter = (6.0 * volume_ml * 1000.0 / np.pi) ** (1.0 / 3.0)
            if not p.min_diameter_mm <= diameter <= p.max_diameter_mm:
                continue
            elongation = _elongation(points * spacing, spacing)
            compactness = _compactness(points * spacing, diameter)
            if elongation > p.max_elongation or compactness < p.min_compactness:
                continue
            center = tuple(float(c) for c in points.mean(axis=0) + offset)
            mask = np.zeros(volume.array.shape, dtype=bool)
            mask[tuple((points + offset).T)] = True
            axial_extent = _max_axial_extent(points, spacing)
            score = (logistic(diameter, p.score_diameter_midpoint_mm, 0.5)
                     * (1.0 - logistic(elongation, p.max_elongation - 0.2, p.score_elongation_width)))
            side = lung_side(volume, center, midline_x)
            findings.append(Finding(
                finding_type=FindingType.NODULE, score=score, center_voxel=center,
                center_mm=volume.voxel_to_patient(center), location=f"{SIDES[side]} lung", laterality=side,
                volume_ml=volume_ml, diameter_mm=float(diameter), mask=mask,
                measurements={"elongation": elongation, "compactness": compactness, "max_axial_extent_mm": axial_extent,
                              "mean_hu": float(volume.array[mask].mean())},
                attributes={"composition": "solid"},
            ))
        return sorted(findings, key=lambda f: -f.score)


def _elongation(points_mm: np.ndarray, spacing: np.ndarray) -> float:
    """Ratio of the largest to the smallest principal axis (1 for a sphere).

    Each voxel is treated as a box of ``spacing`` (variance spacing^2/12 per axis), so a
    small blob on thick slices is not mistaken for an elongated one.
    """
    covariance = np.cov(points_mm.T) if len(points_mm) > 1 else np.zeros((3, 3))
    covariance = covariance + np.diag(spacing**2 / 12.0)
    eigenvalues = np.linalg.eigvalsh(covariance)
    return float(np.sqrt(eigenvalues[-1] / max(eigenvalues[0], 1e-9)))


def _compactness(points_mm: np.ndarray, diameter_mm: float) -> float:
    """Fraction of the component within its equivalent sphere (about 1 for a ball, low for crossing tubes)."""
    distance = np.linalg.norm(points_mm - points_mm.mean(axis=0), axis=1)
    return float(np.mean(distance <= diameter_mm / 2.0 + 0.5))


def _max_axial_extent(points: np.ndarray, spacing: np.ndarray) -> float:
    """Largest in-plane extent (mm) over the slices, the way a reader measures on one slice."""
    extent = 0.0
    for z in np.unique(points[:, 0]):
        plane = points[points[:, 0] == z][:, 1:] * spacing[1:]
        span = plane.max(axis=0) - plane.min(axis=0) + spacing[1:]
        extent = max(extent, float(np.hypot(*span)) if len(plane) > 1 else float(spacing[1]))
    return extent


def seal_cut_edges(air: np.ndarray, min_run: int) -> np.ndarray:
    """``air`` with its runs along the first and last column of each slice closed (set False) where they lie between
    tissue and are at least ``min_run`` voxels long: lung that a field of view cuts off at the image's side. Before,
    such a lung touched the border, counted as air outside the body, and was not searched at all (a 1 mm cut of a
    lung's edge lost the whole lung). Outside air reaches the border above or below the body, so it stays open."""
    sealed = air.copy()
    for column in (0, air.shape[2] - 1):
        for z in range(air.shape[0]):
            line = air[z, :, column]
            edges = np.flatnonzero(np.diff(line.astype(np.int8)))  # a run starts after a +1, ends at a -1
            starts, ends = edges[line[edges + 1]] + 1, edges[~line[edges + 1]] + 1
            for start in starts:
                end = ends[ends > start]  # a run open to the last row has no end: not between tissue
                if len(end) and start > 0 and end[0] - start >= min_run:
                    sealed[z, start:end[0], column] = False
    return sealed


def _sealed_run(parameters: NoduleParameters, volume: Volume) -> int:
    """``min_sealed_run_mm`` in rows of ``volume``."""
    return round(parameters.min_sealed_run_mm / volume.spacing_mm[1])


def refuse_slice_gaps(volume: Volume, detector: str) -> None:
    """Refuse (DetectorInputError) a series whose slices leave gaps of more than ``MAX_SLICE_GAP_MM`` between them
    (a sequential high-resolution protocol: 1.25 mm slices every 5-10 mm): a nodule in a gap is not seen, and the
    detectors' false nodules on such a series were reported as Lung-RADS 4B and 4X. A missing or zero Slice
    Thickness (some converters write 0) tells nothing: such a series is read (``nodule_fusion`` notes a wide
    spacing as thick slices)."""
    if not volume.slice_thickness_mm:
        return
    gap = volume.spacing_mm[0] - volume.slice_thickness_mm
    if gap > MAX_SLICE_GAP_MM:
        raise DetectorInputError(f"{detector}: slices of {volume.slice_thickness_mm:g} mm every "
                                 f"{volume.spacing_mm[0]:.2f} mm leave gaps of {gap:.2f} mm, in which a nodule lies "
                                 f"unseen: read a contiguous reconstruction (check the routing rule)")


def body_midline_x(volume: Volume) -> float:
    """Patient x (LPS, mm) of the body's midline in an LPS-ordered ``volume``: the middle of the body's left-right
    extent over the slices where it lies inside the image, else 0, the scanner's isocentre, where patients lie (a
    reconstruction targeted on one lung cuts the body off, and keeps those coordinates)."""
    columns = (volume.array > BODY_HU).any(axis=1)  # [z, x]: the columns of each slice that hold some of the body
    inside = columns.any(axis=1) & ~columns[:, 0] & ~columns[:, -1]
    if inside.mean() < 0.5:
        return 0.0
    first = columns.argmax(axis=1)
    last = columns.shape[1] - 1 - columns[:, ::-1].argmax(axis=1)
    middle = float(((first + last) / 2.0)[inside].mean())
    return volume.voxel_to_patient((0.0, 0.0, middle))[0]


def cut_off_sides(volume: Volume, parameters: NoduleParameters | None = None) -> list[str]:
    """The patient's sides ('right', 'left') at which the image's edge cuts a lung off: where ``seal_cut_edges``
    closes a run of air along the edge column of an LPS-ordered ``volume`` (column 0 is the patient's right)."""
    p = parameters or NoduleParameters()
    edges = volume.array[:, :, [0, -1]] < p.air_hu  # all that seal_cut_edges reads and closes
    closed = edges != seal_cut_edges(edges, _sealed_run(p, volume))
    return [side for side, edge in (("right", 0), ("left", 1)) if closed[:, :, edge].any()]


def lung_side(volume: Volume, center: tuple[float, ...], midline_x: float) -> str:
    """"L" / "R" from the patient x of the centre against the body's midline (``body_midline_x``); before, the image
    centre decided, and a nodule of a right lung reconstructed alone read as the left lung's."""
    return "L" if volume.voxel_to_patient(center)[0] > midline_x else "R"
