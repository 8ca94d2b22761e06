"""Reader of a mammography dataset in the CBIS-DDSM layout (docs/model-cards/mammo.md, "Training on real data").

Layout under ``root``: the TCIA download ``CBIS-DDSM/<Subject ID>/<study>/<series>/1-1.dcm`` and the
case-description tables ``{mass,calc}_case_description_{train,test}_set.csv`` (one row per
abnormality), optionally ``clinical.csv`` (patient_id, age, brca, family_history, prior_biopsy, note).

A CSV path such as ``Mass-Training_P_00001_LEFT_CC/<study UID>/<series UID>/000000.dcm`` is resolved by
its first component, the Subject ID folder (whitespace around the cell is ignored). The downloaded
folder and file names below it do not match the CSV's UIDs reliably, so within the subject folder the
files of a folder named with the CSV's series UID are preferred when there are any, and the content
decides: the full mammogram is the largest image; the ROI mask is the image with the full
mammogram's rows and columns (the cropped image is small), binary (0 and one other value) when two
images share that shape. The content, not the CSV column, tells mask from crop (TCIA's tables swap
the two paths for some rows). An ambiguous or missing file raises ``AiEngineError`` naming the
table, its row and the subject folder.

Scanned film carries little header: laterality and view come from the table, the pixel spacing from
PixelSpacing/ImagerPixelSpacing when present, else ``DEFAULT_PIXEL_SPACING_MM`` (DDSM digitisers
scanned at 0.042-0.05 mm; the caller may pass another value).

Mapping: all rows of a patient form one exam (1-4 views; CBIS often has one breast, sometimes one
view); ROI masks of MALIGNANT rows are the mass / calcification-cluster targets by abnormality type;
the centres of BENIGN and BENIGN_WITHOUT_CALLBACK masks are hard-negative centres; an exam is
positive when any abnormality is malignant; its density is the densest category of its rows (ACR
grades the denser breast). Training reads the train tables; the test tables are for the user's own
evaluation (``split="test"``).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

from ai_engine.errors import AiEngineError
from ai_engine.mammo import MammoView, load_view
from ai_engine.synthetic.cohorts.mammo import FAMILY_HISTORY_CODE, PRIOR_BIOPSY_CODE, SNOMED
from ai_engine.training.datasets import dicom_files, open_table
from hl7_fhir.context import ClinicalContext, CodedItem, Provenance

log = logging.getLogger(__name__)

IMAGE_DIR = "CBIS-DDSM"
CASE_TABLES: dict[str, tuple[str, ...]] = {
    "train": ("mass_case_description_train_set.csv", "calc_case_description_train_set.csv"),
    "test": ("mass_case_description_test_set.csv", "calc_case_description_test_set.csv"),
}
CLINICAL_TABLE = "clinical.csv"
DEFAULT_PIXEL_SPACING_MM = 0.05
DENSITY_COLUMNS = ("breast_density", "breast density")  # the mass tables' spelling, the calc tables'
REQUIRED_COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality type", "pathology",
                    "image file path", "ROI mask file path")
CLINICAL_COLUMNS = ("patient_id", "age", "brca", "family_history", "prior_biopsy", "note")
LATERALITIES = {"LEFT": "L", "RIGHT": "R"}
VIEWS = ("CC", "MLO")
KINDS = {"mass": "mass", "calcification": "calcification_cluster"}  # abnormality type -> target channel
MALIGNANT = {"MALIGNANT": True, "BENIGN": False, "BENIGN_WITHOUT_CALLBACK": False}
DENSITIES = {"1": "A", "2": "B", "3": "C", "4": "D"}


@dataclass(frozen=True)
class Abnormality:
    """One row of a case-description table, validated; paths as written in the table (stripped)."""

    table: str
    row: int  # data row number, 1 = the first row under the header
    patient_id: str
    laterality: str  # L / R
    view: str  # CC / MLO
    kind: str  # mass / calcification_cluster
    malignant: bool
    density: str  # A-D
    image_path: str
    mask_path: str

    @property
    def where(self) -> str:
        return f"{self.table} row {self.row}"


@dataclass(frozen=True)
class ViewFiles:
    """One view of an exam: its full mammogram and the ROI mask file of each abnormality seen on it."""

    laterality: str
    view: str
    image: Path
    shape: tuple[int, int]
    masks: tuple[tuple[Abnormality, Path], ...]


@dataclass(frozen=True)
class ExamFiles:
    """One patient's exam with every file resolved (headers read, no pixels)."""

    patient_id: str
    views: tuple[ViewFiles, ...]

    @property
    def label(self) -> int:
        return int(any(a.malignant for v in self.views for a, _ in v.masks))

    @property
    def density(self) -> str:
        return max(a.density for v in self.views for a, _ in v.masks)


