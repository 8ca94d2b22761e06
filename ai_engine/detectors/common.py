"""Pieces every baseline detector shares: algorithm identity, notes and the score curve."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

from ai_engine.code_identity import serving_code_digest
from ai_engine.results import AlgorithmInfo

BASELINE_KIND = "classical baseline"
BASELINE_NOTES = (
    "classical baseline (thresholds, morphology and shape tests on the pixels), not a trained model",
    "clinical context is not used by this detector",
)


def baseline_algorithm(name: str, version: str, parameters: object) -> AlgorithmInfo:
    """AlgorithmInfo whose Device UID is derived from name, version, every parameter value and the serving code.

    Changing any parameter (or the code) therefore changes the UID, as IHE AI Results requires. The UID is
    a 2.25 (UUID-derived) UID from a SHA-256 of those values; pydicom's ``generate_uid`` with
    ``prefix=None`` ignores its entropy sources and would give a new UID every run.
    """
    values = json.dumps(dataclasses.asdict(parameters), sort_keys=True)  # type: ignore[call-overload]
    digest = hashlib.sha256(serving_code_digest() + "\n".join([name, version, values]).encode()).digest()
    uid = f"2.25.{int.from_bytes(digest[:16], 'big')}"
    return AlgorithmInfo(name=name, version=version, device_uid=uid, kind=BASELINE_KIND)


def logistic(value: float, midpoint: float, width: float) -> float:
    """Smooth 0..1 score that passes 0.5 at ``midpoint``; ``width`` sets how fast it rises."""
    return 1.0 / (1.0 + math.exp(-(value - midpoint) / width))
