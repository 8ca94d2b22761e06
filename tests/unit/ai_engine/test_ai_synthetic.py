"""Synthetic phantom studies: real DICOM that dciodvfy accepts, seeded, with usable truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ai_engine.errors import SyntheticError
from ai_engine.synthetic.studies import write_study
from tests.peers import dciodvfy_errors


@pytest.mark.peers
@pytest.mark.parametrize("kind", ["head_ct", "chest_ct", "mammo"])
def test_dciodvfy_reports_no_errors(kind: str, tmp_path: Path) -> None:
    study = write_study(kind, tmp_path, seed=1, rows=64, slices=8)
    for path in study.paths[:2]:
        assert dciodvfy_errors(path) == [], path


def test_same_seed_gives_same_pixels_and_truth(tmp_path: Path) -> None:
    first = write_study("head_ct", tmp_path / "a", seed=5, rows=64, slices=10)
    second = write_study("head_ct", tmp_path / "b", seed=5, rows=64, slices=10)
    assert first.lesions == second.lesions
    a, b = pydicom.dcmread(first.paths[4]), pydicom.dcmread(second.paths[4])
    assert np.array_equal(a.pixel_array, b.pixel_array)
    assert first.study_instance_uid != second.study_instance_uid  # UIDs stay unique per written study


def test_ct_headers_identify_a_synthetic_study(tmp_path: Path) -> None:
    study = write_study("chest_ct", tmp_path, seed=2, rows=64, slices=10, patient_id="P1", accession_number="A1")
    ds = pydicom.dcmread(study.paths[0])
    assert "SYNTHETIC PHANTOM" in ds.SeriesDescription
    assert "SYNTHETIC" in str(ds.PatientName)
    assert (ds.PatientID, ds.AccessionNumber, ds.BodyPartExamined) == ("P1", "A1", "CHEST")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert len(study.paths) == 10 and study.series_instance_uids == [ds.SeriesInstanceUID]


def test_mammo_has_two_views_with_the_mass_in_both(tmp_path: Path) -> None:
    study = write_study("mammo", tmp_path, seed=3, rows=128)
    views = [pydicom.dcmread(p) for p in study.paths]
    assert [v.ViewPosition for v in views] == ["CC", "MLO"]
    assert {v.ImageLaterality for v in views} <= {"L", "R"}
    assert [v.ViewCodeSequence[0].CodeValue for v in views] == ["399162004", "399368009"]
    masses = [t for t in study.lesions if t.kind == "mass"]
    assert sorted(t.view_index for t in masses) == [0, 1]


def test_negative_study_has_no_truth(tmp_path: Path) -> None:
    assert write_study("head_ct", tmp_path, seed=0, lesion=False, rows=64, slices=8).lesions == []


def test_unknown_kind_is_rejected_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(SyntheticError, match="head_ct"):
        write_study("knee_mri", tmp_path)


def test_thick_slice_bleed_labels_stay_off_the_skull() -> None:
    """A 5 mm voxel half blood, half skull reads as bone, so it is not labelled blood (generator 3)."""
    from ai_engine.synthetic.head_ct import HeadAcquisition, HemorrhageSpec, make_head_case

    acquisition = HeadAcquisition(rows=160, slice_mm=5.0, coverage_mm=150.0)
    head = make_head_case(np.random.default_rng(2), acquisition, [HemorrhageSpec("subdural", 25.0, 70.0, -1.0)])
    blood = head.hu[head.labels > 0]
    assert blood.size and np.percentile(blood, 99) < 150.0
