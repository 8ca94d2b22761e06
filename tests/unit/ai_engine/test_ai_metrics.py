"""Evaluation metrics against hand-computed values and brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ai_engine.evaluation import metrics


def test_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60), 1)  # many ties
    pairs = [(p, n) for p, n in itertools.product(scores[labels == 1], scores[labels == 0])]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert metrics.roc_auc(labels, scores) == pytest.approx(brute)
    with pytest.raises(metrics.MetricsError, match="both positive and negative"):
        metrics.roc_auc([1, 1], [0.2, 0.3])


def test_auc_or_chance_is_chance_only_when_a_split_holds_one_class() -> None:
    assert metrics.roc_auc_or_chance([1, 1, 1], [0.2, 0.9, 0.5]) == 0.5
    assert metrics.roc_auc_or_chance([0, 0], [0.2, 0.9]) == 0.5
    assert metrics.roc_auc_or_chance([0, 1, 0, 1], [0.1, 0.8, 0.9, 0.7]) == metrics.roc_auc([0, 1, 0, 1],
                                                                                          [0.1, 0.8, 0.9, 0.7])


def test_sensitivity_at_specificity_keeps_the_specificity() -> None:
    labels = np.array([0] * 20 + [1] * 10)
    scores = np.concatenate([np.linspace(0.0, 0.5, 19), [0.95], np.linspace(0.4, 1.0, 10)])
    point = metrics.sensitivity_at_specificity(labels, scores, 0.95)
    assert point.specificity >= 0.95
    assert point.sensitivity == pytest.approx(float((scores[20:] >= point.threshold).mean()))
    assert point.threshold > 0.5  # one false positive allowed (the 0.95), only just above the next negative
    strict = metrics.sensitivity_at_specificity(labels, scores, 1.0)
    assert strict.specificity == 1.0 and strict.threshold > 0.95


def test_froc_ignores_duplicate_hits_and_cpm_averages_the_seven_rates() -> None:
    # 2 scans, 3 lesions: candidates (score, lesion id or -1)
    scores = [0.9, 0.85, 0.8, 0.7, 0.6, 0.5]
    lesions = [0, 0, -1, 1, -1, -1]
    fps, sens, _ = metrics.froc_curve(scores, lesions, n_lesions=3, n_scans=2)
    assert sens.max() == pytest.approx(2 / 3)  # lesion 2 never found
    assert metrics.sensitivity_at_fp(fps, sens, 0.5) == pytest.approx(2 / 3)  # one FP over two scans
    assert metrics.sensitivity_at_fp(fps, sens, 0.25) == pytest.approx(1 / 3)
    expected = np.mean([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert metrics.cpm(fps, sens) == pytest.approx(expected)


def test_calibration_error_is_small_when_calibrated_and_large_when_not() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(20_000)
    labels = (rng.random(20_000) < p).astype(int)
    assert metrics.expected_calibration_error(labels, p) < 0.02
    assert metrics.expected_calibration_error(labels, np.clip(p * 0.3 + 0.7, 0, 1)) > 0.2
    predicted, observed, counts = metrics.reliability_curve(labels, p, bins=5)
    assert len(predicted) == 5 and counts.sum() == 20_000 and np.allclose(predicted, observed, atol=0.03)
