"""Training pieces of the fusion head: heteroscedastic loss and modality dropout."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ai_engine.fusion.head import FusionOutput


def fusion_loss(output: FusionOutput, target: torch.Tensor, *, samples: int = 8,
                pos_weight: float = 1.0) -> torch.Tensor:
    """Negative log of the Monte-Carlo averaged likelihood under a Gaussian logit (Kendall & Gal 2017).

    The logit is sampled as ``logit + exp(log_var / 2) * eps``; averaging the *probabilities*
    (not the losses) lets the model buy a larger variance on cases it cannot get right, which
    is what makes ``log_var`` a usable uncertainty. ``pos_weight`` up-weights positive cases.
    """
    target = target.to(output.logit.dtype)
    eps = torch.randn((samples, *output.logit.shape), dtype=output.logit.dtype, device=output.logit.device)
    logits = output.logit + torch.exp(output.log_var / 2) * eps
    sign = 2 * target - 1
    log_lik = torch.logsumexp(F.logsigmoid(sign * logits), dim=0) - math.log(samples)
    weight = 1.0 + (pos_weight - 1.0) * target
    return -(weight * log_lik).sum() / weight.sum()


def modality_dropout(clinical_present: torch.Tensor, text_present: torch.Tensor, *, p_modality: float = 0.25,
                     p_feature_max: float = 0.5, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly hide modalities for training: returns new (clinical_present, text_present) masks.

    Each case loses its clinical block and, independently, its text with probability
    ``p_modality``; each remaining clinical feature is hidden with a per-case probability drawn
    from U(0, ``p_feature_max``), so partially filled records are seen in training too.
    """
    batch = clinical_present.shape[0]
    keep_clinical = torch.rand(batch, 1, generator=generator) >= p_modality
    keep_text = torch.rand(batch, generator=generator) >= p_modality
    feature_rate = torch.rand(batch, 1, generator=generator) * p_feature_max
    keep_feature = torch.rand(clinical_present.shape, generator=generator) >= feature_rate
    clinical = clinical_present.bool() & keep_clinical.to(clinical_present.device) & keep_feature.to(
        clinical_present.device)
    text = text_present.bool() & keep_text.to(text_present.device)
    return clinical.to(clinical_present.dtype), text.to(text_present.dtype)
