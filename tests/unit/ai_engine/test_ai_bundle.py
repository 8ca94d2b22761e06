"""Model bundles: config validation, Device UID that follows the weights, the packaged ICH bundle."""

from __future__ import annotations

import ast
import importlib
import json
import shutil
from pathlib import Path

import pytest

import ai_engine.bundle as bundle_module
import ai_engine.detectors.common as common_module
from ai_engine.bundle import BundleError, load_bundle, resolve_bundle, write_bundle_configs
from ai_engine.code_identity import NOT_SERVED, PACKAGE_ROOT, code_digest, serving_code_digest
from ai_engine.detectors.ich_baseline import IchBaseline
from ai_engine.clinical_features import note_encoding_of

METADATA = {"version": "1.0.0", "task": "ich", "intended_use": "Trained on synthetic phantoms; not for clinical use.",
            "inputs": {}, "outputs": {}, "training_data": {}, "metrics": {}}


def _bundle(root: Path, weights: bytes = b"weights") -> Path:
    path = root / "demo"
    write_bundle_configs(path, METADATA, {"deployed": "model.onnx", "threshold": 0.5})
    (path / "models").mkdir()
    (path / "models" / "model.pt").write_bytes(weights)
    (path / "models" / "model.onnx").write_bytes(b"onnx")
    return path


def test_device_uid_changes_with_the_weights_and_not_otherwise(tmp_path: Path) -> None:
    first = load_bundle("demo", _bundle(tmp_path / "a").parent)
    again = load_bundle("demo", tmp_path / "a")
    other = load_bundle("demo", _bundle(tmp_path / "b", b"other weights").parent)
    assert first.device_uid == again.device_uid != other.device_uid
    assert first.device_uid.startswith("2.25.") and len(first.device_uid) <= 64
    assert first.algorithm().kind == "deep fusion model trained on synthetic phantoms"
    assert resolve_bundle(tmp_path / "a" / "demo", "unused").device_uid == first.device_uid


