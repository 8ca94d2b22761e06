"""SEG: valid per dciodvfy, masks round-trip onto the right source frames, AI identified."""

from __future__ import annotations

import copy
import tracemalloc
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ai_engine.results import DetectorResult, Finding, FindingType, Task
from reports.errors import ReportsError
from reports.seg import build_heatmap_seg, build_seg
from reports.sr import build_sr
from reports.writer import save_dataset
from tests.peers import dciodvfy_errors
from tests.unit.reports.conftest import read_sources
from tests.unit.reports.report_checks import algorithm_equipment, ich_result, mammo_result


def _saved(ds: pydicom.Dataset, path: Path) -> hd.seg.Segmentation:
    save_dataset(ds, path)
    assert dciodvfy_errors(path) == []
    return hd.seg.segread(path)


def test_ct_seg_holds_each_mask_on_its_source_slices(head_ct, algorithm, tmp_path):
    result = ich_result(algorithm, head_ct)
    [seg_ds] = build_seg(head_ct, result, series_number=901)
    seg = _saved(seg_ds, tmp_path / "seg.dcm")

    assert seg.get_segment_numbers() == [1, 2]
    assert seg.NumberOfFrames == 3 + 1  # only frames that contain a mask are stored
    source_uids = [ds.SOPInstanceUID for ds in head_ct]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, segment_numbers=[1, 2])
    for number, finding in enumerate(result.findings, start=1):
        np.testing.assert_array_equal(pixels[..., number - 1], finding.mask)
    referenced = {str(ref[2]) for ref in seg.get_source_image_uids()}
    assert referenced == set(source_uids)
    frame_sources = {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                     for f in seg.PerFrameFunctionalGroupsSequence}
    assert frame_sources == {source_uids[z] for z in (3, 4, 5, 8)}


def test_an_algorithm_name_the_source_s_character_set_cannot_hold_puts_the_seg_in_utf_8(head_ct, algorithm,
                                                                                        tmp_path):
    """The segment's algorithm name and the series description were written in the source's character set: without
    one, raw Latin-1 bytes, which dciodvfy refuses."""
    sources = [copy.deepcopy(ds) for ds in head_ct]
    for ds in sources:
        del ds.SpecificCharacterSet
    named = replace(algorithm, name="Knötchen-Fusion")
    [seg_ds] = build_seg(sources, ich_result(named, sources), series_number=901)
    seg = _saved(seg_ds, tmp_path / "seg.dcm")

    assert seg.SpecificCharacterSet == "ISO_IR 192" and seg.SeriesDescription.endswith("Knötchen-Fusion")
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "Knötchen-Fusion"
    assert str(seg.PatientName) == str(head_ct[0].PatientName)


def test_seg_identifies_the_algorithm_and_says_not_for_clinical_use(head_ct, algorithm, tmp_path):
    [seg_ds] = build_seg(head_ct, ich_result(algorithm, head_ct), series_number=901)
    seg = _saved(seg_ds, tmp_path / "seg.dcm")

    assert "NOT FOR CLINICAL USE" in seg.SeriesDescription
    [equipment] = algorithm_equipment(seg)
    assert equipment.DeviceUID == algorithm.device_uid
    assert (equipment.ManufacturerModelName, equipment.SoftwareVersions) == (algorithm.name, algorithm.version)
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == algorithm.name
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == algorithm.version
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Hemorrhage"
    assert seg.StudyInstanceUID == head_ct[0].StudyInstanceUID


def test_mammo_gets_one_seg_per_view_with_masked_findings(mammo_views, algorithm, tmp_path):
    result = mammo_result(algorithm, mammo_views)
    segs = build_seg(mammo_views, result, series_number=902)

    assert len(segs) == 2
    assert segs[0].SeriesInstanceUID == segs[1].SeriesInstanceUID
    for k, (seg_ds, view, finding) in enumerate(zip(segs, mammo_views, result.findings, strict=True)):
        path = tmp_path / f"seg-{k}.dcm"
        save_dataset(seg_ds, path)
        assert dciodvfy_errors(path) == []
        # Read with pydicom: highdicom 0.28.2's reader wants a Slice Thickness, which a
        # projection view does not have (and PS3.3 does not require without a Frame of Reference).
        seg = pydicom.dcmread(path)
        assert seg.NumberOfFrames == 1
        np.testing.assert_array_equal(seg.pixel_array.astype(bool), finding.mask)
        frame = seg.PerFrameFunctionalGroupsSequence[0]
        assert frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == view.SOPInstanceUID


