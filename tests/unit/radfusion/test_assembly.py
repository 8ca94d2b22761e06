"""Study assembly over many studies: one study's bad geometry or error does not hold up the others."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.contracts import StoredInstance
from dicom_node.spool import Spool
from radfusion import assembly
from radfusion.assembly import StudyAssembler
from radfusion.db import Database
from radfusion.ingest import IngestRecorder
from radfusion.models import AuditEvent, Job, Study, utcnow
from radfusion.routing import compile_routing
from radfusion.settings import StabilitySettings, default_routing

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _record(db: Database, tmp_path: Path, study: str, positions: list[list[float]]) -> None:
    recorder = IngestRecorder(db, Spool(tmp_path / "spool"))
    for index, position in enumerate(positions):
        attributes = {"Modality": "CT", "BodyPartExamined": "HEAD", "SeriesDescription": "Axial",
                      "ImagePositionPatient": position, "ImageOrientationPatient": AXIAL, "InstanceNumber": index + 1}
        assert recorder.instance_stored(StoredInstance(
            None, tmp_path / f"{study}-{index}.dcm", "1.2.840.10008.5.1.4.1.1.2", f"{study}.9.{index}", study,
            f"{study}.1", "1.2.840.10008.1.2.1", 10, attributes))


def _assembler(db: Database) -> StudyAssembler:
    return StudyAssembler(db, compile_routing(default_routing()), StabilitySettings(), {"ich_fusion": "1"})


def test_a_slice_with_a_two_value_position_neither_crashes_nor_holds_up_assembly(tmp_path: Path) -> None:
    """Before: the position [0, 0] was stored, the gap check raised in np.dot, and every pass rolled back, so no
    study was ever assembled again."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _record(db, tmp_path, "1.2.3.100", [[0.0, 0.0, 5.0 * z] for z in range(3)])
    _record(db, tmp_path, "1.2.3.200", [[0.0, 0.0, 0.0], [0.0, 0.0], [0.0, 0.0, 10.0]])
    assert _assembler(db).tick(utcnow() + timedelta(hours=1)) == 2  # after the quiet timeout: both dispatched
    with db.session() as session:
        assert {s.study_uid: s.state for s in session.scalars(select(Study))} == {"1.2.3.100": "processing",
                                                                                   "1.2.3.200": "processing"}
    db.dispose()


def test_an_error_in_one_study_is_audited_once_and_the_others_go_on(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _record(db, tmp_path, "1.2.3.100", [[0.0, 0.0, 5.0 * z] for z in range(3)])
    _record(db, tmp_path, "1.2.3.200", [[0.0, 0.0, 5.0 * z] for z in range(3)])
    check = assembly.check_series_geometry

    def fails_for_one(slices: list, gap_factor: float):  # noqa: ANN202
        if any(item.instance_number == 2 and item.position[2] == 5.0 for item in slices) and fails_for_one.first:
            fails_for_one.first = False
            raise ValueError("a geometry no check foresaw")
        return check(slices, gap_factor=gap_factor)

    fails_for_one.first = True  # type: ignore[attr-defined]
    monkeypatch.setattr(assembly, "check_series_geometry", fails_for_one)
    assembler = _assembler(db)
    later = utcnow() + timedelta(hours=1)
    assert assembler.tick(later) == 1  # the other study is dispatched in the same pass
    with db.session() as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.kind == "assembly_failed")).one()
        assert "a geometry no check foresaw" in failed.detail
        assert len(session.scalars(select(Job)).all()) == 1
    assert assembler.tick(later) == 1  # the study waited and is assembled once it can be
    db.dispose()
