"""Model bundles in MONAI bundle layout: reading (detectors) and writing (training). No torch here.

Layout of ``ai_engine/bundles/<detector_name>/`` (package data):

- ``configs/metadata.json``: at least ``version``, ``task``, ``intended_use`` (must say the
  training data is synthetic and that the model is not for clinical use), ``inputs`` and
  ``outputs`` (the input/output contract), ``training_data`` (description) and ``metrics``
  (summary of the held-out evaluation); free to add more (MONAI's own keys are welcome).
- ``configs/inference.json``: plain parameters only (numbers, strings, lists, dicts) — no
  ``$`` expressions, nothing evaluated. Must name the deployed file: ``"deployed": "model.onnx"``
  or ``"model.ts"``. A fusion bundle names the note encoding its heads learned in ``note_encoding``
  (``ai_engine.clinical_features.NOTE_ENCODINGS``; bundles without it were fitted with "hashed-terms").
- ``configs/note_vocabulary.json`` (optional): ``{"note_encoding": ..., "terms": [...], "min_terms": n}``, the
  note terms the fusion heads learned and the fewest any of their notes held; serving leaves every other
  term out and reads a note with fewer known terms as no note (``clinical_features.encode_note``). A bundle
  without it reads every term, as its heads were fitted.
- ``models/model.pt``: the eager PyTorch state dict (for fine-tuning and parity tests);
- ``models/model.onnx`` (ONNX Runtime) or ``models/model.ts`` (TorchScript): what serving runs.

``load_bundle(name)`` validates all of that and gives a ``Bundle`` whose ``device_uid`` is
derived from the SHA-256 of the weights, the deployed model, ``inference.json``, the note
vocabulary and the serving code (``ai_engine.code_identity``), so the UID changes whenever the weights,
parameters or the code that runs them do (IHE AI Results).
Training writes a bundle with ``write_bundle_configs`` after saving the model files into
``bundle_models_dir(root)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_engine.clinical_features import ClinicalFeatureError, NoteVocabulary, note_encoding_of
from ai_engine.code_identity import serving_code_digest
from ai_engine.errors import AiEngineError
from ai_engine.results import AlgorithmInfo

BUNDLES_DIR = Path(__file__).parent / "bundles"
DATASET_SOURCE = "dataset"  # training_data.source of a bundle trained with --data-dir
REQUIRED_METADATA = ("version", "task", "intended_use", "inputs", "outputs", "training_data", "metrics")
DEPLOYED_FORMATS = ("model.onnx", "model.ts")
WEIGHTS_FILE = "model.pt"
NOTE_VOCABULARY_FILE = "note_vocabulary.json"
DEEP_KIND = "deep fusion model trained on synthetic phantoms"
DATASET_KIND = "deep fusion model trained on a local dataset, not validated by radfusion"


class BundleError(AiEngineError):
    """A model bundle is missing, incomplete, or has a config this project does not accept."""


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk: configs, file paths, version and Device UID."""

    name: str
    root: Path
    metadata: dict[str, Any]
    inference: dict[str, Any]
    weights_path: Path
    deployed_path: Path
    device_uid: str
    note_vocabulary: NoteVocabulary | None = None

    @property
    def version(self) -> str:
        """Model version from metadata.json."""
        return str(self.metadata["version"])

    def algorithm(self) -> AlgorithmInfo:
        """AlgorithmInfo for results produced with this bundle (its kind says what it was trained on)."""
        return AlgorithmInfo(name=self.name, version=self.version, device_uid=self.device_uid,
                             kind=bundle_kind(self.metadata))


def bundle_root(name: str, root: Path | None = None) -> Path:
    """Directory of bundle ``name`` (under ``root``, default the package's ``bundles/``)."""
    return Path(root or BUNDLES_DIR) / name


def trained_on_dataset(metadata: dict[str, Any]) -> bool:
    """Whether a bundle's metadata says it was trained on a dataset directory, not a synthetic cohort."""
    return bool(metadata.get("training_data", {}).get("source") == DATASET_SOURCE)


def synthetic_training_data(bundle: Bundle, refit: str) -> dict[str, Any]:
    """The ``training_data`` of a bundle trained on a synthetic cohort, which ``refit`` rebuilds from it.

    A bundle trained on a dataset directory is refused: its cohort cannot be rebuilt from a seed.
    """
    recorded: dict[str, Any] = bundle.metadata["training_data"]
    if trained_on_dataset(bundle.metadata):
        raise BundleError(f"{bundle.root} was trained on a dataset directory ({recorded.get('path')}); {refit} "
                          "rebuilds a synthetic cohort, so train it again with --data-dir instead")
    return recorded


def bundle_kind(metadata: dict[str, Any]) -> str:
    """The algorithm kind reports show for a bundle: synthetic phantoms or a local dataset."""
    return DATASET_KIND if trained_on_dataset(metadata) else DEEP_KIND


def bundle_models_dir(root: Path) -> Path:
    """``<root>/models``, created if needed: training saves model.pt and the deployed file here."""
    path = Path(root) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_plain(value: object, where: str) -> None:
    """Reject MONAI-style ``$`` expressions and ``@`` references anywhere in a config value."""
    if isinstance(value, str) and value.startswith(("$", "@", "%")):
        raise BundleError(f"{where}: config values must be plain, got expression {value!r}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")


