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
their training and fits the temperature.

With ``data_dir`` the cases are the series of a dataset directory instead
(``ai_engine.training.datasets.lidc_luna``, LIDC-IDRI/LUNA16 layout). The same per-case workers cut
their patches and mine their hard negatives (a worker takes a case *source*: a synthetic seed or a
dataset case); the series are split by patient into A/V/C, and the fusion heads learn from the
truth-centred patches of the nodules of known malignancy in A and V, calibrated on those of C.

Evaluation generates a held-out cohort with another seed and shifted acquisition
(``HELDOUT_ACQUISITION``), writes every case as DICOM, loads it through the server's loader and
runs the deployed detector and the baseline on it. With ``data_dir`` the held-out cases are every
series of a dataset in the training layout instead (an institution validating a model on its own
scans); both kinds of case feed the same loop.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from ai_engine.bundle import (
    Bundle,
    bundle_kind,
    bundle_models_dir,
    bundle_root,
    resolve_bundle,
    synthetic_training_data,
    write_bundle_configs,
)
from ai_engine.clinical_features import (
    NOTE_DIM,
    context_text,
    encode_clinical,
    encode_note,
    feature_names,
    note_encoding_of,
)
from ai_engine.detectors import nodule_fusion as model
from ai_engine.detectors.base import DetectorInput
from ai_engine.detectors.nodule_baseline import NoduleBaseline
from ai_engine.errors import AiEngineError
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
from ai_engine.training.datasets import dataset_intended_use, dataset_provenance, metrics_record
from ai_engine.training.datasets.lidc_luna import (
    ANNOTATIONS,
    ATTRIBUTES,
    TABLES,
    AnnotatedNodule,
    AnnotatedScan,
    DatasetCase,
    dataset_counts,
    load_case,
    read_dataset,
)
from ai_engine.training.deploy_timing import cpu_seconds, torchscript
from ai_engine.training.fusion_fit import (
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
from ai_engine.training.loop import TrainConfig, fit, seed_everything
from ai_engine.training.patient_split import split_by_patient
from ai_engine.volume import Volume

log = logging.getLogger(__name__)

VERSION = "1.4.0"
NOTE_ENCODING = "hashed-terms"  # what 1.4.x's heads learned; "hashed-words" not yet compared on validation
TRAIN_SIZE, QUICK_SIZE = 320, 3
CNN_EPOCHS, QUICK_EPOCHS = 10, 1
EVAL_SEED, EVAL_SIZE = 9, 30
NEGATIVES_PER_CASE = 50
JITTER_COPIES = 4
MODEL_CARD_DIR = Path("docs/model-cards/nodule")
SPLITS = {"A": 0.7, "V": 0.1, "C": 0.2}
FUSION_SIZE, QUICK_FUSION_SIZE = 400, 6
HARD_NEGATIVES_PER_CASE = 40
FINDING_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # 0.50 .. 0.95, lowest first
CALIBRATION_FP_PER_SCAN = 0.125  # the lowest false-positive rate of the CPM: what the reporting threshold allows
FLIP_AXES = (2, 3, 4)  # the deployed detection score averages the patch and its z, y and x flips
HARD_NEGATIVE_CASES = 64
CNN_SECONDS, QUICK_CNN_SECONDS = 2400.0, 60.0  # per stage (first training, hard-negative fine-tuning)
FUSION_SEED_OFFSET = 50_000  # fusion cases never share a seed with the detection cases
# Short scans (120 mm) from the training scanners: enough lung around each nodule, a tenth of the voxels.
FUSION_ACQUISITION = dataclasses.replace(TRAIN_ACQUISITION, z_extent_mm=120.0)
SYNTHETIC_INTENDED_USE = ("Research and integration testing of radfusion only. Trained exclusively on synthetic "
                          "chest CT phantoms generated by radfusion's own generator; not for clinical use.")


@dataclass
class PatchSet:
    """Training patches (uint8, 0..255 over the patch HU range) with their targets and case index."""

    patches: np.ndarray  # [N, 32, 32, 32] uint8
    segs: np.ndarray  # [N, 16, 16, 16] uint8 (0..255 occupancy)
    nodule: np.ndarray  # [N] 0/1
    kind: np.ndarray  # [N] type index, -1 for negatives
    case: np.ndarray  # [N]


CaseSource = int | DatasetCase  # a synthetic seed or a dataset case: what a worker process is handed


def _as_volume(case: NoduleCase) -> Volume:
    return Volume(array=case.phantom.hu, spacing_mm=case.phantom.spacing, origin_mm=(0.0, 0.0, 0.0),
                  direction=np.eye(3), sop_instance_uids=[], paths=[], series_instance_uid="",
                  study_instance_uid="")


def _scan(source: CaseSource, *, fusion: bool = False) -> AnnotatedScan:
    """The case behind ``source``: a dataset case, or a synthetic seed's detection case (with ``fusion``, its
    short nodule-bearing scan of ``FUSION_ACQUISITION``)."""
    if isinstance(source, DatasetCase):
        return load_case(source)
    case = (generate_case(source, ranges=FUSION_ACQUISITION, negative_rate=0.0) if fusion
            else generate_case(source))
    nodules = [AnnotatedNodule(n.label, n.center_voxel, n.diameter_mm, n.kind, n.malignant) for n in case.nodules]
    return AnnotatedScan(volume=_as_volume(case), labels=case.phantom.labels, nodules=nodules, context=case.context,
                         seed=case.seed)


def _case_patches(source: CaseSource) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Patches of one detection training case and candidate statistics (runs in a worker process)."""
    case = _scan(source)
    hu, zoom = model.resample_to_work(case.volume)
    lungs = model.work_lung_mask(hu)
    points = model.candidates(hu, lungs)
    labels = ndimage.zoom(case.labels, zoom, order=0, grid_mode=True, mode="nearest")[
        : hu.shape[0], : hu.shape[1], : hu.shape[2]]
    rng = np.random.default_rng(case.seed + 1)
    centres, hits = [], []
    truth = {n.label: n for n in case.nodules}
    matched = _match(points, case.nodules, zoom)
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
    # a nodule of unknown composition is a positive without a type target (kind -1 is left out of the type loss)
    kinds = np.array([model.TYPES.index(truth[h].kind) if h and truth[h].kind is not None else -1 for h in hits])
    arrays = {"patches": np.rint(patches * 255).astype(np.uint8), "segs": np.rint(segs * 255).astype(np.uint8),
              "nodule": (hit_arr > 0).astype(np.uint8), "kind": kinds}
    info = {"recall": [bool((matched == label).any()) for label in truth], "candidates": len(points)}
    return arrays, info


def _match(points: np.ndarray, nodules: list[AnnotatedNodule], zoom: tuple[float, float, float]) -> np.ndarray:
    """Per candidate, the label of the nodule whose centre lies within max(radius, 3 mm), else 0."""
    matched = np.zeros(len(points), dtype=int)
    for nodule in nodules:
        centre = model.source_to_work(nodule.center_voxel, zoom)
        distance = np.linalg.norm(points - centre, axis=1) * model.WORK_MM
        matched[(distance <= max(nodule.diameter_mm / 2.0, 3.0)) & (matched == 0)] = nodule.label
    return matched


def build_patch_set(sources: Sequence[CaseSource], workers: int = 2) -> tuple[PatchSet, dict[str, float]]:
    """Patches of every case (``workers`` processes) and candidate statistics (recall, candidates per scan)."""
    parts: list[tuple[dict[str, np.ndarray], dict[str, Any]]] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part in tqdm(pool.map(_case_patches, sources), total=len(sources), desc="cohort", unit="case"):
            parts.append(part)
    case_index = np.concatenate([np.full(len(a["nodule"]), i) for i, (a, _) in enumerate(parts)])
    data = PatchSet(patches=np.concatenate([a["patches"] for a, _ in parts]),
                    segs=np.concatenate([a["segs"] for a, _ in parts]),
                    nodule=np.concatenate([a["nodule"] for a, _ in parts]),
                    kind=np.concatenate([a["kind"] for a, _ in parts]), case=case_index)
    recall = [hit for _, info in parts for hit in info["recall"]]
    stats = {"candidate_recall": float(np.mean(recall)) if recall else float("nan"),
             "candidates_per_scan": float(np.mean([info["candidates"] for _, info in parts])),
             "nodules": len(recall)}
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
    """Truth-centred patches of nodules of known malignancy with their case's clinical data (synthetic: extra
    short scans; dataset: the training cases)."""

    patches: np.ndarray  # [N, 32, 32, 32] uint8
    malignant: np.ndarray  # [N]
    case: np.ndarray  # [N] index into the clinical arrays
    clinical: dict[str, np.ndarray]


def _fusion_case(source: CaseSource) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Truth-centred patches of one case's nodules of known malignancy and its clinical encoding (worker process)."""
    case = _scan(source, fusion=True)
    known = [n for n in case.nodules if n.malignant is not None]
    hu, zoom = model.resample_to_work(case.volume)
    centres = model.source_to_work(np.array([n.center_voxel for n in known]).reshape(-1, 3), zoom)
    patches = np.rint(model.extract_patches(hu, centres)[:, 0] * 255).astype(np.uint8)
    clinical, present = encode_clinical(Task.LUNG_NODULE, case.context)
    text, text_present = encode_note(context_text(case.context), encoding=NOTE_ENCODING)
    return patches, np.array([int(n.malignant) for n in known], dtype=int), {
        "clinical": clinical, "present": present, "text": text, "text_present": text_present}


