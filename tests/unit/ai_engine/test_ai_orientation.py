"""CT series stored feet first, prone or mirrored: analysed as the anatomy they show, reported on their own pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from ai_engine.detectors.base import DetectorInput
from ai_engine.detectors.registry import create_detector
from ai_engine.errors import VolumeError
from ai_engine.orientation import Reorientation, to_lps
from ai_engine.results import AlgorithmInfo, DetectorResult, Finding, FindingType, Task
from ai_engine.synthetic.cohorts.ich import IchCase, write_case_dicom
from ai_engine.synthetic.head_ct import HeadAcquisition, HemorrhageSpec, make_head_case
from ai_engine.synthetic.studies import SyntheticStudy, write_study
from ai_engine.training.datasets import ich_cases
from ai_engine.volume import Volume, load_series

MIRRORS = {"row direction -x": (False, True, False), "column direction -y": (True, False, False),
           "prone": (True, True, False), "rows and columns exchanged": (False, False, True),
           "exchanged and mirrored": (True, False, True)}


def _mirror(ds: pydicom.Dataset, rows: bool, columns: bool, exchange: bool) -> None:
    """Store the same anatomy with reversed rows and/or columns, then rows and columns exchanged (a 90 degree
    rotation with a mirror): pixels, orientation, position and pixel spacing all change."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    spacing = [float(v) for v in ds.PixelSpacing]
    pixels = _mirror_pixels(ds.pixel_array, rows, columns, exchange)
    if columns:
        ipp, iop[:3] = ipp + iop[:3] * spacing[1] * (ds.Columns - 1), -iop[:3]
    if rows:
        ipp, iop[3:] = ipp + iop[3:] * spacing[0] * (ds.Rows - 1), -iop[3:]
    if exchange:
        iop, spacing = np.concatenate([iop[3:], iop[:3]]), spacing[::-1]
        ds.Rows, ds.Columns = pixels.shape
    ds.ImageOrientationPatient = iop.tolist()
    ds.ImagePositionPatient = ipp.tolist()
    ds.PixelSpacing = spacing
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _mirror_pixels(pixels: np.ndarray, rows: bool, columns: bool, exchange: bool) -> np.ndarray:
    pixels = pixels[::-1 if rows else 1, ::-1 if columns else 1]
    return np.ascontiguousarray(pixels.T if exchange else pixels)


def _stored(study: SyntheticStudy, out: Path, rows: bool, columns: bool, exchange: bool) -> list[Path]:
    out.mkdir()
    paths = []
    for path in study.paths:
        ds = pydicom.dcmread(path)
        _mirror(ds, rows, columns, exchange)
        paths.append(out / path.name)
        ds.save_as(paths[-1])
    return paths


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_study("head_ct", tmp_path_factory.mktemp("head"), seed=5, rows=256)


@pytest.mark.parametrize("mirror", MIRRORS)
def test_to_lps_gives_the_head_first_supine_array_and_keeps_every_voxel_in_place(
        head: SyntheticStudy, tmp_path: Path, mirror: str) -> None:
    reference = load_series(head.paths)
    stored = load_series(_stored(head, tmp_path / "stored", *MIRRORS[mirror]))
    lps, reorientation = to_lps(stored)
    assert reorientation.any
    np.testing.assert_array_equal(lps.array, reference.array)
    np.testing.assert_allclose(lps.direction, np.eye(3), atol=1e-9)
    assert lps.origin_mm == pytest.approx(reference.origin_mm)
    assert lps.sop_instance_uids == reference.sop_instance_uids
    for zyx in [(0, 0, 0), (3.5, 17.0, 200.25), (39, 255, 255)]:
        assert lps.voxel_to_patient(reorientation.voxel_to_lps(zyx)) == pytest.approx(stored.voxel_to_patient(zyx))
        assert reorientation.voxel_to_stored(reorientation.voxel_to_lps(zyx)) == pytest.approx(zyx)
    assert to_lps(reference)[0] is reference  # already LPS: untouched, no copy


def test_a_sagittal_series_is_refused_with_the_reason() -> None:
    sagittal = Volume(array=np.zeros((4, 8, 8), np.float32), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0),
                      direction=np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]]),
                      sop_instance_uids=[], paths=[], series_instance_uid="1.2", study_instance_uid="1.3")
    with pytest.raises(VolumeError, match=r"not an axial series \(row direction \[0.0, 1.0, 0.0\], .* need axial"):
        to_lps(sagittal)


def test_restore_maps_masks_heat_maps_and_centres_back_onto_the_stored_voxels() -> None:
    reorientation = Reorientation(swap=True, flips=(True, False, True), shape=(4, 5, 6))
    assert reorientation.lps_shape == (4, 6, 5)
    mask = np.zeros((4, 6, 5), bool)  # on the LPS grid, as a detector reports it
    mask[0, 1, 2] = True
    finding = Finding(finding_type=FindingType.HEMORRHAGE, score=0.9, center_voxel=(0.0, 1.0, 2.0), location="x",
                      mask=mask, heatmap=mask.astype(np.float32))
    algorithm = AlgorithmInfo(name="test", version="0", device_uid="2.25.1", kind="test")
    result = DetectorResult(task=Task.ICH, algorithm=algorithm, findings=[finding], case_score=0.9, positive=True)
    restored = reorientation.restore(result).findings[0]
    # unflip z (0 -> 3) and x (2 -> 2 of 0..4), then exchange y and x
    assert restored.center_voxel == (3.0, 2.0, 1.0)
    assert restored.mask is not None and np.argwhere(restored.mask).tolist() == [[3, 2, 1]]
    assert restored.heatmap is not None and restored.heatmap[3, 2, 1] == 1.0
    np.testing.assert_array_equal(reorientation.to_lps(restored.mask), mask)
    assert finding.center_voxel == (0.0, 1.0, 2.0)  # the detector's own result is not changed


