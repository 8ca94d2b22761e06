"""What the log keeps of the DICOM libraries' warnings: never the values they quote."""

from __future__ import annotations

import logging
import warnings

import pytest
from pydicom.dataset import Dataset

from radfusion.logs import configure_logging


def test_library_warnings_reach_the_log_without_the_names_and_dates_they_quote(
        caplog: pytest.LogCaptureFixture) -> None:
    """Before, highdicom's person-name warning printed the patient's name to stderr (the service's log), and
    pydicom logged a malformed birth date as it was."""
    configure_logging("INFO")  # force=True: replaces the root's handlers, caplog's too
    logging.getLogger().addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            Dataset().PatientBirthDate = "1945-03-17"
            warnings.warn('The string "SMITHPHI JOHN" is unlikely to represent the intended person name',
                          UserWarning, stacklevel=1)
        assert "Invalid value for VR DA" in caplog.text and "person name" in caplog.text
        assert "1945" not in caplog.text and "SMITHPHI" not in caplog.text
    finally:
        logging.captureWarnings(False)
        for name in ("py.warnings", "pydicom", "highdicom"):
            logging.getLogger(name).filters.clear()
