"""Pieces every baseline detector shares: algorithm identity, notes and the score curve."""

from __future__ import annotations

import dataclasses
import json
import math

from pydicom.uid import generate_uid

from ai_engine.results import AlgorithmInfo

BASELINE_KIND = "classical baseline"
BASELINE_NOTES = (
    "classical baseline (thresholds, morphology and shape tests on the pixels), not a trained model",
    "clinical context is not used by this detector",
)


def baseline_algorithm(name: str, version: str, parameters: object) -> AlgorithmInfo:
    """AlgorithmInfo whose Device UID is derived from name, version and every parameter value.

    Changing any parameter therefore changes the UID, as IHE AI Results requires.
    """
    values = json.dumps(dataclasses.asdict(parameters), sort_keys=True)  # type: ignore[call-overload]
    uid = generate_uid(prefix=None, entropy_srcs=[name, version, values])
    return AlgorithmInfo(name=name, version=version, device_uid=uid, kind=BASELINE_KIND)


def logistic(value: float, midpoint: float, width: float) -> float:
    """Smooth 0..1 score that passes 0.5 at ``midpoint``; ``width`` sets how fast it rises."""
    return 1.0 / (1.0 + math.exp(-(value - midpoint) / width))
