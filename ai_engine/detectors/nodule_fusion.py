"""Lung nodules on chest CT, deep fusion detector (trained on synthetic phantoms).

Pipeline: resample the series to an isotropic working grid; lung mask from the classical
baseline (closed, so juxtapleural nodules stay inside); high-recall candidates from a
multi-scale Laplacian-of-Gaussian blob filter; a small 3D CNN on a 32^3 patch around each
candidate gives nodule-vs-mimic, type (solid / part-solid / ground-glass), a patch
segmentation (diameter, volume, solid core) and an embedding; the fusion head combines that
embedding with the clinical variables and the note into a malignancy probability with
per-case modality weights and an uncertainty. Lung-RADS follows from size and type. The network
and the fusion head run together as one deployed model (ONNX Runtime or TorchScript).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.networks.blocks import Convolution
from scipy import ndimage
from torch import nn

from ai_engine.bundle import Bundle, load_bundle
from ai_engine.clinical_features import (
    NOTE_DIM,
    context_text,
    encode_clinical,
    encode_note,
    feature_names,
    note_encoding_of,
)
from ai_engine.detectors.base import DetectorInput, lps_volume
from ai_engine.detectors.nodule_baseline import (
    NoduleBaseline,
    body_midline_x,
    cut_off_sides,
    lung_side,
    refuse_slice_gaps,
)
from ai_engine.detectors.runtime import deploy_network_and_fusion
from ai_engine.errors import DetectorInputError
from ai_engine.fusion.head import FusionHead, modality_weight_dict
from ai_engine.results import SIDES, DetectorResult, Finding, FindingType, Task
from ai_engine.volume import Volume

if TYPE_CHECKING:
    from hl7_fhir.context import ClinicalContext

NAME = "nodule_fusion"
WORK_MM = 1.25
VOXEL_ML = WORK_MM**3 / 1000.0
SOLID_HU = -300.0  # the solid core of a part-solid nodule
PATCH = 32
PATCH_HU_RANGE = (-1000.0, 400.0)
LOG_SIGMAS_MM = (1.5, 2.2, 3.2, 4.6, 6.8)
COARSE_FROM_MM = 3.0
MAX_CANDIDATES = 400
CORE_TISSUE_HU = -450.0
CORE_RADIUS_MM = 2.0
MERGE_MM = 2.5
MIN_CANDIDATE_RESPONSE = 60.0
CLOSING_MM = 15.0
THICK_SLICE_MM = 3.0  # a nodule-free chest at 5 mm drew 10 false nodules on vessel segments (session 25)
MIN_LUNG_ML = 50.0  # less lung than this: nothing to search (not a chest, or the lungs cut off by the image border)
BLOB_RAMP_HU = (-820.0, -680.0)
TYPES = ("solid", "part-solid", "ground-glass")
EMBED_DIM = 32
OUTPUTS = ("nodule_logit", "type_logits", "seg_logits", "cam", "embedding")


@dataclass
class WorkGrid:
    """The series resampled to ``WORK_MM`` isotropic voxels, and how it maps back to the source."""

    hu: np.ndarray
    lungs: np.ndarray
    zoom: tuple[float, float, float]  # work voxel = source voxel * zoom

    def to_source(self, work_zyx: np.ndarray) -> np.ndarray:
        """Work-grid voxel coordinates -> source voxel coordinates."""
        return work_to_source(work_zyx, self.zoom)


def source_to_work(zyx: np.ndarray, zoom: tuple[float, float, float]) -> np.ndarray:
    """Source voxel coordinates -> work-grid voxel coordinates (voxel centres, as ``ndimage.zoom(grid_mode=True)``)."""
    return (np.asarray(zyx, dtype=np.float64) + 0.5) * np.asarray(zoom) - 0.5


def work_to_source(zyx: np.ndarray, zoom: tuple[float, float, float]) -> np.ndarray:
    """Inverse of ``source_to_work``."""
    return (np.asarray(zyx, dtype=np.float64) + 0.5) / np.asarray(zoom) - 0.5


def resample_to_work(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU array resampled (linear) to ``WORK_MM`` isotropic voxels, and the zoom factors used."""
    factors = tuple(s / WORK_MM for s in volume.spacing_mm)
    shape = tuple(max(int(round(n * f)), 1) for n, f in zip(volume.array.shape, factors, strict=True))
    zoom = tuple(o / n for o, n in zip(shape, volume.array.shape, strict=True))
    hu = ndimage.zoom(volume.array, zoom, order=1, grid_mode=True, mode="nearest")
    return hu.astype(np.float32, copy=False), zoom  # type: ignore[return-value]


