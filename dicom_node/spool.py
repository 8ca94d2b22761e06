"""The spool: where received instances land, durably, under paths that cannot escape the root.

Layout under ``root``::

    incoming-tmp/                       temp files being written (removed by recover())
    instances/<study>/<series>/<sop>.dcm
    quarantine/<uuid>.dcm + <uuid>.json rejected bytes and why
    results/                            objects radfusion produced, before sending

A final file appears only through ``os.replace`` of a fully written, fsynced temp file, so a
crash leaves temp files behind, never a half-written instance.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import uuid
import zlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path

from dicom_node.errors import InvalidUidError, SpoolPathError

UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_UID_LENGTH = 64
STUDY_LOCK_STRIPES = 64  # studies share a lock when their UIDs hash alike: purges are rare and short
_REPR_LIMIT = 80

Chunks = bytes | bytearray | memoryview | Iterable[bytes | bytearray | memoryview]


def safe_uid_component(uid: str) -> str:
    """Return ``uid`` unchanged if it is a valid DICOM UID, which makes it a safe path component."""
    if not isinstance(uid, str) or len(uid) > MAX_UID_LENGTH or not UID_PATTERN.fullmatch(uid):
        shown = repr(uid)
        if len(shown) > _REPR_LIMIT:
            shown = shown[:_REPR_LIMIT] + "...'"
        raise InvalidUidError(
            f"UID {shown} is not a valid DICOM UID (digits and dots, at most {MAX_UID_LENGTH} chars)"
        )
    return uid


def _fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` survive a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_empty(directory: Path) -> bool:
    """Remove ``directory`` if it is empty; whether it is gone."""
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError:  # not empty: e.g. a late instance of the series arrived
        return False
    return True


class _SharedExclusiveLock:
    """Many holders share it, or one holds it alone; a waiting exclusive holder goes before new sharers."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._sharers = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._exclusive and not self._waiting_exclusive)
            self._sharers += 1
        try:
            yield
        finally:
            with self._changed:
                self._sharers -= 1
                self._changed.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._changed:
            self._waiting_exclusive += 1
            try:
                self._changed.wait_for(lambda: not self._exclusive and not self._sharers)
            finally:
                self._waiting_exclusive -= 1
                self._changed.notify_all()  # sharers held back for this waiter may go if it gave up
            self._exclusive = True
        try:
            yield
        finally:
            with self._changed:
                self._exclusive = False
                self._changed.notify_all()


