"""Reader of a lung-nodule dataset in the LIDC-IDRI / LUNA16 layout (docs/model-cards/nodule.md, "Training on
real data").

Layout::

    root/series/<SeriesInstanceUID>/*.dcm  one axial CT series per folder (LIDC-IDRI DICOM), and/or
    root/subset*/<seriesuid>.mhd           LUNA16 MetaImage, its .raw/.zraw next to it
    root/annotations.csv                   seriesuid,coordX,coordY,coordZ,diameter_mm: LUNA16's file as it is
                                           (nodule centres in world/patient mm, one row per nodule)
    root/nodule_attributes.csv             optional: seriesuid,nodule_index,composition,malignant
                                           (nodule_index: the order of that series' rows in annotations.csv,
                                           from 0; composition solid|part-solid|ground-glass; malignant 0/1)
    root/clinical.csv                      optional: seriesuid,age,sex,pack_years,smoking_status,prior_cancer,
                                           cea,note

Every series in the folders is a case. A series that annotations.csv does not name is a
nodule-free scan (LUNA16 has such scans: 888 series, 601 with nodules). Empty cells are unknown,
never zero: a nodule without composition is left out of the type loss, one without malignancy out
of the fusion heads' data, an empty clinical cell is a missing feature.

``read_dataset`` checks the tables and finds every series before any image is read, so a bad
row fails in seconds. ``load_case`` (run in training's worker processes, hence picklable
references) reads one series, takes each centre from world mm to voxels through the volume's
geometry (it must land inside the volume) and draws the label map: LUNA16 has no voxel masks,
so each nodule is a sphere of its annotated diameter.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from ai_engine.errors import AiEngineError
from ai_engine.orientation import to_lps
from ai_engine.synthetic.cohorts.nodule import SMOKING_CODES, SNOMED
from ai_engine.training.datasets import dicom_files, read_rows, row_error
from ai_engine.training.datasets.metaimage import read_metaimage
from ai_engine.volume import Volume, load_series
from hl7_fhir.context import ClinicalContext, CodedItem, LabValue, Provenance

log = logging.getLogger(__name__)

DATASET = "lung-nodule dataset"
ANNOTATIONS = "annotations.csv"
ATTRIBUTES = "nodule_attributes.csv"
CLINICAL = "clinical.csv"
TABLES = (ANNOTATIONS, ATTRIBUTES, CLINICAL)
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
ATTRIBUTE_COLUMNS = ("seriesuid", "nodule_index", "composition", "malignant")
CLINICAL_COLUMNS = ("seriesuid", "age", "sex", "pack_years", "smoking_status", "prior_cancer", "cea", "note")
COMPOSITIONS = ("solid", "part-solid", "ground-glass")
SEXES = {"m": "M", "male": "M", "f": "F", "female": "F"}
PRIOR_CANCER = ("363346000", "Malignant neoplastic disease")
MAX_NODULES_PER_SERIES = 255  # labels are uint8
INSIDE_MARGIN = 0.5  # voxels: a centre may lie up to half a voxel beyond the first/last voxel centre


@dataclass(frozen=True)
class NoduleRow:
    """One nodule of annotations.csv (its line kept for error messages) with its attributes (None: unknown)."""

    line: int
    center_mm: tuple[float, float, float]  # world/patient (x, y, z)
    diameter_mm: float
    composition: str | None = None
    malignant: bool | None = None


@dataclass(frozen=True)
class DatasetCase:
    """One series of the dataset with its checked rows; small and picklable (workers load the image)."""

    root: Path
    series_uid: str
    image: Path  # the DICOM series folder or the .mhd header
    nodules: tuple[NoduleRow, ...]
    context: ClinicalContext | None
    patient: str = ""  # the series' PatientID ("patient ..."), else the series itself ("series ...")

    @property
    def seed(self) -> int:
        """A seed for this case's random draws that depends only on its series UID (CRC-32)."""
        return zlib.crc32(self.series_uid.encode())


@dataclass(frozen=True)
class AnnotatedNodule:
    """A nodule on its volume's grid: label-map value, centre (z, y, x) voxels, diameter, type, malignancy."""

    label: int
    center_voxel: tuple[float, float, float]
    diameter_mm: float
    kind: str | None
    malignant: bool | None


