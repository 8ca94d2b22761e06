"""Per-study ICH inference on this machine: deep fusion detector vs the classical baseline, same study.

Writes one 40 x 512 x 512 synthetic head CT (5 mm slices) with a bleed, then for each
detector times load (DICOM files -> HU volume) + detect, best of ``--repeats`` runs, and the
process's peak RSS. Model loading (ONNX sessions) is timed separately: a server does it once.

    python -m bench.inference_ich [--repeats 3] [--rows 512] [--slices 40]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from ai_engine.results import Task
from ai_engine.synthetic.studies import write_study
from bench.timing import compare_detectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--slices", type=int, default=40)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, CUDA available: {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory(prefix="bench-ich-") as tmp:
        study = write_study("head_ct", Path(tmp), seed=3, rows=args.rows, slices=args.slices)
        print(f"study: {args.slices} x {args.rows}^2 head CT, bleed {study.lesions[0].size:.1f} mL")
        compare_detectors("ich_fusion", "ich_baseline", Task.ICH, study.paths, args.repeats)


if __name__ == "__main__":
    main()
