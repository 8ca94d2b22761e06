"""Synthetic chest CT cohort for lung nodules, with a stated causal model and a note per patient.

Causal model (every arrow is a draw below; the model card repeats it):

- age ~ U(45, 85) years; sex ~ Bernoulli(0.5);
- smoking status: current 35 %, former 35 %, never 30 %; pack-years | smoker ~ Gamma(4, 9) + 0.3 per
  year of age over 50 (0 for never smokers);
- prior cancer (colon, breast, prostate, lymphoma, melanoma) ~ Bernoulli(0.06 + 0.004 (age - 45));
  family history of lung cancer ~ Bernoulli(0.12) (told in the note only);
- nodules per scan: none with probability ``NEGATIVE_RATE``, else 1-3; each nodule draws its type
  (solid 60 %, part-solid 15 %, ground-glass 25 %), diameter (log-uniform 3-30 mm; part-solid and
  ground-glass from 6 and 5 mm), placement (parenchymal 50 %, juxtapleural 30 %, juxtavascular 20 %);
- malignant ~ Bernoulli(sigmoid(eta)), eta = -2.1 + 1.6 ln(D / 10) + {part-solid +1.0, ground-glass -0.6}
  + 0.04 (age - 65) + 0.7 ln(1 + pack-years / 10) + 1.2 [prior cancer]
  + 0.6 [family history];
- malignancy shows in the image: spiculated ~ Bernoulli(0.65 if malignant else 0.08), lobulated ~
  Bernoulli(0.5 if malignant else 0.15); and in the clinic: CEA (ng/mL) ~ LogNormal(ln 1.6 + 0.5 [current
  smoker] + 0.9 [any malignant nodule], 0.45), measured in 60 %; weight loss in the note with
  probability 0.35 if a nodule is malignant else 0.05, hemoptysis 0.2 / 0.02.
- missing data: the EMR is unreachable for 8 % of patients (no clinical values at all), pack-years
  is missing for 20 %, smoking status for 10 %, the note for 10 %.

So a nodule's label depends on the image (size, type, margin) and on clinical variables that
the image does not show (age, smoking, prior cancer, family history, CEA, symptoms).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from ai_engine.synthetic.chest_ct import ChestAcquisition, ChestPhantom, NoduleSpec, make_chest_phantom
from ai_engine.synthetic.dicom_writer import StudyHeader, write_ct_series
from hl7_fhir.context import ClinicalContext, CodedItem, LabValue, Provenance

SNOMED = "http://snomed.info/sct"
NEGATIVE_RATE = 0.3
SMOKING_CODES = {"current": ("449868002", "Smokes tobacco daily"), "former": ("8517006", "Ex-smoker"),
                 "never": ("266919005", "Never smoked tobacco")}
PRIOR_CANCERS = (("363406005", "Malignant neoplasm of colon"), ("254837009", "Malignant neoplasm of breast"),
                 ("399068003", "Malignant neoplasm of prostate"), ("118600007", "Malignant lymphoma"),
                 ("372244006", "Malignant melanoma"))
FAMILY_LUNG_CANCER = ("363358000", "Malignant tumor of lung")
TYPE_PROBS = {"solid": 0.6, "part-solid": 0.15, "ground-glass": 0.25}
TYPE_MIN_MM = {"solid": 3.0, "part-solid": 6.0, "ground-glass": 5.0}
TYPE_EFFECT = {"solid": 0.0, "part-solid": 1.0, "ground-glass": -0.6}
PLACEMENT_PROBS = {"parenchymal": 0.5, "juxtapleural": 0.3, "juxtavascular": 0.2}
MAX_DIAMETER_MM = 30.0
GENERATOR_VERSION = 1  # of the phantom and the draws above: training caches key on it, so change it with them


@dataclass(frozen=True)
class AcquisitionRange:
    """Ranges the acquisition of each case is drawn from (uniform), so cohorts can shift them."""

    pixel_mm: tuple[float, float]
    slice_mm: tuple[float, float]
    noise_hu: tuple[float, float]
    blur_mm: tuple[float, float]
    z_extent_mm: float


# Training scanners: ~1 mm pixels, 1-2.5 mm slices, moderate noise and kernels.
TRAIN_ACQUISITION = AcquisitionRange(pixel_mm=(0.85, 1.25), slice_mm=(1.0, 2.5), noise_hu=(8.0, 25.0),
                                     blur_mm=(0.3, 0.9), z_extent_mm=260.0)
# Held-out scanners: finer pixels (512 matrix), thinner and thicker slices, more noise, sharp and soft kernels.
HELDOUT_ACQUISITION = AcquisitionRange(pixel_mm=(0.62, 0.8), slice_mm=(0.8, 3.0), noise_hu=(18.0, 35.0),
                                       blur_mm=(0.0, 1.2), z_extent_mm=280.0)


@dataclass(frozen=True)
class NoduleTruth:
    """Ground truth of one nodule, including the label the fusion model predicts."""

    label: int
    center_voxel: tuple[float, float, float]
    diameter_mm: float
    kind: str
    placement: str
    spiculated: bool
    lobulated: bool
    solid_core_mm: float
    upper_lobe: bool
    malignant: bool


@dataclass
class Patient:
    """The clinical variables drawn for one patient (before any of them goes missing)."""

    age: float
    sex: str
    smoking: str
    pack_years: float
    prior_cancer: tuple[str, str] | None
    family_lung_cancer: bool


@dataclass
class NoduleCase:
    """One chest CT with its nodules' truth, the clinical context the server would gather and the note."""

    case_id: str
    seed: int
    patient: Patient
    acquisition: ChestAcquisition
    phantom: ChestPhantom
    nodules: list[NoduleTruth]
    context: ClinicalContext
    note: str | None


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def sample_acquisition(rng: np.random.Generator, ranges: AcquisitionRange) -> ChestAcquisition:
    """One scanner setting drawn from ``ranges`` (field of view 320-400 mm)."""
    fov = float(rng.uniform(320.0, 400.0))
    pixel = float(rng.uniform(*ranges.pixel_mm))
    slice_mm = float(rng.uniform(*ranges.slice_mm))
    return ChestAcquisition(rows=int(round(fov / pixel)), slices=int(round(ranges.z_extent_mm / slice_mm)),
                            slice_mm=slice_mm, fov_mm=fov, noise_hu=float(rng.uniform(*ranges.noise_hu)),
                            blur_mm=float(rng.uniform(*ranges.blur_mm)), signed=bool(rng.random() < 0.5))


