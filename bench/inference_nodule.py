"""Per-study lung-nodule inference on this machine: deep fusion detector vs the classical baseline, same study.

Writes one 300 x 512 x 512 synthetic chest CT (1 mm slices, two nodules) as DICOM, then for each
detector times load (DICOM files -> HU volume) + detect, best of ``--repeats`` runs, and the
process's peak RSS (each detector in its own process, so the peaks do not mix). Model loading
(ONNX sessions) is timed separately: a server does it once.

    python -m bench.inference_nodule [--repeats 2] [--rows 512] [--slices 300]
    python -m bench.inference_nodule --study DIR    # a chest CT series of your own (DIR/*.dcm) instead
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ai_engine.results import Task
from ai_engine.synthetic.chest_ct import ChestAcquisition, NoduleSpec, make_chest_phantom
from ai_engine.synthetic.cohorts.nodule import generate_case, study_header
from ai_engine.synthetic.dicom_writer import write_ct_series
from bench.timing import time_detector

DETECTORS = ("nodule_fusion", "nodule_baseline")


def _write(out: Path, rows: int, slices: int) -> list[Path]:
    acquisition = ChestAcquisition(rows=rows, slices=slices, slice_mm=300.0 / slices, noise_hu=20.0, blur_mm=0.5)
    phantom = make_chest_phantom(np.random.default_rng(5), acquisition,
                                 [NoduleSpec(9.0, "solid"), NoduleSpec(14.0, "part-solid", "juxtapleural")])
    header = study_header(generate_case(5, acquisition=ChestAcquisition(rows=96, slices=40, slice_mm=3.0)))
    paths, _ = write_ct_series(phantom.hu, acquisition.spacing, out, header, frame_of_reference_uid="1.2.826.0.1.5",
                               body_part="CHEST", description="CHEST CT")
    return paths


def _run_one(name: str, folder: Path, repeats: int) -> dict[str, float]:
    """Time one detector on the study in ``folder`` (runs in a child process)."""
    timing = time_detector(name, Task.LUNG_NODULE, sorted(folder.glob("*.dcm")), repeats)
    return {"model_load_s": round(timing.model_load_s, 2), "load_detect_s": round(timing.load_detect_s, 2),
            "findings": timing.findings,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--study", type=Path, help="time this folder's chest CT series (*.dcm) instead")
    parser.add_argument("--child", nargs=2, metavar=("DETECTOR", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run_one(args.child[0], Path(args.child[1]), args.repeats)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-nodule-") as tmp:
        if args.study:
            folder = str(args.study)
            print(f"study: {len(list(args.study.glob('*.dcm')))} files of {folder}")
        else:
            folder = tmp
            _write(Path(tmp), args.rows, args.slices)
            print(f"study: {args.slices} x {args.rows}^2 chest CT, 2 nodules (9 mm solid, 14 mm part-solid "
                  f"juxtapleural)")
        rows = {}
        for name in DETECTORS:
            child = subprocess.run([sys.executable, "-m", "bench.inference_nodule", "--repeats", str(args.repeats),
                                    "--child", name, folder], capture_output=True, text=True, check=True)
            rows[name] = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"{name:16s} {rows[name]}")
    ratio = rows["nodule_fusion"]["load_detect_s"] / rows["nodule_baseline"]["load_detect_s"]
    print(f"deep / baseline load+detect time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
