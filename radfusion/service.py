"""Service wiring: database, spool, DICOM listener, scheduler and worker pool in one process."""

from __future__ import annotations

import fcntl
import logging
import os
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import func, select

from ai_engine.detectors.base import Detector
from ai_engine.detectors.registry import create_detector, study_level_detectors
from ai_engine.results import Task
from dicom_node.errors import SpoolPathError
from dicom_node.scp import ScpConfig, StorageScp
from dicom_node.spool import Spool
from dicom_node.tls import TlsConfig
from hl7_fhir.er7 import HL7_CHARSETS
from hl7_fhir.inbox import Hl7Inbox
from hl7_fhir.mllp import MllpServer
from radfusion.assembly import StudyAssembler
from radfusion.clinical import ClinicalGatherer, Hl7Store
from radfusion.db import Database
from radfusion.delivery import LANES, MAX_OVERLAPPING_ROUNDS, DeliveryWorker
from radfusion.dicom_time import use_time_zone
from radfusion.errors import ConfigError
from radfusion.ingest import IngestRecorder
from radfusion.models import Job, Study
from radfusion.pipeline import JobRunner, study_patient
from radfusion.recovery import reconcile_spool, recover
from radfusion.retention import purge_expired
from radfusion.routing import Router, compile_routing
from radfusion.settings import Settings, TlsSettings

log = logging.getLogger(__name__)

DELIVERY_INTERVAL_S = 1.0
DISPATCH_INTERVAL_S = 1.0
RETENTION_INTERVAL_S = 3600.0


def scp_config(settings: Settings) -> ScpConfig:
    """The listener's configuration from the settings."""
    dicom = settings.dicom
    tls = None
    if dicom.tls.enabled:
        tls = TlsConfig(dicom.tls.cert_file, dicom.tls.key_file, dicom.tls.ca_file, dicom.tls.require_client_cert)
    return ScpConfig(
        ae_title=dicom.ae_title, bind_address=dicom.bind_address, port=dicom.port,
        allowed_calling_aes=frozenset(dicom.allowed_calling_aes), accept_any_calling_ae=dicom.accept_any_calling_ae,
        require_called_ae=dicom.require_called_ae, min_free_disk_bytes=dicom.min_free_disk_mb * 1024 * 1024,
        max_pdu_bytes=dicom.max_pdu_bytes, network_timeout_s=dicom.network_timeout_s,
        acse_timeout_s=dicom.acse_timeout_s,
        max_associations=dicom.max_associations, tls=tls,
        calling_ae_hosts={ae: tuple(hosts) for ae, hosts in dicom.calling_ae_hosts.items()},
    )


