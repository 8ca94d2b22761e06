"""Logging set-up. Log lines carry UIDs, accession numbers and job ids, never patient identifiers."""

from __future__ import annotations

import logging

QUIET_LIBRARIES = ("pynetdicom", "apscheduler", "httpx", "httpcore", "highdicom", "alembic")


def configure_logging(level: str) -> None:
    """Timestamped lines on stderr; chatty libraries only from WARNING up."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", force=True)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
