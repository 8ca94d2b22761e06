"""Deep fusion mammography detector: per-view lesion maps, CC/MLO matching, case-level fusion.

Pipeline of one exam (any number of views; a screening exam has four):

1. ``prepare_view``: each view finer than ``WORK_SPACING_MM`` is averaged down to it, then resampled to
   ``NET_SPACING_MM`` for the per-view network, flipped so the chest wall is on
   the left (found from the pixels, not the header), normalised by breast-intensity percentiles
   (so a detector with other grey levels reads the same), and given a second channel that
   enhances specks (morphological white top-hat, max-pooled so calcifications survive the
   downsampling).
2. A small MONAI ``BasicUNet`` (ONNX Runtime) maps each view to two probability maps: malignant
   mass and malignant calcification cluster. The map itself is the finding's heat map.
3. Peaks of the maps are candidates; a candidate in CC is matched with one in MLO of the same
   breast by distance from the nipple (the radiologist's cue), and a lesion seen in both views
   scores higher than one seen in a single view. A second network (MONAI ``Classifier``) reads a
   40 mm crop around each candidate at ``FINE_SPACING_MM``, where margins and spicules that the
   0.8 mm maps blur away are visible, and gives the candidate's malignancy probability.
4. ``case_image_features`` summarises the candidates into a fixed vector; the ``FusionHead``
   (ONNX) fuses it with clinical variables and the note, gives the case logit, the per-case
   modality weights and a log-variance; a temperature fitted on a calibration split turns the
   logit into a probability, from which the BI-RADS-style suggestion follows.
5. Breast density (A-D) comes from a multinomial logistic model on texture statistics.

Bundles from 2.1.0 (``test_time_augmentation``) average each view's maps with those of the view
flipped up-down, and each crop's malignancy over its eight quarter turns and mirror images
(``view_maps``, ``crop_malignancy``; training computes the fusion features the same way).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ai_engine.bundle import Bundle, resolve_bundle
from ai_engine.clinical_features import (
    NoteVocabulary,
    context_text,
    encode_clinical,
    encode_note,
    note_encoding_of,
)
from ai_engine.detectors.base import DetectorInput
from ai_engine.detectors.runtime import DeployedModel, deploy_network_and_fusion
from ai_engine.errors import DetectorInputError
from ai_engine.mammo import MammoView, breast_grey_range, chest_wall_on_right
from ai_engine.results import SIDES, DetectorResult, Finding, FindingType, Task

NAME = "mammo_fusion"
NET_SPACING_MM = 0.8
# Finer views are averaged down to this grid before anything else, so detectors of different pixel size
# and sharpness give the speck filter and the classifier the same image (at 0.3 mm the speck channel's
# 99.9th percentile differed twofold between the two synthetic scanners; at 0.5 mm by 2-12 %).
WORK_SPACING_MM = 0.5
PAD_MULTIPLE = 16
FINE_SPACING_MM = WORK_SPACING_MM  # grid of the candidate classifier's crops
CANDIDATE_CROP = 80  # fine pixels per side (40 mm): a 28 mm mass with its spicules' bases
SPECK_WINDOW_MM = 1.6
SPECK_GAIN = 4.0
CHANNELS = (FindingType.MASS, FindingType.CALCIFICATION_CLUSTER)
# A breast is imaged against the detector's chest-wall edge: the breast mask must reach one side edge (within
# EDGE_BAND_MM) in at least MIN_CHEST_WALL_CONTACT of the rows, and not both in MAX_OPPOSITE_CONTACT of them.
# The generator's views reach it in 59-100 % of the rows and the far edge in none; a head-CT slice or a chest
# radiograph stored as MG (an object in the middle, or a body from side to side) was read as a breast.
EDGE_BAND_MM = 5.0  # a scanned film or a collimated detector may leave a dark margin of a few mm
MIN_CHEST_WALL_CONTACT = 0.1
MAX_OPPOSITE_CONTACT = 0.8
DENSITY_CATEGORIES = ("A", "B", "C", "D")
DENSITY_STATISTICS = 7
IMAGE_FEATURES = ("matched_mass", "matched_calc", "peak_mass", "peak_calc", "second_view_mass",
                  "second_view_calc", "contralateral_peak", "suspicious_area", "classified_top",
                  "classified_other_view")
# ACR BI-RADS likelihood-of-malignancy ranges: upper bound of the probability -> category.
BIRADS_RANGES = ((0.02, "2"), (0.10, "4A"), (0.50, "4B"), (0.95, "4C"), (1.01, "5"))
UNCERTAINTY_NOTE = ("uncertainty: 'logit_std' is exp(log_var / 2), the standard deviation of the case logit "
                    "predicted by the fusion head (heteroscedastic, not MC dropout)")


@dataclass
class PreparedView:
    """One view as the network sees it, and what is needed to map results back to its pixels."""

    channels: np.ndarray  # float32 (2, H, W): intensity, speck enhancement; padded to PAD_MULTIPLE
    breast: np.ndarray  # bool (H, W)
    net_shape: tuple[int, int]  # (rows, cols) before padding
    source_shape: tuple[int, int]
    flipped: bool
    nipple: tuple[float, float]  # (row, col) in network pixels
    fine: np.ndarray  # float32 (H', W'): the normalised intensity at FINE_SPACING_MM, chest wall left

    def to_source(self, row: float, col: float) -> tuple[float, float]:
        """Network pixel -> (row, col) pixel of the source view."""
        scale_r = self.source_shape[0] / self.net_shape[0]
        scale_c = self.source_shape[1] / self.net_shape[1]
        if self.flipped:
            col = self.net_shape[1] - 1 - col
        return ((row + 0.5) * scale_r - 0.5, (col + 0.5) * scale_c - 0.5)

    def map_to_source(self, array: np.ndarray) -> np.ndarray:
        """A (H, W) network-grid array resampled (nearest) onto the source view's pixel grid."""
        rows = np.minimum((np.arange(self.source_shape[0]) * self.net_shape[0] / self.source_shape[0]).astype(int),
                          self.net_shape[0] - 1)
        cols = np.minimum((np.arange(self.source_shape[1]) * self.net_shape[1] / self.source_shape[1]).astype(int),
                          self.net_shape[1] - 1)
        if self.flipped:
            cols = self.net_shape[1] - 1 - cols
        return array[np.ix_(rows, cols)]


