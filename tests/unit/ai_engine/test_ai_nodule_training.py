"""Nodule training: the loop runs on tiny data and writes a valid bundle whose ONNX models match eager PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ai_engine.bundle import load_bundle
from ai_engine.clinical_features import NOTE_DIM, feature_names
from ai_engine.detectors import nodule_fusion as model
from ai_engine.fusion import FusionHead
from ai_engine.results import Task
from ai_engine.training.tasks.nodule import (
    FINDING_THRESHOLDS,
    FusionSet,
    PatchSet,
    faster_deployment,
    operating_point,
    threshold_from_marks,
    train_from_patches,
)

PARITY_TOLERANCE = 1e-4  # absolute, on logits and embeddings (float32 ONNX Runtime vs eager)


def _tiny_sets(rng: np.random.Generator, cases: int = 6, per_case: int = 16) -> tuple[PatchSet, FusionSet]:
    """Balls (nodules, with their segmentation) and rods (vessel mimics) on lung-grey noise."""
    z, y, x = np.mgrid[:32, :32, :32] - 15.5
    patches, segs, nodule, kind, case, malignant = [], [], [], [], [], []
    for c in range(cases):
        for i in range(per_case):
            positive = i % 2 == 0
            radius = rng.uniform(3, 8)
            shape = (z**2 + y**2 + x**2 < radius**2) if positive else (y**2 + x**2 < (radius / 3) ** 2)
            image = 0.1 + 0.02 * rng.standard_normal((32, 32, 32)) + 0.65 * shape
            patches.append(np.clip(image * 255, 0, 255).astype(np.uint8))
            segs.append((shape.reshape(16, 2, 16, 2, 16, 2).mean(axis=(1, 3, 5)) * 255 * positive).astype(np.uint8))
            nodule.append(int(positive))
            kind.append(i % 3 if positive else -1)
            case.append(c)
            malignant.append(int(radius > 5.5))
    n_clinical = len(feature_names(Task.LUNG_NODULE))
    clinical = {"clinical": rng.standard_normal((cases, n_clinical)).astype(np.float32),
                "present": rng.random((cases, n_clinical)) < 0.8,
                "text": rng.standard_normal((cases, NOTE_DIM)).astype(np.float32), "text_present": np.ones(cases, bool)}
    data = PatchSet(np.stack(patches), np.stack(segs), np.array(nodule, np.uint8), np.array(kind), np.array(case))
    balls = data.nodule == 1
    fusion = FusionSet(data.patches[balls], np.array(malignant)[balls], data.case[balls], clinical)
    return data, fusion


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data, fusion = _tiny_sets(np.random.default_rng(0))
    root = tmp_path_factory.mktemp("bundles") / "nodule_fusion"
    return train_from_patches(data, {"candidate_recall": 1.0}, fusion, out_dir=root, epochs=2, seed=0,
                              quick=True, max_seconds=60.0)


def test_training_writes_a_bundle_the_loader_accepts(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle.name, tiny_bundle.parent)
    timing = bundle.metadata["training"]["deploy_timing_64_patches_s"]
    assert bundle.inference["deployed"] == faster_deployment(timing) and bundle.inference["temperature"] > 0
    assert (bundle.root / "models" / "model.onnx").is_file() and (bundle.root / "models" / "model.ts").is_file()
    assert "synthetic" in bundle.metadata["intended_use"]
    assert bundle.metadata["training"]["cnn"]["epochs_run"] >= 1
    assert bundle.weights_path.stat().st_size < 5 * 2**20


@pytest.mark.parametrize("deployed", ["model.onnx", "model.ts"])
def test_deployed_models_match_eager_pytorch(tiny_bundle: Path, deployed: str) -> None:
    bundle = load_bundle(tiny_bundle.name, tiny_bundle.parent)
    bundle.inference["deployed"] = deployed
    state = torch.load(bundle.weights_path, map_location="cpu")
    network = model.NodulePatchNet()
    network.load_state_dict(state["network"])
    network.eval()
    head = FusionHead(model.EMBED_DIM, len(feature_names(Task.LUNG_NODULE)), NOTE_DIM, mode="dynamic")
    head.load_state_dict(state["fusion"])
    head.eval()
    detector = model.NoduleFusion(bundle)
    patches = np.random.default_rng(1).random((5, 1, 32, 32, 32), dtype=np.float32)
    deployed = detector.run_network(patches)
    with torch.no_grad():
        eager = [t.numpy() for t in network(torch.from_numpy(patches))]
    for name, a, b in zip(model.OUTPUTS, deployed, eager, strict=True):
        assert np.abs(a - b).max() < PARITY_TOLERANCE, name
    embedding = eager[4]
    probability, weights, _ = detector.fuse(embedding, None)
    with torch.no_grad():
        n = len(embedding)
        out = head(torch.from_numpy(embedding), torch.zeros(n, 6), torch.zeros(n, 6), torch.zeros(n, NOTE_DIM),
                   torch.zeros(n))
    expected = 1 / (1 + np.exp(-out.logit.numpy() / bundle.inference["temperature"]))
    assert np.abs(probability - expected).max() < PARITY_TOLERANCE
    assert np.allclose(weights[:, 0], 1.0)  # no clinical data, no note: the image carries all the weight


def test_operating_point_counts_found_nodules_once_and_false_marks_per_scan() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.4]
    hits = [0, 0, -1, 1, -1]  # two marks on nodule 0, a false mark, nodule 1, a low false mark
    assert operating_point(scores, hits, n_lesions=3, n_scans=2, threshold=0.65) == {
        "threshold": 0.65, "sensitivity": round(1 / 3, 4), "fp_per_scan": 0.5}
    assert operating_point(scores, hits, n_lesions=3, n_scans=2, threshold=0.3) == {
        "threshold": 0.3, "sensitivity": round(2 / 3, 4), "fp_per_scan": 1.0}


def test_the_reporting_threshold_is_the_lowest_that_keeps_false_nodules_rare() -> None:
    """Eight calibration scans with false marks at 0.92, 0.66 and 0.58: one (1/8 per scan) is left from 0.70 on."""
    marks = [([0.97, 0.92], [0, -1], 1), ([0.66], [-1], 0), ([0.58, 0.3], [-1, 0], 1)] + [([], [], 0)] * 5
    fitted = threshold_from_marks(marks)
    assert fitted["threshold"] == 0.7 and fitted["calibration_scans"] == 8 and fitted["calibration_nodules"] == 2
    by_threshold = {p["threshold"]: p for p in fitted["operating_points"]}
    assert by_threshold[0.5]["fp_per_scan"] == 0.375 and by_threshold[0.7]["fp_per_scan"] == 0.125
    assert by_threshold[0.7]["sensitivity"] == 0.5  # the nodule at 0.3 is never reported
    noisy = threshold_from_marks([([0.99, 0.98], [-1, -1], 0)])  # no threshold gets there: the highest is kept
    assert noisy["threshold"] == FINDING_THRESHOLDS[-1] and noisy["operating_points"][-1]["sensitivity"] is None


def test_the_faster_cpu_runtime_is_deployed() -> None:
    assert faster_deployment({"onnxruntime": 0.157, "torchscript": 0.114, "eager": 0.107}) == "model.ts"
    assert faster_deployment({"onnxruntime": 0.098, "torchscript": 0.108, "eager": 0.2}) == "model.onnx"
