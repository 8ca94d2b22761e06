"""FusionHead: per-modality projectors, attention gating over available modalities, logit + uncertainty."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ai_engine.errors import AiEngineError

MODALITIES = ("image", "clinical", "text")
MODES = ("dynamic", "concat", "image_only")
LOG_VAR_RANGE = (-8.0, 4.0)


class FusionOutput(NamedTuple):
    """logit [B]; weights [B, 3] over MODALITIES (0 for a missing one); log_var [B] of the logit."""

    logit: torch.Tensor
    weights: torch.Tensor
    log_var: torch.Tensor


def _projector(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(out_dim, out_dim))


class FusionHead(nn.Module):
    """Fuse image, clinical and text embeddings into a logit, modality weights and a log-variance.

    ``mode``: "dynamic" = attention-gated concatenation: a gating network scores the projected
    modalities per case, scores of missing modalities are set to -inf, and each projection is
    multiplied by its softmax weight divided by the largest weight of the case (the gate can only
    attenuate a modality; uniform weights leave the projections unchanged, a missing modality
    is 0) before the gated projections and the availability mask are concatenated; the gate's
    last layer starts at zero, so training starts from "concat";
    "concat" = the projections (zero when missing) and the availability mask are concatenated
    (reported weights are then the nominal equal shares of the available modalities);
    "image_only" = clinical and text are ignored (weights image = 1).
    """

    def __init__(self, image_dim: int, clinical_dim: int, text_dim: int, shared_dim: int = 32,
                 mode: str = "dynamic", hidden_dim: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        if mode not in MODES:
            raise AiEngineError(f"FusionHead mode must be one of {MODES}, got {mode!r}")
        for name, dim in (("image_dim", image_dim), ("clinical_dim", clinical_dim), ("text_dim", text_dim),
                          ("shared_dim", shared_dim)):
            if dim < 1:
                raise AiEngineError(f"FusionHead {name} must be at least 1, got {dim}")
        self.mode = mode
        self.image_proj = _projector(image_dim, shared_dim, dropout)
        self.clinical_proj = _projector(2 * clinical_dim, shared_dim, dropout)  # values and their mask
        self.text_proj = _projector(text_dim, shared_dim, dropout)
        self.gate = nn.Sequential(nn.Linear(3 * shared_dim + 3, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 3))
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.zeros_(self.gate[-1].bias)
        fused_dim = shared_dim if mode == "image_only" else 3 * shared_dim + 3
        self.classifier = nn.Sequential(nn.Linear(fused_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                        nn.Linear(hidden_dim, 2))

    @property
    def input_dims(self) -> tuple[int, int, int]:
        """(image_dim, clinical_dim, text_dim) this head was built for."""
        return (self.image_proj[0].in_features, self.clinical_proj[0].in_features // 2,
                self.text_proj[0].in_features)

    def forward(self, image: torch.Tensor, clinical: torch.Tensor, clinical_present: torch.Tensor,
                text: torch.Tensor, text_present: torch.Tensor) -> FusionOutput:
        """image [B, Di]; clinical, clinical_present [B, Dc] (mask as 0/1 float); text [B, Dt]; text_present [B]."""
        return FusionOutput(*self.forward_tensors(image, clinical, clinical_present, text, text_present))

    def forward_tensors(self, image: torch.Tensor, clinical: torch.Tensor, clinical_present: torch.Tensor,
                        text: torch.Tensor, text_present: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Same as ``forward`` as a plain tuple (logit, weights, log_var), for ONNX/TorchScript export."""
        clinical_present = clinical_present.to(image.dtype)
        text_present = text_present.to(image.dtype).reshape(-1, 1)
        clinical_available = (clinical_present.sum(dim=1, keepdim=True) > 0).to(image.dtype)
        available = torch.cat([torch.ones_like(text_present), clinical_available, text_present], dim=1)
        z_image = self.image_proj(image)
        z_clinical = self.clinical_proj(torch.cat([clinical * clinical_present, clinical_present], dim=1))
        z_clinical = z_clinical * clinical_available
        z_text = self.text_proj(text * text_present) * text_present
        stacked = torch.stack([z_image, z_clinical, z_text], dim=1)
        if self.mode == "dynamic":
            scores = self.gate(torch.cat([stacked.flatten(1), available], dim=1))
            weights = torch.softmax(scores.masked_fill(available == 0, float("-inf")), dim=1)
            scale = weights / weights.max(dim=1, keepdim=True).values
            fused = torch.cat([(scale.unsqueeze(-1) * stacked).flatten(1), available], dim=1)
        elif self.mode == "concat":
            weights = available / available.sum(dim=1, keepdim=True)
            fused = torch.cat([stacked.flatten(1), available], dim=1)
        else:
            weights = available * torch.tensor([1.0, 0.0, 0.0], dtype=image.dtype, device=image.device)
            fused = z_image
        out = self.classifier(fused)
        return out[:, 0], weights, out[:, 1].clamp(*LOG_VAR_RANGE)


def modality_weight_dict(weights: Sequence[float]) -> dict[str, float]:
    """One case's weights row as {"image": .., "clinical": .., "text": ..} (plain floats, 4 decimals)."""
    if len(weights) != len(MODALITIES):
        raise AiEngineError(f"modality weights need {len(MODALITIES)} values {MODALITIES}, got {len(weights)}")
    return {name: round(float(w), 4) for name, w in zip(MODALITIES, weights, strict=True)}