def _with_frame_of_reference(view: pydicom.Dataset) -> None:
    view.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.77"


def _without_patient_orientation(view: pydicom.Dataset) -> None:
    del view.PatientOrientation


@pytest.mark.parametrize("vary", [_with_frame_of_reference, _without_patient_orientation])
def test_mammo_views_with_a_frame_of_reference_or_without_patient_orientation_get_valid_segs(
        mammo_views, algorithm, tmp_path, vary) -> None:
    """A view with a Frame of Reference UID (optional in MG) gave SEGs with one, whose Pixel Measures lacked the Slice
    Thickness (Type 1C) a projection has not: dciodvfy errors. A view without Patient Orientation (Type 1 in MG, yet
    accepted) failed with a bare AttributeError; its SEG now carries it empty (Type 2C)."""
    views = [copy.deepcopy(view) for view in mammo_views]
    for view in views:
        vary(view)
    result = mammo_result(algorithm, views)
    result.findings[0].heatmap = _blob((views[0].Rows, views[0].Columns), (30.0, 40.0), 4.0)
    masks = build_seg(views, result, series_number=902)
    written = [*masks, *build_heatmap_seg(views, result, series_number=904, masks=masks)]
    for k, seg in enumerate(written):
        save_dataset(seg, tmp_path / f"seg-{k}.dcm")
        assert dciodvfy_errors(tmp_path / f"seg-{k}.dcm") == []
        view = next(v for v in views if v.SOPInstanceUID == seg.ReferencedSeriesSequence[0]
                    .ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
        assert seg.get("PatientOrientation") == view.get("PatientOrientation", "")
    save_dataset(build_sr(views, result, series_number=903, segmentations=masks), tmp_path / "sr.dcm")
    assert len(written) == 3 and dciodvfy_errors(tmp_path / "sr.dcm") == []
    assert "FrameOfReferenceUID" in views[0] or "PatientOrientation" not in views[0]  # the caller's views as they came


def test_no_masks_means_no_seg(head_ct, algorithm):
    unmasked = Finding(FindingType.HEMORRHAGE, 0.6, (4.0, 45.0, 65.0), "left frontal")
    result = DetectorResult(Task.ICH, algorithm, [unmasked], case_score=0.6, positive=True)
    assert build_seg(head_ct, result, series_number=901) == []


def test_mask_of_the_wrong_shape_is_refused_naming_the_finding(head_ct, algorithm):
    wrong = Finding(FindingType.HEMORRHAGE, 0.6, (4.0, 45.0, 65.0), "left frontal",
                    mask=np.ones((3, 64, 64), dtype=bool))
    result = DetectorResult(Task.ICH, algorithm, [wrong], case_score=0.6, positive=True)
    with pytest.raises(ReportsError, match=r"finding 0: mask shape .* got \(3, 64, 64\)"):
        build_seg(head_ct, result, series_number=901)


def _blob(shape: tuple[int, ...], centre: tuple[float, ...], sigma: float) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    squared = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    heat = np.exp(-squared / (2 * sigma**2)).astype(np.float32)
    return np.where(heat >= 0.02, heat, 0.0)


def test_heat_maps_become_a_fractional_probability_seg(head_ct, algorithm, tmp_path):
    result = ich_result(algorithm, head_ct)
    shape = result.findings[0].mask.shape
    result.findings[0].heatmap = _blob(shape, (4.0, 45.0, 65.0), 3.0)  # the second finding has none
    [seg_ds] = build_heatmap_seg(head_ct, result, series_number=903)
    seg = _saved(seg_ds, tmp_path / "heat.dcm")

    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    assert seg.ContentLabel == "AI_HEATMAPS" and "NOT FOR CLINICAL USE" in seg.SeriesDescription
    [segment] = seg.SegmentSequence
    assert segment.SegmentLabel.startswith("heat map ") and segment.TrackingID == build_seg(
        head_ct, result, series_number=901)[0].SegmentSequence[0].TrackingID
    source_uids = [ds.SOPInstanceUID for ds in head_ct]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, segment_numbers=[1],
                                               rescale_fractional=True)
    np.testing.assert_allclose(pixels[..., 0], result.findings[0].heatmap, atol=1 / 255 + 1e-6)