@dataclass
class RealMammoExam:
    """One exam with pixels: views (breast order: L before R, CC before MLO), per-view masks, truth."""

    patient_id: str
    views: list[MammoView]
    cancer_masks: list[dict[str, np.ndarray]]  # per view: malignant ROI union by target channel (source grid)
    mimic_centres: list[tuple[int, float, float]]  # (view, row, col) source pixels of benign ROI centres
    context: ClinicalContext
    label: int
    density: str

    @property
    def identities(self) -> tuple[tuple[str, str], ...]:
        return tuple((v.laterality, v.view) for v in self.views)


def read_abnormalities(root: Path, split: str = "train") -> list[Abnormality]:
    """The rows of the split's mass and calc tables (those present; at least one must be)."""
    if split not in CASE_TABLES:
        raise AiEngineError(f"CBIS-DDSM split must be one of {sorted(CASE_TABLES)}, got {split!r}")
    tables = [Path(root) / name for name in CASE_TABLES[split] if (Path(root) / name).is_file()]
    if not tables:
        raise AiEngineError(f"CBIS-DDSM dataset {root}: none of {list(CASE_TABLES[split])} is there "
                            "(see docs/model-cards/mammo.md for the layout)")
    rows: list[Abnormality] = []
    for table in tables:
        rows.extend(_read_table(table))
        log.info("CBIS-DDSM: %s read", table.name)
    return rows


def _read_table(path: Path) -> list[Abnormality]:
    with open_table(path) as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        density_column = next((c for c in DENSITY_COLUMNS if c in header), None)
        if density_column is None:
            missing.append(" or ".join(repr(c) for c in DENSITY_COLUMNS))
        if missing:
            raise AiEngineError(f"{path}: missing column(s) {missing}")
        return [_abnormality(path.name, number, row, str(density_column))
                for number, row in enumerate(reader, start=1)]


def _cell(row: dict[str, str | None], column: str, allowed: dict[str, str] | tuple[str, ...], where: str) -> str:
    value = (row.get(column) or "").strip()
    if value not in allowed:
        raise AiEngineError(f"{where}: column {column!r} must be one of {sorted(allowed)}, got {value!r}")
    return value


def _abnormality(table: str, number: int, row: dict[str, str | None], density_column: str) -> Abnormality:
    where = f"{table} row {number}"
    patient = (row.get("patient_id") or "").strip()
    if not patient:
        raise AiEngineError(f"{where}: column 'patient_id' is empty")
    paths = {c: (row.get(c) or "").strip() for c in ("image file path", "ROI mask file path")}
    for column, value in paths.items():
        if not value:
            raise AiEngineError(f"{where}: column {column!r} is empty")
    return Abnormality(
        table=table, row=number, patient_id=patient,
        laterality=LATERALITIES[_cell(row, "left or right breast", LATERALITIES, where)],
        view=_cell(row, "image view", VIEWS, where),
        kind=KINDS[_cell(row, "abnormality type", KINDS, where)],
        malignant=MALIGNANT[_cell(row, "pathology", MALIGNANT, where)],
        density=DENSITIES[_cell(row, density_column, DENSITIES, where)],
        image_path=paths["image file path"], mask_path=paths["ROI mask file path"])


