"""Series -> volume and mammography views: ordering, geometry and the rejections a user would see."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ai_engine.contrast import declares_contrast
from ai_engine.errors import VolumeError
from ai_engine.inputs import load_inputs
from ai_engine.results import Task
from ai_engine.synthetic.studies import SyntheticStudy, legacy_enhanced_ct, write_study
from ai_engine.volume import load_series


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_study("head_ct", tmp_path_factory.mktemp("head"), seed=4, rows=64, slices=12)


def _rewrite(paths: list[Path], out: Path, change) -> list[Path]:  # noqa: ANN001
    """Copies of ``paths`` with ``change(index, dataset)`` applied."""
    out.mkdir()
    copies = []
    for index, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        change(index, ds)
        copies.append(out / path.name)
        ds.save_as(copies[-1])
    return copies


def test_shuffled_files_are_ordered_along_the_normal(head: SyntheticStudy) -> None:
    shuffled = list(head.paths)
    random.Random(0).shuffle(shuffled)
    volume = load_series(shuffled)
    assert volume.paths == head.paths
    assert volume.array.shape == (12, 64, 64)
    assert volume.spacing_mm[0] == pytest.approx(5.0)
    first, last = pydicom.dcmread(head.paths[0]), pydicom.dcmread(head.paths[-1])
    assert volume.sop_instance_uids[0] == first.SOPInstanceUID
    assert volume.voxel_to_patient((11, 0, 0)) == pytest.approx(tuple(float(v) for v in last.ImagePositionPatient))


def test_rescale_gives_hounsfield_units(head: SyntheticStudy) -> None:
    volume = load_series(head.paths)
    assert pydicom.dcmread(head.paths[0]).RescaleIntercept == -1024  # stored unsigned
    assert volume.array[6, 0, 0] == pytest.approx(-1000, abs=30)  # air outside the head
    assert volume.array.max() > 700  # skull


def test_a_series_of_two_spacings_is_refused_saying_so(head: SyntheticStudy, tmp_path: Path) -> None:
    """2.5 mm through the posterior fossa, 5 mm above: before, refused as a 'missing slice or gap'."""
    first = pydicom.dcmread(head.paths[0])
    normal = np.cross(*np.reshape(np.array(first.ImageOrientationPatient, dtype=float), (2, 3)))
    origin = np.array(first.ImagePositionPatient, dtype=float)

    def zones(index: int, ds: pydicom.Dataset) -> None:
        ds.ImagePositionPatient = list(origin + normal * (2.5 * min(index, 5) + 5.0 * max(index - 5, 0)))

    with pytest.raises(VolumeError, match="spacing changes from 2.500 mm to 5.000 mm after slice 5: a series "
                                          "reconstructed at two spacings"):
        load_series(_rewrite(head.paths, tmp_path / "zones", zones))


def test_padding_outside_the_field_reads_as_air(head: SyntheticStudy, tmp_path: Path) -> None:
    """Pixel Padding Value was never read: 63536 in unsigned pixels (-2000 without its sign) read as 62512 HU."""
    def pad(_: int, ds: pydicom.Dataset) -> None:
        pixels = ds.pixel_array.copy()
        pixels[:4, :4] = 63536  # the corner, outside the head
        ds.add_new("PixelPaddingValue", "US", 63536)
        ds.PixelData = pixels.astype(np.uint16).tobytes()

    volume = load_series(_rewrite(head.paths, tmp_path / "padded", pad))
    assert (volume.array[:, :4, :4] == -1000.0).all()
    np.testing.assert_array_equal(volume.array[:, 4:, 4:], load_series(head.paths).array[:, 4:, 4:])

    def signed_value(_: int, ds: pydicom.Dataset) -> None:  # the same padding written as -2000
        pad(_, ds)
        del ds.PixelPaddingValue
        ds.add_new("PixelPaddingValue", "SS", -2000)

    assert (load_series(_rewrite(head.paths, tmp_path / "signed", signed_value)).array[:, :4, :4] == -1000.0).all()

    def two_values(_: int, ds: pydicom.Dataset) -> None:  # not one value: no padding is read, the job goes on
        pad(_, ds)
        ds.PixelPaddingValue = [63536, 0]

    assert (load_series(_rewrite(head.paths, tmp_path / "two", two_values)).array[:, :4, :4] > 60000).all()


def test_missing_slice_is_rejected_as_a_gap(head: SyntheticStudy) -> None:
    with pytest.raises(VolumeError, match=r"step 10.000 mm after slice 4 is 2 x the median .*\(1 missing slice\)"):
        load_series(head.paths[:5] + head.paths[6:])


def test_the_series_contrast_agent_travels_with_the_volume(head: SyntheticStudy, tmp_path: Path) -> None:
    assert load_series(head.paths).contrast_agent == ""

    def enhanced(_index: int, ds: pydicom.Dataset) -> None:
        ds.ContrastBolusAgent = " Iohexol "

    assert load_series(_rewrite(head.paths, tmp_path / "contrast", enhanced)).contrast_agent == "Iohexol"

    def unnamed(_index: int, ds: pydicom.Dataset) -> None:  # the agent is Type 2: present, empty
        ds.ContrastBolusAgent, ds.ContrastBolusRoute, ds.ContrastBolusVolume = "", "IV", "75"

    volume = load_series(_rewrite(head.paths, tmp_path / "unnamed", unnamed))
    assert volume.contrast_agent == "not named (ContrastBolusRoute IV)" and declares_contrast(volume.contrast_agent)

    def none_given(_index: int, ds: pydicom.Dataset) -> None:  # words for none, zero amounts: no agent
        ds.ContrastBolusAgent, ds.ContrastBolusRoute, ds.ContrastFlowRate = "", "NONE", [0, 0]

    assert load_series(_rewrite(head.paths, tmp_path / "none", none_given)).contrast_agent == ""


def test_a_slice_without_rescale_intercept_or_with_empty_values_is_refused_naming_them(
        head: SyntheticStudy, tmp_path: Path) -> None:
    """Before, a missing Rescale Intercept was taken as 0 (every HU 1024 too high: a bleed missed, silently) and an
    empty Pixel Spacing or Rescale Slope raised a bare TypeError naming neither file nor attribute."""
    def without_intercept(index: int, ds: pydicom.Dataset) -> None:
        if index == 3:
            del ds.RescaleIntercept

    with pytest.raises(VolumeError, match=r"\.dcm: missing Rescale Intercept, needed to read the slice in Hounsfield"):
        load_series(_rewrite(head.paths, tmp_path / "intercept", without_intercept))

    def empty_spacing(_index: int, ds: pydicom.Dataset) -> None:
        ds.PixelSpacing = None

    with pytest.raises(VolumeError, match="missing PixelSpacing"):
        load_series(_rewrite(head.paths, tmp_path / "spacing", empty_spacing))

    def empty_slope(_index: int, ds: pydicom.Dataset) -> None:
        ds.RescaleSlope = None  # present, empty: the identity

    assert np.array_equal(load_series(_rewrite(head.paths, tmp_path / "slope", empty_slope)).array,
                          load_series(head.paths).array)


@pytest.mark.parametrize(("keyword", "value"), [
    ("PixelSpacing", [-0.9375, -0.9375]), ("PixelSpacing", [0.0, 0.0]), ("PixelSpacing", 0.9375),
    ("ImageOrientationPatient", [1, 0, 0, 0, 1]), ("ImagePositionPatient", [0.0, 0.0])])
def test_a_malformed_geometry_value_is_refused_naming_the_attribute(head: SyntheticStudy, tmp_path: Path,
                                                                    keyword: str, value: object) -> None:
    """A negative Pixel Spacing put a left-sided bleed on the right, outside the head; a zero or single-valued one
    failed inside the detector (ZeroDivisionError, 'DSfloat' object is not iterable)."""
    def malformed(_index: int, ds: pydicom.Dataset) -> None:
        setattr(ds, keyword, value)

    with pytest.raises(VolumeError, match=rf"\.dcm: {keyword} must be [236] (positive )?numbers, got"):
        load_series(_rewrite(head.paths, tmp_path / "malformed", malformed))


def test_a_mammogram_with_a_malformed_pixel_spacing_is_refused_naming_it(tmp_path: Path) -> None:
    study = write_study("mammo", tmp_path / "in", seed=2, rows=128)
    views = _rewrite(study.paths, tmp_path / "out", lambda _i, ds: setattr(ds, "PixelSpacing", [-0.1, 0.1]))
    with pytest.raises(VolumeError, match="PixelSpacing must be 2 positive numbers"):
        load_inputs(Task.MAMMOGRAPHY, views)


def test_mixed_orientation_is_rejected(head: SyntheticStudy, tmp_path: Path) -> None:
    def rotate(index: int, ds: pydicom.Dataset) -> None:
        if index == 3:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    with pytest.raises(VolumeError, match="mixed orientations"):
        load_series(_rewrite(head.paths, tmp_path / "mixed", rotate))


def test_a_localizer_in_the_axial_series_is_left_out(head: SyntheticStudy, tmp_path: Path) -> None:
    ds = pydicom.dcmread(head.paths[0])  # a coronal scout that some scanners put into the axial series
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    scout = tmp_path / "scout.dcm"
    ds.save_as(scout)
    volume = load_series([scout, *head.paths])
    assert volume.paths == head.paths and volume.array.shape == (12, 64, 64)
    with pytest.raises(VolumeError, match="all 1 images or frames are localizers"):
        load_series([scout])
    del ds.RescaleIntercept  # nothing of a scout is read: what it lacks cannot cost the series
    ds.ImagePositionPatient = None
    ds.save_as(scout)
    assert load_series([scout, *head.paths]).paths == head.paths


def _tilted(degrees: float, off_line: int | None = None):  # noqa: ANN202
    """Shift each slice in-plane (y) as a gantry tilted by ``degrees`` does; ``off_line``: one slice 1 mm off."""
    def tilt(index: int, ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        y += index * 5.0 * np.tan(np.radians(degrees)) + (1.0 if index == off_line else 0.0)
        ds.ImagePositionPatient = [x, y, z]
    return tilt


def test_gantry_tilt_is_kept_as_acquired_with_every_slice_at_its_position(head: SyntheticStudy, tmp_path: Path) -> None:
    straight = load_series(head.paths)
    paths = _rewrite(head.paths, tmp_path / "tilt", _tilted(15))
    volume = load_series(paths)
    assert volume.tilt_degrees == pytest.approx(15.0, abs=0.01)
    assert straight.tilt_degrees == 0.0 and straight.shear_mm == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(volume.array, straight.array)  # the pixels are not resampled
    assert volume.spacing_mm == pytest.approx(straight.spacing_mm)  # slice spacing along the normal: 5 mm
    for k, path in enumerate(paths):
        position = tuple(float(v) for v in pydicom.dcmread(path).ImagePositionPatient)
        assert volume.voxel_to_patient((k, 0, 0)) == pytest.approx(position, abs=1e-4)
    for zyx in ((3.0, 10.5, 20.25), (7.5, 40.0, 2.0)):  # a nodule's world position back to its voxel (LUNA16 rows)
        assert volume.patient_to_voxel(volume.voxel_to_patient(zyx)) == pytest.approx(zyx, abs=1e-6)
        assert straight.patient_to_voxel(straight.voxel_to_patient(zyx)) == pytest.approx(zyx, abs=1e-6)


def test_a_steeper_tilt_or_a_crooked_stack_is_rejected(head: SyntheticStudy, tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="gantry tilt of 35.0 degrees exceeds the 30 degrees"):
        load_series(_rewrite(head.paths, tmp_path / "steep", _tilted(35)))
    with pytest.raises(VolumeError, match=r"not stacked on one straight line: the step from slice [45] to slice [56] is 1.00 mm off"):
        load_series(_rewrite(head.paths, tmp_path / "crooked", _tilted(15, off_line=5)))


def test_mixed_matrix_sizes_are_rejected(tmp_path: Path, head: SyntheticStudy) -> None:
    other = write_study("head_ct", tmp_path, seed=4, rows=72, slices=8)

    def same_series(index: int, ds: pydicom.Dataset) -> None:
        reference = pydicom.dcmread(head.paths[0])
        ds.SeriesInstanceUID, ds.StudyInstanceUID = reference.SeriesInstanceUID, reference.StudyInstanceUID

    with pytest.raises(VolumeError, match="rows x columns"):
        load_series(head.paths + _rewrite(other.paths[:1], tmp_path / "big", same_series))


def test_mammography_inputs_are_views_with_laterality_and_view(tmp_path: Path) -> None:
    study = write_study("mammo", tmp_path, seed=2, rows=128)
    inputs = load_inputs(Task.MAMMOGRAPHY, list(reversed(study.paths)))
    assert inputs.volume is None
    assert [v.view for v in inputs.views] == ["CC", "MLO"]
    assert inputs.views[0].pixel_spacing_mm == pytest.approx((220 / 128, 220 / 128), rel=1e-3)
    assert inputs.views[0].laterality in ("L", "R")


def test_a_projection_series_is_refused_saying_what_it_is(head: SyntheticStudy, enhanced: SyntheticStudy,
                                                          tmp_path: Path) -> None:
    """A 10 mm slab MIP beside a chest CT was read as acquired slices: a 15.4 mm nodule measured 19.0 mm."""
    def mip(_: int, ds: pydicom.Dataset) -> None:
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL", "MIP"]

    with pytest.raises(VolumeError, match=r"a projection image \(Image Type MIP\), not acquired slices"):
        load_series(_rewrite(head.paths, tmp_path / "mip", mip))

    def minip_frames(ds: pydicom.Dataset) -> None:
        for frame in ds.PerFrameFunctionalGroupsSequence:
            frame.CTImageFrameTypeSequence = [pydicom.Dataset()]
            frame.CTImageFrameTypeSequence[0].FrameType = ["DERIVED", "PRIMARY", "AXIAL", "MINIP"]

    with pytest.raises(VolumeError, match=r"Image Type MINIP"):
        load_series([_rewrite_enhanced(enhanced, tmp_path / "minip", minip_frames)])


@pytest.fixture(scope="module")
def enhanced(head: SyntheticStudy, tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return legacy_enhanced_ct(head, tmp_path_factory.mktemp("enhanced"))


def _rewrite_enhanced(study: SyntheticStudy, out: Path, change) -> Path:  # noqa: ANN001
    """A copy of the study's one multi-frame image with ``change(dataset)`` applied."""
    return _rewrite(study.paths, out, lambda _, ds: change(ds))[0]


