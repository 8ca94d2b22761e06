"""The common training loop: seeded, device auto-selection, progress bars, early stopping, checkpoint.

A task supplies three callables and gets back the model with its best validation weights:

    history = fit(model, batches=lambda epoch: loader(epoch), step=compute_loss,
                  validate=lambda m: validation_auc(m), config=TrainConfig(epochs=20), checkpoint=path)

``step(model, batch) -> loss`` returns the scalar loss of one batch (the loop does backward,
gradient clipping and the optimiser step); ``validate(model) -> float`` scores the model on
the validation split, higher is better, and is called in eval mode under ``torch.no_grad``.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ai_engine.errors import AiEngineError

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, so a run is repeatable on one machine."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' = CUDA when available, else CPU; otherwise the named torch device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(spec)
    except RuntimeError as exc:
        raise AiEngineError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {spec!r}") from exc


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and stopping settings of one run."""

    epochs: int = 20
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 5
    grad_clip: float = 5.0
    seed: int = 0
    max_seconds: float | None = None
    description: str = "train"
    progress: bool = True


@dataclass
class TrainHistory:
    """What happened: per-epoch mean loss and validation score, best epoch, wall time."""

    losses: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = float("-inf")
    seconds: float = 0.0
    stopped: str = ""


def fit(model: nn.Module, *, batches: Callable[[int], Iterable[Any]],
        step: Callable[[nn.Module, Any], torch.Tensor], validate: Callable[[nn.Module], float],
        config: TrainConfig, checkpoint: Path | None = None) -> TrainHistory:
    """Train ``model`` in place with AdamW; keep (and checkpoint) the weights of the best validation score."""
    if config.epochs < 1:
        raise AiEngineError(f"epochs must be at least 1, got {config.epochs}")
    seed_everything(config.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
    history = TrainHistory()
    best_state = copy.deepcopy(model.state_dict())
    start = time.monotonic()
    epochs = tqdm(range(config.epochs), desc=config.description, disable=not config.progress, unit="epoch")
    for epoch in epochs:
        model.train()
        total, count = 0.0, 0
        for batch in batches(epoch):
            loss = step(model, batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimiser.step()
            total, count = total + float(loss.detach()), count + 1
        scheduler.step()
        if count == 0:
            raise AiEngineError(f"epoch {epoch}: the batch source yielded no batches")
        model.eval()
        with torch.no_grad():
            score = float(validate(model))
        history.losses.append(total / count)
        history.scores.append(score)
        epochs.set_postfix(loss=f"{total / count:.4f}", val=f"{score:.4f}")
        log.info("%s epoch %d: loss %.4f, validation %.4f", config.description, epoch, total / count, score)
        if score > history.best_score:
            history.best_score, history.best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
            if checkpoint is not None:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                torch.save(best_state, checkpoint)
        if epoch - history.best_epoch >= config.patience:
            history.stopped = f"no validation gain for {config.patience} epochs"
            break
        if config.max_seconds is not None and time.monotonic() - start > config.max_seconds:
            history.stopped = f"time budget of {config.max_seconds:.0f} s reached"
            break
    model.load_state_dict(best_state)
    history.seconds = time.monotonic() - start
    return history
