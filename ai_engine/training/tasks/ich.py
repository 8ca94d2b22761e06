"""ICH task: training (cohort -> U-Net -> fusion heads -> calibration -> ONNX bundle) and held-out evaluation.

Training splits one synthetic cohort by patient: the U-Net learns on split A (early stopping on
V); the fusion heads (dynamic, plus the concat and image-only heads of the fusion experiment)
learn on V + B from the U-Net's features, plus (synthetic cohorts, since bundle 1.6.0) the
features of ``FUSION_EXTRA`` further patients of the same seed that no split holds, and (since
bundle 1.8.0) a copy of each of those rows computed on the case with CT artifacts drawn over it
(``ct_artifacts.augment_case``); they stop early on C (no artifacts), and the temperature and
case threshold are fitted on C. Evaluation generates a held-out cohort with another seed and
shifted acquisition settings, writes every case as DICOM, loads it through the server's
loader and runs the deployed detector and the classical baseline on the same cases.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ai_engine.bundle import (
    bundle_kind,
    bundle_models_dir,
    bundle_root,
    resolve_bundle,
    synthetic_training_data,
    write_bundle_configs,
)
from ai_engine.clinical_features import NOTE_DIM, feature_names
from ai_engine.detectors import ich_fusion as model
from ai_engine.detectors.base import lps_volume
from ai_engine.detectors.ich_baseline import IchBaseline
from ai_engine.errors import AiEngineError
from ai_engine.evaluation import metrics
from ai_engine.fusion import FusionHead
from ai_engine.inputs import load_inputs
from ai_engine.results import Task
from ai_engine.synthetic.cohorts.ich import GENERATOR_VERSION, IchCase, generate_case, write_case_dicom
from ai_engine.training import ct_artifacts
from ai_engine.training.datasets import dataset_intended_use, dataset_provenance, ich_cases, metrics_record
from ai_engine.training.datasets.ich_cases import UNKNOWN_LABEL
from ai_engine.training.deploy_timing import cpu_seconds
from ai_engine.training.fusion_fit import (
    DESIGN,
    Calibration,
    FusionData,
    export_heads,
    fit_heads,
    fusion_experiment,
    load_heads,
    write_refit_configs,
)
from ai_engine.training.loop import TrainConfig, fit, seed_everything
from ai_engine.training.patient_split import split_by_patient

log = logging.getLogger(__name__)

VERSION = "1.8.0"
NOTE_ENCODING = "hashed-terms"  # words only: validation seed 42 AUC 0.970 against 0.977 (session 24, model card)
TRAIN_SIZE, QUICK_SIZE = 400, 24
FUSION_EXTRA, QUICK_FUSION_EXTRA = 1600, 4  # synthetic patients beyond the cohort that only the fusion heads see
UNET_EPOCHS, QUICK_EPOCHS = 40, 1
SAMPLES_PER_EPOCH = 2000
EVAL_SEED, EVAL_SIZE = 7, 150
MODEL_CARD_DIR = Path("docs/model-cards/ich")
HELD_OUT_ACQUISITION = "shifted (ai_engine.synthetic.cohorts.ich.sample_acquisition)"
SPLITS = {"A": 0.65, "V": 0.08, "B": 0.19, "C": 0.08}
FUSION_EXTRA_SPLIT = "fusion_extra"  # the patients after the cohort's first ``cases``: fusion-head training only
BLOOD_CLASS_WEIGHT = 3.0
KERNEL_P, STREAK_P, RIM_P = 0.5, 0.25, 0.5  # share of training slab stacks given each artifact (ct_artifacts)
AUGMENTATION = (f"U-Net slab stacks: left-right flips, shifts up to 8 pixels, HU offset +/-{ct_artifacts.HU_OFFSET:g}, "
                f"noise 0-{ct_artifacts.NOISE_MAX_HU:g} HU; CT "
                f"artifacts (ai_engine.training.ct_artifacts) on a share of them: softer kernel {KERNEL_P:g}, "
                f"beam-hardening streak bands {STREAK_P:g}, inner-table rim {RIM_P:g}")
HEAD_AUGMENTATION = (f"fusion-head training rows: each case once as acquired and once with CT artifacts over the "
                     f"whole case (ai_engine.training.ct_artifacts.augment_case: softer kernel, "
                     f"{ct_artifacts.STREAK_EVENTS[0]}-{ct_artifacts.STREAK_EVENTS[1] - 1} streak events, "
                     f"rim, each on a share {ct_artifacts.CASE_P:g} of the cases; HU offset and noise on all)")


@dataclass
class CaseArrays:
    """Model-grid slabs and labels of a set of cases, plus their clinical encodings."""

    slabs: np.ndarray  # (N, 128, 128) float16 HU
    seg: np.ndarray  # (N, 128, 128) uint8
    case_of_slab: np.ndarray
    clinical: np.ndarray
    clinical_present: np.ndarray
    note: np.ndarray
    note_present: np.ndarray
    label: np.ndarray
    volume_ml: np.ndarray

    def slab_range(self, case: int) -> np.ndarray:
        """Slab indices of ``case``."""
        return np.flatnonzero(self.case_of_slab == case)


def build_arrays(cases: Iterable[IchCase], total: int | None = None) -> CaseArrays:
    """Prepare every case on the model grid and encode its clinical inputs (cases may be a generator)."""
    slabs, seg, owner, clinical, present, note, note_present = [], [], [], [], [], [], []
    labels, volumes = [], []
    for i, case in enumerate(tqdm(cases, desc="cohort", unit="case", total=total)):
        prepared = model.prepare(case.hu, case.spacing)
        slabs.append(prepared.slabs.astype(np.float16))
        unknown = bool((case.labels == UNKNOWN_LABEL).all())
        seg.append(np.full(prepared.slabs.shape, UNKNOWN_LABEL, np.uint8) if unknown
                   else model.prepare_labels(case.labels, case.spacing, prepared))
        owner.append(np.full(len(prepared.slabs), i))
        values, mask, text, text_mask = model.fusion_inputs(case.context, NOTE_ENCODING, None)  # every term
        clinical.append(values[0])
        present.append(mask[0])
        note.append(text[0])
        note_present.append(text_mask[0])
        labels.append(case.label)
        volumes.append(sum(t.size for t in case.truths))
    return CaseArrays(np.concatenate(slabs), np.concatenate(seg), np.concatenate(owner), np.stack(clinical),
                      np.stack(present), np.stack(note), np.array(note_present, dtype=np.float32),
                      np.array(labels), np.array(volumes))


def _cached_cohort(size: int, seed: int, generator: int = GENERATOR_VERSION) -> CaseArrays:
    """The prepared synthetic training cohort, kept in the temp directory so a retrain skips generation.

    The cache is keyed on the generator version; a cohort of an older generator (what an older
    bundle's image network learned from) can only come from the cache.
    """
    cache = (Path(tempfile.gettempdir()) / "radfusion-cache"
             / f"ich-{size}-{seed}-{model.MODEL_SIZE}-g{generator}-{NOTE_ENCODING}.npz")
    if cache.is_file():
        with np.load(cache) as stored:
            return CaseArrays(**{name: stored[name] for name in stored.files})
    if generator != GENERATOR_VERSION:
        raise AiEngineError(f"ICH cohort of generator version {generator} is not cached at {cache}; this code "
                            f"generates version {GENERATOR_VERSION} only")
    data = build_arrays((generate_case(seed * 100_000 + i) for i in range(size)), total=size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **vars(data))
    return data


def _synthetic_cohort(size: int, seed: int, quick: bool, generator: int = GENERATOR_VERSION
                      ) -> tuple[CaseArrays, int]:
    """The synthetic cohort's ``size`` patients followed by the fusion heads' further ones, and how many those are."""
    extra = QUICK_FUSION_EXTRA if quick else FUSION_EXTRA
    return _cached_cohort(size + extra, seed, generator), extra


def _neighbour_inputs(data: CaseArrays, index: np.ndarray, augment: np.random.Generator) -> np.ndarray:
    """Augmented network inputs of the slabs ``index`` with their same-case neighbours."""
    stacks = []
    for i in index:
        lo = i - 1 if i > 0 and data.case_of_slab[i - 1] == data.case_of_slab[i] else i
        hi = i + 1 if i + 1 < len(data.slabs) and data.case_of_slab[i + 1] == data.case_of_slab[i] else i
        stacks.append(data.slabs[[lo, i, hi]].astype(np.float32))
    stack = np.stack(stacks)  # (B, 3, H, W)
    for b in range(len(stack)):
        if augment.random() < KERNEL_P:
            stack[b] = ct_artifacts.soften(stack[b], augment, model.MODEL_PIXEL_MM)
        if augment.random() < STREAK_P:
            stack[b] = ct_artifacts.add_streaks(stack[b], augment, model.MODEL_PIXEL_MM)
        if augment.random() < RIM_P:
            stack[b] = ct_artifacts.vary_rim(stack[b], augment, model.MODEL_PIXEL_MM)
    offset = augment.uniform(-ct_artifacts.HU_OFFSET, ct_artifacts.HU_OFFSET, size=(len(index), 1, 1, 1))
    stack = stack + offset.astype(np.float32)
    sigma = augment.uniform(0.0, ct_artifacts.NOISE_MAX_HU, size=(len(index), 1, 1, 1)).astype(np.float32)
    stack = stack + sigma * augment.standard_normal(stack.shape, dtype=np.float32)
    return np.stack([model.network_inputs(s)[1] for s in stack])


def _augment_geometry(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random left-right flips and shifts of up to 8 pixels (same for input and labels)."""
    for b in range(len(x)):
        if rng.random() < 0.5:
            x[b], y[b] = x[b][..., ::-1], y[b][..., ::-1]
        dy, dx = (int(v) for v in rng.integers(-8, 9, size=2))
        x[b], y[b] = np.roll(x[b], (dy, dx), axis=(-2, -1)), np.roll(y[b], (dy, dx), axis=(-2, -1))
    return x, y


def _predict(network: torch.nn.Module, data: CaseArrays, cases: np.ndarray, artifact_seed: int | None = None
             ) -> tuple[np.ndarray, float]:
    """Image features of ``cases`` (blood-density gated, ``model.BLOOD_HU``) and the foreground Dice over them.

    ``artifact_seed``: each case's slabs first get one draw of ``ct_artifacts.augment_case``, seeded by
    (artifact_seed, case).
    """
    features, inter, total = [], 0.0, 0.0
    network.eval()
    for case in cases:
        index = data.slab_range(int(case))
        slabs = data.slabs[index]
        if artifact_seed is not None:
            slabs = ct_artifacts.augment_case(slabs, np.random.default_rng((artifact_seed, int(case))),
                                              model.MODEL_PIXEL_MM)
        with torch.no_grad():
            probs = model.segment(lambda x: network(torch.from_numpy(x)).numpy(), slabs, model.SLAB_BATCH,
                                  model.FLIP_AVERAGE)
        blood = model.blood_probability(probs, slabs, model.BLOOD_HU)
        features.append(model.image_features(probs, blood, model.MODEL_PIXEL_MM**2 * model.SLAB_MM / 1000.0))
        if (data.seg[index] == UNKNOWN_LABEL).all():
            continue
        fg, truth = probs[:, 0] < 0.5, data.seg[index] > 0
        inter += float((fg & truth).sum())
        total += float(fg.sum() + truth.sum())
    return np.stack(features), (2 * inter / total if total else 1.0)


def _train_network(data: CaseArrays, train_cases: np.ndarray, val_cases: np.ndarray, epochs: int, seed: int,
                   quick: bool) -> torch.nn.Module:
    from monai.losses import DiceLoss

    network = model.build_network()
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    weights = torch.tensor([1.0] + [BLOOD_CLASS_WEIGHT] * (model.N_CLASSES - 1))
    rng = np.random.default_rng(seed)
    in_train = np.isin(data.case_of_slab, train_cases) & (data.seg != UNKNOWN_LABEL).any(axis=(1, 2))
    positives = np.flatnonzero(in_train & (data.seg > 0).any(axis=(1, 2)))
    negatives = np.flatnonzero(in_train & ~(data.seg > 0).any(axis=(1, 2)))
    per_epoch = 32 if quick else SAMPLES_PER_EPOCH

    def batches(epoch: int) -> list[np.ndarray]:
        half = per_epoch // 2
        chosen = np.concatenate([rng.choice(positives, min(half, len(positives)) if len(positives) else 0),
                                 rng.choice(negatives, per_epoch - min(half, len(positives)))])
        rng.shuffle(chosen)
        return [chosen[i:i + 16] for i in range(0, len(chosen), 16)]

    def step(net: torch.nn.Module, index: np.ndarray) -> torch.Tensor:
        x, y = _augment_geometry(_neighbour_inputs(data, index, rng), data.seg[index].copy(), rng)
        target = torch.from_numpy(np.ascontiguousarray(y)).long()
        logits = net(torch.from_numpy(np.ascontiguousarray(x)))
        return F.cross_entropy(logits, target, weight=weights) + dice(logits, target[:, None])

    def validate(net: torch.nn.Module) -> float:
        features, dice_score = _predict(net, data, val_cases)
        labels = data.label[val_cases]
        return 0.5 * metrics.roc_auc_or_chance(labels, features[:, 0]) + 0.5 * dice_score

    history = fit(network, batches=batches, step=step, validate=validate,
                  config=TrainConfig(epochs=epochs, lr=3e-3, patience=epochs, seed=seed, description="ich u-net"))
    log.info("u-net: best epoch %d, validation %.4f, %.0f s", history.best_epoch, history.best_score,
             history.seconds)
    return network


def _fusion_data(network: torch.nn.Module, data: CaseArrays, cases: np.ndarray, artifact_seed: int | None = None
                 ) -> FusionData:
    """Fusion-head table of ``cases``: the U-Net's image features (see ``_predict``) and the cached clinical
    encodings."""
    return FusionData(_predict(network, data, cases, artifact_seed)[0], data.clinical[cases],
                      data.clinical_present[cases], data.note[cases], data.note_present[cases], data.label[cases])


def _fit_fusion(network: torch.nn.Module, data: CaseArrays, split: dict[str, np.ndarray], seed: int, quick: bool
                ) -> tuple[dict[str, FusionHead], Calibration, dict[str, Any]]:
    """Heads on V + B + the extra patients, each once as acquired and once with CT artifacts drawn over it;
    stopping, temperature and threshold (specificity 0.95, clipped 0.2..0.8) on C as acquired."""
    rows = np.concatenate([split["V"], split["B"], split[FUSION_EXTRA_SPLIT]])
    train_data = FusionData.join([_fusion_data(network, data, rows),
                                  _fusion_data(network, data, rows, artifact_seed=seed)])
    heads, calibration, summary = fit_heads(train_data, _fusion_data(network, data, split["C"]), seed=seed,
                                            quick=quick, specificity=0.95, threshold_range=(0.2, 0.8))
    summary["artifact_copies"] = {"rows": int(len(rows)), "augmentation": HEAD_AUGMENTATION}
    return heads, calibration, summary


def _save_weights(models_dir: Path, network: torch.nn.Module, head: FusionHead) -> None:
    """model.pt: the U-Net and the deployed head in one state dict (``network.*``, ``fusion.*``)."""
    whole = model.build_model("dynamic")
    whole.network.load_state_dict(network.state_dict())
    whole.fusion.load_state_dict(head.state_dict())
    torch.save(whole.state_dict(), models_dir / "model.pt")


def _split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Patient splits stratified by label, so every split holds both classes when there are any."""
    rng = np.random.default_rng(seed + 1)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for value in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == value))
        counts = [max(int(round(f * len(members))), 1) for f in SPLITS.values()]
        bounds = np.cumsum([0, *counts])
        bounds[-1] = len(members)
        for i, name in enumerate(SPLITS):
            parts[name].append(members[bounds[i]:bounds[i + 1]])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def _training_splits(labels: np.ndarray, cases: int, seed: int,
                     patients: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Splits A/V/B/C of the first ``cases`` cases; every case after them trains the fusion heads only.
    ``patients`` (a dataset's patient of each case): one patient's cases stay in one split."""
    splits = (_split(labels[:cases], seed) if patients is None else
              split_by_patient(lambda by_patient: _split(by_patient, seed), labels[:cases], patients[:cases]))
    return {**splits, FUSION_EXTRA_SPLIT: np.arange(cases, len(labels))}


def _export_network(network: torch.nn.Module, models_dir: Path) -> None:
    network.eval()
    torch.onnx.export(network, (torch.zeros(2, model.IN_CHANNELS, model.MODEL_SIZE, model.MODEL_SIZE),),
                      str(models_dir / "model.onnx"), input_names=["slabs"], output_names=["logits"],
                      dynamic_axes={"slabs": {0: "n"}, "logits": {0: "n"}}, dynamo=False)


def _deploy_timing(models_dir: Path, network: torch.nn.Module) -> dict[str, float]:
    """Seconds for 32 slabs: ONNX Runtime vs TorchScript (frozen trace) vs eager, on this CPU."""
    x = np.random.default_rng(0).standard_normal((32, model.IN_CHANNELS, model.MODEL_SIZE, model.MODEL_SIZE),
                                                 dtype=np.float32)
    return cpu_seconds(models_dir / "model.onnx", network, "slabs", x)


def train(*, out_dir: Path | None, epochs: int | None, cohort_size: int | None, seed: int, quick: bool,
          data_dir: Path | None = None) -> Path:
    """Train the ICH bundle (module docstring) and write it to ``out_dir`` (default: the packaged bundle).

    ``data_dir``: train on a real dataset in the documented layout instead of the synthetic cohort.
    """
    torch.set_num_threads(1)
    seed_everything(seed)
    size = cohort_size or (QUICK_SIZE if quick else TRAIN_SIZE)
    epochs = epochs or (QUICK_EPOCHS if quick else UNET_EPOCHS)
    started = time.monotonic()
    patients = None
    if data_dir is not None:
        if cohort_size is not None:  # it was ignored silently
            raise AiEngineError("ich cohort_size sizes the synthetic cohort; with data_dir every case of the dataset "
                                "is used")
        rows = ich_cases.read_table(data_dir)
        data = build_arrays(ich_cases.load_cases(data_dir, rows), total=len(rows))
        size = len(rows)  # every case of a dataset goes to the splits
        patients = [row.patient for row in rows]
        training_data = dataset_provenance(data_dir, ["cases.csv"], cases=len(rows),
                                              positives=int(data.label.sum()),
                                              with_masks=int(len(np.unique(data.case_of_slab[
                                                  (data.seg != UNKNOWN_LABEL).any(axis=(1, 2))]))))
    else:
        data, extra = _synthetic_cohort(size, seed, quick)
        training_data = {"source": "synthetic (ai_engine.synthetic.cohorts.ich)", "cases": size,
                         "fusion_extra_cases": extra, "generator_version": GENERATOR_VERSION}
    split = _training_splits(data.label, size, seed, patients)
    empty = [name for name in SPLITS if not len(split[name])]
    if empty:
        raise AiEngineError(f"{size} cases leave split(s) {empty} empty: training needs about ten cases "
                            "of each label (splits A/V/B/C are stratified by label)")
    if not (data.seg[np.isin(data.case_of_slab, split["A"])] != UNKNOWN_LABEL).any():
        raise AiEngineError("no case of the U-Net training split has a mask.npz: the segmentation network "
                            "needs voxel labels (docs/model-cards/ich.md, \"Training on real data\")")
    network = _train_network(data, split["A"], split["V"], epochs, seed, quick)
    heads, calibration, fusion_summary = _fit_fusion(network, data, split, seed, quick)
    root = Path(out_dir) if out_dir is not None else bundle_root(model.NAME)
    models_dir = bundle_models_dir(root)
    _save_weights(models_dir, network, heads["dynamic"])
    _export_network(network, models_dir)
    fusion_summary["onnx_max_abs_diff"] = export_heads(heads, models_dir)
    timing = _deploy_timing(models_dir, network)
    inference = {
        "deployed": "model.onnx", "fusion_deployed": "fusion.onnx", "temperature": round(calibration.temperature, 5),
        "case_threshold": round(calibration.threshold, 5), "component_threshold": 0.5, "min_component_ml": 0.03,
        "slab_batch": model.SLAB_BATCH, "onnx_threads": 2, "model_pixel_mm": model.MODEL_PIXEL_MM,
        "slab_mm": model.SLAB_MM, "model_size": model.MODEL_SIZE, "clinical_features": feature_names(Task.ICH),
        "note_dim": NOTE_DIM, "note_encoding": NOTE_ENCODING, "image_features": list(model.IMAGE_FEATURES),
        "subtypes": list(model.SUBTYPES),
        "blood_hu": list(model.BLOOD_HU), "flip_average": model.FLIP_AVERAGE,
    }
    training_data.update(seed=seed, splits={k: int(len(v)) for k, v in split.items()}, unet_epochs_max=epochs,
                         quick=quick, train_seconds=round(time.monotonic() - started, 1))
    metadata = _metadata(training_data, timing,
                         dataset_intended_use(data_dir) if data_dir is not None else SYNTHETIC_INTENDED_USE)
    metadata["fusion"] = fusion_summary
    write_bundle_configs(root, metadata, inference)
    log.info("ich bundle written to %s in %.0f s", root, time.monotonic() - started)
    return root


def train_fusion_only(*, bundle: str | Path | None, quick: bool) -> Path:
    """Refit the fusion heads of ``bundle`` on its unchanged U-Net (same cohort, seed and splits); minor version.

    The synthetic cohort and seed are read from the bundle's metadata, so the splits are the
    ones the U-Net was trained with; the heads also learn from this code's ``FUSION_EXTRA``
    further patients of that seed, and the calibration split C fits temperature and threshold.
    """
    torch.set_num_threads(1)
    loaded = resolve_bundle(bundle, model.NAME)
    recorded = synthetic_training_data(loaded, "--fusion-only")
    seed, size = int(recorded["seed"]), int(recorded["cases"])
    seed_everything(seed)
    generator = int(recorded.get("generator_version", 1))  # 1: bundles from before it was recorded
    data, extra = _synthetic_cohort(size, seed, quick, generator)
    split = _training_splits(data.label, size, seed)
    network = model.load_eager_model(loaded).network
    heads, calibration, summary = _fit_fusion(network, data, split, seed, quick)
    summary["fusion_extra_cases"] = extra
    models_dir = bundle_models_dir(loaded.root)
    _save_weights(models_dir, network, heads["dynamic"])
    summary["onnx_max_abs_diff"] = export_heads(heads, models_dir)
    version = write_refit_configs(loaded, calibration, summary, threshold_key="case_threshold",
                                  command="radfusion train ich --fusion-only", note_encoding=NOTE_ENCODING,
                                  inference={"blood_hu": list(model.BLOOD_HU), "flip_average": model.FLIP_AVERAGE})
    log.info("ich bundle %s: fusion heads refitted, version %s", loaded.root, version)
    return loaded.root


SYNTHETIC_INTENDED_USE = ("Research and integration testing of radfusion only. Trained exclusively on synthetic "
                          "head CT phantoms generated by radfusion's own generators; not validated on patient data; "
                          "not for clinical use.")


def _metadata(training_data: dict[str, Any], timing: dict[str, float], intended_use: str) -> dict[str, Any]:
    return {
        "name": model.NAME, "version": VERSION, "task": Task.ICH.value,
        "kind": bundle_kind({"training_data": training_data}), "intended_use": intended_use,
        "inputs": {"volume": "axial head CT series in HU (any matrix, spacing and slice thickness; resampled to "
                             "2 mm pixels, 128x128 window, 5 mm slabs)",
                   "clinical": feature_names(Task.ICH), "note": "free text (reason for exam + notes), hashed"},
        "outputs": {"case_probability": "calibrated probability of any intracranial hemorrhage",
                    "findings": "components with mask, heat map, volume (mL), side/region, subtype",
                    "modality_weights": "per-case softmax weights over image/clinical/text",
                    "uncertainty": "logit standard deviation from the predicted log-variance"},
        "network": {"image": "MONAI UNet 2-D, channels (16, 32, 64, 128), 4 input channels, 6 classes",
                    "fusion": DESIGN, "deployed": "ONNX Runtime (CPU)",
                    "cpu_seconds_32_slabs": timing},
        "training_data": training_data,
        "augmentation": AUGMENTATION,
        "metrics": {"held_out": metrics_record(training_data, "ich")},
    }


def _binary_summary(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    at95 = metrics.sensitivity_at_specificity(labels, scores, 0.95)
    shipped = metrics.operating_point(labels, scores, threshold)
    return {"auc": round(metrics.roc_auc(labels, scores), 4),
            "sensitivity_at_specificity_0.95": round(at95.sensitivity, 4),
            "specificity_at_that_threshold": round(at95.specificity, 4), "threshold_at_0.95": round(at95.threshold, 4),
            "operating_threshold": round(threshold, 4), "sensitivity_at_operating": round(shipped.sensitivity, 4),
            "specificity_at_operating": round(shipped.specificity, 4)}


def _synthetic_held_out(seed: int, size: int) -> Iterator[tuple[IchCase, list[Path]]]:
    """Held-out synthetic cases (shifted acquisition, complete records), each written as DICOM for the loader."""
    with tempfile.TemporaryDirectory(prefix="ich-eval-") as tmp:
        for i in tqdm(range(size), desc="held-out", unit="case"):
            case = generate_case(seed * 100_000 + i, shifted=True, missing_rate=0.0)
            paths = write_case_dicom(case, Path(tmp) / case.case_id)
            yield case, paths
            for path in paths:
                path.unlink()


def _dataset_held_out(root: Path) -> Iterator[tuple[IchCase, list[Path]]]:
    """The cases of a dataset directory with their DICOM files (``ich_cases`` layout)."""
    rows = ich_cases.read_table(root)
    for case in tqdm(ich_cases.load_cases(root, rows), desc="dataset", unit="case", total=len(rows)):
        yield case, ich_cases.series_paths(root, case.case_id)


def evaluate(*, bundle: str | Path | None, cohort_size: int | None, seed: int | None,
             out_dir: Path | None, data_dir: Path | None = None) -> dict[str, Any]:
    """Held-out evaluation through DICOM files; writes metrics.json and plots into ``out_dir``.

    ``data_dir``: evaluate on a dataset directory in the training layout instead (an institution's
    own validation before use); ``out_dir`` is then required, so the model card's files stay the
    project's.
    """
    from ai_engine.evaluation import plots

    if data_dir is not None and (out_dir is None or cohort_size is not None or seed is not None):
        raise AiEngineError("evaluate --data-dir needs --out-dir (the model card's metrics stay the project's) and "
                            "takes no --cohort-size or --seed (the dataset is the cohort)")
    torch.set_num_threads(1)
    loaded = resolve_bundle(bundle, model.NAME)
    detector = model.IchFusion(loaded, device="cpu")
    baseline = IchBaseline()
    seed = EVAL_SEED if seed is None else seed
    size = cohort_size or EVAL_SIZE
    out_dir = Path(out_dir or MODEL_CARD_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    features, contexts = [], []
    cases = _synthetic_held_out(seed, size) if data_dir is None else _dataset_held_out(data_dir)
    for case, paths in cases:
        inputs = load_inputs(Task.ICH, paths, case.context)
        volume, _ = lps_volume(inputs, model.NAME, "head")  # the volume as detect reads it
        start = time.perf_counter()
        image = detector.image_stage(volume)
        fused = detector.fusion_stage(image.features, case.context)
        deep_seconds = time.perf_counter() - start
        no_context = detector.fusion_stage(image.features, None)
        start = time.perf_counter()
        base = baseline.detect(inputs)
        base_seconds = time.perf_counter() - start
        found_ml = None
        if case.label and case.truths and fused.probability >= detector.threshold:
            found_ml = sum(f.volume_ml or 0.0 for f in detector.findings(volume, image, fused))
        rows.append({"case": case.case_id, "label": case.label, "truth_ml": sum(t.size for t in case.truths),
                     "subtypes": [t.subtype for t in case.truths], "deep": fused.probability,
                     "deep_no_context": no_context.probability, "baseline": base.case_score,
                     "found_ml": found_ml, "weights": fused.weights, "logit_sd": fused.logit_sd,
                     "slice_mm": case.spacing[0], "pixel_mm": case.spacing[1], "deep_s": deep_seconds,
                     "baseline_s": base_seconds})
        features.append(image.features)
        contexts.append(case.context)
    labels = np.array([r["label"] for r in rows])
    result: dict[str, Any] = {"bundle": {"name": loaded.name, "version": loaded.version,
                                         "device_uid": loaded.device_uid},
                              "held_out": ({"seed": seed, "cases": size, "positives": int(labels.sum()),
                                            "acquisition": HELD_OUT_ACQUISITION} if data_dir is None else
                                           dataset_provenance(data_dir, ["cases.csv"], cases=len(rows),
                                                              positives=int(labels.sum())))}
    scores = {name: np.array([r[name] for r in rows]) for name in ("deep", "deep_no_context", "baseline")}
    result["deep_fusion"] = _binary_summary(labels, scores["deep"], detector.threshold)
    result["deep_without_clinical_context"] = _binary_summary(labels, scores["deep_no_context"], detector.threshold)
    result["baseline"] = _binary_summary(labels, scores["baseline"], 0.5)
    result["deep_fusion"]["ece"] = round(metrics.expected_calibration_error(labels, scores["deep"]), 4)
    result["per_subtype_sensitivity_at_operating"] = _per_subtype(rows, detector.threshold)
    errors = [abs(r["found_ml"] - r["truth_ml"]) / r["truth_ml"] for r in rows if r["found_ml"] is not None]
    result["volume_median_relative_error"] = round(float(np.median(errors)), 4) if errors else None
    result["seconds_per_case"] = {"deep": round(float(np.mean([r["deep_s"] for r in rows])), 3),
                                  "baseline": round(float(np.mean([r["baseline_s"] for r in rows])), 3)}
    heads = load_heads(loaded.root / "models", model.load_eager_model(loaded).fusion)
    held_out = FusionData.from_contexts(Task.ICH, np.stack(features), contexts, labels, detector.note_encoding,
                                        detector.bundle.note_vocabulary)
    result["fusion_experiment"] = fusion_experiment(heads, held_out, seed=seed)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "cases.json").write_text(json.dumps(rows, indent=1) + "\n")
    plots.plot_roc({name: metrics.roc_curve(labels, s)[:2] for name, s in scores.items()}, out_dir / "roc.png",
                   "ICH held-out ROC")
    plots.plot_calibration({"deep fusion": metrics.reliability_curve(labels, scores["deep"])[:2]},
                           out_dir / "calibration.png", "ICH calibration (held-out)")
    weights = {m: np.array([r["weights"][m] for r in rows]) for m in ("image", "clinical", "text")}
    plots.plot_modality_weights(weights, out_dir / "modality_weights.png", "ICH per-case modality weights")
    return result


def _per_subtype(rows: list[dict[str, Any]], threshold: float) -> dict[str, dict[str, float]]:
    out = {}
    for subtype in model.SUBTYPES:
        chosen = [r for r in rows if subtype in r["subtypes"]]
        if chosen:
            out[subtype] = {"cases": len(chosen),
                            "deep": round(float(np.mean([r["deep"] >= threshold for r in chosen])), 4),
                            "baseline": round(float(np.mean([r["baseline"] >= 0.5 for r in chosen])), 4)}
    return out
