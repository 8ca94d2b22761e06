"""Intracranial hemorrhage on head CT: 2.5-D MONAI U-Net segmentation + clinical/text fusion head.

Pipeline (the same code path in training, evaluation and serving):

1. ``prepare``: the HU volume is resampled to the model grid — 2 mm pixels (anti-aliased),
   a 128 x 128 window centred on the head, 5 mm slabs (linear interpolation to 1.25 mm, then
   averaged) — so any matrix, field of view or slice thickness maps to the same grid.
2. The U-Net (``build_network``) sees each slab with its neighbours in a brain window plus
   the slab in a wide window (4 channels) and returns per-pixel probabilities of background
   and the five bleed types; ``segment`` averages them with those of the mirrored slabs
   (bundles from 1.6.0, ``flip_average``).
3. ``blood_probability`` keeps the blood probability only where the slab's HU can be acute
   blood (``BLOOD_HU``: not bone, calcification, CSF or air), and ``image_features`` pools it
   into 10 case features (max, top-k mean, volumes).
4. The fusion head (``ai_engine.fusion.FusionHead``, dynamic gating) combines them with the
   clinical features and the note; temperature scaling gives the case probability.
5. Connected components of the foreground probability that hold blood-density probability
   become findings (volume, side, region, subtype from the class probabilities), each with
   its mask and probability heat map in the source volume's shape, the case's modality
   weights and the logit's standard deviation.

Serving runs the bundle's ONNX models with ONNX Runtime on CPU, or the eager PyTorch weights
on CUDA when a GPU is present.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ai_engine.bundle import Bundle, load_bundle
from ai_engine.clinical_features import (
    NOTE_DIM,
    NoteVocabulary,
    context_text,
    encode_clinical,
    encode_note,
    feature_names,
    note_encoding_of,
)
from ai_engine.detectors.base import DetectorInput, lps_volume
from ai_engine.detectors.head_input import head_ct_notes, head_side
from ai_engine.detectors.runtime import FUSION_INPUTS, deploy_network_and_fusion
from ai_engine.errors import DetectorInputError
from ai_engine.fusion.calibration import sigmoid
from ai_engine.fusion.head import modality_weight_dict
from ai_engine.results import HEMORRHAGE_SUBTYPES as SUBTYPES
from ai_engine.results import SIDES, DetectorResult, Finding, FindingType, Task

if TYPE_CHECKING:
    import torch

    from ai_engine.volume import Volume
    from hl7_fhir.context import ClinicalContext

NAME = "ich_fusion"
MODEL_PIXEL_MM = 2.0
MODEL_SIZE = 128
SLAB_MM = 5.0
GROUP_MM = 10.0  # blood pieces closer than this are one bleed
Z_STEP_MM = 1.25
N_CLASSES = 1 + len(SUBTYPES)
IN_CHANNELS = 4
BRAIN_WINDOW = (-10.0, 110.0)
BLOOD_HU = (35.0, 110.0)  # acute blood on the 5 mm slabs, partial volume included (chosen on training splits)
WIDE_WINDOW = (-100.0, 1100.0)
IMAGE_FEATURES = ("max_prob", "top20_mean", "log_volume_ml", "log_confident_volume_ml", "log_largest_ml",
                  *(f"log_{s}_ml" for s in SUBTYPES))
BACKGROUND_HU = -1000.0
SLAB_BATCH = 16  # slabs per network call (bundle key slab_batch)
FLIP_AVERAGE = True  # bundles trained or refitted by this code average each slab with its mirror image
NOTES = ("deep fusion model trained on synthetic phantoms only; not validated on patient data; "
         "not for clinical use",)


@dataclass
class Prepared:
    """A volume on the model grid, and what is needed to map results back to the source voxels."""

    slabs: np.ndarray  # (S, 128, 128) HU
    zoomed_shape: tuple[int, int]
    crop: tuple[int, int]  # top-left of the 128 window in the zoomed grid (may be negative: padding)
    slab_of_slice: np.ndarray  # slab index of every source slice
    source_shape: tuple[int, int, int]
    slab_ml: float


def _in_plane(hu: np.ndarray, pixel_mm: tuple[float, float], order: int) -> np.ndarray:
    factors = (1.0, pixel_mm[0] / MODEL_PIXEL_MM, pixel_mm[1] / MODEL_PIXEL_MM)
    if order > 0 and min(factors[1:]) < 1.0:
        sigma = [0.0, *(max((1.0 / f - 1.0) / 2.0, 0.0) for f in factors[1:])]
        hu = ndimage.gaussian_filter(hu, sigma=sigma)
    return ndimage.zoom(hu, factors, order=order, mode="nearest", grid_mode=True)


def _crop_window(zoomed: np.ndarray) -> tuple[int, int]:
    head = (zoomed > -300.0).any(axis=0)
    if not head.any():
        return ((zoomed.shape[1] - MODEL_SIZE) // 2, (zoomed.shape[2] - MODEL_SIZE) // 2)
    cy, cx = ndimage.center_of_mass(head)
    return int(round(cy)) - MODEL_SIZE // 2, int(round(cx)) - MODEL_SIZE // 2


def _crop(zoomed: np.ndarray, crop: tuple[int, int], fill: float) -> np.ndarray:
    out = np.full((zoomed.shape[0], MODEL_SIZE, MODEL_SIZE), fill, dtype=np.float32)
    y0, x0 = crop
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + MODEL_SIZE, zoomed.shape[1]), min(x0 + MODEL_SIZE, zoomed.shape[2])
    if ye > ys and xe > xs:
        out[:, ys - y0:ye - y0, xs - x0:xe - x0] = zoomed[:, ys:ye, xs:xe]
    return out


def _to_slabs(stack: np.ndarray, slice_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation along z to 1.25 mm, then 5 mm slab means; and each source slice's slab."""
    n = stack.shape[0]
    extent = (n - 1) * slice_mm
    positions = np.arange(0.0, extent + 1e-6, Z_STEP_MM) / slice_mm if n > 1 else np.zeros(1)
    low = np.clip(np.floor(positions).astype(int), 0, n - 1)
    high = np.clip(low + 1, 0, n - 1)
    frac = (positions - low).astype(np.float32)[:, None, None]
    fine = stack[low] * (1.0 - frac) + stack[high] * frac
    per_slab = int(round(SLAB_MM / Z_STEP_MM))
    n_slabs = max(int(np.ceil(fine.shape[0] / per_slab)), 1)
    pad = n_slabs * per_slab - fine.shape[0]
    if pad:
        fine = np.concatenate([fine, np.repeat(fine[-1:], pad, axis=0)])
    slabs = fine.reshape(n_slabs, per_slab, *fine.shape[1:]).mean(axis=1)
    slab_of_slice = np.minimum((np.arange(n) * slice_mm / SLAB_MM).astype(int), n_slabs - 1)
    return slabs.astype(np.float32), slab_of_slice


