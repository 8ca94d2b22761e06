"""Detection and classification metrics, numpy only.

Conventions: ``labels`` are 0/1 (1 = positive case), ``scores`` are higher-is-more-positive;
a case is called positive when ``score >= threshold``. FROC follows LUNA16: a candidate
that hits a lesion already found counts neither as a true nor as a false positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ai_engine.errors import AiEngineError

CPM_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class MetricsError(AiEngineError):
    """Metric inputs that cannot give a defined value (shapes differ, one class only, ...)."""


def _binary(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise MetricsError(f"labels and scores must have the same length, got {y.size} and {s.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise MetricsError("labels must be 0 or 1")
    if y.min(initial=1.0) == y.max(initial=0.0):
        raise MetricsError(f"need both positive and negative cases, got {int(y.sum())} of {y.size} positive")
    return y, s


def roc_auc(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
    y, s = _binary(labels, scores)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty_like(s)
    sorted_s = s[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))



def roc_auc_or_chance(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """``roc_auc``, or 0.5 (chance) when ``labels`` hold one class only (a tiny validation split)."""
    y = np.asarray(labels)
    return roc_auc(labels, scores) if 0 < y.sum() < y.size else 0.5

def roc_curve(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) at every distinct score, from (0, 0)."""
    y, s = _binary(labels, scores)
    thresholds = np.unique(s)[::-1]
    tpr = np.array([0.0] + [float((s[y == 1] >= t).mean()) for t in thresholds])
    fpr = np.array([0.0] + [float((s[y == 0] >= t).mean()) for t in thresholds])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold with the sensitivity and specificity it gives."""

    threshold: float
    sensitivity: float
    specificity: float


def operating_point(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray,
                    threshold: float) -> OperatingPoint:
    """Sensitivity and specificity when cases with ``score >= threshold`` are called positive."""
    y, s = _binary(labels, scores)
    return OperatingPoint(float(threshold), float((s[y == 1] >= threshold).mean()),
                          float((s[y == 0] < threshold).mean()))


def sensitivity_at_specificity(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray,
                               specificity: float) -> OperatingPoint:
    """The most sensitive threshold whose specificity is at least ``specificity``."""
    y, s = _binary(labels, scores)
    negatives = np.sort(s[y == 0])
    # threshold just above the k-th highest negative so that at most (1 - spec) of negatives pass
    allowed_fp = int(np.floor((1.0 - specificity) * negatives.size + 1e-9))
    if allowed_fp >= negatives.size:
        threshold = float(min(s.min(), negatives.min()))
    else:
        threshold = float(np.nextafter(negatives[negatives.size - 1 - allowed_fp], np.inf))
    return operating_point(y, s, threshold)


def froc_curve(scores: Sequence[float] | np.ndarray, lesion_ids: Sequence[int] | np.ndarray, *,
               n_lesions: int, n_scans: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives per scan, sensitivity, threshold) over all candidate thresholds.

    ``scores`` are every candidate of every scan; ``lesion_ids`` the globally unique id of the
    lesion each candidate hits, or -1 for a false positive.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    ids = np.asarray(lesion_ids, dtype=np.int64).ravel()
    if s.shape != ids.shape:
        raise MetricsError(f"scores and lesion_ids must have the same length, got {s.size} and {ids.size}")
    if n_lesions < 1 or n_scans < 1:
        raise MetricsError(f"n_lesions and n_scans must be positive, got {n_lesions} and {n_scans}")
    order = np.argsort(-s, kind="mergesort")
    s, ids = s[order], ids[order]
    seen: set[int] = set()
    fp = hits = 0
    fps, sens, thresholds = [0.0], [0.0], [np.inf]
    for i, (score, lesion) in enumerate(zip(s, ids, strict=True)):
        if lesion < 0:
            fp += 1
        elif lesion not in seen:
            seen.add(int(lesion))
            hits += 1
        if i + 1 == s.size or s[i + 1] != score:
            fps.append(fp / n_scans)
            sens.append(hits / n_lesions)
            thresholds.append(float(score))
    return np.array(fps), np.array(sens), np.array(thresholds)


def sensitivity_at_fp(fp_per_scan: np.ndarray, sensitivity: np.ndarray, rate: float) -> float:
    """Sensitivity at ``rate`` false positives per scan: the best point with at most that many FPs."""
    allowed = sensitivity[np.asarray(fp_per_scan) <= rate + 1e-12]
    return float(allowed.max()) if allowed.size else 0.0


def cpm(fp_per_scan: np.ndarray, sensitivity: np.ndarray, rates: Sequence[float] = CPM_FP_RATES) -> float:
    """Competition performance metric: mean sensitivity at 1/8 ... 8 false positives per scan."""
    return float(np.mean([sensitivity_at_fp(fp_per_scan, sensitivity, r) for r in rates]))


def reliability_curve(labels: Sequence[float] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                      bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width probability bin: (mean predicted, observed positive fraction, count); empty bins dropped."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise MetricsError(f"labels and probabilities must be non-empty and match, got {y.size} and {p.size}")
    if p.min() < 0 or p.max() > 1:
        raise MetricsError(f"probabilities must lie in [0, 1], got {p.min():.3f}..{p.max():.3f}")
    index = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    used = counts > 0
    mean_p = np.bincount(index, weights=p, minlength=bins)[used] / counts[used]
    observed = np.bincount(index, weights=y, minlength=bins)[used] / counts[used]
    return mean_p, observed, counts[used]


def expected_calibration_error(labels: Sequence[float] | np.ndarray,
                               probabilities: Sequence[float] | np.ndarray, bins: int = 10) -> float:
    """Count-weighted mean |observed - predicted| over equal-width probability bins."""
    mean_p, observed, counts = reliability_curve(labels, probabilities, bins)
    return float(np.sum(counts * np.abs(observed - mean_p)) / counts.sum())
