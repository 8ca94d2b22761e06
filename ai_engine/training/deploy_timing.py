"""How fast each CPU runtime runs a trained network: ONNX Runtime vs TorchScript (frozen trace) vs eager."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


TIMED_RUNS = 3
SERVING_THREADS = 2  # the bundles' ``onnx_threads``: each CPU runtime is timed with the threads serving gives it


def torchscript(network: torch.nn.Module, example: np.ndarray) -> torch.jit.ScriptModule:
    """``network`` traced on ``example`` (a batch of two suffices: the batch dimension stays free) and frozen: the
    TorchScript a bundle deploys as ``model.ts``."""
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(network.eval(), torch.from_numpy(example[:2])))


def cpu_seconds(onnx_path: Path, network: torch.nn.Module, input_name: str, sample: np.ndarray) -> dict[str, float]:
    """Seconds for one batch ``sample`` in each runtime with ``SERVING_THREADS`` threads (training may run torch
    on one), the best of ``TIMED_RUNS`` after a warm-up run each (recorded in metadata.json; a bundle may deploy
    the faster of ONNX Runtime and TorchScript)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = SERVING_THREADS
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    traced = torchscript(network, sample)
    training_threads = torch.get_num_threads()
    torch.set_num_threads(SERVING_THREADS)
    runs = {"onnxruntime": lambda: session.run(None, {input_name: sample}),
            "torchscript": lambda: traced(torch.from_numpy(sample)), "eager": lambda: network(torch.from_numpy(sample))}
    timing = {}
    with torch.no_grad():
        for name, run in runs.items():
            run()
            best = float("inf")
            for _ in range(TIMED_RUNS):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            timing[name] = round(best, 4)
    torch.set_num_threads(training_threads)
    return timing