FUSION_SET_CLINICAL = ("clinical", "present", "text", "text_present")


def build_fusion_set(sources: Sequence[CaseSource], workers: int = 2) -> FusionSet:
    """Nodule patches for the fusion heads from ``sources`` (many patients: malignancy needs them)."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(tqdm(pool.map(_fusion_case, sources), total=len(sources), desc="fusion cohort", unit="case"))
    return FusionSet(patches=np.concatenate([p for p, _, _ in parts]),
                     malignant=np.concatenate([m for _, m, _ in parts]),
                     case=np.concatenate([np.full(len(m), i) for i, (_, m, _) in enumerate(parts)]),
                     clinical={key: np.stack([info[key] for _, _, info in parts]) for key in FUSION_SET_CLINICAL})


def _cached_fusion_set(seed: int, size: int) -> FusionSet:
    """The fusion cohort of ``seed`` (``size`` patients), kept in the temp directory so a refit skips generation."""
    cache = (Path(tempfile.gettempdir()) / "radfusion-cache"
             / f"nodule-fusion-{seed}-{size}-{model.PATCH}-g{GENERATOR_VERSION}-{NOTE_ENCODING}.npz")
    if cache.is_file():
        with np.load(cache) as stored:
            return FusionSet(stored["patches"], stored["malignant"], stored["case"],
                             {k: stored[f"clinical_{k}"] for k in FUSION_SET_CLINICAL})
    fusion = build_fusion_set([seed * 100_003 + FUSION_SEED_OFFSET + i for i in range(size)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, patches=fusion.patches, malignant=fusion.malignant, case=fusion.case,
             **{f"clinical_{k}": v for k, v in fusion.clinical.items()})
    return fusion


def _case_hard_negatives(args: tuple[CaseSource, dict[str, torch.Tensor]]
                         ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Patches of the candidates the network scores highest although they are not nodules (one case, worker)."""
    source, state = args
    torch.set_num_threads(1)
    network = model.NodulePatchNet()
    network.load_state_dict(state)
    case = _scan(source)
    hu, zoom = model.resample_to_work(case.volume)
    points = model.candidates(hu, model.work_lung_mask(hu))
    negatives = points[_match(points, case.nodules, zoom) == 0]
    patches = model.extract_patches(hu, negatives)
    logits = _predict(network, np.rint(patches[:, 0] * 255).astype(np.uint8))["nodule_logit"]
    hardest = np.argsort(-logits)[:HARD_NEGATIVES_PER_CASE]
    chosen = patches[hardest, 0]
    arrays = {"patches": np.rint(chosen * 255).astype(np.uint8),
              "segs": np.zeros((len(chosen), 16, 16, 16), dtype=np.uint8),
              "nodule": np.zeros(len(chosen), dtype=np.uint8), "kind": np.full(len(chosen), -1)}
    return arrays, {"recall": [], "candidates": len(points)}


