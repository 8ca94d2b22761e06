"""Exponential backoff for delivery retries (the application keeps the attempts in its delivery rows)."""

from __future__ import annotations

from dicom_node.errors import ConfigError


def backoff_delay(attempt: int, initial_s: float, factor: float, max_s: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = first retry): ``initial * factor**(attempt-1)``, capped."""
    if attempt < 1:
        raise ConfigError(f"attempt {attempt} must be >= 1")
    if initial_s < 0 or max_s < 0:
        raise ConfigError(f"initial_s {initial_s} and max_s {max_s} must be >= 0")
    if factor < 1:
        raise ConfigError(f"factor {factor} must be >= 1 (a shrinking delay is not a backoff)")
    # Multiply step by step and stop at the cap: factor**attempt would overflow for large attempts.
    delay = initial_s
    for _ in range(attempt - 1):
        delay *= factor
        if delay >= max_s:
            return max_s
    return min(delay, max_s)
