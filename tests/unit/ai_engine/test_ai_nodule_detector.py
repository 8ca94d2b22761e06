"""nodule_fusion with its packaged bundle: finds an obvious nodule with its size and type, stays quiet without one."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ai_engine.detectors.base import DetectorInput
from ai_engine.detectors.nodule_baseline import body_midline_x, cut_off_sides, lung_side, seal_cut_edges
from ai_engine.detectors.nodule_fusion import NoduleFusion, lung_rads, suppress
from ai_engine.detectors.registry import create_detector
from ai_engine.errors import DetectorInputError
from ai_engine.results import FindingType
from ai_engine.synthetic.chest_ct import ChestAcquisition, NoduleSpec, make_chest_phantom
from ai_engine.synthetic.cohorts.nodule import generate_case
from ai_engine.volume import Volume

SHORT_SCAN = ChestAcquisition(rows=320, slices=64, slice_mm=2.0, noise_hu=15.0, blur_mm=0.5)  # 128 mm of chest


def _volume(hu: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    return Volume(array=hu, spacing_mm=spacing, origin_mm=(-180.0, -180.0, -64.0), direction=np.eye(3),
                  sop_instance_uids=[], paths=[], series_instance_uid="1.2.3", study_instance_uid="1.2")


@pytest.fixture(scope="module")
def detector() -> NoduleFusion:
    return create_detector("nodule_fusion")  # type: ignore[return-value]


@pytest.mark.parametrize(("kind", "diameter"), [("solid", 12.0), ("part-solid", 16.0)])
def test_finds_an_obvious_nodule_with_its_size_type_and_explanation(detector: NoduleFusion, kind: str,
                                                                     diameter: float) -> None:
    phantom = make_chest_phantom(np.random.default_rng(3), SHORT_SCAN, [NoduleSpec(diameter, kind)])
    volume = _volume(phantom.hu, phantom.spacing)
    case = generate_case(4, acquisition=SHORT_SCAN)
    result = detector.detect(DetectorInput(volume=volume, context=case.context))
    assert result.positive and "trained" in result.algorithm.kind
    truth = np.array(phantom.nodules[0].center_voxel)
    finding = min(result.findings, key=lambda f: np.linalg.norm((np.array(f.center_voxel) - truth) * phantom.spacing))
    assert np.linalg.norm((np.array(finding.center_voxel) - truth) * phantom.spacing) < 4.0
    assert finding.finding_type is FindingType.NODULE
    assert finding.diameter_mm == pytest.approx(diameter, rel=0.3)
    assert finding.attributes["composition"] == kind
    assert finding.attributes["lung_rads"] in {"3", "4A", "4B", "4X"}
    assert 0.0 <= finding.measurements["malignancy_probability"] <= 1.0
    assert finding.mask.shape == volume.array.shape and finding.mask[tuple(np.rint(truth).astype(int))]
    assert finding.heatmap.shape == volume.array.shape and 0.0 <= finding.heatmap.min() <= finding.heatmap.max() <= 1.0
    assert sum(finding.modality_weights.values()) == pytest.approx(1.0, abs=1e-3)
    assert not any("thicker than" in note for note in result.notes)  # 2 mm slices


@pytest.mark.parametrize("seed", [8, 9, pytest.param(3, marks=pytest.mark.xfail(
    strict=True, reason="known weakness of bundle 1.4.1: a 4 mm 'solid' finding (0.75, threshold 0.65) on this "
                        "nodule-free short scan; 4 of seeds 1-20 draw one (model card)"))])  # 8: 1.2.0's mediastinum false positive
def test_reports_nothing_on_a_nodule_free_chest(detector: NoduleFusion, seed: int) -> None:
    phantom = make_chest_phantom(np.random.default_rng(seed), SHORT_SCAN, [])
    result = detector.detect(DetectorInput(volume=_volume(phantom.hu, phantom.spacing)))
    assert result.findings == [] and not result.positive


def test_a_series_without_lungs_is_refused_not_called_nodule_free(detector: NoduleFusion) -> None:
    phantom = make_chest_phantom(np.random.default_rng(8), SHORT_SCAN, [])
    body = np.where(phantom.hu < -300.0, 40.0, phantom.hu)  # the same body with soft tissue where the lungs were
    with pytest.raises(DetectorInputError, match="mL of lung .* not a chest CT"):
        detector.detect(DetectorInput(volume=_volume(body, phantom.spacing)))


def test_thick_slices_are_flagged_in_the_result(detector: NoduleFusion) -> None:
    phantom = make_chest_phantom(np.random.default_rng(8), ChestAcquisition(rows=256, slices=26, slice_mm=5.0), [])
    notes = detector.detect(DetectorInput(volume=_volume(phantom.hu, phantom.spacing))).notes
    assert any("slices of 5.0 mm, thicker than the 1-2.5 mm" in note for note in notes)


def test_overlapping_thick_slices_are_flagged_by_their_thickness_not_their_spacing(detector: NoduleFusion) -> None:
    """A 10 mm reconstruction at 2 mm steps got no note: the slice spacing was read as the thickness."""
    phantom = make_chest_phantom(np.random.default_rng(8), SHORT_SCAN, [])
    volume = replace(_volume(phantom.hu, phantom.spacing), slice_thickness_mm=10.0)
    notes = detector.detect(DetectorInput(volume=volume)).notes
    assert any("slices of 10.0 mm, thicker than" in note for note in notes)


def test_lung_rads_follows_size_and_type() -> None:
    assert [lung_rads("solid", d, d, 0.1) for d in (5.0, 7.0, 10.0, 20.0)] == ["2", "3", "4A", "4B"]
    assert [lung_rads("part-solid", 12.0, c, 0.1) for c in (4.0, 7.0, 9.0)] == ["3", "4A", "4B"]
    assert [lung_rads("ground-glass", d, 0.0, 0.1) for d in (12.0, 31.0)] == ["2", "3"]
    assert lung_rads("solid", 10.0, 10.0, 0.8) == "4X" and lung_rads("solid", 4.0, 4.0, 0.9) == "2"


def test_suppression_keeps_the_best_of_close_candidates() -> None:
    points = np.array([[10, 10, 10], [11, 10, 10], [30, 30, 30]])
    assert suppress(points, np.array([0.4, 0.9, 0.5]), radius_mm=6.0) == [1, 2]


def test_the_lung_side_follows_the_patient_not_the_image_centre() -> None:
    """A reconstruction targeted on the right lung keeps the scanner's coordinates: before, its image centre was
    taken for the midline, and a right-lung nodule was reported in the left lung."""
    phantom = make_chest_phantom(np.random.default_rng(3), SHORT_SCAN, [])
    full = _volume(phantom.hu, phantom.spacing)
    columns = phantom.hu.shape[2]
    right_half = _volume(phantom.hu[:, :, : columns // 2 + 8], phantom.spacing)  # ends just past the midline
    shifted = _volume(np.pad(phantom.hu, ((0, 0), (0, 0), (0, 60)), constant_values=-1000.0), phantom.spacing)
    assert abs(body_midline_x(full) - full.voxel_to_patient((0, 0, (columns - 1) / 2))[0]) < 3.0
    assert body_midline_x(right_half) == 0.0  # the body is cut off: the isocentre
    assert body_midline_x(shifted) == pytest.approx(body_midline_x(full), abs=1.0)  # an off-centre image
    right_lung = (32.0, columns / 2.0, columns / 4.0)  # a quarter of the width from the patient's right
    for volume in (full, right_half, shifted):
        assert lung_side(volume, right_lung, body_midline_x(volume)) == "R"
    assert lung_side(right_half, (32.0, columns / 2.0, columns / 2.0 - 20), 0.0) == "R"


def test_a_lung_the_field_of_view_cuts_off_is_searched_and_the_cut_is_noted(detector: NoduleFusion) -> None:
    """Before, lung air touching the image's side counted as air outside the body: a field of view that cut the
    left lung's edge lost the whole left lung, its nodule with it, and said nothing."""
    phantom = next(p for seed in range(3, 30) if (p := make_chest_phantom(
        np.random.default_rng(seed), SHORT_SCAN, [NoduleSpec(12.0, "solid")])).nodules[0].center_voxel[2] > 200)
    truth = np.array(phantom.nodules[0].center_voxel)  # in the left lung (column 0 is the patient's right)
    cut = _volume(np.ascontiguousarray(phantom.hu[:, :, : int(truth[2]) + 20]), phantom.spacing)  # through the lung
    assert seal_cut_edges(cut.array < -400, 5).sum() < (cut.array < -400).sum()
    result = detector.detect(DetectorInput(volume=cut))
    assert any(np.linalg.norm((np.array(f.center_voxel) - truth) * phantom.spacing) < 4.0 for f in result.findings)
    assert "the field of view cuts a lung off at the patient's left: lung beyond the image's edge was not " \
           "searched" in result.notes
    assert cut_off_sides(_volume(phantom.hu, phantom.spacing)) == []
    tabled = phantom.hu.copy()
    tabled[:, -12:-6, :] = 200.0  # a table across the whole width, below the patient
    assert cut_off_sides(_volume(tabled, phantom.spacing)) == []