def mine_hard_negatives(network: model.NodulePatchNet, sources: Sequence[CaseSource], workers: int = 2) -> PatchSet:
    """Hard negatives of the detection cases (same sources and order as the PatchSet they extend)."""
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(tqdm(pool.map(_case_hard_negatives, [(source, state) for source in sources]),
                          total=len(sources), desc="hard negatives", unit="case"))
    return PatchSet(patches=np.concatenate([a["patches"] for a, _ in parts]),
                    segs=np.concatenate([a["segs"] for a, _ in parts]),
                    nodule=np.concatenate([a["nodule"] for a, _ in parts]),
                    kind=np.concatenate([a["kind"] for a, _ in parts]),
                    case=np.concatenate([np.full(len(a["nodule"]), i) for i, (a, _) in enumerate(parts)]))


def join(first: PatchSet, second: PatchSet) -> PatchSet:
    """Both patch sets in one (case indices refer to the same cases)."""
    return PatchSet(*(np.concatenate([getattr(first, f), getattr(second, f)])
                      for f in ("patches", "segs", "nodule", "kind", "case")))


def _split(n_cases: int, seed: int, min_calibration: int = 0) -> dict[str, np.ndarray]:
    """Cases split by patient into A (CNN), V (CNN early stopping) and C (fusion stopping, calibration).

    ``min_calibration``: C keeps at least that many cases (a small dataset still calibrates), taken from A.
    """
    order = np.random.default_rng(seed).permutation(n_cases)
    a = int(round(SPLITS["A"] * n_cases))
    v = max(int(round(SPLITS["V"] * n_cases)), 1)
    if min_calibration:
        a = min(a, n_cases - v - min_calibration)
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
    """Write the patch network as model.onnx (batch dimension dynamic) and as model.ts (TorchScript)."""
    network.eval()
    torch.onnx.export(network, (torch.zeros(2, 1, model.PATCH, model.PATCH, model.PATCH),),
                      str(models_dir / "model.onnx"), input_names=["patches"], output_names=list(model.OUTPUTS),
                      dynamic_axes={n: {0: "n"} for n in ["patches", *model.OUTPUTS]}, dynamo=False)
    export_torchscript(network, models_dir)


def export_torchscript(network: torch.nn.Module, models_dir: Path) -> None:
    """Write model.ts: the patch network traced and frozen."""
    torch.jit.save(torchscript(network, np.zeros((2, 1, model.PATCH, model.PATCH, model.PATCH), dtype=np.float32)),
                   str(models_dir / "model.ts"))


def faster_deployment(timing: dict[str, float]) -> str:
    """The deployed file of the faster CPU runtime in ``timing`` (``_deploy_timing``): the issue's "TorchScript or
    ONNX Runtime on CPU, whichever is faster"."""
    return "model.ts" if timing["torchscript"] < timing["onnxruntime"] else "model.onnx"


def _deploy_timing(models_dir: Path, network: torch.nn.Module) -> dict[str, float]:
    """Seconds for 64 patches: ONNX Runtime vs TorchScript (frozen trace) vs eager, on this CPU."""
    x = np.random.default_rng(0).random((64, 1, model.PATCH, model.PATCH, model.PATCH), dtype=np.float32)
    return cpu_seconds(models_dir / "model.onnx", network, "patches", x)


def fusion_splits(network: model.NodulePatchNet, fusion: FusionSet, seed: int,
                  calibration_cases: np.ndarray | None = None) -> tuple[FusionData, FusionData]:
    """(training, calibration) tables: the CNN's embedding of each nodule; ``calibration_cases`` (indices of
    ``fusion``'s cases) calibrate, by default a random quarter of the patients."""
    embedding = _predict(network, fusion.patches)["embedding"]
    if calibration_cases is None:
        n_cases = int(fusion.case.max()) + 1
        order = np.random.default_rng(seed + 7).permutation(n_cases)
        calibration_cases = order[: max(int(round(0.25 * n_cases)), 1)]
    calib = np.isin(fusion.case, calibration_cases)
    table = FusionData(embedding, *(fusion.clinical[k][fusion.case] for k in ("clinical", "present", "text",
                                                                               "text_present")), fusion.malignant)
    return table.take(~calib), table.take(calib)


