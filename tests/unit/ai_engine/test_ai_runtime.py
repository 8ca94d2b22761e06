"""Deployed models give the same outputs in ONNX Runtime (the CPU path) and eager PyTorch (the GPU path)."""

from __future__ import annotations

import numpy as np
import pytest

from ai_engine.clinical_features import NOTE_DIM, feature_names
from ai_engine.detectors.ich_fusion import IMAGE_FEATURES, IchFusion
from ai_engine.detectors.mammo_fusion import IMAGE_FEATURES as MAMMO_FEATURES
from ai_engine.detectors.mammo_fusion import MammoFusion
from ai_engine.detectors.nodule_fusion import EMBED_DIM, PATCH, NoduleFusion
from ai_engine.detectors.runtime import DeployedModel
from ai_engine.errors import DetectorInputError
from ai_engine.results import Task

TOLERANCE = 1e-3  # absolute, on logits, probabilities and embeddings (float32 kernels differ)


def _fusion_feeds(rng: np.random.Generator, image_dim: int, task: Task, n: int = 5) -> dict[str, np.ndarray]:
    clinical_dim = len(feature_names(task))
    return {"image": rng.normal(size=(n, image_dim)).astype(np.float32),
            "clinical": rng.normal(size=(n, clinical_dim)).astype(np.float32),
            "clinical_present": (rng.random((n, clinical_dim)) > 0.3).astype(np.float32),
            "text": rng.random((n, NOTE_DIM)).astype(np.float32),
            "text_present": (rng.random(n) > 0.5).astype(np.float32)}


def _assert_same(onnx: DeployedModel, eager: DeployedModel, feeds: dict[str, np.ndarray]) -> None:
    assert (onnx.runtime, eager.runtime) == ("onnxruntime-cpu", "torch-cpu")
    for got, want in zip(onnx(**feeds), eager(**feeds), strict=True):
        np.testing.assert_allclose(got, want, atol=TOLERANCE)


@pytest.mark.parametrize("part", ["network", "fusion"])
def test_ich_models_agree(part: str) -> None:
    rng = np.random.default_rng(0)
    onnx, eager = (getattr(IchFusion(device=d), part) for d in ("cpu", "torch-cpu"))
    feeds = ({"slabs": rng.random((2, 4, 128, 128), dtype=np.float32)} if part == "network"
             else _fusion_feeds(rng, len(IMAGE_FEATURES), Task.ICH))
    _assert_same(onnx, eager, feeds)


@pytest.mark.parametrize("part", ["network", "fusion"])
def test_nodule_models_agree(part: str) -> None:
    rng = np.random.default_rng(1)
    onnx, eager = (getattr(NoduleFusion(device=d), part) for d in ("cpu", "torch-cpu"))
    feeds = ({"patches": rng.random((3, 1, PATCH, PATCH, PATCH), dtype=np.float32)} if part == "network"
             else _fusion_feeds(rng, EMBED_DIM, Task.LUNG_NODULE))
    _assert_same(onnx, eager, feeds)


def test_unknown_device_and_missing_inputs_are_refused() -> None:
    with pytest.raises(DetectorInputError, match="device must be one of"):
        NoduleFusion(device="tpu")
    with pytest.raises(DetectorInputError, match=r"model inputs missing: \['patches'\]"):
        NoduleFusion(device="cpu").network(images=np.zeros((1, 1, PATCH, PATCH, PATCH), dtype=np.float32))


@pytest.mark.parametrize("part", ["network", "fusion"])
def test_mammo_models_agree(part: str) -> None:
    rng = np.random.default_rng(2)
    onnx, eager = (getattr(MammoFusion(device=d), part) for d in ("cpu", "torch-cpu"))
    feeds = ({"views": rng.random((1, 2, 160, 128), dtype=np.float32)} if part == "network"
             else _fusion_feeds(rng, len(MAMMO_FEATURES), Task.MAMMOGRAPHY))
    _assert_same(onnx, eager, feeds)
