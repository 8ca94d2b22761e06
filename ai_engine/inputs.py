"""Turn the files of a study into a DetectorInput for a task: a CT volume or mammography views."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ai_engine.detectors.base import DetectorInput
from ai_engine.mammo import MammoView, load_views
from ai_engine.results import Task
from ai_engine.volume import load_series

if TYPE_CHECKING:
    from hl7_fhir.context import ClinicalContext




def load_inputs(task: Task, paths: Sequence[Path | str], context: ClinicalContext | None = None) -> DetectorInput:
    """Load ``paths`` the way ``task`` needs them (views for mammography, one volume otherwise)."""
    if Task(task) is Task.MAMMOGRAPHY:
        views, skipped = load_views(paths)
        return mammography_inputs(views, context, skipped)
    return DetectorInput(volume=load_series(paths), context=context)


def mammography_inputs(views: Sequence[MammoView], context: ClinicalContext | None = None,
                       notes: Sequence[str] = ()) -> DetectorInput:
    """The mammography input of views already read: by ``load_views`` (``notes``: the images it left out) or by a
    dataset reader whose files lack the header identity (ordered as ``load_views`` orders them: laterality, then
    CC before MLO)."""
    return DetectorInput(views=list(views), context=context, notes=list(notes))
