"""Clinical inputs of the fusion models: which features each task reads and how they are encoded.

``CLINICAL_FEATURES[task]`` is the ordered feature list of a task (``Task`` member; the short
names "ich", "nodule", "mammo" are accepted everywhere a task is taken). Each
``ClinicalFeature`` says where its value lives in a ``hl7_fhir.context.ClinicalContext``:

- ``"age"`` / ``"sex"``: ``context.age_years`` / ``context.sex`` (1 = male, 0 = female; DICOM
  "M"/"F" and FHIR "male"/"female" both accepted);
- ``"lab"``: ``context.labs[keys[0]].value`` (canonical analyte names and units of
  ``hl7_fhir.units.ANALYTES``);
- ``"medication"``: 1 when any ``context.medications[*].category`` is in ``keys`` (categories
  of ``hl7_fhir.medication_classes``), else 0;
- ``"condition"`` / ``"family_history"``: 1 when any item of ``context.conditions`` /
  ``context.family_history`` has its code (or an alternate code) in ``keys``, or a key in its
  lower-cased display and none of the feature's ``exclude`` words ("benign neoplasm" is no
  prior cancer, "BRCA1 gene mutation negative" no carrier);
- ``"procedure"``: the same over ``context.procedures`` and ``context.conditions`` (a prior biopsy
  is recorded either way);
- ``"coded"``: ``context.coded_observations[keys[0]]`` mapped through ``levels`` (code or
  lower-cased display substring -> value); when that item is absent and ``text_keywords`` is
  set, the feature is read from the free text (reason for exam + notes) as 1 if a keyword
  occurs outside a negation ("no trauma", "denies fall", "rule out trauma"; a negation ends at punctuation, at
  "after"/"but" or at a verb that starts a clause, so "no LOC, fall from ladder", "denies headache, fell" and "no
  LOC after fall" are falls, except that it reaches every item of a list of three or more closed by ", or"/",
  nor": "denies trauma, falls, or anticoagulant use") and outside the feature's ``text_exclude`` phrases ("high
  fall risk", "cerebrovascular accident"), 0 otherwise.

Missing data is explicit, never imputed: ``encode_clinical`` returns the values and a
``present`` mask; a missing value is 0 in ``values`` and False in ``present``. A list-type
feature (medication, condition, procedure, family history) is present when the record was reached
(``context.status`` is not "unavailable") and its FHIR sections did not fail (no entry of
``context.errors`` starts with a section name; a "procedure" feature reads two); absence of a
matching item then means 0. A ``levels`` value of NaN marks an answer that says nothing ("unknown
if ever smoked"): the feature is missing.
Numeric values are normalised as ``(f(x) - center) / scale`` with ``f = log`` when ``log``,
clipped to +-5.

``encode_note`` turns free text into a fixed-size, deterministic hashed bag of terms and term
bigrams (BLAKE2b hashing with a sign bit, L2-normalised): no vocabulary, no download.
``context_text`` is the text a detector feeds it (reason for exam and notes). Which terms count
is the note encoding (``NOTE_ENCODINGS``). Each task's training module says which one its heads
learn (its ``NOTE_ENCODING``), and a bundle names it in ``inference.json`` (``note_encoding``,
read by ``note_encoding_of``) so that serving encodes notes as the heads learned them:

- ``"hashed-words"``: words only. Numbers in a note repeat values the record holds as
  structured data (age, GCS, pack-years), and hashed one by one each value is a bucket of its
  own that the heads can only overfit. Mammography heads since bundle 2.3.0: on its validation
  exams (1,120 of seed 5555) the dynamic head's AUC rose from 0.926 to 0.934;
- ``"hashed-terms"``: words and numbers; the ICH and nodule heads, and every bundle whose
  ``inference.json`` names no encoding. (ICH heads refitted on words only scored validation AUC
  0.970 against 0.977, session 24, so ICH keeps it.)

A bundle may carry a note vocabulary (``NoteVocabulary``: the terms its heads learned and the fewest any
learned note held; ``ai_engine.training.note_vocabulary`` writes it for synthetic bundles). Serving then
leaves out every other term and reads a note with too few known terms as no note.

Cohort generators must fill ClinicalContext objects the way the gatherer does, so that
these specs read them: labs under the canonical analyte names, medication categories,
condition/family-history codes with a display, coded observations under their analyte name.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ai_engine.errors import AiEngineError
from ai_engine.results import Task

if TYPE_CHECKING:
    from hl7_fhir.context import ClinicalContext, CodedItem

Source = Literal["age", "sex", "lab", "medication", "condition", "procedure", "family_history", "coded"]
CLIP = 5.0
NOTE_DIM = 64
WORDS, TERMS = r"[a-z]+", r"[a-z]+|\d+(?:\.\d+)?"
NOTE_ENCODINGS: dict[str, str] = {"hashed-words": WORDS, "hashed-terms": TERMS}  # encoding -> term pattern
UNNAMED_NOTE_ENCODING = "hashed-terms"  # of a bundle whose inference.json names none
TASK_ALIASES: dict[str, Task] = {"ich": Task.ICH, "nodule": Task.LUNG_NODULE, "mammo": Task.MAMMOGRAPHY}
_SECTIONS_OF: dict[str, tuple[str, ...]] = {"medication": ("medications",), "condition": ("conditions",),
                                            "procedure": ("procedures", "conditions"),
                                            "family_history": ("family_history",)}


class ClinicalFeatureError(AiEngineError):
    """A clinical feature spec or task name that the encoder cannot use."""


@dataclass(frozen=True)
class ClinicalFeature:
    """One clinical input: where it is read from in a ClinicalContext and how it is normalised."""

    name: str
    source: Source
    keys: tuple[str, ...] = ()
    center: float = 0.0
    scale: float = 1.0
    log: bool = False
    levels: dict[str, float] = field(default_factory=dict)
    text_keywords: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    text_exclude: tuple[str, ...] = ()  # regular expressions of phrases that hold a keyword but say otherwise


def resolve_task(task: Task | str) -> Task:
    """The Task of a Task, its value ("lung_nodule") or a short name ("nodule")."""
    if isinstance(task, Task):
        return task
    if task in TASK_ALIASES:
        return TASK_ALIASES[task]
    try:
        return Task(task)
    except ValueError:
        known = sorted([*TASK_ALIASES, *(t.value for t in Task)])
        raise ClinicalFeatureError(f"unknown task {task!r}; known: {known}") from None


TRAUMA_WORDS = ("fall", "falls", "fallen", "fell", "assault", "assaulted", "collision", "mvc", "mva", "rta", "struck",
                "trauma", "hit head", "accident", "injury")
NOT_TRAUMA = (r"cerebrovascular accident", r"falls? risk", r"risk (?:of|for) falls?", r"falls? precautions?")
UNKNOWN = math.nan
SMOKING_LEVELS = {  # US Core smoking status codes (SNOMED CT, LOINC answers of 72166-2), then display words in order
    "449868002": 1.0, "428041000124106": 1.0, "77176002": 1.0, "428071000124103": 1.0, "428061000124105": 1.0,
    "LA18976-3": 1.0, "LA18977-1": 1.0, "LA18980-5": 1.0, "LA18981-3": 1.0, "LA18982-1": 1.0,  # current
    "8517006": 0.5, "LA15920-4": 0.5,  # former
    "266919005": 0.0, "LA18978-9": 0.0,  # never
    "266927001": UNKNOWN, "LA18979-7": UNKNOWN,  # unknown if ever smoked
    "unknown": UNKNOWN, "non-smoker": UNKNOWN, "never": 0.0, "former": 0.5, "ex-smoker": 0.5, "current": 1.0,
    "smoke": 1.0}
NOT_A_DIAGNOSIS = ("benign", "screening", "negative", "family history", "suspected", "ruled out")

CLINICAL_FEATURES: dict[Task, tuple[ClinicalFeature, ...]] = {
    Task.ICH: (
        ClinicalFeature("age", "age", center=60.0, scale=20.0),
        ClinicalFeature("sex", "sex"),
        ClinicalFeature("inr", "lab", ("inr",), center=0.1, scale=0.4, log=True),
        ClinicalFeature("platelets", "lab", ("platelets",), center=5.3, scale=0.6, log=True),
        ClinicalFeature("systolic_bp", "lab", ("systolic_bp",), center=140.0, scale=30.0),
        ClinicalFeature("anticoagulant", "medication", ("anticoagulant",)),
        ClinicalFeature("antiplatelet", "medication", ("antiplatelet",)),
        ClinicalFeature("trauma", "coded", ("trauma_mechanism",),
                        levels={"none": 0.0, "no trauma": 0.0, "fall": 1.0, "assault": 1.0, "collision": 1.0,
                                "trauma": 1.0},
                        text_keywords=TRAUMA_WORDS, text_exclude=NOT_TRAUMA),
        ClinicalFeature("gcs", "lab", ("gcs",), center=12.0, scale=3.0),
    ),
    Task.LUNG_NODULE: (
        ClinicalFeature("age", "age", center=60.0, scale=15.0),
        ClinicalFeature("sex", "sex"),
        ClinicalFeature("pack_years", "lab", ("pack_years",), center=2.5, scale=1.2, log=True),
        ClinicalFeature("smoking_status", "coded", ("smoking_status",), levels=SMOKING_LEVELS),
        ClinicalFeature("prior_cancer", "condition", ("363346000", "malignant", "cancer", "carcinoma",
                                                      "neoplasm", "lymphoma", "melanoma"), exclude=NOT_A_DIAGNOSIS),
        ClinicalFeature("cea", "lab", ("cea",), center=1.0, scale=0.8, log=True),
    ),
    Task.MAMMOGRAPHY: (
        ClinicalFeature("age", "age", center=55.0, scale=12.0),
        ClinicalFeature("brca_carrier", "condition", ("412734009", "412738007", "brca"), exclude=NOT_A_DIAGNOSIS),
        ClinicalFeature("family_history_breast_cancer", "family_history",
                        ("254837009", "breast cancer", "breast carcinoma", "malignant neoplasm of breast"),
                        exclude=("benign", "negative", "screening")),
        ClinicalFeature("prior_biopsy", "procedure", ("122548005", "biopsy of breast", "breast biopsy"),
                        exclude=("family history",)),
    ),
}


def feature_names(task: Task | str) -> list[str]:
    """Names of the clinical features of ``task``, in encoding order."""
    return [f.name for f in CLINICAL_FEATURES[resolve_task(task)]]


def context_text(context: ClinicalContext | None) -> str | None:
    """Reason for exam and notes joined into one text, or None when there is none."""
    if context is None:
        return None
    parts = [context.reason_for_exam or "", *context.notes]
    text = "\n".join(p for p in parts if p.strip())
    return text or None


def _matches(item: CodedItem, feature: ClinicalFeature) -> bool:
    codes = {item.code, *item.alternate_codes}
    if any(k in codes for k in feature.keys):
        return True
    display = item.display.lower()
    return (not any(word in display for word in feature.exclude)
            and any(not k.isdigit() and k in display for k in feature.keys))


def _sections_read(context: ClinicalContext, source: str) -> bool:
    """Whether the lists a feature reads were gathered (record reached, those FHIR sections did not fail)."""
    return context.status != "unavailable" and not any(
        e.startswith(f"{section}:") for section in _SECTIONS_OF[source] for e in context.errors)


def _level(item: CodedItem, feature: ClinicalFeature) -> float | None:
    if item.code in feature.levels:
        return feature.levels[item.code]
    display = item.display.lower()
    hits = [value for key, value in feature.levels.items() if key.lower() in display]
    return hits[0] if hits else None


def _raw_value(feature: ClinicalFeature, context: ClinicalContext) -> float | None:
    """The un-normalised value of ``feature`` in ``context``, or None when it is missing."""
    if feature.source == "age":
        return context.age_years
    if feature.source == "sex":
        sex = (context.sex or "").strip().lower()
        return {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}.get(sex)
    if feature.source == "lab":
        lab = context.labs.get(feature.keys[0])
        return None if lab is None else float(lab.value)
    if feature.source in _SECTIONS_OF:
        if not _sections_read(context, feature.source):
            return None
        if feature.source == "medication":
            return float(any(m.category in feature.keys for m in context.medications))
        items = (item for section in _SECTIONS_OF[feature.source] for item in getattr(context, section))
        return float(any(_matches(item, feature) for item in items))
    if feature.source == "coded":
        item = context.coded_observations.get(feature.keys[0])
        if item is not None:
            return _level(item, feature)
        text = context_text(context)
        if feature.text_keywords and text is not None:
            for phrase in feature.text_exclude:
                text = re.sub(rf"\b{phrase}\b", " ", text.lower())
            words = " ".join(_affirmed_tokens(text))
            return float(any(re.search(rf"\b{re.escape(k)}\b", words) for k in feature.text_keywords))
        return None
    raise ClinicalFeatureError(f"clinical feature {feature.name!r}: unknown source {feature.source!r}")


def _normalise(feature: ClinicalFeature, value: float) -> float:
    if feature.log:
        value = math.log(max(value, 1e-3))
    return float(np.clip((value - feature.center) / feature.scale, -CLIP, CLIP))


def encode_clinical(task: Task | str, context: ClinicalContext | None) -> tuple[np.ndarray, np.ndarray]:
    """(values float32[n], present bool[n]) of the task's features; missing -> 0 and False."""
    features = CLINICAL_FEATURES[resolve_task(task)]
    values = np.zeros(len(features), dtype=np.float32)
    present = np.zeros(len(features), dtype=bool)
    if context is None:
        return values, present
    for i, feature in enumerate(features):
        raw = _raw_value(feature, context)
        if raw is not None and math.isfinite(raw):
            values[i] = _normalise(feature, raw)
            present[i] = True
    return values, present


