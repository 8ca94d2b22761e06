"""The note vocabulary of a bundle: every term of the notes its heads could learn.

A bundle's heads learned the notes of their training records; ``configs/note_vocabulary.json`` lets serving
leave out every other term and read a note with fewer known terms than any learned note held as no note
(``ai_engine.clinical_features.encode_note``). A bundle trained on a dataset takes the notes of the dataset's
training records (its path is in the bundle's metadata). A synthetic bundle takes every term its task's
cohort generator writes into notes; those records are drawn with the phantom rendering
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
from ai_engine.errors import AiEngineError
from ai_engine.synthetic.chest_ct import ChestPhantom, PlacedNodule
from ai_engine.synthetic.cohorts import ich, mammo, nodule
from ai_engine.synthetic.head_ct import HeadCase
from ai_engine.synthetic.truth import LesionTruth
from ai_engine.training.datasets import cbis_ddsm, ich_cases, lidc_luna

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


def dataset_notes(task: str, data_dir: Path) -> Iterator[str | None]:
    """The note texts (reason for exam and notes) of a dataset's training records, as training reads them."""
    if task == "ich":
        contexts = ich_cases.case_contexts(data_dir)
    elif task == "nodule":
        contexts = [case.context for case in lidc_luna.read_dataset(data_dir)]
    elif task == "mammo":
        clinical = cbis_ddsm.read_clinical(data_dir)
        patients = dict.fromkeys(row.patient_id for row in cbis_ddsm.read_abnormalities(data_dir, "train"))
        contexts = [clinical.get(patient) for patient in patients]  # the tables only: no image file is opened
    else:
        raise ValueError(f"unknown task {task!r}")
    return (context_text(context) for context in contexts)


def write_vocabulary(task: str, root: Path, patients: int = PATIENTS) -> NoteVocabulary:
    """Write the note vocabulary of the bundle at ``root``: from its dataset's training notes when it was trained
    on one (the dataset must still be where its metadata says), else from ``patients`` records of the generator."""
    bundle = load_bundle(root.name, root.parent)
    encoding = note_encoding_of(bundle.inference)
    if trained_on_dataset(bundle.metadata):
        data_dir = Path(bundle.metadata["training_data"]["path"])
        if not data_dir.is_dir():
            raise AiEngineError(f"{root} was trained on {data_dir}, which is no longer there: its note vocabulary "
                                "is written from that dataset's notes")
        notes = dataset_notes(task, data_dir)
    else:
        notes = synthetic_notes(task, patients)
    return write_note_vocabulary(root, encoding, (note_terms(text, encoding) for text in notes))