def work_lung_mask(hu: np.ndarray) -> np.ndarray:
    """Baseline lung mask on the work grid, closed by ``CLOSING_MM`` so pleural bulges stay inside."""
    volume = Volume(array=hu, spacing_mm=(WORK_MM,) * 3, origin_mm=(0.0, 0.0, 0.0), direction=np.eye(3),
                    sop_instance_uids=[], paths=[], series_instance_uid="", study_instance_uid="")
    lungs = NoduleBaseline().lung_mask(volume)
    coarse = lungs[::2, ::2, ::2]
    reach = CLOSING_MM / (2 * WORK_MM)
    grown = ndimage.distance_transform_edt(~coarse) <= reach
    closed = ndimage.distance_transform_edt(grown) > reach
    closed = np.repeat(np.repeat(np.repeat(closed, 2, 0), 2, 1), 2, 2)[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    return closed | lungs


@dataclass
class BlobMaps:
    """Scale-normalised negative Laplacian (bright blobs), max over scales; its scale index; the smoothed images."""

    response: np.ndarray
    scale_index: np.ndarray
    smoothed: list[np.ndarray]  # per scale; scales from COARSE_FROM_MM on live on a 2x coarser grid


def _ramp(hu: np.ndarray) -> np.ndarray:
    """HU mapped to 0..1000 between ``BLOB_RAMP_HU`` (ground glass and soft tissue both saturate)."""
    low, high = BLOB_RAMP_HU
    return (np.clip(hu, low, high) - low) * np.float32(1000.0 / (high - low))


def _coarse(sigma_mm: float) -> bool:
    return sigma_mm >= COARSE_FROM_MM


def blob_maps(hu: np.ndarray, lungs: np.ndarray) -> BlobMaps:
    """Multi-scale blob filter on the ramped image: Gaussian smoothing, then the discrete Laplacian.

    The ramp makes a ground-glass nodule answer almost as strongly as a solid one of its size,
    and a ball beats a tube of the same calibre; outside the (closed) lung mask the image is set
    to lung grey, so a nodule against the pleura is a free half-ball rather than a bump on a wall.
    Large scales run on a 2x coarser grid.
    """
    ramped = _ramp(hu) * lungs  # the chest wall becomes lung-dark: a juxtapleural nodule stands free
    coarse = ramped[::2, ::2, ::2]
    best = np.full(hu.shape, -np.inf, dtype=np.float32)
    index = np.zeros(hu.shape, dtype=np.uint8)
    smoothed = []
    for i, sigma_mm in enumerate(LOG_SIGMAS_MM):
        if _coarse(sigma_mm):
            sigma = sigma_mm / (2 * WORK_MM)
            g = ndimage.gaussian_filter(coarse, sigma, mode="nearest")
            small = -ndimage.laplace(g) * np.float32(sigma**2)
            response = np.repeat(np.repeat(np.repeat(small, 2, 0), 2, 1), 2, 2)[
                : hu.shape[0], : hu.shape[1], : hu.shape[2]]
        else:
            sigma = sigma_mm / WORK_MM
            g = ndimage.gaussian_filter(ramped, sigma, mode="nearest")
            response = -ndimage.laplace(g) * np.float32(sigma**2)
        smoothed.append(g)
        better = response > best
        best[better] = response[better]
        index[better] = i
    best[~lungs] = 0.0
    return BlobMaps(response=best, scale_index=index, smoothed=smoothed)


def blobness(maps: BlobMaps, points: np.ndarray) -> np.ndarray:
    """Per point: smallest over largest Hessian eigenvalue magnitude at its best scale.

    1 for a ball, about 0 for a tube or a sheet, 0 where the image is not curved down in every
    direction. Central differences of the smoothed image, only at the points.
    """
    out = np.zeros(len(points), dtype=np.float32)
    for i, sigma_mm in enumerate(LOG_SIGMAS_MM):
        chosen = np.where(maps.scale_index[tuple(points.T)] == i)[0]
        if chosen.size == 0:
            continue
        g = maps.smoothed[i]
        p = points[chosen] // 2 if _coarse(sigma_mm) else points[chosen]
        p = np.clip(p, 1, np.array(g.shape) - 2)
        hessian = np.empty((len(p), 3, 3), dtype=np.float64)
        centre = g[tuple(p.T)].astype(np.float64)
        unit = np.eye(3, dtype=int)
        for a in range(3):
            plus, minus = g[tuple((p + unit[a]).T)], g[tuple((p - unit[a]).T)]
            hessian[:, a, a] = plus + minus - 2 * centre
            for b in range(a + 1, 3):
                d = unit[a] + unit[b]
                e = unit[a] - unit[b]
                value = (g[tuple((p + d).T)] + g[tuple((p - d).T)] - g[tuple((p + e).T)] - g[tuple((p - e).T)]) / 4
                hessian[:, a, b] = hessian[:, b, a] = value
        eig = np.linalg.eigvalsh(hessian)
        ratio = np.where(eig[:, -1] < 0, eig[:, -1] / np.minimum(eig[:, 0], -1e-9), 0.0)
        out[chosen] = ratio
    return out


def core_centres(hu: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Centres of soft-tissue cores thicker than ``CORE_RADIUS_MM`` inside the lungs (work voxels).

    Eroding the soft tissue cuts a juxtavascular nodule loose from the thinner vessel it touches,
    which the blob filter ranks poorly; each remaining core's deepest voxel is a candidate.
    """
    box = ndimage.find_objects(lungs.astype(np.uint8))
    if not box:
        return np.zeros((0, 3), dtype=int)
    region = box[0]
    tissue = (hu[region] > CORE_TISSUE_HU) & lungs[region]
    depth = ndimage.distance_transform_edt(tissue)
    cores = depth > CORE_RADIUS_MM / WORK_MM
    labels, count = ndimage.label(cores)
    if count == 0:
        return np.zeros((0, 3), dtype=int)
    deepest = ndimage.maximum_position(depth, labels, index=np.arange(1, count + 1))
    offset = np.array([s.start for s in region])
    return np.array(deepest, dtype=int).reshape(-1, 3) + offset


def candidates(hu: np.ndarray, lungs: np.ndarray, limit: int = MAX_CANDIDATES) -> np.ndarray:
    """Candidate centres (work voxels, int z, y, x): soft-tissue cores plus the best blob-filter peaks.

    Peaks are ranked by response times the square root of their blobness, so vessel segments and
    junctions fall behind round blobs; the best ``limit`` are kept, and peaks within
    ``MERGE_MM`` of a core are dropped as duplicates.
    """
    maps = blob_maps(hu, lungs)
    response = maps.response
    peaks = (response == ndimage.maximum_filter(response, size=3)) & (response > MIN_CANDIDATE_RESPONSE)
    points = np.argwhere(peaks)
    ranking = response[tuple(points.T)] * np.sqrt(blobness(maps, points))
    points = points[np.argsort(-ranking, kind="stable")[:limit]]
    cores = core_centres(hu, lungs)
    if len(cores) and len(points):
        near = np.min(np.linalg.norm(points[:, None, :] - cores[None, :, :], axis=2), axis=1) * WORK_MM
        points = points[near > MERGE_MM]
    return np.concatenate([cores, points]).astype(int)


def extract_patches(volume: np.ndarray, centers: np.ndarray, size: int = PATCH, raw: bool = False) -> np.ndarray:
    """float32 [N, 1, size, size, size] patches around ``centers`` (clipped into the volume).

    HU patches are scaled to 0..1 over PATCH_HU_RANGE with air outside the volume; ``raw``
    copies the values as they are (label volumes), with 0 outside.
    """
    low, high = PATCH_HU_RANGE
    half = size // 2
    padded = np.pad(volume, half, mode="constant", constant_values=0 if raw else low)
    out = np.empty((len(centers), 1, size, size, size), dtype=np.float32)
    centers = np.clip(np.rint(np.asarray(centers, dtype=np.float64)), 0, np.array(volume.shape) - 1).astype(int)
    for i, (z, y, x) in enumerate(centers.reshape(-1, 3)):
        out[i, 0] = padded[z: z + size, y: y + size, x: x + size]
    if raw:
        return out
    return (np.clip(out, low, high) - low) / (high - low)


class NodulePatchNet(nn.Module):
    """Small 3D encoder-decoder (MONAI convolution blocks) on a 32^3 patch, cheap enough for CPU.

    The stem strides to 16^3 at once. Outputs: nodule-vs-mimic logit [B]; type logits [B, 3];
    segmentation logits at half resolution [B, 16, 16, 16]; class activation map of the nodule
    logit [B, 4, 4, 4] (CAM, Zhou et al. 2016: the linear head's weights applied to the last
    feature maps, an exact decomposition of the global-average-pooled logit); embedding
    [B, EMBED_DIM] for the fusion head.
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width

        def conv(i: int, o: int, stride: int = 1) -> Convolution:
            return Convolution(3, i, o, strides=stride, kernel_size=3, act="PRELU", norm="BATCH")

        self.enc1 = nn.Sequential(conv(1, w, 2), conv(w, w))
        self.enc2 = nn.Sequential(conv(w, 2 * w, 2), conv(2 * w, 2 * w))
        self.enc3 = nn.Sequential(conv(2 * w, EMBED_DIM, 2), conv(EMBED_DIM, EMBED_DIM))
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="trilinear"), conv(EMBED_DIM, 2 * w))
        self.dec2 = conv(4 * w, 2 * w)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="trilinear"), conv(2 * w, w))
        self.dec1 = conv(2 * w, w)
        self.seg = nn.Conv3d(w, 1, kernel_size=1)
        self.nodule = nn.Linear(EMBED_DIM, 1)
        self.types = nn.Linear(EMBED_DIM, len(TYPES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, 1, 32, 32, 32] (HU scaled to 0..1) -> the outputs named in ``OUTPUTS``."""
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up2(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        embedding = e3.mean(dim=(2, 3, 4))
        cam = torch.einsum("c,bcxyz->bxyz", self.nodule.weight[0], e3)
        return (self.nodule(embedding)[:, 0], self.types(embedding), self.seg(d1)[:, 0], cam, embedding)


def lung_rads(kind: str, diameter_mm: float, solid_core_mm: float, malignancy: float) -> str:
    """Lung-RADS v2022 category of a baseline screening nodule from its type and size (mm).

    Solid: <6 -> 2, 6-<8 -> 3, 8-<15 -> 4A, >=15 -> 4B. Part-solid: total <6 -> 2, solid core
    <6 -> 3, 6-<8 -> 4A, >=8 -> 4B. Ground glass: <30 -> 2, >=30 -> 3. A category 3 or 4 nodule
    whose malignancy probability is at least 0.5 becomes 4X (additional suspicious features).
    """
    if kind == "solid":
        category = "2" if diameter_mm < 6 else "3" if diameter_mm < 8 else "4A" if diameter_mm < 15 else "4B"
    elif kind == "part-solid":
        if diameter_mm < 6:
            category = "2"
        else:
            category = "3" if solid_core_mm < 6 else "4A" if solid_core_mm < 8 else "4B"
    elif kind == "ground-glass":
        category = "2" if diameter_mm < 30 else "3"
    else:
        raise DetectorInputError(f"nodule type must be one of {TYPES}, got {kind!r}")
    return "4X" if category != "2" and malignancy >= 0.5 else category


@dataclass
class CandidateOutputs:
    """Every candidate of one series on the work grid with the network's outputs (before thresholds)."""

    grid: WorkGrid
    points: np.ndarray  # [N, 3] work voxels
    probability: np.ndarray  # [N] nodule-vs-mimic probability
    type_probabilities: np.ndarray  # [N, 3]
    seg_logits: np.ndarray  # [N, 16, 16, 16]
    cam: np.ndarray  # [N, 4, 4, 4]
    embedding: np.ndarray  # [N, EMBED_DIM]


class NoduleFusion:
    """Deep fusion lung-nodule detector running its bundle's deployed models (module docstring)."""

    name = NAME
    task = Task.LUNG_NODULE

    def __init__(self, bundle: Bundle | None = None, device: str = "auto") -> None:
        self.bundle = bundle or load_bundle(NAME)
        self.algorithm = self.bundle.algorithm()
        self.parameters = self.bundle.inference
        models = self.bundle.root / "models"
        self.network, self.fusion = deploy_network_and_fusion(
            models / self.parameters["deployed"], ["patches"], models / self.parameters["fusion_deployed"],
            threads=int(self.parameters["onnx_threads"]), device=device,
            load_eager=lambda: load_eager_model(self.bundle))

    def analyse(self, volume: Volume) -> CandidateOutputs:
        """Candidates of ``volume`` and the patch network's outputs for each (used by detect and evaluation).

        The nodule-vs-mimic score is the mean logit over the patch and its flips along the bundle's
        ``flip_axes`` (test-time augmentation); segmentation, type, CAM and embedding come from the
        patch as it is, the input the fusion head was trained on.
        """
        hu, zoom = resample_to_work(volume)
        grid = WorkGrid(hu=hu, lungs=work_lung_mask(hu), zoom=zoom)
        points = candidates(hu, grid.lungs, int(self.parameters["max_candidates"]))
        if not len(points):
            empty = np.zeros((0,), dtype=np.float32)
            return CandidateOutputs(grid, points.reshape(0, 3), empty, np.zeros((0, 3)), np.zeros((0, 16, 16, 16)),
                                    np.zeros((0, 4, 4, 4)), np.zeros((0, EMBED_DIM)))
        patches = extract_patches(hu, points)
        outputs = self.run_network(patches)
        flipped = [self.run_network(np.flip(patches, axis=axis).copy())[0] for axis in self.parameters["flip_axes"]]
        nodule_logit = np.mean([outputs[0], *flipped], axis=0)
        _, type_logits, seg_logits, cam, embedding = outputs
        types = np.exp(type_logits - type_logits.max(axis=1, keepdims=True))
        return CandidateOutputs(grid, points, 1.0 / (1.0 + np.exp(-nodule_logit)),
                                types / types.sum(axis=1, keepdims=True), seg_logits, cam, embedding)

    def run_network(self, patches: np.ndarray) -> list[np.ndarray]:
        """The deployed patch network on float32 [N, 1, 32, 32, 32] patches, in batches."""
        batch = int(self.parameters["batch"])
        parts = [self.network(patches=patches[i: i + batch]) for i in range(0, len(patches), batch)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(OUTPUTS))]

    def fuse(self, embedding: np.ndarray, context: ClinicalContext | None) -> tuple[np.ndarray, ...]:
        """Calibrated malignancy probability, modality weights and logit standard deviation per embedding."""
        clinical, present = encode_clinical(Task.LUNG_NODULE, context)
        text, text_present = encode_note(context_text(context), encoding=note_encoding_of(self.parameters),
                                         vocabulary=self.bundle.note_vocabulary)
        n = len(embedding)
        logit, weights, log_var = self.fusion(
            image=embedding.astype(np.float32), clinical=np.tile(clinical, (n, 1)),
            clinical_present=np.tile(present.astype(np.float32), (n, 1)), text=np.tile(text, (n, 1)),
            text_present=np.full(n, float(text_present), dtype=np.float32))
        probability = 1.0 / (1.0 + np.exp(-logit / float(self.parameters["temperature"])))
        return probability, weights, np.exp(log_var / 2.0)

    def detect(self, inputs: DetectorInput) -> DetectorResult:
        """Nodules of ``inputs.volume`` with size, type, malignancy, Lung-RADS, mask, heat map and modality weights."""
        volume, reorientation = lps_volume(inputs, NAME, "chest")
        refuse_slice_gaps(volume, NAME)
        analysis = self.analyse(volume)
        lung_ml = float(analysis.grid.lungs.sum()) * VOXEL_ML
        if lung_ml < MIN_LUNG_ML:  # a negative here would say "no nodule" where nothing was searched
            raise DetectorInputError(f"{NAME}: the series shows {lung_ml:.0f} mL of lung (under {MIN_LUNG_ML:g} mL): "
                                     f"not a chest CT, or a field of view that cuts the lungs off at the image border")
        nodules = ranked_nodules(analysis, float(self.parameters["nms_mm"]),
                                 float(self.parameters["finding_threshold"]), int(self.parameters["max_findings"]))
        findings: list[Finding] = []
        if nodules:
            malignancy, weights, spread = self.fuse(analysis.embedding[[n.index for n in nodules]], inputs.context)
            midline_x = body_midline_x(volume)
            findings = [self._finding(volume, analysis, n, float(malignancy[j]), weights[j], float(spread[j]),
                                      midline_x) for j, n in enumerate(nodules)]
        case_score = max((f.score for f in findings), default=0.0)
        notes = [f"{len(analysis.points)} candidates examined on a {WORK_MM} mm isotropic grid",
                 "clinical context: " + ("used" if inputs.context is not None else "not available; image only")]
        notes += [f"the field of view cuts a lung off at the patient's {side}: lung beyond the image's edge was not "
                  f"searched" for side in cut_off_sides(volume)]
        thickness = max(volume.spacing_mm[0], volume.slice_thickness_mm or 0.0)  # overlapping slices are thicker
        if thickness > THICK_SLICE_MM:
            notes.append(f"slices of {thickness:.1f} mm, thicker than the 1-2.5 mm the network learned "
                         f"from: expect false nodules on vessels (model card)")
        result = DetectorResult(task=self.task, algorithm=self.algorithm, findings=findings, case_score=case_score,
                                positive=bool(findings), notes=notes)
        return reorientation.restore(result)

    def _finding(self, volume: Volume, analysis: CandidateOutputs, nodule: LocalisedNodule, malignancy: float,
                 weights: np.ndarray, spread: float, midline_x: float) -> Finding:
        """The finding of one localised nodule.

        A segmentation too small to cover a source voxel leaves the finding without a mask (a point
        in the SR) but with its measured size.
        """
        grid = analysis.grid
        i, point, mask = nodule.index, analysis.points[nodule.index], nodule.mask
        patch_hu = extract_patches(grid.hu, point[None], raw=True)[0, 0]
        core = sphere_diameter_mm(float((mask & (patch_hu > SOLID_HU)).sum()) * VOXEL_ML)
        diameter = nodule.diameter_mm
        kind = TYPES[int(np.argmax(analysis.type_probabilities[i]))]
        cam = ndimage.zoom(analysis.cam[i], PATCH / analysis.cam.shape[1], order=1, grid_mode=True, mode="nearest")
        cam = np.clip(cam, 0.0, None)
        cam = cam / cam.max() if cam.max() > 0 else cam
        centre = tuple(float(c) for c in grid.to_source(nodule.centre_work))
        source_mask, source_heat = _to_source(volume.array.shape, grid, point, mask, cam)
        side = lung_side(volume, centre, midline_x)
        return Finding(
            finding_type=FindingType.NODULE, score=float(analysis.probability[i]), center_voxel=centre,
            center_mm=volume.voxel_to_patient(centre), location=f"{SIDES[side]} lung", laterality=side,
            volume_ml=nodule.volume_ml, diameter_mm=diameter, mask=source_mask if source_mask.any() else None,
            heatmap=source_heat,
            measurements={"malignancy_probability": malignancy, "malignancy_logit_std": spread,
                          "solid_core_mm": float(core),
                          **{f"type_probability_{t}": float(p) for t, p in zip(TYPES, analysis.type_probabilities[i],
                                                                               strict=True)}},
            attributes={"composition": kind, "lung_rads": lung_rads(kind, diameter, core, malignancy)},
            modality_weights=modality_weight_dict(weights),
        )


