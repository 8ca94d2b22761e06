"""Result types of the imaging AI: plain dataclasses, importable without torch.

These travel from a detector to the report writers and into the database, so they hold
only numpy arrays and plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class Task(str, Enum):
    """A clinical detection task; each detector serves exactly one."""

    ICH = "ich"
    LUNG_NODULE = "lung_nodule"
    MAMMOGRAPHY = "mammography"


STUDY_LEVEL_TASKS = frozenset({Task.MAMMOGRAPHY})  # read all series of a study together (one series per view)
SIDES = {"L": "left", "R": "right", "B": "midline"}  # B: across the midline, a quarter or more on each side
"""A finding's ``laterality`` and its word in ``location``."""
HEMORRHAGE_SUBTYPES = ("intraparenchymal", "subdural", "epidural", "subarachnoid", "intraventricular")
"""The hemorrhage subtypes, in the order of their label values 1..5 (0: no blood)."""


class FindingType(str, Enum):
    """What a finding is; the report writers map these to SNOMED CT codes."""

    HEMORRHAGE = "hemorrhage"
    NODULE = "nodule"
    MASS = "mass"
    CALCIFICATION_CLUSTER = "calcification_cluster"


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identifies the algorithm for IHE AI Results (Contributing Equipment, TID 4019).

    ``device_uid`` must change whenever the weights, parameters or the serving code change, so a PACS
    can tell results of two model versions apart.
    """

    name: str
    version: str
    device_uid: str
    kind: str  # "classical baseline" or "deep fusion model trained on synthetic phantoms"
    manufacturer: str = "radfusion project"


@dataclass
class Finding:
    """One detected lesion.

    Coordinates: ``center_voxel`` is (z, y, x) in the source volume, or (y, x) in the
    mammography view given by ``view_index``; ``center_mm`` is in patient LPS coordinates
    (None for 2D views). ``mask`` (bool) has the shape of the source volume or view.
    """

    finding_type: FindingType
    score: float
    center_voxel: tuple[float, ...]
    location: str
    center_mm: tuple[float, float, float] | None = None
    volume_ml: float | None = None
    diameter_mm: float | None = None
    mask: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    view_index: int = 0
    measurements: dict[str, float] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    modality_weights: dict[str, float] | None = None
    laterality: str | None = None  # "L" or "R" (SIDES): the patient's side, coded in the SR's finding site

    def summary(self) -> dict[str, object]:
        """JSON-ready description without the arrays."""
        return {
            "type": self.finding_type.value,
            "score": round(float(self.score), 4),
            "location": self.location,
            "laterality": self.laterality,
            "center_voxel": [round(float(v), 2) for v in self.center_voxel],
            "center_mm": None if self.center_mm is None else [round(float(v), 2) for v in self.center_mm],
            "volume_ml": None if self.volume_ml is None else round(float(self.volume_ml), 3),
            "diameter_mm": None if self.diameter_mm is None else round(float(self.diameter_mm), 2),
            "view_index": self.view_index,
            "measurements": {k: round(float(v), 4) for k, v in self.measurements.items()},
            "attributes": dict(self.attributes),
            "modality_weights": self.modality_weights,
        }


@dataclass
class DetectorResult:
    """Everything one detector run produced for one series (or one set of views)."""

    task: Task
    algorithm: AlgorithmInfo
    findings: list[Finding]
    case_score: float
    positive: bool
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """JSON-ready description without the arrays."""
        return {
            "task": self.task.value,
            "algorithm": {
                "name": self.algorithm.name,
                "version": self.algorithm.version,
                "device_uid": self.algorithm.device_uid,
                "kind": self.algorithm.kind,
            },
            "case_score": round(float(self.case_score), 4),
            "positive": self.positive,
            "findings": [f.summary() for f in self.findings],
            "notes": list(self.notes),
        }
