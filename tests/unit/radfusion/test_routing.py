"""Routing rules are checked at start-up and pick detectors per series."""

from __future__ import annotations

import pytest

from radfusion.errors import ConfigError
from radfusion.routing import compile_routing
from radfusion.settings import RoutingRuleSettings, default_routing

HEAD = {"Modality": "CT", "BodyPartExamined": "HEAD", "SeriesDescription": "Brain 5mm"}


def test_default_rules_pick_one_detector_per_task() -> None:
    router = compile_routing(default_routing(["pacs"], ["ed"]))
    (match,) = router.select(HEAD)
    assert (match.detector, match.route.name, match.route.destinations) == ("ich_fusion", "head-ct-hemorrhage", ("pacs",))
    assert router.select({**HEAD, "SeriesDescription": "SCOUT"}) == []
    assert [m.detector for m in router.select({"Modality": "MG"})] == ["mammo_fusion"]


def test_a_detector_two_rules_name_runs_once_and_tells_the_targets_of_both() -> None:
    """The second rule's targets were dropped without a word: a rule paging the emergency department about every
    head CT's hemorrhage never paged it, because another rule already sent ich_fusion's results to the PACS."""
    rules = [RoutingRuleSettings(name="to-pacs", match={"Modality": "CT"}, detectors=["ich_fusion"],
                                 destinations=["pacs"], report_destinations=["ris"]),
             RoutingRuleSettings(name="page-ed", match={"BodyPartExamined": "HEAD"},
                                 detectors=["ich_fusion", "ich_baseline"], destinations=["pacs", "archive"],
                                 alert_channels=["ed"]),
             RoutingRuleSettings(name="chest", match={"BodyPartExamined": "CHEST"}, detectors=["ich_fusion"],
                                 alert_channels=["chest-team"])]
    fusion, baseline = compile_routing(rules).select(HEAD)
    assert (fusion.detector, fusion.route.name) == ("ich_fusion", "to-pacs")
    assert (fusion.destinations, fusion.report_destinations, fusion.alert_channels) == (
        ("pacs", "archive"), ("ris",), ("ed",))
    assert (baseline.detector, baseline.route.name, baseline.destinations, baseline.alert_channels) == (
        "ich_baseline", "page-ed", ("pacs", "archive"), ("ed",))


def test_a_contrast_enhanced_head_ct_is_not_sent_to_the_hemorrhage_detector() -> None:
    router = compile_routing(default_routing())
    head = {"Modality": "CT", "BodyPartExamined": "HEAD", "SeriesDescription": "Head 5mm"}
    for plain in ({}, {"ContrastBolusAgent": ""}, {"ContrastBolusAgent": None}):
        assert [m.detector for m in router.select({**head, **plain})] == ["ich_fusion"]
    assert router.select({**head, "ContrastBolusAgent": "Iohexol"}) == []  # enhancing vessels read as blood
    assert router.select({**head, "ContrastBolusAgent": "not named (ContrastBolusRoute IV)"}) == []


def test_a_series_without_body_part_is_routed_by_its_descriptions() -> None:
    """Body Part Examined is Type 3 and often empty: before, such head and chest CTs were never analysed."""
    router = compile_routing(default_routing())
    for described in ({"StudyDescription": "CT HEAD WO CONTRAST"}, {"SeriesDescription": "Brain 5mm"},
                      {"ProtocolName": "ROUTINE CRANIAL"}):
        assert [m.detector for m in router.select({"Modality": "CT", **described})] == ["ich_fusion"]
    assert [m.detector for m in router.select({"Modality": "CT", "StudyDescription": "CT Thorax", "SliceThickness":
                                               "1.0"})] == ["nodule_fusion"]
    assert router.select({"Modality": "CT", "BodyPartExamined": "ABDOMEN", "StudyDescription": "CT HEAD"}) == []
    assert router.select({"Modality": "CT", "StudyDescription": "CT ABDOMEN"}) == []


def test_only_a_thin_chest_reconstruction_goes_to_the_nodule_detector() -> None:
    router = compile_routing(default_routing())
    chest = {"Modality": "CT", "BodyPartExamined": "CHEST", "SeriesDescription": "Lung"}
    for thin in ({"SliceThickness": "1.0"}, {"SliceThickness": "3"}, {"SliceThickness": None}, {}):
        assert [m.detector for m in router.select({**chest, **thin})] == ["nodule_fusion"]
    for thick in ("5.0", "5mm", "5,0"):  # before: ~10 false nodules per clean chest
        assert router.select({**chest, "SliceThickness": thick}) == []


def test_unknown_detector_fails_with_a_suggestion() -> None:
    rule = RoutingRuleSettings(name="typo", match={"Modality": "CT"}, detectors=["ich_baselne"])
    with pytest.raises(ConfigError, match=r"routing\[0\] \(typo\)\.detectors\[0\]: unknown detector 'ich_baselne'.*"
                                          r"did you mean 'ich_baseline'"):
        compile_routing([rule])