@pytest.mark.parametrize("name", ["nodule_fusion", "nodule_baseline"])
def test_a_series_with_gaps_between_its_slices_is_refused(name: str) -> None:
    """1.25 mm slices every 5 mm (a sequential protocol, or an average labelled with its source's thickness) passed
    the thin-slice rule; the nodules between the slices were not seen and false ones were reported as 4B and 4X."""
    gapped = replace(_volume(np.full((20, 64, 64), -1000.0, dtype=np.float32), (5.0, 0.7, 0.7)), slice_thickness_mm=1.25)
    with pytest.raises(DetectorInputError, match=r"slices of 1.25 mm every 5.00 mm leave gaps of 3.75 mm, in which a "
                                                 r"nodule lies unseen: read a contiguous reconstruction"):
        create_detector(name).detect(DetectorInput(volume=gapped))
    read = [replace(gapped, spacing_mm=(2.5, 0.7, 0.7), slice_thickness_mm=1.0),  # gaps of 1.5 mm
            replace(gapped, spacing_mm=(2.5, 0.7, 0.7), slice_thickness_mm=0.0)]  # a converter's 0: unknown
    for volume in read:
        try:
            create_detector(name).detect(DetectorInput(volume=volume))
        except DetectorInputError as exc:  # nodule_fusion refuses an all-air volume for its lack of lung
            assert "gaps" not in str(exc)
