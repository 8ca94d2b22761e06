"""Head CT cohort for intracranial hemorrhage: phantom, clinical record and note from a causal model.

Causal model (one patient):

    age ~ U(18, 95); sex ~ Bernoulli(0.5)
    anticoagulant ~ Bernoulli(sigmoid(-3.2 + 0.06 (age - 50)));  antiplatelet ~ Bernoulli(0.08 + 0.17 [age > 65])
    INR ~ LogNormal(log 2.4, 0.3) if anticoagulant (vitamin-K antagonist or DOAC effect) else LogNormal(log 1.0, 0.07)
    platelets ~ LogNormal(log 240, 0.3) (10^9/L);  systolic BP ~ N(135 + 0.3 (age - 50), 18) mmHg
    trauma mechanism ~ {none, fall, assault, collision}: P(fall) rises with age
    bleed ~ Bernoulli(sigmoid(b0 + 1.1 anticoagulant + 0.9 [INR > 2] + 0.4 antiplatelet + 1.0 trauma
                              + 0.02 (SBP - 140) + 0.8 [platelets < 100]))   (b0 sets the prevalence)
    subtype | bleed: trauma -> subdural / epidural / subarachnoid more likely; no trauma ->
        intraparenchymal (hypertension), subarachnoid, intraventricular
    volume | subtype: log-uniform in the subtype's range (0.1-80 mL), x 1.6 when anticoagulated or INR > 2
    GCS | bleed, volume, trauma: 15 - 1.6 log(1 + mL) - U(0, 2) [trauma] + N(0, 0.8), clipped to 3..15
    note: age, sex, anticoagulant/antiplatelet by name, mechanism, GCS, symptoms (templates with variation)

The label is the image truth (any bleed); the clinical record shifts its prior and GCS is one
of its consequences, so clinical data helps on small bleeds but never replaces the image.
Each item of the record is missing at random (``missing_rate``) and the whole record is
unavailable for a small fraction of patients.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from ai_engine.synthetic.dicom_writer import StudyHeader, write_ct_series
from ai_engine.synthetic.head_ct import (
    SUBTYPES,
    HeadAcquisition,
    HemorrhageSpec,
    make_head_case,
    random_hemorrhage,
)
from ai_engine.synthetic.truth import LesionTruth
from hl7_fhir.context import ClinicalContext, CodedItem, LabValue, Provenance

PROVENANCE = Provenance("synthetic", "radfusion ICH cohort", "cohort")
GENERATOR_VERSION = 3  # of the training anatomy, acquisitions and labels (caches key on it); held-out cohorts add HeadAcquisition.varied_anatomy
# Same system URI as hl7_fhir.medication_classes; ai_engine may import hl7_fhir.context only.
RXNORM_SYSTEM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ANTICOAGULANTS = (("1364430", "apixaban"), ("11289", "warfarin"), ("1114195", "rivaroxaban"))
ANTIPLATELETS = (("1191", "aspirin"), ("32968", "clopidogrel"))
LAB_CODES = {"inr": ("6301-6", "1"), "platelets": ("777-3", "10*9/L"), "systolic_bp": ("8480-6", "mm[Hg]"),
             "gcs": ("9269-2", "{score}")}
MECHANISMS = ("none", "fall", "assault", "collision")
MECHANISM_PHRASES = {
    "fall": ("fall from standing", "found on floor after a fall", "fell down stairs", "mechanical fall, hit head"),
    "assault": ("assaulted, struck to the head", "assault with head injury"),
    "collision": ("MVC, restrained driver", "bicycle collision", "road traffic accident"),
    "none": ("no trauma", "sudden onset", "no history of trauma", ""),
}
SYMPTOMS_POSITIVE = ("worst headache of life", "vomiting", "confusion", "new left-sided weakness", "drowsy",
                     "slurred speech", "headache")
SYMPTOMS_NEGATIVE = ("headache", "dizziness", "syncope", "mild headache", "feels well", "")


@dataclass
class IchCase:
    """One synthetic patient: image, bleed labels and truth, clinical record, note, case label."""

    case_id: str
    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    truths: list[LesionTruth]
    context: ClinicalContext | None
    note: str | None
    label: int
    age: float
    sex: str


def sample_acquisition(rng: np.random.Generator, shifted: bool) -> HeadAcquisition:
    """Training protocols, or the held-out shift (other matrices, thin/odd slices, harder noise and kernels,
    and varied anatomy against the inner table)."""
    if not shifted:
        return HeadAcquisition(rows=int(rng.choice([128, 160, 192, 256])), fov_mm=float(rng.uniform(220.0, 250.0)),
                               slice_mm=float(rng.choice([2.5, 5.0])), coverage_mm=float(rng.uniform(140, 170)),
                               noise_hu=float(rng.uniform(2.5, 6.0)), kernel_mm=float(rng.uniform(0.3, 0.8)),
                               streak_hu=float(rng.uniform(4.0, 16.0)))
    return HeadAcquisition(rows=int(rng.choice([200, 256, 288])), fov_mm=float(rng.uniform(205.0, 260.0)),
                           slice_mm=float(rng.choice([1.25, 3.0, 4.0, 5.0])),
                           coverage_mm=float(rng.uniform(130, 175)), noise_hu=float(rng.uniform(4.0, 8.0)),
                           kernel_mm=float(rng.choice([rng.uniform(0.1, 0.3), rng.uniform(0.9, 1.2)])),
                           streak_hu=float(rng.uniform(8.0, 24.0)), varied_anatomy=True)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def _subtype(rng: np.random.Generator, trauma: bool) -> str:
    weights = np.array([0.15, 0.35, 0.15, 0.25, 0.10] if trauma else [0.45, 0.08, 0.02, 0.25, 0.20])
    return str(SUBTYPES[int(rng.choice(len(SUBTYPES), p=weights / weights.sum()))])


def _lab(name: str, value: float, when: datetime) -> LabValue:
    code, unit = LAB_CODES[name]
    return LabValue(name, code, float(value), unit, when, PROVENANCE)


def _note(rng: np.random.Generator, age: float, sex: str, meds: list[str], mechanism: str, gcs: int,
          bleed: bool) -> str:
    parts = [f"{int(age)} y/o {'M' if sex == 'M' else 'F'}"]
    if meds:
        parts.append("on " + " and ".join(meds))
    phrase = str(rng.choice(MECHANISM_PHRASES[mechanism]))
    if phrase:
        parts.append(phrase)
    symptom = str(rng.choice(SYMPTOMS_POSITIVE if bleed and rng.random() < 0.6 else SYMPTOMS_NEGATIVE))
    if symptom:
        parts.append(symptom)
    parts.append(f"GCS {gcs}")
    return ", ".join(parts)


def generate_case(seed: int, *, shifted: bool = False, base_logit: float = 0.0, missing_rate: float = 0.1,
                  acquisition: HeadAcquisition | None = None) -> IchCase:
    """One patient drawn from the causal model (module docstring), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    age = float(rng.uniform(18.0, 95.0))
    sex = "M" if rng.random() < 0.5 else "F"
    anticoagulant = rng.random() < _sigmoid(-3.2 + 0.06 * (age - 50.0))
    antiplatelet = rng.random() < 0.08 + 0.17 * (age > 65)
    inr = float(np.exp(rng.normal(np.log(2.4), 0.3))) if anticoagulant else float(np.exp(rng.normal(0.0, 0.07)))
    platelets = float(np.exp(rng.normal(np.log(240.0), 0.3)))
    sbp = float(rng.normal(135.0 + 0.3 * (age - 50.0), 18.0))
    p_fall = 0.15 + 0.4 * (age > 70)
    mechanism = str(rng.choice(MECHANISMS, p=np.array([1 - p_fall - 0.2, p_fall, 0.1, 0.1])))
    trauma = mechanism != "none"
    logit = (base_logit + 1.1 * anticoagulant + 0.9 * (inr > 2.0) + 0.4 * antiplatelet + 1.0 * trauma
             + 0.02 * (sbp - 140.0) + 0.8 * (platelets < 100.0))
    bleed = rng.random() < _sigmoid(logit)
    specs: list[HemorrhageSpec] = []
    if bleed:
        scale = 1.6 if anticoagulant or inr > 2.0 else 1.0
        specs.append(random_hemorrhage(rng, _subtype(rng, trauma), scale))
        if rng.random() < 0.15:  # a second bleed of another type (e.g. SDH + SAH after a fall)
            specs.append(random_hemorrhage(rng, _subtype(rng, trauma), scale))
    acquisition = acquisition or sample_acquisition(rng, shifted)
    case = make_head_case(rng, acquisition, specs)
    volume = sum(t.size for t in case.truths)
    gcs = 15.0 - 1.6 * np.log1p(volume) - (rng.uniform(0, 2) if trauma else 0.0) + rng.normal(0.0, 0.8)
    gcs_int = int(np.clip(np.rint(gcs), 3, 15))
    meds = [str(rng.choice([n for _, n in ANTICOAGULANTS]))] if anticoagulant else []
    meds += [str(rng.choice([n for _, n in ANTIPLATELETS]))] if antiplatelet else []
    note = _note(rng, age, sex, meds, mechanism, gcs_int, bool(case.truths))
    context = _context(rng, age, sex, meds, {"inr": inr, "platelets": platelets, "systolic_bp": sbp,
                                             "gcs": gcs_int}, note, missing_rate)
    return IchCase(case_id=f"ICH{seed:09d}", hu=case.hu, labels=case.labels, spacing=case.spacing,
                   truths=case.truths, context=context, note=None if context is None else context_note(context),
                   label=int(bool(case.truths)), age=age, sex=sex)