def _breast_mask(image: np.ndarray) -> np.ndarray:
    """Largest bright region (the breast; labels and detector borders are smaller), holes filled."""
    low, high = np.percentile(image, [1, 99])
    bright = image > low + 0.2 * (high - low)
    labels, count = ndimage.label(bright)
    if count == 0:
        return bright
    sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, count + 1))
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)


def equivalent_diameter_mm(mask: np.ndarray, spacing_mm: float) -> float:
    """The diameter (mm) of the circle as large as ``mask`` (pixels of ``spacing_mm``): a finding's size, and the
    truth it is compared with in evaluation."""
    return 2.0 * math.sqrt(float(mask.sum()) / math.pi) * spacing_mm


def _edge_contact(breast: np.ndarray, spacing_mm: float) -> tuple[float, float]:
    """(chest-wall side, opposite side): the fraction of rows in which the breast mask reaches within
    EDGE_BAND_MM of the left and of the right image edge, the larger first."""
    band = max(1, int(round(EDGE_BAND_MM / spacing_mm)))
    left, right = float(breast[:, :band].any(axis=1).mean()), float(breast[:, -band:].any(axis=1).mean())
    return max(left, right), min(left, right)


def _check_breast_shape(breast: np.ndarray, spacing_mm: float) -> None:
    """Refuse a view whose bright object is not placed as a breast is: against one side edge of the image."""
    chest_wall, opposite = _edge_contact(breast, spacing_mm)
    if chest_wall < MIN_CHEST_WALL_CONTACT:
        raise DetectorInputError(
            f"a mammography view shows no breast against an image edge (its largest bright object reaches a side "
            f"edge in {chest_wall:.0%} of the rows; a breast lies against the detector's chest-wall edge): "
            "is this image a mammogram?")
    if opposite >= MAX_OPPOSITE_CONTACT:
        raise DetectorInputError(
            f"a mammography view shows an object spanning the image from side to side (it reaches both side edges "
            f"in {opposite:.0%} of the rows; a breast lies against one side only): is this image a mammogram?")


def _resample(image: np.ndarray, factor: float, *, keep_max: bool) -> np.ndarray:
    """Zoom by ``factor`` (< 1 shrinks): area-like averaging, or max-pooling for sparse specks."""
    if abs(factor - 1.0) < 1e-3:
        return image
    if factor < 1.0:
        if keep_max:
            image = ndimage.maximum_filter(image, size=int(math.ceil(1.0 / factor)) + 1)
        else:
            image = ndimage.gaussian_filter(image, 0.45 / factor)
    return ndimage.zoom(image, factor, order=0 if keep_max else 1)


