"""Fusion framework: clinical encoding with explicit missingness, gated fusion, dropout, loss, calibration."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from ai_engine.clinical_features import (
    UNNAMED_NOTE_ENCODING,
    ClinicalFeatureError,
    encode_clinical,
    encode_note,
    feature_names,
    note_encoding_of,
)
from ai_engine.errors import AiEngineError
from ai_engine.fusion import FusionHead, fusion_loss, modality_dropout, modality_weight_dict
from ai_engine.fusion.calibration import TemperatureScaler
from ai_engine.training.loop import TrainConfig, fit
from hl7_fhir.context import ClinicalContext, CodedItem, LabValue, Provenance
from hl7_fhir.gather import merge_contexts

PROV = Provenance("fhir", "test", "Observation/1")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _context(**labs: float) -> ClinicalContext:
    context = ClinicalContext(age_years=80.0, sex="female", status="complete")
    for name, value in labs.items():
        context.labs[name] = LabValue(name, "x", value, "1", datetime(2024, 1, 1), PROV)
    return context


def test_missing_clinical_values_are_masked_not_imputed() -> None:
    values, present = encode_clinical("ich", _context(inr=3.0))
    names = feature_names("ich")
    assert present[names.index("inr")] and values[names.index("inr")] > 1.0  # INR 3 is far above normal
    assert not present[names.index("platelets")] and values[names.index("platelets")] == 0.0
    assert present[names.index("sex")] and values[names.index("sex")] == 0.0  # FHIR "female"
    empty_values, empty_present = encode_clinical("ich", None)
    assert not empty_present.any() and not empty_values.any()


def test_medication_features_are_missing_when_the_medication_section_failed() -> None:
    context = _context()
    context.medications.append(CodedItem("1364430", "rxnorm", "apixaban", "anticoagulant"))
    names = feature_names("ich")
    values, present = encode_clinical("ich", context)
    assert present[names.index("anticoagulant")] and values[names.index("anticoagulant")] == 1.0
    assert present[names.index("antiplatelet")] and values[names.index("antiplatelet")] == 0.0
    context.errors.append("medications: FHIR server timed out")
    _, present = encode_clinical("ich", context)
    assert not present[names.index("anticoagulant")] and not present[names.index("antiplatelet")]


def test_lists_the_emr_never_sent_are_missing_not_negative() -> None:
    """EMR down, HL7 labs in: 'on no anticoagulant' is not known, so INR 3.1 must not read as untreated."""
    merged = merge_contexts(ClinicalContext.unavailable("EMR did not answer within 2.0 s"),
                            [LabValue("inr", "6301-6", 3.1, "1", datetime(2024, 1, 1, tzinfo=timezone.utc), PROV)],
                            analytes=["inr"], as_of=datetime(2024, 1, 2, tzinfo=timezone.utc),
                            lookback=timedelta(days=90))
    for task, lists in (("ich", ("anticoagulant", "antiplatelet")),
                        ("mammo", ("brca_carrier", "family_history_breast_cancer", "prior_biopsy"))):
        present = encode_clinical(task, merged)[1]
        assert not any(present[feature_names(task).index(name)] for name in lists), task
    assert encode_clinical("ich", merged)[1][feature_names("ich").index("inr")]


@pytest.mark.parametrize(("task", "feature", "display", "value"), [
    ("nodule", "prior_cancer", "Malignant neoplasm of colon", 1.0),
    ("nodule", "prior_cancer", "Benign neoplasm of colon", 0.0),
    ("nodule", "prior_cancer", "Family history of malignant neoplasm of breast", 0.0),
    ("nodule", "prior_cancer", "Screening for malignant neoplasm of breast", 0.0),
    ("mammo", "brca_carrier", "BRCA1 gene mutation positive", 1.0),
    ("mammo", "brca_carrier", "BRCA1 gene mutation negative", 0.0),
    ("mammo", "prior_biopsy", "Biopsy of breast", 1.0), ("mammo", "prior_biopsy", "Lung biopsy", 0.0)])
def test_a_condition_counts_only_when_its_display_affirms_it(task: str, feature: str, display: str,
                                                             value: float) -> None:
    context = _context()
    context.conditions.append(CodedItem("local-1", "urn:local", display))
    assert encode_clinical(task, context)[0][feature_names(task).index(feature)] == value


@pytest.mark.parametrize(("code", "display", "value"), [
    ("449868002", "Smokes tobacco daily", 1.0), ("428041000124106", "Occasional tobacco smoker", 1.0),
    ("8517006", "Ex-smoker", 0.5), ("266919005", "Never smoked tobacco", 0.0), ("x", "Former smoker", 0.5),
    ("160618006", "Current non-smoker", None), ("266927001", "Tobacco smoking consumption unknown", None)])
def test_smoking_status_follows_the_us_core_codes(code: str, display: str, value: float | None) -> None:
    context = _context()
    context.coded_observations["smoking_status"] = CodedItem(code, "http://snomed.info/sct", display,
                                                             "smoking_status")
    values, present = encode_clinical("nodule", context)
    index = feature_names("nodule").index("smoking_status")
    assert (values[index] if present[index] else None) == value


def test_trauma_is_read_from_the_note_and_respects_negation() -> None:
    index = feature_names("ich").index("trauma")
    fall, no_trauma = _context(), _context()
    fall.notes.append("82 y/o on warfarin, fell down stairs, GCS 14")
    no_trauma.notes.append("sudden headache, no history of trauma")
    assert encode_clinical("ich", fall)[0][index] == 1.0
    assert encode_clinical("ich", no_trauma)[0][index] == 0.0 and encode_clinical("ich", no_trauma)[1][index]
    assert not encode_clinical("ich", _context())[1][index]  # no coded item, no text: missing


@pytest.mark.parametrize(("note", "trauma"), [
    ("No LOC after fall", 1.0), ("Not anticoagulated. Fell at home", 1.0), ("Denies headache, fell down stairs", 1.0),
    ("Recurrent falls", 1.0), ("Assaulted last night", 1.0), ("MVA, restrained driver", 1.0),
    ("denies trauma or fall", 0.0), ("headache, no history of trauma", 0.0),
    ("Patient denied any fall.", 0.0), ("No history of head trauma.", 0.0),  # before: both read as trauma
    ("No LOC per wife fell at home", 1.0), ("No LOC or head trauma", 0.0), ("Denies headache or head injury", 0.0),
    ("No loss of consciousness or trauma", 0.0),
    # before, all read as trauma: a negated "or" list, a stroke, a nursing risk score, a question
    ("Denies trauma, falls, or anticoagulant use.", 0.0), ("No headache, falls, or injury reported.", 0.0),
    ("Hx of cerebrovascular accident 2019, new weakness", 0.0), ("Acute confusion. High fall risk per nursing.", 0.0),
    ("Known fall risk; no trauma.", 0.0), ("Rule out trauma", 0.0), ("R/O head injury", 0.0),
    ("No LOC, was assaulted", 1.0), ("Fall risk, fell at home", 1.0), ("road traffic accident", 1.0),
    # what follows a comma after a negated symptom is said, not denied
    ("No LOC, fall from ladder", 1.0), ("Denies LOC, MVC this morning", 1.0),
    ("No anticoagulants, assaulted at bar", 1.0), ("no vomiting, collision with car", 1.0),
    ("No LOC, fall from ladder or roof", 1.0), ("No LOC, MVC or fall this morning", 1.0)])
def test_a_negation_ends_at_its_clause_and_trauma_has_its_common_forms(note: str, trauma: float) -> None:
    context = _context()
    context.notes.append(note)
    assert encode_clinical("ich", context)[0][feature_names("ich").index("trauma")] == trauma


def test_note_encoding_is_deterministic_normalised_and_text_sensitive() -> None:
    a, present = encode_note("78 y/o on apixaban, fall from standing, GCS 13", encoding="hashed-terms")
    b, _ = encode_note("78 y/o on apixaban, fall from standing, GCS 13", encoding="hashed-terms")
    c, _ = encode_note("45 y/o, no trauma, migraine", encoding="hashed-terms")
    assert present and np.array_equal(a, b) and abs(np.linalg.norm(a) - 1.0) < 1e-5
    assert float(a @ c) < 0.9
    assert encode_note(None, encoding="hashed-words")[1] is False
    assert encode_note("  ", encoding="hashed-words")[1] is False


def test_the_words_encoding_ignores_numbers_and_the_terms_encoding_keeps_them() -> None:
    older, younger = "F, 63, routine screening, BRCA carrier", "F, 48, routine screening, BRCA carrier"
    assert np.array_equal(encode_note(older, encoding="hashed-words")[0],
                          encode_note(younger, encoding="hashed-words")[0])
    assert not np.array_equal(encode_note(older, encoding="hashed-terms")[0],
                              encode_note(younger, encoding="hashed-terms")[0])
    assert encode_note("63, 2.4", encoding="hashed-words")[1] is False  # numbers alone are no text
    assert encode_note("63, 2.4", encoding="hashed-terms")[1] is True


def test_a_bundle_without_a_note_encoding_keeps_the_terms_its_heads_learned() -> None:
    assert note_encoding_of({}) == UNNAMED_NOTE_ENCODING == "hashed-terms"
    assert note_encoding_of({"note_encoding": "hashed-words"}) == "hashed-words"
    with pytest.raises(ClinicalFeatureError, match="'note_encoding' must be one of .* got 'bert'"):
        note_encoding_of({"note_encoding": "bert"})


def _batch() -> tuple[torch.Tensor, ...]:
    clinical_present = torch.tensor([[1.0] * 4, [0.0] * 4, [1.0, 0.0, 0.0, 0.0]])
    return torch.randn(3, 5), torch.randn(3, 4), clinical_present, torch.randn(3, 8), torch.tensor([1.0, 1.0, 0.0])


@pytest.mark.parametrize("mode", ["dynamic", "concat", "image_only"])
def test_modality_weights_cover_only_available_modalities(mode: str) -> None:
    out = FusionHead(5, 4, 8, mode=mode)(*_batch())
    weights = out.weights.detach()
    assert torch.allclose(weights.sum(dim=1), torch.ones(3))
    assert weights[1, 1] == 0.0 and weights[2, 2] == 0.0  # no clinical in case 1, no text in case 2
    assert torch.isfinite(out.logit).all() and torch.isfinite(out.log_var).all()
    if mode == "image_only":
        assert torch.equal(weights[:, 0], torch.ones(3))
    assert set(modality_weight_dict(weights[0].tolist())) == {"image", "clinical", "text"}


def test_values_of_missing_inputs_do_not_change_the_output() -> None:
    head = FusionHead(5, 4, 8).eval()
    image, clinical, present, text, text_present = _batch()
    before = head(image, clinical, present, text, text_present).logit
    other_clinical = clinical.clone()
    other_clinical[1] = 50.0  # case 1 has no clinical data at all
    other_clinical[2, 1:] = -50.0  # case 2 has only its first feature
    other_text = text.clone()
    other_text[2] = 9.0  # case 2 has no note
    after = head(image, other_clinical, present, other_text, text_present).logit
    assert torch.allclose(before[1:], after[1:])
    changed = head(image, clinical + 1.0, present, text, text_present).logit
    assert not torch.isclose(before[0], changed[0])  # present values do matter


def test_unknown_mode_is_rejected_with_the_choices() -> None:
    with pytest.raises(AiEngineError, match="dynamic"):
        FusionHead(5, 4, 8, mode="attention")


def test_modality_dropout_only_removes_inputs() -> None:
    present = torch.ones(200, 6)
    text = torch.ones(200)
    new_present, new_text = modality_dropout(present, text, generator=torch.Generator().manual_seed(0))
    assert (new_present <= present).all() and (new_text <= text).all()
    assert 0.05 < 1 - new_text.mean() < 0.5 and 0.1 < 1 - new_present.mean() < 0.7
    absent, _ = modality_dropout(torch.zeros(5, 6), torch.zeros(5))
    assert not absent.any()


def test_training_loop_learns_a_clinical_signal_with_dropout_and_uncertainty() -> None:
    generator = torch.Generator().manual_seed(0)
    n = 256
    clinical = torch.randn(n, 4, generator=generator)
    image = torch.randn(n, 5, generator=generator)
    label = ((clinical[:, 0] + image[:, 0]) > 0).float()
    present, text, note = torch.ones(n, 4), torch.zeros(n), torch.zeros(n, 8)
    head = FusionHead(5, 4, 8)

    def step(model: torch.nn.Module, _: object) -> torch.Tensor:
        p, t = modality_dropout(present, text, generator=generator)
        return fusion_loss(model(image, clinical, p, note, t), label)

    def validate(model: torch.nn.Module) -> float:
        logit = model(image, clinical, present, note, text).logit
        return float(((logit > 0).float() == label).float().mean())

    history = fit(head, batches=lambda epoch: [None] * 4, step=step, validate=validate,
                  config=TrainConfig(epochs=40, lr=1e-2, patience=40, progress=False))
    assert history.best_score > 0.9 and history.losses[-1] < history.losses[0]
    image_only = head(image, clinical, torch.zeros(n, 4), note, text)
    full = head(image, clinical, present, note, text)
    assert float(image_only.log_var.detach().mean()) > float(full.log_var.detach().mean())  # less sure without the clinical half


def test_temperature_scaling_softens_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    logits = (labels * 2 - 1) * 1.0 + rng.normal(0, 1.0, 400)
    scaler = TemperatureScaler().fit(logits * 5, labels)
    assert 2.0 < scaler.temperature < 3.0  # the Bayes-optimal logit here is 2x, i.e. a temperature of 2.5
    with pytest.raises(AiEngineError, match="both classes"):
        TemperatureScaler().fit(logits, np.ones(400))


def test_dynamic_gate_zeroes_missing_modalities_and_starts_as_concatenation() -> None:
    dynamic, concat = FusionHead(5, 4, 8, mode="dynamic").eval(), FusionHead(5, 4, 8, mode="concat").eval()
    concat.load_state_dict(dynamic.state_dict())  # same projectors and classifier; concat ignores the gate
    batch = _batch()
    out = dynamic(*batch)
    assert out.weights[1, 1] == 0.0 and out.weights[2, 2] == 0.0  # exactly 0, not just small
    assert torch.allclose(out.weights.sum(dim=1), torch.ones(3))
    # the gate starts uniform over the available modalities: weight / largest weight = 1, i.e. plain concatenation
    assert torch.allclose(out.logit, concat(*batch).logit) and torch.allclose(out.log_var, concat(*batch).log_var)
    with torch.no_grad():
        dynamic.gate[-1].bias.copy_(torch.tensor([2.0, 0.0, -2.0]))
    moved = dynamic(*batch)
    assert not torch.allclose(moved.logit, out.logit)  # the gate's weights scale the projections
    assert torch.equal(moved.weights[:, 0] > moved.weights[:, 2], torch.ones(3, dtype=torch.bool))
    assert moved.weights[1, 1] == 0.0 and torch.allclose(moved.weights.sum(dim=1), torch.ones(3))


def test_shared_fusion_fit_trains_every_mode_and_calibrates_on_tiny_data() -> None:
    from ai_engine.fusion import MODES
    from ai_engine.training.fusion_fit import FusionData, fit_heads, fusion_experiment

    rng = np.random.default_rng(0)
    n = 80
    clinical, image = rng.normal(size=(n, 4)), rng.normal(size=(n, 5))
    label = ((clinical[:, 0] + image[:, 0]) > 0).astype(float)
    data = FusionData(image, clinical, np.ones((n, 4)), np.zeros((n, 8)), np.zeros(n), label)
    heads, calibration, summary = fit_heads(data.take(np.arange(60)), data.take(np.arange(60, n)), seed=0,
                                            quick=True, specificity=0.9)
    assert set(heads) == set(MODES) and calibration.temperature > 0 and 0.0 <= calibration.threshold <= 1.0
    assert heads["dynamic"].gate[-1].weight.abs().sum() > 0  # trained away from its zero start
    table = fusion_experiment(heads, data, seed=0)
    assert table["image_only"]["auc_drop_points"] == 0.0  # hiding clinical inputs cannot move the image-only head
    assert summary["calibration_rows"] == 20 and "dynamic" in summary["calibration_split"]
    hidden = data.with_clinical_hidden(0.3, seed=0)
    assert (hidden.clinical_present <= data.clinical_present).all() and 0.2 < 1 - hidden.clinical_present.mean() < 0.4


def test_head_refit_bumps_the_minor_version_and_records_the_unchanged_network(tmp_path: Path) -> None:
    from ai_engine.bundle import load_bundle
    from ai_engine.training.fusion_fit import Calibration, write_refit_configs

    shutil.copytree(load_bundle("ich_fusion").root, tmp_path / "ich_fusion")
    bundle = load_bundle("ich_fusion", tmp_path)
    major, minor, _ = (int(p) for p in bundle.version.split("."))
    version = write_refit_configs(bundle, Calibration(1.5, 0.4), {"seed": 0}, threshold_key="case_threshold",
                                  command="radfusion train ich --fusion-only", note_encoding="hashed-words")
    refit = load_bundle("ich_fusion", tmp_path)
    assert version == refit.version == f"{major}.{minor + 1}.0"
    assert refit.inference["temperature"] == 1.5 and refit.inference["case_threshold"] == 0.4
    assert refit.inference["note_encoding"] == "hashed-words"
    assert f"unchanged from version {bundle.version}" in refit.metadata["fusion_refit"]["image_network"]


def test_fusion_only_refuses_options_it_would_ignore() -> None:
    from ai_engine.training.cli import main

    with pytest.raises(AiEngineError, match="--epochs"):
        main(["train", "ich", "--fusion-only", "--epochs", "3"])
    with pytest.raises(AiEngineError, match="--fusion-only"):
        main(["train", "ich", "--bundle", "ich_fusion"])


def test_density_only_is_a_mammography_refit_and_excludes_the_head_refit() -> None:
    from ai_engine.training.cli import main

    with pytest.raises(AiEngineError, match="no density model"):
        main(["train", "ich", "--density-only"])
    with pytest.raises(AiEngineError, match="choose one"):
        main(["train", "mammo", "--density-only", "--fusion-only"])
    with pytest.raises(AiEngineError, match="--out-dir"):
        main(["train", "mammo", "--density-only", "--out-dir", "x"])