def test_an_enhanced_multiframe_ct_reads_as_its_single_frame_series(head: SyntheticStudy,
                                                                     enhanced: SyntheticStudy) -> None:
    """A Legacy Converted Enhanced CT image of the series (frames stored head to feet): the same voxels and geometry,
    and each slice knows its frame, placed where its functional groups put it."""
    single, multi = load_series(head.paths), load_series(enhanced.paths)
    np.testing.assert_array_equal(multi.array, single.array)
    assert multi.spacing_mm == pytest.approx(single.spacing_mm)
    assert multi.origin_mm == pytest.approx(single.origin_mm)
    np.testing.assert_allclose(multi.direction, single.direction)
    assert single.frame_numbers is None and multi.paths == enhanced.paths * 12
    ds = pydicom.dcmread(enhanced.paths[0])
    assert multi.sop_instance_uids == [ds.SOPInstanceUID] * 12
    assert multi.frame_numbers == list(range(12, 0, -1))  # highdicom stores the frames in descending z
    for k, frame in enumerate(multi.frame_numbers):
        position = ds.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient
        assert multi.voxel_to_patient((k, 0, 0)) == pytest.approx(tuple(float(v) for v in position))


def test_an_enhanced_image_is_rescaled_per_frame_and_its_localizer_frames_left_out(enhanced: SyntheticStudy,
                                                                                    tmp_path: Path) -> None:
    reference = load_series(enhanced.paths)

    def change(ds: pydicom.Dataset) -> None:
        shared = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        frame = ds.PerFrameFunctionalGroupsSequence[0]  # the top slice
        frame.PixelValueTransformationSequence = [pydicom.Dataset()]
        frame.PixelValueTransformationSequence[0].update(shared)
        frame.PixelValueTransformationSequence[0].RescaleIntercept = float(shared.RescaleIntercept) + 10.0
        localizer = ds.PerFrameFunctionalGroupsSequence[11]  # the bottom slice
        localizer.CTImageFrameTypeSequence = [pydicom.Dataset()]
        localizer.CTImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]

    volume = load_series([_rewrite_enhanced(enhanced, tmp_path / "changed", change)])
    assert volume.frame_numbers == list(range(11, 0, -1))
    np.testing.assert_allclose(volume.array[-1], reference.array[-1] + 10.0)
    np.testing.assert_array_equal(volume.array[:-1], reference.array[1:-1])


