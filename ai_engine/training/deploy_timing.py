"""How fast each CPU runtime runs a trained network: ONNX Runtime vs TorchScript (frozen trace) vs eager."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def cpu_seconds(onnx_path: Path, network: torch.nn.Module, input_name: str, sample: np.ndarray) -> dict[str, float]:
    """Seconds for one batch ``sample`` in each runtime, after one warm-up run each (recorded in metadata.json)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(network.eval(), torch.from_numpy(sample[:2])))
    runs = {"onnxruntime": lambda: session.run(None, {input_name: sample}),
            "torchscript": lambda: traced(torch.from_numpy(sample)), "eager": lambda: network(torch.from_numpy(sample))}
    timing = {}
    with torch.no_grad():
        for name, run in runs.items():
            run()
            start = time.perf_counter()
            run()
            timing[name] = round(time.perf_counter() - start, 4)
    return timing
