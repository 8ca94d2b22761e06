"""Reader of a hospital head CT dataset for the ICH task (docs/model-cards/ich.md, "Training on real data").

Layout::

    root/cases.csv               case_id,label[,age,sex,inr,platelets,systolic_bp,gcs,anticoagulant,
                                 antiplatelet,trauma_mechanism,note]
    root/<case_id>/dicom/*.dcm   one axial CT series per case
    root/<case_id>/mask.npz      optional: array ``labels`` (uint8, 0 none, 1..5 = SUBTYPES order) on the
                                 series' grid in ``load_series`` order (ascending along the slice normal),
                                 or in any slice order with an array ``sop_instance_uids`` naming each slice

The whole table is checked before the first series is read, so a bad row fails in seconds, not
after an hour of loading. Empty cells are missing values, never zeros. A case without a mask trains
the case-level fusion head only (its labels are all ``UNKNOWN_LABEL``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ai_engine.errors import AiEngineError
from ai_engine.orientation import to_lps
from ai_engine.synthetic.cohorts.ich import IchCase
from ai_engine.synthetic.head_ct import SUBTYPES, bleed_truths
from ai_engine.training.datasets import dicom_files, read_rows, row_error
from ai_engine.volume import Volume, load_series
from hl7_fhir.context import ClinicalContext, CodedItem, LabValue, Provenance

DATASET = "real ICH dataset"
UNKNOWN_LABEL = 255  # a case without a mask: its slabs train the fusion head, not the segmentation
REQUIRED_COLUMNS = ("case_id", "label")
LAB_COLUMNS = ("inr", "platelets", "systolic_bp", "gcs")
MEDICATION_COLUMNS = ("anticoagulant", "antiplatelet")
TRAUMA_LEVELS = ("none", "fall", "assault", "collision")
SAFE_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class IchDatasetRow:
    """One checked row of ``cases.csv`` (line number kept for error messages)."""

    line: int
    case_id: str
    label: int
    values: dict[str, str]

    @property
    def patient(self) -> str:
        """The case's patient (optional column ``patient_id``; without it, each case is a patient of its own)."""
        return self.values.get("patient_id") or f"case {self.case_id}"


def _fail(table: Path, line: int, message: str) -> AiEngineError:
    return row_error(DATASET, table, line, message)


def _check_row(root: Path, table: Path, line: int, cells: dict[str, str]) -> IchDatasetRow:
    case_id = cells["case_id"]
    if not SAFE_CASE_ID.fullmatch(case_id):
        raise _fail(table, line, f"case_id {case_id!r} must be 1-64 letters, digits, '.', '_' or '-' "
                                 "(it names a folder under the dataset root)")
    if cells["label"] not in ("0", "1"):
        raise _fail(table, line, f"label must be 0 or 1, got {cells['label']!r}")
    for column in ("age", *LAB_COLUMNS):
        cell = cells.get(column, "")
        if cell:
            try:
                value = float(cell)
            except ValueError:
                raise _fail(table, line, f"column {column!r} is not a number: {cell!r}") from None
            if not math.isfinite(value):
                raise _fail(table, line, f"column {column!r} is not finite: {cell!r}")
    for column in MEDICATION_COLUMNS:
        if cells.get(column, "") not in ("", "0", "1"):
            raise _fail(table, line, f"column {column!r} must be 0, 1 or empty, got {cells[column]!r}")
    if cells.get("sex", "").lower() not in ("", "m", "f", "male", "female"):  # read as missing before, silently
        raise _fail(table, line, f"column 'sex' must be M, F, male, female or empty, got {cells['sex']!r}")
    trauma = cells.get("trauma_mechanism", "").lower()
    if trauma and trauma not in TRAUMA_LEVELS:
        raise _fail(table, line, f"trauma_mechanism must be one of {TRAUMA_LEVELS} or empty, got {trauma!r}")
    if not series_paths(root, case_id):
        raise _fail(table, line, f"case {case_id}: no DICOM files in {root / case_id / 'dicom'}")
    return IchDatasetRow(line, case_id, int(cells["label"]), cells)


def read_table(root: Path) -> list[IchDatasetRow]:
    """Every row of ``root/cases.csv``, checked (columns, values, unique ids, series present)."""
    table = Path(root) / "cases.csv"
    if not table.is_file():
        raise AiEngineError(f"{DATASET}: {table} is missing (see docs/model-cards/ich.md for the layout)")
    rows = [_check_row(Path(root), table, line, cells) for line, cells in read_rows(DATASET, table, REQUIRED_COLUMNS)]
    if not rows:
        raise AiEngineError(f"{DATASET}: {table} has no cases")
    seen: dict[str, int] = {}
    for row in rows:
        if row.case_id in seen:
            raise _fail(table, row.line, f"case_id {row.case_id} repeats line {seen[row.case_id]}")
        seen[row.case_id] = row.line
    return rows


