"""The training CLI hands dataset options to the task modules, only when given and only where they apply."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ai_engine.bundle import BUNDLES_DIR
from ai_engine.errors import AiEngineError
from ai_engine.training import cli


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Record what each task module would receive instead of training."""
    seen: list[tuple[str, dict[str, Any]]] = []
    fake = SimpleNamespace(train=lambda **kw: seen.append(("train", kw)) or Path("bundle"),
                           evaluate=lambda **kw: seen.append(("evaluate", kw)) or {})
    monkeypatch.setattr(cli, "_task_module", lambda task: fake)
    monkeypatch.setattr(cli, "_note_vocabulary", lambda task, root: None)  # no bundle was written
    return seen


def test_dataset_options_reach_the_task_only_when_given(calls: list[tuple[str, dict[str, Any]]]) -> None:
    cli.main(["train", "ich"])
    cli.main(["train", "mammo", "--data-dir", "/data/cbis", "--pixel-spacing-mm", "0.042", "--out-dir", "/tmp/b"])
    cli.main(["evaluate", "mammo", "--data-dir", "/data/cbis", "--out-dir", "/tmp/r"])
    assert "data_dir" not in calls[0][1] and "pixel_spacing_mm" not in calls[0][1]
    assert calls[1][1]["data_dir"] == Path("/data/cbis") and calls[1][1]["pixel_spacing_mm"] == 0.042
    assert calls[2][1]["data_dir"] == Path("/data/cbis") and "pixel_spacing_mm" not in calls[2][1]


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "ich", "--data-dir", "/d", "--pixel-spacing-mm", "0.05"], "goes with a mammo --data-dir only"),
    (["train", "mammo", "--pixel-spacing-mm", "0.05"], "goes with a mammo --data-dir only"),
    (["evaluate", "mammo", "--data-dir", "/d", "--out-dir", "/o", "--pixel-spacing-mm", "5"], "0.01-1.0 mm"),
    (["train", "mammo", "--fusion-only", "--pixel-spacing-mm", "0.05"], "drop \\['--pixel-spacing-mm'\\]"),
    (["train", "ich", "--threshold-only"], "lung-nodule option"),
    (["train", "ich", "--data-dir", "/d"], "needs an --out-dir outside the packaged bundles"),  # it overwrote them
    (["train", "mammo", "--data-dir", "/d", "--out-dir", str(BUNDLES_DIR / "mammo_fusion")], "outside the packaged"),
    (["train", "nodule", "--threshold-only", "--fusion-only"], "choose one of --fusion-only, --threshold-only"),
    (["train", "nodule", "--threshold-only", "--seed", "3"], "drop \\['--seed'\\]"),
    (["train", "nodule", "--bundle", "b"], "--bundle only goes with --fusion-only, --density-only, --threshold-only, "
                                           "--note-vocabulary-only"),
])
def test_misplaced_dataset_options_are_refused(calls: list[tuple[str, dict[str, Any]]], argv: list[str],
                                               message: str) -> None:
    with pytest.raises(AiEngineError, match=message):
        cli.main(argv)
    assert not calls
