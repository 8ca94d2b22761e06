"""Masses and microcalcification clusters on mammograms, classical baseline.

Per view: the breast is the largest bright region. Its grey levels are rescaled so that its
2nd-99.5th percentile range is ``REFERENCE_BREAST_RANGE``: the contrast thresholds of
``MammoParameters`` were set on 12-bit views of about that range, and a 14- or 16-bit detector or
another gain would otherwise shift every one of them. Masses are compact regions brighter than
their surroundings (local mean minus a masked, broad background); calcifications are specks
far above their median neighbourhood (a band along the chest wall is skipped, so lesions
right at the chest wall are missed), grouped by single linkage, kept as a cluster when at
least ``min_cluster_size`` lie together. Masses of the same breast are matched across CC and
MLO by their depth from the chest wall; a mass seen in one view only scores lower.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.cluster.hierarchy import fclusterdata

from ai_engine.detectors.base import DetectorInput
from ai_engine.detectors.common import BASELINE_NOTES, baseline_algorithm, logistic
from ai_engine.errors import DetectorInputError
from ai_engine.mammo import MammoView, breast_grey_range, chest_wall_on_right
from ai_engine.results import SIDES, DetectorResult, Finding, FindingType, Task

NAME = "mammo_baseline"
VERSION = "0.2.0"  # 0.2.0: grey levels rescaled per view; 0.1.1: wide backgrounds filtered on a reduced image
REFERENCE_BREAST_RANGE = 1000.0  # median 2nd-99.5th percentile range of the training-acquisition breasts (1,010)


@dataclass(frozen=True)
class MammoParameters:
    """Thresholds (image units, mm) of the mammography baseline; each one is part of the Device UID."""

    breast_fraction: float = 0.2
    skin_margin_mm: float = 5.0
    chest_wall_margin_mm: float = 12.0
    local_sigma_mm: float = 1.5
    background_sigma_mm: float = 10.0
    mass_contrast: float = 200.0
    mass_min_diameter_mm: float = 5.0
    mass_max_diameter_mm: float = 50.0
    mass_max_elongation: float = 1.8
    mass_score_midpoint: float = 300.0
    mass_score_width: float = 30.0
    single_view_factor: float = 0.8
    correspondence_tolerance_mm: float = 15.0
    calc_window_mm: float = 2.5
    calc_contrast: float = 400.0
    calc_link_mm: float = 8.0
    min_cluster_size: int = 3
    positive_score: float = 0.5


# Wider neighbourhoods than these (pixels) are filtered on a block-mean reduced image.
MEDIAN_WINDOW_LIMIT = 15
GAUSSIAN_SIGMA_LIMIT = 25.0


def _on_reduced(image: np.ndarray, factor: int, smooth: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``smooth`` applied to ``image`` reduced ``factor`` times by block means, brought back linearly.

    For slowly varying backgrounds on fine pixels (0.1 mm views: 51-pixel medians, 100-pixel
    Gaussians) this costs a fraction of the full-resolution filter; small structures are still
    measured against it at full resolution.
    """
    if factor == 1:
        return smooth(image)
    rows, cols = (-(-n // factor) * factor for n in image.shape)
    padded = np.pad(image, ((0, rows - image.shape[0]), (0, cols - image.shape[1])), mode="edge")
    reduced = padded.reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))
    return ndimage.zoom(smooth(reduced), factor, order=1)[: image.shape[0], : image.shape[1]]