def fit_fusion(network: model.NodulePatchNet, fusion: FusionSet, seed: int, quick: bool,
               calibration_cases: np.ndarray | None = None
               ) -> tuple[dict[str, FusionHead], Calibration, dict[str, Any]]:
    """Fusion heads (every mode) on the CNN's embeddings of ``fusion``; temperature on its calibration patients."""
    train_data, calib_data = fusion_splits(network, fusion, seed, calibration_cases)
    return fit_heads(train_data, calib_data, seed=seed, quick=quick, specificity=0.9)


def _save_weights(models_dir: Path, network: model.NodulePatchNet, head: FusionHead) -> None:
    torch.save({"network": network.state_dict(), "fusion": head.state_dict()}, models_dir / "model.pt")


@dataclass(frozen=True)
class DatasetPlan:
    """What differs when the patches come from a dataset directory instead of synthetic seeds.

    ``split``: the cases' A/V/C split (C never empty); ``fusion_calibration``: the fusion set's case
    indices that lie in C; ``training_data`` and ``intended_use``: the bundle metadata naming the dataset.
    """

    split: dict[str, np.ndarray]
    fusion_calibration: np.ndarray
    training_data: dict[str, Any]
    intended_use: str


def write_bundle(root: Path, network: model.NodulePatchNet, heads: dict[str, FusionHead], calibration: Calibration,
                 metadata_training: dict[str, Any], training_data: dict[str, Any],
                 intended_use: str = SYNTHETIC_INTENDED_USE) -> Path:
    """Save weights, export the deployed models, and write the bundle configs under ``root``."""
    models_dir = bundle_models_dir(root)
    _save_weights(models_dir, network, heads["dynamic"])
    export_network(network, models_dir)
    metadata_training["fusion"]["onnx_max_abs_diff"] = export_heads(heads, models_dir)
    timing = _deploy_timing(models_dir, network)
    inference = {
        "deployed": faster_deployment(timing), "fusion_deployed": "fusion.onnx",
        "temperature": round(calibration.temperature, 5),
        "finding_threshold": 0.5, "nms_mm": 6.0, "flip_axes": list(FLIP_AXES), "max_candidates": model.MAX_CANDIDATES,
        "max_findings": 10,
        "batch": 64, "onnx_threads": 2, "work_mm": model.WORK_MM, "patch": model.PATCH,
        "clinical_features": feature_names(Task.LUNG_NODULE), "note_dim": NOTE_DIM, "note_encoding": NOTE_ENCODING,
        "types": list(model.TYPES),
    }
    metadata = {
        "name": model.NAME, "version": VERSION, "task": Task.LUNG_NODULE.value,
        "kind": bundle_kind({"training_data": training_data}),
        "intended_use": intended_use,
        "inputs": {"volume": "one axial chest CT series in HU (any spacing; resampled to 1.25 mm)",
                   "context": "optional ClinicalContext: age, sex, pack_years, smoking_status, prior cancer, CEA, "
                              "note text"},
        "outputs": {"findings": "nodules: centre, diameter_mm, volume_ml, composition, malignancy_probability, "
                                "Lung-RADS category, mask, CAM heat map, modality weights, logit std"},
        "training_data": training_data,
        "training": {**metadata_training, "deploy_timing_64_patches_s": timing},
        "metrics": metrics_record(training_data, "nodule"),
    }
    write_bundle_configs(root, metadata, inference)
    return root