def prepare(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> Prepared:
    """Resample an HU volume (z, y, x) to the model grid (see module docstring)."""
    zoomed = _in_plane(hu.astype(np.float32, copy=False), (spacing_mm[1], spacing_mm[2]), order=1)
    crop = _crop_window(zoomed)
    slabs, slab_of_slice = _to_slabs(_crop(zoomed, crop, BACKGROUND_HU), spacing_mm[0])
    return Prepared(slabs, (zoomed.shape[1], zoomed.shape[2]), crop, slab_of_slice, tuple(hu.shape),  # type: ignore[arg-type]
                    MODEL_PIXEL_MM * MODEL_PIXEL_MM * SLAB_MM / 1000.0)


def prepare_labels(labels: np.ndarray, spacing_mm: tuple[float, float, float], prepared: Prepared) -> np.ndarray:
    """Bleed labels (0..5) of the source volume on the model grid (class with the largest share)."""
    shares = np.zeros((N_CLASSES, *prepared.slabs.shape), dtype=np.float32)
    for value in np.unique(labels[labels > 0]):
        zoomed = _in_plane((labels == value).astype(np.float32), (spacing_mm[1], spacing_mm[2]), order=1)
        shares[int(value)], _ = _to_slabs(_crop(zoomed, prepared.crop, 0.0), spacing_mm[0])
    label = shares.argmax(axis=0).astype(np.uint8)
    label[shares.sum(axis=0) < 0.4] = 0  # a voxel needs a real share of blood to count
    return label


def network_inputs(slabs: np.ndarray) -> np.ndarray:
    """(S, 4, 128, 128) float32: previous / current / next slab in the brain window, current in a wide window."""
    brain = (np.clip(slabs, *BRAIN_WINDOW) - BRAIN_WINDOW[0]) / (BRAIN_WINDOW[1] - BRAIN_WINDOW[0])
    wide = (np.clip(slabs, *WIDE_WINDOW) - WIDE_WINDOW[0]) / (WIDE_WINDOW[1] - WIDE_WINDOW[0])
    previous = np.concatenate([brain[:1], brain[:-1]])
    following = np.concatenate([brain[1:], brain[-1:]])
    return np.stack([previous, brain, following, wide], axis=1).astype(np.float32)


def segment(run: Callable[[np.ndarray], np.ndarray], slabs: np.ndarray, batch: int, flip_average: bool
            ) -> np.ndarray:
    """Class probabilities (S, 6, H, W) of ``slabs`` (HU), ``run`` mapping network inputs to logits in batches.

    ``flip_average``: also segment the left-right mirror image and average the two probability
    maps (test-time augmentation: a head is nearly symmetric, noise and streaks are not, so a
    speck the network sees in one orientation only is halved).
    """
    def probabilities(inputs: np.ndarray) -> np.ndarray:
        return softmax(np.concatenate([run(inputs[i:i + batch]) for i in range(0, len(inputs), batch)]))

    inputs = network_inputs(slabs)
    probs = probabilities(inputs)
    if flip_average:
        probs = 0.5 * (probs + probabilities(np.ascontiguousarray(inputs[..., ::-1]))[..., ::-1])
    return probs


def build_network() -> torch.nn.Module:
    """The 2-D MONAI U-Net (about 0.2 M parameters)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=IN_CHANNELS, out_channels=N_CLASSES, channels=(16, 32, 64, 128),
                strides=(2, 2, 2), num_res_units=1)


def blood_probability(probs: np.ndarray, slabs: np.ndarray, blood_hu: tuple[float, float] | None
                      ) -> np.ndarray:
    """Foreground probability (S, H, W) of ``probs`` (S, 6, H, W), zero where the slab HU is outside ``blood_hu``.

    A voxel of skull base, calcification or CSF cannot be acute blood whatever the network says.
    ``None``: no HU gate (bundles before 1.2.0, whose fusion heads learned ungated features).
    """
    foreground = 1.0 - probs[:, 0]
    if blood_hu is None:
        return foreground
    return foreground * ((slabs >= blood_hu[0]) & (slabs <= blood_hu[1]))


def image_features(probs: np.ndarray, foreground: np.ndarray, slab_ml: float) -> np.ndarray:
    """Case features (IMAGE_FEATURES order) pooled from class probabilities (S, 6, H, W) and ``blood_probability``.

    Volumes are counted on hard masks (foreground >= 0.5, or >= 0.8 for the confident one),
    so a diffuse haze of small probabilities over the whole brain adds nothing.
    """
    flat = np.sort(foreground.ravel())[::-1]
    hard = foreground >= 0.5
    labels, count = ndimage.label(hard)
    largest = float(np.bincount(labels.ravel())[1:].max()) * slab_ml if count else 0.0
    kind = probs[:, 1:].argmax(axis=1)
    per_type = [np.log1p(float((hard & (kind == c)).sum()) * slab_ml) for c in range(N_CLASSES - 1)]
    return np.array([flat[0], flat[:20].mean(), np.log1p(float(hard.sum()) * slab_ml),
                     np.log1p(float((foreground >= 0.8).sum()) * slab_ml), np.log1p(largest), *per_type],
                    dtype=np.float32)


def fusion_inputs(context: ClinicalContext | None, note_encoding: str, note_vocabulary: NoteVocabulary | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clinical values, their mask, note vector and note mask of one case, each with a batch axis of 1."""
    values, present = encode_clinical(Task.ICH, context)
    note, note_present = encode_note(context_text(context), encoding=note_encoding, vocabulary=note_vocabulary)
    return (values[None], present[None].astype(np.float32), note[None],
            np.array([1.0 if note_present else 0.0], dtype=np.float32))


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


@dataclass
class ImageStage:
    """Result of the image network on one volume."""

    prepared: Prepared
    probs: np.ndarray  # (S, 6, 128, 128)
    blood: np.ndarray  # (S, 128, 128): blood_probability
    features: np.ndarray  # (len(IMAGE_FEATURES),)


@dataclass
class FusionStage:
    """Result of the fusion head on one case."""

    probability: float
    logit: float
    logit_sd: float
    weights: dict[str, float]


class IchFusion:
    """Deep ICH detector (module docstring); ``bundle`` defaults to the packaged ``ich_fusion`` bundle."""

    name = NAME
    task = Task.ICH

    def __init__(self, bundle: Bundle | None = None, device: str = "auto") -> None:
        self.bundle = bundle or load_bundle(NAME)
        self.algorithm = self.bundle.algorithm()
        params = self.bundle.inference
        self.temperature = float(params["temperature"])
        self.threshold = float(params["case_threshold"])
        self.component_threshold = float(params["component_threshold"])
        self.min_component_ml = float(params["min_component_ml"])
        self.blood_hu = tuple(params["blood_hu"]) if "blood_hu" in params else None
        self.batch = int(params.get("slab_batch", SLAB_BATCH))
        self.flip_average = bool(params.get("flip_average", False))
        self.note_encoding = note_encoding_of(params)
        if params.get("clinical_features") != feature_names(Task.ICH):
            raise DetectorInputError(f"{NAME}: bundle clinical features {params.get('clinical_features')} differ "
                                     f"from this code's {feature_names(Task.ICH)}; retrain the bundle")
        self.network, self.fusion = deploy_network_and_fusion(
            self.bundle.deployed_path, ["slabs"], self.bundle.root / "models" / params["fusion_deployed"],
            threads=int(params.get("onnx_threads", 2)), device=device, load_eager=lambda: load_eager_model(self.bundle))

    def image_stage(self, volume: Volume) -> ImageStage:
        """Segmentation probabilities and pooled features of ``volume``."""
        prepared = prepare(volume.array, volume.spacing_mm)
        probs = segment(lambda x: self.network(slabs=x)[0], prepared.slabs, self.batch, self.flip_average)
        blood = blood_probability(probs, prepared.slabs, self.blood_hu)
        return ImageStage(prepared, probs, blood, image_features(probs, blood, prepared.slab_ml))

    def fusion_stage(self, features: np.ndarray, context: ClinicalContext | None) -> FusionStage:
        """Calibrated case probability, logit SD and modality weights from image features and context."""
        inputs = (features[None].astype(np.float32),
                  *fusion_inputs(context, self.note_encoding, self.bundle.note_vocabulary))
        feeds = dict(zip(FUSION_INPUTS, inputs, strict=True))
        logit, weights, log_var = self.fusion(**feeds)
        value = float(logit[0])
        return FusionStage(float(sigmoid(np.array(value / self.temperature))), value,
                           float(np.exp(float(log_var[0]) / 2.0)), modality_weight_dict(weights[0]))

    def detect(self, inputs: DetectorInput) -> DetectorResult:
        """Segment, fuse with the clinical context, and report bleeds (none when the case is negative)."""
        volume, reorientation = lps_volume(inputs, NAME, "head")
        coverage = head_ct_notes(volume, NAME)
        image = self.image_stage(volume)
        fusion = self.fusion_stage(image.features, inputs.context)
        positive = fusion.probability >= self.threshold
        findings = self.findings(volume, image, fusion) if positive else []
        notes = [*NOTES, f"case probability {fusion.probability:.3f} (threshold {self.threshold:.3f}), "
                         f"logit SD {fusion.logit_sd:.2f}",
                 "clinical context: " + ("not available" if inputs.context is None else inputs.context.status),
                 *coverage]
        result = DetectorResult(task=self.task, algorithm=self.algorithm, findings=findings,
                                case_score=fusion.probability, positive=positive, notes=notes)
        return reorientation.restore(result)

    def findings(self, volume: Volume, image: ImageStage, fusion: FusionStage) -> list[Finding]:
        """Bleeds of a positive case (blood voxels grouped by ``bleed_groups``), mapped back to the source voxels.

        A group's extent is its foreground, partial volume with the skull included; it is kept
        when it holds at least ``min_component_ml`` of blood-density probability (``image.blood``).
        """
        foreground = 1.0 - image.probs[:, 0]
        threshold = self.component_threshold
        if not (image.blood >= threshold).any():  # a positive case always shows where: the most suspicious region
            threshold = float(image.blood.max()) * 0.6
        labels, reach, count = bleed_groups(foreground >= threshold)
        findings = []
        midline = _midline_column(image.prepared.slabs)
        for index in range(1, count + 1):
            component = labels == index
            if float(image.blood[component].sum()) * image.prepared.slab_ml < self.min_component_ml:
                continue
            source_mask = _to_source(component.astype(np.float32), image.prepared) >= 0.5
            if not source_mask.any():
                continue
            class_mass = np.moveaxis(image.probs[:, 1:], 1, 0)[:, component].sum(axis=1)
            subtype = SUBTYPES[int(np.argmax(class_mass))]
            center = tuple(float(c) for c in ndimage.center_of_mass(source_mask))
            zc, yc, _ = ndimage.center_of_mass(component)
            side = head_side(np.nonzero(component)[2], midline)
            location = f"{SIDES[side]} {_region(yc, component, image.prepared.slabs)} {subtype}"
            findings.append(Finding(
                finding_type=FindingType.HEMORRHAGE, score=float(image.blood[component].max()),
                center_voxel=center, center_mm=volume.voxel_to_patient(center), location=location, laterality=side,
                volume_ml=float(source_mask.sum()) * volume.voxel_volume_ml, mask=source_mask,
                heatmap=_to_source(foreground * (reach == index), image.prepared),
                measurements={"case_probability": fusion.probability, "logit_sd": fusion.logit_sd,
                                            "mean_hu": float(volume.array[source_mask].mean())},
                attributes={"subtype": subtype,
                            "heatmap": f"segmentation foreground probability within {GROUP_MM:g} mm of the bleed"},
                modality_weights=dict(fusion.weights)))
        return sorted(findings, key=lambda f: -(f.volume_ml or 0.0))


def bleed_groups(blood: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Blood voxels (model grid) labelled so that pieces less than ``GROUP_MM`` apart form one bleed.

    Subarachnoid blood in neighbouring sulci, or a thin crescent broken up by partial volume, is
    one bleed to a radiologist, not a dozen. Returns the labelled blood, the labelled reach (the
    voxels within ``GROUP_MM`` of each bleed: the region its heat map shows) and the count.
    """
    if not blood.any():
        return np.zeros(blood.shape, dtype=np.int32), np.zeros(blood.shape, dtype=np.int32), 0
    distance = ndimage.distance_transform_edt(~blood, sampling=(SLAB_MM, MODEL_PIXEL_MM, MODEL_PIXEL_MM))
    reach, count = ndimage.label(distance <= GROUP_MM / 2)
    return np.where(blood, reach, 0), reach, count


def _midline_column(slabs: np.ndarray) -> float:
    head = (slabs > -300.0).any(axis=0)
    return float(ndimage.center_of_mass(head)[1]) if head.any() else MODEL_SIZE / 2


def _region(row: float, component: np.ndarray, slabs: np.ndarray) -> str:
    rows = np.flatnonzero((slabs > -300.0).any(axis=(0, 2)))
    fraction = (row - rows.min()) / max(rows.max() - rows.min(), 1) if rows.size else 0.5
    return "frontal" if fraction < 0.35 else "occipital" if fraction > 0.75 else "parietotemporal"


def _to_source(grid: np.ndarray, prepared: Prepared) -> np.ndarray:
    """A (S, 128, 128) model-grid map back on the source voxels (z, y, x), linear in-plane."""
    zh, zw = prepared.zoomed_shape
    _, rows, cols = prepared.source_shape
    y0, x0 = prepared.crop
    canvas = np.zeros((grid.shape[0], zh, zw), dtype=np.float32)
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + MODEL_SIZE, zh), min(x0 + MODEL_SIZE, zw)
    canvas[:, ys:ye, xs:xe] = grid[:, ys - y0:ye - y0, xs - x0:xe - x0]
    used = np.unique(prepared.slab_of_slice)
    upsampled = {int(s): ndimage.zoom(canvas[s], (rows / zh, cols / zw), order=1, grid_mode=True, mode="nearest")
                 for s in used if canvas[s].any()}
    out = np.zeros(prepared.source_shape, dtype=np.float32)
    for k, s in enumerate(prepared.slab_of_slice):
        if int(s) in upsampled:
            out[k] = np.clip(upsampled[int(s)], 0.0, 1.0)
    return out


def build_model(mode: str = "dynamic") -> torch.nn.Module:
    """The whole eager model: ``.network`` (U-Net) and ``.fusion`` (FusionHead) in one state dict."""
    from torch import nn

    from ai_engine.fusion.head import FusionHead

    model = nn.Module()
    model.network = build_network()
    model.fusion = FusionHead(len(IMAGE_FEATURES), len(feature_names(Task.ICH)), NOTE_DIM, mode=mode)
    return model


def load_eager_model(bundle: Bundle, mode: str = "dynamic") -> torch.nn.Module:
    """The eager PyTorch model from the bundle's ``model.pt`` (for GPU serving and parity tests)."""
    import torch

    model = build_model(mode)
    model.load_state_dict(torch.load(bundle.weights_path, map_location="cpu", weights_only=True))
    return model.eval()