@pytest.mark.parametrize("detector", ["ich_fusion", "ich_baseline"])
@pytest.mark.parametrize("mirror", MIRRORS)
def test_a_mirrored_head_ct_gives_the_same_bleeds_on_the_same_side_on_its_own_pixels(
        head: SyntheticStudy, tmp_path: Path, detector: str, mirror: str) -> None:
    """Before ``to_lps`` the fusion detector called a left bleed right on a series with row direction -x."""
    reference_volume = load_series(head.paths)
    stored_volume = load_series(_stored(head, tmp_path / "stored", *MIRRORS[mirror]))
    expected = create_detector(detector).detect(DetectorInput(volume=reference_volume))
    result = create_detector(detector).detect(DetectorInput(volume=stored_volume))
    assert expected.findings, "the phantom's 51 mL bleed must be found"
    assert result.case_score == pytest.approx(expected.case_score, abs=1e-6)
    assert [f.location for f in result.findings] == [f.location for f in expected.findings]
    assert expected.findings[0].location.startswith("left")  # the phantom's bleed lies at patient x > 0
    for got, want in zip(result.findings, expected.findings, strict=True):
        assert got.center_mm == pytest.approx(want.center_mm, abs=1e-3)
        assert got.volume_ml == pytest.approx(want.volume_ml)
        assert got.mask is not None and got.mask.shape == stored_volume.array.shape
        # the mask lies on the stored pixels: its centre there is the finding's centre in the patient
        assert stored_volume.voxel_to_patient(ndimage.center_of_mass(got.mask)) == pytest.approx(
            reference_volume.voxel_to_patient(ndimage.center_of_mass(want.mask)), abs=1e-3)
        assert stored_volume.voxel_to_patient(got.center_voxel) == pytest.approx(got.center_mm, abs=1e-3)


def test_a_dataset_case_stored_mirrored_trains_on_the_lps_voxels_and_labels(tmp_path: Path) -> None:
    """The ICH dataset reader turns a case's series and its mask (stored as the series is) into LPS order."""
    bleed = [HemorrhageSpec("intraparenchymal", 12.0, 70.0, 1.0)]
    head = make_head_case(np.random.default_rng(3), HeadAcquisition(rows=96, slice_mm=5.0, coverage_mm=60.0), bleed)
    case = IchCase("m1", head.hu, head.labels, head.spacing, head.truths, None, None, 1, 70.0, "F")
    written = write_case_dicom(case, tmp_path / "as-written")
    mirror = MIRRORS["exchanged and mirrored"]
    (tmp_path / "m1" / "dicom").mkdir(parents=True)
    uids, stored_labels = [], []
    for k, path in enumerate(written):
        ds = pydicom.dcmread(path)
        _mirror(ds, *mirror)
        ds.save_as(tmp_path / "m1" / "dicom" / path.name)
        uids.append(str(ds.SOPInstanceUID))
        stored_labels.append(_mirror_pixels(head.labels[k], *mirror))  # the mask drawn on the stored pixels
    np.savez(tmp_path / "m1" / "mask.npz", labels=np.stack(stored_labels), sop_instance_uids=np.array(uids))
    (tmp_path / "cases.csv").write_text("case_id,label\nm1,1\n")
    [loaded] = ich_cases.load_cases(tmp_path, ich_cases.read_table(tmp_path))
    np.testing.assert_allclose(loaded.hu, head.hu, atol=1.0)
    np.testing.assert_array_equal(loaded.labels, head.labels)


def test_a_tilted_head_ct_is_analysed_with_exact_positions_and_says_so(head: SyntheticStudy, tmp_path: Path) -> None:
    """Gantry tilt, common in head CT, is analysed on the acquired slices; the report says it was tilted."""
    (tmp_path / "tilted").mkdir()
    paths = []
    for k, path in enumerate(head.paths):  # 12 degrees, and stored feet first with mirrored rows
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * float(ds.SliceThickness) * np.tan(np.radians(12)), z]
        _mirror(ds, *MIRRORS["prone"])
        paths.append(tmp_path / "tilted" / path.name)
        ds.save_as(paths[-1])
    stored = load_series(paths)
    expected = create_detector("ich_fusion").detect(DetectorInput(volume=load_series(head.paths)))
    result = create_detector("ich_fusion").detect(DetectorInput(volume=stored))
    assert stored.tilt_degrees == pytest.approx(12.0, abs=0.01)
    assert any(note.startswith("gantry tilt 12.0 degrees") for note in result.notes)
    assert [f.location for f in result.findings] == [f.location for f in expected.findings]
    for got, want in zip(result.findings, expected.findings, strict=True):
        assert got.volume_ml == pytest.approx(want.volume_ml)
        assert stored.voxel_to_patient(got.center_voxel) == pytest.approx(got.center_mm, abs=1e-3)
        slice_index = got.center_voxel[0]
        assert got.center_mm[1] - want.center_mm[1] == pytest.approx(  # the tilt shifted its slice by this much
            slice_index * 5.0 * np.tan(np.radians(12)), abs=1e-3)
