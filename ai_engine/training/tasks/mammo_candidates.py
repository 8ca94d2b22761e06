"""Training of the ``mammo_fusion`` candidate classifier: fine-grid crops around candidates and lesions.

The per-view network's maps at 0.8 mm cannot tell an irregular or spiculated cancer from a round cyst
or an intramammary lymph node: both light up the mass channel. The classifier reads a 40 mm crop at
``FINE_SPACING_MM`` around each candidate, where margins, lobulation and spicules are visible.

Crops of an exam: every candidate the network proposes (what the classifier will see in serving),
the centre of each malignant target region and each benign mimic, jittered (lesions the network
missed, and the mimics that fool it), and random breast points (plain tissue). Every crop is
labelled the same way: malignant when a malignant target pixel lies within ``LABEL_RADIUS_MM`` of
its centre. Training samples a third of each batch from the malignant crops and augments like
the network's training (rotations, flips, smoothing, grey-level curves, noise: other scanners).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ai_engine.detectors.mammo_fusion import NET_SPACING_MM, candidate_crops, exam_candidates
from ai_engine.detectors.mammo_network import CandidateClassifier
from ai_engine.errors import AiEngineError
from ai_engine.evaluation import metrics
from ai_engine.training.loop import TrainConfig, fit, seed_everything

if TYPE_CHECKING:
    from ai_engine.training.tasks.mammo import ExamArrays

log = logging.getLogger(__name__)

LABEL_RADIUS_MM = 4.0
JITTER_PX = 3  # network pixels, for the crops centred on lesions
LESION_CROPS = 3  # jittered crops per lesion centre
RANDOM_PER_VIEW = 2
BATCH_POSITIVE_FRACTION = 1 / 3


@dataclass
class CropSet:
    """Candidate-classifier examples: crops (N, CROP, CROP) float16 and labels (N,) 0/1."""

    crops: np.ndarray
    labels: np.ndarray

    @classmethod
    def join(cls, parts: list[CropSet]) -> CropSet:
        """The examples of ``parts`` in order."""
        return cls(np.concatenate([p.crops for p in parts]), np.concatenate([p.labels for p in parts]))


def exam_crops(exam: ExamArrays, probabilities: list[np.ndarray], params: dict[str, Any],
               rng: np.random.Generator) -> CropSet:
    """The labelled crops of one exam (see module docstring) given the network's maps of its views."""
    radius = int(round(LABEL_RADIUS_MM / NET_SPACING_MM))
    disk = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
    malignant_near = [ndimage.binary_dilation(np.asarray(exam.targets[v]).any(axis=0), structure=disk)
                      for v in range(len(exam.views))]
    points = [(c.view_index, c.row, c.col)
              for c in exam_candidates(exam.views, probabilities, list(exam.identities), params)]
    centres = [(v, r, c) for v, r, c in exam.mimics]
    for v in range(len(exam.views)):
        labels, count = ndimage.label(np.asarray(exam.targets[v]).any(axis=0))
        centres += [(v, r, c) for r, c in ndimage.center_of_mass(labels > 0, labels, range(1, count + 1))]
        breast = np.argwhere(exam.views[v].breast)
        points += [(v, float(r), float(c)) for r, c in breast[rng.integers(len(breast), size=RANDOM_PER_VIEW)]]
    for v, r, c in centres:
        points += [(v, r + dr, c + dc) for dr, dc in rng.integers(-JITTER_PX, JITTER_PX + 1, size=(LESION_CROPS, 2))]
    labels = []
    for v, r, c in points:
        near = malignant_near[v]
        row, col = int(np.clip(round(r), 0, near.shape[0] - 1)), int(np.clip(round(c), 0, near.shape[1] - 1))
        labels.append(int(near[row, col]))
    return CropSet(candidate_crops(exam.views, points)[:, 0].astype(np.float16), np.array(labels, dtype=np.int64))


def crop_set(exams: list[ExamArrays], predict: Callable[[ExamArrays], list[np.ndarray]], params: dict[str, Any],
             seed: int) -> CropSet:
    """The crops of ``exams`` (``predict`` gives an exam's per-view maps)."""
    rng = np.random.default_rng(seed)
    return CropSet.join([exam_crops(e, predict(e), params, rng) for e in exams])