class EagerModel(nn.Module):
    """The bundle's ``model.pt``: the patch network and the dynamic fusion head, for PyTorch serving and parity."""

    def __init__(self) -> None:
        super().__init__()
        self.network = NodulePatchNet()
        self.fusion = FusionHead(EMBED_DIM, len(feature_names(Task.LUNG_NODULE)), NOTE_DIM, mode="dynamic")


def load_eager_model(bundle: Bundle) -> EagerModel:
    """Eager weights of ``bundle`` (stored as {"network": state dict, "fusion": state dict})."""
    model = EagerModel()
    state = torch.load(bundle.weights_path, map_location="cpu", weights_only=True)
    model.network.load_state_dict(state["network"])
    model.fusion.load_state_dict(state["fusion"])
    return model.eval()


def suppress(points: np.ndarray, scores: np.ndarray, radius_mm: float) -> list[int]:
    """Indices by falling score, dropping candidates within ``radius_mm`` of a kept one (non-maximum suppression)."""
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if all(np.linalg.norm((points[i] - points[k]) * WORK_MM) > radius_mm for k in kept):
            kept.append(int(i))
    return kept


@dataclass
class LocalisedNodule:
    """A candidate after its patch segmentation: the nodule's own centre and size on the work grid."""

    index: int  # into CandidateOutputs
    mask: np.ndarray  # [32, 32, 32] bool, the segmented component at the candidate
    centre_work: np.ndarray  # [3] work voxels, centroid of the mask

    @property
    def volume_ml(self) -> float:
        return float(self.mask.sum()) * VOXEL_ML

    @property
    def diameter_mm(self) -> float:
        return sphere_diameter_mm(self.volume_ml)


