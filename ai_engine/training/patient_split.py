"""Splits of a dataset's cases that keep each patient's cases together (a patient scanned twice must not train the
network in one split and calibrate or validate it in another)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def split_by_patient(split_patients: Callable[[np.ndarray], dict[str, np.ndarray]], labels: np.ndarray,
                     patients: Sequence[str]) -> dict[str, np.ndarray]:
    """Case indices per split: ``split_patients`` splits the patients, given each one's label (1 when any of
    their cases is 1), and every case goes where its patient went."""
    names, patient_of_case = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    patient_labels = np.zeros(len(names), dtype=np.asarray(labels).dtype)
    np.maximum.at(patient_labels, patient_of_case, np.asarray(labels))
    return {name: np.flatnonzero(np.isin(patient_of_case, members))
            for name, members in split_patients(patient_labels).items()}