def test_an_enhanced_image_that_cannot_be_placed_or_read_is_refused_by_name(head: SyntheticStudy,
                                                                             enhanced: SyntheticStudy,
                                                                             tmp_path: Path) -> None:
    def unplaced(ds: pydicom.Dataset) -> None:
        del ds.PerFrameFunctionalGroupsSequence[4].PlanePositionSequence

    with pytest.raises(VolumeError, match="frame 5 has no ImagePositionPatient in its functional groups"):
        load_series([_rewrite_enhanced(enhanced, tmp_path / "unplaced", unplaced)])
    twice = legacy_enhanced_ct(head, tmp_path / "again")
    with pytest.raises(VolumeError, match="2 multi-frame image"):
        load_series(enhanced.paths + _rewrite(twice.paths, tmp_path / "second", lambda _, ds: setattr(
            ds, "SeriesInstanceUID", enhanced.series_instance_uids[0])))
    with pytest.raises(VolumeError, match="1 multi-frame image.* beside 12 other"):
        load_series(enhanced.paths + head.paths)

    def plain_multiframe(_: int, ds: pydicom.Dataset) -> None:
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2

    with pytest.raises(VolumeError, match="without per-frame functional groups"):
        load_series(_rewrite(head.paths[:1], tmp_path / "plain", plain_multiframe))


