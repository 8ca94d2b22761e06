"""A study in from a real modality/PACS, SR and SEG back into it, every object IOD-valid."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from ai_engine.synthetic.studies import legacy_enhanced_ct, write_study
from radfusion.models import Job
from tests.integration.servers import Orthanc, radfusion_server, routing_to
from tests.peers import dciodvfy_errors, free_port, require_tool, storescp, storescu, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.peers]

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def assert_valid_results(files: list[Path], study_uid: str) -> None:
    """SR, SEG and heat-map SEG in the source study, IOD-valid, readable by dsrdump."""
    datasets = {f: pydicom.dcmread(f) for f in files}
    assert {ds.SOPClassUID for ds in datasets.values()} == {SR_CLASS, SEG_CLASS}
    assert sorted(ds.SegmentationType for ds in datasets.values() if ds.SOPClassUID == SEG_CLASS) == [
        "BINARY", "FRACTIONAL"]
    for path, ds in datasets.items():
        assert ds.StudyInstanceUID == study_uid
        assert "NOT FOR CLINICAL USE" in ds.SeriesDescription.upper()
        assert dciodvfy_errors(path) == [], path
        if ds.SOPClassUID == SR_CLASS:
            dump = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, check=True)
            assert "Imaging Measurement Report" in dump.stdout


def _results_in(sink_dir: Path) -> list[Path]:
    """The SR, SEG and heat-map SEG once storescp has all three."""
    return wait_until(lambda: sorted(sink_dir.glob("*.dcm")) if len(list(sink_dir.glob("*.dcm"))) >= 3 else None,
                      timeout=30, what="SR, SEG and heat-map SEG in storescp")


def _round_trip(tmp_path: Path, paths: list[Path],
                database_url: str | None = None) -> tuple[list[Path], list[str], str]:
    """Send ``paths`` with storescu to ``radfusion serve`` routing to a storescp sink: the results the sink received,
    the detectors of the jobs, and the database dialect."""
    sink_dir = tmp_path / "sink"
    with storescp(sink_dir, ae_title="SINK") as sink_port, radfusion_server(
        tmp_path / "rf",
        database_url=database_url,
        destinations=[{"name": "sink", "ae_title": "SINK", "host": "127.0.0.1", "port": sink_port}],
        routing=routing_to(["sink"]),
    ) as server:
        sent = storescu(server.port, paths)
        assert sent.returncode == 0, sent.stderr
        server.wait_idle(studies=1)
        received = _results_in(sink_dir)
        with server.db.session() as session:
            detectors = [job.detector for job in session.scalars(select(Job))]
        return received, detectors, server.db.engine.dialect.name


def test_storescu_study_gets_sr_and_seg_back_into_storescp(tmp_path: Path, database_url: str | None) -> None:
    study = write_study("head_ct", tmp_path / "in", seed=3, lesion=True, rows=256, slices=24)
    received, _, dialect = _round_trip(tmp_path, study.paths, database_url)
    assert_valid_results(received, study.study_instance_uid)
    assert dialect == (database_url and "postgresql" or "sqlite")


def test_an_enhanced_multiframe_head_ct_gets_results_that_cite_its_frames(tmp_path: Path) -> None:
    """A Legacy Converted Enhanced CT (one multi-frame image, slice thickness and body part in its functional groups)
    is routed, analysed, and answered with results that reference the image's frames."""
    single = write_study("head_ct", tmp_path / "single", seed=3, lesion=True, rows=256, slices=24)
    study = legacy_enhanced_ct(single, tmp_path / "in")
    received, detectors, _ = _round_trip(tmp_path, study.paths)
    assert detectors == ["ich_fusion"]
    assert_valid_results(received, study.study_instance_uid)
    source_uid = pydicom.dcmread(study.paths[0], stop_before_pixels=True).SOPInstanceUID
    for path in received:
        ds = pydicom.dcmread(path)
        if ds.SOPClassUID == SEG_CLASS:
            references = [group.DerivationImageSequence[0].SourceImageSequence[0]
                          for group in ds.PerFrameFunctionalGroupsSequence]
            assert {ref.ReferencedSOPInstanceUID for ref in references} == {source_uid}
            assert all(1 <= int(ref.ReferencedFrameNumber) <= 24 for ref in references)


def test_late_instances_reopen_the_study_and_reissue_the_sr(tmp_path: Path) -> None:
    study = write_study("head_ct", tmp_path / "in", seed=4, lesion=True, rows=256, slices=24)
    sink_dir = tmp_path / "sink"
    with storescp(sink_dir, ae_title="SINK") as sink_port, radfusion_server(
        tmp_path / "rf",
        destinations=[{"name": "sink", "ae_title": "SINK", "host": "127.0.0.1", "port": sink_port}],
        routing=routing_to(["sink"]),
    ) as server:
        assert storescu(server.port, study.paths[:16]).returncode == 0
        server.wait_idle(studies=1)
        assert storescu(server.port, study.paths[16:]).returncode == 0  # a second association, later
        server.wait_idle(studies=1)

        def two_srs() -> list[pydicom.Dataset] | None:
            srs = [pydicom.dcmread(p) for p in sink_dir.glob("*.dcm")]
            srs = [ds for ds in srs if ds.SOPClassUID == SR_CLASS]
            return srs if len(srs) == 2 else None

        srs = wait_until(two_srs, timeout=30, what="two SRs")
        (second,) = [ds for ds in srs if "PredecessorDocumentsSequence" in ds]
        (first,) = [ds for ds in srs if ds is not second]
        predecessor = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert predecessor.ReferencedSOPInstanceUID == first.SOPInstanceUID
        with server.db.session() as session:
            jobs = session.execute(select(Job.revision, Job.state).order_by(Job.id)).all()
        assert jobs == [(0, "done"), (1, "done")]


def test_orthanc_pushes_study_and_receives_sr_and_seg(tmp_path: Path) -> None:
    study = write_study("chest_ct", tmp_path / "in", seed=5, lesion=True, rows=256, slices=60)
    orthanc_dicom_port = free_port()
    with radfusion_server(
        tmp_path / "rf",
        destinations=[{"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_dicom_port}],
        routing=routing_to(["orthanc"]),
    ) as server:
        orthanc = Orthanc(tmp_path / "orthanc", modalities={"radfusion": ("RADFUSION", server.port)},
                          dicom_port=orthanc_dicom_port)
        with orthanc.running():
            for path in study.paths:
                orthanc.upload(path)
            orthanc_study = orthanc.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study.study_instance_uid}})[0]
            orthanc.post("/modalities/radfusion/store", {"Resources": [orthanc_study], "Synchronous": True})
            server.wait_idle(studies=1)

            def results_in_orthanc() -> list[str] | None:
                modalities = orthanc.series_modalities(study.study_instance_uid)
                return modalities if "SR" in modalities and modalities.count("SEG") == 2 else None

            modalities = wait_until(results_in_orthanc, timeout=30, what="SR, SEG and heat-map SEG series in Orthanc")
            assert sorted(modalities) == ["CT", "SEG", "SEG", "SR"]
