"""Tracking identifiers that tie a finding's SEG segment to its SR measurement group."""

from __future__ import annotations

from ai_engine.results import Finding


def tracking_id(index: int, finding: Finding) -> str:
    """Human-readable tracking identifier of finding ``index`` (0-based) in a result."""
    return f"Finding {index + 1} ({finding.finding_type.value})"
