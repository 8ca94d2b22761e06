"""Unit normalization: every accepted spelling lands on the canonical unit with the right factor."""

from __future__ import annotations

import pytest

from hl7_fhir.units import UnitError, analyte_for_code, loinc_codes, normalize


@pytest.mark.parametrize("name, value, unit, expected, canonical", [
    ("platelets", 150, "10*3/uL", 150, "10*9/L"),
    ("platelets", 150, "10^3/µL", 150, "10*9/L"),
    ("platelets", 150, "K/uL", 150, "10*9/L"),
    ("platelets", 150, "x10E9/L", 150, "10*9/L"),
    ("platelets", 150000, "/uL", 150, "10*9/L"),
    ("hemoglobin", 135, "g/L", 13.5, "g/dL"),
    ("hemoglobin", 8.4, "mmol/L", 13.53, "g/dL"),
    ("creatinine", 88.42, "µmol/L", 1.0, "mg/dL"),
    ("cea", 4.2, "ug/L", 4.2, "ng/mL"),
    ("glucose", 5.5, "mmol/L", 99.09, "mg/dL"),
    ("systolic_bp", 16, "kPa", 120.01, "mm[Hg]"),
    ("inr", 2.5, "{INR}", 2.5, "1"),
    ("gcs", 14, "{score}", 14, "{score}"),
])
def test_normalize(name: str, value: float, unit: str, expected: float, canonical: str) -> None:
    assert normalize(name, value, unit) == (pytest.approx(expected, abs=0.01), canonical)


def test_unknown_unit_or_analyte_is_an_error_that_names_them() -> None:
    with pytest.raises(UnitError, match="unit 'mg/dL' is not accepted for platelets"):
        normalize("platelets", 150, "mg/dL")
    with pytest.raises(UnitError, match="analyte 'bilirubin'"):
        normalize("bilirubin", 1.0, "mg/dL")


@pytest.mark.parametrize("name, value, unit", [
    ("gcs", 150, "{score}"), ("systolic_bp", -120, "mm[Hg]"), ("inr", float("inf"), "{INR}"),
    ("inr", float("nan"), "{INR}"), ("platelets", 150, "/uL")])  # 0.15 x 10^9/L: fine, below
def test_a_value_no_patient_can_have_is_refused(name: str, value: float, unit: str) -> None:
    """Before, GCS 150 and a systolic pressure of -120 were stored, and an infinite INR became the newest INR."""
    if (name, unit) == ("platelets", "/uL"):
        assert normalize(name, value, unit)[0] == pytest.approx(0.15)
        return
    with pytest.raises(UnitError, match=f"{name} lies outside .*: not a real value"):
        normalize(name, value, unit)


def test_platelets_counted_in_cells_per_microlitre_are_read() -> None:
    assert normalize("platelets", 40000, "cells/uL") == (pytest.approx(40.0), "10*9/L")


def test_loinc_table() -> None:
    assert [analyte_for_code(c) for c in ("6301-6", "34714-6", "777-3", "26515-7", "718-7", "2160-0",
                                          "2039-6", "8480-6", "9269-2", "72166-2")] == [
        "inr", "inr", "platelets", "platelets", "hemoglobin", "creatinine", "cea", "systolic_bp", "gcs",
        "smoking_status"]
    assert analyte_for_code("789-8") is None
    assert loinc_codes("inr") == ["6301-6", "34714-6"]
