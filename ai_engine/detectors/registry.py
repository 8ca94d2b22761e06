"""Detector names -> task and implementing class, imported only when a detector is created.

Listing detectors must stay cheap (no torch, no scipy): the CLI and the routing config
validation call it at start-up.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from ai_engine.errors import UnknownDetectorError
from ai_engine.results import STUDY_LEVEL_TASKS, Task

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


BUNDLED_DETECTORS = ("ich_fusion", "nodule_fusion", "mammo_fusion")  # served from a model bundle


def available_detectors() -> dict[str, Task]:
    """Every detector name with the task it serves."""
    return {name: task for name, (task, _) in _DETECTORS.items()}


def study_level_detectors() -> frozenset[str]:
    """Names of the detectors that read a whole study at once (tasks in ``STUDY_LEVEL_TASKS``)."""
    return frozenset(name for name, task in available_detectors().items() if task in STUDY_LEVEL_TASKS)


def require_detector(name: str) -> Task:
    """The task of detector ``name``; unknown names raise UnknownDetectorError with a suggestion."""
    if name not in _DETECTORS:
        close = difflib.get_close_matches(name, list(_DETECTORS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownDetectorError(f"unknown detector {name!r}; known detectors: {sorted(_DETECTORS)}{hint}")
    return _DETECTORS[name][0]


def create_detector(name: str, bundle: Path | None = None) -> Detector:
    """A new detector instance; unknown names raise UnknownDetectorError.

    ``bundle``: a bundle directory to serve instead of the packaged one (a model trained with
    ``radfusion train --data-dir``); only for ``BUNDLED_DETECTORS``, and its task must be the detector's.
    """
    task = require_detector(name)
    module_name, class_name = _DETECTORS[name][1].split(":")
    detector_class = getattr(importlib.import_module(module_name), class_name)
    if bundle is None:
        return detector_class()  # type: ignore[no-any-return]
    from ai_engine.bundle import BundleError, resolve_bundle

    if name not in BUNDLED_DETECTORS:
        raise BundleError(f"detector {name!r} has no model bundle; bundles serve {list(BUNDLED_DETECTORS)}")
    loaded = resolve_bundle(Path(bundle), name)
    if loaded.metadata.get("task") != task.value:
        raise BundleError(f"{loaded.root} is a {loaded.metadata.get('task')!r} bundle; detector {name!r} "
                          f"serves {task.value!r}")
    return detector_class(loaded)  # type: ignore[no-any-return]
