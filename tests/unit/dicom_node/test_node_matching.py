"""Series-matching rules: every pattern form, combinators, and compile errors naming the path."""

from __future__ import annotations

import pytest

from dicom_node.errors import RuleError
from dicom_node.matching import compile_match

HEAD_CT = {
    "Modality": "CT", "BodyPartExamined": "HEAD", "SeriesDescription": " Head 5mm ",
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "SliceThickness": 5.0, "Rows": 512,
    "Manufacturer": "SIEMENS", "SeriesNumber": 3, "ProtocolName": None,
}


def matches(spec: dict, attributes: dict | None = None) -> bool:
    return compile_match(spec).matches(HEAD_CT if attributes is None else attributes)


@pytest.mark.parametrize(("spec", "expected"), [
    ({"Modality": "ct"}, True),
    ({"SeriesDescription": "head 5MM"}, True),
    ({"Modality": "MR"}, False),
    ({"ImageType": "axial"}, True),
    ({"ImageType": "LOCALIZER"}, False),
    ({"ImageType": "!LOCALIZER"}, True),
    ({"ImageType": "!primary"}, False),
    ({"SeriesDescription": "/5mm/"}, True),
    ({"SeriesDescription": "/5MM/"}, False),
    ({"SeriesDescription": "/5MM/i"}, True),
    ({"SeriesDescription": "!/scout|localizer/i"}, True),
    ({"SeriesDescription": "/^Head/"}, True),
    ({"BodyPartExamined": ["CHEST", "head"]}, True),
    ({"BodyPartExamined": ["CHEST", "ABDOMEN"]}, False),
    ({"SliceThickness": {"min": 0.5, "max": 5}}, True),
    ({"SliceThickness": {"max": 4.9}}, False),
    ({"SliceThickness": {"min": 5}}, True),
    ({"Rows": 512}, True),
    ({"Rows": 256}, False),
    ({"Manufacturer": {"not": "/ge/i"}}, True),
    ({"Manufacturer": {"not": ["SIEMENS", "GE"]}}, False),
    ({"Modality": "CT", "BodyPartExamined": "CHEST"}, False),
])
def test_pattern_forms(spec: dict, expected: bool) -> None:
    assert matches(spec) is expected


@pytest.mark.parametrize(("spec", "expected"), [
    ({"ProtocolName": "x"}, False),            # None counts as missing
    ({"ProtocolName": "!x"}, True),
    ({"ProtocolName": {"not": "/x/"}}, True),
    ({"ViewPosition": "/.*/"}, False),          # absent key
    ({"ViewPosition": {"min": 0}}, False),
    ({"ViewPosition": "!CC"}, True),
])
def test_missing_attribute_fails_positive_and_satisfies_negated(spec: dict, expected: bool) -> None:
    assert matches(spec) is expected


def test_range_ignores_non_numeric_values() -> None:
    assert not matches({"SliceThickness": {"min": 1}}, {"SliceThickness": "thin"})


def test_nested_combinators() -> None:
    spec = {"Modality": "CT", "any": [{"Manufacturer": "/ge/i"},
                                      {"all": [{"Manufacturer": "SIEMENS"}, {"SeriesNumber": {"min": 2}}]}]}
    assert matches(spec)
    assert not matches(spec, {**HEAD_CT, "SeriesNumber": 1})
    assert matches({"all": [{"Modality": "CT"}, {"Rows": 512}]})
    assert not matches({"any": [{"Modality": "MR"}, {"Rows": 256}]})


@pytest.mark.parametrize(("spec", "fragment"), [
    ({"SeriesDescription": "/(unclosed/"}, "match.SeriesDescription: bad regex '(unclosed'"),
    ({"SliceThickness": {"min": 5, "max": 1}}, "match.SliceThickness: min 5.0 > max 1.0"),
    ({"any": [{"Modality": "CT"}, {"SeriesDescripton": "x"}]}, "match.any[1].SeriesDescripton: 'SeriesDescripton' is not a DICOM keyword"),
    ({"SliceThickness": {"min": "thin"}}, "match.SliceThickness.min: range bound 'thin' is not a number"),
    ({"Modality": {"like": "CT"}}, "match.Modality: a mapping pattern is"),
    ({"all": [{"Modality": ["CT", {"not": {"max": "x"}}]}]}, "match.all[0].Modality[1].not.max"),
    ({"any": "CT"}, "match.any: expected a non-empty list"),
    ({"any": ["CT"]}, "match.any[0]: expected a mapping"),
    ({"Modality": True}, "match.Modality: unsupported pattern"),
    ({}, "match: empty mapping"),
    ({"Modality": []}, "match.Modality: empty list"),
])
def test_compile_errors_name_the_path_and_reason(spec: dict, fragment: str) -> None:
    with pytest.raises(RuleError) as caught:
        compile_match(spec)
    assert fragment in str(caught.value)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(RuleError, match="expected a mapping"):
        compile_match(["Modality"])
