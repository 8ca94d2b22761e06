"""Spool layout, UID sanitising, durable writes, quarantine and crash recovery."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dicom_node.errors import InvalidUidError, SpoolPathError
from dicom_node.retry import backoff_delay
from dicom_node.spool import Spool, safe_uid_component


def test_layout_is_created(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    assert sorted(p.name for p in spool.root.iterdir()) == ["incoming-tmp", "instances", "quarantine", "results"]


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.2", "0", "1." + "2" * 62])
def test_valid_uids_pass(uid: str) -> None:
    assert safe_uid_component(uid) == uid


@pytest.mark.parametrize("uid", ["", "1.2.3/../../x", "..", "1..2", "1.2.", ".1", "1.2.3 ", "1." + "2" * 63,
                                 "1.2\x00", "x" * 500])
def test_invalid_uids_are_refused_naming_the_value(uid: str) -> None:
    with pytest.raises(InvalidUidError) as caught:
        safe_uid_component(uid)
    assert repr(uid)[:40] in str(caught.value) and len(str(caught.value)) < 200


def test_instance_path_and_durable_write(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.instance_path("1.2", "1.2.3", "1.2.3.4")
    assert path == spool.root / "instances" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert spool.write_durably(path, [b"abc", memoryview(b"def")]) == 6
    assert path.read_bytes() == b"abcdef"
    assert spool.write_durably(path, b"x") == 1 and path.read_bytes() == b"x"
    assert list(spool.incoming_tmp.iterdir()) == []


def test_paths_outside_the_root_are_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    with pytest.raises(SpoolPathError, match="outside spool"):
        spool.write_durably(spool.root / ".." / "escape.dcm", b"x")
    os.symlink(tmp_path, spool.instances / "link")
    with pytest.raises(SpoolPathError):
        spool.write_durably(spool.instances / "link" / "escape.dcm", b"x")
    assert not (tmp_path / "escape.dcm").exists()


def test_failed_write_leaves_no_final_and_no_temp_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    target = spool.instance_path("1", "2", "3")

    def chunks():  # noqa: ANN202
        yield b"part"
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        spool.write_durably(target, chunks())
    assert not target.exists() and list(spool.incoming_tmp.iterdir()) == []


def test_recover_removes_leftover_temp_files_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    final = spool.instance_path("1", "2", "3")
    spool.write_durably(final, b"kept")
    (spool.incoming_tmp / "crash.part").write_bytes(b"half")
    assert Spool(tmp_path).recover() == 1
    assert list(spool.incoming_tmp.iterdir()) == [] and final.read_bytes() == b"kept"


def test_quarantine_uses_fresh_names_and_a_sidecar(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.quarantine_file(spool.stage(b"bad")[0], "dataset cannot be parsed", "CT1", "assoc-1", "1.2/../x")
    second = spool.quarantine_file(spool.stage(b"bad")[0], "again", "CT1", "assoc-1", "1.2/../x")
    assert first != second and first.parent == second.parent == spool.quarantine_dir
    assert list(spool.incoming_tmp.iterdir()) == []
    assert first.read_bytes() == b"bad"
    sidecar = json.loads(first.with_suffix(".json").read_text())
    assert sidecar["reason"] == "dataset cannot be parsed"
    assert (sidecar["calling_ae"], sidecar["association_id"], sidecar["sop_instance_uid"]) == ("CT1", "assoc-1", "1.2/../x")
    assert "quarantined_at" in sidecar


def test_quarantine_file_moves_a_stored_instance(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    stored = spool.instance_path("1", "2", "3")
    spool.write_durably(stored, b"data")
    moved = spool.quarantine_file(stored, "sink failed", "CT1", "a")
    assert not stored.exists() and moved.read_bytes() == b"data"


def test_free_bytes_is_positive(tmp_path: Path) -> None:
    assert Spool(tmp_path).free_bytes() > 0


@pytest.mark.parametrize(("attempt", "expected"), [(1, 2.0), (2, 6.0), (3, 18.0), (4, 30.0), (10_000, 30.0)])
def test_backoff_grows_and_caps(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, initial_s=2.0, factor=3.0, max_s=30.0) == expected


def test_backoff_refuses_nonsense() -> None:
    from dicom_node.errors import ConfigError
    for kwargs in ({"attempt": 0}, {"factor": 0.5}, {"initial_s": -1.0}):
        with pytest.raises(ConfigError):
            backoff_delay(**{"attempt": 1, "initial_s": 1.0, "factor": 2.0, "max_s": 10.0, **kwargs})


def test_a_staged_file_that_cannot_be_placed_is_removed(tmp_path: Path) -> None:
    """The series folder could not be made (a file in its way): the staged copy stayed in incoming-tmp."""
    spool = Spool(tmp_path)
    target = spool.instance_path("1.2", "3.4", "5.6")
    target.parent.parent.mkdir(parents=True)
    target.parent.write_bytes(b"in the way")  # where the series folder should be
    staged, _ = spool.stage(b"data")
    with pytest.raises(OSError):
        spool.place(staged, target)
    assert list(spool.incoming_tmp.iterdir()) == []