def sample_patient(rng: np.random.Generator) -> Patient:
    """Age, sex, smoking, pack-years, prior cancer and family history by the causal model."""
    age = float(rng.uniform(45.0, 85.0))
    smoking = str(rng.choice(["current", "former", "never"], p=[0.35, 0.35, 0.3]))
    pack_years = 0.0 if smoking == "never" else float(rng.gamma(4.0, 9.0) + 0.3 * max(age - 50.0, 0.0))
    prior = None
    if rng.random() < 0.06 + 0.004 * (age - 45.0):
        prior = PRIOR_CANCERS[int(rng.integers(len(PRIOR_CANCERS)))]
    return Patient(age=age, sex=str(rng.choice(["M", "F"])), smoking=smoking, pack_years=pack_years,
                   prior_cancer=prior, family_lung_cancer=bool(rng.random() < 0.12))


def sample_nodule(rng: np.random.Generator, patient: Patient) -> tuple[NoduleSpec, bool, float]:
    """A nodule spec, whether it is malignant, and the logit of that draw (the causal model above)."""
    kind = str(rng.choice(list(TYPE_PROBS), p=list(TYPE_PROBS.values())))
    diameter = float(np.exp(rng.uniform(np.log(TYPE_MIN_MM[kind]), np.log(MAX_DIAMETER_MM))))
    placement = str(rng.choice(list(PLACEMENT_PROBS), p=list(PLACEMENT_PROBS.values())))
    eta = (-2.1 + 1.6 * np.log(diameter / 10.0) + TYPE_EFFECT[kind]
           + 0.04 * (patient.age - 65.0) + 0.7 * np.log1p(patient.pack_years / 10.0)
           + 1.2 * (patient.prior_cancer is not None) + 0.6 * patient.family_lung_cancer)
    malignant = bool(rng.random() < _sigmoid(eta))
    spec = NoduleSpec(diameter_mm=diameter, kind=kind, placement=placement,
                      spiculated=bool(rng.random() < (0.65 if malignant else 0.08)),
                      lobulated=bool(rng.random() < (0.5 if malignant else 0.15)),
                      solid_core_fraction=float(rng.uniform(0.3, 0.7)))
    return spec, malignant, float(eta)