def index_exams(root: Path, split: str = "train") -> list[ExamFiles]:
    """Group the split's rows by patient and resolve every image and mask file (module docstring rule). The test
    split leaves out the patients the train tables hold too (CBIS-DDSM's own split has some): a model is not
    evaluated on patients it learnt from."""
    shapes: dict[Path, tuple[int, int]] = {}
    by_patient: dict[str, dict[tuple[str, str], list[Abnormality]]] = {}
    trained = _train_table_patients(Path(root)) if split == "test" else set()
    seen_in_training = set()
    for abnormality in read_abnormalities(root, split):
        if abnormality.patient_id in trained:
            seen_in_training.add(abnormality.patient_id)
            continue
        views = by_patient.setdefault(abnormality.patient_id, {})
        views.setdefault((abnormality.laterality, abnormality.view), []).append(abnormality)
    if seen_in_training:
        log.warning("CBIS-DDSM: %d patients of the test tables are in the train tables too; their test exams are "
                    "left out of the evaluation", len(seen_in_training))
    exams = []
    for patient, views in by_patient.items():
        resolved = [_view_files(Path(root), rows, shapes) for _, rows in sorted(views.items())]
        exams.append(ExamFiles(patient, tuple(resolved)))
    return exams


def _train_table_patients(root: Path) -> set[str]:
    """The patients of the train tables present (none when there are none: a dataset for evaluation only)."""
    if not any((root / name).is_file() for name in CASE_TABLES["train"]):
        return set()
    return {abnormality.patient_id for abnormality in read_abnormalities(root, "train")}


def _view_files(root: Path, rows: list[Abnormality], shapes: dict[Path, tuple[int, int]]) -> ViewFiles:
    """The view's full mammogram (the first row's) and each row's mask, checked against its shape."""
    first = rows[0]
    image = _resolve_image(root, first, shapes)
    masks = []
    for row in rows:
        own = image if row.image_path == first.image_path else _resolve_image(root, row, shapes)
        if shapes[own] != shapes[image]:
            raise AiEngineError(f"{row.where}: its full mammogram {own} has shape {shapes[own]}, but "
                                f"{first.where} gives {image} of shape {shapes[image]} for the same view "
                                f"(patient {row.patient_id}, {row.laterality} {row.view})")
        masks.append((row, _resolve_mask(root, row, shapes[image], shapes)))
    return ViewFiles(first.laterality, first.view, image, shapes[image], tuple(masks))


def _candidates(root: Path, cell: str, row: Abnormality, column: str) -> tuple[Path, list[Path], list[Path]]:
    """(subject folder, its DICOM files, those in a folder named with the cell's series UID)."""
    parts = [p for p in cell.replace("\\", "/").split("/") if p]
    subject = root / IMAGE_DIR / parts[0]
    if not subject.is_dir():
        raise AiEngineError(f"{row.where}: column {column!r} names subject folder {parts[0]!r}, which is "
                            f"missing from {root / IMAGE_DIR}")
    files = dicom_files(subject, recursive=True)
    if not files:
        raise AiEngineError(f"{row.where}: subject folder {subject} holds no .dcm file")
    series_uid = parts[2] if len(parts) >= 4 else None
    preferred = [f for f in files if series_uid in f.relative_to(subject).parts[:-1]] if series_uid else []
    return subject, files, preferred


def _shape(path: Path, shapes: dict[Path, tuple[int, int]]) -> tuple[int, int]:
    if path not in shapes:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "Rows" not in ds or "Columns" not in ds:
            raise AiEngineError(f"{path}: DICOM file has no Rows/Columns (not an image)")
        shapes[path] = (int(ds.Rows), int(ds.Columns))
    return shapes[path]


