"""The served forecast: experts weighted online from their realized errors.

Per sensor and horizon point, exponential weights (Hedge) over the experts {adapting model,
frozen starting model, persistence, moving average, seasonal naive}, with a fixed share
(Herbster & Warmuth, 1998) so that weights recover after the best expert changes. They learn
only from realized values (delayed feedback: the forecast made at step j updates them once
its horizon has been observed). The served forecast is the weighted mean of the experts that
forecast (``combine = "mix"``) or the leader's (``"leader"``).

Loss: the squared error in units of the sensor's scale, clipped at ``loss_clip`` and divided
by it, so ``l in [0, 1]``. An expert without a forecast (a season not seen yet) "sleeps": it
is charged the mixture's loss, which leaves its standing unchanged.

Guarantee (per sensor and horizon point, for the clipped loss; T realized forecasts): the
weighted loss of Hedge with rate ``eta`` is at most the best expert's plus
``ln(E) / eta + eta * T / 8``; with a fixed share ``alpha`` it stays within
``((m + 1) ln E + m ln(1/alpha) + (T - m - 1) ln(1/(1 - alpha))) / eta + eta * T / 8`` of
any sequence of experts that switches ``m`` times. The squared loss is convex in the
forecast, so the mixture's own loss is at most the weighted loss (Jensen). Delayed feedback
(d forecasts pending) adds at most ``eta * d * T / 2``-order terms (Weinberger & Ordentlich,
2002). ``tests/streaming/forecast/test_experts.py`` checks the consequence on streams with a known
best expert and a change of the best.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ExpertWeights:
    """Hedge with a fixed share over ``names``, per sensor and horizon point."""

    def __init__(self, names: list[str], horizon: int, *, eta: float, share: float,
                 loss_clip: float, combine: str = "mix") -> None:
        if not names:
            raise ValueError("experts: at least one expert is needed")
        self.names = list(names)
        self.h = horizon
        self.eta, self.share, self.loss_clip, self.combine_rule = eta, share, loss_clip, combine
        self.w = np.full((0, horizon, len(names)), 1.0 / len(names))   # [N, H, E]
        self.updates = 0

    def _grow(self, n: int) -> None:
        if n > self.w.shape[0]:
            e = len(self.names)
            self.w = np.concatenate([self.w, np.full((n - self.w.shape[0], self.h, e), 1 / e)])

    def combine(self, forecasts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The served forecast ``[N, H]`` from the experts' ``[N, H, E]`` (NaN: no forecast)
        and each sensor's leader (the expert with the largest mean weight)."""
        n = forecasts.shape[0]
        self._check(forecasts, n)
        self._grow(n)
        w = self.w[:n]
        have = ~np.isnan(forecasts)
        ww = np.where(have, w, 0.0)
        tot = ww.sum(axis=2, keepdims=True)
        if self.combine_rule == "leader":
            pick = np.argmax(ww, axis=2)
            served = np.take_along_axis(forecasts, pick[..., None], axis=2)[..., 0]
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                served = (np.where(have, forecasts, 0.0) * ww).sum(axis=2) / tot[..., 0]
        served[tot[..., 0] == 0] = np.nan
        leader = np.argmax(w.mean(axis=1), axis=1)
        return served, leader

    def clipped_loss(self, forecasts: np.ndarray, truth: np.ndarray, scale: np.ndarray
                     ) -> np.ndarray:
        """``[N, H, E]`` squared errors in units of each sensor's scale, clipped at
        ``loss_clip`` (NaN where there is no forecast or no truth)."""
        err = (forecasts - truth[..., None]) / scale[:, None, None]
        return np.minimum(err * err, self.loss_clip)

    def update(self, forecasts: np.ndarray, truth: np.ndarray, scale: np.ndarray) -> None:
        """Learn from one realized forecast: the experts' ``[N, H, E]``, the truth ``[N, H]``
        (NaN: not observed, no update there) and each sensor's scale ``[N]``."""
        n = forecasts.shape[0]
        self._check(forecasts, n)
        if truth.shape != forecasts.shape[:2] or scale.shape != (n,):
            raise ValueError(f"experts: truth {truth.shape} and scale {scale.shape} must "
                             f"match the forecasts {forecasts.shape}")
        self._grow(n)
        w = self.w[:n]
        loss = self.clipped_loss(forecasts, truth, scale) / self.loss_clip    # [N, H, E]
        have = ~np.isnan(loss)
        ww = np.where(have, w, 0.0)
        tot = ww.sum(axis=2, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            mix = (np.where(have, loss, 0.0) * ww).sum(axis=2, keepdims=True) / tot
        loss = np.where(have, loss, mix)                     # sleeping experts: the mix's loss
        live = ~np.isnan(truth) & (tot[..., 0] > 0)
        nw = w * np.exp(-self.eta * loss)
        nw /= nw.sum(axis=2, keepdims=True)
        nw = (1.0 - self.share) * nw + self.share / len(self.names)
        self.w[:n] = np.where(live[..., None], nw, w)
        self.updates += 1

    def _check(self, forecasts: np.ndarray, n: int) -> None:
        if forecasts.ndim != 3 or forecasts.shape[1:] != (self.h, len(self.names)):
            raise ValueError(f"experts: forecasts must be [N, {self.h}, {len(self.names)}] "
                             f"({', '.join(self.names)}), got {forecasts.shape}")

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "w": self.w.copy(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(f"experts: the state weighs {state['names']}, the configuration "
                             f"{self.names}")
        self.w = np.array(state["w"], np.float64)
        self.updates = int(state["updates"])