def test_bad_regex_names_the_rule() -> None:
    rule = RoutingRuleSettings(name="bad", match={"SeriesDescription": "/[unclosed/"}, detectors=["ich_baseline"])
    with pytest.raises(ConfigError, match=r"routing\[0\] \(bad\)\.match"):
        compile_routing([rule])


@pytest.mark.parametrize(("agent", "routed"), [
    ("NONE", True), ("No contrast", True), ("n/a", True), ("No IV contrast", True), ("NONE.", True),
    ("W/O CONTRAST", True), ("no  contrast", True), ("Unenhanced", True), ("No agent", True),
    ("No contrast administered", True), ("Omnipaque 350", False), ("IV", False), ("Non-ionic contrast", False),
    ("Non-ionic contrast given", False)])
def test_a_word_for_no_contrast_still_reaches_the_hemorrhage_detector(agent: str, routed: bool) -> None:
    router = compile_routing(default_routing())
    head = {"Modality": "CT", "BodyPartExamined": "HEAD", "SeriesDescription": "Head 5mm", "ContrastBolusAgent": agent}
    assert [m.detector for m in router.select(head)] == (["ich_fusion"] if routed else [])


def test_a_rule_on_an_attribute_series_are_not_routed_by_is_refused_by_its_path() -> None:
    """A rule on Convolution Kernel was accepted, but the router never saw the kernel: every series read as having
    none, so a rule requiring a soft kernel silently stopped all hemorrhage analysis (and `status` said OK)."""
    rule = RoutingRuleSettings(name="soft", match={"Modality": "CT", "any": [{"PatientName": "/x/"}]},
                               detectors=["ich_fusion"])
    with pytest.raises(ConfigError, match=r"routing\[0\] \(soft\)\.match: match\.any\[0\]\.PatientName: 'PatientName' is "
                                          r"not an attribute series are routed by; they are: BodyPartExamined, .*"
                                          r"ConvolutionKernel, .*SOPClassUID"):
        compile_routing([rule])
    soft = RoutingRuleSettings(name="soft", match={"ConvolutionKernel": "/^H3/i"}, detectors=["ich_fusion"])
    assert [m.detector for m in compile_routing([soft]).select({**HEAD, "ConvolutionKernel": "H31s"})] == ["ich_fusion"]


def test_the_default_ct_rules_leave_out_dose_screens_projections_and_bone_kernels() -> None:
    """A trauma head CT's bone-kernel series, its MIPs and the dose screen (Secondary Capture, Modality CT) each
    became a job: a second SR with a false finding, and failed jobs."""
    router = compile_routing(default_routing())
    chest = {"Modality": "CT", "BodyPartExamined": "CHEST", "SeriesDescription": "Lung 1mm", "SliceThickness": "1"}
    for series, detector in ((HEAD, "ich_fusion"), (chest, "nodule_fusion")):
        for read in ({}, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2.1"},
                     {"ImageType": ["DERIVED", "SECONDARY", "AXIAL"]}, {"SeriesDescription": "Admiral 5mm"}):
            assert [m.detector for m in router.select({**series, **read})] == [detector]
        for left_out in ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, {"ImageType": ["DERIVED", "SECONDARY", "MIP"]},
                         {"ImageType": ["DERIVED", "PRIMARY", "VOLUME", "MAXIMUM"]}, {"SeriesDescription": "MIP 10 mm"},
                         {"SeriesDescription": "Ax MinIP"}):
            assert router.select({**series, **left_out}) == []
    for bone in ("BONEPLUS", "H70h", "Hr64", "J70h", "FC81", "EDGE"):
        assert router.select({**HEAD, "ConvolutionKernel": bone}) == []
    for soft in ("H31s", "Hr38", "J40s", "FC26", "STANDARD", "SOFT", "UB", "A", "YA"):
        assert [m.detector for m in router.select({**HEAD, "ConvolutionKernel": soft})] == ["ich_fusion"]
    assert [m.detector for m in router.select({**chest, "ConvolutionKernel": "B70f"})] == ["nodule_fusion"]
    for thickness, read in (("0.625", False), ("1.0", False), ("1.25", True), ("5", True), (None, True)):
        assert bool(router.select({**HEAD, "SliceThickness": thickness})) is read, thickness


def test_the_default_ct_rules_leave_out_every_projection_the_volume_loader_refuses() -> None:
    """Routing listed projections on its own: MAXIP, MIN_IP, SURFACE_RENDER ... passed it and became jobs that the
    loader refused."""
    from ai_engine.volume import PROJECTIONS

    router = compile_routing(default_routing())
    for value in sorted(PROJECTIONS):
        assert router.select({**HEAD, "ImageType": ["DERIVED", "SECONDARY", value.lower()]}) == [], value