def _resolve_image(root: Path, row: Abnormality, shapes: dict[Path, tuple[int, int]]) -> Path:
    """The full mammogram of ``row``: the largest image of its subject folder."""
    subject, files, preferred = _candidates(root, row.image_path, row, "image file path")
    group = preferred or files
    areas = {f: _shape(f, shapes)[0] * _shape(f, shapes)[1] for f in group}
    picks = [f for f, area in areas.items() if area == max(areas.values())]
    if len(picks) > 1:
        raise AiEngineError(f"{row.where}: full mammogram of subject folder {subject.name} is ambiguous: "
                            f"{[str(p.relative_to(subject)) for p in picks]} are equally large")
    return picks[0]


def _resolve_mask(root: Path, row: Abnormality, shape: tuple[int, int], shapes: dict[Path, tuple[int, int]]
                  ) -> Path:
    """The ROI mask of ``row``: the image of its subject folder with the full mammogram's shape (binary)."""
    subject, files, preferred = _candidates(root, row.mask_path, row, "ROI mask file path")
    for group in (preferred, files):
        same = [f for f in group if _shape(f, shapes) == shape]
        if len(same) > 1:
            same = [f for f in same if _is_binary(_pixels(f))]
        if len(same) > 1:
            raise AiEngineError(f"{row.where}: ROI mask of subject folder {subject.name} is ambiguous: "
                                f"{[str(p.relative_to(subject)) for p in same]} are binary images of shape {shape}")
        if same:
            return same[0]
    found = {str(f.relative_to(subject)): _shape(f, shapes) for f in files}
    raise AiEngineError(f"{row.where}: subject folder {subject.name} has no binary image of the full mammogram's "
                        f"shape {shape} to serve as ROI mask (found shapes {found})")


