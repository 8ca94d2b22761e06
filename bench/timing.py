"""Timing one detector on one study the way the server runs it: DICOM files → inputs → findings."""

from __future__ import annotations

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
