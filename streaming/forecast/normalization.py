"""Online per-sensor normalization (running mean and variance, Chan/Welford updates).

Inputs are z-scored with the statistics known so far; forecasts are mapped back with the same
statistics (RevIN-style de-normalization), so outputs are on the input scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class OnlineNormalizer:
    """Running mean/variance per sensor, updated with whole closed steps (NaN = missing)."""

    def __init__(self, min_std: float = 1e-3, min_count: int = 2) -> None:
        self.min_std = min_std
        self.min_count = min_count
        self.count = np.zeros(0, np.float64)
        self.mean = np.zeros(0, np.float64)
        self.m2 = np.zeros(0, np.float64)

    def __len__(self) -> int:
        return len(self.count)

    def _grow(self, n: int) -> None:
        if n > len(self.count):
            pad = n - len(self.count)
            self.count = np.concatenate([self.count, np.zeros(pad)])
            self.mean = np.concatenate([self.mean, np.zeros(pad)])
            self.m2 = np.concatenate([self.m2, np.zeros(pad)])

    def learn_many(self, values: np.ndarray) -> None:
        """Fold a ``[N, P]`` block of values (NaN ignored) into the per-sensor statistics."""
        if np.ndim(values) != 2:
            raise ValueError(f"normalizer: values must be [N, P], got shape {np.shape(values)}")
        self._grow(values.shape[0])
        n = len(values)
        obs = ~np.isnan(values)
        nb = obs.sum(axis=1).astype(np.float64)
        has = nb > 0
        if not has.any():
            return
        filled = np.where(obs, values, 0.0)
        mb = np.divide(filled.sum(axis=1), nb, out=np.zeros(n), where=has)
        m2b = np.where(obs, (values - mb[:, None]) ** 2, 0.0).sum(axis=1)
        na = self.count[:n]
        tot = na + nb
        delta = mb - self.mean[:n]
        frac = np.divide(nb, tot, out=np.zeros(n), where=tot > 0)
        self.mean[:n] = np.where(has, self.mean[:n] + delta * frac, self.mean[:n])
        self.m2[:n] = np.where(has, self.m2[:n] + m2b + delta**2 * na * frac, self.m2[:n])
        self.count[:n] = tot

    def loc_scale(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the first ``n`` sensors (std 1 until enough data is seen)."""
        self._grow(n)
        c = self.count[:n]
        var = np.divide(self.m2[:n], c - 1, out=np.ones(n), where=c >= self.min_count)
        std = np.maximum(np.sqrt(np.maximum(var, 0.0)), self.min_std)
        return self.mean[:n].copy(), std

    def transform(self, values: np.ndarray) -> np.ndarray:
        """z-score ``[N, ...]`` values with the current statistics."""
        loc, scale = self.loc_scale(values.shape[0])
        shape = (-1,) + (1,) * (values.ndim - 1)
        return (values - loc.reshape(shape)) / scale.reshape(shape)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        loc, scale = self.loc_scale(z.shape[0])
        shape = (-1,) + (1,) * (z.ndim - 1)
        return z * scale.reshape(shape) + loc.reshape(shape)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count.copy(), "mean": self.mean.copy(), "m2": self.m2.copy(),
                "min_std": self.min_std, "min_count": self.min_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = np.array(state["count"], np.float64)
        self.mean = np.array(state["mean"], np.float64)
        self.m2 = np.array(state["m2"], np.float64)
        self.min_std = float(state["min_std"])
        self.min_count = int(state["min_count"])
