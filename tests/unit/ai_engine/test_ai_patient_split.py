"""Dataset splits keep each patient's cases together: a patient scanned twice trained the network in one split and
calibrated its threshold in another (ICH split by case, nodule by series)."""

from __future__ import annotations

import numpy as np

from ai_engine.training.patient_split import split_by_patient
from ai_engine.training.tasks import ich, nodule


def _patients_per_split(splits: dict[str, np.ndarray], patients: list[str]) -> dict[str, set[str]]:
    return {name: {patients[i] for i in cases} for name, cases in splits.items()}


def test_each_patient_s_cases_land_in_one_split() -> None:
    patients = [f"p{i // 3}" for i in range(60)]  # 20 patients with 3 series each
    labels = np.array([int(i // 3 % 2 == 1) for i in range(60)])
    for seed in range(5):
        for splits in (ich._training_splits(labels, 60, seed, patients),
                       split_by_patient(lambda by_patient: nodule._split(len(by_patient), seed, min_calibration=1),
                                        np.zeros(60, dtype=int), patients)):
            owners = _patients_per_split({k: v for k, v in splits.items() if k != ich.FUSION_EXTRA_SPLIT}, patients)
            assert sum(len(group) for group in owners.values()) == 20  # no patient in two splits
            assert sorted(np.concatenate(list(splits.values()))) == list(range(60))  # every case somewhere


def test_without_patients_each_case_is_a_patient_and_the_split_sizes_stay() -> None:
    labels = np.array([i % 2 for i in range(30)])
    before = ich._training_splits(labels, 30, 3)
    grouped = ich._training_splits(labels, 30, 3, [f"case c{i}" for i in range(30)])
    assert {k: len(v) for k, v in before.items()} == {k: len(v) for k, v in grouped.items()}


def test_a_patient_with_any_positive_case_counts_as_positive_for_the_stratification() -> None:
    labels = np.array([0, 1, 0, 0])
    seen: list[np.ndarray] = []
    split_by_patient(lambda by_patient: seen.append(by_patient) or {"A": np.arange(len(by_patient))}, labels,
                     ["a", "a", "b", "b"])
    assert seen[0].tolist() == [1, 0]


def test_a_nodule_dataset_of_too_few_patients_is_refused(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Three series of one patient put every series in one split: training went on with an empty training split."""
    import pytest

    from ai_engine.errors import AiEngineError
    from ai_engine.training.datasets.lidc_luna import DatasetCase

    cases = [DatasetCase(tmp_path, f"1.2.{i}", tmp_path, (), None, "patient P1") for i in range(3)]
    monkeypatch.setattr(nodule, "read_dataset", lambda root: cases)
    with pytest.raises(AiEngineError, match=r"1 patient\(s\) leave split\(s\) \['A', 'V'\] empty"):
        nodule._train_on_dataset(tmp_path, None, out_dir=tmp_path / "b", epochs=1, seed=0, quick=True,
                                 max_seconds=1.0)