def _median_background(image: np.ndarray, window: int) -> np.ndarray:
    """Median of ``window`` x ``window`` neighbourhoods."""
    factor = -(-window // MEDIAN_WINDOW_LIMIT)
    return _on_reduced(image, factor, lambda a: ndimage.median_filter(a, size=(window // factor) | 1))


def _gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with ``sigma`` pixels."""
    factor = max(1, int(np.ceil(sigma / GAUSSIAN_SIGMA_LIMIT)))
    return _on_reduced(image, factor, lambda a: ndimage.gaussian_filter(a, sigma / factor))


def _rescaled(view: MammoView, breast: np.ndarray) -> MammoView:
    """``view`` with its grey levels scaled so that the breast's 2nd-99.5th percentile range is the reference."""
    if not breast.any():
        return view
    low, breast_range = breast_grey_range(view.array[breast])
    return replace(view, array=((view.array - low) * (REFERENCE_BREAST_RANGE / breast_range)).astype(np.float32))


@dataclass
class _ViewGeometry:
    breast: np.ndarray
    inner: np.ndarray
    chest_wall_col: int
    spacing_mm: float


class MammoBaseline:
    """Mass and calcification-cluster detector for mammograms (see module docstring)."""

    name = NAME
    task = Task.MAMMOGRAPHY

    def __init__(self, parameters: MammoParameters | None = None) -> None:
        self.parameters = parameters or MammoParameters()
        self.algorithm = baseline_algorithm(NAME, VERSION, self.parameters)

    def detect(self, inputs: DetectorInput) -> DetectorResult:
        """Find masses and calcification clusters in every view of ``inputs.views``."""
        if not inputs.views:
            raise DetectorInputError(f"{NAME} needs mammography views, got none (volume given: "
                                     f"{inputs.volume is not None})")
        masses: list[tuple[Finding, MammoView, float]] = []
        clusters: list[Finding] = []
        for index, source in enumerate(inputs.views):
            geometry = self._geometry(source)
            view = _rescaled(source, geometry.breast)
            for finding in self._masses(view, geometry, index):
                masses.append((finding, view, finding.measurements["depth_from_chest_wall_mm"]))
            clusters.extend(self._clusters(view, geometry, index))
        self._match_views(masses)
        findings = sorted([m for m, _, _ in masses] + clusters, key=lambda f: -f.score)
        case_score = max((f.score for f in findings), default=0.0)
        return DetectorResult(task=self.task, algorithm=self.algorithm, findings=findings, case_score=case_score,
                              positive=case_score >= self.parameters.positive_score, notes=list(BASELINE_NOTES))

    def _geometry(self, view: MammoView) -> _ViewGeometry:
        image = view.array
        spacing = float(np.mean(view.pixel_spacing_mm))
        low, high = np.percentile(image, [1, 99])
        bright = image > low + self.parameters.breast_fraction * (high - low)
        labels, count = ndimage.label(bright)
        if count == 0:
            empty = np.zeros(image.shape, dtype=bool)
            return _ViewGeometry(empty, empty, 0, spacing)
        sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, count + 1))
        breast = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
        inner = ndimage.distance_transform_edt(breast) * spacing > self.parameters.skin_margin_mm
        chest_wall_col = image.shape[1] - 1 if chest_wall_on_right(breast) else 0
        # The pectoral muscle and the chest-wall edge are bright bands, not masses.
        depth_mm = np.abs(np.arange(image.shape[1]) - chest_wall_col) * spacing
        inner &= (depth_mm > self.parameters.chest_wall_margin_mm)[None, :]
        return _ViewGeometry(breast, inner, chest_wall_col, spacing)

    def _masses(self, view: MammoView, geometry: _ViewGeometry, index: int) -> list[Finding]:
        p = self.parameters
        spacing = geometry.spacing_mm
        image = view.array
        weight = geometry.breast.astype(np.float32)
        local = _gaussian(image, p.local_sigma_mm / spacing)
        sigma_b = p.background_sigma_mm / spacing
        background = _gaussian(image * weight, sigma_b) / np.maximum(_gaussian(weight, sigma_b), 1e-3)
        contrast = np.where(geometry.inner, local - background, 0.0)
        labels, count = ndimage.label(contrast > p.mass_contrast)
        findings = []
        for label, box in enumerate(ndimage.find_objects(labels), start=1):
            region = labels[box] == label
            points = np.argwhere(region) + np.array([box[0].start, box[1].start])
            diameter = 2.0 * np.sqrt(len(points) / np.pi) * spacing
            if not p.mass_min_diameter_mm <= diameter <= p.mass_max_diameter_mm:
                continue
            elongation = _elongation_2d(points)
            if elongation > p.mass_max_elongation:
                continue
            mask = np.zeros(image.shape, dtype=bool)
            mask[box] = region
            peak = float(contrast[mask].max())
            center = tuple(float(c) for c in points.mean(axis=0))
            depth = abs(center[1] - geometry.chest_wall_col) * spacing
            findings.append(Finding(
                finding_type=FindingType.MASS, score=logistic(peak, p.mass_score_midpoint, p.mass_score_width),
                center_voxel=center, location=_location(view), laterality=view.laterality, diameter_mm=float(diameter),
                mask=mask,
                view_index=index,
                measurements={"peak_contrast": peak, "elongation": elongation, "depth_from_chest_wall_mm": depth},
                attributes={"view": view.view},
            ))
        return findings

    def _clusters(self, view: MammoView, geometry: _ViewGeometry, index: int) -> list[Finding]:
        p = self.parameters
        spacing = geometry.spacing_mm
        window = max(int(round(p.calc_window_mm / spacing)) * 2 + 1, 3)
        tophat = view.array - _median_background(view.array, window)
        specks = (tophat > p.calc_contrast) & geometry.inner
        labels, count = ndimage.label(specks)
        if count < p.min_cluster_size:
            return []
        points = np.array(ndimage.center_of_mass(specks, labels, np.arange(1, count + 1)))
        groups = fclusterdata(points * spacing, t=p.calc_link_mm, criterion="distance", method="single")
        findings = []
        for group in np.unique(groups):
            members = points[groups == group]
            if len(members) < p.min_cluster_size:
                continue
            center = members.mean(axis=0)
            pairwise = np.linalg.norm(members[:, None] - members[None], axis=-1)
            extent = float(pairwise.max()) * spacing
            radius_px = np.linalg.norm(members - center, axis=1).max() + 1.5 / spacing
            rows, cols = np.ogrid[: view.array.shape[0], : view.array.shape[1]]
            mask = (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius_px**2
            findings.append(Finding(
                finding_type=FindingType.CALCIFICATION_CLUSTER,
                score=logistic(len(members), p.min_cluster_size - 0.5, 0.5),
                center_voxel=(float(center[0]), float(center[1])), location=_location(view), laterality=view.laterality,
                diameter_mm=extent, mask=mask, view_index=index,
                measurements={"calcification_count": float(len(members)), "extent_mm": extent},
                attributes={"view": view.view},
            ))
        return findings

    def _match_views(self, masses: list[tuple[Finding, MammoView, float]]) -> None:
        """Link each mass to the closest-depth mass in another view of the same breast."""
        p = self.parameters
        for finding, view, depth in masses:
            others = [(abs(depth - d), other) for other, v, d in masses
                      if v.laterality == view.laterality and v.view != view.view]
            best = min(others, key=lambda pair: pair[0], default=None)
            if best is not None and best[0] <= p.correspondence_tolerance_mm:
                finding.attributes["corresponding_view_index"] = str(best[1].view_index)
                finding.measurements["correspondence_depth_difference_mm"] = best[0]
            else:
                finding.score *= p.single_view_factor
                finding.attributes["corresponding_view_index"] = "none"


def _elongation_2d(points: np.ndarray) -> float:
    covariance = np.cov(points.T) + np.eye(2) / 12.0 if len(points) > 1 else np.eye(2)
    eigenvalues = np.linalg.eigvalsh(covariance)
    return float(np.sqrt(eigenvalues[-1] / max(eigenvalues[0], 1e-9)))


def _location(view: MammoView) -> str:
    return f"{SIDES[view.laterality]} breast, {view.view} view"