class Service:
    """radfusion in one process. ``start`` recovers, listens and schedules; ``stop`` drains."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.time_zone = use_time_zone(settings.timezone)  # before anything reads a DICOM or HL7 time
        router = compile_routing(settings.routing)
        names = sorted({d for rule in settings.routing for d in rule.detectors})
        self.detectors: dict[str, Detector] = {name: create_detector(name, settings.model_bundles.get(name))
                                               for name in names}
        try:
            self.spool = Spool(settings.storage_path)
        except SpoolPathError as exc:
            raise ConfigError(f"storage_path: {exc}") from None
        # The storage path is taken before the database is opened: a second serve (a newer version started before
        # the old one was stopped) would otherwise migrate the schema under the running one before it found the lock.
        self._serving: IO[str] | None = _serve_lock(self.spool.root)
        try:
            self._build(settings, router)
        except BaseException:
            self._serving.close()
            self._serving = None
            raise
        self.port: int | None = None
        self.hl7_port: int | None = None

    def _build(self, settings: Settings, router: Router) -> None:
        """The database (migrated to this code's schema), the workers and the listeners."""
        self.db = Database(settings.effective_database_url)
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="job")
        self._running: set[int] = set()
        self._lock = threading.Lock()
        self.clinical = ClinicalGatherer(settings.clinical, self.db)
        self.assembler = StudyAssembler(self.db, router, settings.stability,
                                        {n: d.algorithm.version for n, d in self.detectors.items()},
                                        on_study_seen=self._prefetch_clinical,
                                        study_level=study_level_detectors())
        self.runner = JobRunner(self.db, self.spool.results, self.detectors, settings, self.clinical, router)
        self.deliveries = DeliveryWorker(self.db, settings)
        self.recorder = IngestRecorder(self.db, self.spool)
        _server_tls("dicom", settings.dicom.tls)  # the SCP builds its own at start; a key it cannot read is named now
        self.scp = StorageScp(scp_config(settings), self.spool, self.recorder)
        self.hl7: MllpServer | None = None
        if settings.hl7.listen:
            store = Hl7Store(self.db)
            inbox = Hl7Inbox(store.seen, store.on_labs, store.on_demographics, store.on_order, store.on_merge,
                             store.on_rejected)
            self.hl7 = MllpServer(settings.hl7.bind_address, settings.hl7.port, inbox.handle,
                                  tls_context=_server_tls("hl7", settings.hl7.tls),
                                  max_message_bytes=settings.hl7.max_message_bytes, on_refused=inbox.refused,
                                  encoding=HL7_CHARSETS[settings.hl7.default_charset])

    def start(self) -> int:
        """Take the storage path, recover, start the listener and the scheduler; returns the DICOM port. A start
        that fails stops what it started."""
        if self._serving is None:  # a Service stopped and started again takes its storage path again
            self._serving = _serve_lock(self.spool.root)  # before recovery, which takes over what a dead serve left
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> int:
        recover(self.db)
        reconcile_spool(self.db, self.spool, self.recorder)
        stability = self.settings.stability
        self._scheduler.add_job(self._assemble, "interval", seconds=stability.check_interval_s, id="assemble",
                                max_instances=1, coalesce=True)
        self._scheduler.add_job(self._dispatch, "interval", seconds=DISPATCH_INTERVAL_S, id="dispatch",
                                max_instances=1, coalesce=True, next_run_time=datetime.now(timezone.utc))
        for lane in LANES:  # two jobs: an alert never waits behind results for a slow PACS
            self._scheduler.add_job(self.deliveries.run_due, "interval", args=[lane], seconds=DELIVERY_INTERVAL_S,
                                    id=f"deliver-{lane}", max_instances=MAX_OVERLAPPING_ROUNDS, coalesce=True)
        if self.settings.retention_days is not None:
            self._scheduler.add_job(purge_expired, "interval", args=[self.db, self.spool, self.settings.retention_days],
                                    seconds=RETENTION_INTERVAL_S, id="retention", max_instances=1, coalesce=True,
                                    next_run_time=datetime.now(timezone.utc))
        self._scheduler.start()
        if self.hl7 is not None:
            self.hl7_port = _listening("hl7", self.settings.hl7.bind_address, self.settings.hl7.port, self.hl7.start)
            log.info("HL7 MLLP listener on %s:%d", self.settings.hl7.bind_address, self.hl7_port)
        self.port = _listening("dicom", self.settings.dicom.bind_address, self.settings.dicom.port, self.scp.start)
        log.info("radfusion listening as %s on %s:%d; database %s; storage %s; %d worker(s); detectors %s",
                 self.settings.dicom.ae_title, self.settings.dicom.bind_address, self.port,
                 self.db.engine.url.render_as_string(hide_password=True), self.settings.storage_path,
                 self.settings.workers, ", ".join(self.detectors) or "none")
        log.info("local time (DICOM and HL7 times without an offset): %s", self.time_zone)
        for name, detector in sorted(self.detectors.items()):
            algorithm = detector.algorithm
            log.info("detector %s: version %s, Device UID %s, %s; bundle %s", name, algorithm.version,
                     algorithm.device_uid, algorithm.kind, self.settings.model_bundles.get(name, "built in"))
        for index, rule in enumerate(self.settings.routing):
            unpaged = [name for name in rule.detectors if self.detectors[name].task == Task.ICH]
            if unpaged and not rule.alert_channels:
                log.warning("routing[%d] (%s) runs %s with no alert_channels: a hemorrhage is logged and recorded, "
                            "nobody is paged", index, rule.name, ", ".join(unpaged))
        return self.port

    def stop(self) -> None:
        """Stop accepting, let running jobs finish, stop the scheduler, give the storage path up."""
        self.scp.stop()
        if self.hl7 is not None:
            self.hl7.stop()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self.clinical.close()
        self.db.dispose()
        if self._serving is not None:
            self._serving.close()  # the lock goes with the file handle
            self._serving = None

    def _wake(self, job_id: str) -> None:
        self._scheduler.modify_job(job_id, next_run_time=datetime.now(timezone.utc))

    def _prefetch_clinical(self, study: Study, detectors: set[str]) -> None:
        """Start fetching the patient's record as soon as a study appears, for the tasks it will go to."""
        tasks = {self.detectors[name].task.value for name in detectors}
        analytes = sorted({a for task in tasks for a in self.settings.clinical.analytes.get(task, [])})
        if tasks:
            self.clinical.prefetch(study_patient(study), analytes)

    def _assemble(self) -> None:
        if self.assembler.tick():
            self._wake("dispatch")

    def _dispatch(self) -> None:
        """Hand queued jobs to free workers."""
        with self._lock:
            free = self.settings.workers - len(self._running)
        if free <= 0:
            return
        for job_id in self.runner.runnable(free):
            if self.runner.claim(job_id):
                with self._lock:
                    self._running.add(job_id)
                self._pool.submit(self._run_job, job_id)

    def _run_job(self, job_id: int) -> None:
        try:
            self.runner.run(job_id)
        except Exception:  # the runner records job failures itself; this is e.g. the database failing
            log.exception("job %d could not be recorded", job_id)
            try:
                self.runner.release(job_id)
            except Exception:  # noqa: BLE001 - the database still fails: the next start requeues it
                log.exception("job %d stays running; it is requeued at the next start", job_id)
        finally:
            with self._lock:
                self._running.discard(job_id)
            for lane in LANES:
                self._wake(f"deliver-{lane}")
            self._wake("dispatch")

    def queue_depth(self) -> int:
        """Jobs waiting for a worker."""
        with self.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(Job).where(Job.state == "queued")) or 0)