def test_an_enhanced_image_declares_its_agent_in_the_contrast_bolus_agent_sequence(enhanced: SyntheticStudy,
                                                                                    tmp_path: Path) -> None:
    def contrast(ds: pydicom.Dataset) -> None:
        ds.ContrastBolusAgent = ""
        agent = pydicom.Dataset()
        agent.CodeValue, agent.CodingSchemeDesignator, agent.CodeMeaning = "C-B0322", "SRT", "Iohexol"
        ds.ContrastBolusAgentSequence = [agent]

    assert load_series(enhanced.paths).contrast_agent == ""
    assert load_series([_rewrite_enhanced(enhanced, tmp_path / "agent", contrast)]).contrast_agent == "Iohexol"


def test_an_enhanced_image_without_its_rescale_in_a_group_falls_back_to_the_top_level_or_is_refused(
        enhanced: SyntheticStudy, tmp_path: Path) -> None:
    reference = load_series(enhanced.paths)

    def top_level(ds: pydicom.Dataset) -> None:
        transformation = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        ds.RescaleSlope, ds.RescaleIntercept = transformation.RescaleSlope, transformation.RescaleIntercept
        del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence

    moved = load_series([_rewrite_enhanced(enhanced, tmp_path / "top", top_level)])
    np.testing.assert_array_equal(moved.array, reference.array)

    def nowhere(ds: pydicom.Dataset) -> None:
        del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence

    with pytest.raises(VolumeError, match="frame 1 has no Rescale Intercept"):
        load_series([_rewrite_enhanced(enhanced, tmp_path / "nowhere", nowhere)])


