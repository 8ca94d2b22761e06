"""mammo_fusion on phantoms: an obvious cancer is found in both views and matched; an empty exam reports nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ai_engine.detectors.base import DetectorInput
from ai_engine.detectors.mammo_fusion import (
    Candidate,
    birads_suggestion,
    crop_malignancy,
    prepare_view,
    select_findings,
    view_maps,
)
from ai_engine.detectors.registry import create_detector
from ai_engine.errors import DetectorInputError
from ai_engine.mammo import MammoView
from ai_engine.results import FindingType
from ai_engine.synthetic.cohorts.mammo import generate_case
from ai_engine.synthetic.mammo_phantom import Acquisition, BreastSpec, PlacedLesion, render_breast

ACQ = Acquisition(pixel_spacing_mm=0.4)


def _exam(left_lesions: tuple[PlacedLesion, ...], seed: int = 5) -> tuple[DetectorInput, list]:
    rng = np.random.default_rng(seed)
    views, truths = [], []
    for side, lesions in (("L", left_lesions), ("R", ())):
        rendered = render_breast(rng, BreastSpec(side, "B", lesions), ACQ)
        offset = 0 if side == "L" else 2
        truths += [(t.view_index + offset, t) for t in rendered.truths]
        for index, (image, view) in enumerate(zip(rendered.images, ("CC", "MLO"), strict=True)):
            views.append(MammoView(array=image, pixel_spacing_mm=(0.4, 0.4), laterality=side, view=view,
                                   sop_instance_uid=f"1.2.3.{offset + index}", path=Path("phantom.dcm"),
                                   series_instance_uid="1.2.3", study_instance_uid="1.2"))
    return DetectorInput(views=views), truths


@pytest.fixture(scope="module")
def detector():  # noqa: ANN201 - the detector class is imported lazily by the registry
    return create_detector("mammo_fusion")


def test_obvious_spiculated_mass_is_found_in_both_views_and_matched(detector) -> None:  # noqa: ANN001
    mass = PlacedLesion("mass", "spiculated", 0.5, 0.2, -0.3, 18.0, 420.0, detail_seed=3)
    inputs, truths = _exam((mass,))
    result = detector.detect(inputs)
    masses = [f for f in result.findings if f.finding_type is FindingType.MASS]
    for view_index, truth in truths:
        near = [f for f in masses if f.view_index == view_index
                and np.hypot(*np.subtract(f.center_voxel, truth.center_voxel)) * 0.4 < 10.0]
        assert near, f"no mass found near the truth in view {view_index}"
        assert near[0].attributes["corresponding_view_index"] == str(1 - view_index)
        assert near[0].laterality == inputs.views[view_index].laterality
        assert near[0].heatmap is not None and near[0].heatmap.shape == inputs.views[view_index].array.shape
        assert near[0].mask[int(truth.center_voxel[0]), int(truth.center_voxel[1])]
        assert near[0].diameter_mm == pytest.approx(truth.size, rel=0.25)  # before: 29-30 mm, the map's blob
        assert set(near[0].modality_weights) == {"image", "clinical", "text"}
    assert result.positive and result.case_score > 0.5
    assert "trained" in result.algorithm.kind


def test_empty_exam_reports_no_findings_and_a_low_probability(detector) -> None:  # noqa: ANN001
    result = detector.detect(_exam(())[0])
    assert result.findings == []
    assert not result.positive
    assert any("BI-RADS-style suggestion: 1" in note for note in result.notes)


@pytest.mark.parametrize("kept", [(0, 1), (2, 3), (0,), (3,)], ids=["L only", "R only", "L CC only", "R MLO only"])
def test_an_incomplete_normal_exam_stays_negative_and_says_what_is_missing(detector, kept) -> None:  # noqa: ANN001
    inputs = _exam(())[0]  # before: a missing breast read as a certain asymmetry, probability ~1.0
    result = detector.detect(DetectorInput(views=[inputs.views[i] for i in kept]))
    assert not result.positive and result.findings == []
    assert any(note.startswith("incomplete exam (") for note in result.notes)
    assert not any("incomplete" in note for note in detector.detect(inputs).notes)


def test_a_blank_view_is_refused_not_read_as_malignant(detector) -> None:  # noqa: ANN001
    inputs = _exam(())[0]
    inputs.views[3].array = np.zeros_like(inputs.views[3].array)  # before: probability 1.000 for a blank exam
    with pytest.raises(DetectorInputError, match="shows no breast"):
        detector.detect(inputs)


@pytest.mark.parametrize("shape", ["round object in the middle", "body from side to side"])
def test_an_image_that_is_not_placed_as_a_breast_is_refused(detector, shape: str) -> None:  # noqa: ANN001
    """Before: a head-CT slice or a chest radiograph stored as MG was read as a breast (BI-RADS 5, 90-110 mm masses)."""
    inputs = _exam(())[0]
    rows, cols = np.indices(inputs.views[0].array.shape)
    if shape == "round object in the middle":  # like a head-CT slice: touches no edge
        image = np.where(np.hypot(rows - rows.mean(), cols - cols.mean()) < rows.shape[0] / 3, 2000.0, 100.0)
    else:  # like a chest radiograph: the body reaches both side edges
        image = np.where(rows > rows.shape[0] / 10, 2000.0, 100.0)
    inputs.views[0].array = image.astype(np.float32)
    with pytest.raises(DetectorInputError, match="is this image a mammogram"):
        detector.detect(inputs)


def test_probability_maps_to_birads_ranges() -> None:
    assert birads_suggestion(0.01, has_findings=False) == "1"
    assert birads_suggestion(0.01, has_findings=True) == "2"
    assert [birads_suggestion(p, True) for p in (0.05, 0.3, 0.8, 0.97)] == ["4A", "4B", "4C", "5"]


def test_a_negative_exam_lists_no_findings_so_its_suggestion_is_never_a_category_4() -> None:
    params = {"positive_threshold": 0.245, "report_threshold": 0.5, "max_findings": 4}
    strong = Candidate(0, 0, 0.95, 10.0, 10.0, 40.0, 30.0, np.zeros((4, 4), bool))
    assert select_findings([strong], 0.2, params) == []  # before: listed from 0.1, with "4B" beside a negative call
    assert select_findings([strong], 0.3, params) == [strong]
    assert birads_suggestion(0.2, has_findings=False) == "1"


def test_prepared_view_puts_the_chest_wall_left_and_ignores_grey_level_scale() -> None:
    case = generate_case(3)
    left = prepare_view(case.views()[0][2], 0.4)
    right = prepare_view(case.views()[2][2], 0.4)
    scaled = prepare_view(case.views()[0][2] * 3.0 + 100.0, 0.4)
    assert not left.flipped and right.flipped
    assert left.breast[:, 0].sum() > left.breast[:, -1].sum() and right.breast[:, 0].sum() > 0
    np.testing.assert_allclose(scaled.channels, left.channels, atol=2e-3)


def test_view_maps_flip_average_is_symmetric_up_down() -> None:
    """A network that favours the upper rows gives an up-down symmetric map of a symmetric view once averaged."""
    ramp = np.linspace(2.0, -2.0, 32, dtype=np.float32)[:, None]

    def run(views: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(views + ramp)))

    views = np.full((1, 2, 32, 16), 0.3, dtype=np.float32)
    plain, averaged = view_maps(run, views, False), view_maps(run, views, True)
    assert not np.allclose(plain, plain[:, :, ::-1])
    assert np.allclose(averaged, averaged[:, :, ::-1], atol=1e-6)
    assert averaged.shape == views.shape


def test_crop_malignancy_dihedral_average_visits_every_orientation() -> None:
    """A 'classifier' that reads the top-left pixel sees each corner twice among the eight orientations."""
    crops = np.zeros((2, 1, 8, 8), dtype=np.float32)
    crops[:, 0, 0, 0], crops[:, 0, 0, -1], crops[:, 0, -1, 0], crops[:, 0, -1, -1] = 1.0, 2.0, 3.0, 4.0
    crops[1] *= 10.0

    def top_left(c: np.ndarray) -> np.ndarray:
        return c[:, 0, 0, 0].copy()

    assert crop_malignancy(top_left, crops, False).tolist() == [1.0, 10.0]
    assert crop_malignancy(top_left, crops, True) == pytest.approx([2.5, 25.0])