def sphere_diameter_mm(volume_ml: float) -> float:
    """Diameter of the sphere of ``volume_ml``."""
    return (6.0 * volume_ml * 1000.0 / np.pi) ** (1.0 / 3.0)


def localise(analysis: CandidateOutputs, i: int) -> LocalisedNodule | None:
    """Candidate ``i`` re-centred on its segmentation; None when the segmentation is empty."""
    seg = ndimage.zoom(1.0 / (1.0 + np.exp(-analysis.seg_logits[i])), 2, order=1, grid_mode=True, mode="nearest")
    mask = _central_component(seg > 0.5)
    if not mask.any():
        return None
    centre = analysis.points[i] + np.argwhere(mask).mean(axis=0) - PATCH // 2
    return LocalisedNodule(index=i, mask=mask, centre_work=centre)


def ranked_nodules(analysis: CandidateOutputs, nms_mm: float, threshold: float,
                   limit: int | None = None) -> list[LocalisedNodule]:
    """The nodules a series' candidates add up to, by falling probability: what ``detect`` reports.

    Non-maximum suppression, then each candidate at or above ``threshold`` is localised; one whose
    centre falls within an already kept nodule's radius (two candidates on one large nodule) or
    whose segmentation is empty is dropped. Evaluation calls this with threshold 0 to sweep FROC.
    """
    kept: list[LocalisedNodule] = []
    for i in suppress(analysis.points, analysis.probability, nms_mm):
        if analysis.probability[i] < threshold or len(kept) == limit:
            break
        nodule = localise(analysis, i)
        if nodule is not None and not any(_same_nodule(nodule, other) for other in kept):
            kept.append(nodule)
    return kept


