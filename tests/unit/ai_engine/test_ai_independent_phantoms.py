"""The deep detectors on plain-geometry phantoms that share no code with their training generators."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ai_engine.detectors.base import DetectorInput
from ai_engine.detectors.mammo_fusion import CHANNELS, mass_region
from ai_engine.detectors.registry import create_detector
from ai_engine.errors import DetectorInputError
from ai_engine.results import FindingType

from tests.unit.ai_engine.independent_phantoms import Sphere, breast_view, chest, head, voxel_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEFT_BLEED = Sphere((30.0, 10.0, 20.0), 30.6, 65.0)  # 15 mL, in the left hemisphere (+x is the patient's left)
SOLID = Sphere((60.0, -10.0, 10.0), 8.0, 30.0)
GROUND_GLASS = Sphere((-70.0, 30.0, -20.0), 12.0, -550.0)


def test_ich_fusion_finds_a_plain_bleed_on_its_side_and_calls_no_bone_blood() -> None:
    volume, blood = head(1, (LEFT_BLEED,))
    result = create_detector("ich_fusion").detect(DetectorInput(volume=volume))
    assert result.positive
    largest = result.findings[0]
    truth_ml = float(blood.sum()) * volume.voxel_volume_ml
    assert largest.finding_type is FindingType.HEMORRHAGE and largest.location.startswith("left")
    assert largest.attributes["subtype"] == "intraparenchymal"
    assert 0.8 * truth_ml < largest.volume_ml < 1.25 * truth_ml
    assert largest.mask[blood].mean() > 0.9
    assert all(f.measurements["mean_hu"] < 110.0 for f in result.findings), [
        (f.location, f.measurements["mean_hu"]) for f in result.findings]  # bundle 1.1.0: skull base, 1085 HU


@pytest.mark.parametrize("name", ["ich_fusion", "ich_baseline"])
def test_both_ich_detectors_refuse_a_chest_instead_of_reading_its_bones_as_blood(name: str) -> None:
    volume = chest(1)  # routed by a careless rule: before, a ~260 mL "hemorrhage" of bone (ich_baseline: no check)
    with pytest.raises(DetectorInputError, match="not a head CT"):
        create_detector(name).detect(DetectorInput(volume=volume))


@pytest.mark.parametrize("name", ["ich_fusion", "ich_baseline"])
@pytest.mark.parametrize(("agent", "refused"), [("Iohexol 350", True), ("NONE", False), ("No IV contrast", False),
                                                ("", False)])
def test_both_ich_detectors_refuse_a_series_that_declares_contrast(agent: str, refused: bool, name: str) -> None:
    volume, _ = head(1)  # a hand-written rule may route any head: a contrast head drew a 13.5 mL "subdural" at 1.000
    inputs = DetectorInput(volume=dataclasses.replace(volume, contrast_agent=agent))
    if refused:
        with pytest.raises(DetectorInputError, match="non-contrast head CT.*Iohexol 350"):
            create_detector(name).detect(inputs)
    else:
        assert not create_detector(name).detect(inputs).positive


def test_ich_fusion_calls_a_plain_clean_head_negative() -> None:
    volume, _ = head(1)
    result = create_detector("ich_fusion").detect(DetectorInput(volume=volume))
    assert not result.positive and result.findings == []


def test_nodule_fusion_finds_a_solid_and_a_ground_glass_nodule_with_their_size() -> None:
    volume = chest(2, (SOLID, GROUND_GLASS))
    findings = create_detector("nodule_fusion").detect(DetectorInput(volume=volume)).findings
    for nodule, composition in ((SOLID, "solid"), (GROUND_GLASS, "ground-glass")):
        truth = voxel_of(volume, nodule.center_mm)
        distance = [np.linalg.norm((np.array(f.center_voxel) - truth) * volume.spacing_mm) for f in findings]
        found = findings[int(np.argmin(distance))]
        assert min(distance) < 4.0 and found.score > 0.9
        assert found.diameter_mm == pytest.approx(nodule.diameter_mm, rel=0.2)
        assert found.attributes["composition"] == composition


@pytest.mark.xfail(strict=True, reason="known weakness of nodule_fusion 1.4.1 (model card): a false 2.2 mm nodule "
                                       "at 0.73, above its 0.65 threshold, on this clean chest; seeds 1 and 4 of "
                                       "1-4 draw one each")
def test_nodule_fusion_reports_nothing_on_a_plain_clean_chest() -> None:
    result = create_detector("nodule_fusion").detect(DetectorInput(volume=chest(1)))
    assert result.findings == []



@pytest.mark.parametrize("diameter_mm", [8.0, 25.0])
def test_mammo_fusion_outlines_a_round_mass_at_its_own_size_in_both_views(diameter_mm: float) -> None:
    """The outline behind a mass finding's mask and diameter (the classifier calls these smooth round masses
    benign, so the exam lists no finding; the outline is checked where the detector draws it)."""
    exam = (("R", "CC"), ("R", "MLO"), ("L", "CC"), ("L", "MLO"))
    views, centres = zip(*(breast_view(index, side, view, diameter_mm if side == "L" else 0.0)
                           for index, (side, view) in enumerate(exam)), strict=True)
    detector = create_detector("mammo_fusion")
    analysis = detector.analyse(DetectorInput(views=list(views)))
    for index in (2, 3):
        prepared = analysis.views[index]
        at_mass = [c for c in analysis.candidates if c.view_index == index and CHANNELS[c.channel] is FindingType.MASS
                   and np.hypot(*np.subtract(prepared.to_source(c.row, c.col), centres[index])) * 0.1 < diameter_mm / 2]
        assert at_mass and at_mass[0].score > 0.9
        outline = mass_region(prepared, analysis.probabilities[index][at_mass[0].channel], at_mass[0],
                              detector.mass_outline)
        diameter = 2.0 * np.sqrt(prepared.map_to_source(outline).sum() / np.pi) * 0.1
        # before (the probability blob): 23-26 mm for the 8 mm mass, 34-36 mm for the 25 mm one
        assert diameter == pytest.approx(diameter_mm, rel=0.2)
