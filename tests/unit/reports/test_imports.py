"""The report writers load without torch, so the service can build reports in a light process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[3]


def test_importing_reports_does_not_import_torch():
    code = ("import sys, reports.alerts, reports.seg, reports.sr, reports.writer; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=True, cwd=REPOSITORY)
    assert proc.stdout.strip() == "False"