def context_note(context: ClinicalContext) -> str | None:
    """The note carried by a cohort context (its first note), if any."""
    return context.notes[0] if context.notes else None


def _context(rng: np.random.Generator, age: float, sex: str, meds: list[str], labs: dict[str, float], note: str,
             missing_rate: float) -> ClinicalContext | None:
    """The record as the gatherer would deliver it, with items missing at random."""
    if rng.random() < missing_rate / 2:
        return None
    when = datetime(2024, 6, 1, 12, 0)
    context = ClinicalContext(age_years=round(age, 1) if rng.random() >= missing_rate else None,
                              sex=sex if rng.random() >= missing_rate else None, status="complete")
    for name, value in labs.items():
        if rng.random() >= missing_rate:
            context.labs[name] = _lab(name, value, when)
    if rng.random() < missing_rate:
        context.errors.append("medications: FHIR server timed out")
        context.status = "partial"
    else:
        codes = dict((n, c) for c, n in ANTICOAGULANTS + ANTIPLATELETS)
        for name in meds:
            category = "anticoagulant" if name in dict((n, c) for c, n in ANTICOAGULANTS) else "antiplatelet"
            context.medications.append(CodedItem(codes[name], RXNORM_SYSTEM, name, category, when, PROVENANCE))
    if rng.random() >= missing_rate:
        context.notes.append(note)
    context.missing = [n for n in labs if n not in context.labs]
    return context


def generate_cohort(size: int, seed: int, *, shifted: bool = False, missing_rate: float = 0.1) -> list[IchCase]:
    """``size`` patients with seeds ``seed * 100_000 + i`` (cohorts of different seeds never share a patient)."""
    return [generate_case(seed * 100_000 + i, shifted=shifted, missing_rate=missing_rate) for i in range(size)]


def write_case_dicom(case: IchCase, out_dir: Path) -> list[Path]:
    """Write the case as one CT Image Storage series (unsigned storage, HEAD); returns the file paths."""
    study_day = date(2024, 6, 1)
    birth = study_day - timedelta(days=int(case.age * 365.25))
    header = StudyHeader(patient_id=case.case_id, patient_name=f"SYNTHETIC^{case.case_id}",
                         accession_number=f"ACC{case.case_id[3:]}", study_instance_uid=generate_uid(),
                         study_date=study_day.strftime("%Y%m%d"), study_time="120000",
                         patient_birth_date=birth.strftime("%Y%m%d"), patient_sex=case.sex)
    paths, _ = write_ct_series(case.hu, case.spacing, Path(out_dir), header, frame_of_reference_uid=generate_uid(),
                               body_part="HEAD", description="HEAD CT", signed=False)
    return paths
