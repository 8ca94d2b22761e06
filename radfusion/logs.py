"""Logging set-up. Log lines carry UIDs, accession numbers and job ids, never patient identifiers."""

from __future__ import annotations

import logging
import re

QUIET_LIBRARIES = ("pynetdicom", "apscheduler", "httpx", "httpcore", "highdicom", "alembic")
QUOTED = re.compile(r"""(['"]).*?\1""")  # a value a library's warning quotes
DATASET_LIBRARIES = ("py.warnings", "pydicom", "highdicom")  # whose warnings quote header values


class UnquotedWarnings(logging.Filter):
    """Warnings of the libraries that read headers, with the values they quote left out. They quote what they
    complain about (highdicom: 'The string "DOE JOHN" is unlikely to represent the intended person name', pydicom:
    "Invalid value for VR DA: '1945-03-17'"), which would put a patient's name or birth date into the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = QUOTED.sub(r"\1...\1", record.getMessage()), ()
        return True


def configure_logging(level: str) -> None:
    """Timestamped lines on stderr; chatty libraries only from WARNING up; Python warnings as log lines, and those
    and the DICOM libraries' own without the values they quote (``UnquotedWarnings``)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", force=True)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.captureWarnings(True)
    for name in DATASET_LIBRARIES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, UnquotedWarnings) for f in logger.filters):
            logger.addFilter(UnquotedWarnings())
