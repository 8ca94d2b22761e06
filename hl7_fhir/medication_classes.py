"""Medication classes fusion cares about (anticoagulants, antiplatelets) and how codings are matched.

A medication belongs to a class when one of its codings is an ATC code under one of the
class's prefixes, an RxNorm ingredient code of the class, or (for EMRs that send product
codes or text only) its display/text names one of the class's ingredients.
"""

from __future__ import annotations

import re

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ATC_SYSTEM = "http://www.whocc.no/atc"
RXNORM_SYSTEM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@dataclass(frozen=True)
class MedicationClass:
    """A named class: ATC prefixes, RxNorm ingredient codes, ingredient names (lower case)."""

    name: str
    atc_prefixes: tuple[str, ...]
    rxnorm_codes: frozenset[str]
    ingredients: tuple[str, ...]


ANTICOAGULANTS = MedicationClass(
    "anticoagulant",
    ("B01AA", "B01AB", "B01AE", "B01AF"),  # vitamin K antagonists, heparins, thrombin and Xa inhibitors
    frozenset({"11289", "1364430", "1114195", "1546356", "1037042", "5224", "67108", "1599538"}),
    ("warfarin", "apixaban", "rivaroxaban", "dabigatran", "heparin", "enoxaparin", "edoxaban"),
)
ANTIPLATELETS = MedicationClass(
    "antiplatelet",
    ("B01AC",),  # platelet aggregation inhibitors excluding heparin
    frozenset({"1191", "32968", "1116632", "613391"}),
    ("aspirin", "acetylsalicylic acid", "clopidogrel", "ticagrelor", "prasugrel"),
)
DEFAULT_MEDICATION_CLASSES: tuple[MedicationClass, ...] = (ANTICOAGULANTS, ANTIPLATELETS)


CATHETER_FLUSH = re.compile(r"\b(flush|lock)\b")  # "heparin lock flush 10 units/mL"


def classify(codings: Iterable[tuple[str, str, str]], text: str,
             classes: Sequence[MedicationClass] = DEFAULT_MEDICATION_CLASSES) -> str:
    """The first class matching (system, code, display) codings or the text; '' when none does."""
    codings = list(codings)
    words = " ".join([text, *(display for _, _, display in codings)]).lower()
    if CATHETER_FLUSH.search(words):  # a line flush or lock is not therapeutic anticoagulation
        return ""
    for med_class in classes:
        for system, code, _ in codings:
            if system == ATC_SYSTEM and code.upper().startswith(med_class.atc_prefixes):
                return med_class.name
            if system == RXNORM_SYSTEM and code in med_class.rxnorm_codes:
                return med_class.name
        if any(ingredient in words for ingredient in med_class.ingredients):
            return med_class.name
    return ""