def test_full_volume_heat_maps_are_not_copied_whole_into_the_seg(algorithm, tmp_path):
    """Each finding's heat map (a full-volume float array from nodule_fusion) was copied and all were stacked whole,
    though only a few slices hold anything: 7 GB more memory for ten maps on a 512x512x200 CT. The SEG stays the
    same: the same frames, values and referenced images."""
    sources = read_sources("head_ct", tmp_path / "ct", rows=128, slices=100)
    shape = (len(sources), sources[0].Rows, sources[0].Columns)
    findings = [Finding(FindingType.HEMORRHAGE, 0.8, (5.0 + 20 * k, 64.0, 64.0), "left frontal",
                        heatmap=_blob(shape, (5.0 + 20 * k, 64.0, 64.0), 1.0) * 0.9) for k in range(5)]
    result = DetectorResult(Task.ICH, algorithm, findings, case_score=0.8, positive=True)
    build_heatmap_seg(sources, result, series_number=903)  # highdicom loads its tables of the standard once
    tracemalloc.start()
    try:
        [seg_ds] = build_heatmap_seg(sources, result, series_number=903)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < sum(finding.heatmap.nbytes for finding in findings)  # before: three and a half times that

    seg = _saved(seg_ds, tmp_path / "heat.dcm")
    assert seg.NumberOfFrames == sum(int(f.heatmap.any(axis=(1, 2)).sum()) for f in findings)
    source_uids = [ds.SOPInstanceUID for ds in sources]
    assert {str(ref[2]) for ref in seg.get_source_image_uids()} == set(source_uids)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, segment_numbers=[1, 2, 3, 4, 5],
                                               rescale_fractional=False)
    for k, finding in enumerate(findings):
        np.testing.assert_array_equal(pixels[..., k], np.around(finding.heatmap * np.float32(255)))


def test_a_findings_heat_map_keeps_the_tracking_uid_of_its_mask_segment(head_ct, algorithm):
    result = ich_result(algorithm, head_ct)
    result.findings[0].heatmap = _blob(result.findings[0].mask.shape, (4.0, 45.0, 65.0), 3.0)
    [masks] = build_seg(head_ct, result, series_number=901)
    [heat] = build_heatmap_seg(head_ct, result, series_number=903, masks=[masks])
    assert heat.SegmentSequence[0].TrackingUID == masks.SegmentSequence[0].TrackingUID
    assert heat.SegmentSequence[0].TrackingID == masks.SegmentSequence[0].TrackingID


def test_mammo_heat_maps_go_on_their_own_view(mammo_views, algorithm, tmp_path):
    result = mammo_result(algorithm, mammo_views)
    view = result.findings[1]
    view.heatmap = _blob((mammo_views[1].Rows, mammo_views[1].Columns), (70.0, 50.0), 4.0)
    [seg_ds] = build_heatmap_seg(mammo_views, result, series_number=904)
    save_dataset(seg_ds, tmp_path / "heat.dcm")
    assert dciodvfy_errors(tmp_path / "heat.dcm") == []
    stored = pydicom.dcmread(tmp_path / "heat.dcm")
    assert stored.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        mammo_views[1].SOPInstanceUID
    assert abs(float(stored.pixel_array.max()) - 255.0) <= 1.0


def test_all_zero_heat_maps_mean_no_heat_map_seg(head_ct, algorithm):
    result = ich_result(algorithm, head_ct)
    result.findings[0].heatmap = np.zeros(result.findings[0].mask.shape, dtype=np.float32)
    assert build_heatmap_seg(head_ct, result, series_number=903) == []
