"""Forecast intervals around the served forecast, calibrated online.

Every served forecast carries a p10-p90 interval. Its shape comes from the model's quantile
head when the model has one (offsets below and above its median, conditional on the
window), else from each sensor's running mean absolute error of the served forecast per
horizon point. Its width is calibrated online, per horizon point and side, by adaptive
conformal inference (Gibbs & Candès, NeurIPS 2021): when truth arrives, the log multiplier
of each side moves by ``rate * (miss rate - 0.1)``, so the long-run share of truths below
the lower bound and above the upper one each tends to 10 % whatever the model, its drift or
the serving mix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILE_LEVELS = ("0.1", "0.9")
TAIL = 0.1                  # target miss rate on each side (p10 / p90)
MAE_TO_OFFSET = 1.6         # a Gaussian's 0.9 quantile is 1.28 sd, its mean |error| 0.80 sd


class IntervalCalibrator:
    """p10/p90 bounds ``[N, H]`` for served forecasts (see module docstring)."""

    def __init__(self, horizon: int, *, rate: float = 0.5, mae_decay: float = 0.02) -> None:
        if horizon <= 0:
            raise ValueError(f"intervals: horizon must be > 0, got {horizon}")
        self.horizon = horizon
        self.rate = rate
        self.mae_decay = mae_decay
        self.log_mult = np.zeros((2, horizon))        # lower, upper
        self.mae = np.full((0, horizon), np.nan)      # per sensor, served forecast
        self.realized = 0

    def bounds(self, served: np.ndarray, scale: np.ndarray,
               offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds ``[N, H]`` of ``served`` (``lo <= served <= hi``);
        ``offsets`` ``[N, 2, H]`` are the model's distances below/above its median (input
        units), ``scale`` ``[N]`` the sensors' normalization scale (the width before any
        error is known)."""
        n, h = served.shape
        if h != self.horizon:
            raise ValueError(f"intervals: forecasts must be [N, {self.horizon}], got "
                             f"{served.shape}")
        if offsets is None:
            mae = self._mae(n)
            off = np.where(np.isnan(mae), 0.5 * scale[:, None], MAE_TO_OFFSET * mae)
            lo_off = hi_off = off
        else:
            lo_off, hi_off = offsets[:, 0], offsets[:, 1]
        mult = np.exp(self.log_mult)
        lo, hi = served - lo_off * mult[0], served + hi_off * mult[1]
        # never on the wrong side of the forecast; a non-finite bound collapses onto it
        lo = np.minimum(np.where(np.isfinite(lo), lo, served), served)
        hi = np.maximum(np.where(np.isfinite(hi), hi, served), served)
        return lo, hi

    def learn(self, y: np.ndarray, served: np.ndarray, lo: np.ndarray,
              hi: np.ndarray) -> None:
        """Realized values ``y`` ``[N, H]`` (NaN unknown) of forecasts served with bounds."""
        ok = ~np.isnan(y) & ~np.isnan(lo) & ~np.isnan(hi)
        cnt = ok.sum(axis=0)
        if not cnt.any():
            return
        below = np.where(ok, y < lo, False).sum(axis=0)
        above = np.where(ok, y > hi, False).sum(axis=0)
        seen = cnt > 0
        for side, miss in ((0, below), (1, above)):
            rate = np.divide(miss, cnt, out=np.zeros(self.horizon), where=seen)
            self.log_mult[side, seen] += self.rate * (rate[seen] - TAIL)
        np.clip(self.log_mult, -5.0, 5.0, out=self.log_mult)
        mae = self._mae(len(y))
        err = np.abs(y - served)
        fresh = ok & np.isnan(mae)
        mae[fresh] = err[fresh]
        upd = ok & ~fresh
        mae[upd] += self.mae_decay * (err[upd] - mae[upd])
        self.realized += int(ok.any(axis=1).sum())

    def _mae(self, n: int) -> np.ndarray:
        if len(self.mae) < n:
            self.mae = np.concatenate([self.mae, np.full((n - len(self.mae), self.horizon),
                                                         np.nan)])
        return self.mae[:n]

    def state_dict(self) -> dict[str, Any]:
        return {"log_mult": self.log_mult.copy(), "mae": self.mae.copy(),
                "realized": self.realized}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lm = np.asarray(state["log_mult"], np.float64)
        if lm.shape != (2, self.horizon):
            raise ValueError(f"intervals: state is for horizon {lm.shape[-1]}, not "
                             f"{self.horizon}")
        self.log_mult = lm.copy()
        self.mae = np.asarray(state["mae"], np.float64).reshape(-1, self.horizon).copy()
        self.realized = int(state["realized"])
