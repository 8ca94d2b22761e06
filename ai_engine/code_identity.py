"""The fingerprint of the code that serves the detectors: part of every detector's Device UID, so results of
changed pre- or post-processing (a lung mask, a resampling grid) are told apart from the earlier ones even where the
weights and parameters stayed the same."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).parent
NOT_SERVED = frozenset({"training", "synthetic", "evaluation", "bundles"})
"""Folders of ``ai_engine`` whose code a server does not run on a study."""


def code_digest(root: Path) -> bytes:
    """SHA-256 over the relative path and contents of every Python module under ``root``, folders in
    :data:`NOT_SERVED` left out."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in NOT_SERVED:
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.digest()


@functools.cache
def serving_code_digest() -> bytes:
    """:func:`code_digest` of the installed ``ai_engine`` (read once per process)."""
    return code_digest(PACKAGE_ROOT)
