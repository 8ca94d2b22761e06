"""Timing one detector on one study the way the server runs it: DICOM files → inputs → findings."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

from ai_engine.detectors.registry import create_detector
from ai_engine.inputs import load_inputs
from ai_engine.results import Task


@dataclass(frozen=True)
class DetectorTiming:
    """Model load (once per server), best load+detect over the repeats, and the last result's summary."""

    model_load_s: float
    load_detect_s: float
    findings: int
    positive: bool


def time_detector(name: str, task: Task, paths: list[Path], repeats: int) -> DetectorTiming:
    """Create detector ``name`` and time ``repeats`` runs of load + detect on ``paths``."""
    start = time.perf_counter()
    detector = create_detector(name)
    model_load = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = detector.detect(load_inputs(task, paths))
        best = min(best, time.perf_counter() - start)
    return DetectorTiming(model_load, best, len(result.findings), result.positive)


def compare_detectors(deep: str, baseline: str, task: Task, paths: list[Path], repeats: int) -> None:
    """Time both detectors on the same study and print each, their ratio and this process's peak RSS."""
    times = {}
    for name in (deep, baseline):
        timing = time_detector(name, task, paths, repeats)
        times[name] = timing.load_detect_s
        print(f"{name:14s} model load {timing.model_load_s:6.2f} s | load+detect best of {repeats}: "
              f"{timing.load_detect_s:6.2f} s | positive={timing.positive} findings={timing.findings}")
    print(f"ratio {deep} / {baseline}: {times[deep] / times[baseline]:.2f}")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS of this process: {peak_gb:.2f} GB (target <= 3 GB); target load+detect <= 3 s")