def train_from_patches(data: PatchSet, stats: dict[str, float], fusion: FusionSet, *, out_dir: Path | None,
                       epochs: int, seed: int, quick: bool, max_seconds: float, sources: Sequence[CaseSource] = (),
                       dataset: DatasetPlan | None = None) -> Path:
    """Train the patch CNN on ``data`` and the fusion heads on ``fusion``, calibrate, export, write the bundle.

    ``sources``: ``data``'s cases in order, when it was cut from scans. The trained CNN then scores
    every candidate of the first ``HARD_NEGATIVE_CASES`` and is fine-tuned with the highest-scoring
    mimics added, and the written bundle's reporting threshold is fitted on the scans of the
    calibration split C (``fit_finding_threshold``; without sources it stays at 0.5).
    ``dataset``: the patches come from a dataset directory (its split, calibration cases and metadata).
    """
    torch.set_num_threads(1)
    seed_everything(seed)
    started = time.monotonic()
    split = dataset.split if dataset else _split(int(data.case.max()) + 1, seed)
    network, cnn_summary = _train_network(data, split["A"], split["V"], epochs, seed, max_seconds)
    hard_negative_sources = sources[:HARD_NEGATIVE_CASES]
    if hard_negative_sources:
        hard = mine_hard_negatives(network, hard_negative_sources)
        network, fine = _train_network(join(data, hard), split["A"], split["V"], max(epochs // 2, 1), seed + 2,
                                       max_seconds, network=network)
        cnn_summary = {"first": cnn_summary, "hard_negative_fine_tuning": fine,
                       "hard_negative_patches": int(len(hard.nodule))}
    heads, calibration, fusion_summary = fit_fusion(network, fusion, seed, quick,
                                                    dataset.fusion_calibration if dataset else None)
    root = Path(out_dir) if out_dir is not None else bundle_root(model.NAME)
    source = dataset.training_data if dataset else {"generator": "ai_engine.synthetic.cohorts.nodule",
                                                    "generator_version": GENERATOR_VERSION}
    training_data = {**source, "detection_cases": int(data.case.max()) + 1,
                     "fusion_cases": int(fusion.case.max()) + 1, "seed": seed, "patches": int(len(data.nodule)),
                     "positive_patches": int(data.nodule.sum()),
                     "split_cases": {k: int(len(v)) for k, v in split.items()}, **stats}
    write_bundle(root, network, heads, calibration, {"cnn": cnn_summary, "fusion": fusion_summary, "quick": quick,
                                                "seconds": round(time.monotonic() - started, 1)}, training_data,
                 dataset.intended_use if dataset else SYNTHETIC_INTENDED_USE)
    if sources:
        loaded = resolve_bundle(root, model.NAME)
        fitted = fit_finding_threshold(loaded, [sources[int(i)] for i in split["C"]])
        write_bundle_configs(root, {**loaded.metadata, "finding_threshold_fit": fitted},
                             {**loaded.inference, "finding_threshold": fitted["threshold"]})
    log.info("nodule bundle written to %s in %.0f s", root, time.monotonic() - started)
    return root


def train(*, out_dir: Path | None, epochs: int | None, cohort_size: int | None, seed: int, quick: bool,
          data_dir: Path | None = None) -> Path:
    """Generate the training cohort (or read ``data_dir``), build patches and train the bundle (module docstring).

    With ``data_dir`` every series of the dataset is a case (``cohort_size``: only the first that
    many, in series-UID order); ``quick`` shortens the training, not the dataset. Nothing is cached.
    """
    epochs = epochs or (QUICK_EPOCHS if quick else CNN_EPOCHS)
    max_seconds = QUICK_CNN_SECONDS if quick else CNN_SECONDS
    if data_dir is not None:
        return _train_on_dataset(Path(data_dir), cohort_size, out_dir=out_dir, epochs=epochs, seed=seed, quick=quick,
                                 max_seconds=max_seconds)
    size = cohort_size or (QUICK_SIZE if quick else TRAIN_SIZE)
    seeds = [seed * 100_003 + i for i in range(size)]
    data, stats = build_patch_set(seeds) if quick else _cached_patch_set(seeds)
    fusion = _cached_fusion_set(seed, QUICK_FUSION_SIZE if quick else FUSION_SIZE)
    return train_from_patches(data, stats, fusion, out_dir=out_dir, epochs=epochs, seed=seed, quick=quick,
                              max_seconds=max_seconds, sources=seeds)


def _train_on_dataset(data_dir: Path, limit: int | None, *, out_dir: Path | None, epochs: int, seed: int,
                      quick: bool, max_seconds: float) -> Path:
    """``train`` on a LIDC-IDRI/LUNA16-layout directory: the fusion heads learn from the training cases' nodules."""
    cases = read_dataset(data_dir)[:limit]
    if len(cases) < 3:
        raise AiEngineError(f"lung-nodule dataset {data_dir}: {len(cases)} series; training needs at least 3 "
                            "(one each for the A, V and C splits)")
    split = split_by_patient(lambda by_patient: _split(len(by_patient), seed, min_calibration=1),
                             np.zeros(len(cases), dtype=int), [case.patient for case in cases])
    empty = [name for name, members in split.items() if not len(members)]
    if empty:
        raise AiEngineError(f"lung-nodule dataset {data_dir}: {len({c.patient for c in cases})} patient(s) leave "
                            f"split(s) {empty} empty; training needs at least 3 patients (one each for A, V and C)")
    fusion_cases = np.array([i for i, c in enumerate(cases) if any(n.malignant is not None for n in c.nodules)],
                            dtype=int)
    calibration = np.isin(fusion_cases, split["C"])
    if calibration.all() or not calibration.any():
        raise AiEngineError(f"lung-nodule dataset {data_dir}: the malignancy heads need nodules of known malignancy "
                            f"({ATTRIBUTES}) in the training series and in the calibration series; "
                            f"{int((~calibration).sum())} training and {int(calibration.sum())} calibration "
                            f"series have some")
    data, stats = build_patch_set(cases)
    fusion = build_fusion_set([cases[i] for i in fusion_cases])
    plan = DatasetPlan(split=split, fusion_calibration=np.flatnonzero(calibration),
                       training_data={**dataset_provenance(data_dir, list(TABLES), **dataset_counts(cases)),
                                      "layout": "LIDC-IDRI / LUNA16 (docs/model-cards/nodule.md)",
                                      "label_maps": "spheres of the annotated diameters (no voxel masks)"},
                       intended_use=dataset_intended_use(data_dir))
    return train_from_patches(data, stats, fusion, out_dir=out_dir, epochs=epochs, seed=seed, quick=quick,
                              max_seconds=max_seconds, sources=cases, dataset=plan)


def operating_point(scores: Sequence[float], hits: Sequence[int], n_lesions: int, n_scans: int,
                    threshold: float) -> dict[str, Any]:
    """Sensitivity and false nodules per scan of the marks at or above ``threshold`` (``hits``: the id of the
    nodule a mark lies in, -1 for none; a second mark on a found nodule counts as neither, as in FROC)."""
    kept = [(s, h) for s, h in zip(scores, hits, strict=True) if s >= threshold]
    found = len({h for _, h in kept if h >= 0})
    return {"threshold": threshold, "sensitivity": round(found / n_lesions, 4) if n_lesions else None,
            "fp_per_scan": round(sum(1 for _, h in kept if h < 0) / n_scans, 4)}


def _reported_marks(analysis: model.CandidateOutputs, nms_mm: float, spacing: np.ndarray,
                    truth: list[tuple[int, np.ndarray, float]]) -> tuple[list[float], list[int]]:
    """What ``detect`` would report at every threshold (the same suppression, re-centring and merging): each
    nodule's score and the id of the true nodule it lies in (-1 for none; ``_hit_ids``)."""
    nodules = model.ranked_nodules(analysis, nms_mm, threshold=0.0)
    centres = analysis.grid.to_source(np.array([n.centre_work for n in nodules]).reshape(-1, 3))
    return [float(analysis.probability[n.index]) for n in nodules], _hit_ids(centres, spacing, truth)


@functools.cache
def _worker_detector(root: str) -> model.NoduleFusion:
    """One detector per worker process (single-threaded: the pool runs two)."""
    torch.set_num_threads(1)
    loaded = resolve_bundle(Path(root), model.NAME)
    loaded.inference["onnx_threads"] = 1
    return model.NoduleFusion(loaded)


def _case_marks(args: tuple[CaseSource, str]) -> tuple[list[float], list[int], int]:
    """Scores and hit ids of what ``detect`` reports at every threshold on one training case (worker process)."""
    source, root = args
    detector = _worker_detector(root)
    case = _scan(source)
    truth = [(k, np.array(n.center_voxel), n.diameter_mm) for k, n in enumerate(case.nodules)]
    scores, hits = _reported_marks(detector.analyse(case.volume), float(detector.parameters["nms_mm"]),
                                   np.array(case.volume.spacing_mm), truth)
    return scores, hits, len(case.nodules)


def fit_finding_threshold(loaded: Bundle, sources: Sequence[CaseSource], workers: int = 2) -> dict[str, Any]:
    """The reporting threshold: the lowest of ``FINDING_THRESHOLDS`` at which the bundle's findings on
    ``sources`` (the calibration split C, never a held-out cohort) hold at most ``CALIBRATION_FP_PER_SCAN``
    false nodules per scan (the highest when none does), with the operating point at every candidate."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        marks = list(tqdm(pool.map(_case_marks, [(source, str(loaded.root)) for source in sources]),
                          total=len(sources), desc="finding threshold", unit="case"))
    return threshold_from_marks(marks)


def threshold_from_marks(marks: Sequence[tuple[list[float], list[int], int]]) -> dict[str, Any]:
    """``fit_finding_threshold``'s rule on per-scan (scores, hit ids, nodules) of the calibration scans."""
    scores: list[float] = []
    hits: list[int] = []
    n_lesions = 0
    for case_scores, case_hits, case_nodules in marks:  # hit ids made unique across scans
        scores += case_scores
        hits += [h + n_lesions if h >= 0 else -1 for h in case_hits]
        n_lesions += case_nodules
    points = [operating_point(scores, hits, n_lesions, len(marks), t) for t in FINDING_THRESHOLDS]
    chosen = next((p for p in points if p["fp_per_scan"] <= CALIBRATION_FP_PER_SCAN), points[-1])
    return {"threshold": chosen["threshold"], "rule": f"lowest of {list(FINDING_THRESHOLDS)} with at most "
            f"{CALIBRATION_FP_PER_SCAN} false nodules per scan on the calibration split",
            "calibration_scans": len(marks), "calibration_nodules": n_lesions, "operating_points": points}


def train_threshold_only(*, bundle: str | Path | None) -> Path:
    """Refit only the reporting threshold of ``bundle`` on its recorded detection cohort's calibration split
    (same seed and split as its training); patch version. Every weight file stays as it is."""
    loaded = resolve_bundle(bundle, model.NAME)
    recorded = synthetic_training_data(loaded, "--threshold-only")
    seed, size = int(recorded["seed"]), int(recorded["detection_cases"])
    seeds = [seed * 100_003 + i for i in range(size)]
    fitted = fit_finding_threshold(loaded, [seeds[int(i)] for i in _split(size, seed)["C"]])
    version = bump_patch(loaded.version)
    metadata = {**loaded.metadata, "version": version,
                "finding_threshold_fit": {**fitted, "from_version": loaded.version,
                                          "command": "radfusion train nodule --threshold-only"}}
    write_bundle_configs(loaded.root, metadata, {**loaded.inference, "finding_threshold": fitted["threshold"]})
    log.info("nodule bundle %s: finding threshold %.2f (was %s), version %s", loaded.root, fitted["threshold"],
             loaded.inference["finding_threshold"], version)
    return loaded.root


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


@dataclass
class HeldOutCase:
    """One evaluation case: the detector's inputs as the loader read them and the truth on that volume's grid."""

    case_id: str
    inputs: DetectorInput
    nodules: list[AnnotatedNodule]
    details: dict[str, Any]  # what the per-case row records beyond the counts (acquisition, image format)


def _synthetic_held_out(seed: int, size: int) -> Iterator[HeldOutCase]:
    """Held-out synthetic cases (``HELDOUT_ACQUISITION``), each written as DICOM and read by the server's loader."""
    for i in tqdm(range(size), desc="held-out", unit="case"):
        case = generate_case(seed * 100_003 + i, ranges=HELDOUT_ACQUISITION)
        with tempfile.TemporaryDirectory() as tmp:
            inputs = load_inputs(Task.LUNG_NODULE, write_case_dicom(case, Path(tmp)), case.context)
        nodules = [AnnotatedNodule(n.label, n.center_voxel, n.diameter_mm, n.kind, n.malignant) for n in case.nodules]
        acquisition = case.acquisition
        yield HeldOutCase(case.case_id, inputs, nodules, {
            "slice_mm": round(acquisition.slice_mm, 2), "pixel_mm": round(acquisition.spacing[1], 3),
            "noise_hu": round(acquisition.noise_hu, 1), "blur_mm": round(acquisition.blur_mm, 2)})


def _dataset_held_out(cases: list[DatasetCase]) -> Iterator[HeldOutCase]:
    """Every series of a dataset (nodule-free ones too), read by the training reader (DICOM through
    ``load_series`` as the server reads it, MetaImage through its reader), nodules located on its grid."""
    for case in tqdm(cases, desc="dataset", unit="series"):
        scan = load_case(case)
        spacing = scan.volume.spacing_mm
        yield HeldOutCase(case.series_uid, DetectorInput(volume=scan.volume, context=scan.context), scan.nodules, {
            "format": "metaimage" if case.image.suffix == ".mhd" else "dicom",
            "slice_mm": round(spacing[0], 2), "pixel_mm": round(spacing[1], 3)})


def evaluate(*, bundle: str | Path | None, cohort_size: int | None, seed: int | None,
             out_dir: Path | None, data_dir: Path | None = None) -> dict[str, Any]:
    """Held-out evaluation through DICOM: FROC/CPM of the deep detector and the baseline, malignancy, fusion table.

    ``data_dir``: evaluate on a dataset in the training layout instead (an institution validating a
    model on its own scans); ``out_dir`` is then required, so the model card's files stay the project's.
    Type accuracy, malignancy and the fusion table use the nodules whose composition / malignancy the
    dataset gives; a metric the dataset cannot support is null, with the reason under ``skipped``.
    """
    if data_dir is not None and (out_dir is None or cohort_size is not None or seed is not None):
        raise AiEngineError("evaluate --data-dir needs --out-dir (the model card's metrics stay the project's) and "
                            "takes no --cohort-size or --seed (the dataset is the cohort)")
    torch.set_num_threads(1)
    loaded = resolve_bundle(bundle, model.NAME)
    seed = EVAL_SEED if seed is None else seed
    out = Path(out_dir) if out_dir is not None else MODEL_CARD_DIR
    if data_dir is None:
        size = cohort_size or EVAL_SIZE
        found = _run_held_out(loaded, _synthetic_held_out(seed, size))
        cohort = {"size": size, "seed": seed, "nodules": found.n_lesions, "acquisition": "HELDOUT_ACQUISITION",
                  "cases": found.rows}
    else:
        dataset = read_dataset(data_dir)
        if not any(c.nodules for c in dataset):
            raise AiEngineError(f"lung-nodule dataset {data_dir}: {ANNOTATIONS} names no nodule; FROC needs some")
        size = len(dataset)
        found = _run_held_out(loaded, _dataset_held_out(dataset))
        cohort = {**dataset_provenance(Path(data_dir), list(TABLES), **dataset_counts(dataset)),
                  "per_series": found.rows}
    return _write_evaluation(loaded, found, cohort, size, seed, out)


@dataclass
class HeldOutResults:
    """What the held-out loop collects: FROC marks of both detectors, per-nodule outputs, per-case rows."""

    deep_scores: list[float] = dataclasses.field(default_factory=list)
    deep_hits: list[int] = dataclasses.field(default_factory=list)
    base_scores: list[float] = dataclasses.field(default_factory=list)
    base_hits: list[int] = dataclasses.field(default_factory=list)
    n_lesions: int = 0
    embeddings: list[np.ndarray] = dataclasses.field(default_factory=list)  # nodules of known malignancy
    contexts: list[Any] = dataclasses.field(default_factory=list)
    malignant: list[int] = dataclasses.field(default_factory=list)
    fused: list[np.ndarray] = dataclasses.field(default_factory=list)
    kinds_true: list[int] = dataclasses.field(default_factory=list)  # nodules of known composition
    kinds_pred: list[int] = dataclasses.field(default_factory=list)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: {"deep": 0.0, "baseline": 0.0})