def _provenance(record: str) -> Provenance:
    return Provenance(source="fhir", origin="synthetic-emr", record_id=record)


def build_context(rng: np.random.Generator, patient: Patient, any_malignant: bool, note: str | None,
                  when: datetime) -> ClinicalContext:
    """The ClinicalContext the gatherer would produce (with the cohort's missing-data pattern)."""
    if rng.random() < 0.08:
        context = ClinicalContext.unavailable("synthetic EMR unreachable for this patient")
        context.notes = [note] if note else []
        return context
    labs: dict[str, LabValue] = {}
    missing: list[str] = []
    if rng.random() < 0.6:
        cea = float(np.exp(np.log(1.6) + 0.5 * (patient.smoking == "current") + 0.9 * any_malignant
                           + rng.normal(0.0, 0.45)))
        labs["cea"] = LabValue("cea", "2039-6", round(cea, 2), "ng/mL", when - timedelta(days=3),
                               _provenance("Observation/cea"))
    else:
        missing.append("cea")
    if rng.random() < 0.8:
        labs["pack_years"] = LabValue("pack_years", "8664-5", round(patient.pack_years, 1), "{pack-years}",
                                      when - timedelta(days=30), _provenance("Observation/pack-years"))
    else:
        missing.append("pack_years")
    coded: dict[str, CodedItem] = {}
    if rng.random() < 0.9:
        code, display = SMOKING_CODES[patient.smoking]
        coded["smoking_status"] = CodedItem(code, SNOMED, display, "smoking_status", when - timedelta(days=30),
                                            _provenance("Observation/smoking"))
    else:
        missing.append("smoking_status")
    conditions = []
    if patient.prior_cancer is not None:
        conditions.append(CodedItem(patient.prior_cancer[0], SNOMED, patient.prior_cancer[1], provenance=_provenance("Condition/prior-cancer")))
    family = []
    if patient.family_lung_cancer:
        family.append(CodedItem(FAMILY_LUNG_CANCER[0], SNOMED, FAMILY_LUNG_CANCER[1], provenance=_provenance("FamilyMemberHistory/1")))
    return ClinicalContext(age_years=round(patient.age, 1), sex=patient.sex, labs=labs, coded_observations=coded,
                           conditions=conditions, family_history=family,
                           reason_for_exam="Lung cancer screening, low-dose chest CT",
                           notes=[note] if note else [], status="partial" if missing else "complete",
                           missing=missing)


def write_note(rng: np.random.Generator, patient: Patient, any_malignant: bool) -> str | None:
    """A short free-text note (None for 10 %): age, smoking, history and symptoms in words."""
    if rng.random() < 0.1:
        return None
    sex = "male" if patient.sex == "M" else "female"
    if patient.smoking == "never":
        smoking = "never smoker"
    else:
        smoking = f"{patient.smoking} smoker, about {patient.pack_years:.0f} pack-years"
    parts = [f"{patient.age:.0f} y/o {sex}, {smoking}."]
    if patient.prior_cancer is not None:
        parts.append(f"History of {patient.prior_cancer[1].lower().replace('malignant neoplasm of ', '')} cancer.")
    if patient.family_lung_cancer:
        parts.append("Father had lung cancer.")
    if rng.random() < (0.35 if any_malignant else 0.05):
        parts.append(f"Reports {int(rng.integers(3, 10))} kg weight loss.")
    if rng.random() < (0.2 if any_malignant else 0.02):
        parts.append("Intermittent hemoptysis.")
    if rng.random() < 0.3:
        parts.append("Chronic cough.")
    return " ".join(parts)