def _same_nodule(nodule: LocalisedNodule, kept: LocalisedNodule) -> bool:
    """True when ``nodule``'s centre lies within ``kept``'s radius (at least 3 mm)."""
    distance = float(np.linalg.norm(nodule.centre_work - kept.centre_work)) * WORK_MM
    return distance <= max(kept.diameter_mm / 2.0, 3.0)


def _central_component(mask: np.ndarray) -> np.ndarray:
    """The connected part of ``mask`` nearest the patch centre (other blobs belong to other candidates)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    centre = np.array(mask.shape) // 2
    points = np.argwhere(labels > 0)
    nearest = labels[tuple(points[np.argmin(np.linalg.norm(points - centre, axis=1))])]
    return labels == nearest


def _to_source(shape: tuple[int, ...], grid: WorkGrid, point: np.ndarray, mask: np.ndarray,
               heat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paste a work-grid patch mask and heat map (centred on ``point``) into source-shaped arrays."""
    zoom = np.asarray(grid.zoom)
    corner_work = point - PATCH // 2
    lo = np.floor(corner_work / zoom).astype(int)
    hi = np.ceil((corner_work + PATCH) / zoom).astype(int)
    lo_c, hi_c = np.maximum(lo, 0), np.minimum(hi, shape)
    source_mask = np.zeros(shape, dtype=bool)
    source_heat = np.zeros(shape, dtype=np.float32)
    if np.any(hi_c <= lo_c):
        return source_mask, source_heat
    coords = np.meshgrid(*[(np.arange(a, b) + 0.5) * z - 0.5 - c for a, b, z, c in
                           zip(lo_c, hi_c, zoom, corner_work, strict=True)], indexing="ij")
    region = tuple(slice(a, b) for a, b in zip(lo_c, hi_c, strict=True))
    source_mask[region] = ndimage.map_coordinates(mask.astype(np.float32), coords, order=0, cval=0.0) > 0.5
    heat_region = ndimage.map_coordinates(heat.astype(np.float32), coords, order=1, cval=0.0)
    source_heat[region] = np.clip(heat_region, 0.0, 1.0)
    return source_mask, source_heat

