"""Ingest throughput: dcmtk storescu → radfusion vs Orthanc 1.10 vs dcmtk storescp, in one run.

    .venv/bin/python -m bench.ingest [--slices 300] [--repeats 3]

Every peer gets TCP_NODELAY=1 (ARCHITECTURE.md: Nagle + delayed ACK otherwise stalls dcmtk ~40 ms an
instance). radfusion runs as `radfusion serve` with routing switched off, so only ingest is timed:
bytes fsynced + renamed + row committed before each success status. Then 8 concurrent associations
of 100 instances each go into radfusion, and every instance is checked in the database and the spool.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from sqlalchemy import select

from ai_engine.synthetic.studies import write_study
from radfusion.models import Instance
from tests.integration.servers import Orthanc, RadfusionServer
from tests.peers import storescp, storescu

CONCURRENT = 8
PER_ASSOCIATION = 100


def timed_send(port: int, files: list[Path], called_ae: str) -> float:
    """Seconds for one storescu association carrying ``files``."""
    started = time.perf_counter()
    result = storescu(port, files, called_ae=called_ae)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"storescu to {called_ae} failed: {result.stderr[-2000:]}")
    return elapsed


@contextmanager
def radfusion_target(workdir: Path) -> Iterator[tuple[int, str]]:
    server = RadfusionServer(workdir, routing=[], log_level="WARNING")
    server.start()
    try:
        yield server.port, "RADFUSION"
    finally:
        server.stop()


@contextmanager
def orthanc_target(workdir: Path) -> Iterator[tuple[int, str]]:
    orthanc = Orthanc(workdir, modalities={})
    with orthanc.running():
        yield orthanc.dicom_port, "ORTHANC"


@contextmanager
def storescp_target(workdir: Path) -> Iterator[tuple[int, str]]:
    with storescp(workdir, ae_title="STORESCP") as port:
        yield port, "STORESCP"


def measure(name: str, target: Callable[[Path], AbstractContextManager[tuple[int, str]]], files: list[Path],
            repeats: int, scratch: Path) -> float:
    """Median instances/s over ``repeats`` fresh runs of one target."""
    rates = []
    for run in range(repeats):
        with target(scratch / f"{name}-{run}") as (port, ae):
            rates.append(len(files) / timed_send(port, files, ae))
    median = statistics.median(rates)
    print(f"  {name:<10} {median:8.1f} instances/s   (runs: {', '.join(f'{r:.1f}' for r in rates)})")
    return median


def concurrent_ingest(scratch: Path) -> None:
    """8 associations at once, 100 distinct instances each; all must be stored."""
    batches = [write_study("chest_ct", scratch / f"conc-{i}", seed=100 + i, lesion=False, rows=512,
                           slices=PER_ASSOCIATION).paths for i in range(CONCURRENT)]
    server = RadfusionServer(scratch / "conc-radfusion", routing=[], log_level="WARNING")
    server.start()
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENT) as pool:
            results = list(pool.map(lambda files: storescu(server.port, files), batches))
        elapsed = time.perf_counter() - started
        failed = [r.stderr[-500:] for r in results if r.returncode != 0]
        with server.db.session() as session:
            rows = session.scalars(select(Instance.path)).all()
        missing = [p for p in rows if not Path(p).is_file()]
        total = CONCURRENT * PER_ASSOCIATION
        print(f"\n{CONCURRENT} concurrent associations x {PER_ASSOCIATION} instances: {len(rows)}/{total} stored, "
              f"{len(missing)} files missing, {len(failed)} failed associations, {total / elapsed:.1f} instances/s")
        if failed or missing or len(rows) != total:
            raise SystemExit("concurrent ingest lost instances")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radfusion-bench-") as tmp:
        scratch = Path(tmp)
        files = write_study("chest_ct", scratch / "study", seed=1, lesion=False, rows=512, slices=args.slices).paths
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"{len(files)} uncompressed 512x512 CT instances ({size_mb:.0f} MB) sent by storescu, TCP_NODELAY=1:")
        ours = measure("radfusion", radfusion_target, files, args.repeats, scratch)
        orthanc = measure("orthanc", orthanc_target, files, args.repeats, scratch)
        dcmtk = measure("storescp", storescp_target, files, args.repeats, scratch)
        print(f"\nratio radfusion/orthanc  = {ours / orthanc:.2f}  (target >= 1.0)")
        print(f"ratio radfusion/storescp = {ours / dcmtk:.2f}  (target >= 0.5)")
        concurrent_ingest(scratch)


if __name__ == "__main__":
    main()
