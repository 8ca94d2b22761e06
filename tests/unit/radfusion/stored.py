"""Instances put into a spool and the database the way the SCP stores them: durable file, then its row."""

from __future__ import annotations

from pathlib import Path

import pydicom

from dicom_node.spool import Spool
from radfusion.db import Database
from radfusion.ingest import IngestRecorder
from radfusion.recovery import read_stored_instance


def store(db: Database, spool: Spool, sources: list[Path]) -> tuple[str, list[Path]]:
    """Store ``sources``; the Study Instance UID of the last one and the spool paths."""
    recorder = IngestRecorder(db, spool)
    paths = []
    for source in sources:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        target = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        spool.write_durably(target, source.read_bytes())
        recorder.instance_stored(read_stored_instance(target))
        paths.append(target)
    return str(ds.StudyInstanceUID), paths
