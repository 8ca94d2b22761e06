"""SR TID 1500: valid per dciodvfy and dsrdump, in the source study, cites SEG segments."""

from __future__ import annotations

import copy
import subprocess
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from ai_engine.results import DetectorResult, Finding, FindingType, Task
from reports.errors import ReportsError
from reports.seg import build_seg
from reports.sources import COPIED_TYPE2
from reports.sr import SrReference, build_sr
from reports.writer import save_dataset
from tests.peers import dciodvfy_errors, require_tool
from tests.unit.reports.report_checks import (
    PATIENT_AND_STUDY,
    algorithm_equipment,
    box_mask,
    ich_result,
    mammo_result,
    named,
)


def _saved(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    """Write, check with dciodvfy and dsrdump, read back."""
    save_dataset(ds, path)
    assert dciodvfy_errors(path) == []
    dump = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, errors="replace",
                          timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout
    return pydicom.dcmread(path)


def _text_values(sr: pydicom.Dataset, meaning: str) -> list[str]:
    return [str(item.TextValue) for item in named(sr, meaning) if item.ValueType == "TEXT"]


@pytest.mark.parametrize(("charset", "written"), [
    (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),  # the standard Japanese form
    ("ISO 2022 IR 100", "ISO_IR 100"),
    ("ISO 2022 IR 6", None),  # the default repertoire; before: rewritten to ISO_IR 6, which is no term
    (["", "ISO 2022 IR 149"], "ISO_IR 192")])  # Korean, which highdicom refuses: the text goes out as UTF-8
def test_a_sender_s_character_set_and_dashed_dates_do_not_stop_the_results(head_ct, algorithm, tmp_path,
                                                                          charset, written):
    sources = [copy.deepcopy(ds) for ds in head_ct]
    for index, ds in enumerate(sources):
        ds.SpecificCharacterSet, ds.PatientBirthDate, ds.StudyDate = charset, "1945-03-17", "2024.01.15"
        if "ISO 2022 IR 149" in charset:  # a Korean name, read back from the bytes a modality would send
            ds.PatientName = "Hong^Gildong=洪^吉洞=홍^길동"
            ds.save_as(tmp_path / f"{index}.dcm", enforce_file_format=True)
            sources[index] = pydicom.dcmread(tmp_path / f"{index}.dcm")
    result = ich_result(algorithm, sources)
    segs = build_seg(sources, result, series_number=901)
    sr = _saved(build_sr(sources, result, series_number=902, segmentations=segs), tmp_path / "sr.dcm")
    assert (sr.get("SpecificCharacterSet"), sr.PatientBirthDate, sr.StudyDate) == (written, "19450317", "20240115")
    assert str(sr.PatientName) == str(sources[0].PatientName)
    assert segs[0].get("SpecificCharacterSet") == written and head_ct[0].PatientBirthDate != "1945-03-17"


@pytest.mark.parametrize(("keyword", "sent", "written"), [
    ("SpecificCharacterSet", "", None),  # present but empty: the default repertoire, written as no such attribute
    ("PatientBirthDate", "00000000", ""), ("PatientBirthDate", "19450230", ""), ("StudyDate", "20241301", ""),
    ("StudyTime", "10:30:00", "103000"), ("StudyTime", "2500", "")])
def test_impossible_dates_acr_nema_times_and_an_empty_character_set_do_not_stop_the_results(
        head_ct, algorithm, tmp_path, keyword, sent, written) -> None:
    """Ingest accepts these headers, but highdicom raised ValueError on them: the job failed after detection and
    no SR or SEG reached the PACS, even for a negative study. Dates and times are Type 2, so an impossible one is
    written empty."""
    sources = [copy.deepcopy(ds) for ds in head_ct]
    for ds in sources:
        setattr(ds, keyword, sent)
    result = ich_result(algorithm, sources)
    segs = build_seg(sources, result, series_number=901)
    save_dataset(segs[0], tmp_path / "seg.dcm")
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    sr = _saved(build_sr(sources, result, series_number=902, segmentations=segs), tmp_path / "sr.dcm")
    negative = build_sr(sources, replace(result, findings=[], positive=False), series_number=903)
    for made in (sr, segs[0], negative):
        assert made.get(keyword) == written, made.Modality


_JAPANESE = ["", "ISO 2022 IR 87"]


@pytest.mark.parametrize(("charset", "name", "text", "written"), [
    (None, "Mueller^Hans", "Ungültiger Suchparameter 'code'", "ISO_IR 192"),
    ("ISO_IR 100", "Müller^Hans", "患者が見つかりません", "ISO_IR 192"),
    (_JAPANESE, "Yamada^Tarou=山田^太郎=やまだ^たろう", "Ungültiger Suchparameter 'code'", "ISO_IR 192"),
    ("ISO_IR 100", "Müller^Hans", "Ungültiger Suchparameter 'code'", "ISO_IR 100"),
    (_JAPANESE, "Yamada^Tarou=山田^太郎=やまだ^たろう", "患者が見つかりません", ["ISO 2022 IR 6", "ISO 2022 IR 87"])])
def test_text_the_source_s_character_set_cannot_hold_is_written_in_utf_8(head_ct, algorithm, tmp_path, charset, name,
                                                                        text, written) -> None:
    """The SR's text (an EMR's error text in the clinical summary, a detector's note) was written in the source's
    character set: without one, raw Latin-1 bytes (dciodvfy: invalid for the VR); else '?' in place of each
    character, or undeclared bytes between ISO 2022 escapes."""
    sources = []
    for index, ds in enumerate(copy.deepcopy(ds) for ds in head_ct):
        del ds.SpecificCharacterSet
        if charset is not None:
            ds.SpecificCharacterSet = charset
        ds.PatientName = name  # read back from the bytes a modality would send
        ds.save_as(tmp_path / f"{index}.dcm", enforce_file_format=True)
        sources.append(pydicom.dcmread(tmp_path / f"{index}.dcm"))
    result = replace(ich_result(algorithm, sources), notes=[f"note: {text}"])
    summary = {"Clinical data": f"not used (labs: FHIR GET answered 400: {text})"}
    sr = _saved(build_sr(sources, result, series_number=902, clinical_summary=summary), tmp_path / "sr.dcm")
    assert sr.get("SpecificCharacterSet") == written
    assert str(sr.PatientName) == name
    assert _text_values(sr, "Clinical Information") == [f"Clinical data: {summary['Clinical data']}"]
    assert f"note: {text}" in _text_values(sr, "Comment")


def test_a_source_without_the_type_2_patient_and_study_attributes_still_gets_its_results(head_ct, algorithm,
                                                                                          tmp_path):
    """A CT without Patient's Sex (or Patient ID, Accession Number, Study Date ...): each is Type 2, so the SR and
    SEG carry it empty instead of failing the job."""
    sources = [copy.deepcopy(ds) for ds in head_ct]
    for ds in sources:
        for keyword in COPIED_TYPE2:
            delattr(ds, keyword)
    result = ich_result(algorithm, sources)
    segs = build_seg(sources, result, series_number=901)
    save_dataset(segs[0], tmp_path / "seg.dcm")
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    sr = _saved(build_sr(sources, result, series_number=902, segmentations=segs), tmp_path / "sr.dcm")
    for made in (sr, segs[0]):
        assert all(made[keyword].value in ("", None) for keyword in COPIED_TYPE2)
    assert "PatientSex" not in sources[0]  # the caller's headers are left as they came


def test_a_patient_s_sex_dicom_does_not_know_is_carried_empty(head_ct, algorithm, tmp_path) -> None:
    """'U' (common in the wild, not a DICOM value): before, highdicom refused it and the study got no SR or SEG at
    all, and its value went into the job's stored error."""
    sources = [copy.deepcopy(ds) for ds in head_ct]
    for ds in sources:
        ds.PatientSex = "U"
    result = ich_result(algorithm, sources)
    segs = build_seg(sources, result, series_number=901)
    sr = _saved(build_sr(sources, result, series_number=902, segmentations=segs), tmp_path / "sr.dcm")
    assert sr.PatientSex == "" and segs[0].PatientSex == "" and dciodvfy_errors(tmp_path / "sr.dcm") == []


def test_a_ct_without_slice_thickness_is_refused_by_name(head_ct, algorithm) -> None:
    """Before: highdicom's AttributeError, which named neither the attribute's rule nor the image."""
    sources = [copy.deepcopy(ds) for ds in head_ct]
    del sources[3].SliceThickness
    with pytest.raises(ReportsError, match=rf"source image {sources[3].SOPInstanceUID} has no Slice Thickness"):
        build_seg(sources, ich_result(algorithm, sources), series_number=901)


def test_ich_sr_is_in_the_source_study_and_cites_the_seg_segments(head_ct, algorithm, tmp_path):
    result = ich_result(algorithm, head_ct)
    segs = build_seg(head_ct, result, series_number=901)
    sr = _saved(build_sr(head_ct, result, series_number=902, segmentations=segs), tmp_path / "sr.dcm")

    for keyword in PATIENT_AND_STUDY:
        assert sr.get(keyword) == head_ct[0].get(keyword), keyword
    assert sr.SeriesInstanceUID != head_ct[0].SeriesInstanceUID
    [procedure] = named(sr, "Procedure reported")
    assert procedure.ConceptCodeSequence[0].CodeValue == "303653007"

    groups = named(sr, "Measurement Group")
    assert len(groups) == 2
    segment_refs = named(sr, "Referenced Segment")
    cited = [(r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
              int(r.ReferencedSOPSequence[0].ReferencedSegmentNumber)) for r in segment_refs]
    assert cited == [(segs[0].SOPInstanceUID, 1), (segs[0].SOPInstanceUID, 2)]
    seg_tracking = [str(s.TrackingUID) for s in segs[0].SegmentSequence]
    assert [str(i.UID) for i in named(sr, "Tracking Unique Identifier")] == seg_tracking
    # the first finding spans slices 3..5: those are the source images cited for its segment
    sources = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
               for i in named(groups[0], "Source Image for Segmentation")]
    assert sources == [head_ct[z].SOPInstanceUID for z in (3, 4, 5)]

    volumes = [(float(i.MeasuredValueSequence[0].NumericValue),
                i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue) for i in named(sr, "Volume")]
    assert volumes == [(1.2, "ml"), (0.4, "ml")]
    assert [float(i.MeasuredValueSequence[0].NumericValue) for i in named(sr, "Probability")] == [0.93, 0.71]
    assert [i.ConceptCodeSequence[0].CodeMeaning for i in named(sr, "Finding")] == ["Hemorrhage", "Hemorrhage"]
    assert _text_values(sr, "Finding Site") == ["left frontal", "right occipital"]
    sites = [i for i in named(sr, "Finding Site") if i.ValueType == "CODE"]  # the coded site carries the side
    assert [(site.ConceptCodeSequence[0].CodeMeaning, [(side.ConceptCodeSequence[0].CodingSchemeDesignator,
                                                        side.ConceptCodeSequence[0].CodeValue)
                                                       for side in named(site, "Laterality")]) for site in sites] == [
        ("Intracranial structure", [("SCT", "7771000")]), ("Intracranial structure", [("SCT", "24028007")])]
    assert "subtype: subdural" in _text_values(sr, "Comment")
    [verdict] = named(sr, "Intracranial hemorrhage")
    assert verdict.ConceptCodeSequence[0].CodeMeaning == "Present"
    evidence = {i.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence}
    assert segs[0].SOPInstanceUID in evidence


