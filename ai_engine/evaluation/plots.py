"""Evaluation plots as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

from ai_engine.evaluation.metrics import CPM_FP_RATES  # noqa: E402

Curve = tuple[np.ndarray, np.ndarray]


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(curves: Mapping[str, Curve], path: Path, title: str = "ROC") -> Path:
    """ROC curves {label: (fpr, tpr)} on one axis."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_froc(curves: Mapping[str, Curve], path: Path, title: str = "FROC") -> Path:
    """FROC curves {label: (false positives per scan, sensitivity)} on a log2 x axis (1/8 .. 8)."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for label, (fps, sens) in curves.items():
        ax.step(np.maximum(fps, 1e-3), sens, where="post", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(CPM_FP_RATES, [str(r) for r in CPM_FP_RATES])
    ax.set(xlabel="false positives per scan", ylabel="sensitivity", title=title, xlim=(0.1, 10), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_calibration(curves: Mapping[str, Curve], path: Path, title: str = "Calibration") -> Path:
    """Reliability curves {label: (mean predicted probability, observed fraction)}."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8, label="perfect")
    for label, (predicted, observed) in curves.items():
        ax.plot(predicted, observed, marker="o", label=label)
    ax.set(xlabel="predicted probability", ylabel="observed positive fraction", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_modality_weights(weights: Mapping[str, np.ndarray], path: Path,
                          title: str = "Per-case modality weights") -> Path:
    """Box plots of per-case weights {modality: values}; missing-modality cases should be left out by the caller."""
    fig, ax = plt.subplots(figsize=(5, 4))
    labels = list(weights)
    ax.boxplot([np.asarray(weights[k], dtype=float) for k in labels], tick_labels=labels)
    ax.set(ylabel="weight", title=title, ylim=(0, 1))
    return _save(fig, path)