def test_a_one_frame_enhanced_image_reads_its_frame(enhanced: SyntheticStudy, tmp_path: Path) -> None:
    reference = load_series(enhanced.paths)

    def first_frame_only(ds: pydicom.Dataset) -> None:
        frame_bytes = len(ds.PixelData) // int(ds.NumberOfFrames)
        ds.PixelData = ds.PixelData[:frame_bytes]
        ds.NumberOfFrames = 1
        ds.PerFrameFunctionalGroupsSequence = ds.PerFrameFunctionalGroupsSequence[:1]

    volume = load_series([_rewrite_enhanced(enhanced, tmp_path / "one", first_frame_only)])
    assert volume.frame_numbers == [1]
    np.testing.assert_array_equal(volume.array[0], reference.array[reference.frame_numbers.index(1)])


@pytest.mark.parametrize(("change", "error"), [
    (lambda ds: setattr(ds, "NumberOfFrames", 11), "Number of Frames is 11 but the Per-frame Functional Groups "
                                                   "Sequence has 12 items"),
    (lambda ds: setattr(ds, "InConcatenationTotalNumber", 2), "one part of a concatenation of 2 images"),
])
def test_an_enhanced_image_whose_frames_do_not_add_up_is_refused(enhanced: SyntheticStudy, tmp_path: Path,
                                                                  change, error: str) -> None:  # noqa: ANN001
    with pytest.raises(VolumeError, match=error):
        load_series([_rewrite_enhanced(enhanced, tmp_path / "changed", change)])