def generate_case(seed: int, *, ranges: AcquisitionRange = TRAIN_ACQUISITION,
                  acquisition: ChestAcquisition | None = None, negative_rate: float = NEGATIVE_RATE) -> NoduleCase:
    """One case from ``seed``: patient, nodules, phantom (drawn with ``acquisition`` or from ``ranges``)."""
    rng = np.random.default_rng(seed)
    patient = sample_patient(rng)
    acquisition = acquisition or sample_acquisition(rng, ranges)
    count = 0 if rng.random() < negative_rate else int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12]))
    drawn = [sample_nodule(rng, patient) for _ in range(count)]
    phantom = make_chest_phantom(rng, acquisition, [spec for spec, _, _ in drawn])
    nodules = [NoduleTruth(label=placed.label, center_voxel=placed.center_voxel, diameter_mm=spec.diameter_mm,
                           kind=spec.kind, placement=spec.placement, spiculated=spec.spiculated,
                           lobulated=spec.lobulated,
                           solid_core_mm=spec.diameter_mm * spec.solid_core_fraction if spec.kind == "part-solid"
                           else (spec.diameter_mm if spec.kind == "solid" else 0.0),
                           upper_lobe=placed.upper_lobe, malignant=malignant)
               for placed, (spec, malignant, _) in zip(phantom.nodules, drawn, strict=True)]
    any_malignant = any(n.malignant for n in nodules)
    note = write_note(rng, patient, any_malignant)
    when = datetime(2024, 1, 1) + timedelta(days=int(rng.integers(0, 365)))
    context = build_context(rng, patient, any_malignant, note, when)
    return NoduleCase(case_id=f"NOD{seed:08d}", seed=seed, patient=patient, acquisition=acquisition,
                      phantom=phantom, nodules=nodules, context=context, note=note)


def generate_cohort(size: int, seed: int, *, ranges: AcquisitionRange = TRAIN_ACQUISITION,
                    negative_rate: float = NEGATIVE_RATE) -> Iterator[NoduleCase]:
    """``size`` cases with seeds ``seed * 100003 + i`` (one seed is one case; cohorts of other seeds differ)."""
    for i in range(size):
        yield generate_case(seed * 100003 + i, ranges=ranges, negative_rate=negative_rate)


def study_header(case: NoduleCase) -> StudyHeader:
    """Synthetic patient/study identity whose birth date matches the case's age."""
    study_day = date(2024, 6, 1)
    birth = study_day - timedelta(days=int(case.patient.age * 365.25))
    return StudyHeader(patient_id=f"SYN{case.case_id}", patient_name=f"SYNTHETIC^{case.case_id}",
                       accession_number=f"SYNNOD{case.seed % 10**10:010d}", study_instance_uid=generate_uid(),
                       study_date=study_day.strftime("%Y%m%d"), study_time="120000",
                       patient_birth_date=birth.strftime("%Y%m%d"), patient_sex=case.patient.sex)


def write_case_dicom(case: NoduleCase, out_dir: Path) -> list[Path]:
    """Write the case's CT as a real CT Image Storage series; returns the file paths."""
    paths, _ = write_ct_series(case.phantom.hu, case.phantom.spacing, Path(out_dir), study_header(case),
                               frame_of_reference_uid=generate_uid(), body_part="CHEST", description="CHEST CT",
                               signed=case.acquisition.signed)
    return paths
