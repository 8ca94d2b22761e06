"""Fusion-head fitting shared by the tasks: train the three heads, calibrate, export, the fusion experiment.

Every task turns its image network's output into a ``FusionData`` table (image features plus the
encoded clinical values, note and their masks, one row per case or lesion) for a training split
and a calibration split, then calls ``fit_heads``: the heads of every mode in ``MODES`` learn with
the same modality dropout and early stopping, and the temperature and operating threshold of the
deployed (dynamic) head are fitted on the calibration split, never on a held-out cohort.
``fusion_experiment`` gives the held-out AUC table of the three heads with complete clinical data
and with ``MISSING_FRACTION`` of the clinical inputs hidden.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ai_engine.bundle import NOTE_VOCABULARY_FILE, Bundle, write_bundle_configs
from ai_engine.clinical_features import NoteVocabulary, context_text, encode_clinical, encode_note
from ai_engine.errors import AiEngineError
from ai_engine.evaluation import metrics
from ai_engine.fusion import MODES, FusionHead, fusion_loss, modality_dropout
from ai_engine.fusion.calibration import TemperatureScaler
from ai_engine.training.loop import TrainConfig, fit

log = logging.getLogger(__name__)

MISSING_FRACTION = 0.3
HEAD_EPOCHS, QUICK_HEAD_EPOCHS = 300, 5
HEAD_PATIENCE = 40
BATCH = 64
# A whole modality is dropped with p 0.5 (both: 1 case in 4), so the path the server takes when the EMR
# sends nothing is trained as much as the others (chosen by cross-validation on the training cohorts).
DROPOUT = {"p_modality": 0.5, "p_feature_max": 0.5}
FUSION_INPUTS = ("image", "clinical", "clinical_present", "text", "text_present")
FUSION_OUTPUTS = ("logit", "weights", "log_var")
DESIGN = ("FusionHead 'dynamic': attention-gated concatenation of 32-d image/clinical/text projections "
          "(masked softmax gate, each projection x weight / largest weight, gate initialised to plain "
          "concatenation), logit + log-variance")


@dataclass
class FusionData:
    """Fusion-head inputs and labels of N cases (or lesions) as float32 arrays."""

    image: np.ndarray  # [N, image_dim]
    clinical: np.ndarray  # [N, clinical_dim]
    clinical_present: np.ndarray  # [N, clinical_dim] 0/1
    text: np.ndarray  # [N, text_dim]
    text_present: np.ndarray  # [N] 0/1
    label: np.ndarray  # [N] 0/1

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, np.asarray(getattr(self, f.name), dtype=np.float32))
        sizes = {f.name: len(getattr(self, f.name)) for f in fields(self)}
        if len(set(sizes.values())) != 1:
            raise AiEngineError(f"FusionData arrays must have one length, got {sizes}")

    @classmethod
    def from_contexts(cls, task: str, image: np.ndarray, contexts: Sequence[Any], label: np.ndarray,
                      note_encoding: str, note_vocabulary: NoteVocabulary | None = None) -> FusionData:
        """Encode each row's ``ClinicalContext`` (or None) for ``task`` beside its image features (notes as a bundle
        with ``note_vocabulary`` reads them; None: every term, as heads are fitted)."""
        clinical = [encode_clinical(task, c) for c in contexts]
        notes = [encode_note(context_text(c), encoding=note_encoding, vocabulary=note_vocabulary) for c in contexts]
        return cls(image, np.stack([v for v, _ in clinical]), np.stack([p for _, p in clinical]),
                   np.stack([t for t, _ in notes]), np.array([p for _, p in notes]), label)

    @classmethod
    def join(cls, parts: Sequence[FusionData]) -> FusionData:
        """The rows of ``parts`` in order."""
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def __len__(self) -> int:
        return len(self.label)

    @property
    def dims(self) -> tuple[int, int, int]:
        """(image_dim, clinical_dim, text_dim): the FusionHead's input sizes."""
        return self.image.shape[1], self.clinical.shape[1], self.text.shape[1]

    def take(self, index: np.ndarray) -> FusionData:
        """The rows ``index`` (indices or a boolean mask)."""
        return FusionData(*(getattr(self, f.name)[index] for f in fields(self)))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The five head inputs (FUSION_INPUTS order) as tensors."""
        return tuple(torch.from_numpy(getattr(self, name)) for name in FUSION_INPUTS)

    def with_clinical_hidden(self, fraction: float, seed: int) -> FusionData:
        """A copy with each present clinical input hidden with probability ``fraction`` (seeded); note kept."""
        keep = np.random.default_rng(seed).random(self.clinical_present.shape) >= fraction
        return FusionData(self.image, self.clinical, self.clinical_present * keep, self.text, self.text_present,
                          self.label)


def head_outputs(head: FusionHead, data: FusionData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logit [N], weights [N, 3], log_var [N]) of ``head`` on ``data`` in eval mode."""
    head.eval()
    with torch.no_grad():
        return tuple(t.numpy() for t in head.forward_tensors(*data.tensors()))  # type: ignore[return-value]