def _mask(path: Path, volume: Volume, row: IchDatasetRow) -> np.ndarray:
    """The case's bleed labels on the volume's grid, checked against the series and the case label."""
    with np.load(path) as stored:
        if "labels" not in stored.files:
            raise AiEngineError(f"{DATASET}: {path} has no array 'labels' (it has {stored.files})")
        labels = stored["labels"]
        order = stored["sop_instance_uids"] if "sop_instance_uids" in stored.files else None
    if order is not None:
        position = {str(uid): k for k, uid in enumerate(order)}
        unknown = [uid for uid in volume.sop_instance_uids if uid not in position]
        if unknown or len(position) != len(volume.sop_instance_uids):
            raise AiEngineError(f"{DATASET}: {path}: sop_instance_uids do not name the series' "
                                f"{len(volume.sop_instance_uids)} slices one to one")
        labels = labels[[position[uid] for uid in volume.sop_instance_uids]]
    if labels.shape != volume.array.shape:
        raise AiEngineError(f"{DATASET}: {path}: labels have shape {labels.shape}, the series "
                            f"{volume.array.shape} (slices, rows, columns)")
    if labels.min() < 0 or labels.max() > len(SUBTYPES):
        raise AiEngineError(f"{DATASET}: {path}: labels must be 0..{len(SUBTYPES)}, "
                            f"got {int(labels.min())}..{int(labels.max())}")
    if bool(labels.any()) != bool(row.label):
        raise AiEngineError(f"{DATASET}: case {row.case_id} has label {row.label} but its mask "
                            f"{'marks' if labels.any() else 'has no'} blood")
    return labels.astype(np.uint8)


def _context(row: IchDatasetRow, provenance: Provenance) -> ClinicalContext:
    """The row's clinical columns as the server would gather them (empty cells stay missing)."""
    cells = row.values
    context = ClinicalContext(age_years=float(cells["age"]) if cells.get("age") else None,
                              sex=cells.get("sex") or None, status="complete")
    for name in LAB_COLUMNS:
        if cells.get(name):
            context.labs[name] = LabValue(name, "", float(cells[name]), "", None, provenance)
    if any(cells.get(c) for c in MEDICATION_COLUMNS):
        context.medications.extend(CodedItem("", "", c, c) for c in MEDICATION_COLUMNS if cells.get(c) == "1")
    else:
        context.errors.append("medications: not recorded in the dataset")
    if cells.get("trauma_mechanism"):
        mechanism = cells["trauma_mechanism"].lower()
        context.coded_observations["trauma_mechanism"] = CodedItem(mechanism, "", mechanism)
    if cells.get("note"):
        context.notes.append(cells["note"])
    return context


def case_contexts(root: Path) -> list[ClinicalContext]:
    """The clinical context of every case of the table, as ``load_cases`` gives it (no image is read)."""
    provenance = Provenance("dataset", str(root), "cases.csv")
    return [_context(row, provenance) for row in read_table(root)]


def series_paths(root: Path, case_id: str) -> list[Path]:
    """The DICOM files of case ``case_id``."""
    return dicom_files(Path(root) / case_id / "dicom")


def load_cases(root: Path, rows: list[IchDatasetRow]) -> Iterator[IchCase]:
    """The cases of ``rows`` (``read_table``'s, so the table is checked first), one series at a time."""
    provenance = Provenance("dataset", str(root), "cases.csv")
    for row in rows:
        case_dir = Path(root) / row.case_id
        try:
            volume = load_series(series_paths(root, row.case_id))
        except AiEngineError as error:  # which case, when one of thousands cannot be read
            raise AiEngineError(f"{DATASET}: case {row.case_id} ({case_dir / 'dicom'}): {error}") from error
        mask_path = case_dir / "mask.npz"
        labels = (_mask(mask_path, volume, row) if mask_path.is_file()
                  else np.full(volume.array.shape, UNKNOWN_LABEL, np.uint8))
        volume, reorientation = to_lps(volume)  # trained as served: in LPS order (ai_engine.orientation)
        labels = reorientation.to_lps(labels)
        truths = bleed_truths(labels, volume.spacing_mm) if mask_path.is_file() else []
        cells = row.values
        yield IchCase(case_id=row.case_id, hu=volume.array, labels=labels, spacing=volume.spacing_mm,
                      truths=truths, context=_context(row, provenance), note=cells.get("note") or None,
                      label=row.label, age=float(cells["age"]) if cells.get("age") else 0.0,
                      sex=cells.get("sex") or "")
