"""Training and held-out evaluation of the ``mammo_fusion`` detector.

``train``: generate the synthetic four-view cohort (``ai_engine.synthetic.cohorts.mammo``), split it
by case into network-training (with a network-validation part), fusion-training and calibration
splits, train the per-view ``BasicUNet`` on 128x128 crops (mass and calcification-cluster maps),
then the candidate classifier on the network's candidates of the same exams
(``ai_engine.training.tasks.mammo_candidates``), compute case features with the detector's own code, train
the fusion heads (dynamic, concat and image-only, for the fusion experiment) on the fusion-training split
plus ``FUSION_EXTRA_EXAMS`` further synthetic exams that neither network has seen, fit the temperature and
the operating threshold on the calibration split, fit the density model on texture statistics, export ONNX
and write the bundle.

With ``data_dir`` the exams come from a CBIS-DDSM-layout dataset (``ai_engine.training.datasets.cbis_ddsm``,
train tables only, shuffled with the seed and split by patient, not cached) and the same code trains on them.

``evaluate``: generate a held-out cohort with another seed and the shifted ``HELDOUT_ACQUISITION``,
write every exam as DICOM, load it through ``ai_engine.inputs.load_inputs`` (the server's path), run
the deployed detector and the classical baseline on the same studies, and write metrics and plots.
With ``data_dir`` the exams are the dataset's test tables (an institution validating a model on its own
cases), read by the same reader; their metrics go to the required ``out_dir`` only.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ai_engine.bundle import (
    Bundle,
    bundle_models_dir,
    bundle_root,
    resolve_bundle,
    synthetic_training_data,
    write_bundle_configs,
)
from ai_engine.clinical_features import NOTE_DIM, context_text, encode_clinical, encode_note, feature_names
from ai_engine.detectors.mammo_fusion import (
    CANDIDATE_CROP,
    DENSITY_CATEGORIES,
    FINE_SPACING_MM,
    IMAGE_FEATURES,
    NAME,
    NET_SPACING_MM,
    MassOutline,
    PreparedView,
    crop_malignancy,
    density_statistics,
    equivalent_diameter_mm,
    exam_image_analysis,
    mask_to_network,
    prepare_view,
    view_maps,
)
from ai_engine.detectors.mammo_network import (
    CLASSIFIER_CHANNELS,
    UNET_FEATURES,
    CandidateClassifier,
    MammoFusionModel,
    MammoNetwork,
    load_eager_model,
)
from ai_engine.errors import AiEngineError, DetectorInputError
from ai_engine.evaluation import metrics, plots
from ai_engine.fusion import FusionHead
from ai_engine.results import DetectorResult, FindingType, Task
from ai_engine.synthetic.cohorts.mammo import (
    HELDOUT_ACQUISITION,
    TRAIN_ACQUISITION,
    VIEW_ORDER,
    MammoCase,
    generate_case,
)
from ai_engine.synthetic.mammo_phantom import MALIGNANT_KINDS, Acquisition
from ai_engine.training.fusion_fit import (
    DESIGN,
    Calibration,
    FusionData,
    bump_patch,
    export_heads,
    fit_heads,
    fusion_experiment,
    head_outputs,
    load_heads,
    write_refit_configs,
)
from ai_engine.training.datasets import cbis_ddsm, dataset_intended_use, dataset_provenance
from ai_engine.training.loop import TrainConfig, fit, seed_everything
from ai_engine.training.tasks import mammo_candidates

if TYPE_CHECKING:
    from ai_engine.detectors.base import DetectorInput
    from ai_engine.mammo import MammoView
    from ai_engine.training.datasets.cbis_ddsm import RealMammoExam
    from hl7_fhir.context import ClinicalContext

log = logging.getLogger(__name__)

VERSION = "2.3.1"
NOTE_ENCODING = "hashed-words"  # since 2.3.0: validation AUC 0.934 against 0.926 with numbers (model card)
COHORT_FORMAT = "2.0.0"  # name of the cached cohort pickle: change it when ExamArrays or the phantom changes
CROP = 128
DEFAULT_COHORT = 640
QUICK_COHORT = 24
CLASSIFIER_EPOCHS = 40
CLASSIFIER_EXTRA_EXAMS = 1000  # synthetic exams beyond the cohort whose crops only the candidate classifier sees
FUSION_EXTRA_EXAMS = 2000  # synthetic exams after those that only the fusion heads see (never seen by a network)
EXTRA_CHUNK = 100  # further exams generated and analysed at a time (a prepared exam holds ~3 MB)
HELDOUT_SEED = 8888  # 7777 served the first model's evaluation and a diagnosis: no longer unseen
DEFAULT_HELDOUT_SIZE = 200
SPLIT_FRACTIONS = (0.55, 0.07, 0.28)  # network train, network validation, fusion train; rest calibration
MODEL_CARD_DIR = Path(__file__).resolve().parents[3] / "docs" / "model-cards" / "mammo"
INFERENCE_DEFAULTS: dict[str, Any] = {
    "net_spacing_mm": NET_SPACING_MM, "candidate_floor": 0.1, "candidates_per_view": 4,
    "match_tolerance_mm": 15.0, "report_threshold": 0.5, "max_findings": 4,
    "threads": 2, "test_time_augmentation": True, "mass_outline": asdict(MassOutline()),
}


@dataclass
class ExamArrays:
    """One exam as training needs it: prepared views, per-view targets, encodings and truth."""

    views: list[PreparedView]
    # bool (views, 2, H, W) on the network grid; a list of (2, H, W) when the views differ in size
    # (dataset exams; synthetic views share one shape)
    targets: np.ndarray | list[np.ndarray]
    mimics: list[tuple[int, int, int]]  # (view, row, col) of benign mimics on the network grid: hard negatives
    clinical: np.ndarray
    clinical_present: np.ndarray
    text: np.ndarray
    text_present: bool
    label: int
    density: int
    # (laterality, view) of each view. A class-level default, so cached cohorts pickled before the
    # field existed (all four-view, VIEW_ORDER) unpickle unchanged and COHORT_FORMAT stays.
    identities: tuple[tuple[str, str], ...] = VIEW_ORDER


def prepare_exam(images: Sequence[tuple[np.ndarray, float]], cancer_masks: Sequence[dict[str, np.ndarray]],
                 mimic_centres: Sequence[tuple[int, float, float]], context: ClinicalContext | None, *, label: int,
                 density: str, identities: Sequence[tuple[str, str]]) -> ExamArrays:
    """An exam's training unit: views (pixels, spacing mm) prepared as in serving, targets and mimics
    mapped onto the network grid (mimic centres in source pixels), clinical and note encodings."""
    views, targets = [], []
    for (image, spacing), masks in zip(images, cancer_masks, strict=True):
        view = prepare_view(image, spacing)
        view.channels = view.channels.astype(np.float16)
        view.fine = view.fine.astype(np.float16)
        views.append(view)
        targets.append(np.stack([mask_to_network(masks[kind], spacing, view) for kind in MALIGNANT_KINDS]))
    mimics = []
    for index, centre_row, centre_col in mimic_centres:
        view, spacing = views[index], images[index][1]
        row = centre_row * spacing / NET_SPACING_MM
        col = centre_col * spacing / NET_SPACING_MM
        col = view.net_shape[1] - 1 - col if view.flipped else col
        mimics.append((index, int(row), int(col)))
    clinical, present = encode_clinical(Task.MAMMOGRAPHY, context)
    text, text_present = encode_note(context_text(context), encoding=NOTE_ENCODING)
    stacked = np.stack(targets) if len({t.shape for t in targets}) == 1 else targets
    return ExamArrays(views, stacked, mimics, clinical, present, text, text_present, label,
                      DENSITY_CATEGORIES.index(density), tuple(identities))


def exam_arrays(case: MammoCase) -> ExamArrays:
    """Prepare the four views of a synthetic ``case`` and its network-grid targets."""
    spacing = case.acquisition.pixel_spacing_mm
    return prepare_exam([(image, spacing) for _, _, image in case.views()], case.cancer_masks(),
                        [(t.view_index, *t.center_voxel) for t in case.lesions if t.kind not in MALIGNANT_KINDS],
                        case.context, label=int(case.cancer), density=case.density, identities=VIEW_ORDER)


def real_exam_arrays(exam: RealMammoExam) -> ExamArrays:
    """Prepare the 1-4 views of a dataset exam (``ai_engine.training.datasets.cbis_ddsm``)."""
    return prepare_exam([(v.array, float(np.mean(v.pixel_spacing_mm))) for v in exam.views], exam.cancer_masks,
                        exam.mimic_centres, exam.context, label=exam.label, density=exam.density,
                        identities=exam.identities)


def exam_seeds(seed: int, first: int, count: int) -> list[int]:
    """Generator seeds of the exams ``first`` .. ``first + count - 1`` of the synthetic stream of ``seed``."""
    return [seed * 1_000_003 + first + i for i in range(count)]


def _make_exam(job: tuple[int, Acquisition]) -> ExamArrays:
    return exam_arrays(generate_case(*job))


def generate_exams(seeds: list[int], acquisition: Acquisition, workers: int = 2) -> list[ExamArrays]:
    """Generate and prepare the exams of ``seeds`` (two worker processes: the phantom is numpy-bound)."""
    jobs = [(s, acquisition) for s in seeds]
    if workers <= 1 or len(jobs) < 8:
        return [_make_exam(j) for j in jobs]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(pool.imap(_make_exam, jobs, chunksize=4))


def _cached_exams(seed: int, size: int, quick: bool) -> list[ExamArrays]:
    """The prepared training cohort (``size`` exams of ``seed``), generated once and kept as a pickle in the
    temp directory."""
    seeds = exam_seeds(seed, 0, size)
    cache = Path(tempfile.gettempdir()) / f"radfusion-mammo-cohort-{seed}-{size}-v{COHORT_FORMAT}-{NOTE_ENCODING}.pkl"
    if cache.is_file() and not quick:
        log.info("reading the prepared cohort from %s", cache)
        with cache.open("rb") as handle:
            return pickle.load(handle)  # noqa: S301 - our own file, written below
    log.info("generating %d synthetic four-view exams (seed %d)", len(seeds), seed)
    exams = generate_exams(seeds, TRAIN_ACQUISITION)
    if not quick:
        with cache.open("wb") as handle:
            pickle.dump(exams, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return exams


def _split(size: int, quick: bool) -> tuple[slice, slice, slice, slice]:
    cuts = np.cumsum([int(round(f * size)) for f in SPLIT_FRACTIONS])
    if quick:
        cuts = np.array([size // 2, size // 2 + size // 8, size - size // 4])
    return slice(0, cuts[0]), slice(cuts[0], cuts[1]), slice(cuts[1], cuts[2]), slice(cuts[2], size)


# ---------------------------------------------------------------------------------------------
# Network training
# ---------------------------------------------------------------------------------------------


def _crop_batches(exams: list[ExamArrays], rng: np.random.Generator, steps: int, batch: int
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random 128x128 crops with augmentation: 3 in 8 on a cancer, 3 in 8 on a benign mimic, the rest anywhere."""
    pool = [(e, v) for e in exams for v in range(len(e.views))]
    positives = [(e, v) for e, v in pool if e.targets[v].any()]
    mimics = [(e, m) for e in exams for m in e.mimics]
    for _ in range(steps):
        inputs, targets = [], []
        for i in range(batch):
            kind = i % 8
            if kind < 3 and positives:
                exam, v = positives[rng.integers(len(positives))]
                anchor = np.argwhere(exam.targets[v].any(axis=0))
            elif kind < 6 and mimics:
                exam, (v, row, col) = mimics[rng.integers(len(mimics))]
                anchor = np.array([[row, col]])
            else:
                exam, v = pool[rng.integers(len(pool))]
                anchor = np.argwhere(exam.views[v].breast)
            view, target = exam.views[v], exam.targets[v]
            r, c = anchor[rng.integers(len(anchor))] + rng.integers(-40, 41, size=2)
            rows, cols = view.breast.shape
            r0 = int(np.clip(r - CROP // 2, 0, rows - CROP))
            c0 = int(np.clip(c - CROP // 2, 0, cols - CROP))
            x = view.channels[:, r0:r0 + CROP, c0:c0 + CROP].astype(np.float32)
            y = target[:, r0:r0 + CROP, c0:c0 + CROP].astype(np.float32)
            x, y = _augment(x, y, rng)
            inputs.append(x)
            targets.append(y)
        yield torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip up-down, smoothing, intensity gain/offset/gamma, extra noise, speck gain: other scanners.

    Smoothing and added noise both vary, so the network cannot use the noise level as a cue
    (a quieter detector made every smooth blob look like a mass before this was added).
    """
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    intensity = np.clip(x[0], 0.0, None)
    if rng.random() < 0.5:
        intensity = ndimage.gaussian_filter(intensity, rng.uniform(0.3, 1.2))
    intensity = intensity ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    intensity = intensity + rng.standard_normal(intensity.shape).astype(np.float32) * rng.uniform(0.0, 0.02)
    speck = x[1] * rng.uniform(0.7, 1.3)
    return np.ascontiguousarray(np.stack([intensity, speck]).astype(np.float32)), np.ascontiguousarray(y)


def _segmentation_loss(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Weighted BCE plus soft Dice per channel (lesions are small against the breast)."""
    weight = 1.0 + 9.0 * target
    bce = F.binary_cross_entropy(probabilities.clamp(1e-6, 1 - 1e-6), target, weight=weight)
    inter = (probabilities * target).sum(dim=(0, 2, 3))
    dice = 1.0 - (2 * inter + 1.0) / (probabilities.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + 1.0)
    return bce + 0.5 * dice.mean()


def predict_views(network: MammoNetwork, exam: ExamArrays, flip_average: bool = False) -> list[np.ndarray]:
    """Probability maps (C, H, W) of the exam's views with the eager network (``view_maps``).

    Views of one shape (every synthetic exam) run as one batch; a dataset exam's views differ in
    size and run one by one.
    """
    channels = [v.channels.astype(np.float32) for v in exam.views]
    groups = [channels] if len({c.shape for c in channels}) == 1 else [[c] for c in channels]
    with torch.no_grad():
        return [p for group in groups
                for p in view_maps(lambda x: network(torch.from_numpy(x)).numpy(), np.stack(group), flip_average)]


def train_network(exams: list[ExamArrays], validation: list[ExamArrays], *, epochs: int, steps: int, batch: int,
                  seed: int, max_seconds: float, checkpoint: Path | None = None) -> MammoNetwork:
    """Train the per-view network; early stopping on the validation exams' case AUC (max map value)."""
    seed_everything(seed)
    network = MammoNetwork()
    rng = np.random.default_rng(seed)

    def validate(model: nn.Module) -> float:
        scores = [max(float(p.max()) for p in predict_views(model, e)) for e in validation]  # type: ignore[arg-type]
        labels = np.array([e.label for e in validation])
        return metrics.roc_auc_or_chance(labels, np.array(scores)) - 1e-3 * float(np.mean(scores))

    fit(network, batches=lambda epoch: _crop_batches(exams, rng, steps, batch),
        step=lambda model, b: _segmentation_loss(model(b[0]), b[1]), validate=validate,
        config=TrainConfig(epochs=epochs, lr=3e-3, patience=6, seed=seed, max_seconds=max_seconds,
                           description="mammo network"), checkpoint=checkpoint)
    return network


# ---------------------------------------------------------------------------------------------
# Case features, fusion heads, density model
# ---------------------------------------------------------------------------------------------


def case_table(network: MammoNetwork, classifier: CandidateClassifier, exams: list[ExamArrays],
               params: dict[str, Any]) -> FusionData:
    """Image features (from the detector's own analysis code) plus encodings for each exam."""
    augment = bool(params["test_time_augmentation"])
    classify = partial(crop_malignancy, partial(mammo_candidates.classify_crops, classifier), dihedral_average=augment)
    images = [exam_image_analysis(e.views, predict_views(network, e, augment), list(e.identities), params,
                                  classify)[1] for e in exams]
    return FusionData(np.stack(images), np.stack([e.clinical for e in exams]),
                      np.stack([e.clinical_present for e in exams]), np.stack([e.text for e in exams]),
                      np.array([e.text_present for e in exams]), np.array([e.label for e in exams]))


def fit_density_model(exams: list[ExamArrays], seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Multinomial logistic regression from texture statistics to density A-D; (weights, bias, accuracy).

    The statistics are standardised for the fit (their scales differ by three orders of magnitude,
    and unscaled the optimiser stops near "always B") and the scaling is folded into the returned
    weights and bias, so the deployed model reads raw statistics.
    """
    seed_everything(seed)
    stats = torch.from_numpy(np.stack([density_statistics(v) for e in exams for v in e.views]))
    labels = torch.tensor([e.density for e in exams for _ in e.views])
    mean, scale = stats.mean(dim=0), stats.std(dim=0).clamp_min(1e-6)
    standardised = (stats - mean) / scale
    linear = nn.Linear(stats.shape[1], len(DENSITY_CATEGORIES))
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=300)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(linear(standardised), labels) + 1e-3 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        weights = (linear.weight / scale).T  # (statistics, categories) on raw statistics
        bias = linear.bias - mean @ weights
        accuracy = float(((stats @ weights + bias).argmax(dim=1) == labels).float().mean())
    return weights.numpy().copy(), bias.numpy().copy(), accuracy


# ---------------------------------------------------------------------------------------------
# Export and bundle
# ---------------------------------------------------------------------------------------------


def export_network(network: MammoNetwork, models_dir: Path) -> float:
    """Write model.onnx (per-view network); return the max |ONNX - eager| difference on a probe."""
    import onnxruntime as ort

    network.eval()
    example = torch.rand(1, 2, 304, 240)
    torch.onnx.export(network, (example,), models_dir / "model.onnx", input_names=["views"],
                      output_names=["probabilities"], dynamic_axes={"views": {0: "batch", 2: "rows", 3: "cols"},
                                                                    "probabilities": {0: "batch", 2: "rows",
                                                                                      3: "cols"}},
                      opset_version=17, dynamo=False)
    network.eval()  # export restores the module's mode; compare in eval mode
    session = ort.InferenceSession(str(models_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    probe = torch.rand(1, 2, 288, 224)
    with torch.no_grad():
        eager = network(probe).numpy()
    return float(np.abs(session.run(None, {"views": probe.numpy()})[0] - eager).max())


def fusion_extra_seeds(seed: int, size: int, count: int) -> list[int]:
    """Generator seeds of the fusion heads' ``count`` further exams: after the cohort's ``size`` exams and the
    candidate classifier's ``CLASSIFIER_EXTRA_EXAMS`` (``extra_crops``), so neither network has seen them."""
    return exam_seeds(seed, size + CLASSIFIER_EXTRA_EXAMS, count)


def _fusion_tables(network: MammoNetwork, classifier: CandidateClassifier, exams: list[ExamArrays], size: int,
                   quick: bool, extra_seeds: Sequence[int] = ()) -> tuple[FusionData, FusionData]:
    """(fusion-training, calibration) tables: the cohort's splits, the first with the exams of ``extra_seeds``
    (generated with the training acquisition ``EXTRA_CHUNK`` at a time) appended."""
    _, _, fusion_train, calibration = (exams[s] for s in _split(size, quick))
    params = dict(INFERENCE_DEFAULTS)
    train_parts = [case_table(network, classifier, fusion_train, params)]
    for start in range(0, len(extra_seeds), EXTRA_CHUNK):
        log.info("fusion heads: further exams %d-%d of %d", start + 1, min(start + EXTRA_CHUNK, len(extra_seeds)),
                 len(extra_seeds))
        chunk = generate_exams(list(extra_seeds[start:start + EXTRA_CHUNK]), TRAIN_ACQUISITION)
        train_parts.append(case_table(network, classifier, chunk, params))
    return FusionData.join(train_parts), case_table(network, classifier, calibration, params)


def _extra_exam_crops(network: MammoNetwork, seed: int, params: dict[str, Any], job: int) -> mammo_candidates.CropSet:
    torch.set_num_threads(1)  # one worker process per core
    exam = exam_arrays(generate_case(job, TRAIN_ACQUISITION))
    return mammo_candidates.exam_crops(exam, predict_views(network, exam), params, np.random.default_rng(seed + job))


def extra_crops(network: MammoNetwork, seed: int, first: int, count: int, params: dict[str, Any]
                ) -> mammo_candidates.CropSet:
    """Crops of ``count`` further synthetic exams of the cohort's seed (indices ``first`` on: never in its
    splits, so never in a fusion-training or calibration table), generated in two worker processes and
    kept as crops only."""
    jobs = exam_seeds(seed, first, count)
    work = partial(_extra_exam_crops, network.eval(), seed, params)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return mammo_candidates.CropSet.join(list(pool.imap(work, jobs, chunksize=8)))


def train_candidate_classifier(network: MammoNetwork, exams: list[ExamArrays], size: int, *, seed: int,
                               quick: bool, extra_exams: int) -> tuple[CandidateClassifier, dict[str, Any]]:
    """The candidate classifier and its training record.

    Trained on the crops of the network-training split plus ``extra_exams`` further synthetic exams
    (``extra_crops``; 0 for a dataset), stopped early on those of the network-validation split: the
    fusion-training and calibration splits stay unseen by both networks.
    """
    net_train, net_val, _, _ = (exams[s] for s in _split(size, quick))
    params = dict(INFERENCE_DEFAULTS)
    predict = partial(predict_views, network)
    examples = mammo_candidates.crop_set(net_train, predict, params, seed)
    if extra_exams:
        log.info("crops of %d further synthetic exams for the candidate classifier", extra_exams)
        examples = mammo_candidates.CropSet.join([examples, extra_crops(network, seed, size, extra_exams, params)])
    stop = mammo_candidates.crop_set(net_val, predict, params, seed + 1)
    classifier, stop_auc = mammo_candidates.train_classifier(
        examples, stop, epochs=1 if quick else CLASSIFIER_EPOCHS, steps=2 if quick else 150,
        batch=6 if quick else 48, seed=seed, max_seconds=30.0 if quick else 1500.0)
    record = {"extra_exams": extra_exams, "crops": len(examples.labels), "malignant_crops": int(examples.labels.sum()),
              "stop_crops": len(stop.labels), "stop_malignant_crops": int(stop.labels.sum()),
              "stop_crop_auc": round(stop_auc, 4)}
    return classifier, record


def _fit_fusion(network: MammoNetwork, classifier: CandidateClassifier, exams: list[ExamArrays], size: int, *,
                seed: int, quick: bool, extra_exams: int) -> tuple[dict[str, FusionHead], Calibration, dict[str, Any]]:
    """Heads of every mode on the fusion split plus ``extra_exams`` further exams (``fusion_extra_seeds``);
    temperature and the threshold for specificity 0.9 on the calibration split."""
    tables = _fusion_tables(network, classifier, exams, size, quick, fusion_extra_seeds(seed, size, extra_exams))
    heads, calibration, summary = fit_heads(*tables, seed=seed, quick=quick, specificity=0.9)
    summary["fusion_extra_cases"] = extra_exams
    return heads, calibration, summary


CLASSIFIER_DESCRIPTION = (f"MONAI Classifier, channels {list(CLASSIFIER_CHANNELS)}, one residual unit per stride-2 "
                          f"level, on {CANDIDATE_CROP}x{CANDIDATE_CROP} crops at {FINE_SPACING_MM} mm around each "
                          "candidate; malignancy probability per candidate")
SYNTHETIC_INTENDED_USE = ("Research and demonstration of multimodal fusion on four-view screening mammograms. "
                          "Trained only on synthetic data generated by radfusion's mammography phantom "
                          "(ai_engine.synthetic.cohorts.mammo); not for clinical use.")


def _metadata(summary: dict[str, Any], training_data: dict[str, Any], intended_use: str) -> dict[str, Any]:
    return {
        "name": NAME, "version": VERSION, "task": Task.MAMMOGRAPHY.value,
        "intended_use": intended_use,
        "inputs": {"views": "Digital Mammography X-Ray Image Storage - For Presentation; CC and/or MLO views "
                            "with ImageLaterality, ViewPosition (or View Code Sequence) and pixel spacing",
                   "context": "optional ClinicalContext: age, BRCA carrier, family history of breast cancer, "
                              "prior breast biopsy, free-text note (reason for exam / notes)"},
        "outputs": {"findings": "masses and calcification clusters per view with mask, heat map (network "
                                "probability map), CC/MLO correspondence, distance from the nipple",
                    "case_score": "calibrated case-level malignancy probability",
                    "notes": "BI-RADS-style suggestion, density category A-D, modality weights, logit std"},
        "network": {"per_view": f"MONAI BasicUNet 2-D, features {list(UNET_FEATURES)}, input 2 x H x W at "
                                f"{NET_SPACING_MM} mm (intensity, speck enhancement)",
                    "candidate_classifier": CLASSIFIER_DESCRIPTION,
                    "fusion": DESIGN},
        "training_data": training_data,
        "metrics": summary,
    }


def _dataset_exams(data_dir: Path, seed: int, pixel_spacing_mm: float) -> tuple[list[ExamArrays], dict[str, Any]]:
    """The train-table exams of a CBIS-DDSM-layout dataset, shuffled with ``seed`` (one exam per patient,
    so the splits are by patient), and the bundle's ``training_data`` record. An exam with a view the detector
    refuses (``prepare_view``: no breast against a side edge) is left out and named in the record."""
    indexed, loaded = cbis_ddsm.load_exams(data_dir, "train", pixel_spacing_mm)
    if len(indexed) < 16:  # before any pixel is read
        raise AiEngineError(f"{data_dir}: the mammo train tables hold {len(indexed)} patients; training needs at "
                            "least 16 (four splits)")
    exams, refused = [], []
    for exam in loaded:
        try:
            exams.append(real_exam_arrays(exam))
        except DetectorInputError as exc:
            log.warning("mammo dataset: exam of patient %s left out: %s", exam.patient_id, exc)
            refused.append({"patient_id": exam.patient_id, "reason": str(exc)})
    if len(exams) < 16:
        raise AiEngineError(f"{data_dir}: the mammo train tables hold {len(exams)} readable patients "
                            f"({len(refused)} refused); training needs at least 16 (four splits)")
    exams = [exams[i] for i in np.random.default_rng(seed).permutation(len(exams))]
    return exams, {**_dataset_record(data_dir, "train", indexed, pixel_spacing_mm), "seed": seed,
                   "refused_exams": refused}


def _dataset_record(root: Path, split: str, indexed: list[cbis_ddsm.ExamFiles], pixel_spacing_mm: float
                    ) -> dict[str, Any]:
    """Where a split's exams came from (directory, table hashes) and what they hold: for a bundle's
    ``training_data`` or an evaluation's ``held_out``."""
    rows = [a for e in indexed for v in e.views for a, _ in v.masks]
    record = dataset_provenance(root, [*cbis_ddsm.CASE_TABLES[split], cbis_ddsm.CLINICAL_TABLE],
                                exams=len(indexed), malignant_exams=sum(e.label for e in indexed),
                                views=sum(len(e.views) for e in indexed), abnormalities=len(rows),
                                malignant_abnormalities=sum(a.malignant for a in rows))
    record.update(layout=f"CBIS-DDSM ({split} tables)", default_pixel_spacing_mm=pixel_spacing_mm)
    return record


def train(*, out_dir: Path | None = None, epochs: int | None = None, cohort_size: int | None = None, seed: int = 0,
          quick: bool = False, data_dir: Path | None = None,
          pixel_spacing_mm: float = cbis_ddsm.DEFAULT_PIXEL_SPACING_MM) -> Path:
    """Generate the cohort, train network, fusion heads and density model, calibrate, export the bundle.

    ``data_dir``: train on the train tables of a CBIS-DDSM-layout dataset instead of the synthetic
    cohort (``pixel_spacing_mm`` for its images without a spacing in the header; not cached).
    """
    torch.set_num_threads(2)
    start = time.monotonic()
    root = Path(out_dir) if out_dir is not None else bundle_root(NAME)
    if data_dir is not None:
        if cohort_size is not None:
            raise AiEngineError("mammo cohort_size sizes the synthetic cohort; with data_dir every exam of the "
                                "train tables is used")
        exams, training_data = _dataset_exams(Path(data_dir), seed, pixel_spacing_mm)
        size, intended_use = len(exams), dataset_intended_use(Path(data_dir))
    else:
        size = cohort_size or (QUICK_COHORT if quick else DEFAULT_COHORT)
        if size < 16:
            raise AiEngineError(f"mammo cohort_size must be at least 16 (four splits), got {size}")
        exams = _cached_exams(seed, size, quick)
        training_data = {"description": "synthetic four-view screening exams from the project's phantom",
                         "cohort_size": size, "seed": seed, "acquisition": TRAIN_ACQUISITION.__dict__}
        intended_use = SYNTHETIC_INTENDED_USE
    net_train, net_val, _, _ = (exams[s] for s in _split(size, quick))
    network = train_network(net_train, net_val, epochs=epochs or (1 if quick else 12), steps=4 if quick else 50,
                            batch=4 if quick else 16, seed=seed, max_seconds=30.0 if quick else 420.0)
    classifier, classifier_record = train_candidate_classifier(
        network, exams, size, seed=seed, quick=quick,
        extra_exams=0 if data_dir is not None or quick else CLASSIFIER_EXTRA_EXAMS)
    heads, calibration, fusion_summary = _fit_fusion(
        network, classifier, exams, size, seed=seed, quick=quick,
        extra_exams=0 if data_dir is not None or quick else FUSION_EXTRA_EXAMS)
    density_weights, density_bias, density_accuracy = fit_density_model(net_train, seed)
    models = bundle_models_dir(root)
    torch.save(MammoFusionModel(network, classifier, heads["dynamic"]).state_dict(), models / "model.pt")
    parity = {"network_max_abs_diff": export_network(network, models),
              "classifier_max_abs_diff": mammo_candidates.export_classifier(classifier, models),
              "fusion_max_abs_diff": export_heads(heads, models)}
    inference = {**INFERENCE_DEFAULTS, "deployed": "model.onnx", "fusion_deployed": "fusion.onnx",
                 "classifier_deployed": "classifier.onnx",
                 "temperature": calibration.temperature, "positive_threshold": calibration.threshold,
                 "density_weights": density_weights.tolist(), "density_bias": density_bias.tolist(),
                 "image_features": list(IMAGE_FEATURES), "clinical_features": feature_names("mammo"),
                 "note_dim": NOTE_DIM, "note_encoding": NOTE_ENCODING}
    summary = {"fusion": fusion_summary, "candidate_classifier": classifier_record,
               "density_training_accuracy": density_accuracy, "onnx_parity": parity,
               "training_seconds": round(time.monotonic() - start, 1)}
    write_bundle_configs(root, _metadata(summary, training_data, intended_use), inference)
    log.info("bundle written to %s in %.0f s: %s", root, time.monotonic() - start, json.dumps(summary))
    return root


def _recorded_cohort(bundle: Bundle) -> tuple[int, int]:
    """(seed, cohort size) of the synthetic cohort ``bundle`` was trained on, from its metadata."""
    recorded = synthetic_training_data(bundle, "a refit")
    return int(recorded["seed"]), int(recorded["cohort_size"])


def train_fusion_only(*, bundle: str | Path | None, quick: bool) -> Path:
    """Refit the fusion heads of ``bundle`` on its unchanged network (same cohort, seed and splits, plus this
    code's ``FUSION_EXTRA_EXAMS`` further exams); minor version.

    Density model, network and ``model.onnx`` stay as they are; the calibration split refits the
    temperature and the positive threshold.
    """
    torch.set_num_threads(1)
    loaded = resolve_bundle(bundle, NAME)
    seed, size = _recorded_cohort(loaded)
    seed_everything(seed)
    exams = _cached_exams(seed, size, quick)
    model = load_eager_model(loaded)
    heads, calibration, summary = _fit_fusion(model.network, model.classifier, exams, size, seed=seed, quick=quick,
                                              extra_exams=0 if quick else FUSION_EXTRA_EXAMS)
    models = bundle_models_dir(loaded.root)
    torch.save(MammoFusionModel(model.network, model.classifier, heads["dynamic"]).state_dict(), models / "model.pt")
    summary["onnx_max_abs_diff"] = export_heads(heads, models)
    version = write_refit_configs(loaded, calibration, summary, threshold_key="positive_threshold",
                                  command="radfusion train mammo --fusion-only", note_encoding=NOTE_ENCODING,
                                  inference={"test_time_augmentation": INFERENCE_DEFAULTS["test_time_augmentation"]})
    log.info("mammo bundle %s: fusion heads refitted, version %s", loaded.root, version)
    return loaded.root


def train_density_only(*, bundle: str | Path | None) -> Path:
    """Refit only the density model of ``bundle`` (same cohort, seed and network-training split); patch version.

    The case probability, findings and every weight file stay byte for byte as they are.
    """
    loaded = resolve_bundle(bundle, NAME)
    seed, size = _recorded_cohort(loaded)
    weights, bias, accuracy = fit_density_model(_cached_exams(seed, size, False)[_split(size, False)[0]], seed)
    version = bump_patch(loaded.version)
    metadata = {**loaded.metadata, "version": version,
                "density_refit": {"from_version": loaded.version, "command": "radfusion train mammo --density-only",
                                  "training_accuracy": round(accuracy, 4),
                                  "how": "multinomial logistic density model refitted on standardised statistics "
                                         "of the network-training split; all weight files unchanged"}}
    write_bundle_configs(loaded.root, metadata,
                         {**loaded.inference, "density_weights": weights.tolist(), "density_bias": bias.tolist()})
    log.info("mammo bundle %s: density model refitted (training accuracy %.3f), version %s", loaded.root,
             accuracy, version)
    return loaded.root


# ---------------------------------------------------------------------------------------------
# Held-out evaluation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MassTruth:
    """A malignant mass in one view: the view, its centre (row, col) in source pixels and the diameter (mm) of
    the circle as large as its mask."""

    laterality: str
    view: str
    center: tuple[float, float]
    diameter_mm: float


@dataclass(frozen=True)
class HeldOutExam:
    """One exam of a held-out source: its id, the truth, and how to load the detector's input (timed)."""

    exam_id: str
    label: int
    density: str
    load: Callable[[], DetectorInput]
    masses: tuple[MassTruth, ...] = ()


def mass_truths(case: MammoCase) -> tuple[MassTruth, ...]:
    """The malignant masses of a synthetic exam, per view, from the generator's masks."""
    spacing = case.acquisition.pixel_spacing_mm
    truths = []
    for (laterality, view), masks in zip(VIEW_ORDER, case.cancer_masks(), strict=True):
        mask = masks.get("mass")
        if mask is not None and mask.any():
            row, col = ndimage.center_of_mass(mask)
            truths.append(MassTruth(laterality, view, (float(row), float(col)), equivalent_diameter_mm(mask, spacing)))
    return tuple(truths)


def reported_mass_sizes(truths: Sequence[MassTruth], result: DetectorResult,
                        views: Sequence[MammoView]) -> list[dict[str, float | None]]:
    """Each true mass with the diameter of the best mass finding listed at it (within its diameter or 10 mm of
    its centre, in its view), None when the exam lists none there."""
    sizes: list[dict[str, float | None]] = []
    for truth in truths:
        at_truth = [f.diameter_mm for f in result.findings
                    if f.finding_type is FindingType.MASS
                    and (views[f.view_index].laterality, views[f.view_index].view) == (truth.laterality, truth.view)
                    and math.dist(f.center_voxel, truth.center) * float(np.mean(views[f.view_index].pixel_spacing_mm))
                    < max(truth.diameter_mm, 10.0)]
        sizes.append({"true_mm": round(truth.diameter_mm, 2),
                      "reported_mm": None if not at_truth or at_truth[0] is None else round(at_truth[0], 2)})
    return sizes


def mass_size_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How far listed mass diameters are from the truth over a held-out run (``reported_mass_sizes`` per row)."""
    masses = [m for r in rows for m in r.get("masses", [])]
    pairs = np.array([(m["true_mm"], m["reported_mm"]) for m in masses if m["reported_mm"] is not None], float)
    summary: dict[str, Any] = {"masses": len(masses), "listed": len(pairs)}
    if len(pairs):
        ratio = pairs[:, 1] / pairs[:, 0]
        summary.update(mean_abs_error_mm=float(np.abs(pairs[:, 1] - pairs[:, 0]).mean()),
                       median_ratio_reported_to_true=float(np.median(ratio)),
                       ratio_p10_p90=[float(np.percentile(ratio, 10)), float(np.percentile(ratio, 90))])
    return summary


def _synthetic_held_out(seed: int, size: int) -> Iterator[HeldOutExam]:
    """Held-out synthetic exams (``HELDOUT_ACQUISITION``), each written as DICOM and loaded by the server's
    ``load_inputs``."""
    from ai_engine.inputs import load_inputs
    from ai_engine.synthetic.cohorts.mammo import write_case_dicom

    with tempfile.TemporaryDirectory(prefix="mammo-heldout-") as tmp:
        for case_seed in exam_seeds(seed, 0, size):
            case = generate_case(case_seed, HELDOUT_ACQUISITION)
            paths = write_case_dicom(case, Path(tmp) / case.case_id)
            yield HeldOutExam(case.case_id, int(case.cancer), case.density,
                              partial(load_inputs, Task.MAMMOGRAPHY, paths, case.context), mass_truths(case))


def _dataset_held_out(root: Path, pixel_spacing_mm: float) -> tuple[dict[str, Any], Iterator[HeldOutExam]]:
    """The test-table exams of a CBIS-DDSM-layout dataset and the record of where they came from.

    The reader supplies each exam's views (CBIS files lack the laterality, view and spacing that
    ``load_inputs`` demands), so the timing starts from the read views, not from the files.
    """
    from ai_engine.inputs import mammography_inputs

    indexed, loaded = cbis_ddsm.load_exams(root, "test", pixel_spacing_mm)
    exams = (HeldOutExam(e.patient_id, e.label, e.density, partial(mammography_inputs, e.views, e.context))
             for e in loaded)
    return _dataset_record(root, "test", indexed, pixel_spacing_mm), exams


def evaluate(*, bundle: str | Path | None = None, cohort_size: int | None = None, seed: int | None = None,
             out_dir: Path | None = None, data_dir: Path | None = None,
             pixel_spacing_mm: float = cbis_ddsm.DEFAULT_PIXEL_SPACING_MM) -> dict[str, Any]:
    """Held-out evaluation through DICOM files and the loaders; deep detector vs baseline, fusion experiment.

    ``data_dir``: evaluate on the **test** tables of a CBIS-DDSM-layout dataset instead (the train
    tables are what ``train --data-dir`` learns from); ``pixel_spacing_mm`` for its images without
    a spacing in the header. ``out_dir`` is then required.

    Only the evaluation that writes the model card's files (no ``out_dir``) records its summary in the
    bundle's metadata; any other (another seed or size, a dataset) leaves the bundle as it is, so the
    model card's metrics stay the project's.
    """
    from ai_engine.detectors.mammo_baseline import MammoBaseline
    from ai_engine.detectors.mammo_fusion import MammoFusion

    if data_dir is not None and (out_dir is None or cohort_size is not None or seed is not None):
        raise AiEngineError("evaluate --data-dir needs --out-dir (the model card's metrics stay the project's) and "
                            "takes no --cohort-size or --seed (the dataset is the cohort)")
    torch.set_num_threads(1)
    size = cohort_size or DEFAULT_HELDOUT_SIZE
    held_seed = HELDOUT_SEED if seed is None else seed
    out = Path(out_dir) if out_dir is not None else MODEL_CARD_DIR
    if data_dir is None:
        held_out, exams = None, _synthetic_held_out(held_seed, size)
    else:  # indexed now: a broken dataset fails before the model loads
        held_out, exams = _dataset_held_out(Path(data_dir), pixel_spacing_mm)
        size = held_out["exams"]
    resolved = resolve_bundle(bundle, NAME)
    detector, baseline = MammoFusion(resolved.root), MammoBaseline()
    heads = load_heads(resolved.root / "models", load_eager_model(resolved).fusion)
    rows: list[dict[str, Any]] = []
    tables: list[FusionData] = []
    refused: list[dict[str, str]] = []
    for index, exam in enumerate(exams):
        began = time.perf_counter()
        inputs = exam.load()
        try:
            analysis = detector.analyse(inputs)
        except DetectorInputError as exc:  # as the server would: the job fails with the reason
            log.warning("held-out exam %s refused: %s", exam.exam_id, exc)
            refused.append({"exam": exam.exam_id, "reason": str(exc)})
            continue
        result = detector.report(analysis, inputs.views)
        seconds = time.perf_counter() - began
        base = baseline.detect(inputs)
        density_index = int(np.argmax(analysis.density_probabilities))
        rows.append({"exam": exam.exam_id, "label": exam.label, "deep": result.case_score,
                     "baseline": base.case_score, "seconds": seconds, "density_true": exam.density,
                     "density_pred": DENSITY_CATEGORIES[density_index],
                     "masses": reported_mass_sizes(exam.masses, result, inputs.views)})
        tables.append(FusionData(analysis.image_features[None], analysis.clinical[None],
                                analysis.clinical_present[None], analysis.text[None],
                                np.array([analysis.text_present]), np.array([exam.label])))
        if (index + 1) % 20 == 0:
            log.info("held-out %d/%d exams evaluated", index + 1, size)
    labels = np.array([r["label"] for r in rows])
    if held_out is None:
        held_out = {"cases": len(rows), "positives": int(labels.sum()), "seed": held_seed,
                    "acquisition": HELDOUT_ACQUISITION.__dict__}
    held_out = {**held_out, "refused_exams": refused}
    result = _report(rows, FusionData.join(tables), heads, resolved, out, held_seed, held_out)
    if out_dir is None:
        _record_in_bundle(resolved, result, len(rows))
    return result


def _report(rows: list[dict[str, Any]], table: FusionData, heads: dict[str, FusionHead], bundle: Bundle, out: Path,
            held_seed: int, held_out: dict[str, Any]) -> dict[str, Any]:
    """Metrics, plots, metrics.json (which bundle; ``held_out`` says where the exams came from) and the per-exam
    cases.json of a held-out run."""
    labels = np.array([r["label"] for r in rows])
    deep = np.array([r["deep"] for r in rows])
    base = np.array([r["baseline"] for r in rows])
    inference = json.loads((bundle.root / "configs" / "inference.json").read_text())
    threshold = float(inference["positive_threshold"])
    weights = head_outputs(heads["dynamic"], table)[1]
    result = {
        "bundle": {"name": bundle.name, "version": bundle.version, "device_uid": bundle.device_uid},
        "held_out": held_out,
        "deep": {"auc": metrics.roc_auc(labels, deep),
                 "at_positive_threshold": metrics.operating_point(labels, deep, threshold).__dict__,
                 "sensitivity_at_specificity_0.9": metrics.sensitivity_at_specificity(labels, deep, 0.9).__dict__,
                 "ece": metrics.expected_calibration_error(labels, deep)},
        "baseline": {"auc": metrics.roc_auc(labels, base),
                     "sensitivity_at_specificity_0.9": metrics.sensitivity_at_specificity(labels, base, 0.9).__dict__},
        "density_accuracy": float(np.mean([r["density_true"] == r["density_pred"] for r in rows])),
        "mass_diameter": mass_size_summary(rows),
        "fusion_experiment": fusion_experiment(heads, table, seed=held_seed),
        "seconds_per_exam_load_to_findings": {"median": float(np.median([r["seconds"] for r in rows])),
                                              "max": float(np.max([r["seconds"] for r in rows]))},
        "mean_modality_weights": {m: float(weights[:, i].mean()) for i, m in enumerate(("image", "clinical",
                                                                                       "text"))},
    }
    out.mkdir(parents=True, exist_ok=True)
    plots.plot_roc({f"deep fusion (AUC {result['deep']['auc']:.3f})": metrics.roc_curve(labels, deep)[:2],
                    f"classical baseline (AUC {result['baseline']['auc']:.3f})": metrics.roc_curve(labels, base)[:2]},
                   out / "roc.png", title="Mammography, held-out exams")
    plots.plot_calibration({"deep fusion": metrics.reliability_curve(labels, deep)[:2]}, out / "calibration.png")
    plots.plot_modality_weights({m: weights[:, i] for i, m in enumerate(("image", "clinical", "text"))},
                                out / "modality_weights.png")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "cases.json").write_text(json.dumps(rows, indent=1) + "\n")
    return result


def _record_in_bundle(bundle: Bundle, result: dict[str, Any], cases: int) -> None:
    """The synthetic held-out summary into the bundle's metadata (the model card's numbers)."""
    metadata = dict(bundle.metadata)
    metadata["metrics"] = {**metadata["metrics"], "held_out": {
        "cases": cases, "auc": result["deep"]["auc"], "baseline_auc": result["baseline"]["auc"],
        "density_accuracy": result["density_accuracy"]}}
    write_bundle_configs(bundle.root, metadata, bundle.inference)
