"""Deployed models give the same outputs in their CPU runtime (ONNX Runtime, or TorchScript for the nodule network)
and in eager PyTorch (the GPU path)."""

from __future__ import annotations

import numpy as np
import pytest

from ai_engine.clinical_features import NOTE_DIM, feature_names
from ai_engine.detectors.ich_fusion import IMAGE_FEATURES, IchFusion
from ai_engine.detectors.mammo_fusion import IMAGE_FEATURES as MAMMO_FEATURES
from ai_engine.detectors.mammo_fusion import CANDIDATE_CROP, MammoFusion
from ai_engine.detectors.nodule_fusion import EMBED_DIM, PATCH, NoduleFusion
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


# detector, seed, (network input name, shape of a random batch), fusion image dimension, task
DETECTORS = {
    "ich": (IchFusion, 0, ("slabs", (2, 4, 128, 128)), len(IMAGE_FEATURES), Task.ICH),
    "nodule": (NoduleFusion, 1, ("patches", (3, 1, PATCH, PATCH, PATCH)), EMBED_DIM, Task.LUNG_NODULE),
    "mammo": (MammoFusion, 2, ("views", (1, 2, 160, 128)), len(MAMMO_FEATURES), Task.MAMMOGRAPHY),
}


@pytest.mark.parametrize("part", ["network", "fusion"])
@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_deployed_and_eager_models_agree(detector: str, part: str) -> None:
    detector_class, seed, (input_name, shape), image_dim, task = DETECTORS[detector]
    rng = np.random.default_rng(seed)
    cpu, eager = (detector_class(device=d) for d in ("cpu", "torch-cpu"))
    deployed, eager = getattr(cpu, part), getattr(eager, part)
    feeds = ({input_name: rng.random(shape, dtype=np.float32)} if part == "network"
             else _fusion_feeds(rng, image_dim, task))
    torchscript = part == "network" and cpu.bundle.inference["deployed"] == "model.ts"
    assert (deployed.runtime, eager.runtime) == ("torchscript-cpu" if torchscript else "onnxruntime-cpu", "torch-cpu")
    for got, want in zip(deployed(**feeds), eager(**feeds), strict=True):
        np.testing.assert_allclose(got, want, atol=TOLERANCE)


def test_mammo_candidate_classifier_agrees_in_both_runtimes() -> None:
    crops = np.random.default_rng(3).random((4, 1, CANDIDATE_CROP, CANDIDATE_CROP), dtype=np.float32)
    onnx, eager = (MammoFusion(device=d).classifier for d in ("cpu", "torch-cpu"))
    assert (onnx.runtime, eager.runtime) == ("onnxruntime-cpu", "torch-cpu")
    np.testing.assert_allclose(onnx(crops=crops)[0], eager(crops=crops)[0], atol=TOLERANCE)


def test_unknown_device_and_missing_inputs_are_refused() -> None:
    with pytest.raises(DetectorInputError, match="device must be one of"):
        NoduleFusion(device="tpu")
    with pytest.raises(DetectorInputError, match=r"model inputs missing: \['patches'\]"):
        NoduleFusion(device="cpu").network(images=np.zeros((1, 1, PATCH, PATCH, PATCH), dtype=np.float32))


def test_the_nodule_network_deploys_the_faster_cpu_runtime() -> None:
    """The issue asks for TorchScript or ONNX Runtime on the CPU, whichever is faster: for the nodule patch network
    TorchScript is (bundle metadata, deployment), and it runs as TorchScript."""
    detector = NoduleFusion(device="cpu")
    assert detector.bundle.inference["deployed"] == "model.ts" and detector.network.runtime == "torchscript-cpu"
    assert "TorchScript" in detector.bundle.metadata["deployment"]["cpu_runtime"]


def test_torchscript_runs_on_the_bundle_s_threads_not_every_core() -> None:
    """The TorchScript path ignored the bundle's thread bound: one nodule job took every core of the host, beside
    the ICH and mammography jobs that ONNX Runtime keeps to theirs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(5)
    try:
        detector = NoduleFusion(device="cpu")
        assert torch.get_num_threads() == int(detector.bundle.inference["onnx_threads"]) == 2
    finally:
        torch.set_num_threads(before)
