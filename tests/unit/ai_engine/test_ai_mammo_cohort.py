"""The synthetic mammography cohort: four views as DICOM, lesions in both views, density, clinical context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ai_engine.clinical_features import encode_clinical, feature_names
from ai_engine.errors import VolumeError
from ai_engine.inputs import load_inputs
from ai_engine.mammo import FOR_PROCESSING_SOP_CLASS, load_views
from ai_engine.results import Task
from ai_engine.synthetic.cohorts.mammo import HELDOUT_ACQUISITION, generate_case, write_case_dicom
from ai_engine.synthetic.mammo_phantom import Acquisition, BreastSpec, PlacedLesion, render_breast
from tests.peers import dciodvfy_errors


def _first_case(cancer: bool, kind: str | None = None) -> int:
    for seed in range(200):
        case = generate_case(seed, Acquisition(pixel_spacing_mm=0.8))
        if case.cancer == cancer and (kind is None or any(t.kind == kind for t in case.lesions)):
            return seed
    raise AssertionError("no such case in the first 200 seeds")


def test_four_views_round_trip_through_dicom_in_loader_order(tmp_path: Path) -> None:
    case = generate_case(_first_case(True), Acquisition(pixel_spacing_mm=0.8))
    views, skipped = load_views(write_case_dicom(case, tmp_path))
    assert [(v.laterality, v.view) for v in views] == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    assert skipped == []
    assert views[0].pixel_spacing_mm == (0.8, 0.8)
    np.testing.assert_allclose(views[1].array, np.rint(case.views()[1][2]))


def test_loader_keeps_the_last_retake_and_skips_raw_and_spot_images(tmp_path: Path) -> None:
    paths = write_case_dicom(generate_case(_first_case(False), Acquisition(pixel_spacing_mm=0.8)), tmp_path)
    extras = []
    for name, change in (("retake", {"InstanceNumber": 9}),
                         ("raw", {"SOPClassUID": FOR_PROCESSING_SOP_CLASS, "PresentationIntentType": "FOR PROCESSING"}),
                         ("spot", {})):
        ds = pydicom.dcmread(paths[0])
        ds.SOPInstanceUID = generate_uid()
        for keyword, value in change.items():
            setattr(ds, keyword, value)
        if name == "spot":
            modifier = Dataset()
            modifier.CodeValue, modifier.CodingSchemeDesignator, modifier.CodeMeaning = "399163009", "SCT", "Spot"
            ds.ViewCodeSequence[0].ViewModifierCodeSequence = [modifier]
        ds.save_as(tmp_path / f"{name}.dcm")
        extras.append(ds.SOPInstanceUID)
    views, skipped = load_views([*paths, *(tmp_path / f"{n}.dcm" for n in ("retake", "raw", "spot"))])
    assert [(v.laterality, v.view) for v in views] == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    assert views[0].sop_instance_uid == extras[0]
    assert [s.split(" not read: ")[1] for s in skipped] == [
        "For Processing (raw) data", "a view with a View Modifier (Spot); only standard views are read",
        "L CC is read from image 9 of series 1, acquired later"]  # the retake's first image is named too
    with pytest.raises(VolumeError, match="none of the 1 mammography images is a full-field 2D view.*For Processing"):
        load_views([tmp_path / "raw.dcm"])


def _variants(source: Path, changes: dict[str, dict[str, object]], out: Path) -> None:
    """A copy of ``source`` per entry of ``changes`` (out/<name>.dcm, a new SOP Instance UID), with its attributes."""
    for name, change in changes.items():
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = generate_uid()
        for keyword, value in change.items():
            setattr(ds, keyword, value)
        ds.save_as(out / f"{name}.dcm")


def test_an_image_of_another_kind_in_the_study_is_left_out_not_the_exam(tmp_path: Path) -> None:
    """A tomosynthesis object, a specimen (laterality B), a view the detectors do not know and a magnification view
    without a View Modifier: before, each of them failed the whole exam, or (the last) replaced its CC view."""
    paths = write_case_dicom(generate_case(_first_case(False), Acquisition(pixel_spacing_mm=0.8)), tmp_path)
    changes = {
        "dbt": {"NumberOfFrames": 3},
        "specimen": {"ImageLaterality": "B", "Laterality": ""},
        "xccm": {"ViewPosition": "XCCM", "ViewCodeSequence": []},
        "magnified": {"EstimatedRadiographicMagnificationFactor": 1.8, "InstanceNumber": 99},
    }
    _variants(paths[0], changes, tmp_path)
    views, skipped = load_views([*paths, *(tmp_path / f"{name}.dcm" for name in changes)])
    assert [(v.laterality, v.view) for v in views] == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    assert str(views[0].path) == str(paths[0])  # not the magnification view sent after it
    assert [s.split(" not read: ")[1] for s in skipped] == [
        "a multi-frame image (tomosynthesis or enhanced mammography); only 2D views are read",
        "no laterality of L or R (Image Laterality, Laterality)",
        "a view other than CC, MLO, ML, LM, XCCL",
        "a magnification view (factor 1.8)"]
    assert skipped[0].startswith("image ")  # named by series and instance number, as a viewer shows them
    study = load_inputs(Task.MAMMOGRAPHY, [*paths, *(tmp_path / f"{name}.dcm" for name in changes)])
    assert study.notes == skipped  # the job puts them into the result's notes (the SR's comments)


def test_a_synthesized_2d_view_an_image_of_both_breasts_and_an_implant_are_named(tmp_path: Path) -> None:
    """A single-frame synthesized 2D image (C-View style), sent after the acquired view, replaced it silently; an
    image of both breasts (Image Laterality B) in a series of the left breast was read as the left; an implant,
    which the model never saw, was not mentioned."""
    paths = write_case_dicom(generate_case(_first_case(False), Acquisition(pixel_spacing_mm=0.8)), tmp_path)
    changes = {"cview": {"ImageType": ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D"], "InstanceNumber": 98},
               "cview1": {"ImageType": "GENERATED_2D", "InstanceNumber": 97},  # one value: read as one, not letters
               "both": {"ImageLaterality": "B", "Laterality": "L", "InstanceNumber": 99}}
    _variants(paths[0], changes, tmp_path)
    implant = pydicom.dcmread(paths[1])
    implant.BreastImplantPresent = "YES"
    implant.save_as(paths[1])
    views, skipped = load_views([*paths, *(tmp_path / f"{name}.dcm" for name in changes)])
    assert [str(v.path) for v in views][:2] == [str(paths[0]), str(paths[1])]
    assert [s.split(": ", 1)[1] for s in skipped] == [
        "a synthesized 2D image (Image Type GENERATED_2D or TOMOSYNTHESIS); only acquired 2D views are read",
        "a synthesized 2D image (Image Type GENERATED_2D or TOMOSYNTHESIS); only acquired 2D views are read",
        "no laterality of L or R (Image Laterality, Laterality)",
        "Breast Implant Present is YES; the model learned breasts without implants"]


@pytest.mark.peers
def test_cohort_mammogram_passes_dciodvfy(tmp_path: Path) -> None:
    case = generate_case(1, HELDOUT_ACQUISITION)
    path = write_case_dicom(case, tmp_path)[3]
    assert dciodvfy_errors(path) == []


def test_cancer_appears_in_cc_and_mlo_of_one_breast_at_corresponding_depth() -> None:
    case = generate_case(_first_case(True, "calcification_cluster"), Acquisition(pixel_spacing_mm=0.8))
    clusters = [t for t in case.lesions if t.kind == "calcification_cluster"]
    assert sorted(t.view_index for t in clusters) in ([0, 1], [2, 3])
    side = "L" if clusters[0].view_index == 0 else "R"
    assert side == case.cancer_laterality
    cols = case.views()[clusters[0].view_index][2].shape[1]
    depth = [c.center_voxel[1] if side == "L" else cols - 1 - c.center_voxel[1] for c in clusters]
    assert abs(depth[0] * 1.05 - depth[1]) * 0.8 < 3.0  # MLO depth is 5 % longer, same lesion


def test_negative_case_has_no_cancer_mask() -> None:
    case = generate_case(_first_case(False), Acquisition(pixel_spacing_mm=0.8))
    assert not any(mask.any() for masks in case.cancer_masks() for mask in masks.values())
    assert not any(t.kind in ("mass", "calcification_cluster") for t in case.lesions)


def test_dense_breasts_are_brighter_behind_the_nipple_than_fatty_ones() -> None:
    acquisition = Acquisition(pixel_spacing_mm=0.8, noise_std=0.0)
    centre = {}
    for density in ("A", "D"):
        image = render_breast(np.random.default_rng(3), BreastSpec("L", density), acquisition).images[0]
        rows = image.shape[0] // 2
        centre[density] = float(np.median(image[rows - 30: rows + 30, 25:75]))  # 20-60 mm from the chest wall
    assert centre["D"] > centre["A"] + 150


def test_spiculated_mass_mask_reaches_beyond_its_core() -> None:
    acquisition = Acquisition(pixel_spacing_mm=0.5, noise_std=0.0)
    masses = {}
    for shape in ("round", "spiculated"):
        lesion = PlacedLesion("mass", shape, 0.5, 0.0, 0.0, 12.0, 300.0, detail_seed=4)
        rendered = render_breast(np.random.default_rng(0), BreastSpec("R", "B", (lesion,)), acquisition)
        masses[shape] = rendered.cancer_masks[0]["mass"].sum()
    assert masses["spiculated"] > 1.3 * masses["round"]


def test_clinical_context_carries_the_agreed_features() -> None:
    for seed in range(400):
        case = generate_case(seed, Acquisition(pixel_spacing_mm=0.8))
        if case.risk["brca"] and case.risk["family_history"]:
            break
    values, present = encode_clinical("mammo", case.context)
    named = dict(zip(feature_names("mammo"), values, strict=True))
    assert present.all()
    assert named["brca_carrier"] == 1.0 and named["family_history_breast_cancer"] == 1.0
    assert "BRCA" in case.note or "brca" in case.note.lower()


def test_the_reason_for_exam_is_the_referrers_reason_in_every_phrasing() -> None:
    reasons = {generate_case(seed, Acquisition(pixel_spacing_mm=0.8)).context.reason_for_exam for seed in range(40)}
    assert len(reasons) >= 4
    assert all(("screening" in r or "lump" in r or "mass" in r) and not any(c.isdigit() for c in r) for r in reasons)


def test_heldout_acquisition_shifts_spacing_and_grey_levels() -> None:
    train = generate_case(5, Acquisition(pixel_spacing_mm=0.8))
    shifted = generate_case(5, Acquisition(pixel_spacing_mm=1.0, gain=3.0, bits_stored=14, noise_std=20.0))
    assert shifted.views()[0][2].shape[0] < train.views()[0][2].shape[0]
    assert shifted.views()[0][2].max() > 4095
    assert train.cancer == shifted.cancer and train.density == shifted.density


def test_a_view_position_of_another_vocabulary_falls_back_to_the_view_code(tmp_path: Path) -> None:
    """View Code Sequence is Type 1 in mammography; a View Position such as 'LCC' must not cost the exam."""
    paths = write_case_dicom(generate_case(_first_case(False), Acquisition(pixel_spacing_mm=0.8)), tmp_path)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.ViewPosition = f"{ds.ImageLaterality}{ds.ViewPosition}"
        ds.save_as(path)
    views, skipped = load_views(paths)
    assert [(v.laterality, v.view) for v in views] == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    assert skipped == []
