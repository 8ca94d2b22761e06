"""Per-exam mammography inference on this machine: deep fusion detector vs the classical baseline, same exam.

Writes one synthetic four-view screening exam (L/R CC and MLO) as DICOM at ``--spacing`` mm
(0.1 mm gives 2400 x 1800 pixels per view, the size of a full-field detector; the model
itself works at 0.8 mm), then for each detector times load (DICOM files -> views) + detect,
best of ``--repeats`` runs, and the process's peak RSS. Model loading (ONNX sessions) is
timed separately: a server does it once.

    python -m bench.inference_mammo [--repeats 3] [--spacing 0.1] [--seed 12]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

import onnxruntime

from ai_engine.results import Task
from ai_engine.synthetic.cohorts.mammo import generate_case, write_case_dicom
from ai_engine.synthetic.mammo_phantom import Acquisition
from bench.timing import time_detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=0.1, help="pixel spacing of the written exam, mm")
    parser.add_argument("--seed", type=int, default=12, help="cohort seed of the exam (12 holds a cancer)")
    args = parser.parse_args()
    print(f"onnxruntime providers: {onnxruntime.get_available_providers()}")
    with tempfile.TemporaryDirectory(prefix="bench-mammo-") as tmp:
        case = generate_case(args.seed, Acquisition(pixel_spacing_mm=args.spacing))
        paths = write_case_dicom(case, Path(tmp))
        shape = case.views()[0][2].shape
        print(f"exam: 4 views of {shape[0]} x {shape[1]} at {args.spacing} mm, cancer={case.cancer}, "
              f"density {case.density}")
        times = {}
        for name in ("mammo_fusion", "mammo_baseline"):
            timing = time_detector(name, Task.MAMMOGRAPHY, paths, args.repeats)
            times[name] = timing.load_detect_s
            print(f"{name:14s} model load {timing.model_load_s:6.2f} s | load+detect best of {args.repeats}: "
                  f"{timing.load_detect_s:6.2f} s | positive={timing.positive} findings={timing.findings}")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"ratio mammo_fusion / mammo_baseline: {times['mammo_fusion'] / times['mammo_baseline']:.2f}")
    print(f"peak RSS of this process: {peak_gb:.2f} GB (target <= 3 GB); target load+detect <= 3 s")


if __name__ == "__main__":
    main()