def _run_held_out(loaded: Bundle, cases: Iterator[HeldOutCase]) -> HeldOutResults:
    """Run the deployed detector and the baseline on every case and match their marks to the truth."""
    detector = model.NoduleFusion(loaded)
    baseline = NoduleBaseline()
    found = HeldOutResults()
    for case in cases:
        volume = case.inputs.volume
        assert volume is not None
        context = case.inputs.context
        spacing = np.array(volume.spacing_mm)
        truth = [(found.n_lesions + k, np.array(n.center_voxel), n.diameter_mm) for k, n in enumerate(case.nodules)]
        found.n_lesions += len(case.nodules)
        start = time.perf_counter()
        analysis = detector.analyse(volume)
        found.seconds["deep"] += time.perf_counter() - start
        scores, hits = _reported_marks(analysis, float(loaded.inference["nms_mm"]), spacing, truth)
        found.deep_scores += scores
        found.deep_hits += hits
        start = time.perf_counter()
        base = baseline.detect(case.inputs)
        found.seconds["baseline"] += time.perf_counter() - start
        found.base_scores += [f.score for f in base.findings]
        found.base_hits += _hit_ids(np.array([f.center_voxel for f in base.findings]).reshape(-1, 3), spacing, truth)
        # the fusion experiment and type accuracy use each nodule's truth-centred patch from the loaded series
        if case.nodules:
            centres_work = model.source_to_work(np.array([n.center_voxel for n in case.nodules]), analysis.grid.zoom)
            outputs = detector.run_network(model.extract_patches(analysis.grid.hu, centres_work))
            typed = np.array([n.kind is not None for n in case.nodules])
            found.kinds_pred += list(np.argmax(outputs[1][typed], axis=1))
            found.kinds_true += [model.TYPES.index(n.kind) for n in case.nodules if n.kind is not None]
            known = np.array([n.malignant is not None for n in case.nodules])
            if known.any():
                found.embeddings.append(outputs[4][known])
                found.contexts += [context] * int(known.sum())
                found.malignant += [int(n.malignant) for n in case.nodules if n.malignant is not None]
                found.fused.append(detector.fuse(outputs[4][known], context)[0])
        found.rows.append({"case": case.case_id, "nodules": len(case.nodules),
                           "candidates": int(len(analysis.points)), **case.details})
    return found