@dataclass
class AnnotatedScan:
    """A chest CT with its nodules: the unit the nodule training's workers cut patches from.

    The training task turns its synthetic cases into the same record, so both kinds of data go
    through the same patch, candidate and fusion code.
    """

    volume: Volume
    labels: np.ndarray  # uint8 (z, y, x) on the volume's grid, 0 = no nodule
    nodules: list[AnnotatedNodule]
    context: ClinicalContext | None
    seed: int


def _fail(table: Path, line: int, message: str) -> AiEngineError:
    return row_error(DATASET, table, line, message)


def _number(table: Path, line: int, column: str, cell: str, minimum: float = -math.inf) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise _fail(table, line, f"column {column!r} is not a number: {cell!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise _fail(table, line, f"column {column!r} must be a finite number >= {minimum}, got {cell!r}")
    return value


def find_series(root: Path) -> dict[str, Path]:
    """Series UID -> its DICOM folder (``series/<uid>/``) or MetaImage header (``subset*/<uid>.mhd``)."""
    found: dict[str, Path] = {}
    folders = root / "series"
    candidates = sorted(p for p in folders.iterdir() if p.is_dir()) if folders.is_dir() else []
    for path in [*candidates, *sorted(root.glob("subset*/*.mhd"))]:
        uid = path.stem if path.suffix == ".mhd" else path.name
        if uid in found:
            raise AiEngineError(f"{DATASET}: series {uid} is both {found[uid]} and {path}")
        found[uid] = path
    if not found:
        raise AiEngineError(f"{DATASET}: {root} holds no series (expected series/<SeriesInstanceUID>/*.dcm "
                            "or subset*/<seriesuid>.mhd; see docs/model-cards/nodule.md)")
    return found


def _annotations(root: Path, series: dict[str, Path]) -> dict[str, list[NoduleRow]]:
    table = root / ANNOTATIONS
    if not table.is_file():
        raise AiEngineError(f"{DATASET}: {table} is missing (LUNA16's annotations.csv; a nodule-free "
                            "dataset still needs the file with its header)")
    nodules: dict[str, list[NoduleRow]] = {}
    for line, cells in read_rows(DATASET, table, ANNOTATION_COLUMNS):
        uid = cells["seriesuid"]
        if uid not in series:
            raise _fail(table, line, f"seriesuid {uid!r} has no series under series/ or subset*/")
        x, y, z = (_number(table, line, c, cells[c]) for c in ("coordX", "coordY", "coordZ"))
        diameter = _number(table, line, "diameter_mm", cells["diameter_mm"], minimum=0.0)
        if diameter <= 0:
            raise _fail(table, line, f"column 'diameter_mm' must be positive, got {cells['diameter_mm']!r}")
        nodules.setdefault(uid, []).append(NoduleRow(line, (x, y, z), diameter))
        if len(nodules[uid]) > MAX_NODULES_PER_SERIES:
            raise _fail(table, line, f"series {uid} has more than {MAX_NODULES_PER_SERIES} nodules")
    return nodules


def _with_attributes(root: Path, nodules: dict[str, list[NoduleRow]]) -> None:
    """Fill composition and malignancy from nodule_attributes.csv (when present) into ``nodules`` in place."""
    table = root / ATTRIBUTES
    if not table.is_file():
        return
    seen: dict[tuple[str, int], int] = {}
    for line, cells in read_rows(DATASET, table, ATTRIBUTE_COLUMNS):
        uid, index_cell = cells["seriesuid"], cells["nodule_index"]
        if not index_cell.isdigit():
            raise _fail(table, line, f"column 'nodule_index' must be an integer >= 0, got {index_cell!r}")
        index = int(index_cell)
        rows = nodules.get(uid, [])
        if index >= len(rows):
            raise _fail(table, line, f"series {uid!r} has {len(rows)} nodule(s) in {ANNOTATIONS}; "
                                     f"there is no nodule_index {index}")
        if (uid, index) in seen:
            raise _fail(table, line, f"nodule {index} of series {uid} repeats line {seen[uid, index]}")
        seen[uid, index] = line
        composition = cells["composition"].lower() or None
        if composition is not None and composition not in COMPOSITIONS:
            raise _fail(table, line, f"column 'composition' must be one of {COMPOSITIONS} or empty, "
                                     f"got {cells['composition']!r}")
        if cells["malignant"] not in ("", "0", "1"):
            raise _fail(table, line, f"column 'malignant' must be 0, 1 or empty, got {cells['malignant']!r}")
        malignant = None if not cells["malignant"] else cells["malignant"] == "1"
        row = rows[index]
        rows[index] = NoduleRow(row.line, row.center_mm, row.diameter_mm, composition, malignant)


def _context(table: Path, line: int, cells: dict[str, str], provenance: Provenance) -> ClinicalContext:
    """A row of clinical.csv as the gatherer would deliver it; empty cells are missing features."""
    sex = cells["sex"].lower()
    if sex and sex not in SEXES:
        raise _fail(table, line, f"column 'sex' must be M, F, male, female or empty, got {cells['sex']!r}")
    smoking = cells["smoking_status"].lower()
    if smoking and smoking not in SMOKING_CODES:
        raise _fail(table, line, f"column 'smoking_status' must be one of {sorted(SMOKING_CODES)} or empty, "
                                 f"got {cells['smoking_status']!r}")
    if cells["prior_cancer"] not in ("", "0", "1"):
        raise _fail(table, line, f"column 'prior_cancer' must be 0, 1 or empty, got {cells['prior_cancer']!r}")
    missing = [c for c in CLINICAL_COLUMNS[1:-1] if not cells[c]]
    context = ClinicalContext(
        age_years=_number(table, line, "age", cells["age"], 0.0) if cells["age"] else None,
        sex=SEXES[sex] if sex else None, status="partial" if missing else "complete", missing=missing)
    for name, code, unit in (("pack_years", "8664-5", "{pack-years}"), ("cea", "2039-6", "ng/mL")):
        if cells[name]:
            context.labs[name] = LabValue(name, code, _number(table, line, name, cells[name], 0.0), unit, None,
                                          provenance)
    if smoking:
        code, display = SMOKING_CODES[smoking]
        context.coded_observations["smoking_status"] = CodedItem(code, SNOMED, display, "smoking_status",
                                                                 provenance=provenance)
    if cells["prior_cancer"] == "1":
        context.conditions.append(CodedItem(PRIOR_CANCER[0], SNOMED, PRIOR_CANCER[1], provenance=provenance))
    elif not cells["prior_cancer"]:
        context.errors.append(f"conditions: prior_cancer is empty in {CLINICAL}")
    if cells["note"]:
        context.notes.append(cells["note"])
    return context


def _contexts(root: Path, series: dict[str, Path]) -> dict[str, ClinicalContext]:
    table = root / CLINICAL
    if not table.is_file():
        return {}
    provenance = Provenance("dataset", str(root), CLINICAL)
    contexts: dict[str, ClinicalContext] = {}
    lines: dict[str, int] = {}
    for line, cells in read_rows(DATASET, table, CLINICAL_COLUMNS):
        uid = cells["seriesuid"]
        if uid not in series:
            raise _fail(table, line, f"seriesuid {uid!r} has no series under series/ or subset*/")
        if uid in lines:
            raise _fail(table, line, f"series {uid} repeats line {lines[uid]}")
        lines[uid] = line
        contexts[uid] = _context(table, line, cells, provenance)
    return contexts


def read_dataset(root: Path | str) -> list[DatasetCase]:
    """Every series of the dataset as a checked case, in series-UID order (module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise AiEngineError(f"{DATASET}: {root} is not a directory")
    series = find_series(root)
    nodules = _annotations(root, series)
    _with_attributes(root, nodules)
    contexts = _contexts(root, series)
    cases = [DatasetCase(root, uid, series[uid], tuple(nodules.get(uid, [])), contexts.get(uid),
                         _patient(series[uid], uid)) for uid in sorted(series)]
    log.info("lung-nodule dataset %s: %d series, %d of them nodule-free (not in %s), %d without a row in %s",
             root, len(cases), sum(not c.nodules for c in cases), ANNOTATIONS,
             sum(c.context is None for c in cases), CLINICAL)
    return cases


def _patient(image: Path, series_uid: str) -> str:
    """Whose series this is, for splits that keep a patient's series together: the first DICOM file's PatientID;
    a MetaImage (LUNA16) names no patient, so its series counts as a patient of its own."""
    files = dicom_files(image) if image.is_dir() else []
    patient = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID") \
        if files else None
    return f"patient {patient}" if patient else f"series {series_uid}"


def dataset_counts(cases: list[DatasetCase]) -> dict[str, int]:
    """What the dataset holds, for the bundle's metadata."""
    rows = [n for c in cases for n in c.nodules]
    return {"cases": len(cases), "patients": len({c.patient for c in cases}),
            "nodule_free_cases": sum(not c.nodules for c in cases), "nodules": len(rows),
            "nodules_with_composition": sum(n.composition is not None for n in rows),
            "nodules_with_malignancy": sum(n.malignant is not None for n in rows),
            "malignant_nodules": sum(bool(n.malignant) for n in rows),
            "cases_with_clinical_data": sum(c.context is not None for c in cases),
            "dicom_series": sum(c.image.suffix != ".mhd" for c in cases),
            "metaimage_series": sum(c.image.suffix == ".mhd" for c in cases)}


def sphere_labels(shape: tuple[int, ...], spacing_mm: tuple[float, float, float], centres: list[np.ndarray],
                  diameters: list[float]) -> np.ndarray:
    """uint8 label map with nodule k (from 1) as a ball of its diameter; an earlier nodule keeps shared voxels."""
    labels = np.zeros(shape, dtype=np.uint8)
    spacing = np.asarray(spacing_mm)
    for label, (centre, diameter) in enumerate(zip(centres, diameters, strict=True), start=1):
        radius = diameter / 2.0
        low = np.clip(np.floor(centre - radius / spacing), 0, None).astype(int)
        high = np.minimum(np.ceil(centre + radius / spacing) + 1, shape).astype(int)
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        grids = np.ogrid[box]
        inside = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing, strict=True)) <= radius**2
        region = labels[box]
        region[inside & (region == 0)] = label
        nearest = tuple(np.clip(np.rint(centre), 0, np.array(shape) - 1).astype(int))
        if labels[nearest] == 0:  # a nodule smaller than a voxel still marks its voxel
            labels[nearest] = label
    return labels