def _nll(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def train_head(mode: str, train: FusionData, val: FusionData, *, seed: int, epochs: int) -> FusionHead:
    """One head trained with modality dropout on ``train``; early stopping on ``val``'s log-loss.

    The stopping score averages the log-loss with complete inputs and with ``MISSING_FRACTION``
    of the clinical inputs hidden, so the kept weights serve both situations.
    """
    head = FusionHead(*train.dims, mode=mode)
    generator = torch.Generator().manual_seed(seed)
    tensors, labels = train.tensors(), torch.from_numpy(train.label)
    views = [val, val.with_clinical_hidden(MISSING_FRACTION, seed)]

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            clinical_present, text_present = modality_dropout(tensors[2][idx], tensors[4][idx], generator=generator,
                                                              **DROPOUT)
            yield tensors[0][idx], tensors[1][idx], clinical_present, tensors[3][idx], text_present, labels[idx]

    def step(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return fusion_loss(model(*batch[:5]), batch[5])

    def validate(model: nn.Module) -> float:
        return -sum(_nll(head_outputs(model, d)[0], d.label) for d in views) / len(views)  # type: ignore[arg-type]

    history = fit(head, batches=batches, step=step, validate=validate,
                  config=TrainConfig(epochs=epochs, lr=3e-3, patience=HEAD_PATIENCE, seed=seed,
                                     description=f"fusion {mode}", progress=False))
    log.info("fusion head %s: best epoch %d of %d, validation log-loss %.4f", mode, history.best_epoch,
             len(history.losses), -history.best_score)
    return head.eval()


@dataclass(frozen=True)
class Calibration:
    """Temperature of the deployed head and its operating threshold, both fitted on the calibration split."""

    temperature: float
    threshold: float


def calibrate(logits: np.ndarray, labels: np.ndarray, *, specificity: float,
              threshold_range: tuple[float, float] = (0.0, 1.0)) -> Calibration:
    """Temperature by log-likelihood, then the threshold keeping ``specificity`` (clipped to ``threshold_range``).

    A split holding one class only (a smoke-test cohort) gets temperature 1 and threshold 0.5.
    """
    if not 0 < labels.sum() < len(labels):
        return Calibration(1.0, 0.5)
    scaler = TemperatureScaler().fit(logits, labels)
    operating = metrics.sensitivity_at_specificity(labels, scaler.probabilities(logits), specificity)
    return Calibration(scaler.temperature, float(np.clip(operating.threshold, *threshold_range)))


def fit_heads(train: FusionData, calib: FusionData, *, seed: int, quick: bool, specificity: float,
              threshold_range: tuple[float, float] = (0.0, 1.0)
              ) -> tuple[dict[str, FusionHead], Calibration, dict[str, Any]]:
    """Heads of every mode (same data, dropout and stopping), calibration of the dynamic one, and a summary."""
    epochs = QUICK_HEAD_EPOCHS if quick else HEAD_EPOCHS
    heads = {mode: train_head(mode, train, calib, seed=seed, epochs=epochs) for mode in MODES}
    calibration = calibrate(head_outputs(heads["dynamic"], calib)[0], calib.label, specificity=specificity,
                            threshold_range=threshold_range)
    summary: dict[str, Any] = {
        "design": DESIGN, "train_rows": len(train), "calibration_rows": len(calib),
        "positive_fraction": round(float(np.concatenate([train.label, calib.label]).mean()), 4),
        "modality_dropout": DROPOUT, "epochs_max": epochs, "seed": seed,
        "temperature": round(calibration.temperature, 5), "threshold": round(calibration.threshold, 5)}
    if 0 < calib.label.sum() < len(calib):
        summary["calibration_split"] = fusion_experiment(heads, calib, seed=seed)
    return heads, calibration, summary


def fusion_experiment(heads: dict[str, FusionHead], data: FusionData, *, seed: int) -> dict[str, dict[str, float]]:
    """AUC of each head with complete clinical data and with ``MISSING_FRACTION`` of it hidden (seeded)."""
    hidden = data.with_clinical_hidden(MISSING_FRACTION, seed)
    table = {}
    for mode, head in heads.items():
        complete = metrics.roc_auc(data.label, head_outputs(head, data)[0])
        missing = metrics.roc_auc(data.label, head_outputs(head, hidden)[0])
        table[mode] = {"auc_complete": round(complete, 4), "auc_30pct_missing": round(missing, 4),
                       "auc_drop_points": round(100 * (complete - missing), 2)}
    return table


class _Tensors(nn.Module):
    """The head with a plain-tensor forward, for ONNX export."""

    def __init__(self, head: FusionHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.head.forward_tensors(*inputs)


def export_heads(heads: dict[str, FusionHead], models_dir: Path) -> float:
    """Write fusion.onnx (dynamic head) and fusion_<mode>.pt of the others; return max |ONNX - eager|."""
    import onnxruntime as ort

    for mode, head in heads.items():
        if mode != "dynamic":
            torch.save(head.state_dict(), models_dir / f"fusion_{mode}.pt")
    head = heads["dynamic"].eval()
    image_dim, clinical_dim, text_dim = head.input_dims
    generator = torch.Generator().manual_seed(0)
    example = (torch.randn(3, image_dim, generator=generator), torch.randn(3, clinical_dim, generator=generator),
               torch.tensor([[1.0] * clinical_dim, [0.0] * clinical_dim, [1.0] + [0.0] * (clinical_dim - 1)]),
               torch.randn(3, text_dim, generator=generator), torch.tensor([1.0, 0.0, 1.0]))
    path = models_dir / "fusion.onnx"
    torch.onnx.export(_Tensors(head).eval(), example, str(path), input_names=list(FUSION_INPUTS),
                      output_names=list(FUSION_OUTPUTS),
                      dynamic_axes={n: {0: "b"} for n in [*FUSION_INPUTS, *FUSION_OUTPUTS]}, opset_version=17,
                      dynamo=False)
    head.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    deployed = session.run(None, {n: t.numpy() for n, t in zip(FUSION_INPUTS, example, strict=True)})
    with torch.no_grad():
        eager = [t.numpy() for t in head.forward_tensors(*example)]
    return max(float(np.abs(a - b).max()) for a, b in zip(deployed, eager, strict=True))


def load_heads(models_dir: Path, dynamic: FusionHead) -> dict[str, FusionHead]:
    """The deployed ``dynamic`` head and the experiment heads saved beside it (same input sizes), in eval mode."""
    heads = {"dynamic": dynamic.eval()}
    for mode in MODES:
        if mode != "dynamic":
            head = FusionHead(*dynamic.input_dims, mode=mode)
            head.load_state_dict(torch.load(models_dir / f"fusion_{mode}.pt", map_location="cpu", weights_only=True))
            heads[mode] = head.eval()
    return heads


def bump_minor(version: str) -> str:
    """'1.0.3' -> '1.1.0'."""
    major, minor, _ = _version_parts(version)
    return f"{major}.{minor + 1}.0"


def _version_parts(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise AiEngineError(f"bundle version must be MAJOR.MINOR.PATCH, got {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def bump_patch(version: str) -> str:
    """'1.1.0' -> '1.1.1'."""
    major, minor, patch = _version_parts(version)
    return f"{major}.{minor}.{patch + 1}"


def write_refit_configs(bundle: Bundle, calibration: Calibration, summary: dict[str, Any], *,
                        threshold_key: str | None, command: str, note_encoding: str,
                        inference: dict[str, Any] | None = None) -> str:
    """Configs of a head-only refit: new temperature (and threshold), minor version bump, refit record, and the
    ``note_encoding`` the refitted heads learned.

    ``inference``: further inference settings the refitted heads depend on (they replace the old ones).

    Returns the new version. The record says that the image network (``model.onnx`` and the
    network part of ``model.pt``) is the previous version's, unchanged.
    """
    version = bump_minor(bundle.version)
    inference = {**bundle.inference, **(inference or {}), "note_encoding": note_encoding,
                 "temperature": round(calibration.temperature, 5)}
    if threshold_key is not None:
        inference[threshold_key] = round(calibration.threshold, 5)
    metadata = {**bundle.metadata, "version": version}
    if isinstance(metadata.get("network"), dict) and "fusion" in metadata["network"]:
        metadata["network"] = {**metadata["network"], "fusion": DESIGN}
    metadata["fusion_refit"] = {
        "image_network": f"unchanged from version {bundle.version} (same model.onnx, same network weights in "
                         "model.pt)",
        "how": "fusion heads (all modes) retrained on the image network's features of the same training cohort "
               "and splits (plus 'fusion_extra_cases' further patients of its seed where recorded), temperature and "
               "threshold refitted on the calibration split",
        "command": command, **summary}
    write_bundle_configs(bundle.root, metadata, inference)
    (bundle.root / "configs" / NOTE_VOCABULARY_FILE).unlink(missing_ok=True)  # the old heads' notes: written anew
    return version
