"""Lung-nodule task: training (cohort -> candidates -> patch CNN -> fusion heads -> calibration -> ONNX bundle)
and held-out evaluation (FROC/CPM against the classical baseline on the same DICOM studies).

Training draws one synthetic cohort (``TRAIN_ACQUISITION`` scanners), runs the detector's own
candidate generator on each case, and cuts 32^3 patches: every candidate near a nodule and a
jittered copy of each nodule are positives, a sample of the other candidates (vessel segments and
junctions, airway walls, pleura) negatives. Cases are split by patient: A trains the patch CNN
(early stopping on V); the CNN then scores every candidate of the first ``HARD_NEGATIVE_CASES``
cases and is fine-tuned with the ``HARD_NEGATIVES_PER_CASE`` highest-scoring mimics of each added.
The fusion heads learn on a separate cohort of ``FUSION_SIZE`` patients (short scans, one or
more nodules each) from the CNN's embedding of each nodule; a quarter of those patients stops
their training and fits the temperature. Evaluation generates a held-out cohort with
another seed and shifted acquisition (``HELDOUT_ACQUISITION``), writes every case as DICOM,
loads it through the server's loader and runs the deployed detector and the baseline on it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from ai_engine.bundle import DEEP_KIND, Bundle, bundle_models_dir, bundle_root, resolve_bundle, write_bundle_configs
from ai_engine.clinical_features import NOTE_DIM, context_text, encode_clinical, encode_note, feature_names
from ai_engine.detectors import nodule_fusion as model
from ai_engine.detectors.nodule_baseline import NoduleBaseline
from ai_engine.evaluation import metrics, plots
from ai_engine.fusion import MODALITIES, FusionHead
from ai_engine.inputs import load_inputs
from ai_engine.results import Task
from ai_engine.synthetic.cohorts.nodule import (
    GENERATOR_VERSION,
    HELDOUT_ACQUISITION,
    TRAIN_ACQUISITION,
    NoduleCase,
    generate_case,
    write_case_dicom,
)
from ai_engine.training.deploy_timing import cpu_seconds
from ai_engine.training.fusion_fit import (
    Calibration,
    FusionData,
    export_heads,
    fit_heads,
    fusion_experiment,
    head_outputs,
    load_heads,
    write_refit_configs,
)
from ai_engine.training.loop import TrainConfig, fit, seed_everything
from ai_engine.volume import Volume

log = logging.getLogger(__name__)

VERSION = "1.4.0"
TRAIN_SIZE, QUICK_SIZE = 320, 3
CNN_EPOCHS, QUICK_EPOCHS = 10, 1
EVAL_SEED, EVAL_SIZE = 9, 30
NEGATIVES_PER_CASE = 50
JITTER_COPIES = 4
MODEL_CARD_DIR = Path("docs/model-cards/nodule")
SPLITS = {"A": 0.7, "V": 0.1, "C": 0.2}
FUSION_SIZE, QUICK_FUSION_SIZE = 400, 6
HARD_NEGATIVES_PER_CASE = 40
FLIP_AXES = (2, 3, 4)  # the deployed detection score averages the patch and its z, y and x flips
HARD_NEGATIVE_CASES = 64
CNN_SECONDS, QUICK_CNN_SECONDS = 2400.0, 60.0  # per stage (first training, hard-negative fine-tuning)
FUSION_SEED_OFFSET = 50_000  # fusion cases never share a seed with the detection cases
# Short scans (120 mm) from the training scanners: enough lung around each nodule, a tenth of the voxels.
FUSION_ACQUISITION = dataclasses.replace(TRAIN_ACQUISITION, z_extent_mm=120.0)


@dataclass
class PatchSet:
    """Training patches (uint8, 0..255 over the patch HU range) with their targets and case index."""

    patches: np.ndarray  # [N, 32, 32, 32] uint8
    segs: np.ndarray  # [N, 16, 16, 16] uint8 (0..255 occupancy)
    nodule: np.ndarray  # [N] 0/1
    kind: np.ndarray  # [N] type index, -1 for negatives
    case: np.ndarray  # [N]


def _as_volume(case: NoduleCase) -> Volume:
    return Volume(array=case.phantom.hu, spacing_mm=case.phantom.spacing, origin_mm=(0.0, 0.0, 0.0),
                  direction=np.eye(3), sop_instance_uids=[], paths=[], series_instance_uid="",
                  study_instance_uid="")


def _case_patches(seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Patches of one detection training case and candidate statistics (runs in a worker process)."""
    case = generate_case(seed)
    hu, zoom = model.resample_to_work(_as_volume(case))
    lungs = model.work_lung_mask(hu)
    points = model.candidates(hu, lungs)
    labels = ndimage.zoom(case.phantom.labels, zoom, order=0, grid_mode=True, mode="nearest")[
        : hu.shape[0], : hu.shape[1], : hu.shape[2]]
    rng = np.random.default_rng(seed + 1)
    centres, hits = [], []
    truth = {n.label: n for n in case.nodules}
    matched = _match(points, case, zoom)
    for label, nodule in truth.items():
        centre = np.rint(model.source_to_work(nodule.center_voxel, zoom)).astype(int)
        centres.append(centre)
        hits.append(label)
        for _ in range(JITTER_COPIES):
            centres.append(centre + rng.integers(-2, 3, size=3))
            hits.append(label)
        for point in points[matched == label][:4]:
            centres.append(point)
            hits.append(label)
    negatives = np.where(matched == 0)[0]
    chosen = np.concatenate([negatives[:NEGATIVES_PER_CASE // 2],
                             rng.choice(negatives[NEGATIVES_PER_CASE // 2:],
                                        size=min(NEGATIVES_PER_CASE // 2, max(len(negatives) - NEGATIVES_PER_CASE // 2,
                                                                              0)), replace=False)])
    for i in chosen.astype(int):
        centres.append(points[i])
        hits.append(0)
    centres_arr = np.array(centres, dtype=int).reshape(-1, 3)
    patches = model.extract_patches(hu, centres_arr)[:, 0]
    label_patches = model.extract_patches(labels.astype(np.float32), centres_arr, raw=True)[:, 0]
    hit_arr = np.array(hits)
    segs = (label_patches == hit_arr[:, None, None, None]) & (hit_arr[:, None, None, None] > 0)
    segs = segs.reshape(len(segs), 16, 2, 16, 2, 16, 2).mean(axis=(2, 4, 6))
    kinds = np.array([model.TYPES.index(truth[h].kind) if h else -1 for h in hits])
    arrays = {"patches": np.rint(patches * 255).astype(np.uint8), "segs": np.rint(segs * 255).astype(np.uint8),
              "nodule": (hit_arr > 0).astype(np.uint8), "kind": kinds}
    info = {"recall": [bool((matched == label).any()) for label in truth], "candidates": len(points)}
    return arrays, info


def _match(points: np.ndarray, case: NoduleCase, zoom: tuple[float, float, float]) -> np.ndarray:
    """Per candidate, the label of the nodule whose centre lies within max(radius, 3 mm), else 0."""
    matched = np.zeros(len(points), dtype=int)
    for nodule in case.nodules:
        centre = model.source_to_work(nodule.center_voxel, zoom)
        distance = np.linalg.norm(points - centre, axis=1) * model.WORK_MM
        matched[(distance <= max(nodule.diameter_mm / 2.0, 3.0)) & (matched == 0)] = nodule.label
    return matched


def build_patch_set(seeds: list[int], workers: int = 2) -> tuple[PatchSet, dict[str, float]]:
    """Patches of every case (``workers`` processes) and candidate statistics (recall, candidates per scan)."""
    parts: list[tuple[dict[str, np.ndarray], dict[str, Any]]] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part in tqdm(pool.map(_case_patches, seeds), total=len(seeds), desc="cohort", unit="case"):
            parts.append(part)
    case_index = np.concatenate([np.full(len(a["nodule"]), i) for i, (a, _) in enumerate(parts)])
    data = PatchSet(patches=np.concatenate([a["patches"] for a, _ in parts]),
                    segs=np.concatenate([a["segs"] for a, _ in parts]),
                    nodule=np.concatenate([a["nodule"] for a, _ in parts]),
                    kind=np.concatenate([a["kind"] for a, _ in parts]), case=case_index)
    recall = [hit for _, info in parts for hit in info["recall"]]
    stats = {"candidate_recall": float(np.mean(recall)) if recall else float("nan"),
             "candidates_per_scan": float(np.mean([info["candidates"] for _, info in parts])),
             "nodules": float(len(recall))}
    return data, stats


def _cached_patch_set(seeds: list[int]) -> tuple[PatchSet, dict[str, float]]:
    """``build_patch_set`` of ``seeds``, kept in the temp directory so a retraining skips the cohort (the key
    names what the patches depend on: cases, negatives per case, patch size, candidate limit, generator)."""
    cache = (Path(tempfile.gettempdir()) / "radfusion-cache"
             / (f"nodule-detection-{seeds[0]}-{len(seeds)}-{NEGATIVES_PER_CASE}-{model.PATCH}"
                f"-{model.MAX_CANDIDATES}-g{GENERATOR_VERSION}.npz"))
    fields = ("patches", "segs", "nodule", "kind", "case")
    if cache.is_file():
        with np.load(cache) as stored:
            return PatchSet(*(stored[f] for f in fields)), json.loads(str(stored["stats"]))
    data, stats = build_patch_set(seeds)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, stats=json.dumps(stats), **{f: getattr(data, f) for f in fields})
    return data, stats