def load_volume(case: DatasetCase) -> Volume:
    """The case's CT in LPS order, as the detector sees it (``ai_engine.orientation``): its MetaImage, or its
    DICOM folder through ``load_series`` (UID checked)."""
    if case.image.suffix == ".mhd":
        return to_lps(read_metaimage(case.image))[0]
    files = dicom_files(case.image)
    if not files:
        raise AiEngineError(f"{DATASET}: {case.image} holds no .dcm files for series {case.series_uid}")
    try:
        volume = load_series(files)
    except AiEngineError as error:
        raise AiEngineError(f"{DATASET}: series {case.series_uid} ({case.image}): {error}") from error
    if volume.series_instance_uid != case.series_uid:
        raise AiEngineError(f"{DATASET}: {case.image} holds SeriesInstanceUID "
                            f"{volume.series_instance_uid}, not the folder's name")
    return to_lps(volume)[0]


def load_case(case: DatasetCase) -> AnnotatedScan:
    """The case's volume, nodules in voxels (each must lie inside the volume) and sphere label map."""
    volume = load_volume(case)
    shape = np.array(volume.array.shape)
    centres = []
    for row in case.nodules:
        centre = volume.patient_to_voxel(row.center_mm)
        if np.any(centre < -INSIDE_MARGIN) or np.any(centre > shape - 1 + INSIDE_MARGIN):
            raise _fail(case.root / ANNOTATIONS, row.line,
                        f"nodule at {row.center_mm} mm lies outside series {case.series_uid} (voxel z, y, x "
                        f"{np.round(centre, 1).tolist()}, volume {shape.tolist()}): are the coordinates in the "
                        "series' patient frame?")
        centres.append(centre)
    labels = sphere_labels(volume.array.shape, volume.spacing_mm, centres, [n.diameter_mm for n in case.nodules])
    nodules = [AnnotatedNodule(k, (float(centre[0]), float(centre[1]), float(centre[2])), row.diameter_mm,
                               row.composition, row.malignant)
               for k, (row, centre) in enumerate(zip(case.nodules, centres, strict=True), start=1)]
    return AnnotatedScan(volume=volume, labels=labels, nodules=nodules, context=case.context, seed=case.seed)
