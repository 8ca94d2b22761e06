"""Multimodal fusion of an image embedding with clinical variables and note text (torch).

Import this package only from modules that run or train models: it imports torch.

How a task uses it (``ai_engine/training/fusion_fit.py`` does steps 4-5 for every task):

1. The image network produces an embedding ``image`` float32[B, image_dim] per case (or per
   candidate lesion).
2. ``ai_engine.clinical_features.encode_clinical(task, context)`` gives ``clinical`` float32[B, n]
   and ``clinical_present`` bool[B, n]; ``encode_note(context_text(context), encoding=...)`` gives ``text``
   float32[B, NOTE_DIM] and ``text_present`` bool[B].
3. ``FusionHead(image_dim, n, NOTE_DIM, mode=...)`` maps each modality into a shared space,
   ("dynamic") scales each projection by its per-case gate weight and concatenates them, and
   returns a ``FusionOutput``: ``logit`` [B], ``weights`` [B, 3] (image, clinical, text;
   rows sum to 1 over the available modalities, exactly 0 for a missing one) and ``log_var``
   [B], the predicted log-variance of the logit (heteroscedastic "aleatoric" uncertainty,
   learned through ``fusion_loss``; report ``exp(log_var / 2)`` as the logit's standard
   deviation).
4. Train with ``fusion_loss`` and ``modality_dropout`` (randomly hides whole modalities and
   single clinical features) so the model works when the EMR sends nothing.
5. Fit ``TemperatureScaler`` (``ai_engine.fusion.calibration``, numpy only) on a calibration
   split (never on the held-out test set) and store its temperature in the bundle's
   ``inference.json``; ``probability = sigmoid(logit / T)``.

The forward pass takes and returns plain tensors only (``FusionHead.forward_tensors``), so
the head exports to ONNX / TorchScript together with the image network.
"""

from __future__ import annotations

from ai_engine.fusion.head import MODALITIES, MODES, FusionHead, FusionOutput, modality_weight_dict
from ai_engine.fusion.training import fusion_loss, modality_dropout

__all__ = ["MODALITIES", "MODES", "FusionHead", "FusionOutput", "fusion_loss", "modality_dropout",
           "modality_weight_dict"]
