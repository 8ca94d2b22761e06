"""Temperature scaling of logits (numpy/scipy): calibrated probabilities from a calibration split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from ai_engine.errors import AiEngineError

LOG_T_BOUNDS = (-3.0, 3.0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


@dataclass
class TemperatureScaler:
    """``probability = sigmoid(logit / temperature)``; fit the temperature on a calibration split only."""

    temperature: float = 1.0

    def fit(self, logits: np.ndarray, labels: np.ndarray) -> TemperatureScaler:
        """Choose the temperature (e^-3 .. e^3) minimising the negative log-likelihood of ``labels``."""
        logits = np.asarray(logits, dtype=np.float64).ravel()
        labels = np.asarray(labels, dtype=np.float64).ravel()
        if logits.shape != labels.shape or logits.size == 0:
            raise AiEngineError(f"temperature fit needs matching non-empty logits and labels, "
                                f"got {logits.shape} and {labels.shape}")
        if labels.min() == labels.max():
            raise AiEngineError("temperature fit needs both classes in the calibration split, got one")

        def nll(log_t: float) -> float:
            z = logits / np.exp(log_t)
            return float(np.mean(np.logaddexp(0.0, z) - labels * z))

        result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded")
        self.temperature = float(np.exp(result.x))
        return self

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``logits``."""
        return sigmoid(np.asarray(logits, dtype=np.float64) / self.temperature)
