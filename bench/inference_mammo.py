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
import tempfile
from pathlib import Path

import torch

from ai_engine.results import Task
from ai_engine.synthetic.cohorts.mammo import generate_case, write_case_dicom
from ai_engine.synthetic.mammo_phantom import Acquisition
from bench.timing import compare_detectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=0.1, help="pixel spacing of the written exam, mm")
    parser.add_argument("--seed", type=int, default=12, help="cohort seed of the exam (12 holds a cancer)")
    args = parser.parse_args()
    print(f"CUDA available: {torch.cuda.is_available()} (a GPU runs the networks in PyTorch, else ONNX Runtime)")
    with tempfile.TemporaryDirectory(prefix="bench-mammo-") as tmp:
        case = generate_case(args.seed, Acquisition(pixel_spacing_mm=args.spacing))
        paths = write_case_dicom(case, Path(tmp))
        shape = case.views()[0][2].shape
        print(f"exam: 4 views of {shape[0]} x {shape[1]} at {args.spacing} mm, cancer={case.cancer}, "
              f"density {case.density}")
        compare_detectors("mammo_fusion", "mammo_baseline", Task.MAMMOGRAPHY, paths, args.repeats)


if __name__ == "__main__":
    main()
