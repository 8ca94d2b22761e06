"""Detector names -> task and implementing class, imported only when a detector is created.

Listing detectors must stay cheap (no torch, no scipy): the CLI and the routing config
validation call it at start-up.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

from ai_engine.errors import UnknownDetectorError
from ai_engine.results import Task

if TYPE_CHECKING:
    from ai_engine.detectors.base import Detector

# name -> (task, "module:Class")
_DETECTORS: dict[str, tuple[Task, str]] = {
    "ich_baseline": (Task.ICH, "ai_engine.detectors.ich_baseline:IchBaseline"),
    "nodule_baseline": (Task.LUNG_NODULE, "ai_engine.detectors.nodule_baseline:NoduleBaseline"),
    "mammo_baseline": (Task.MAMMOGRAPHY, "ai_engine.detectors.mammo_baseline:MammoBaseline"),
    "ich_fusion": (Task.ICH, "ai_engine.detectors.ich_fusion:IchFusion"),
    "nodule_fusion": (Task.LUNG_NODULE, "ai_engine.detectors.nodule_fusion:NoduleFusion"),
    "mammo_fusion": (Task.MAMMOGRAPHY, "ai_engine.detectors.mammo_fusion:MammoFusion"),
}


def available_detectors() -> dict[str, Task]:
    """Every detector name with the task it serves."""
    return {name: task for name, (task, _) in _DETECTORS.items()}


def require_detector(name: str) -> Task:
    """The task of detector ``name``; unknown names raise UnknownDetectorError with a suggestion."""
    if name not in _DETECTORS:
        close = difflib.get_close_matches(name, list(_DETECTORS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownDetectorError(f"unknown detector {name!r}; known detectors: {sorted(_DETECTORS)}{hint}")
    return _DETECTORS[name][0]


def create_detector(name: str) -> Detector:
    """A new detector instance with default parameters; unknown names raise UnknownDetectorError."""
    require_detector(name)
    module_name, class_name = _DETECTORS[name][1].split(":")
    return getattr(importlib.import_module(module_name), class_name)()
