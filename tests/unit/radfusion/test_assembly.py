"""Study assembly over many studies: one study's bad geometry or error does not hold up the others."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.contracts import AssociationInfo, StoredInstance
from dicom_node.spool import Spool
from radfusion import assembly
from radfusion.assembly import StudyAssembler
from radfusion.db import Database
from radfusion.ingest import IngestRecorder
from radfusion.models import AuditEvent, Job, Study, utcnow
from radfusion.routing import compile_routing
from radfusion.settings import StabilitySettings, default_routing

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _record(db: Database, tmp_path: Path, study: str, positions: list[list[float]], series: str = "1",
            body_part: str = "HEAD", sop_root: str = "9", orientation: list[float] = AXIAL) -> None:
    spool = Spool(tmp_path / "spool")
    recorder = IngestRecorder(db, spool)
    for index, position in enumerate(positions):
        attributes = {"Modality": "CT", "BodyPartExamined": body_part, "SeriesDescription": "Axial",
                      "ImagePositionPatient": position, "ImageOrientationPatient": orientation, "InstanceNumber": index + 1}
        sop = f"{study}.{sop_root}.{index}"
        path = spool.instance_path(study, f"{study}.{series}", sop)
        spool.write_durably(path, b"header and pixels")
        recorder.instance_stored(StoredInstance(
            None, path, "1.2.840.10008.5.1.4.1.1.2", sop, study, f"{study}.{series}",
            "1.2.840.10008.1.2.1", 10, attributes))


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


def test_a_series_emptied_by_a_resend_in_another_series_gets_no_job(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    slices = [[0.0, 0.0, 5.0 * z] for z in range(3)]
    _record(db, tmp_path, "1.2.3.100", slices, series="1")
    _record(db, tmp_path, "1.2.3.100", slices, series="2")  # the same instances, corrected into another series
    assert _assembler(db).tick(utcnow() + timedelta(hours=1)) == 1  # before: 2, one of them on an empty series
    with db.session() as session:
        [job] = session.scalars(select(Job)).all()
        assert job.series.series_uid == "1.2.3.100.2"
    db.dispose()


def test_a_late_series_no_rule_matches_leaves_the_study_processing_while_its_job_waits(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _record(db, tmp_path, "1.2.3.100", [[0.0, 0.0, 5.0 * z] for z in range(3)])
    assembler = _assembler(db)
    later = utcnow() + timedelta(hours=1)
    assert assembler.tick(later) == 1
    _record(db, tmp_path, "1.2.3.100", [[0.0, 0.0, 5.0 * z] for z in range(3)], series="3", body_part="ABDOMEN",
            sop_root="8")
    with db.session() as session:  # the late series reopened the study
        session.scalars(select(Study)).one().state = "receiving"
    assert assembler.tick(later + timedelta(hours=1)) == 0
    with db.session() as session:
        assert session.scalars(select(Study.state)).one() == "processing"  # before: done, with the job queued
    db.dispose()


def test_a_series_another_open_association_is_still_sending_waits_for_it(tmp_path: Path) -> None:
    """Before: only the series' last association was asked, so A's release settled the series while B, still open,
    had more of its slices to send, and a partial result went out first."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    spool = Spool(tmp_path / "spool")
    recorder = IngestRecorder(db, spool)
    now = utcnow()
    for name in ("B", "A"):
        recorder.association_opened(AssociationInfo(name, name, "RADFUSION", "127.0.0.1", 1, now))
    for index, name in enumerate(("B", "B", "A", "A", "A")):
        path = spool.instance_path("1.2.3.100", "1.2.3.100.1", f"1.2.3.100.9.{index}")
        spool.write_durably(path, b"x")
        recorder.instance_stored(StoredInstance(
            name, path, "1.2.840.10008.5.1.4.1.1.2", f"1.2.3.100.9.{index}", "1.2.3.100", "1.2.3.100.1",
            "1.2.840.10008.1.2.1", 1, {"Modality": "CT", "BodyPartExamined": "HEAD", "InstanceNumber": index + 1,
                                       "ImagePositionPatient": [0.0, 0.0, 5.0 * index],
                                       "ImageOrientationPatient": AXIAL}))
    recorder.association_closed("A", released=True)
    assembler = _assembler(db)
    settled = utcnow() + timedelta(seconds=StabilitySettings().settle_s + 1)
    assert assembler.tick(settled) == 0  # B is still open
    recorder.association_closed("B", released=True)
    assert assembler.tick(settled) == 1
    db.dispose()


def test_a_sagittal_or_coronal_reformat_gets_no_job_but_an_audit_event(tmp_path: Path) -> None:
    """An MPR of a head CT passed the routing rule and became a job that could only fail ("not an axial series"):
    every trauma head CT left failed jobs that `status --check` reported for someone to act on."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _record(db, tmp_path, "1.2.3.100", [[0.0, 0.0, 5.0 * z] for z in range(3)], series="1")
    _record(db, tmp_path, "1.2.3.100", [[2.0 * x, 0.0, 0.0] for x in range(3)], series="2", sop_root="8",
            orientation=[0.0, 1.0, 0.0, 0.0, 0.0, -1.0])
    _record(db, tmp_path, "1.2.3.100", [[0.0, 2.0 * y, 0.0] for y in range(3)], series="3", sop_root="7",
            orientation=[1.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    assert _assembler(db).tick(utcnow() + timedelta(hours=1)) == 1
    with db.session() as session:
        (job,) = session.scalars(select(Job)).all()
        assert job.series.series_uid == "1.2.3.100.1"
        audits = {e.subject: e.detail for e in session.scalars(select(AuditEvent).where(AuditEvent.kind == "not_axial"))}
        assert audits == {"1.2.3.100.2": "a sagittal series: not analysed by ich_fusion, which read axial series",
                          "1.2.3.100.3": "a coronal series: not analysed by ich_fusion, which read axial series"}
    db.dispose()