def _check_configs(metadata: dict[str, Any], inference: dict[str, Any], where: str) -> None:
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise BundleError(f"{where}/configs/metadata.json: missing required keys {missing}")
    intended = str(metadata["intended_use"]).lower()
    dataset = trained_on_dataset(metadata)
    origin = "the dataset it was trained on" if dataset else "synthetic"
    if ("synthetic" not in intended and not dataset) or "not for clinical use" not in intended:
        raise BundleError(f"{where}/configs/metadata.json: intended_use must state {origin} training data "
                          f"and 'not for clinical use', got {metadata['intended_use']!r}")
    if dataset and not metadata["training_data"].get("path"):
        raise BundleError(f"{where}/configs/metadata.json: training_data of a dataset bundle must name its path")
    if inference.get("deployed") not in DEPLOYED_FORMATS:
        raise BundleError(f"{where}/configs/inference.json: 'deployed' must be one of {DEPLOYED_FORMATS}, "
                          f"got {inference.get('deployed')!r}")
    _check_plain(inference, "inference.json")
    try:
        note_encoding_of(inference)
    except ClinicalFeatureError as exc:
        raise BundleError(f"{where}/configs/inference.json: {exc}") from exc


def dataset_version(version: str, training_data: dict[str, Any]) -> str:
    """The version of a bundle trained on a dataset: the task's version with the dataset's tables as SemVer build
    metadata (``1.1.0+dataset.1a2b3c4d``, the first 8 hex digits of a SHA-256 over the tables' SHA-256s).

    Reports and job records (keyed by series, detector and model version) then tell it from the packaged
    bundle and from a bundle trained on other annotations.
    """
    digest = hashlib.sha256(json.dumps(training_data.get("tables_sha256", {}), sort_keys=True).encode()).hexdigest()
    return f"{version.split('+')[0]}+dataset.{digest[:8]}"


def write_bundle_configs(root: Path, metadata: dict[str, Any], inference: dict[str, Any]) -> None:
    """Validate and write ``configs/metadata.json`` and ``configs/inference.json`` under ``root``.

    A bundle trained on a dataset gets its ``dataset_version``.
    """
    _check_configs(metadata, inference, str(root))
    if trained_on_dataset(metadata):
        metadata = {**metadata, "version": dataset_version(str(metadata["version"]), metadata["training_data"])}
    configs = Path(root) / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    for file_name, data in (("metadata.json", metadata), ("inference.json", inference)):
        (configs / file_name).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"bundle file {path} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"bundle file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"bundle file {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _uid(paths: list[Path]) -> str:
    """2.25 UID from the SHA-256 of the files' contents (in order) and of the serving code."""
    digest = hashlib.sha256(serving_code_digest())
    for path in paths:
        digest.update(path.read_bytes())
    return f"2.25.{int.from_bytes(digest.digest()[:16], 'big')}"


def load_bundle(name: str, root: Path | None = None) -> Bundle:
    """Read and validate bundle ``name``; BundleError names the file and the rule it breaks."""
    path = bundle_root(name, root)
    if not path.is_dir():
        raise BundleError(f"model bundle {name!r} not found at {path}; train it with "
                          f"`radfusion train <task>` or check the bundle name")
    metadata = _read_json(path / "configs" / "metadata.json")
    inference = _read_json(path / "configs" / "inference.json")
    _check_configs(metadata, inference, str(path))
    weights = path / "models" / WEIGHTS_FILE
    deployed = path / "models" / str(inference["deployed"])
    for file in (weights, deployed):
        if not file.is_file():
            raise BundleError(f"bundle {name!r}: model file {file} is missing")
    vocabulary_file = path / "configs" / NOTE_VOCABULARY_FILE
    identity = [weights, deployed, path / "configs" / "inference.json"]
    return Bundle(name=name, root=path, metadata=metadata, inference=inference, weights_path=weights,
                  deployed_path=deployed,
                  device_uid=_uid(identity + ([vocabulary_file] if vocabulary_file.is_file() else [])),
                  note_vocabulary=_note_vocabulary(vocabulary_file, note_encoding_of(inference)))


def _note_vocabulary(path: Path, encoding: str) -> NoteVocabulary | None:
    """A bundle's note vocabulary file, or None without one; BundleError when it does not fit the bundle."""
    if not path.is_file():
        return None
    data = _read_json(path)
    terms, min_terms = data.get("terms"), data.get("min_terms")
    if (data.get("note_encoding") != encoding or not isinstance(terms, list)
            or not isinstance(min_terms, int) or min_terms < 1):
        raise BundleError(f"{path}: needs 'note_encoding' {encoding!r} (the bundle's), a list 'terms' (empty when "
                          f"the heads learned no note: every note is then read as none) and a positive integer "
                          f"'min_terms'")
    return NoteVocabulary(frozenset(str(term) for term in terms), min_terms)


def write_note_vocabulary(root: Path, encoding: str, notes: Iterable[list[str]]) -> NoteVocabulary:
    """Write ``configs/note_vocabulary.json`` under ``root`` from the terms (``note_terms``) of the heads' notes
    (none at all: no terms, so serving reads every note as none, as the heads learned)."""
    terms: set[str] = set()
    min_terms = 0
    for note in filter(None, notes):
        terms.update(note)
        min_terms = len(note) if not min_terms else min(min_terms, len(note))
    min_terms = max(min_terms, 1)
    (Path(root) / "configs" / NOTE_VOCABULARY_FILE).write_text(json.dumps(
        {"note_encoding": encoding, "min_terms": min_terms, "terms": sorted(terms)}, indent=0) + "\n")
    return NoteVocabulary(frozenset(terms), min_terms)


def resolve_bundle(ref: Bundle | str | Path | None, default_name: str) -> Bundle:
    """Bundle from a loaded bundle, a name, a bundle directory, or None (the packaged ``default_name``)."""
    if isinstance(ref, Bundle):
        return ref
    if ref is None:
        return load_bundle(default_name)
    path = Path(ref)
    if isinstance(ref, Path) or path.is_dir():
        return load_bundle(path.name, path.parent)
    return load_bundle(str(ref))
