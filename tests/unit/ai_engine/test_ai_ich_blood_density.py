"""ich_fusion counts and reports blood only where the CT density can be acute blood."""

from __future__ import annotations

import numpy as np
import pytest

from ai_engine.detectors import ich_fusion
from ai_engine.detectors.ich_fusion import (
    BLOOD_HU,
    FusionStage,
    ImageStage,
    blood_probability,
    image_features,
    prepare,
    prepare_labels,
)
from ai_engine.volume import Volume

from tests.unit.ai_engine.independent_phantoms import Sphere, head

BLEED = Sphere((30.0, 0.0, 10.0), 20.0, 65.0)  # 4 mL in the left hemisphere


def _head() -> tuple[Volume, np.ndarray]:
    """A noise-free plain-geometry head with one bleed, and the bleed's mask."""
    return head(0, (BLEED,), noise_hu=0.0)


def _stage(volume: Volume, blood_where: np.ndarray, blood_hu: tuple[float, float] | None) -> ImageStage:
    """What the network would return if it called ``blood_where`` (model grid) intraparenchymal blood."""
    prepared = prepare(volume.array, volume.spacing_mm)
    probs = np.zeros((len(prepared.slabs), ich_fusion.N_CLASSES, *prepared.slabs.shape[1:]), np.float32)
    probs[:, 0] = 1.0
    probs[:, 0][blood_where] = 0.0
    probs[:, 1][blood_where] = 1.0
    blood = blood_probability(probs, prepared.slabs, blood_hu)
    return ImageStage(prepared, probs, blood, image_features(probs, blood, prepared.slab_ml))


def _detector(blood_hu: tuple[float, float] | None) -> ich_fusion.IchFusion:
    detector = object.__new__(ich_fusion.IchFusion)  # findings() needs only the inference settings
    detector.component_threshold, detector.min_component_ml, detector.blood_hu = 0.5, 0.03, blood_hu
    return detector


FUSED = FusionStage(probability=0.99, logit=4.0, logit_sd=0.1, weights={"image": 1.0, "clinical": 0.0, "text": 0.0})


def test_bone_called_blood_by_the_network_is_neither_counted_nor_reported() -> None:
    volume, bleed = _head()
    prepared = prepare(volume.array, volume.spacing_mm)
    skull = prepared.slabs > 500.0  # bone itself; its partial-volume edge with the brain can be blood density
    true_blood = prepare_labels(bleed.astype(np.uint8), volume.spacing_mm, prepared) > 0
    stage = _stage(volume, skull | true_blood, BLOOD_HU)
    findings = _detector(BLOOD_HU).findings(volume, stage, FUSED)
    assert len(findings) == 1
    assert findings[0].mask[bleed].mean() > 0.8 and not findings[0].mask[volume.array > 500.0].any()
    assert 45.0 < findings[0].measurements["mean_hu"] < 75.0
    bleed_only = _stage(volume, true_blood, BLOOD_HU)
    assert np.array_equal(stage.features, bleed_only.features)  # the skull adds nothing to the case features


def test_without_a_gate_the_bundle_sees_what_it_was_trained_on() -> None:
    """A bundle from before 1.2.0 has no ``blood_hu``: its fusion heads learned ungated features."""
    volume, _ = _head()
    slabs = prepare(volume.array, volume.spacing_mm).slabs
    stage = _stage(volume, slabs > 500.0, None)
    assert stage.blood.max() == 1.0 and stage.features[2] > 0.0  # log_volume_ml of the "blood" on the skull
    assert _detector(None).findings(volume, stage, FUSED)


@pytest.mark.parametrize(("hu", "kept"), [(-5.0, False), (20.0, False), (40.0, True), (90.0, True), (160.0, False),
                                          (1000.0, False)])
def test_blood_probability_keeps_only_blood_density(hu: float, kept: bool) -> None:
    probs = np.zeros((1, ich_fusion.N_CLASSES, 2, 2), np.float32)
    probs[:, 1] = 1.0
    assert bool(blood_probability(probs, np.full((1, 2, 2), hu, np.float32), BLOOD_HU).all()) is kept
