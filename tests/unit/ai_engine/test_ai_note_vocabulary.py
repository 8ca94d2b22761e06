"""Note vocabularies: the packaged heads read the notes they learned exactly as before, and nothing else."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ai_engine.bundle import BundleError, load_bundle, write_note_vocabulary
from ai_engine.clinical_features import encode_note, note_encoding_of
from ai_engine.detectors import ich_fusion
from ai_engine.training.cli import main as train_main
from ai_engine.training.note_vocabulary import synthetic_notes
from hl7_fhir.context import ClinicalContext

TASKS = {"ich": "ich_fusion", "nodule": "nodule_fusion", "mammo": "mammo_fusion"}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_generators_notes_encode_as_without_a_vocabulary(task: str) -> None:
    """Notes of other patients than the vocabulary's (held-out seeds): identical encodings, so no metric moves."""
    bundle = load_bundle(TASKS[task])
    encoding = note_encoding_of(bundle.inference)
    assert bundle.note_vocabulary is not None
    for text in synthetic_notes(task, 300, first_seed=7 * 100_000):
        with_vocabulary = encode_note(text, encoding=encoding, vocabulary=bundle.note_vocabulary)
        without = encode_note(text, encoding=encoding)
        assert with_vocabulary[1] == without[1] and np.array_equal(with_vocabulary[0], without[0]), text


@pytest.mark.parametrize("note", ["dizziness", "routine follow-up", "known migraine, normal neuro exam"])
def test_a_note_the_heads_never_learned_is_no_note(note: str) -> None:
    bundle = load_bundle("ich_fusion")
    assert encode_note(note, encoding="hashed-terms", vocabulary=bundle.note_vocabulary)[1] is False
    detector = ich_fusion.IchFusion(bundle)
    features = np.zeros(len(ich_fusion.IMAGE_FEATURES), dtype=np.float32)  # an image without any blood
    plain = detector.fusion_stage(features, ClinicalContext(status="complete", notes=["qwerty"]))  # trauma: 0
    noted = detector.fusion_stage(features, ClinicalContext(status="complete", notes=[note]))
    assert noted.probability == plain.probability
    unguarded = ich_fusion.IchFusion(replace(bundle, note_vocabulary=None))  # before: 'dizziness' swung it
    swung = unguarded.fusion_stage(features, ClinicalContext(status="complete", notes=[note])).probability
    assert swung != plain.probability


def test_a_vocabulary_that_does_not_fit_the_bundle_is_refused_and_the_device_uid_follows_it(tmp_path: Path) -> None:
    copy = tmp_path / "ich_fusion"
    shutil.copytree(load_bundle("ich_fusion").root, copy)
    vocabulary = copy / "configs" / "note_vocabulary.json"
    data = json.loads(vocabulary.read_text())
    first = load_bundle(copy.name, tmp_path).device_uid
    vocabulary.write_text(json.dumps({**data, "note_encoding": "hashed-words"}))
    with pytest.raises(BundleError, match="needs 'note_encoding' 'hashed-terms'"):
        load_bundle(copy.name, tmp_path)
    vocabulary.write_text(json.dumps({**data, "terms": data["terms"][:-1]}))
    assert load_bundle(copy.name, tmp_path).device_uid != first
    vocabulary.unlink()
    assert train_main(["train", "ich", "--note-vocabulary-only", "--bundle", str(copy)]) == 0
    assert json.loads(vocabulary.read_text()) == data  # the generator's vocabulary, written again


def test_heads_that_learned_no_note_read_every_note_as_none(tmp_path: Path) -> None:
    """A dataset without notes: the vocabulary is empty and every note at serving is no note, as in training."""
    copy = tmp_path / "ich_fusion"
    shutil.copytree(load_bundle("ich_fusion").root, copy)
    vocabulary = write_note_vocabulary(copy, "hashed-terms", [[], []])
    assert (vocabulary.terms, vocabulary.min_terms) == (frozenset(), 1)
    assert load_bundle(copy.name, tmp_path).note_vocabulary == vocabulary
    assert encode_note("found on the floor after a fall", encoding="hashed-terms", vocabulary=vocabulary)[1] is False
