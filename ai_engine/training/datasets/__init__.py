"""Readers of real (hospital or public) datasets in the layouts the model cards document.

One module per task; each turns a dataset directory into the same training units the synthetic
cohorts produce, so training and serving see identical preprocessing. A malformed dataset raises
``AiEngineError`` naming the file, row or column at fault.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ai_engine.bundle import DATASET_SOURCE
from ai_engine.errors import AiEngineError


def dataset_provenance(root: Path, tables: list[str], **counts: int) -> dict[str, Any]:
    """Where a dataset directory's cases came from: for a bundle's ``training_data`` or an evaluation's record.

    Records the directory, what it held (``counts``) and the SHA-256 of its tables, so a bundle
    or a metrics file can be traced back to the exact annotations behind it.
    """
    digests = {}
    for name in tables:
        path = Path(root) / name
        if path.is_file():
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"source": DATASET_SOURCE, "path": str(Path(root).resolve()), "tables_sha256": digests, **counts}


def metrics_record(training_data: dict[str, Any], task: str) -> str:
    """Where a bundle's held-out metrics are: the model card's for the project's synthetic training, none for a
    bundle trained on a dataset (the card's numbers are another model's)."""
    if training_data.get("source") == DATASET_SOURCE:
        return (f"not evaluated by radfusion: evaluate it on held-out cases of the institution with `radfusion "
                f"evaluate {task} --data-dir DIR --bundle THIS_BUNDLE --out-dir RESULTS`")
    return f"see docs/model-cards/{task}/metrics.json (radfusion evaluate {task})"


def dataset_intended_use(root: Path) -> str:
    """The ``intended_use`` of a bundle trained on a dataset: the project does not vouch for it."""
    return (f"Trained with `radfusion train --data-dir {Path(root).resolve()}` on that dataset. radfusion has "
            "not validated this model: not for clinical use until the institution that trained it has "
            "validated it.")


def dicom_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The DICOM files in ``folder`` (and below it when ``recursive``): names ending in .dcm in any letter case
    (exports write .DCM too; a case-sensitive match silently left such slices out), sorted."""
    return sorted(p for p in (folder.rglob("*") if recursive else folder.glob("*"))
                  if p.suffix.lower() == ".dcm" and p.is_file())


@contextmanager
def open_table(table: Path) -> Iterator[TextIO]:
    """A CSV table opened as UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8" writes one); a table in
    another encoding is an error naming it, wherever in the table the first such byte lies."""
    with table.open(newline="", encoding="utf-8-sig") as handle:
        try:
            yield handle
        except UnicodeDecodeError as error:
            raise AiEngineError(f"{table} is not UTF-8 text (byte {error.start} of a read block cannot be "
                                "decoded): save it as CSV UTF-8") from None


def row_error(dataset: str, table: Path, line: int, message: str) -> AiEngineError:
    """The error for a bad row: the dataset kind, the table and its line, then what is wrong."""
    return AiEngineError(f"{dataset}: {table} line {line}: {message}")


def read_rows(dataset: str, table: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line, stripped cells) of every row of the CSV ``table``, which must have ``columns``.

    A row with more cells than the header is refused (its cells would land under the wrong columns).
    """
    with open_table(table) as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise AiEngineError(f"{dataset}: {table} lacks column(s) {missing}; it has {reader.fieldnames or []}")
        rows = []
        for row in reader:
            if None in row:
                raise row_error(dataset, table, reader.line_num,
                                f"more cells than the header's {len(reader.fieldnames or [])}")
            rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
    return rows
