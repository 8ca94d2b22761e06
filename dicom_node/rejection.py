"""Words for A-ASSOCIATE-RJ (result, source, reason) triples, shared by the SCP's log and the SCU's errors."""

from __future__ import annotations

_RESULTS = {0x01: "rejected-permanent", 0x02: "rejected-transient"}
_SOURCES = {0x01: "service-user", 0x02: "service-provider (ACSE)", 0x03: "service-provider (presentation)"}
_REASONS = {
    (0x01, 0x01): "no reason given",
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x02, 0x01): "no reason given",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "local limit exceeded",
}


def describe_rejection(result: int | None, source: int | None, reason: int | None) -> str:
    """E.g. ``rejected-permanent, service-user, reason 3: calling AE title not recognised``."""
    words = _REASONS.get((source or 0, reason or 0), "unknown reason")
    return (
        f"{_RESULTS.get(result or 0, f'result {result}')}, {_SOURCES.get(source or 0, f'source {source}')}, "
        f"reason {reason}: {words}"
    )
