"""Training pieces of mammo_fusion: a few steps on tiny data, fusion heads, and ONNX parity of the bundle."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from ai_engine.bundle import load_bundle
from ai_engine.detectors.mammo_fusion import IMAGE_FEATURES, prepare_view
from ai_engine.detectors.mammo_network import CandidateClassifier
from ai_engine.evaluation import metrics
from ai_engine.mammo import MammoView
from ai_engine.results import AlgorithmInfo, DetectorResult, Finding, FindingType, Task
from ai_engine.synthetic.cohorts.mammo import generate_case
from ai_engine.synthetic.mammo_phantom import Acquisition
from ai_engine.training.fusion_fit import FusionData, train_head
from ai_engine.training.tasks import mammo, mammo_candidates
from ai_engine.training.tasks.mammo import (
    INFERENCE_DEFAULTS,
    MammoNetwork,
    MassTruth,
    case_table,
    exam_arrays,
    fit_density_model,
    mass_size_summary,
    predict_views,
    reported_mass_sizes,
    train_network,
)

ACQ = Acquisition(pixel_spacing_mm=0.8)


@pytest.fixture(scope="module")
def tiny_exams() -> list:
    exams = [exam_arrays(generate_case(s, ACQ)) for s in (10, 12, 0, 1)]  # two cancers, two negatives
    assert [e.label for e in exams] == [1, 1, 0, 0]
    return exams


def test_exam_targets_cover_the_cancer_on_the_network_grid(tiny_exams: list) -> None:
    positives = [e for e in tiny_exams if e.label == 1]
    assert positives and all(e.targets.any() for e in positives)
    assert not any(e.targets.any() for e in tiny_exams if e.label == 0)
    for exam in positives:
        hit = np.argwhere(exam.targets.any(axis=1))[0][0]
        assert (exam.targets[hit].any(axis=0) & exam.views[hit].breast).sum() > 0


def test_network_training_runs_a_few_steps_and_changes_the_weights(tiny_exams: list) -> None:
    torch.set_num_threads(1)
    before = MammoNetwork()
    torch.manual_seed(0)
    network = train_network(tiny_exams, tiny_exams[1:3], epochs=1, steps=2, batch=2, seed=0,
                            max_seconds=60.0)
    changed = [not torch.equal(a, b) for a, b in zip(network.state_dict().values(),
                                                      before.state_dict().values(), strict=True)]
    assert any(changed)
    table = case_table(network, CandidateClassifier().eval(), tiny_exams, dict(INFERENCE_DEFAULTS))
    assert table.image.shape == (len(tiny_exams), len(IMAGE_FEATURES))
    assert np.isfinite(table.image).all()


def test_candidate_crops_are_labelled_by_the_cancer_and_the_classifier_trains(tiny_exams: list) -> None:
    torch.set_num_threads(1)
    network = MammoNetwork().eval()
    crops = mammo_candidates.crop_set(tiny_exams, partial(predict_views, network), dict(INFERENCE_DEFAULTS), seed=0)
    assert crops.crops.shape[1:] == (80, 80) and len(crops.labels) == len(crops.crops)
    # Crops centred on a cancer are malignant; nothing in a cancer-free exam is.
    per_exam = [mammo_candidates.exam_crops(e, predict_views(network, e), dict(INFERENCE_DEFAULTS),
                                            np.random.default_rng(1)) for e in tiny_exams]
    assert [int(c.labels.any()) for c in per_exam] == [e.label for e in tiny_exams]
    assert all(0 < c.labels.sum() < len(c.labels) for c in per_exam if c.labels.any())
    before = CandidateClassifier()
    classifier, stop_auc = mammo_candidates.train_classifier(crops, crops, epochs=1, steps=2, batch=6, seed=0,
                                                   max_seconds=60.0)
    assert any(not torch.equal(a, b) for a, b in zip(classifier.state_dict().values(), before.state_dict().values(),
                                                     strict=True))
    scores = mammo_candidates.classify_crops(classifier, crops.crops[:5])
    assert scores.shape == (5,) and ((scores >= 0) & (scores <= 1)).all()
    assert stop_auc == pytest.approx(metrics.roc_auc(crops.labels, mammo_candidates.classify_crops(classifier,
                                                                                                   crops.crops)))


def test_fusion_heads_train_on_features_and_survive_missing_inputs(tiny_exams: list) -> None:
    network = MammoNetwork().eval()
    table = case_table(network, CandidateClassifier().eval(), tiny_exams, dict(INFERENCE_DEFAULTS))
    head = train_head("dynamic", table, table, seed=0, epochs=3)
    missing = FusionData(table.image, table.clinical, np.zeros_like(table.clinical_present), table.text,
                         np.zeros_like(table.text_present), table.label)
    with torch.no_grad():
        weights = head(*missing.tensors()).weights.numpy()
    np.testing.assert_allclose(weights, np.tile([1.0, 0.0, 0.0], (len(tiny_exams), 1)), atol=1e-6)


def test_fusion_training_table_appends_further_exams_no_network_has_seen(tiny_exams: list, monkeypatch) -> None:  # noqa: ANN001
    size = 640
    extra = mammo.fusion_extra_seeds(0, size, 2)
    seen = set(mammo.exam_seeds(0, 0, size + mammo.CLASSIFIER_EXTRA_EXAMS))  # the cohort, the classifier's crops
    assert len(set(extra)) == 2 and not seen & set(extra)
    monkeypatch.setattr(mammo, "TRAIN_ACQUISITION", ACQ)  # small views: fast
    network, classifier = MammoNetwork().eval(), CandidateClassifier().eval()
    train, calibration = mammo._fusion_tables(network, classifier, tiny_exams, len(tiny_exams), True, extra)
    alone, _ = mammo._fusion_tables(network, classifier, tiny_exams, len(tiny_exams), True)
    further = case_table(network, classifier, [exam_arrays(generate_case(s, ACQ)) for s in extra],
                         dict(INFERENCE_DEFAULTS))
    assert len(train) == len(alone) + 2 and len(calibration) == 1
    np.testing.assert_allclose(train.image[:len(alone)], alone.image)
    np.testing.assert_allclose(train.image[len(alone):], further.image)
    np.testing.assert_array_equal(train.label[len(alone):], further.label)


def test_density_model_fits_texture_statistics(tiny_exams: list) -> None:
    weights, bias, accuracy = fit_density_model(tiny_exams, seed=0)
    assert weights.shape == (7, 4) and bias.shape == (4,)
    assert 0.0 <= accuracy <= 1.0


def test_density_model_separates_categories_whose_statistics_differ_in_scale(monkeypatch) -> None:  # noqa: ANN001
    """One informative statistic of size 1e-3 beside noise of size 1e2: the fit standardises, the
    returned weights read the raw statistics (bundle 1.1.0's unscaled fit predicted B for almost all)."""
    from ai_engine.detectors.mammo_fusion import density_probabilities
    from ai_engine.training.tasks import mammo

    rng = np.random.default_rng(0)
    categories = np.repeat(np.arange(4), 40)
    stats = {i: np.array([1e-3 * (c + rng.uniform(-0.3, 0.3)), *rng.normal(0.0, 100.0, 6)], dtype=np.float32)
             for i, c in enumerate(categories)}
    monkeypatch.setattr(mammo, "density_statistics", lambda view: stats[view])
    exams = [type("Exam", (), {"views": [i], "density": int(c)})() for i, c in enumerate(categories)]
    weights, bias, accuracy = fit_density_model(exams, seed=0)
    predicted = density_probabilities(np.stack(list(stats.values())), weights, bias).argmax(axis=1)
    assert accuracy >= 0.95
    assert (predicted == categories).mean() == pytest.approx(accuracy)


def test_deployed_onnx_matches_eager_pytorch_within_1e_4() -> None:
    import onnxruntime as ort

    bundle = load_bundle("mammo_fusion")
    state = torch.load(bundle.weights_path)
    network = MammoNetwork()
    network.load_state_dict({k[len("network."):]: v for k, v in state.items() if k.startswith("network.")})
    network.eval()
    case = generate_case(11)
    view = prepare_view(case.views()[0][2], case.acquisition.pixel_spacing_mm)
    session = ort.InferenceSession(str(bundle.deployed_path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"views": view.channels[None]})[0]
    with torch.no_grad():
        eager = network(torch.from_numpy(view.channels[None])).numpy()
    assert np.abs(onnx_out - eager).max() < 1e-4


def test_an_evaluation_into_another_directory_leaves_the_deployed_bundle_as_it_is(tmp_path: Path) -> None:
    """``evaluate mammo --seed S --cohort-size N --out-dir DIR`` (a second held-out cohort, a validation read) must
    not overwrite the held-out summary the bundle's metadata records for the model card."""
    from ai_engine.bundle import resolve_bundle
    from ai_engine.training import cli

    deployed = resolve_bundle(None, "mammo_fusion").root
    before = {p: p.read_bytes() for p in sorted(deployed.rglob("*")) if p.is_file()}
    out = tmp_path / "seed8889"
    assert cli.main(["evaluate", "mammo", "--seed", "8889", "--cohort-size", "3", "--out-dir", str(out)]) == 0
    written = json.loads((out / "metrics.json").read_text())
    assert written["held_out"]["seed"] == 8889
    assert written["mass_diameter"]["masses"] == sum(len(r["masses"]) for r in json.loads((out / "cases.json").read_text()))
    assert {p: p.read_bytes() for p in sorted(deployed.rglob("*")) if p.is_file()} == before


def test_held_out_mass_sizes_pair_each_true_mass_with_the_mass_listed_at_it() -> None:
    views = [MammoView(np.zeros((8, 8), np.float32), (0.1, 0.1), "L", view, f"1.2.{i}", Path("x.dcm"), "1.2", "1.2")
             for i, view in enumerate(("CC", "MLO"))]
    findings = [Finding(FindingType.MASS, 0.9, (100.0, 100.0), "left breast, CC view", diameter_mm=11.0, view_index=0),
                Finding(FindingType.CALCIFICATION_CLUSTER, 0.9, (100.0, 100.0), "left breast, MLO view",
                        diameter_mm=30.0, view_index=1)]
    result = DetectorResult(Task.MAMMOGRAPHY, AlgorithmInfo("mammo_fusion", "0", "2.25.1", "test"), findings, 0.9, True)
    truths = [MassTruth("L", "CC", (130.0, 100.0), 10.0),  # 3 mm from the finding: it
              MassTruth("L", "MLO", (100.0, 100.0), 10.0),  # only a calcification cluster listed there
              MassTruth("L", "CC", (400.0, 100.0), 10.0)]  # 30 mm away: not it
    sizes = reported_mass_sizes(truths, result, views)
    assert [m["reported_mm"] for m in sizes] == [11.0, None, None]
    summary = mass_size_summary([{"masses": sizes}, {"masses": []}])
    assert (summary["masses"], summary["listed"]) == (3, 1)
    assert summary["mean_abs_error_mm"] == pytest.approx(1.0)
    assert summary["median_ratio_reported_to_true"] == pytest.approx(1.1)
