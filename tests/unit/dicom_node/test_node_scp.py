"""StorageScp over real associations on loopback: pynetdicom and dcmtk storescu as senders."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import socket
import threading
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pynetdicom._config
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    BasicTextSRStorage, CTImageStorage, DeflatedExplicitVRLittleEndian,
    DigitalMammographyXRayImageStorageForPresentation, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless,
    JPEGBaseline8Bit, JPEGLSLossless, MRImageStorage, RLELossless, generate_uid,
)
from pynetdicom import AE

from dicom_node.contracts import StoredInstance
from dicom_node.errors import ConfigError
from dicom_node.peers import address_allowed, parse_calling_ae_hosts
from dicom_node.scp import StorageScp, StoreStatus
from tests.peers import storescu, wait_until
from tests.unit.dicom_node.helpers import RecordingSink, ct_dataset, write_ct


def pyscu(port: int, calling_ae: str = "PYSCU", called_ae: str = "RADFUSION",
          transfer_syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)):  # noqa: ANN201
    ae = AE(ae_title=calling_ae)
    for ts in transfer_syntaxes:
        ae.add_requested_context(CTImageStorage, ts)
    return ae.associate("127.0.0.1", port, ae_title=called_ae)


def spool_files(root: Path, sub: str) -> list[Path]:
    return sorted(p for p in (root / sub).rglob("*") if p.is_file())


def test_storescu_stores_files_at_uid_paths_and_sink_hears_everything(start_scp, tmp_path: Path) -> None:
    node = start_scp()
    study, series = generate_uid(), generate_uid()
    files = [write_ct(tmp_path, f"ct{i}.dcm", study_uid=study, series_uid=series, index=i) for i in range(3)]
    result = storescu(node.port, [p for p, _ in files])
    assert result.returncode == 0, result.stderr
    for path, ds in files:
        stored = node.spool.instances / study / series / f"{ds.SOPInstanceUID}.dcm"
        assert stored.read_bytes()[132:] != b""
        assert dcmread(stored).PixelData == ds.PixelData
    assert [s.sop_instance_uid for s in node.sink.stored] == [ds.SOPInstanceUID for _, ds in files]
    first = node.sink.stored[0]
    assert first.attributes["Modality"] == "CT"
    assert first.attributes["ImagePositionPatient"] == [0.0, 0.0, 0.0]
    assert first.attributes["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert first.attributes["AccessionNumber"] == "ACC1"
    assert first.attributes["ViewPosition"] is None
    assert first.size_bytes == first.path.stat().st_size
    assert len(node.sink.opened) == 1 and node.sink.opened[0].calling_ae == "STORESCU"
    # like a rejection, a release is reported after the reply has gone out
    wait_until(lambda: node.sink.closed, timeout=5, what="association closed")
    assert node.sink.closed == [(node.sink.opened[0].association_id, True)]
    assert spool_files(node.spool.root, "incoming-tmp") == []


def test_duplicate_send_is_success_and_replaces_the_file(start_scp, tmp_path: Path) -> None:
    node = start_scp()
    path, ds = write_ct(tmp_path, "ct.dcm")
    for _ in range(2):
        assert storescu(node.port, [path]).returncode == 0
    assert len(spool_files(node.spool.root, "instances")) == 1
    assert [s.sop_instance_uid for s in node.sink.stored] == [ds.SOPInstanceUID] * 2
    assert node.sink.rejected == []


def test_pynetdicom_scu_gets_success_status(start_scp) -> None:
    node = start_scp()
    assoc = pyscu(node.port)
    assert assoc.is_established
    ds = ct_dataset()
    assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS
    assoc.release()
    assert node.sink.stored[0].transfer_syntax_uid == ExplicitVRLittleEndian


def test_unknown_calling_ae_is_rejected_with_reason_3(start_scp) -> None:
    node = start_scp()
    assoc = pyscu(node.port, calling_ae="INTRUDER")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    # pynetdicom reports the rejection after the A-ASSOCIATE-RJ has gone out, so the peer can see it first
    (calling, called, peer, reason), = wait_until(lambda: node.sink.refused, timeout=5, what="rejection recorded")
    assert (calling, called) == ("INTRUDER", "RADFUSION")
    assert peer.startswith("127.0.0.1:") and "calling AE title not recognised" in reason
    assert node.sink.opened == []


def test_wrong_called_ae_is_rejected_with_reason_7(start_scp) -> None:
    node = start_scp()
    assoc = pyscu(node.port, called_ae="SOMEONEELSE")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
    (_, _, _, reason), = wait_until(lambda: node.sink.refused, timeout=5, what="rejection recorded")
    assert "called AE title not recognised" in reason


def test_accept_any_calling_ae_is_an_explicit_switch(start_scp) -> None:
    node = start_scp(allowed_calling_aes=frozenset(), accept_any_calling_ae=True)
    assoc = pyscu(node.port, calling_ae="ANYONE")
    assert assoc.is_established
    assoc.release()


def test_a_calling_ae_from_an_address_not_listed_for_it_is_aborted_before_anything_is_received(
        start_scp, tmp_path: Path) -> None:
    node = start_scp(calling_ae_hosts={"PYSCU": ("10.20.0.0/24",), "STORESCU": ("127.0.0.1",)})
    assoc = pyscu(node.port)  # PYSCU may only come from 10.20.0.0/24, not loopback
    wait_until(lambda: assoc.is_aborted, timeout=5, what="association aborted")
    (calling, called, peer, reason), = wait_until(lambda: node.sink.refused, timeout=5, what="refusal recorded")
    assert (calling, called) == ("PYSCU", "RADFUSION") and peer.startswith("127.0.0.1:")
    assert reason == "calling AE title 'PYSCU' is not allowed from 127.0.0.1 (calling_ae_hosts)"
    assert node.sink.opened == [] and node.sink.stored == []
    path, _ = write_ct(tmp_path, "ok.dcm")
    assert storescu(node.port, [path]).returncode == 0  # STORESCU from its own address is received
    assert len(node.sink.stored) == 1


@pytest.mark.parametrize("hosts, error", [
    ({"PYSCU": ("ct-er.hospital.local",)}, "'ct-er.hospital.local' is not an IP address or network"),
    ({"PYSCU": ("10.20.1.15/8",)}, "'10.20.1.15/8' is not an IP address or network"),  # a typo, not 10.0.0.0/8
    ({"PYSCU": ()}, "calling_ae_hosts['PYSCU'] is empty"),
    ({"INTRUDER": ("10.0.0.1",)}, "calling_ae_hosts names 'INTRUDER', which is not in allowed_calling_aes"),
])
def test_calling_ae_hosts_refuses_names_empty_lists_and_unknown_titles(start_scp, hosts, error) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        start_scp(calling_ae_hosts=hosts)


@pytest.mark.parametrize("address, allowed", [
    ("10.20.0.7", True), ("10.20.1.7", False), ("::ffff:10.20.0.7", True), ("fd00::10", True), ("fd00::11", False),
    ("fe80::1%eth0", False), ("not an address", False),
])
def test_peer_addresses_are_matched_against_networks(address: str, allowed: bool) -> None:
    networks = parse_calling_ae_hosts({"CT": ["10.20.0.0/24", "fd00::10"]}, {"CT"}, False)["CT"]
    assert address_allowed(address, networks) is allowed


def test_an_ipv4_mapped_entry_matches_the_ipv4_peer_it_names() -> None:
    networks = parse_calling_ae_hosts({"CT": ["::ffff:10.20.1.15"]}, {"CT"}, False)["CT"]
    assert address_allowed("10.20.1.15", networks) and address_allowed("::ffff:10.20.1.15", networks)
    assert not address_allowed("10.20.1.16", networks)


def test_a_message_on_a_refused_association_is_not_authorized_and_nothing_is_stored(start_scp) -> None:
    node = start_scp()
    event = SimpleNamespace(assoc=object(), request=None)  # an association _on_established refused
    assert node.scp._handle_store(event) == StoreStatus.NOT_AUTHORIZED  # noqa: SLF001
    assert node.sink.stored == [] and spool_files(node.spool.root, "instances") == []


def test_empty_allow_list_starts_and_rejects_everyone(start_scp) -> None:
    node = start_scp(allowed_calling_aes=frozenset())
    assoc = pyscu(node.port, calling_ae="STORESCU")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == 0x03


def test_malformed_instance_is_quarantined_and_the_association_carries_on(
        start_scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage after a valid meta header is sent raw; the next instance on the association is stored."""
    node = start_scp()
    good = ct_dataset()
    bad_path, _ = write_ct(tmp_path, "bad.dcm")
    raw = bad_path.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    garbage = raw[:meta_end] + b"\x08\x00\x18\x00UI\xff\x7f" + os.urandom(64)
    bad_path.write_bytes(garbage)
    # send the file's bytes without pynetdicom decoding them (test-only switch)
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = pyscu(node.port)
    bad_status = assoc.send_c_store(bad_path).Status
    good_status = assoc.send_c_store(good).Status
    assoc.release()
    assert bad_status == StoreStatus.UNPARSABLE
    assert good_status == StoreStatus.SUCCESS
    assert [s.sop_instance_uid for s in node.sink.stored] == [good.SOPInstanceUID]
    (_, reason, quarantined, _), = node.sink.rejected
    assert quarantined is not None and quarantined.read_bytes().endswith(garbage[meta_end:])
    sidecar = json.loads(quarantined.with_suffix(".json").read_text())
    assert sidecar["reason"] == reason and "cannot be parsed" in reason and sidecar["calling_ae"] == "PYSCU"