def test_sr_identifies_the_algorithm_and_says_it_is_ai_not_for_clinical_use(head_ct, algorithm, tmp_path):
    result = ich_result(algorithm, head_ct)
    sr = _saved(build_sr(head_ct, result, series_number=902), tmp_path / "sr.dcm")

    assert "NOT FOR CLINICAL USE" in sr.SeriesDescription
    assert len(sr.SeriesDescription) <= 64
    [equipment] = algorithm_equipment(sr)
    assert (equipment.DeviceUID, equipment.ManufacturerModelName, equipment.SoftwareVersions) == (
        algorithm.device_uid, algorithm.name, algorithm.version)
    [observer] = named(sr, "Device Observer UID")
    assert observer.UID == algorithm.device_uid
    assert _text_values(sr, "Algorithm Name") == [algorithm.name] * 2
    assert "kind: classical baseline" in _text_values(sr, "Algorithm Parameters")
    [statement] = [t for t in _text_values(sr, "Comment") if "not for clinical use" in t]
    assert "classical baseline" in statement and "radiologist" in statement


def test_long_model_names_keep_the_series_description_within_64_characters(head_ct, algorithm, tmp_path):
    long_named = replace(algorithm, name="x" * 60)
    empty = DetectorResult(Task.ICH, long_named, [], case_score=0.0, positive=False)
    sr = _saved(build_sr(head_ct, empty, series_number=902), tmp_path / "sr.dcm")
    assert sr.SeriesDescription.startswith("AI RESULT - NOT FOR CLINICAL USE - xxx")
    assert len(sr.SeriesDescription) == 64