def _tokens(text: str, pattern: str = TERMS) -> list[str]:
    return re.findall(pattern, text.lower())


NEGATORS = frozenset({"no", "not", "denies", "denied", "denying", "without", "negative", "nor"})
NEGATING_PHRASES = r"\b(?:rule|ruled|ruling) out\b|\br/o\b"  # read as "no"
NEGATION_REACH = 3  # words after a negator, and of each item of a negated "or" list; "No LOC per wife fell"
NEGATION_FILLERS = frozenset({"history", "of", "any", "prior", "known", "recent", "a", "the", "or"})  # not counted
NEGATION_ENDS = r"[.;:!?\n]|\b(?:but|after|then|however)\b"  # "no LOC after fall"
CLAUSE_VERBS = frozenset({"fell", "was", "were", "is", "found", "hit", "struck", "slipped", "tripped", "had", "has",
                          "presents", "presented"})  # end a negation: "denies headache, fell down stairs"


def _affirmed_tokens(text: str) -> list[str]:
    """Tokens of ``text`` minus those within 3 words after a negator, not counting fillers such as "history of"
    or "or" ("no history of head trauma", "denied any fall", "no LOC or head trauma").

    A negation ends at punctuation ("no LOC, fall from ladder" is a fall), a clause word such as "after" or "but",
    or a verb that starts a clause ("denies headache, fell"); but it reaches each item of a list of three or more
    whose last item begins with "or"/"nor" ("denies trauma, falls, or anticoagulant use": each item gets 3 words).
    "Denies fever, nausea, trauma" (no "or") and "no headache, fall or injury" (two items) still read as trauma:
    they cannot be told from "no LOC, fall from ladder" and "no LOC, fall from ladder or roof".
    """
    kept = []
    for clause in re.split(NEGATION_ENDS, re.sub(NEGATING_PHRASES, " no ", text.lower())):
        items = clause.split(",")
        listed = len(items) > 2 and _tokens(items[-1])[:1] in (["or"], ["nor"])
        negated = False
        for item in items:
            reach = NEGATION_REACH if negated and listed else 0
            for token in _tokens(item):
                if token in NEGATORS:
                    reach, negated = NEGATION_REACH, True
                    continue
                if token in CLAUSE_VERBS:
                    reach, negated = 0, False
                if reach > 0:
                    reach -= token not in NEGATION_FILLERS
                    continue
                kept.append(token)
    return kept


