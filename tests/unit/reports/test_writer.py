"""Durable writer: the file is complete and readable, and no temporary file stays behind."""

from __future__ import annotations

import pydicom

from reports.sr import build_sr
from reports.writer import save_dataset
from tests.unit.reports.report_checks import ich_result


def test_save_dataset_writes_a_readable_part10_file_and_reports_its_size(head_ct, algorithm, tmp_path):
    sr = build_sr(head_ct, ich_result(algorithm, head_ct), series_number=902)
    path = tmp_path / "out" / "sr.dcm"

    size = save_dataset(sr, path)

    assert size == path.stat().st_size
    assert pydicom.dcmread(path).SOPInstanceUID == sr.SOPInstanceUID
    assert [p.name for p in path.parent.iterdir()] == ["sr.dcm"]


def test_save_dataset_replaces_an_existing_file_whole(head_ct, algorithm, tmp_path):
    path = tmp_path / "sr.dcm"
    path.write_bytes(b"x" * 10_000_000)
    sr = build_sr(head_ct, ich_result(algorithm, head_ct), series_number=902)

    size = save_dataset(sr, path)

    assert path.stat().st_size == size < 10_000_000
    assert pydicom.dcmread(path).SOPInstanceUID == sr.SOPInstanceUID