def test_model_name_dicom_cannot_carry_is_refused(head_ct, algorithm):
    too_long = DetectorResult(Task.ICH, replace(algorithm, name="x" * 65), [], case_score=0.0, positive=False)
    with pytest.raises(ReportsError, match="algorithm name must be 1..64 characters"):
        build_sr(head_ct, too_long, series_number=902)


def test_empty_result_gives_a_valid_no_findings_report(head_ct, algorithm, tmp_path):
    empty = DetectorResult(Task.ICH, algorithm, [], case_score=0.02, positive=False)
    sr = _saved(build_sr(head_ct, empty, series_number=902), tmp_path / "sr.dcm")

    assert named(sr, "Measurement Group") == []
    assert named(sr, "Imaging Measurements") == []
    assert "No findings." in _text_values(sr, "Comment")
    [verdict] = named(sr, "Intracranial hemorrhage")
    assert verdict.ConceptCodeSequence[0].CodeMeaning == "Absent"


def test_reissued_result_names_its_predecessor_and_clinical_inputs(head_ct, algorithm, tmp_path):
    result = ich_result(algorithm, head_ct)
    first = build_sr(head_ct, result, series_number=902)
    second = _saved(build_sr(head_ct, result, series_number=902, instance_number=2,
                             predecessors=[SrReference.from_dataset(first)],
                             clinical_summary={"INR": "2.9 (2026-11-20)", "Anticoagulant": "warfarin"}),
                    tmp_path / "sr.dcm")

    [study] = second.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == first.StudyInstanceUID
    [series] = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert _text_values(second, "Clinical Information") == ["INR: 2.9 (2026-11-20)", "Anticoagulant: warfarin"]


