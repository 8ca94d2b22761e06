"""Synthetic four-view screening mammography cohort with a stated causal model and a note per patient.

Causal model (every arrow is a draw below; the model card repeats it):

- age ~ N(57, 10) clipped to 40..85 years; BRCA1/2 carrier ~ Bernoulli(0.06);
- family history of breast cancer ~ Bernoulli(0.10 + 0.55 * BRCA);
- prior benign breast biopsy ~ Bernoulli(0.08 + 0.08 * family history);
- density (same both breasts): latent 1.9 - 0.05 * (age - 40) + N(0, 0.8), cut at 0.45 / 1.3 / 2.1
  into A / B / C / D (younger women have denser breasts);
- cancer ~ Bernoulli(sigmoid(-1.4 + 0.035 (age - 57) + 1.6 BRCA + 0.8 family + 0.5 biopsy + 0.35 [C or D]));
- a cancer is one malignant lesion in one breast: spiculated (30 %), irregular (30 %) or round (12 %)
  mass, or a pleomorphic microcalcification cluster (28 %); 20 % of masses carry a cluster too. Its
  contrast is drawn independently of density, so dense texture hides some cancers: the image alone
  is ambiguous for those, and the clinical risk factors carry real information;
- mimics, independent of cancer: cysts (round, circumscribed; more likely under 55), intramammary lymph
  nodes (oval, fatty hilum), vascular calcifications (more likely with age), coarse benign calcifications;
- the note: "palpable lump" with probability 0.35 for a cancer mass >= 12 mm, 0.2 for a cyst, 0.03
  otherwise; it also restates the risk factors in free text.

The label of a case is "cancer present" (a malignant lesion was placed), so it depends on the image
(the lesion is there to be found) and on the clinical variables (through the prior above).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from ai_engine.synthetic.dicom_writer import StudyHeader, write_mammo_view
from ai_engine.synthetic.mammo_phantom import (
    DENSITIES,
    Acquisition,
    BreastSpec,
    PlacedLesion,
    RenderedBreast,
    render_breast,
)
from ai_engine.synthetic.truth import LesionTruth
from hl7_fhir.context import ClinicalContext, CodedItem, Provenance

SNOMED = "http://snomed.info/sct"
BRCA_CODES = {"BRCA1": ("412734009", "BRCA1 gene mutation positive"),
              "BRCA2": ("412738007", "BRCA2 gene mutation positive")}
FAMILY_HISTORY_CODE = ("429740004", "Family history of malignant neoplasm of breast")
PRIOR_BIOPSY_CODE = ("122548005", "Biopsy of breast")
VIEW_ORDER = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))  # load_views' order: view_index

TRAIN_ACQUISITION = Acquisition(pixel_spacing_mm=0.4, noise_std=12.0, blur_mm=0.15, gain=1.0, bits_stored=12)
# Held-out scanner: coarser pixels, more noise, softer detector, 14-bit grey levels on another scale.
HELDOUT_ACQUISITION = Acquisition(pixel_spacing_mm=0.5, noise_std=20.0, blur_mm=0.3, gain=3.6, bits_stored=14)

_PROVENANCE = Provenance(source="fhir", origin="synthetic-cohort", record_id="synthetic")


@dataclass
class MammoCase:
    """One four-view screening exam with its truth, clinical context and note."""

    case_id: str
    seed: int
    age: float
    density: str
    cancer: bool
    cancer_laterality: str | None
    risk: dict[str, bool]
    context: ClinicalContext
    note: str
    breasts: dict[str, RenderedBreast]
    acquisition: Acquisition
    lesions: list[LesionTruth] = field(default_factory=list)

    def views(self) -> list[tuple[str, str, np.ndarray]]:
        """(laterality, view, image) in view_index order: L CC, L MLO, R CC, R MLO."""
        return [(lat, view, self.breasts[lat].images[0 if view == "CC" else 1]) for lat, view in VIEW_ORDER]

    def cancer_masks(self) -> list[dict[str, np.ndarray]]:
        """Per-view masks of the malignant lesions by kind (mass, calcification_cluster), view_index order."""
        return [self.breasts[lat].cancer_masks[0 if view == "CC" else 1] for lat, view in VIEW_ORDER]


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def _density(rng: np.random.Generator, age: float) -> str:
    latent = 1.9 - 0.05 * (age - 40.0) + rng.normal(0.0, 0.8)
    return DENSITIES[int(np.searchsorted([0.45, 1.3, 2.1], latent))]


def _lesion(rng: np.random.Generator, kind: str, shape: str, size: float, contrast: float,
            depth: tuple[float, float] = (0.2, 0.8)) -> PlacedLesion:
    return PlacedLesion(kind=kind, shape=shape, depth_frac=float(rng.uniform(*depth)),
                        ml_frac=float(rng.uniform(-0.9, 0.9)), cc_frac=float(rng.uniform(-0.9, 0.9)),
                        size_mm=float(size), contrast=float(contrast), detail_seed=int(rng.integers(2**31)))


def _cancer_lesions(rng: np.random.Generator) -> list[PlacedLesion]:
    kind = rng.choice(["spiculated", "irregular", "round", "cluster"], p=[0.30, 0.30, 0.12, 0.28])
    lesions = []
    if kind != "cluster":
        size = float(np.clip(rng.lognormal(np.log(12.0), 0.35), 6.0, 28.0))
        lesions.append(_lesion(rng, "mass", str(kind), size, rng.uniform(170.0, 420.0)))
    if kind == "cluster" or rng.random() < 0.2:
        lesions.append(_lesion(rng, "calcification_cluster", "pleomorphic", rng.uniform(5.0, 14.0),
                               rng.uniform(350.0, 900.0)))
    return lesions


def _mimics(rng: np.random.Generator, age: float) -> list[PlacedLesion]:
    mimics = []
    if rng.random() < (0.35 if age < 55 else 0.2):
        mimics.append(_lesion(rng, "cyst", "round", rng.uniform(6.0, 22.0), rng.uniform(150.0, 350.0)))
    if rng.random() < 0.25:
        mimics.append(_lesion(rng, "lymph_node", "oval", rng.uniform(6.0, 12.0), rng.uniform(180.0, 320.0),
                              depth=(0.1, 0.35)))
    if rng.random() < 0.6 * _sigmoid((age - 62.0) / 6.0):
        mimics.append(_lesion(rng, "vascular_calcification", "linear", rng.uniform(20.0, 60.0),
                              rng.uniform(300.0, 700.0)))
    if rng.random() < 0.2:
        mimics.append(_lesion(rng, "coarse_calcification", "popcorn", rng.uniform(2.0, 5.0),
                              rng.uniform(600.0, 1000.0)))
    return mimics


def _note(rng: np.random.Generator, age: float, risk: dict[str, bool], lump_side: str | None) -> tuple[str, str]:
    """The reason for the exam and a short free text as a referrer would write it (phrasing varies so no
    template is a giveaway)."""
    parts = [str(rng.choice([f"{age:.0f} y/o F", f"{age:.0f}-year-old woman", f"F, {age:.0f}"]))]
    if lump_side:
        side = "left" if lump_side == "L" else "right"
        reason = str(rng.choice([f"palpable lump {side} breast", f"new lump in the {side} breast",
                                 f"patient reports a {side} breast mass"]))
    else:
        reason = str(rng.choice(["routine screening", "annual screening mammogram", "screening, no complaints"]))
    parts.append(reason)
    if risk["brca"]:
        parts.append(str(rng.choice(["BRCA carrier", "known BRCA mutation", "BRCA1 positive"])))
    if risk["family_history"]:
        parts.append(str(rng.choice(["mother had breast cancer", "sister with breast ca",
                                     "family history of breast cancer"])))
    if risk["prior_biopsy"]:
        parts.append(str(rng.choice(["prior benign biopsy", "s/p breast biopsy", "previous core biopsy, benign"])))
    return reason, ", ".join(parts)


def _context(age: float, risk: dict[str, bool], reason: str, note: str, brca_gene: str) -> ClinicalContext:
    """The ClinicalContext an EMR would return: coded conditions, family history and the note."""
    conditions = []
    if risk["brca"]:
        code, display = BRCA_CODES[brca_gene]
        conditions.append(CodedItem(code, SNOMED, display, category="genetic", provenance=_PROVENANCE))
    if risk["prior_biopsy"]:
        conditions.append(CodedItem(PRIOR_BIOPSY_CODE[0], SNOMED, PRIOR_BIOPSY_CODE[1], category="procedure",
                                    provenance=_PROVENANCE))
    family = ([CodedItem(FAMILY_HISTORY_CODE[0], SNOMED, FAMILY_HISTORY_CODE[1], category="family_history",
                         provenance=_PROVENANCE)] if risk["family_history"] else [])
    return ClinicalContext(age_years=round(age, 1), sex="F", conditions=conditions, family_history=family,
                           reason_for_exam=reason, notes=[note], status="complete")


def generate_case(seed: int, acquisition: Acquisition = TRAIN_ACQUISITION) -> MammoCase:
    """One exam drawn from the causal model; the same seed and acquisition give the same case."""
    rng = np.random.default_rng(seed)
    age = float(np.clip(rng.normal(57.0, 10.0), 40.0, 85.0))
    brca = bool(rng.random() < 0.06)
    family = bool(rng.random() < 0.10 + 0.55 * brca)
    biopsy = bool(rng.random() < 0.08 + 0.08 * family)
    density = _density(rng, age)
    logit = -1.4 + 0.035 * (age - 57.0) + 1.6 * brca + 0.8 * family + 0.5 * biopsy + 0.35 * (density in "CD")
    cancer = bool(rng.random() < _sigmoid(logit))
    cancer_side = str(rng.choice(["L", "R"])) if cancer else None
    lesions: dict[str, list[PlacedLesion]] = {"L": [], "R": []}
    if cancer_side:
        lesions[cancer_side].extend(_cancer_lesions(rng))
    for mimic in _mimics(rng, age):
        lesions[str(rng.choice(["L", "R"]))].append(mimic)
    lump_side = None
    for side, placed in lesions.items():
        for lesion in placed:
            chance = (0.35 if lesion.kind == "mass" and lesion.size_mm >= 12.0
                      else 0.2 if lesion.kind == "cyst" else 0.0)
            if lump_side is None and rng.random() < chance:
                lump_side = side
    if lump_side is None and rng.random() < 0.03:
        lump_side = str(rng.choice(["L", "R"]))
    risk = {"brca": brca, "family_history": family, "prior_biopsy": biopsy}
    reason, note = _note(rng, age, risk, lump_side)
    context = _context(age, risk, reason, note, str(rng.choice(["BRCA1", "BRCA2"])))
    breasts = {side: render_breast(rng, BreastSpec(side, density, tuple(lesions[side])), acquisition)
               for side in ("L", "R")}
    truths = []
    for index, (side, view) in enumerate(VIEW_ORDER):
        for truth in breasts[side].truths:
            if truth.view_index == (0 if view == "CC" else 1):
                truths.append(LesionTruth(truth.kind, truth.center_voxel, index, truth.size, truth.subtype))
    return MammoCase(case_id=f"MAMMO{seed:08d}", seed=seed, age=age, density=density, cancer=cancer,
                     cancer_laterality=cancer_side, risk=risk, context=context, note=note, breasts=breasts,
                     acquisition=acquisition, lesions=truths)


def generate_cohort(size: int, seed: int, acquisition: Acquisition = TRAIN_ACQUISITION) -> Iterator[MammoCase]:
    """``size`` cases with seeds derived from ``seed`` (cohorts of different seeds do not overlap)."""
    for index in range(size):
        yield generate_case(seed * 1_000_003 + index, acquisition)


def write_case_dicom(case: MammoCase, out_dir: Path) -> list[Path]:
    """Write the four views as Digital Mammography For Presentation objects of one study."""
    rng = np.random.default_rng(case.seed)
    study_day = date(2024, 1, 1) + timedelta(days=int(rng.integers(0, 365)))
    birth = study_day - timedelta(days=int(case.age * 365.25))
    header = StudyHeader(patient_id=f"SYN{case.case_id}", patient_name=f"SYNTHETIC^{case.case_id}",
                         accession_number=f"SYNACC{case.seed % 10**10:010d}", study_instance_uid=generate_uid(),
                         study_date=study_day.strftime("%Y%m%d"), study_time="090000",
                         patient_birth_date=birth.strftime("%Y%m%d"), patient_sex="F")
    series_uid = generate_uid()
    return [write_mammo_view(image, case.acquisition.pixel_spacing_mm, Path(out_dir), header, laterality=lat,
                             view=view, series_uid=series_uid, instance_number=index + 1,
                             bits_stored=case.acquisition.bits_stored)
            for index, (lat, view, image) in enumerate(case.views())]


__all__ = ["HELDOUT_ACQUISITION", "TRAIN_ACQUISITION", "MammoCase", "generate_case", "generate_cohort",
           "write_case_dicom"]
