"""SEG and SR over a CT volume read from one enhanced multi-frame image: every reference names its frame."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ai_engine.results import DetectorResult, Finding, FindingType, Task
from ai_engine.synthetic.studies import legacy_enhanced_ct, write_study
from ai_engine.volume import load_series
from reports.errors import ReportsError
from reports.seg import build_heatmap_seg, build_seg
from reports.sr import build_sr
from reports.writer import save_dataset
from tests.peers import dciodvfy_errors
from tests.unit.reports.report_checks import content_items, ich_result


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory: pytest.TempPathFactory) -> tuple[pydicom.Dataset, list[int]]:
    """A 12-frame Legacy Converted Enhanced head CT and the frame number of each volume slice (bottom to top)."""
    out = tmp_path_factory.mktemp("enhanced")
    study = legacy_enhanced_ct(write_study("head_ct", out / "single", seed=7, rows=128, slices=12), out / "multi")
    frames = load_series(study.paths).frame_numbers
    assert frames is not None and frames != sorted(frames)  # stored in another order than the volume's
    return pydicom.dcmread(study.paths[0]), frames


def _saved(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    save_dataset(ds, path)
    assert dciodvfy_errors(path) == []
    return pydicom.dcmread(path)


def test_seg_lays_each_mask_on_the_frames_of_its_slices(enhanced, algorithm, tmp_path):
    source, frames = enhanced
    result = ich_result(algorithm, [source] * len(frames))
    [seg_ds] = build_seg([source], result, series_number=901, frames=frames)
    seg = hd.seg.segread(_saved(seg_ds, tmp_path / "seg.dcm").filename)
    pixels = seg.get_pixels_by_source_frame(source_sop_instance_uid=source.SOPInstanceUID,
                                            source_frame_numbers=frames, segment_numbers=[1, 2],
                                            assert_missing_frames_are_empty=True)
    for number, finding in enumerate(result.findings, start=1):
        np.testing.assert_array_equal(pixels[..., number - 1], finding.mask)
    placed = {int(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber):
              group.PlanePositionSequence[0].ImagePositionPatient for group in seg.PerFrameFunctionalGroupsSequence}
    for number, position in placed.items():
        source_group = source.PerFrameFunctionalGroupsSequence[number - 1]
        assert list(position) == pytest.approx(list(source_group.PlanePositionSequence[0].ImagePositionPatient))
    for finding in result.findings:
        finding.heatmap = 0.8 * finding.mask
    [heatmap_ds] = build_heatmap_seg([source], result, series_number=902, masks=[seg_ds], frames=frames)
    heatmap = hd.seg.segread(_saved(heatmap_ds, tmp_path / "heatmap.dcm").filename)
    maps = heatmap.get_pixels_by_source_frame(
        source_sop_instance_uid=source.SOPInstanceUID, source_frame_numbers=frames, segment_numbers=[1, 2],
        assert_missing_frames_are_empty=True, rescale_fractional=True)
    for number, finding in enumerate(result.findings, start=1):
        np.testing.assert_allclose(maps[..., number - 1], finding.heatmap, atol=1 / 255)


def test_sr_cites_the_frames_of_each_segment_and_of_each_point(enhanced, algorithm, tmp_path):
    source, frames = enhanced
    result = ich_result(algorithm, [source] * len(frames))
    result.findings.append(Finding(FindingType.HEMORRHAGE, 0.6, (5.0, 40.0, 40.0), "left parietal", volume_ml=0.2))
    segs = build_seg([source], result, series_number=901, frames=frames)
    sr = _saved(build_sr([source], result, series_number=903, segmentations=segs, frames=frames), tmp_path / "sr.dcm")
    cited = [[int(n) for n in np.atleast_1d(ref.ReferencedFrameNumber)]
             for item in content_items(sr) for ref in item.get("ReferencedSOPSequence", [])
             if ref.ReferencedSOPInstanceUID == source.SOPInstanceUID]
    masks = [finding.mask for finding in result.findings[:2]]
    expected = [sorted(frames[z] for z in np.flatnonzero(mask.any(axis=(1, 2)))) for mask in masks]
    assert sorted(cited) == sorted([*expected, [frames[5]]])


def test_frames_that_do_not_fit_the_source_are_refused(enhanced, head_ct, algorithm):
    source, frames = enhanced
    result = ich_result(algorithm, [source] * len(frames))
    with pytest.raises(ReportsError, match="frames must number frames 1..12 of one multi-frame source image"):
        build_seg([source], result, series_number=901, frames=[f + 1 for f in frames])
    with pytest.raises(ReportsError, match="one multi-frame source image"):
        build_sr(head_ct, DetectorResult(Task.ICH, algorithm, [], 0.1, False), series_number=903, frames=frames)


def test_frames_placed_per_frame_and_a_localizer_frame_still_get_their_seg(enhanced, algorithm, tmp_path):
    """An image that keeps orientation and pixel spacing per frame, with a sagittal localizer frame among them."""
    source, _ = enhanced
    image = copy.deepcopy(source)
    shared = image.SharedFunctionalGroupsSequence[0]
    for item in image.PerFrameFunctionalGroupsSequence:
        item.PlaneOrientationSequence = shared.PlaneOrientationSequence
        item.PixelMeasuresSequence = shared.PixelMeasuresSequence
    del shared.PlaneOrientationSequence, shared.PixelMeasuresSequence
    localizer = image.PerFrameFunctionalGroupsSequence[0]
    localizer.PlaneOrientationSequence = [pydicom.Dataset()]
    localizer.PlaneOrientationSequence[0].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    localizer.CTImageFrameTypeSequence = [pydicom.Dataset()]
    localizer.CTImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    path = tmp_path / "perframe.dcm"
    image.save_as(path, enforce_file_format=True)
    frames = load_series([path]).frame_numbers
    assert frames is not None and 1 not in frames and len(frames) == 11
    result = ich_result(algorithm, [image] * len(frames))
    [seg_ds] = build_seg([image], result, series_number=901, frames=frames)
    seg = _saved(seg_ds, tmp_path / "seg.dcm")
    for group in seg.PerFrameFunctionalGroupsSequence:
        number = int(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        source_position = image.PerFrameFunctionalGroupsSequence[number - 1].PlanePositionSequence[0]
        assert list(group.PlanePositionSequence[0].ImagePositionPatient) == pytest.approx(
            list(source_position.ImagePositionPatient))
    assert "PlaneOrientationSequence" in image.PerFrameFunctionalGroupsSequence[0]  # the source is left as it was
    _saved(build_sr([image], result, series_number=903, segmentations=[seg_ds], frames=frames), tmp_path / "sr.dcm")