@dataclass
class FusionSet:
    """Truth-centred nodule patches of extra cases (short scans) with malignancy and their case's clinical data."""

    patches: np.ndarray  # [N, 32, 32, 32] uint8
    malignant: np.ndarray  # [N]
    case: np.ndarray  # [N] index into the clinical arrays
    clinical: dict[str, np.ndarray]


def _fusion_case(seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Truth-centred patches of one short nodule-bearing scan and its clinical encoding (worker process)."""
    case = generate_case(seed, ranges=FUSION_ACQUISITION, negative_rate=0.0)
    hu, zoom = model.resample_to_work(_as_volume(case))
    centres = model.source_to_work(np.array([n.center_voxel for n in case.nodules]).reshape(-1, 3), zoom)
    patches = np.rint(model.extract_patches(hu, centres)[:, 0] * 255).astype(np.uint8)
    clinical, present = encode_clinical(Task.LUNG_NODULE, case.context)
    text, text_present = encode_note(context_text(case.context))
    return patches, np.array([int(n.malignant) for n in case.nodules]), {
        "clinical": clinical, "present": present, "text": text, "text_present": text_present}


FUSION_SET_CLINICAL = ("clinical", "present", "text", "text_present")


def build_fusion_set(seeds: list[int], workers: int = 2) -> FusionSet:
    """Nodule patches for the fusion heads from ``seeds`` (many patients: malignancy needs them)."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(tqdm(pool.map(_fusion_case, seeds), total=len(seeds), desc="fusion cohort", unit="case"))
    return FusionSet(patches=np.concatenate([p for p, _, _ in parts]),
                     malignant=np.concatenate([m for _, m, _ in parts]),
                     case=np.concatenate([np.full(len(m), i) for i, (_, m, _) in enumerate(parts)]),
                     clinical={key: np.stack([info[key] for _, _, info in parts]) for key in FUSION_SET_CLINICAL})


def _cached_fusion_set(seed: int, size: int) -> FusionSet:
    """The fusion cohort of ``seed`` (``size`` patients), kept in the temp directory so a refit skips generation."""
    cache = (Path(tempfile.gettempdir()) / "radfusion-cache"
             / f"nodule-fusion-{seed}-{size}-{model.PATCH}-g{GENERATOR_VERSION}.npz")
    if cache.is_file():
        with np.load(cache) as stored:
            return FusionSet(stored["patches"], stored["malignant"], stored["case"],
                             {k: stored[f"clinical_{k}"] for k in FUSION_SET_CLINICAL})
    fusion = build_fusion_set([seed * 100_003 + FUSION_SEED_OFFSET + i for i in range(size)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, patches=fusion.patches, malignant=fusion.malignant, case=fusion.case,
             **{f"clinical_{k}": v for k, v in fusion.clinical.items()})
    return fusion


def _case_hard_negatives(args: tuple[int, dict[str, torch.Tensor]]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Patches of the candidates the network scores highest although they are not nodules (one case, worker)."""
    seed, state = args
    torch.set_num_threads(1)
    network = model.NodulePatchNet()
    network.load_state_dict(state)
    case = generate_case(seed)
    hu, zoom = model.resample_to_work(_as_volume(case))
    points = model.candidates(hu, model.work_lung_mask(hu))
    negatives = points[_match(points, case, zoom) == 0]
    patches = model.extract_patches(hu, negatives)
    logits = _predict(network, np.rint(patches[:, 0] * 255).astype(np.uint8))["nodule_logit"]
    hardest = np.argsort(-logits)[:HARD_NEGATIVES_PER_CASE]
    chosen = patches[hardest, 0]
    arrays = {"patches": np.rint(chosen * 255).astype(np.uint8),
              "segs": np.zeros((len(chosen), 16, 16, 16), dtype=np.uint8),
              "nodule": np.zeros(len(chosen), dtype=np.uint8), "kind": np.full(len(chosen), -1)}
    return arrays, {"recall": [], "candidates": len(points)}


def mine_hard_negatives(network: model.NodulePatchNet, seeds: list[int], workers: int = 2) -> PatchSet:
    """Hard negatives of the detection cases (same seeds and order as the PatchSet they extend)."""
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(tqdm(pool.map(_case_hard_negatives, [(seed, state) for seed in seeds]), total=len(seeds),
                          desc="hard negatives", unit="case"))
    return PatchSet(patches=np.concatenate([a["patches"] for a, _ in parts]),
                    segs=np.concatenate([a["segs"] for a, _ in parts]),
                    nodule=np.concatenate([a["nodule"] for a, _ in parts]),
                    kind=np.concatenate([a["kind"] for a, _ in parts]),
                    case=np.concatenate([np.full(len(a["nodule"]), i) for i, (a, _) in enumerate(parts)]))


def join(first: PatchSet, second: PatchSet) -> PatchSet:
    """Both patch sets in one (case indices refer to the same cases)."""
    return PatchSet(*(np.concatenate([getattr(first, f), getattr(second, f)])
                      for f in ("patches", "segs", "nodule", "kind", "case")))


def _split(n_cases: int, seed: int) -> dict[str, np.ndarray]:
    """Cases split by patient into A (CNN), V (CNN early stopping) and C (fusion stopping, calibration)."""
    order = np.random.default_rng(seed).permutation(n_cases)
    a = int(round(SPLITS["A"] * n_cases))
    v = max(int(round(SPLITS["V"] * n_cases)), 1)
    return {"A": np.sort(order[:a]), "V": np.sort(order[a: a + v]), "C": np.sort(order[a + v:])}


def _tensor(patches: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(patches.astype(np.float32) / 255.0).unsqueeze(1)


def _augment(x: torch.Tensor, seg: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and axial transposition (a nodule has no preferred orientation), HU gain jitter and noise."""
    for axis in (2, 3, 4):
        if rng.random() < 0.5:
            x, seg = x.flip(axis), seg.flip(axis - 1)
    if rng.random() < 0.5:
        x, seg = x.transpose(3, 4), seg.transpose(2, 3)
    gain = torch.from_numpy(rng.uniform(0.93, 1.07, size=(x.shape[0], 1, 1, 1, 1)).astype(np.float32))
    # extra white noise up to ~30 HU (1 unit = 1400 HU): scanners noisier than the training ones
    sigma = rng.uniform(0.0, 0.021, size=(x.shape[0], 1, 1, 1, 1)).astype(np.float32)
    noise = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32) * sigma)
    return (x * gain + noise).clamp(0, 1), seg


def _network_step(net: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, seg, nodule, kind = batch
    nodule_logit, type_logits, seg_logits, _, _ = net(x)
    loss = F.binary_cross_entropy_with_logits(nodule_logit, nodule)
    positive = kind >= 0
    if positive.any():
        loss = loss + 0.5 * F.cross_entropy(type_logits[positive], kind[positive])
    probability = torch.sigmoid(seg_logits)
    dice = 1 - (2 * (probability * seg).sum(dim=(1, 2, 3)) + 1) / (probability.sum(dim=(1, 2, 3))
                                                                    + seg.sum(dim=(1, 2, 3)) + 1)
    seg_bce = F.binary_cross_entropy_with_logits(seg_logits, seg)
    return loss + seg_bce + 0.5 * dice[nodule > 0].mean() if (nodule > 0).any() else loss + seg_bce


def _predict(net: torch.nn.Module, patches: np.ndarray, batch: int = 128) -> dict[str, np.ndarray]:
    """Eager outputs (nodule logit, type logits, embedding) of uint8 patches."""
    out: dict[str, list[np.ndarray]] = {"nodule_logit": [], "type_logits": [], "embedding": []}
    net.eval()
    with torch.no_grad():
        for start in range(0, len(patches), batch):
            nodule_logit, type_logits, _, _, embedding = net(_tensor(patches[start: start + batch]))
            out["nodule_logit"].append(nodule_logit.numpy())
            out["type_logits"].append(type_logits.numpy())
            out["embedding"].append(embedding.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _train_network(data: PatchSet, train_cases: np.ndarray, val_cases: np.ndarray, epochs: int, seed: int,
                   max_seconds: float, network: model.NodulePatchNet | None = None
                   ) -> tuple[model.NodulePatchNet, dict[str, Any]]:
    """Train (or, given ``network``, fine-tune) the patch CNN on cases A with early stopping on V."""
    train_index = np.where(np.isin(data.case, train_cases))[0]
    val_index = np.where(np.isin(data.case, val_cases))[0]
    rng = np.random.default_rng(seed)
    net = network or model.NodulePatchNet()
    positives = train_index[data.nodule[train_index] == 1]
    negatives = train_index[data.nodule[train_index] == 0]

    def batches(epoch: int) -> list[tuple[torch.Tensor, ...]]:
        # balanced epochs: every negative once, positives resampled to a third of the batch
        chosen = np.concatenate([negatives, rng.choice(positives, size=len(negatives) // 2)])
        rng.shuffle(chosen)
        out = []
        for start in range(0, len(chosen), 32):
            index = np.sort(chosen[start: start + 32])
            x, seg = _augment(_tensor(data.patches[index]), torch.from_numpy(data.segs[index] / 255.0).float(), rng)
            out.append((x, seg, torch.from_numpy(data.nodule[index].astype(np.float32)),
                        torch.from_numpy(data.kind[index].astype(np.int64))))
        return out

    def validate(net_: torch.nn.Module) -> float:
        logits = _predict(net_, data.patches[val_index])["nodule_logit"]
        return metrics.roc_auc(data.nodule[val_index], logits)

    history = fit(net, batches=batches, step=_network_step, validate=validate,
                  config=TrainConfig(epochs=epochs, lr=3e-3, patience=4, seed=seed, max_seconds=max_seconds,
                                     description="nodule patch CNN"))
    return net, {"epochs_run": len(history.losses), "best_epoch": history.best_epoch,
                 "validation_auc": round(history.best_score, 4), "seconds": round(history.seconds, 1),
                 "stopped": history.stopped}


def export_network(network: torch.nn.Module, models_dir: Path) -> None:
    """Write model.onnx (patch network), batch dimension dynamic."""
    network.eval()
    torch.onnx.export(network, (torch.zeros(2, 1, model.PATCH, model.PATCH, model.PATCH),),
                      str(models_dir / "model.onnx"), input_names=["patches"], output_names=list(model.OUTPUTS),
                      dynamic_axes={n: {0: "n"} for n in ["patches", *model.OUTPUTS]}, dynamo=False)


def _deploy_timing(models_dir: Path, network: torch.nn.Module) -> dict[str, float]:
    """Seconds for 64 patches: ONNX Runtime vs TorchScript (frozen trace) vs eager, on this CPU."""
    x = np.random.default_rng(0).random((64, 1, model.PATCH, model.PATCH, model.PATCH), dtype=np.float32)
    return cpu_seconds(models_dir / "model.onnx", network, "patches", x)


def fusion_splits(network: model.NodulePatchNet, fusion: FusionSet, seed: int) -> tuple[FusionData, FusionData]:
    """(training, calibration) tables: the CNN's embedding of each nodule; a quarter of the patients calibrate."""
    embedding = _predict(network, fusion.patches)["embedding"]
    n_cases = int(fusion.case.max()) + 1
    order = np.random.default_rng(seed + 7).permutation(n_cases)
    calib = np.isin(fusion.case, order[: max(int(round(0.25 * n_cases)), 1)])
    table = FusionData(embedding, *(fusion.clinical[k][fusion.case] for k in ("clinical", "present", "text",
                                                                               "text_present")), fusion.malignant)
    return table.take(~calib), table.take(calib)


def fit_fusion(network: model.NodulePatchNet, fusion: FusionSet, seed: int, quick: bool
               ) -> tuple[dict[str, FusionHead], Calibration, dict[str, Any]]:
    """Fusion heads (every mode) on the CNN's embeddings of ``fusion``; temperature on its calibration patients."""
    train_data, calib_data = fusion_splits(network, fusion, seed)
    return fit_heads(train_data, calib_data, seed=seed, quick=quick, specificity=0.9)


def _save_weights(models_dir: Path, network: model.NodulePatchNet, head: FusionHead) -> None:
    torch.save({"network": network.state_dict(), "fusion": head.state_dict()}, models_dir / "model.pt")


def write_bundle(root: Path, network: model.NodulePatchNet, heads: dict[str, FusionHead], calibration: Calibration,
                 metadata_training: dict[str, Any], training_data: dict[str, Any]) -> Path:
    """Save weights, export the deployed models, and write the bundle configs under ``root``."""
    models_dir = bundle_models_dir(root)
    _save_weights(models_dir, network, heads["dynamic"])
    export_network(network, models_dir)
    metadata_training["fusion"]["onnx_max_abs_diff"] = export_heads(heads, models_dir)
    inference = {
        "deployed": "model.onnx", "fusion_deployed": "fusion.onnx",
        "temperature": round(calibration.temperature, 5),
        "finding_threshold": 0.5, "nms_mm": 6.0, "flip_axes": list(FLIP_AXES), "max_candidates": model.MAX_CANDIDATES,
        "max_findings": 10,
        "batch": 64, "onnx_threads": 2, "work_mm": model.WORK_MM, "patch": model.PATCH,
        "clinical_features": feature_names(Task.LUNG_NODULE), "note_dim": NOTE_DIM, "types": list(model.TYPES),
    }
    metadata = {
        "name": model.NAME, "version": VERSION, "task": Task.LUNG_NODULE.value, "kind": DEEP_KIND,
        "intended_use": ("Research and integration testing of radfusion only. Trained exclusively on synthetic "
                         "chest CT phantoms generated by radfusion's own generator; not for clinical use."),
        "inputs": {"volume": "one axial chest CT series in HU (any spacing; resampled to 1.25 mm)",
                   "context": "optional ClinicalContext: age, sex, pack_years, smoking_status, prior cancer, CEA, "
                              "note text"},
        "outputs": {"findings": "nodules: centre, diameter_mm, volume_ml, composition, malignancy_probability, "
                                "Lung-RADS category, mask, CAM heat map, modality weights, logit std"},
        "training_data": training_data,
        "training": {**metadata_training, "deploy_timing_64_patches_s": _deploy_timing(models_dir, network)},
        "metrics": "see docs/model-cards/nodule/metrics.json (held-out evaluation)",
    }
    write_bundle_configs(root, metadata, inference)
    return root


def train_from_patches(data: PatchSet, stats: dict[str, float], fusion: FusionSet,
                       *, out_dir: Path | None, epochs: int, seed: int, quick: bool, max_seconds: float,
                       hard_negative_seeds: list[int] | None = None) -> Path:
    """Train the patch CNN on ``data`` and the fusion heads on ``fusion``, calibrate, export, write the bundle.

    With ``hard_negative_seeds`` (the first seeds of ``data``'s cases, in order), the trained CNN
    scores every candidate of those cases and is fine-tuned with the highest-scoring mimics added.
    """
    torch.set_num_threads(1)
    seed_everything(seed)
    started = time.monotonic()
    split = _split(int(data.case.max()) + 1, seed)
    network, cnn_summary = _train_network(data, split["A"], split["V"], epochs, seed, max_seconds)
    if hard_negative_seeds:
        hard = mine_hard_negatives(network, hard_negative_seeds)
        network, fine = _train_network(join(data, hard), split["A"], split["V"], max(epochs // 2, 1), seed + 2,
                                       max_seconds, network=network)
        cnn_summary = {"first": cnn_summary, "hard_negative_fine_tuning": fine,
                       "hard_negative_patches": int(len(hard.nodule))}
    heads, calibration, fusion_summary = fit_fusion(network, fusion, seed, quick)
    root = Path(out_dir) if out_dir is not None else bundle_root(model.NAME)
    training_data = {"generator": "ai_engine.synthetic.cohorts.nodule", "generator_version": GENERATOR_VERSION,
                     "detection_cases": int(data.case.max()) + 1,
                     "fusion_cases": int(fusion.case.max()) + 1, "seed": seed, "patches": int(len(data.nodule)),
                     "positive_patches": int(data.nodule.sum()),
                     "split_cases": {k: int(len(v)) for k, v in split.items()}, **stats}
    write_bundle(root, network, heads, calibration, {"cnn": cnn_summary, "fusion": fusion_summary, "quick": quick,
                                                "seconds": round(time.monotonic() - started, 1)}, training_data)
    log.info("nodule bundle written to %s in %.0f s", root, time.monotonic() - started)
    return root


def train(*, out_dir: Path | None, epochs: int | None, cohort_size: int | None, seed: int, quick: bool) -> Path:
    """Generate the training cohort, build patches and train the bundle (module docstring)."""
    size = cohort_size or (QUICK_SIZE if quick else TRAIN_SIZE)
    seeds = [seed * 100_003 + i for i in range(size)]
    data, stats = build_patch_set(seeds) if quick else _cached_patch_set(seeds)
    fusion = _cached_fusion_set(seed, QUICK_FUSION_SIZE if quick else FUSION_SIZE)
    return train_from_patches(data, stats, fusion, hard_negative_seeds=seeds[:HARD_NEGATIVE_CASES], out_dir=out_dir,
                              epochs=epochs or (QUICK_EPOCHS if quick else CNN_EPOCHS), seed=seed, quick=quick,
                              max_seconds=QUICK_CNN_SECONDS if quick else CNN_SECONDS)


def _froc_summary(scores: list[float], hits: list[int], n_lesions: int, n_scans: int) -> dict[str, Any]:
    fps, sens, _ = metrics.froc_curve(np.array(scores), np.array(hits, dtype=int), n_lesions=n_lesions,
                                      n_scans=n_scans)
    return {"cpm": round(metrics.cpm(fps, sens), 4),
            "sensitivity_at_1_fp": round(metrics.sensitivity_at_fp(fps, sens, 1.0), 4),
            "sensitivity_at": {str(r): round(metrics.sensitivity_at_fp(fps, sens, r), 4)
                               for r in metrics.CPM_FP_RATES},
            "max_sensitivity": round(float(sens.max()), 4), "curve": (fps, sens)}


def _hit_ids(centres_voxel: np.ndarray, spacing: np.ndarray, truth: list[tuple[int, np.ndarray, float]]) -> list[int]:
    """Per detected centre (source voxels), the global id of the nodule whose radius (>= 3 mm) it falls in, else -1."""
    ids = []
    for centre in centres_voxel:
        hit = -1
        for lesion_id, truth_centre, diameter in truth:
            if np.linalg.norm((centre - truth_centre) * spacing) <= max(diameter / 2.0, 3.0):
                hit = lesion_id
                break
        ids.append(hit)
    return ids


def evaluate(*, bundle: str | Path | None, cohort_size: int | None, seed: int | None,
             out_dir: Path | None) -> dict[str, Any]:
    """Held-out evaluation through DICOM: FROC/CPM of the deep detector and the baseline, malignancy, fusion table."""
    torch.set_num_threads(1)
    loaded = resolve_bundle(bundle, model.NAME)
    detector = model.NoduleFusion(loaded)
    baseline = NoduleBaseline()
    size = cohort_size or EVAL_SIZE
    seed = EVAL_SEED if seed is None else seed
    out = Path(out_dir) if out_dir is not None else MODEL_CARD_DIR
    deep_scores: list[float] = []
    deep_hits: list[int] = []
    base_scores: list[float] = []
    base_hits: list[int] = []
    rows: list[dict[str, Any]] = []
    embeddings, contexts, malignant, fused, kinds_true, kinds_pred = [], [], [], [], [], []
    n_lesions = 0
    seconds = {"deep": 0.0, "baseline": 0.0}
    for i in tqdm(range(size), desc="held-out", unit="case"):
        case = generate_case(seed * 100_003 + i, ranges=HELDOUT_ACQUISITION)
        with tempfile.TemporaryDirectory() as tmp:
            inputs = load_inputs(Task.LUNG_NODULE, write_case_dicom(case, Path(tmp)), case.context)
        volume = inputs.volume
        assert volume is not None
        spacing = np.array(volume.spacing_mm)
        truth = [(n_lesions + k, np.array(n.center_voxel), n.diameter_mm) for k, n in enumerate(case.nodules)]
        n_lesions += len(case.nodules)
        start = time.perf_counter()
        analysis = detector.analyse(volume)
        seconds["deep"] += time.perf_counter() - start
        # what detect would report at every threshold: the same suppression, re-centring and merging
        nodules = model.ranked_nodules(analysis, float(loaded.inference["nms_mm"]), threshold=0.0)
        centres = analysis.grid.to_source(np.array([n.centre_work for n in nodules]).reshape(-1, 3))
        deep_scores += [float(analysis.probability[n.index]) for n in nodules]
        deep_hits += _hit_ids(centres, spacing, truth)
        start = time.perf_counter()
        base = baseline.detect(inputs)
        seconds["baseline"] += time.perf_counter() - start
        base_scores += [f.score for f in base.findings]
        base_hits += _hit_ids(np.array([f.center_voxel for f in base.findings]).reshape(-1, 3), spacing, truth)
        # the fusion experiment and type accuracy use each nodule's truth-centred patch from the loaded series
        if case.nodules:
            centres_work = model.source_to_work(np.array([n.center_voxel for n in case.nodules]), analysis.grid.zoom)
            outputs = detector.run_network(model.extract_patches(analysis.grid.hu, centres_work))
            embeddings.append(outputs[4])
            kinds_pred += list(np.argmax(outputs[1], axis=1))
            kinds_true += [model.TYPES.index(n.kind) for n in case.nodules]
            contexts += [case.context] * len(case.nodules)
            malignant += [int(n.malignant) for n in case.nodules]
            fused.append(detector.fuse(outputs[4], case.context)[0])
        rows.append({"case": case.case_id, "nodules": len(case.nodules), "candidates": int(len(analysis.points)),
                     "slice_mm": round(case.acquisition.slice_mm, 2),
                     "pixel_mm": round(case.acquisition.spacing[1], 3), "noise_hu": round(case.acquisition.noise_hu, 1),
                     "blur_mm": round(case.acquisition.blur_mm, 2)})
    deep = _froc_summary(deep_scores, deep_hits, n_lesions, size)
    base = _froc_summary(base_scores, base_hits, n_lesions, size)
    labels = np.array(malignant)
    probabilities = np.concatenate(fused) if fused else np.zeros(0)
    fusion_table, weights = _fusion_experiment(loaded, np.concatenate(embeddings), contexts, labels, seed)
    result: dict[str, Any] = {
        "cohort": {"size": size, "seed": seed, "nodules": n_lesions, "acquisition": "HELDOUT_ACQUISITION",
                   "cases": rows},
        "detection": {"nodule_fusion": {k: v for k, v in deep.items() if k != "curve"},
                      "nodule_baseline": {k: v for k, v in base.items() if k != "curve"}},
        "type_accuracy": round(float(np.mean(np.array(kinds_true) == np.array(kinds_pred))), 4),
        "malignancy": {"auc": round(metrics.roc_auc(labels, probabilities), 4),
                       "ece": round(metrics.expected_calibration_error(labels, probabilities), 4),
                       "nodules": int(len(labels)), "malignant": int(labels.sum())},
        "fusion_experiment": fusion_table,
        "seconds_per_case": {k: round(v / size, 2) for k, v in seconds.items()},
        "bundle": {"version": loaded.version, "device_uid": loaded.device_uid},
    }
    out.mkdir(parents=True, exist_ok=True)
    plots.plot_froc({"nodule_fusion": deep["curve"], "nodule_baseline": base["curve"]}, out / "froc.png",
                    title="Held-out FROC (lung nodules)")
    fpr, tpr, _ = metrics.roc_curve(labels, probabilities)
    plots.plot_roc({"malignancy (dynamic fusion)": (fpr, tpr)}, out / "roc_malignancy.png",
                   title="Held-out malignancy ROC")
    predicted, observed, _ = metrics.reliability_curve(labels, probabilities)
    plots.plot_calibration({"dynamic fusion": (predicted, observed)}, out / "calibration.png")
    plots.plot_modality_weights({m: weights[:, j] for j, m in enumerate(("image", "clinical", "text"))},
                                out / "modality_weights.png")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _fusion_experiment(bundle: Bundle, embedding: np.ndarray, contexts: list[Any], labels: np.ndarray,
                       seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """Malignancy AUC table of the three heads, and the dynamic head's weights of nodules with complete inputs."""
    heads = load_heads(bundle.root / "models", model.load_eager_model(bundle).fusion)
    data = FusionData.from_contexts(Task.LUNG_NODULE, embedding, contexts, labels)
    table: dict[str, Any] = fusion_experiment(heads, data, seed=seed)
    weights = head_outputs(heads["dynamic"], data)[1]
    full = (data.clinical_present.sum(axis=1) > 0) & (data.text_present > 0)
    table["mean_weights_complete_cases"] = {m: round(float(weights[full, j].mean()), 4)
                                            for j, m in enumerate(MODALITIES)}
    return table, weights[full]


def train_fusion_only(*, bundle: str | Path | None, quick: bool) -> Path:
    """Refit the fusion heads of ``bundle`` on its unchanged patch CNN (same fusion cohort and seed); minor version."""
    torch.set_num_threads(1)
    loaded = resolve_bundle(bundle, model.NAME)
    recorded = loaded.metadata["training_data"]
    seed, size = int(recorded["seed"]), int(recorded["fusion_cases"])
    seed_everything(seed)
    network = model.load_eager_model(loaded).network
    heads, calibration, summary = fit_fusion(network, _cached_fusion_set(seed, size), seed, quick)
    models_dir = bundle_models_dir(loaded.root)
    _save_weights(models_dir, network, heads["dynamic"])
    summary["onnx_max_abs_diff"] = export_heads(heads, models_dir)
    version = write_refit_configs(loaded, calibration, summary, threshold_key=None,
                                  command="radfusion train nodule --fusion-only")
    log.info("nodule bundle %s: fusion heads refitted, version %s", loaded.root, version)
    return loaded.root