def prepare_view(array: np.ndarray, spacing_mm: float) -> PreparedView:
    """Network input of one view (see module docstring, step 1)."""
    image = np.asarray(array, dtype=np.float32)
    source_shape = (int(image.shape[0]), int(image.shape[1]))
    if spacing_mm < WORK_SPACING_MM:
        image = _resample(image, spacing_mm / WORK_SPACING_MM, keep_max=False)
        spacing_mm = WORK_SPACING_MM
    breast = _breast_mask(image)
    if not breast.any():  # blank or constant: every feature would be logit(0), which the heads never saw
        raise DetectorInputError("a mammography view shows no breast (nothing brighter than its background); "
                                 "a blank or constant image cannot be read")
    _check_breast_shape(breast, spacing_mm)
    values = image[breast]
    low, scale = breast_grey_range(values)
    window = max(int(round(SPECK_WINDOW_MM / spacing_mm)) // 2 * 2 + 1, 3)
    speck = np.clip(ndimage.white_tophat(image, size=window) / scale * SPECK_GAIN, 0.0, 3.0)
    intensity = np.where(breast, (image - low) / scale, 0.0).astype(np.float32)
    speck = np.where(breast, speck, 0.0).astype(np.float32)
    fine = _resample(intensity, spacing_mm / FINE_SPACING_MM, keep_max=False)
    factor = spacing_mm / NET_SPACING_MM
    intensity = _resample(intensity, factor, keep_max=False)
    speck = _resample(speck, factor, keep_max=True)
    breast_net = _resample(breast.astype(np.float32), factor, keep_max=False) > 0.5
    flipped = chest_wall_on_right(breast_net)
    if flipped:
        intensity, speck, breast_net, fine = intensity[:, ::-1], speck[:, ::-1], breast_net[:, ::-1], fine[:, ::-1]
    net_shape = (int(intensity.shape[0]), int(intensity.shape[1]))
    pad = [(0, -n % PAD_MULTIPLE) for n in net_shape]
    channels = np.stack([np.pad(intensity, pad), np.pad(speck, pad)]).astype(np.float32)
    breast_pad = np.pad(breast_net, pad)
    return PreparedView(channels=channels, breast=breast_pad, net_shape=net_shape, source_shape=source_shape,
                        flipped=flipped, nipple=_nipple(breast_pad), fine=np.ascontiguousarray(fine, np.float32))


def mask_to_network(mask: np.ndarray, spacing_mm: float, view: PreparedView) -> np.ndarray:
    """A source-grid boolean mask on the network grid of ``view`` (any pixel covered -> True)."""
    grid = _resample(mask.astype(np.float32), spacing_mm / NET_SPACING_MM, keep_max=True) > 0.5
    rows, cols = view.net_shape
    grid = np.pad(grid, [(0, max(rows - grid.shape[0], 0)), (0, max(cols - grid.shape[1], 0))])[:rows, :cols]
    if view.flipped:
        grid = grid[:, ::-1]
    return np.pad(grid, [(0, view.breast.shape[0] - rows), (0, view.breast.shape[1] - cols)])


def _nipple(breast: np.ndarray) -> tuple[float, float]:
    """The breast point farthest from the chest wall (column 0): the nipple in CC and MLO."""
    cols = np.nonzero(breast.any(axis=0))[0]
    if cols.size == 0:
        return (breast.shape[0] / 2.0, 0.0)
    last = int(cols[-1])
    return (float(np.nonzero(breast[:, last])[0].mean()), float(last))


@dataclass(frozen=True)
class MassOutline:
    """How a mass finding's outline (its mask and diameter) is drawn on the image instead of the probability map,
    whose blob is wider than the lesion (validation: masses reported at 1.36-1.45 times their size; model card).

    The edge is where the intensity, smoothed by ``smoothing_mm``, is ``edge_contrast`` of the way from the
    surroundings (median over a ring ``ring_mm`` from the peak) up to the core (brightest point within
    ``core_mm``), inside the map's blob at ``blob_fraction`` of its peak. A bundle's ``inference.json`` holds
    these as ``mass_outline``; a bundle without it outlines masses by the map (``from_params`` gives None).
    """

    edge_contrast: float = 0.4
    blob_fraction: float = 0.3
    core_mm: float = 3.0
    ring_mm: tuple[float, float] = (14.0, 19.0)
    smoothing_mm: float = 1.0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> MassOutline | None:
        """The outline settings of a bundle's inference parameters, or None when it has none."""
        settings = params.get("mass_outline")
        if settings is None:
            return None
        inner, outer = settings["ring_mm"]
        return cls(float(settings["edge_contrast"]), float(settings["blob_fraction"]), float(settings["core_mm"]),
                   (float(inner), float(outer)), float(settings["smoothing_mm"]))


@dataclass
class Candidate:
    """A peak of one probability map in one view."""

    view_index: int
    channel: int
    score: float
    row: float  # network pixels
    col: float
    nipple_distance_mm: float
    depth_mm: float
    region: np.ndarray  # bool (H, W) on the network grid
    matched_score: float = 0.0
    partner: int = -1  # index into the candidate list, -1 when unmatched
    malignancy: float = 0.0  # the candidate classifier's probability


def candidate_crops(views: list[PreparedView], points: list[tuple[int, float, float]]) -> np.ndarray:
    """(N, 1, CANDIDATE_CROP, CANDIDATE_CROP) float32 crops of the fine grid centred on each (view index, row,
    col) given in network pixels; zero outside the view."""
    crops = np.zeros((len(points), 1, CANDIDATE_CROP, CANDIDATE_CROP), dtype=np.float32)
    scale, half = NET_SPACING_MM / FINE_SPACING_MM, CANDIDATE_CROP // 2
    for i, (index, row, col) in enumerate(points):
        fine = views[index].fine
        r = int(round((row + 0.5) * scale - 0.5)) - half
        c = int(round((col + 0.5) * scale - 0.5)) - half
        r0, c0 = max(r, 0), max(c, 0)
        r1, c1 = min(r + CANDIDATE_CROP, fine.shape[0]), min(c + CANDIDATE_CROP, fine.shape[1])
        if r1 > r0 and c1 > c0:
            crops[i, 0, r0 - r:r1 - r, c0 - c:c1 - c] = fine[r0:r1, c0:c1]
    return crops


def find_candidates(probabilities: np.ndarray, view: PreparedView, view_index: int, *, floor: float,
                    per_view: int, min_separation_mm: float = 10.0) -> list[Candidate]:
    """Local maxima of each channel of ``probabilities`` (C, H, W) above ``floor``, best first."""
    candidates = []
    size = max(int(round(min_separation_mm / NET_SPACING_MM)), 3)
    for channel in range(probabilities.shape[0]):
        prob = np.where(view.breast, probabilities[channel], 0.0)
        peaks = (prob == ndimage.maximum_filter(prob, size=size)) & (prob >= floor)
        coords = np.argwhere(peaks)
        order = np.argsort(-prob[peaks])[:per_view]
        for row, col in coords[order]:
            peak = float(prob[row, col])
            labels, _ = ndimage.label(prob >= 0.5 * peak)
            region = labels == labels[row, col]
            distance = math.hypot(row - view.nipple[0], col - view.nipple[1]) * NET_SPACING_MM
            candidates.append(Candidate(view_index, channel, peak, float(row), float(col), distance,
                                        float(col) * NET_SPACING_MM, region))
    return candidates


def mass_region(view: PreparedView, probability: np.ndarray, cand: Candidate, outline: MassOutline) -> np.ndarray:
    """The outline (bool, network grid) of the mass at ``cand``, drawn on the image (``MassOutline``); the
    candidate's probability region when the spot is not brighter than its surroundings."""
    half = int(math.ceil(outline.ring_mm[1] / NET_SPACING_MM)) + 1
    row, col = int(round(cand.row)), int(round(cand.col))
    top, left = max(row - half, 0), max(col - half, 0)
    window = (slice(top, row + half + 1), slice(left, col + half + 1))
    image = ndimage.gaussian_filter(view.channels[0][window], outline.smoothing_mm / NET_SPACING_MM)
    rows, cols = np.indices(image.shape)
    distance = np.hypot(rows - (row - top), cols - (col - left)) * NET_SPACING_MM
    blob = probability[window] >= outline.blob_fraction * cand.score
    core_zone = blob & (distance <= outline.core_mm)
    ring = view.breast[window] & (distance >= outline.ring_mm[0]) & (distance <= outline.ring_mm[1])
    if not core_zone.any() or not ring.any():
        return cand.region
    core_at = np.unravel_index(int(np.argmax(np.where(core_zone, image, -np.inf))), image.shape)
    core, surroundings = float(image[core_at]), float(np.median(image[ring]))
    if core <= surroundings:
        return cand.region
    labels, _ = ndimage.label((image >= surroundings + outline.edge_contrast * (core - surroundings)) & blob)
    region = np.zeros_like(cand.region)
    region[window] = labels == labels[core_at]
    return region


def match_views(candidates: list[Candidate], breasts: dict[int, tuple[str, str]], tolerance_mm: float) -> None:
    """Pair each candidate with the best same-channel candidate in the other view of its breast.

    ``matched_score`` = sqrt(own * partner) * exp(-(d / tolerance)^2), d the difference of their
    distances from the nipple; a candidate with no partner keeps 0.
    """
    for i, cand in enumerate(candidates):
        laterality, view = breasts[cand.view_index]
        best, best_j = 0.0, -1
        for j, other in enumerate(candidates):
            o_lat, o_view = breasts[other.view_index]
            if o_lat != laterality or o_view == view or other.channel != cand.channel:
                continue
            d = cand.nipple_distance_mm - other.nipple_distance_mm
            value = math.sqrt(cand.score * other.score) * math.exp(-((d / tolerance_mm) ** 2))
            if value > best:
                best, best_j = value, j
        cand.matched_score, cand.partner = best, best_j


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _classified(candidates: list[Candidate], breasts: dict[int, tuple[str, str]]) -> tuple[float, float]:
    """(top, other view): the highest candidate malignancy of the exam, and in its breast the best of the
    view(s) other than the top one's (a lesion seen in both views scores in both)."""
    best: dict[int, float] = {}
    for cand in candidates:
        best[cand.view_index] = max(best.get(cand.view_index, 0.0), cand.malignancy)
    if not best:
        return 0.0, 0.0
    top_view = max(best, key=best.__getitem__)
    side = breasts[top_view][0]
    if sum(lat == side for lat, _ in breasts.values()) == 1:  # the breast's other view is missing: assumed to agree
        return best[top_view], best[top_view]
    others = [p for v, p in best.items() if v != top_view and breasts[v][0] == side]
    return best[top_view], max(others, default=0.0)


def incomplete_exam(identities: list[tuple[str, str]]) -> str | None:
    """What a four-view exam of ``identities`` (laterality, view) lacks, e.g. "R: one view; no L breast"."""
    missing = []
    for side in ("R", "L"):
        count = sum(lat == side for lat, _ in identities)
        if count == 0:
            missing.append(f"no {side} breast")
        elif count == 1:
            missing.append(f"{side}: one view")
    return "; ".join(missing) or None


def case_image_features(candidates: list[Candidate], peaks: np.ndarray, breasts: dict[int, tuple[str, str]],
                        areas: np.ndarray) -> np.ndarray:
    """Fixed-length image summary of one exam (names in IMAGE_FEATURES), as logits where scores.

    ``peaks`` (V, C) are the maximum probability per view and channel; ``areas`` (V,) the area
    (cm^2) of each view above probability 0.5. The most suspicious breast sets the map features;
    ``contralateral_peak`` is the other breast's peak (symmetry cue); the classifier's features
    come from the exam's most malignant-looking candidate (``_classified``).

    The heads learned from four-view exams. In an incomplete exam a missing view or breast is read as
    agreeing with what is there, so that its absence is no cue: a breast with one view has that
    view's peaks as its second-view and matched values, and without the other breast the
    contralateral peak is the breast's own (``incomplete_exam`` names what is missing).
    """
    sides = sorted({lat for lat, _ in breasts.values()})
    per_side = {}
    for side in sides:
        idx = [v for v, (lat, _) in breasts.items() if lat == side]
        matched = [max((c.matched_score for c in candidates if c.view_index in idx and c.channel == k),
                       default=0.0) for k in range(len(CHANNELS))]
        view_peaks = peaks[idx]  # (views of this side, C)
        top = [float(view_peaks[:, k].max()) for k in range(len(CHANNELS))]
        second = [float(np.sort(view_peaks[:, k])[-2]) for k in range(len(CHANNELS))] if len(idx) > 1 else top
        per_side[side] = (matched if len(idx) > 1 else top, top, second, float(areas[idx].sum()))
    worst = max(sides, key=lambda s: max(per_side[s][0] + per_side[s][1]))
    matched, top, second, area = per_side[worst]
    others = [max(per_side[s][1]) for s in sides if s != worst] or [max(top)]
    classified = _classified(candidates, breasts)
    return np.array([_logit(matched[0]), _logit(matched[1]), _logit(top[0]), _logit(top[1]),
                     _logit(second[0]), _logit(second[1]), _logit(max(others)),
                     math.log1p(area), _logit(classified[0]), _logit(classified[1])], dtype=np.float32)


def view_maps(run: Callable[[np.ndarray], np.ndarray], views: np.ndarray, flip_average: bool) -> np.ndarray:
    """Probability maps (N, C, H, W) of prepared ``views`` (N, 2, H, W) from ``run``; with ``flip_average`` the
    mean with the maps of the views flipped up-down (cranial/caudal, or upper/lower, is not a cue)."""
    maps = run(views)
    if flip_average:
        maps = 0.5 * (maps + run(np.ascontiguousarray(views[:, :, ::-1]))[:, :, ::-1])
    return maps


def crop_malignancy(run: Callable[[np.ndarray], np.ndarray], crops: np.ndarray, dihedral_average: bool
                    ) -> np.ndarray:
    """Malignancy (N,) of candidate crops (N, 1, h, w) from ``run``; with ``dihedral_average`` the mean over the
    crops' four quarter turns and their mirror images (a lesion has no preferred orientation)."""
    if not dihedral_average:
        return run(crops)
    turns = [np.rot90(crops, k, axes=(-2, -1)) for k in range(4)]
    return np.mean([run(np.ascontiguousarray(t)) for turn in turns for t in (turn, turn[..., ::-1])], axis=0)


def density_statistics(view: PreparedView) -> np.ndarray:
    """Texture statistics of the inner breast that the density model reads (gain-invariant)."""
    inner = ndimage.binary_erosion(view.breast, iterations=max(int(8.0 / NET_SPACING_MM), 1))
    if inner.sum() < 50:
        inner = view.breast
    if not inner.any():
        return np.zeros(DENSITY_STATISTICS, dtype=np.float32)
    intensity = view.channels[0].astype(np.float32)
    values = intensity[inner]
    # Band-passed texture energy: fibroglandular tissue is structured, fat is smooth.
    texture = [float(np.abs(ndimage.gaussian_filter(intensity, s) - ndimage.gaussian_filter(intensity, 2 * s))[inner]
                     .mean()) for s in (1.5, 4.0)]
    return np.array([(values > 0.3).mean(), (values > 0.45).mean(), (values > 0.6).mean(), values.std(),
                     values.mean(), *texture], dtype=np.float32)


def density_probabilities(statistics: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Softmax of the multinomial logistic density model over A-D (rows: views)."""
    z = statistics @ weights + bias
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def select_findings(candidates: list[Candidate], probability: float, params: dict[str, Any]) -> list[Candidate]:
    """Candidates worth showing: none when the exam is negative (below ``positive_threshold``: it lists no lesions,
    so its suggestion is BI-RADS 1, never a category 4 beside a negative call), else the strongest
    ``max_findings`` above ``report_threshold``."""
    if probability < float(params["positive_threshold"]):
        return []
    strong = [c for c in candidates if max(c.score, c.matched_score) >= float(params["report_threshold"])]
    strong.sort(key=lambda c: -max(c.score, c.matched_score))
    return strong[: int(params["max_findings"])]


def birads_suggestion(probability: float, has_findings: bool) -> str:
    """BI-RADS-style category: "1" when no lesion is reported, else ACR's likelihood ranges.

    Below 2 % a reported lesion gives "2". Category 3 (probably benign) needs a diagnostic
    work-up and is never suggested from a screening exam alone.
    """
    if not has_findings:
        return "1"
    for upper, category in BIRADS_RANGES:
        if probability < upper:
            return category
    return "5"


@dataclass
class ExamAnalysis:
    """Everything the detector computed for one exam before building findings."""

    views: list[PreparedView]
    probabilities: list[np.ndarray]  # per view (C, H, W)
    candidates: list[Candidate]
    image_features: np.ndarray
    clinical: np.ndarray
    clinical_present: np.ndarray
    text: np.ndarray
    text_present: bool
    density_probabilities: np.ndarray  # (4,) averaged over views


class MammoFusion:
    """Deep fusion mammography detector (see module docstring); weights from the ``mammo_fusion`` bundle."""

    name = NAME
    task = Task.MAMMOGRAPHY

    def __init__(self, bundle: Bundle | str | Path | None = None, device: str = "auto") -> None:
        self.bundle: Bundle = resolve_bundle(bundle, NAME)
        self.algorithm = self.bundle.algorithm()
        params: dict[str, Any] = self.bundle.inference
        self.params = params
        eager = functools.cache(lambda: _eager(self.bundle))
        threads = int(params.get("threads", 2))
        self.network, self.fusion = deploy_network_and_fusion(
            self.bundle.deployed_path, ["views"], self.bundle.root / "models" / str(params["fusion_deployed"]),
            threads=threads, device=device, load_eager=eager)
        self.classifier = DeployedModel(self.bundle.root / "models" / str(params["classifier_deployed"]), ["crops"],
                                        threads=threads, device=device, eager=lambda: eager().classifier)
        self.density_weights = np.asarray(params["density_weights"], dtype=np.float32)
        self.density_bias = np.asarray(params["density_bias"], dtype=np.float32)
        self.test_time_augmentation = bool(params.get("test_time_augmentation", False))
        self.mass_outline = MassOutline.from_params(params)

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """Malignancy probability (N,) of candidate crops (N, 1, CANDIDATE_CROP, CANDIDATE_CROP)."""
        return crop_malignancy(lambda c: self.classifier(crops=c)[0], crops, self.test_time_augmentation)

    def segment(self, channels: np.ndarray) -> np.ndarray:
        """Probability maps (C, H, W) of one prepared view."""
        return view_maps(lambda v: self.network(views=v)[0], channels[None].astype(np.float32),
                         self.test_time_augmentation)[0]

    def analyse(self, inputs: DetectorInput) -> ExamAnalysis:
        """Run the per-view network and compute the case features (no fusion yet)."""
        if not inputs.views:
            raise DetectorInputError(f"{NAME} needs mammography views, got none (volume given: "
                                     f"{inputs.volume is not None})")
        prepared = [prepare_view(v.array, float(np.mean(v.pixel_spacing_mm))) for v in inputs.views]
        probabilities = [self.segment(p.channels) for p in prepared]
        return analyse_exam(prepared, probabilities, [(v.laterality, v.view) for v in inputs.views],
                            inputs.context, self.params, self.classify, self.density_weights, self.density_bias,
                            self.bundle.note_vocabulary)

    def fuse(self, analysis: ExamAnalysis) -> tuple[float, float, np.ndarray]:
        """(calibrated probability, logit std, modality weights [3]) of one analysed exam."""
        feeds = {"image": analysis.image_features[None], "clinical": analysis.clinical[None],
                 "clinical_present": analysis.clinical_present[None].astype(np.float32),
                 "text": analysis.text[None], "text_present": np.array([float(analysis.text_present)], np.float32)}
        logit, weights, log_var = self.fusion(**feeds)
        temperature = float(self.params["temperature"])
        probability = 1.0 / (1.0 + math.exp(-float(logit[0]) / temperature))
        return probability, math.exp(float(log_var[0]) / 2.0), weights[0]

    def detect(self, inputs: DetectorInput) -> DetectorResult:
        """Masses and calcification clusters per view, matched across CC/MLO, case probability, density."""
        return self.report(self.analyse(inputs), inputs.views)

    def report(self, analysis: ExamAnalysis, views: list[MammoView]) -> DetectorResult:
        """The DetectorResult of an analysed exam (``views`` as given to ``analyse``)."""
        probability, logit_std, weights = self.fuse(analysis)
        weight_dict = {name: round(float(w), 4) for name, w in zip(("image", "clinical", "text"), weights,
                                                                   strict=True)}
        density = DENSITY_CATEGORIES[int(np.argmax(analysis.density_probabilities))]
        shown = select_findings(analysis.candidates, probability, self.params)
        birads = birads_suggestion(probability, bool(shown))
        findings = [self._finding(c, analysis, views, probability, logit_std, weight_dict, birads)
                    for c in shown]
        findings.sort(key=lambda f: -f.score)
        positive = probability >= float(self.params["positive_threshold"])
        notes = [f"case malignancy probability {probability:.3f} (calibrated on a synthetic calibration split "
                 f"with enriched prevalence)", f"BI-RADS-style suggestion: {birads}",
                 f"breast density category (suggested): {density}",
                 f"modality weights: {weight_dict}", f"logit_std {logit_std:.3f}", UNCERTAINTY_NOTE,
                 "deep fusion model trained on synthetic phantoms only; not for clinical use"]
        missing = incomplete_exam([(v.laterality, v.view) for v in views])
        if missing:
            notes.append(f"incomplete exam ({missing}): the model learned from four-view exams; what is missing "
                         f"was read as agreeing with what is present")
        return DetectorResult(task=self.task, algorithm=self.algorithm, findings=findings, case_score=probability,
                              positive=positive, notes=notes)

    def _finding(self, cand: Candidate, analysis: ExamAnalysis, views: list[MammoView], probability: float,
                 logit_std: float, weights: dict[str, float], birads: str) -> Finding:
        prepared = analysis.views[cand.view_index]
        view = views[cand.view_index]
        center = prepared.to_source(cand.row, cand.col)
        probability_map = analysis.probabilities[cand.view_index][cand.channel]
        outline = self.mass_outline if CHANNELS[cand.channel] is FindingType.MASS else None
        region = cand.region if outline is None else mass_region(prepared, probability_map, cand, outline)
        mask = prepared.map_to_source(region)
        heat = prepared.map_to_source(probability_map).astype(np.float32)
        spacing = float(np.mean(view.pixel_spacing_mm))
        diameter = equivalent_diameter_mm(mask, spacing)
        partner = (str(analysis.candidates[cand.partner].view_index)
                   if cand.partner >= 0 and cand.matched_score >= 0.5 * cand.score else "none")
        return Finding(
            finding_type=CHANNELS[cand.channel], score=float(max(cand.matched_score, 0.8 * cand.score)),
            center_voxel=center, location=f"{SIDES[view.laterality]} breast, {view.view} view",
            laterality=view.laterality, diameter_mm=diameter, mask=mask,
            heatmap=np.clip(heat, 0.0, 1.0), view_index=cand.view_index,
            measurements={"peak_probability": cand.score, "matched_score": cand.matched_score,
                          "candidate_malignancy": cand.malignancy,
                          "distance_from_nipple_mm": cand.nipple_distance_mm,
                          "depth_from_chest_wall_mm": cand.depth_mm, "case_probability": probability,
                          "logit_std": logit_std},
            attributes={"view": view.view, "corresponding_view_index": partner,
                        "birads_suggestion": birads, "heatmap": "network probability map of this finding type"},
            modality_weights=dict(weights),
        )


def exam_candidates(prepared: list[PreparedView], probabilities: list[np.ndarray], identities: list[tuple[str, str]],
                    params: dict[str, Any]) -> list[Candidate]:
    """The peaks of every view's maps, matched across CC/MLO (not yet classified)."""
    candidates: list[Candidate] = []
    for index, (view, prob) in enumerate(zip(prepared, probabilities, strict=True)):
        candidates.extend(find_candidates(prob, view, index, floor=float(params["candidate_floor"]),
                                          per_view=int(params["candidates_per_view"])))
    match_views(candidates, dict(enumerate(identities)), float(params["match_tolerance_mm"]))
    return candidates


def exam_image_analysis(prepared: list[PreparedView], probabilities: list[np.ndarray],
                        identities: list[tuple[str, str]], params: dict[str, Any],
                        classify: Callable[[np.ndarray], np.ndarray]) -> tuple[list[Candidate], np.ndarray]:
    """Candidates (matched across CC/MLO, classified by ``classify``: crops -> probabilities) and the image
    feature vector of one exam.

    Shared by the detector and training (which feeds PyTorch outputs), so both see the same features.
    """
    breasts = dict(enumerate(identities))
    candidates = exam_candidates(prepared, probabilities, identities, params)
    if candidates:
        crops = candidate_crops(prepared, [(c.view_index, c.row, c.col) for c in candidates])
        for cand, malignancy in zip(candidates, classify(crops), strict=True):
            cand.malignancy = float(malignancy)
    peaks = np.array([[float(np.where(v.breast, p[k], 0.0).max()) for k in range(len(CHANNELS))]
                      for v, p in zip(prepared, probabilities, strict=True)], dtype=np.float32)
    areas = np.array([float(((p.max(axis=0) >= 0.5) & v.breast).sum()) * NET_SPACING_MM**2 / 100.0
                      for v, p in zip(prepared, probabilities, strict=True)], dtype=np.float32)
    return candidates, case_image_features(candidates, peaks, breasts, areas)


def analyse_exam(prepared: list[PreparedView], probabilities: list[np.ndarray], identities: list[tuple[str, str]],
                 context: Any, params: dict[str, Any], classify: Callable[[np.ndarray], np.ndarray],
                 density_weights: np.ndarray, density_bias: np.ndarray,
                 note_vocabulary: NoteVocabulary | None) -> ExamAnalysis:
    """Image analysis plus clinical/text encodings and the density estimate of one exam."""
    candidates, features = exam_image_analysis(prepared, probabilities, identities, params, classify)
    clinical, present = encode_clinical(Task.MAMMOGRAPHY, context)
    text, text_present = encode_note(context_text(context), encoding=note_encoding_of(params),
                                     vocabulary=note_vocabulary)
    stats = np.stack([density_statistics(v) for v in prepared])
    density = density_probabilities(stats, density_weights, density_bias).mean(axis=0)
    return ExamAnalysis(prepared, probabilities, candidates, features, clinical, present, text, text_present,
                        density)


def _eager(bundle: Bundle) -> Any:
    """The bundle's eager PyTorch model (imported here: CPU serving does not build it or import MONAI)."""
    from ai_engine.detectors.mammo_network import load_eager_model

    return load_eager_model(bundle)