def test_a_reference_to_an_sr_knows_the_source_images_it_read_and_not_its_segs(head_ct, algorithm):
    result = ich_result(algorithm, head_ct)
    segs = build_seg(head_ct, result, series_number=901)
    reference = SrReference.from_dataset(build_sr(head_ct, result, series_number=902, segmentations=segs))
    assert reference.source_instance_uids == {str(ds.SOPInstanceUID) for ds in head_ct}


def test_nodules_without_masks_are_located_by_points(chest_ct, algorithm, tmp_path):
    findings = [
        Finding(FindingType.NODULE, 0.77, (6.0, 40.0, 50.0), "right upper lobe", diameter_mm=7.5,
                center_mm=(-30.0, -45.0, float(chest_ct[6].ImagePositionPatient[2]))),
        Finding(FindingType.NODULE, 0.55, (2.0, 90.0, 70.0), "left lower lobe", diameter_mm=4.0),
    ]
    result = DetectorResult(Task.LUNG_NODULE, algorithm, findings, case_score=0.77, positive=True)
    sr = _saved(build_sr(chest_ct, result, series_number=902), tmp_path / "sr.dcm")

    [point3d, point2d] = named(sr, "Image Region")
    assert (point3d.ValueType, point3d.GraphicType) == ("SCOORD3D", "POINT")
    assert [float(v) for v in point3d.GraphicData] == list(findings[0].center_mm)
    assert point3d.ReferencedFrameOfReferenceUID == chest_ct[0].FrameOfReferenceUID
    assert (point2d.ValueType, point2d.GraphicType) == ("SCOORD", "POINT")
    assert [float(v) for v in point2d.GraphicData] == [70.5, 90.5]
    [source] = point2d.ContentSequence
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == chest_ct[2].SOPInstanceUID
    assert [float(i.MeasuredValueSequence[0].NumericValue) for i in named(sr, "Diameter")] == [7.5, 4.0]
    [procedure] = named(sr, "Procedure reported")
    assert procedure.ConceptCodeSequence[0].CodeMeaning == "CT of chest"