def _write_evaluation(loaded: Bundle, found: HeldOutResults, cohort: dict[str, Any], size: int, seed: int,
                      out: Path) -> dict[str, Any]:
    """metrics.json and the plots of one held-out run (``cohort``: its complete record); a metric the nodules
    cannot support is null, with the reason under ``skipped``."""
    deep = _froc_summary(found.deep_scores, found.deep_hits, found.n_lesions, size)
    deep["at_finding_threshold"] = operating_point(found.deep_scores, found.deep_hits, found.n_lesions, size,
                                                   float(loaded.inference["finding_threshold"]))
    base = _froc_summary(found.base_scores, found.base_hits, found.n_lesions, size)
    labels = np.array(found.malignant, dtype=int)
    probabilities = np.concatenate(found.fused) if found.fused else np.zeros(0)
    skipped: dict[str, str] = {}
    if not found.kinds_true:
        skipped["type_accuracy"] = "no nodule of known composition"
    if len(set(labels.tolist())) < 2:
        skipped["malignancy"] = skipped["fusion_experiment"] = (
            f"malignancy needs benign and malignant nodules; {len(labels)} of known malignancy, "
            f"{int(labels.sum())} malignant")
    weights = None
    fusion_table: dict[str, Any] | None = None
    if "fusion_experiment" not in skipped:
        fusion_table, weights = _fusion_experiment(loaded, np.concatenate(found.embeddings), found.contexts, labels,
                                                   seed)
    result: dict[str, Any] = {
        "cohort": cohort,
        "detection": {"nodule_fusion": {k: v for k, v in deep.items() if k != "curve"},
                      "nodule_baseline": {k: v for k, v in base.items() if k != "curve"}},
        "type_accuracy": (None if "type_accuracy" in skipped else
                          round(float(np.mean(np.array(found.kinds_true) == np.array(found.kinds_pred))), 4)),
        "malignancy": {"auc": None if "malignancy" in skipped else round(metrics.roc_auc(labels, probabilities), 4),
                       "ece": (None if "malignancy" in skipped else
                               round(metrics.expected_calibration_error(labels, probabilities), 4)),
                       "nodules": int(len(labels)), "malignant": int(labels.sum())},
        "fusion_experiment": fusion_table,
        "seconds_per_case": {k: round(v / size, 2) for k, v in found.seconds.items()},
        "bundle": {"version": loaded.version, "device_uid": loaded.device_uid},
        **({"skipped": skipped} if skipped else {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    plots.plot_froc({"nodule_fusion": deep["curve"], "nodule_baseline": base["curve"]}, out / "froc.png",
                    title="Held-out FROC (lung nodules)")
    if "malignancy" not in skipped:
        fpr, tpr, _ = metrics.roc_curve(labels, probabilities)
        plots.plot_roc({"malignancy (dynamic fusion)": (fpr, tpr)}, out / "roc_malignancy.png",
                       title="Held-out malignancy ROC")
        predicted, observed, _ = metrics.reliability_curve(labels, probabilities)
        plots.plot_calibration({"dynamic fusion": (predicted, observed)}, out / "calibration.png")
    if weights is not None:
        plots.plot_modality_weights({m: weights[:, j] for j, m in enumerate(("image", "clinical", "text"))},
                                    out / "modality_weights.png")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _fusion_experiment(bundle: Bundle, embedding: np.ndarray, contexts: list[Any], labels: np.ndarray,
                       seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """Malignancy AUC table of the three heads, and the dynamic head's weights of nodules with complete inputs."""
    heads = load_heads(bundle.root / "models", model.load_eager_model(bundle).fusion)
    data = FusionData.from_contexts(Task.LUNG_NODULE, embedding, contexts, labels, note_encoding_of(bundle.inference))
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
    recorded = synthetic_training_data(loaded, "--fusion-only")
    seed, size = int(recorded["seed"]), int(recorded["fusion_cases"])
    seed_everything(seed)
    network = model.load_eager_model(loaded).network
    heads, calibration, summary = fit_fusion(network, _cached_fusion_set(seed, size), seed, quick)
    models_dir = bundle_models_dir(loaded.root)
    _save_weights(models_dir, network, heads["dynamic"])
    summary["onnx_max_abs_diff"] = export_heads(heads, models_dir)
    version = write_refit_configs(loaded, calibration, summary, threshold_key=None,
                                  command="radfusion train nodule --fusion-only", note_encoding=NOTE_ENCODING)
    log.info("nodule bundle %s: fusion heads refitted, version %s", loaded.root, version)
    return loaded.root
