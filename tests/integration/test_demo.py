"""`radfusion demo`, as a newcomer runs it: findings, the alert and the result files (its time: bench/, docs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_prints_findings_alert_and_result_files() -> None:
    proc = subprocess.run([sys.executable, "-m", "radfusion.cli", "demo"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("(deep fusion model trained on synthetic phantoms)") == 3
    assert "hemorrhage" in out and "nodule" in out and "mass" in out
    assert "URGENT alert 1 (association release -> webhook:" in out and '"kind": "ich_alert"' in out
    assert out.count("  SR      ") == 3 and "  SEG     " in out and out.count("  HEATMAP ") >= 3
    assert "the demo PACS received 11 result object(s)" in out
