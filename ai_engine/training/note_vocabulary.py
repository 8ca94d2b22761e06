"""The note vocabulary of a synthetic bundle: every term its task's cohort generator writes into notes.

A bundle's heads learned the generator's notes; ``configs/note_vocabulary.json`` lets serving leave
out every other term and read a note with fewer known terms than any learned note held as no note
(``ai_engine.clinical_features.encode_note``). The records are drawn with the phantom rendering
replaced by an empty image: only the clinical record and its note are wanted, and drawing tens of
thousands of phantoms would take hours. Skipping the rendering moves the random stream, so the
patients are not the training patients, but their notes come from the same templates, and enough of
them cover every term (a test checks the held-out cohorts' notes). Half the patients come from the
training acquisition, half from the held-out one: both are the generator's language.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np

from ai_engine.bundle import load_bundle, trained_on_dataset, write_note_vocabulary
from ai_engine.clinical_features import NoteVocabulary, context_text, note_encoding_of, note_terms
from ai_engine.synthetic.chest_ct import ChestPhantom, PlacedNodule
from ai_engine.synthetic.cohorts import ich, mammo, nodule
from ai_engine.synthetic.head_ct import HeadCase
from ai_engine.synthetic.truth import LesionTruth

PATIENTS = 40_000
FIRST_SEED = 10**9  # far from every cohort's seeds
EMPTY = np.zeros((1, 1, 1))


def _head(rng: object, acquisition: object, specs: list) -> HeadCase:  # noqa: ARG001 - the generator's signature
    return HeadCase(EMPTY, EMPTY, (1.0, 1.0, 1.0),
                    [LesionTruth("hemorrhage", (0, 0, 0), 0, s.volume_ml, s.subtype) for s in specs])


def _chest(rng: object, acquisition: object, specs: list) -> ChestPhantom:  # noqa: ARG001
    return ChestPhantom(EMPTY, (1.0, 1.0, 1.0), [PlacedNodule(s, (0, 0, 0), i + 1, True) for i, s in enumerate(specs)],
                        EMPTY, EMPTY)


def _breast(rng: object, spec: object, acquisition: object) -> types.SimpleNamespace:  # noqa: ARG001
    return types.SimpleNamespace(truths=[], images=[None, None], cancer_masks=[{}, {}])


def synthetic_notes(task: str, patients: int, first_seed: int = FIRST_SEED) -> Iterator[str | None]:
    """The note texts (reason for exam and notes) of ``patients`` drawn records of ``task``, half held-out."""
    half = patients // 2
    seeds = range(first_seed, first_seed + patients)
    if task == "ich":
        with mock.patch.object(ich, "make_head_case", _head):
            for k, seed in enumerate(seeds):
                yield context_text(ich.generate_case(seed, shifted=k >= half).context)
    elif task == "nodule":
        with mock.patch.object(nodule, "make_chest_phantom", _chest):
            for k, seed in enumerate(seeds):
                ranges = nodule.HELDOUT_ACQUISITION if k >= half else nodule.TRAIN_ACQUISITION
                yield context_text(nodule.generate_case(seed, ranges=ranges).context)
    elif task == "mammo":
        with mock.patch.object(mammo, "render_breast", _breast):
            for k, seed in enumerate(seeds):
                acquisition = mammo.HELDOUT_ACQUISITION if k >= half else mammo.TRAIN_ACQUISITION
                yield context_text(mammo.generate_case(seed, acquisition).context)
    else:
        raise ValueError(f"unknown task {task!r}")


def write_synthetic_vocabulary(task: str, root: Path, patients: int = PATIENTS) -> NoteVocabulary | None:
    """Write the bundle at ``root``'s note vocabulary from its task's generator; None (nothing written) for a
    bundle trained on a dataset, whose notes this generator did not write."""
    bundle = load_bundle(root.name, root.parent)
    if trained_on_dataset(bundle.metadata):
        return None
    encoding = note_encoding_of(bundle.inference)
    return write_note_vocabulary(root, encoding, (note_terms(t, encoding) for t in synthetic_notes(task, patients)))