@pytest.mark.parametrize(("proposed", "accepted"), [
    ((JPEGLSLossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian), ExplicitVRLittleEndian),
    ((JPEGBaseline8Bit, JPEG2000Lossless), JPEG2000Lossless),
    ((JPEGBaseline8Bit,), JPEGBaseline8Bit),
])
def test_the_listener_prefers_explicit_vr_then_lossless_then_lossy(start_scp, proposed: tuple[str, ...],
                                                                     accepted: str) -> None:
    """Implicit VR came first and decided whatever a sender proposed; a lossy syntax beside a lossless one could
    win by its place in the list."""
    node = start_scp()
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, list(proposed))
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RADFUSION")
    try:
        assert assoc.accepted_contexts[0].transfer_syntax[0] == accepted
    finally:
        assoc.release()


def test_a_header_element_that_fails_only_when_read_is_quarantined(start_scp, tmp_path: Path) -> None:
    """pydicom reads values lazily: an Accession Number with the VR bytes 'S\\n' parsed, then failed when the
    header was read. The bytes were deleted and the store answered 0xC2FF 'internal error', with no reason kept."""
    node = start_scp()
    path, ds = write_ct(tmp_path, "badvr.dcm")
    raw = path.read_bytes()
    tag_vr = b"\x08\x00\x50\x00SH"
    assert raw.count(tag_vr) == 1
    path.write_bytes(raw.replace(tag_vr, b"\x08\x00\x50\x00S\n"))
    assoc = pyscu(node.port)
    status = assoc.send_c_store(path).Status
    assoc.release()
    assert status == StoreStatus.UNPARSABLE and node.sink.stored == []
    (_, reason, quarantined, _), = node.sink.rejected
    assert reason == "a header element cannot be read (NotImplementedError)"
    assert quarantined is not None and quarantined.read_bytes().endswith(raw[-64:])


