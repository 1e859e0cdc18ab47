"""Standardised ridge regression in numpy (closed form), for the learned size rulers.

Small and dependency-free: features are standardised by their mean and standard deviation, the
target is centred, and the weights solve ``(Z^T Z + alpha I) w = Z^T (y - mean y)``. The strength
is chosen by k-fold cross-validation on the median absolute error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ALPHAS", "Ridge", "cross_validate", "fit_alpha", "fit_ridge"]

#: Strengths tried by :func:`fit_ridge`.
ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class Ridge:
    """A fitted ridge regression: ``((x - mean) / scale) @ weights + intercept``."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    intercept: float
    alpha: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions for ``(N, F)`` (or one ``(F,)``) features."""
        return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.weights + self.intercept

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready coefficients."""
        return {"alpha": self.alpha, "mean": [round(float(v), 6) for v in self.mean],
                "scale": [round(float(v), 6) for v in self.scale],
                "weights": [round(float(v), 6) for v in self.weights],
                "intercept": round(float(self.intercept), 6)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ridge:
        """The inverse of :meth:`to_dict`."""
        return cls(np.asarray(data["mean"], np.float64), np.asarray(data["scale"], np.float64),
                   np.asarray(data["weights"], np.float64), float(data["intercept"]),
                   float(data.get("alpha", 0.0)))


def fit_alpha(x: np.ndarray, y: np.ndarray, alpha: float) -> Ridge:
    """Ridge on ``x``, ``y`` at strength ``alpha``."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    b = float(y.mean())
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - b))
    return Ridge(mean, scale, w, b, alpha)


def cross_validate(x: np.ndarray, y: np.ndarray, alphas: Sequence[float] = ALPHAS,
                   folds: int = 5) -> tuple[dict[float, float], np.ndarray]:
    """Median absolute error per strength, and the out-of-fold predictions of the best one."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    fold = np.arange(len(y)) % folds
    errors: dict[float, float] = {}
    preds: dict[float, np.ndarray] = {}
    for alpha in alphas:
        out = np.zeros(len(y))
        for k in range(folds):
            test = fold == k
            out[test] = fit_alpha(x[~test], y[~test], alpha).predict(x[test])
        errors[alpha] = float(np.median(np.abs(out - y)))
        preds[alpha] = out
    best = min(errors, key=errors.get)
    return errors, preds[best]


def fit_ridge(x: np.ndarray, y: np.ndarray, alphas: Sequence[float] = ALPHAS) -> tuple[Ridge, dict[float, float]]:
    """Ridge on all of ``x``, ``y`` with the strength cross-validation prefers, and the errors."""
    errors, _ = cross_validate(x, y, alphas)
    return fit_alpha(np.asarray(x, np.float64), np.asarray(y, np.float64), min(errors, key=errors.get)), errors