def _bucket(term: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(term.encode(), digest_size=8).digest()
    number = int.from_bytes(digest, "little")
    return number % dim, (1.0 if (number >> 63) & 1 else -1.0)


def note_encoding_of(parameters: Mapping[str, Any]) -> str:
    """The note encoding a bundle's inference parameters name (``UNNAMED_NOTE_ENCODING`` when none)."""
    encoding = parameters.get("note_encoding", UNNAMED_NOTE_ENCODING)
    if encoding not in NOTE_ENCODINGS:
        raise ClinicalFeatureError(f"'note_encoding' must be one of {sorted(NOTE_ENCODINGS)}, got {encoding!r}")
    return str(encoding)


def note_terms(text: str | None, encoding: str) -> list[str]:
    """The terms of ``text`` under ``encoding`` and their bigrams: what ``encode_note`` hashes."""
    tokens = _tokens(text or "", NOTE_ENCODINGS[encoding])
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


@dataclass(frozen=True)
class NoteVocabulary:
    """The note terms a bundle's heads learned, and the fewest of them any note they learned from held."""

    terms: frozenset[str]
    min_terms: int


def _known(term: str, vocabulary: NoteVocabulary) -> bool:
    """A learned term, or one made of numbers and learned words (ages, pack-years: every value is not listed)."""
    if term in vocabulary.terms:
        return True
    tokens = term.split(" ")
    return any(_is_number(t) for t in tokens) and all(_is_number(t) or t in vocabulary.terms for t in tokens)


def _is_number(token: str) -> bool:
    return token[:1].isdigit()


def encode_note(text: str | None, *, encoding: str, vocabulary: NoteVocabulary | None = None,
                dim: int = NOTE_DIM) -> tuple[np.ndarray, bool]:
    """Hashed bag of the terms and term bigrams of ``text`` under ``encoding`` (float32[dim], unit L2 norm) and
    whether the text had any term.

    With a ``vocabulary`` (a bundle's ``note_vocabulary``) every term outside it (``_known``) is left out,
    and a text with fewer known terms than ``min_terms`` is no text. An unseen word has no learned meaning, and a
    note of one or two words, normalised to unit length, puts values into its buckets that no learned
    note did: a clean head CT with the note "dizziness" scored 1.000 for hemorrhage.
    """
    vector = np.zeros(dim, dtype=np.float32)
    terms = note_terms(text, encoding)
    if vocabulary is not None:
        terms = [term for term in terms if _known(term, vocabulary)]
        if len(terms) < vocabulary.min_terms:
            return vector, False
    if not terms:
        return vector, False
    for term in terms:
        index, sign = _bucket(term, dim)
        vector[index] += sign
    norm = float(np.linalg.norm(vector))
    if norm > 0:
        vector /= norm
    return vector, True