def _serve_lock(root: Path) -> IO[str]:
    """Hold ``root/serve.lock`` exclusively (the kernel lets it go when the process ends); ConfigError naming the
    storage path when another serve holds it. Recovery would otherwise take a live server's jobs and associations
    for a dead one's, and its scheduler run them a second time."""
    handle = open(root / "serve.lock", "a+")  # noqa: SIM115 - held open while serving
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise ConfigError(f"storage_path: another radfusion serve (process {holder}) runs on {root}; stop it "
                          "first, or give this one its own storage_path") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _listening(section: str, address: str, port: int, start: Callable[[], int]) -> int:
    """``start()`` a listener; ConfigError naming the keys when the address cannot be bound (in use, unknown)."""
    try:
        return start()
    except OSError as exc:
        raise ConfigError(f"{section}.bind_address {address!r} / {section}.port {port}: cannot listen there: "
                          f"{exc.strerror or exc}") from exc


def _server_tls(section: str, tls: TlsSettings) -> ssl.SSLContext | None:
    """The listener's TLS context, or None when off; ConfigError naming the keys when this process cannot load its
    certificate and key (the config check reads only what the user running it may read)."""
    if not tls.enabled:
        return None
    try:
        return TlsConfig(tls.cert_file, tls.key_file, tls.ca_file, tls.require_client_cert).server_context()
    except OSError as exc:  # ssl.SSLError included
        raise ConfigError(f"{section}.tls: cert_file {str(tls.cert_file)!r} / key_file {str(tls.key_file)!r} cannot "
                          f"be loaded by this process: {exc}") from exc