def test_storescu_instance_without_study_uid_fails_and_next_file_is_stored(start_scp, tmp_path: Path) -> None:
    node = start_scp()
    no_study = ct_dataset()
    del no_study.StudyInstanceUID
    no_study_path = tmp_path / "nostudy.dcm"
    no_study.save_as(no_study_path, enforce_file_format=True)
    good_path, good = write_ct(tmp_path, "good.dcm")
    result = storescu(node.port, [no_study_path, good_path], extra=["--no-halt", "-v"])
    responses = [line for line in result.stderr.splitlines() if "Received Store Response" in line]
    assert len(responses) == 2 and "Success" not in responses[0] and "Success" in responses[1], result.stderr
    assert [s.sop_instance_uid for s in node.sink.stored] == [good.SOPInstanceUID]
    (_, reason, quarantined, _), = node.sink.rejected
    assert "StudyInstanceUID" in reason and quarantined is not None and quarantined.parent == node.spool.quarantine_dir


def test_truncated_pixel_data_is_rejected(start_scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = start_scp()
    path, ds = write_ct(tmp_path, "cut.dcm")
    path.write_bytes(path.read_bytes()[:-1000])
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = pyscu(node.port)
    status = assoc.send_c_store(path).Status
    assoc.release()
    assert status == StoreStatus.UNPARSABLE
    assert "truncated" in node.sink.rejected[0][1]
    assert spool_files(node.spool.root, "instances") == []


def test_a_store_holds_about_one_instance_in_memory(start_scp, tmp_path: Path) -> None:
    """A 32 MiB slice from storescu: Python's peak allocation while it is received and stored stays near the
    size of pynetdicom's receive buffer. Before, the file bytes were joined (a second copy) and parsed whole (a
    third: the pixel data), 3.1x the instance."""
    node = start_scp()
    path, ds = write_ct(tmp_path, "big.dcm", size=4096)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        result = storescu(node.port, [path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.returncode == 0, result.stderr
    assert dcmread(node.sink.stored[0].path).PixelData == ds.PixelData
    assert peak < 1.6 * size, f"peak {peak / size:.2f}x the instance"


def _sent_without_pixel_data(port: int, sop_class: str) -> int:
    """The status of a CT-like dataset of ``sop_class`` without Pixel Data."""
    ds = ct_dataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    del ds.PixelData
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADFUSION")
    status = assoc.send_c_store(ds).Status
    assoc.release()
    return status


@pytest.mark.parametrize("sop_class", [CTImageStorage, DigitalMammographyXRayImageStorageForPresentation])
def test_an_image_without_pixel_data_is_refused_and_quarantined(start_scp, sop_class: str) -> None:
    """Pixel Data is Type 1 in every image IOD; such an image was acknowledged and then failed its series' job."""
    node = start_scp()
    assert _sent_without_pixel_data(node.port, sop_class) == StoreStatus.SOP_CLASS_MISMATCH == 0xA900
    assert node.sink.stored == [] and spool_files(node.spool.root, "instances") == []
    (_, reason, quarantined, _), = node.sink.rejected
    assert "has no pixel data" in reason and quarantined is not None and quarantined.is_file()
    assert spool_files(node.spool.root, "incoming-tmp") == []


def test_a_non_image_object_without_pixel_data_is_stored(start_scp) -> None:
    node = start_scp()
    assert _sent_without_pixel_data(node.port, BasicTextSRStorage) == StoreStatus.SUCCESS
    assert [s.sop_class_uid for s in node.sink.stored] == [BasicTextSRStorage]


def _file(path: Path, meta: dict[str, str], dataset: bytes) -> Path:
    """A Part 10 file of ``dataset`` (encoded bytes) behind a file meta of ``meta``, as a broken sender's."""
    file_meta = FileMetaDataset()
    for keyword, value in meta.items():
        setattr(file_meta, keyword, value)
    header = io.BytesIO()
    write_file_meta_info(header, file_meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + header.getvalue() + dataset)
    return path


def _encoded(ds: Dataset, implicit_vr: bool) -> bytes:
    stream = DicomBytesIO()
    stream.is_little_endian, stream.is_implicit_VR = True, implicit_vr
    write_dataset(stream, ds)
    return stream.getvalue()


@pytest.mark.parametrize(("dataset_class", "status", "reason"), [
    (MRImageStorage, StoreStatus.SOP_CLASS_MISMATCH, "SOPClassUID '1.2.840.10008.5.1.4.1.1.4' differs"),
    (None, StoreStatus.MISSING_UID, "lacks SOPClassUID")])
def test_a_dataset_not_of_the_requested_sop_class_is_refused_and_quarantined(
        start_scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset_class: str | None, status: int,
        reason: str) -> None:
    """Before, an MR dataset sent as CT (or one without SOP Class UID) was acknowledged, and its file's meta
    said CT while the dataset said MR."""
    node = start_scp()
    ds = ct_dataset()
    if dataset_class is None:
        del ds.SOPClassUID
    else:
        ds.SOPClassUID = dataset_class
    path = _file(tmp_path / "mr.dcm", {"MediaStorageSOPClassUID": CTImageStorage,
                                       "MediaStorageSOPInstanceUID": ds.SOPInstanceUID,
                                       "TransferSyntaxUID": ExplicitVRLittleEndian}, _encoded(ds, False))
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes as they are
    assoc = pyscu(node.port)
    answered = assoc.send_c_store(path).Status
    assoc.release()
    assert answered == status and node.sink.stored == []
    (_, why, quarantined, _), = node.sink.rejected
    assert reason in why and quarantined is not None


def test_a_dataset_not_encoded_as_the_negotiated_syntax_says_is_refused(
        start_scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit VR bytes in an Implicit VR context: pydicom reads them anyway, so before they were acknowledged and
    kept as an Implicit VR file that dcmtk cannot read."""
    node = start_scp()
    ds = ct_dataset()
    path = _file(tmp_path / "x.dcm", {"MediaStorageSOPClassUID": CTImageStorage,
                                      "MediaStorageSOPInstanceUID": ds.SOPInstanceUID,
                                      "TransferSyntaxUID": ImplicitVRLittleEndian}, _encoded(ds, False))
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = pyscu(node.port, transfer_syntaxes=(ImplicitVRLittleEndian,))
    answered = assoc.send_c_store(path).Status
    assoc.release()
    assert answered == StoreStatus.UNPARSABLE and node.sink.stored == []
    assert "encoded with explicit VR, but the negotiated transfer syntax is Implicit VR Little Endian" in \
        node.sink.rejected[0][1]
    assoc = pyscu(node.port, transfer_syntaxes=(ImplicitVRLittleEndian,))  # the same dataset, rightly encoded
    assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS
    assoc.release()


def test_connections_that_close_before_an_association_request_free_their_place_at_once(start_scp) -> None:
    """A port probe or a load balancer's health check: before, each held one of max_associations for the whole
    ACSE timeout, so a few of them shut every modality out."""
    node = start_scp(max_associations=1, acse_timeout_s=30.0)
    for garbage in (b"", b"", b"\x09\x00not a PDU"):  # the last one makes pynetdicom abort first (Sta13)
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as probe:
            probe.sendall(garbage)
            time.sleep(0.2)
    started = time.monotonic()
    while not (assoc := pyscu(node.port)).is_established:
        assert time.monotonic() - started < 10, "the closed connections still hold the association slot"
        time.sleep(0.2)
    assoc.release()
    assert node.sink.refused == []


@pytest.mark.parametrize("evil", ["1.2.3/../../../../tmp/evil", "../../../tmp/evil", "/tmp/evil", "1.2.3.."])
def test_crafted_uid_writes_nothing_outside_the_spool(start_scp, tmp_path: Path, evil: str) -> None:
    node = start_scp()
    before = sorted(str(p) for p in tmp_path.rglob("*") if "spool" not in p.parts)
    before_tmp = set(os.listdir("/tmp"))
    ds = ct_dataset()
    ds.SOPInstanceUID = evil
    assoc = pyscu(node.port)
    status = assoc.send_c_store(ds).Status
    assoc.release()
    assert status == StoreStatus.INVALID_UID
    assert sorted(str(p) for p in tmp_path.rglob("*") if "spool" not in p.parts) == before
    assert "evil" not in set(os.listdir("/tmp")) - before_tmp
    assert spool_files(node.spool.root, "instances") == []
    (_, reason, quarantined, claimed), = node.sink.rejected
    assert claimed == evil and "not a valid DICOM UID" in reason
    assert quarantined is not None and quarantined.parent == node.spool.quarantine_dir
    assert evil not in quarantined.name


def test_disk_floor_answers_out_of_resources_and_writes_nothing(start_scp) -> None:
    node = start_scp(min_free_disk_bytes=1 << 62)
    assoc = pyscu(node.port)
    status = assoc.send_c_store(ct_dataset()).Status
    assoc.release()
    assert status == StoreStatus.DISK_FLOOR == 0xA700
    assert spool_files(node.spool.root, "instances") == spool_files(node.spool.root, "quarantine") == []
    assert "below the floor" in node.sink.rejected[0][1]


def test_sink_failure_answers_a702_and_keeps_the_bytes_in_quarantine(start_scp) -> None:
    node = start_scp(sink=RecordingSink(fail_store=True))
    assoc = pyscu(node.port)
    status = assoc.send_c_store(ct_dataset()).Status
    assoc.release()
    assert status == StoreStatus.SINK_FAILED
    assert spool_files(node.spool.root, "instances") == []
    (_, reason, quarantined, _), = node.sink.rejected
    assert "database is locked" in reason and quarantined is not None and quarantined.is_file()


class _FirstStoreFailsLate(RecordingSink):
    """The first instance_stored waits until released, then fails (a row commit that times out)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release, self.calls = threading.Event(), threading.Event(), 0

    def instance_stored(self, instance: StoredInstance) -> bool:
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            self.entered.set()
            self.release.wait(10)
            raise RuntimeError("database is locked")
        return super().instance_stored(instance)


def test_a_store_that_fails_does_not_set_aside_another_association_s_acknowledged_copy(start_scp) -> None:
    """The same instance on two associations at once; B's row commit fails after A's store would have been
    answered. Before: A got 0x0000, then B's failure moved A's file to the quarantine."""
    node = start_scp(sink=_FirstStoreFailsLate())
    dataset, status = ct_dataset(), {}

    def send(name: str) -> None:
        assoc = pyscu(node.port)
        status[name] = assoc.send_c_store(dataset).Status
        assoc.release()

    b = threading.Thread(target=send, args=("B",))
    b.start()
    assert node.sink.entered.wait(10)
    a = threading.Thread(target=send, args=("A",))
    a.start()
    a.join(0.5)  # without turns, A is answered here
    node.sink.release.set()
    a.join(10)
    b.join(10)
    assert (status["A"], status["B"]) == (StoreStatus.SUCCESS, StoreStatus.SINK_FAILED)
    assert node.sink.stored[0].path.is_file()


def test_a_refused_resend_leaves_the_acknowledged_file_in_place(start_scp) -> None:
    node = start_scp()
    first = ct_dataset()
    assoc = pyscu(node.port)
    assert assoc.send_c_store(first).Status == StoreStatus.SUCCESS
    assoc.release()
    stored = node.sink.stored[0].path
    acknowledged = stored.read_bytes()
    node.sink.fail_store = True  # the database is locked when the same instance comes again, changed
    second = copy.deepcopy(first)
    second.InstanceNumber = 99
    assoc = pyscu(node.port)
    assert assoc.send_c_store(second).Status == StoreStatus.SINK_FAILED
    assoc.release()
    assert stored.read_bytes() == acknowledged  # before: the refused bytes had replaced it
    (_, _, quarantined, _), = node.sink.rejected
    assert dcmread(quarantined).InstanceNumber == 99
    assert spool_files(node.spool.root, "incoming-tmp") == []


def test_a_deflated_instance_that_compresses_well_is_stored(start_scp) -> None:
    """Its header is read from the inflated stream: the deferred pixel data's position there was compared with the
    deflated file's size, and a valid instance was refused as truncated (0xC210)."""
    node = start_scp()
    ds = ct_dataset(size=512)
    ds.PixelData = bytes(512 * 512 * 2)  # air: deflates to almost nothing
    assoc = pyscu(node.port, transfer_syntaxes=(DeflatedExplicitVRLittleEndian,))
    assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS
    assoc.release()
    stored = dcmread(node.sink.stored[0].path)
    assert stored.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian and stored.PixelData == ds.PixelData


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_instance_is_stored_as_received(start_scp, syntax: str) -> None:
    node = start_scp()
    ds = ct_dataset()
    ds.compress(syntax)
    assoc = pyscu(node.port, transfer_syntaxes=(syntax,))
    assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS
    assoc.release()
    stored = dcmread(node.sink.stored[0].path)
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.PixelData == ds.PixelData
    assert node.sink.stored[0].transfer_syntax_uid == syntax


def test_aborted_association_is_reported_not_released(start_scp) -> None:
    node = start_scp()
    assoc = pyscu(node.port)
    assoc.send_c_store(ct_dataset())
    assoc.abort()
    wait_until(lambda: node.sink.closed, timeout=5, what="association closed")
    assert node.sink.closed == [(node.sink.opened[0].association_id, False)]


def test_a_release_is_recorded_as_released_when_the_connection_closes_first(start_scp, monkeypatch) -> None:
    """pynetdicom sends the A-RELEASE reply before EVT_RELEASED runs; the peer's close can be seen first."""
    released = StorageScp._on_released

    def late(self: StorageScp, event: object) -> None:
        time.sleep(0.3)
        released(self, event)

    monkeypatch.setattr(StorageScp, "_on_released", late)
    node = start_scp()
    assoc = pyscu(node.port)
    assert assoc.send_c_store(ct_dataset()).Status == StoreStatus.SUCCESS
    assoc.release()
    wait_until(lambda: node.sink.closed, timeout=5, what="association closed")
    time.sleep(0.5)  # let the late EVT_RELEASED handler run: it must not record the association again
    assert node.sink.closed == [(node.sink.opened[0].association_id, True)]  # before: False, an abort