class Spool:
    """Spool directories under one root, with durable writes and a quarantine."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._study_locks = [_SharedExclusiveLock() for _ in range(STUDY_LOCK_STRIPES)]
        self.incoming_tmp = self.root / "incoming-tmp"
        self.instances = self.root / "instances"
        self.quarantine_dir = self.root / "quarantine"
        self.results = self.root / "results"
        for directory in (self.incoming_tmp, self.instances, self.quarantine_dir, self.results):
            directory.mkdir(parents=True, exist_ok=True)
        for directory in (self.incoming_tmp, self.instances, self.quarantine_dir):  # results/ may lie anywhere
            if not directory.resolve().is_relative_to(self.root):  # every store would fail as a path escape
                raise SpoolPathError(f"{directory} links to {directory.resolve()}, outside the spool {self.root}: "
                                     "received files are renamed between incoming-tmp/, instances/ and quarantine/, "
                                     "which needs one filesystem; to use a larger disk, point the storage path "
                                     "itself at it")

    def recover(self) -> int:
        """Remove temp files a crash left behind; return how many were removed."""
        removed = 0
        for leftover in self.incoming_tmp.iterdir():
            if leftover.is_file() or leftover.is_symlink():
                leftover.unlink()
                removed += 1
        if removed:
            _fsync_directory(self.incoming_tmp)
        return removed

    def free_bytes(self) -> int:
        """Bytes free to unprivileged users on the spool's filesystem."""
        return shutil.disk_usage(self.root).free

    def inside(self, path: Path) -> Path:
        """Return ``path`` resolved, or raise if it resolves outside the spool root."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.root):
            raise SpoolPathError(f"path {str(path)!r} resolves to {str(resolved)!r}, outside spool {self.root}")
        return resolved

    def instance_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Final path ``instances/<study>/<series>/<sop>.dcm``; each UID must be a valid UID."""
        path = (
            self.instances
            / safe_uid_component(study_uid)
            / safe_uid_component(series_uid)
            / f"{safe_uid_component(sop_instance_uid)}.dcm"
        )
        return self.inside(path)

    def write_durably(self, path: Path, data: Chunks) -> int:
        """Write ``data`` to ``path`` via temp file, fsync, rename, directory fsync; return the size."""
        staged, size = self.stage(data)
        self.place(staged, path)
        return size

    def stage(self, data: Chunks) -> tuple[Path, int]:
        """Write ``data`` to a fsynced temp file (removed by ``recover`` after a crash); its path and size."""
        chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else data
        fd, tmp_name = tempfile.mkstemp(dir=self.incoming_tmp, suffix=".part")
        size = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    size += handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return Path(tmp_name), size

    def place(self, staged: Path, path: Path) -> None:
        """Rename a ``stage``d file to ``path`` (replacing what is there) and fsync its directory; the staged file
        is removed when it cannot be put there (a folder that cannot be made, a path outside the spool)."""
        try:
            target = self.inside(path)
            self._make_directories(target.parent)
            os.replace(staged, target)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)

    def receiving(self, study_uid: str) -> AbstractContextManager[None]:
        """Held while an instance of ``study_uid`` is written and recorded; any number at once."""
        return self._study_lock(study_uid).shared()

    def purging(self, study_uid: str) -> AbstractContextManager[None]:
        """Held while a study's instances are deleted: no instance of it is being received meanwhile."""
        return self._study_lock(study_uid).exclusive()

    def _study_lock(self, study_uid: str) -> _SharedExclusiveLock:
        return self._study_locks[zlib.crc32(study_uid.encode()) % STUDY_LOCK_STRIPES]

    def discard(self, paths: Iterable[Path]) -> int:
        """Delete stored instance files (already gone: fine), then their series and study folders once
        empty; the bytes freed. A path outside ``instances/`` is refused before anything is deleted. The
        caller holds ``purging`` for the study, so no instance of it is being placed meanwhile."""
        targets = [self.inside(path) for path in paths]
        outside = [t for t in targets if not t.is_relative_to(self.instances)]
        if outside:
            raise SpoolPathError(f"{len(outside)} path(s) to discard lie outside {self.instances}, e.g. {outside[0]}")
        freed = 0
        for target in targets:
            try:
                freed += target.stat().st_size
                target.unlink()
            except FileNotFoundError:
                continue
        for series_dir in sorted({t.parent for t in targets}):
            directory = series_dir
            while directory != self.instances and _remove_if_empty(directory):
                directory = directory.parent
            _fsync_directory(directory)  # the first folder kept records the deletions below it
        return freed

    def discard_quarantined(self, before: float) -> list[Path]:
        """Delete the quarantined files (and sidecars) set aside before ``before`` (epoch seconds: the time of
        the rename or write into the quarantine, ``st_ctime``); the ``.dcm`` paths deleted."""
        removed = []
        for entry in os.scandir(self.quarantine_dir):
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_ctime < before:
                    os.unlink(entry.path)
                    if entry.name.endswith(".dcm"):
                        removed.append(Path(entry.path))
            except FileNotFoundError:
                continue
        if removed:
            _fsync_directory(self.quarantine_dir)
        return removed

    def quarantine_file(self, path: Path, reason: str, calling_ae: str, association_id: str,
                        sop_instance_uid: str | None = None) -> Path:
        """Move a staged or stored spool file into quarantine (a rename) under a fresh uuid name, with a JSON
        sidecar saying why."""
        source = self.inside(path)
        target = self.quarantine_dir / f"{uuid.uuid4()}.dcm"
        os.replace(source, target)
        _fsync_directory(self.quarantine_dir)
        try:
            _fsync_directory(source.parent)
        except FileNotFoundError:  # a retention purge removed the emptied folder, durably, meanwhile
            pass
        self._write_sidecar(target, reason, calling_ae, association_id, sop_instance_uid)
        return target

    def _write_sidecar(self, target: Path, reason: str, calling_ae: str, association_id: str,
                       sop_instance_uid: str | None) -> None:
        sidecar = {
            "reason": reason,
            "quarantined_at": datetime.now(timezone.utc).isoformat(),
            "calling_ae": calling_ae,
            "association_id": association_id,
            "sop_instance_uid": sop_instance_uid,
        }
        self.write_durably(target.with_suffix(".json"), json.dumps(sidecar, indent=2).encode())

    def _make_directories(self, directory: Path) -> None:
        """Create ``directory`` and fsync the parent of each directory created, so entries persist."""
        missing: list[Path] = []
        current = directory
        while not current.exists():
            missing.append(current)
            current = current.parent
        directory.mkdir(parents=True, exist_ok=True)
        for created in reversed(missing):
            _fsync_directory(created.parent)
