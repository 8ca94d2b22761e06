"""CT artifact augmentation: streak bands and rims change soft tissue only; the soft kernel blurs each slab alone."""

from __future__ import annotations

import numpy as np
import pytest

from ai_engine.training import ct_artifacts


def _stack() -> np.ndarray:
    """Three 64 x 64 slabs at 2 mm: air outside, a 6 mm skull ring, brain (30 HU) inside."""
    y, x = np.mgrid[-32:32, -32:32] * 2.0
    radius = np.hypot(y, x)
    slab = np.where(radius < 50.0, 30.0, -1000.0).astype(np.float32)
    slab[(radius >= 50.0) & (radius < 56.0)] = 900.0
    return np.repeat(slab[None], 3, axis=0)


def test_streaks_change_soft_tissue_only_and_fade_through_the_neighbours() -> None:
    stack = _stack()
    changes = [ct_artifacts.add_streaks(stack, np.random.default_rng(seed), 2.0) - stack for seed in range(20)]
    soft = (stack > -100.0) & (stack < 150.0)
    assert all(np.abs(d[~soft]).max() == 0.0 for d in changes)
    assert all(np.abs(d[1]).max() > 1.0 for d in changes)  # the current slab always gets its bands
    assert max(float(np.abs(d).max()) for d in changes) <= ct_artifacts.STREAK_MAX_HU * 5
    # the neighbours get the same bands scaled by one weight in [0, 1] each
    for d in changes:
        for k in (0, 2):
            ratio = d[k][np.abs(d[1]) > 1.0] / d[1][np.abs(d[1]) > 1.0]
            assert np.allclose(ratio, ratio[0], atol=1e-4) and -1e-6 <= ratio[0] <= 1.0 + 1e-6


def test_rim_shifts_soft_tissue_next_to_bone_only() -> None:
    stack = _stack()
    rng = np.random.default_rng(1)
    out = ct_artifacts.vary_rim(stack, rng, 2.0)
    y, x = np.mgrid[-32:32, -32:32] * 2.0
    radius = np.hypot(y, x)
    changed = np.abs(out - stack) > 0.0
    assert changed.any()
    assert not changed[:, radius < 50.0 - ct_artifacts.RIM_MM[1] - 2.0].any()  # deep brain untouched
    assert not changed[:, (radius >= 50.0) & (radius < 56.0)].any()  # bone untouched
    assert not changed[:, radius >= 58.0].any()  # air untouched
    assert len(np.unique(np.round(out[changed] - stack[changed], 4))) == 1  # one offset for the whole rim


def test_soft_kernel_blurs_the_skull_into_the_brain_within_each_slab_only() -> None:
    stack = _stack()
    stack[0] = 30.0  # a neighbour without skull: blurring must not carry the skull across slabs
    y, x = np.mgrid[-32:32, -32:32] * 2.0
    radius = np.hypot(y, x)
    rim = []
    for seed in range(10):  # sigma drawn from 0-1.2 mm: weak and strong blurs
        out = ct_artifacts.soften(stack, np.random.default_rng(seed), 2.0)
        assert np.allclose(out[0], 30.0)
        assert np.allclose(out[1][radius < 30.0], 30.0)  # deep brain as it was
        assert np.isclose(out[1].sum(), stack[1].sum(), rtol=1e-3)  # blurred, not brightened
        rim.append(float(out[1][(radius >= 48.0) & (radius < 50.0)].mean()))
    assert min(rim) >= 30.0 - 1e-3 and max(rim) > 60.0  # the brain next to the skull gets brighter


@pytest.mark.parametrize("slabs", [2, 6])
def test_a_whole_case_draw_is_reproducible_and_keeps_the_case_shape(slabs: int) -> None:
    """Streak events need three neighbouring slabs; a two-slab case still gets the other artifacts."""
    case = np.repeat(_stack()[:1], slabs, axis=0)
    draws = [ct_artifacts.augment_case(case, np.random.default_rng(seed), 2.0) for seed in (0, 0, 1)]
    assert all(d.shape == case.shape and d.dtype == np.float32 for d in draws)
    assert np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])
    assert not np.array_equal(draws[0], case)  # offset and noise at least
    assert np.array_equal(case, np.repeat(_stack()[:1], slabs, axis=0))  # the input is left as it was


def test_whole_case_streak_events_fall_at_different_heights() -> None:
    case = np.repeat(_stack()[:1], 12, axis=0)
    brain = np.hypot(*(np.mgrid[-32:32, -32:32] * 2.0)) < 40.0
    streaked = set()
    for seed in range(40):
        out = ct_artifacts.augment_case(case, np.random.default_rng(seed), 2.0)
        offset = np.median(out[:, brain] - 30.0)  # the whole-case HU offset (noise is zero-mean)
        spread = np.abs(out[:, brain] - 30.0 - offset).max(axis=1)
        streaked.update(np.flatnonzero(spread > spread.min() + 10.0).tolist())
    assert len(streaked) >= 6  # bands appear on many heights across draws, not only in the middle slabs