def test_nodule_with_mask_cites_its_segment(chest_ct, algorithm, tmp_path):
    shape = (len(chest_ct), chest_ct[0].Rows, chest_ct[0].Columns)
    nodule = Finding(FindingType.NODULE, 0.8, (5.0, 60.0, 60.0), "right middle lobe", volume_ml=0.05,
                     diameter_mm=6.0, mask=box_mask(shape, slice(5, 7), slice(58, 63), slice(58, 63)))
    result = DetectorResult(Task.LUNG_NODULE, algorithm, [nodule], case_score=0.8, positive=True)
    segs = build_seg(chest_ct, result, series_number=901)
    save_dataset(segs[0], tmp_path / "seg.dcm")
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    sr = _saved(build_sr(chest_ct, result, series_number=902, segmentations=segs), tmp_path / "sr.dcm")

    [reference] = named(sr, "Referenced Segment")
    assert reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == segs[0].SOPInstanceUID


def test_mammo_findings_cite_the_seg_frame_on_their_view(mammo_views, algorithm, tmp_path):
    result = mammo_result(algorithm, mammo_views)
    segs = build_seg(mammo_views, result, series_number=901)
    sr = _saved(build_sr(mammo_views, result, series_number=902, segmentations=segs), tmp_path / "sr.dcm")

    frames = named(sr, "Referenced Segmentation Frame")
    assert [f.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for f in frames] == [s.SOPInstanceUID for s in segs]
    sources = named(sr, "Source Image for Segmentation")
    assert [s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for s in sources] == [
        v.SOPInstanceUID for v in mammo_views]
    assert [i.ConceptCodeSequence[0].CodeMeaning for i in named(sr, "Finding")] == ["Mass", "Calcification Cluster"]
    assert named(sr, "Laterality") == []  # a finding without a side gets none


def test_masked_finding_missing_from_the_given_segs_is_an_error(head_ct, algorithm):
    result = ich_result(algorithm, head_ct)
    only_first = DetectorResult(result.task, algorithm, result.findings[:1], result.case_score, result.positive)
    segs = build_seg(head_ct, only_first, series_number=901)
    with pytest.raises(ReportsError, match=r"finding 1: .*'Finding 2 \(hemorrhage\)'"):
        build_sr(head_ct, result, series_number=902, segmentations=segs)


def test_modality_weights_and_detector_measurements_are_shown_per_finding(head_ct, algorithm, tmp_path):
    result = ich_result(algorithm, head_ct)
    result.findings[0].modality_weights = {"image": 0.62, "clinical": 0.3, "text": 0.08}
    result.findings[0].measurements = {"logit_sd": 0.41}
    sr = _saved(build_sr(head_ct, result, series_number=902), tmp_path / "sr.dcm")

    weights = {meaning: float(named(sr, meaning)[0].MeasuredValueSequence[0].NumericValue) for meaning in
               ("Fusion weight of the image", "Fusion weight of the clinical record", "Fusion weight of the clinical note")}
    assert weights == {"Fusion weight of the image": 0.62, "Fusion weight of the clinical record": 0.3,
                       "Fusion weight of the clinical note": 0.08}
    assert len(named(sr, "Fusion weight of the image")) == 1  # the second finding came without weights
    assert "logit sd: 0.41" in _text_values(sr, "Comment")


def test_the_detectors_notes_on_the_case_reach_the_radiologist(head_ct, algorithm, tmp_path):
    notes = ["gantry tilt of 12.0 degrees: slices analysed as acquired", "clinical context: not available; image only"]
    result = replace(ich_result(algorithm, head_ct), notes=notes)
    sr = _saved(build_sr(head_ct, result, series_number=902), tmp_path / "sr.dcm")

    comments = _text_values(sr, "Comment")
    assert all(note in comments for note in notes)