def _pixels(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


def _is_binary(pixels: np.ndarray) -> bool:
    """0 and at most one other value (CBIS masks are 0/255)."""
    on = pixels[pixels != 0]
    return on.size == 0 or bool((on == on[0]).all())


def read_mask(path: Path, row: Abnormality) -> np.ndarray:
    """The boolean ROI mask in ``path``; a non-binary or empty image raises."""
    pixels = _pixels(path)
    if not _is_binary(pixels) or not pixels.any():
        values = np.unique(pixels)
        raise AiEngineError(f"{row.where}: ROI mask {path} must be binary and non-empty, got values "
                            f"{values[:6].tolist()}{' ...' if values.size > 6 else ''}")
    return pixels != 0


def load_exam(exam: ExamFiles, context: ClinicalContext, pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM
              ) -> RealMammoExam:
    """Pixels, masks and benign centres of one indexed exam."""
    views, cancer_masks, mimics = [], [], []
    for index, files in enumerate(exam.views):
        views.append(load_view(files.image, identity=(files.laterality, files.view),
                               fallback_spacing_mm=pixel_spacing_mm))
        cancer: dict[str, np.ndarray] = {kind: np.zeros(files.shape, dtype=bool) for kind in KINDS.values()}
        for row, path in files.masks:
            mask = read_mask(path, row)
            if row.malignant:
                cancer[row.kind] |= mask
            else:
                centre_row, centre_col = ndimage.center_of_mass(mask)
                mimics.append((index, float(centre_row), float(centre_col)))
        cancer_masks.append(cancer)
    return RealMammoExam(exam.patient_id, views, cancer_masks, mimics, context, exam.label, exam.density)


def read_clinical(root: Path) -> dict[str, ClinicalContext]:
    """Contexts of ``clinical.csv`` by patient_id (empty when the file is absent).

    Built the way the synthetic cohort builds them (SNOMED-coded conditions and family history, the
    note as free text). An empty cell is a missing value, never 0: empty ``family_history`` marks
    that section missing; ``brca`` and ``prior_biopsy`` share the conditions section, so when either
    is empty both are missing to the model.
    """
    path = Path(root) / CLINICAL_TABLE
    if not path.is_file():
        return {}
    with open_table(path) as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        missing = [c for c in CLINICAL_COLUMNS if c not in header]
        if missing:
            raise AiEngineError(f"{path}: missing column(s) {missing}")
        contexts: dict[str, ClinicalContext] = {}
        provenance = Provenance("dataset", str(Path(root).resolve()), CLINICAL_TABLE)
        for number, row in enumerate(reader, start=1):
            where = f"{CLINICAL_TABLE} row {number}"
            patient = (row.get("patient_id") or "").strip()
            if not patient or patient in contexts:
                raise AiEngineError(f"{where}: patient_id {patient!r} is empty or repeated")
            contexts[patient] = _context({k: (row.get(k) or "").strip() for k in CLINICAL_COLUMNS}, provenance,
                                         where)
    return contexts


def _flag(row: dict[str, str], column: str, where: str) -> bool | None:
    if row[column] == "":
        return None
    if row[column] not in ("0", "1"):
        raise AiEngineError(f"{where}: column {column!r} must be 0, 1 or empty, got {row[column]!r}")
    return row[column] == "1"


def _context(row: dict[str, str], provenance: Provenance, where: str) -> ClinicalContext:
    try:
        age = float(row["age"]) if row["age"] else None
    except ValueError:
        raise AiEngineError(f"{where}: column 'age' must be a number of years, got {row['age']!r}") from None
    brca, family, biopsy = (_flag(row, c, where) for c in ("brca", "family_history", "prior_biopsy"))
    conditions, history, errors = [], [], []
    if brca is None or biopsy is None:
        errors.append(f"conditions: brca or prior_biopsy not recorded in {CLINICAL_TABLE}")
    else:
        if brca:
            conditions.append(CodedItem("", "", "BRCA1/2 gene mutation positive", category="genetic",
                                        provenance=provenance))
        if biopsy:
            conditions.append(CodedItem(PRIOR_BIOPSY_CODE[0], SNOMED, PRIOR_BIOPSY_CODE[1], category="procedure",
                                        provenance=provenance))
    if family is None:
        errors.append(f"family_history: not recorded in {CLINICAL_TABLE}")
    elif family:
        history.append(CodedItem(FAMILY_HISTORY_CODE[0], SNOMED, FAMILY_HISTORY_CODE[1],
                                 category="family_history", provenance=provenance))
    return ClinicalContext(age_years=age, sex="F", conditions=conditions, family_history=history,
                           notes=[row["note"]] if row["note"] else [], status="partial" if errors else "complete",
                           errors=errors)


def load_exams(root: Path, split: str = "train", pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM
               ) -> tuple[list[ExamFiles], Iterator[RealMammoExam]]:
    """The split's exams, indexed up front (a broken dataset fails before any pixel is read), and an
    iterator that loads them one at a time (full-field mammograms are large)."""
    exams = index_exams(root, split)
    contexts = read_clinical(root)
    unmatched = sum(e.patient_id not in contexts for e in exams)
    if contexts and unmatched:
        log.warning("CBIS-DDSM: %d of %d exams have no %s row; their clinical inputs are missing",
                    unmatched, len(exams), CLINICAL_TABLE)
    log.info("CBIS-DDSM dataset: %d exams (%d malignant), %d views, %d abnormalities; clinical table: %s",
             len(exams), sum(e.label for e in exams), sum(len(e.views) for e in exams),
             sum(len(v.masks) for e in exams for v in e.views), "yes" if contexts else "no")
    unavailable = f"clinical: the dataset has no {CLINICAL_TABLE} row for this patient"
    loaded = (load_exam(e, contexts[e.patient_id] if e.patient_id in contexts
                        else ClinicalContext.unavailable(unavailable), pixel_spacing_mm) for e in exams)
    return exams, loaded
