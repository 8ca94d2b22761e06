"""ich_fusion groups blood pieces that lie close together into one bleed."""

from __future__ import annotations

import numpy as np

from ai_engine.detectors.ich_fusion import GROUP_MM, MODEL_PIXEL_MM, bleed_groups


def test_pieces_closer_than_the_group_distance_are_one_bleed_and_far_ones_are_not() -> None:
    blood = np.zeros((8, 64, 64), dtype=bool)
    gap = int(GROUP_MM / MODEL_PIXEL_MM) - 1  # pixels between two pieces: just under GROUP_MM apart
    blood[3, 10:14, 10:12] = True
    blood[3, 10:14, 12 + gap:14 + gap] = True  # same bleed (sulcal blood in the next sulcus)
    blood[3, 50:54, 50:54] = True  # far away: another bleed
    labels, reach, count = bleed_groups(blood)
    assert count == 2
    assert labels[3, 11, 10] == labels[3, 11, 12 + gap] != labels[3, 51, 51]
    assert (labels > 0).sum() == blood.sum() and ((labels > 0) <= (reach > 0)).all()


def test_no_blood_gives_no_bleed() -> None:
    labels, reach, count = bleed_groups(np.zeros((4, 16, 16), dtype=bool))
    assert count == 0 and not labels.any() and not reach.any()
