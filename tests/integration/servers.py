"""Processes for integration tests: `radfusion serve`, Orthanc and PostgreSQL, each stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import func, select

from radfusion.db import Database
from radfusion.models import Delivery, Job, Study
from radfusion.settings import default_routing
from tests.peers import (PEER_ENV, dciodvfy_errors, free_port, require_tool, running, stop_process, wait_for_port,
                         wait_until)


def routing_to(destinations: Sequence[str] = (), alert_channels: Sequence[str] = ()) -> list[dict]:
    """The default routing rules as YAML-ready dicts, sending results to ``destinations``."""
    return [rule.model_dump(mode="json") for rule in default_routing(destinations, alert_channels)]


class RadfusionServer:
    """`radfusion serve` as a user runs it: a subprocess with a YAML config, killable and restartable."""

    def __init__(self, workdir: Path, **overrides: Any) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = workdir / "radfusion.yaml"
        self.log_path = workdir / "radfusion.log"
        config: dict[str, Any] = {
            "storage_path": str(workdir / "data"),
            "dicom": {"bind_address": "127.0.0.1", "port": self.port, "allowed_calling_aes": ["STORESCU", "ORTHANC", "TESTSCU"],
                      "min_free_disk_mb": 10},
            "stability": {"settle_s": 0.5, "quiet_timeout_s": 5.0, "check_interval_s": 0.2},
            "retry": {"initial_s": 0.5, "factor": 2.0, "max_s": 2.0, "timeout_s": 10.0},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None
        self._db: Database | None = None

    def start(self) -> None:
        """Start and wait until the DICOM port accepts connections."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([sys.executable, "-m", "radfusion.cli", "--config", str(self.config_path), "serve"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        try:
            wait_for_port(self.port, timeout=60)
        except TimeoutError:
            raise AssertionError(f"radfusion did not start; log:\n{self.log()}") from None

    def kill9(self) -> None:
        """Crash it: SIGKILL, no clean-up of any kind."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop by PID (SIGTERM, then SIGKILL)."""
        if self.proc is not None:
            stop_process(self.proc, timeout=30)
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def assert_results_conform(self) -> int:
        """dciodvfy on every SR and SEG this server wrote: no errors; returns how many were checked."""
        results = sorted((self.workdir / "data" / "results").rglob("*.dcm"))
        problems = {str(path): errors for path in results if (errors := dciodvfy_errors(path))}
        assert not problems, problems
        return len(results)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def db(self) -> Database:
        if self._db is None:
            url = self.config.get("database_url") or f"sqlite:///{self.workdir / 'data' / 'radfusion.db'}"
            self._db = Database(url)
        return self._db

    def wait_idle(self, studies: int, timeout: float = 120.0) -> None:
        """Until ``studies`` studies are done and no delivery is pending."""
        def idle() -> bool:
            with self.db.session() as session:
                states = session.scalars(select(Study.state)).all()
                pending = session.scalar(select(func.count()).select_from(Delivery).where(Delivery.state == "pending"))
                failed = session.scalars(select(Job.error).where(Job.state == "failed")).all()
            assert not failed, f"jobs failed: {failed}\n{self.log()[-4000:]}"
            return len(states) >= studies and all(s == "done" for s in states) and pending == 0
        try:
            wait_until(idle, timeout=timeout, interval=0.25, what=f"{studies} studies done and delivered")
        except TimeoutError:
            raise AssertionError(f"not idle after {timeout}s; log tail:\n{self.log()[-4000:]}") from None


@contextmanager
def radfusion_server(workdir: Path, **overrides: Any) -> Iterator[RadfusionServer]:
    server = RadfusionServer(workdir, **overrides)
    server.start()
    try:
        yield server
    finally:
        server.stop()
    server.assert_results_conform()


class Orthanc:
    """A real Orthanc 1.10 PACS on free ports, driven through its REST API."""

    def __init__(self, workdir: Path, modalities: dict[str, tuple[str, int]], aet: str = "ORTHANC",
                 dicom_port: int | None = None) -> None:
        self.http_port = free_port()
        self.dicom_port = dicom_port or free_port()
        self.aet = aet
        self.url = f"http://127.0.0.1:{self.http_port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "radfusion-test", "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": aet, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "HttpServerEnabled": True, "DicomServerEnabled": True,
            "DicomModalities": {name: [ae, "127.0.0.1", port] for name, (ae, port) in modalities.items()},
            "StableAge": 1, "Plugins": [], "ConcurrentJobs": 2,
        }))
        self.log = workdir / "orthanc.log"

    @contextmanager
    def running(self) -> Iterator[Orthanc]:
        exe = require_tool("Orthanc")
        with running([exe, str(self.config)], port=self.http_port, log=self.log, env=PEER_ENV):
            wait_until(self._alive, timeout=30, what="Orthanc REST API")
            yield self

    def _alive(self) -> bool:
        try:
            return httpx.get(f"{self.url}/system", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def upload(self, path: Path) -> dict:
        response = httpx.post(f"{self.url}/instances", content=path.read_bytes(), timeout=30)
        response.raise_for_status()
        return response.json()

    def get(self, route: str) -> Any:
        response = httpx.get(f"{self.url}{route}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, route: str, body: Any) -> Any:
        response = httpx.post(f"{self.url}{route}", json=body, timeout=120)
        response.raise_for_status()
        return response.json()

    def series_modalities(self, study_uid: str) -> list[str]:
        """Modality of every series Orthanc holds in the study with this UID."""
        found = self.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        if not found:
            return []
        return [s["MainDicomTags"].get("Modality", "") for s in self.get(f"/studies/{found[0]}/series")]


@contextmanager
def postgresql() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a free port; yields its SQLAlchemy URL."""
    bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if bindir is None:
        require_tool("postgresql-initdb")  # skips (or fails under CI) with the reason
    # Outside pytest's root-only tmp tree: PostgreSQL refuses to run as root, so it runs as postgres.
    workdir = Path(tempfile.mkdtemp(prefix="radfusion-pg-"))
    data = workdir / "pgdata"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    try:
        yield from _run_postgres(bindir, workdir, data, as_user)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_postgres(bindir: Path, workdir: Path, data: Path, as_user: list[str]) -> Iterator[str]:
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "radfusion", "--auth=trust"],
                   check=True, capture_output=True)
    port = free_port()
    cmd = [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(workdir),
           "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"]
    with running(cmd, port=port, log=workdir / "postgres.log"):
        url = f"postgresql+psycopg://radfusion@127.0.0.1:{port}/postgres"
        wait_until(lambda: _pg_ready(url), timeout=30, what="PostgreSQL accepting queries")
        yield url


def _pg_ready(url: str) -> bool:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
        return True
    except sqlalchemy.exc.OperationalError:
        return False


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database of ``backend`` ("sqlite" in ``tmp_path``, or "postgresql": a throw-away cluster)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        with postgresql() as url:
            yield url
