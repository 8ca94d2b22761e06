"""Analytes radfusion uses, their LOINC codes, and conversion of values into one canonical unit each.

Labs arrive from many LIS/EMR systems in many spellings of the same unit (platelets as
``10*3/uL``, ``K/uL`` or ``x10E9/L``); detectors and fusion see one name and one unit per
analyte. An unknown unit is an error, never a guess: a wrong factor on an INR or a
platelet count is worse than a missing value.
"""

from __future__ import annotations

from dataclasses import dataclass

from hl7_fhir.errors import Hl7FhirError

LOINC_SYSTEM = "http://loinc.org"


class UnitError(Hl7FhirError):
    """A value's analyte or unit is not in the conversion table."""


@dataclass(frozen=True)
class Analyte:
    """One analyte: canonical name and UCUM unit, accepted unit spellings with factors to canonical, and the range
    a real value lies in (canonical unit): outside it the value is a typo, a wrong unit or a test value."""

    name: str
    canonical_unit: str
    factors: dict[str, float]
    plausible: tuple[float, float]


def _unit_key(unit: str) -> str:
    """Spelling-insensitive key of a unit: micro signs as 'u', '^' as '*', no spaces, lower case."""
    return (unit.strip().replace("\u00b5", "u").replace("\u03bc", "u").replace("^", "*")
            .replace(" ", "").lower())


def _analyte(name: str, canonical_unit: str, factors: dict[str, float], plausible: tuple[float, float]) -> Analyte:
    return Analyte(name, canonical_unit, {_unit_key(u): f for u, f in factors.items()}, plausible)


ANALYTES: dict[str, Analyte] = {a.name: a for a in (
    _analyte("inr", "1", {"1": 1.0, "": 1.0, "{INR}": 1.0, "INR": 1.0, "ratio": 1.0, "{ratio}": 1.0}, (0.3, 30.0)),
    _analyte("platelets", "10*9/L", {
        "10*9/L": 1.0, "x10*9/L": 1.0, "x10E9/L": 1.0, "10E9/L": 1.0, "G/L": 1.0, "/nL": 1.0,
        "10*3/uL": 1.0, "x10*3/uL": 1.0, "10E3/uL": 1.0, "x10E3/uL": 1.0, "K/uL": 1.0,
        "thou/uL": 1.0, "10*3/mm3": 1.0, "/uL": 1e-3, "/mm3": 1e-3, "cells/uL": 1e-3, "{cells}/uL": 1e-3,
    }, (0.0, 3000.0)),
    _analyte("hemoglobin", "g/dL", {"g/dL": 1.0, "g/L": 0.1, "mg/dL": 1e-3, "mmol/L": 1.611}, (1.0, 30.0)),
    _analyte("creatinine", "mg/dL", {"mg/dL": 1.0, "umol/L": 1 / 88.42, "mmol/L": 1000 / 88.42}, (0.05, 40.0)),
    _analyte("cea", "ng/mL", {"ng/mL": 1.0, "ug/L": 1.0}, (0.0, 1e5)),
    _analyte("glucose", "mg/dL", {"mg/dL": 1.0, "mmol/L": 18.016}, (5.0, 3000.0)),
    _analyte("systolic_bp", "mm[Hg]", {"mm[Hg]": 1.0, "mmHg": 1.0, "kPa": 7.50062}, (30.0, 320.0)),
    _analyte("gcs", "{score}", {"{score}": 1.0, "score": 1.0, "1": 1.0, "": 1.0}, (3.0, 15.0)),
    _analyte("pack_years", "{pack-years}", {
        "{pack-years}": 1.0, "pack-years": 1.0, "{PackYears}": 1.0, "pack-yr": 1.0, "": 1.0,
    }, (0.0, 300.0)),
)}

# Coded (non-numeric) analytes: kept as codes, never converted.
CODED_ANALYTES: frozenset[str] = frozenset({"smoking_status"})

LOINC_NAMES: dict[str, str] = {
    "6301-6": "inr",          # INR in Platelet poor plasma by Coagulation assay
    "34714-6": "inr",         # INR in Blood by Coagulation assay
    "777-3": "platelets",     # Platelets [#/volume] in Blood by Automated count
    "26515-7": "platelets",   # Platelets [#/volume] in Blood
    "718-7": "hemoglobin",    # Hemoglobin [Mass/volume] in Blood
    "59260-0": "hemoglobin",  # Hemoglobin [Moles/volume] in Blood
    "2160-0": "creatinine",   # Creatinine [Mass/volume] in Serum or Plasma
    "14682-9": "creatinine",  # Creatinine [Moles/volume] in Serum or Plasma
    "2039-6": "cea",          # Carcinoembryonic Ag [Mass/volume] in Serum or Plasma
    "2345-7": "glucose",      # Glucose [Mass/volume] in Serum or Plasma
    "2339-0": "glucose",      # Glucose [Mass/volume] in Blood
    "8480-6": "systolic_bp",  # Systolic blood pressure
    "9269-2": "gcs",          # Glasgow coma score total
    "72166-2": "smoking_status",  # Tobacco smoking status
    "8664-5": "pack_years",   # Cigarettes smoked total (pack per year)
}


PANELS: dict[str, tuple[str, ...]] = {  # LOINC panel -> analytes it may carry as components
    "85354-9": ("systolic_bp",),  # Blood pressure panel with all children optional (US Core)
    "55284-4": ("systolic_bp",),  # Blood pressure systolic and diastolic
}


def panel_codes(name: str) -> list[str]:
    """LOINC codes of the panels whose components may carry analyte ``name`` (searched with its own codes)."""
    return [code for code, analytes in PANELS.items() if name in analytes]


def analyte_for_code(code: str) -> str | None:
    """Canonical analyte name of a LOINC code, or None when radfusion does not use it."""
    return LOINC_NAMES.get(code.strip())


def loinc_codes(name: str) -> list[str]:
    """Every LOINC code that maps to analyte ``name`` (for FHIR searches)."""
    codes = [code for code, analyte in LOINC_NAMES.items() if analyte == name]
    if not codes:
        raise UnitError(f"analyte {name!r} has no LOINC code; known: {sorted(set(LOINC_NAMES.values()))}")
    return codes


def normalize(name: str, value: float, unit: str) -> tuple[float, str]:
    """``value`` in ``unit`` converted to the canonical unit of analyte ``name``: (value, canonical unit); UnitError
    for a unit not accepted or a value outside the analyte's plausible range."""
    analyte = ANALYTES.get(name)
    if analyte is None:
        raise UnitError(f"analyte {name!r} is not numeric-convertible; known: {sorted(ANALYTES)}")
    factor = analyte.factors.get(_unit_key(unit))
    if factor is None:
        raise UnitError(f"unit {unit!r} is not accepted for {name} (canonical {analyte.canonical_unit!r})")
    low, high = analyte.plausible
    if not low <= value * factor <= high:  # NaN and infinities too
        raise UnitError(f"{name} lies outside {low:g}-{high:g} {analyte.canonical_unit}: not a real value")
    return value * factor, analyte.canonical_unit