def test_device_uid_changes_with_the_serving_code_and_not_with_training_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a change to how a detector reads a study (a lung mask, a grid) kept its Device UID: a PACS could not
    tell results of the old code from the new."""
    code = tmp_path / "ai_engine"
    shutil.copytree(PACKAGE_ROOT, code, ignore=shutil.ignore_patterns("bundles", "__pycache__"))
    before = code_digest(code)
    assert before == code_digest(PACKAGE_ROOT) == serving_code_digest()
    for not_served in ("training/cli.py", "synthetic/__init__.py", "evaluation/metrics.py"):
        (code / not_served).write_text((code / not_served).read_text() + "\n# changed\n")
    assert code_digest(code) == before
    (code / "volume.py").write_text((code / "volume.py").read_text() + "\n# changed\n")
    assert code_digest(code) != before

    bundle_uid, baseline_uid = load_bundle("demo", _bundle(tmp_path).parent).device_uid, \
        IchBaseline().algorithm.device_uid
    monkeypatch.setattr(bundle_module, "serving_code_digest", lambda: code_digest(code))
    monkeypatch.setattr(common_module, "serving_code_digest", lambda: code_digest(code))
    assert load_bundle("demo", tmp_path).device_uid != bundle_uid
    assert IchBaseline().algorithm.device_uid != baseline_uid


def test_served_code_imports_nothing_the_device_uid_leaves_out() -> None:
    """ich_fusion took its class-to-subtype order from ai_engine/synthetic, which the hash leaves out: changing it
    would not have changed the Device UID."""
    offenders = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        if path.relative_to(PACKAGE_ROOT).parts[0] in NOT_SERVED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.name}: {name}" for name in names
                          if name.split(".")[:2] in (["ai_engine", folder] for folder in NOT_SERVED)]
    assert offenders == []


def test_expressions_and_missing_statements_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"inference.json.network: config values must be plain"):
        write_bundle_configs(tmp_path / "x", METADATA, {"deployed": "model.onnx", "network": "$monai.nets.UNet()"})
    with pytest.raises(BundleError, match="not for clinical use"):
        write_bundle_configs(tmp_path / "x", {**METADATA, "intended_use": "triage"}, {"deployed": "model.onnx"})
    with pytest.raises(BundleError, match=r"x/configs/inference.json: 'note_encoding' must be one of"):
        write_bundle_configs(tmp_path / "x", METADATA, {"deployed": "model.onnx", "note_encoding": "words"})
    with pytest.raises(BundleError, match="missing required keys \\['metrics'\\]"):
        write_bundle_configs(tmp_path / "x", {k: v for k, v in METADATA.items() if k != "metrics"},
                             {"deployed": "model.onnx"})


def test_missing_files_are_named(tmp_path: Path) -> None:
    path = _bundle(tmp_path)
    (path / "models" / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx is missing"):
        load_bundle("demo", tmp_path)
    with pytest.raises(BundleError, match="'nothing' not found"):
        load_bundle("nothing", tmp_path)


@pytest.mark.parametrize("task", ["ich", "nodule", "mammo"])
def test_each_packaged_bundle_reads_notes_as_its_training_recipe_encodes_them(task: str) -> None:
    module = importlib.import_module(f"ai_engine.training.tasks.{task}")
    assert note_encoding_of(load_bundle(f"{task}_fusion").inference) == module.NOTE_ENCODING


def test_packaged_ich_bundle_is_valid_and_states_synthetic_training() -> None:
    bundle = load_bundle("ich_fusion")
    assert "synthetic" in bundle.metadata["intended_use"] and bundle.version
    assert json.loads((bundle.root / "configs" / "inference.json").read_text())["deployed"] == "model.onnx"
    assert bundle.weights_path.stat().st_size < 5_000_000


def test_a_dataset_bundle_must_name_its_dataset_and_says_so_in_its_kind(tmp_path: Path) -> None:
    from ai_engine.bundle import DATASET_KIND

    dataset = {**METADATA, "intended_use": "Trained on /data/ich. Not for clinical use until validated.",
               "training_data": {"source": "dataset"}}
    with pytest.raises(BundleError, match="must name its path"):
        write_bundle_configs(tmp_path / "x", dataset, {"deployed": "model.onnx"})
    with pytest.raises(BundleError, match="must state synthetic training data"):  # the synthetic rule still holds
        write_bundle_configs(tmp_path / "x", {**dataset, "training_data": {}}, {"deployed": "model.onnx"})
    path = _bundle(tmp_path / "d")
    write_bundle_configs(path, {**dataset, "training_data": {"source": "dataset", "path": "/data/ich"}},
                         {"deployed": "model.onnx"})
    assert load_bundle("demo", tmp_path / "d").algorithm().kind == DATASET_KIND


def test_a_dataset_bundle_version_names_the_tables_it_was_trained_on(tmp_path: Path) -> None:
    """Reports and job records (keyed by series, detector, model version) tell a dataset bundle from the packaged one."""
    def version(tables: dict[str, str], base: str = "1.0.0") -> str:
        training_data = {"source": "dataset", "path": "/data/ich", "tables_sha256": tables}
        write_bundle_configs(tmp_path / "v", {**METADATA, "version": base, "intended_use": "Trained on /data/ich. "
                                              "Not for clinical use until validated.", "training_data": training_data},
                             {"deployed": "model.onnx"})
        return str(json.loads((tmp_path / "v" / "configs" / "metadata.json").read_text())["version"])

    first = version({"cases.csv": "aa"})
    assert first.startswith("1.0.0+dataset.") and len(first) == len("1.0.0+dataset.") + 8
    assert version({"cases.csv": "aa"}) == first  # the same tables, the same version
    assert version({"cases.csv": "ab"}) != first  # other annotations, another version
    assert version({"cases.csv": "aa"}, base=first) == first  # written again: one suffix, not two
    assert len(first) <= 32  # fits jobs.model_version


def test_the_server_can_serve_a_bundle_directory_of_the_detectors_task(tmp_path: Path) -> None:
    import shutil

    from ai_engine.detectors.registry import create_detector

    own = Path(shutil.copytree(load_bundle("ich_fusion").root, tmp_path / "mine" / "ich_fusion"))
    assert create_detector("ich_fusion", own).bundle.root == own  # type: ignore[attr-defined]
    wrong = Path(shutil.copytree(load_bundle("nodule_fusion").root, tmp_path / "wrong" / "ich_fusion"))
    with pytest.raises(BundleError, match="is a 'lung_nodule' bundle; detector 'ich_fusion' serves 'ich'"):
        create_detector("ich_fusion", wrong)
    with pytest.raises(BundleError, match="'ich_baseline' has no model bundle"):
        create_detector("ich_baseline", own)
