"""Cumulative online errors of the served forecasts, counted when their truth arrives."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class OnlineMetrics:
    """Cumulative online errors of realized forecasts (input scale and normalized)."""

    n: int = 0
    abs_err: float = 0.0
    sq_err: float = 0.0
    abs_err_norm: float = 0.0
    sq_err_norm: float = 0.0
    realized_forecasts: int = 0

    def add(self, err: np.ndarray, err_norm: np.ndarray) -> None:
        ok = ~np.isnan(err)
        self.n += int(ok.sum())
        self.abs_err += float(np.abs(err[ok]).sum())
        self.sq_err += float((err[ok] ** 2).sum())
        self.abs_err_norm += float(np.abs(err_norm[ok]).sum())
        self.sq_err_norm += float((err_norm[ok] ** 2).sum())

    @property
    def mae(self) -> float:
        return self.abs_err / self.n if self.n else math.nan

    @property
    def mse(self) -> float:
        return self.sq_err / self.n if self.n else math.nan

    @property
    def mae_norm(self) -> float:
        return self.abs_err_norm / self.n if self.n else math.nan

    @property
    def mse_norm(self) -> float:
        return self.sq_err_norm / self.n if self.n else math.nan

    def as_dict(self) -> dict[str, float]:
        return {"points": self.n, "mae": self.mae, "mse": self.mse, "mae_norm": self.mae_norm,
                "mse_norm": self.mse_norm, "realized_forecasts": self.realized_forecasts}

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            if not hasattr(self, k) or not isinstance(v, int | float) or isinstance(v, bool):
                raise ValueError(f"metrics: {k!r} = {v!r} is not a metric count or sum")
            setattr(self, k, type(getattr(self, k))(v))