def _augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random rotation by quarter turns and flip, smoothing, grey-level curve and noise."""
    x = np.rot90(np.clip(crop.astype(np.float32), 0.0, None), int(rng.integers(4)))
    if rng.random() < 0.5:
        x = x[:, ::-1]
    if rng.random() < 0.5:
        x = ndimage.gaussian_filter(x, rng.uniform(0.3, 1.0))
    x = x ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    x = x + rng.standard_normal(x.shape).astype(np.float32) * rng.uniform(0.0, 0.03)
    return np.ascontiguousarray(x, dtype=np.float32)


def _batches(examples: CropSet, rng: np.random.Generator, steps: int, batch: int
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    positives = np.nonzero(examples.labels == 1)[0]
    negatives = np.nonzero(examples.labels == 0)[0]
    n_positive = int(round(batch * BATCH_POSITIVE_FRACTION)) if positives.size else 0
    for _ in range(steps):
        index = np.concatenate([rng.choice(positives, n_positive), rng.choice(negatives, batch - n_positive)])
        crops = np.stack([_augment(examples.crops[i], rng) for i in index])[:, None]
        yield torch.from_numpy(crops), torch.from_numpy(examples.labels[index].astype(np.float32))


def classify_crops(classifier: CandidateClassifier, crops: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Malignancy probabilities (N,) of crops (N, 1, CROP, CROP) or (N, CROP, CROP) with the eager classifier."""
    classifier.eval()
    crops = np.asarray(crops, dtype=np.float32).reshape(len(crops), 1, *crops.shape[-2:])
    with torch.no_grad():
        parts = [classifier(torch.from_numpy(crops[i:i + chunk])).numpy() for i in range(0, len(crops), chunk)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def train_classifier(examples: CropSet, stop: CropSet, *, epochs: int, steps: int, batch: int, seed: int,
                     max_seconds: float) -> tuple[CandidateClassifier, float]:
    """Train the classifier on ``examples``; early stopping on the crop-level AUC of ``stop``.

    Returns the classifier with its best weights and their stop-set AUC.
    """
    if not examples.labels.any() or examples.labels.all():
        raise AiEngineError(f"the candidate classifier needs malignant and other crops to learn from; got "
                            f"{int(examples.labels.sum())} malignant of {len(examples.labels)}")
    seed_everything(seed)
    classifier = CandidateClassifier()
    rng = np.random.default_rng(seed)

    def validate(model: CandidateClassifier) -> float:
        return metrics.roc_auc_or_chance(stop.labels, classify_crops(model, stop.crops))

    history = fit(classifier, batches=lambda epoch: _batches(examples, rng, steps, batch),
                  step=lambda model, b: F.binary_cross_entropy_with_logits(model.logits(b[0]), b[1]),
                  validate=validate,  # type: ignore[arg-type]
                  config=TrainConfig(epochs=epochs, lr=2e-3, patience=8, seed=seed, max_seconds=max_seconds,
                                     description="mammo candidate classifier"))
    log.info("candidate classifier: %d crops (%d malignant), best epoch %d of %d, stop-set AUC %.4f",
             len(examples.labels), int(examples.labels.sum()), history.best_epoch, len(history.losses),
             history.best_score)
    return classifier.eval(), history.best_score


def export_classifier(classifier: CandidateClassifier, models_dir: Path) -> float:
    """Write classifier.onnx; return the max |ONNX - eager| probability difference on a probe batch."""
    import onnxruntime as ort

    from ai_engine.detectors.mammo_fusion import CANDIDATE_CROP

    classifier.eval()
    example = torch.rand(2, 1, CANDIDATE_CROP, CANDIDATE_CROP)
    torch.onnx.export(classifier, (example,), models_dir / "classifier.onnx", input_names=["crops"],
                      output_names=["malignancy"], dynamic_axes={"crops": {0: "n"}, "malignancy": {0: "n"}},
                      opset_version=17, dynamo=False)
    classifier.eval()
    session = ort.InferenceSession(str(models_dir / "classifier.onnx"), providers=["CPUExecutionProvider"])
    probe = torch.rand(5, 1, CANDIDATE_CROP, CANDIDATE_CROP)
    with torch.no_grad():
        eager = classifier(probe).numpy()
    return float(np.abs(session.run(None, {"crops": probe.numpy()})[0] - eager).max())
