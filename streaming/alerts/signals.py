"""Signals: the per-step, per-sensor statistics the detectors watch.

- ``nowcast``: the mean absolute normalized error of the previous step's forecast on the
  points of the step that just closed (its first ``patch_len`` horizon points);
- ``seasonal``: ``|step mean - the same step one season ago| / std``, the error of a
  seasonal-naive reference forecast (``drift.season_ms``);
- ``embedding_distance``: the distance of each sensor's newest window embedding to its
  running centroid, in the centroid's own units (the likelihood standardizes it);
- the realized forecasts' error (from the forecaster) completes the drift channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streaming.config import StreamConfig
from streaming.ingest.patching import ClosedStep
from streaming.ingest.window import Pending


class Signals:
    """Per-sensor statistics of each closed step (see module docstring)."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        self.channels = set(cfg.drift.channels.split("+"))
        p = cfg.patching
        step_ms = p.interval_ms * p.patch_len
        self.season = cfg.drift.season_ms // step_ms if cfg.drift.season_ms else 0
        self.season_mean = np.full((0, max(self.season, 1)), np.nan)
        self.season_step = np.full(max(self.season, 1), -1, np.int64)
        self.centroid = np.zeros((0, 0))       # [N, d] running mean embedding per sensor
        self.centroid_n = np.zeros(0, np.int64)

    def nowcast(self, step: ClosedStep, prev: Pending | None) -> np.ndarray:
        """Mean absolute normalized error of ``prev`` (the previous step's forecast) on the
        points of ``step``, per sensor (NaN: nothing to compare)."""
        n = step.values.shape[0]
        raw = np.full(n, np.nan)
        if prev is not None:
            m = prev.yhat.shape[0]
            pts = min(step.values.shape[1], prev.yhat.shape[1])
            err = np.abs(step.values[:m, :pts] - prev.yhat[:, :pts]) / prev.scale[:, None]
            ok = ~np.isnan(err)
            cnt = ok.sum(axis=1)
            np.divide(np.where(ok, err, 0.0).sum(axis=1), cnt, out=raw[:m], where=cnt > 0)
        return raw

    def seasonal(self, step: ClosedStep, scale: np.ndarray) -> np.ndarray | None:
        """The seasonal-naive reference error of ``step`` (None: no season configured or
        the same step one season ago was not seen)."""
        if not self.season:
            return None
        n = step.values.shape[0]
        if len(scale) != n:
            raise ValueError(f"signals: scale must have one value per sensor ({n}), "
                             f"got {len(scale)}")
        if self.season_mean.shape[0] < n:
            grow = np.full((n - self.season_mean.shape[0], self.season), np.nan)
            self.season_mean = np.concatenate([self.season_mean, grow])
        obs = ~np.isnan(step.values)
        cnt = obs.sum(axis=1)
        cur = np.full(n, np.nan)
        np.divide(np.where(obs, step.values, 0.0).sum(axis=1), cnt, out=cur, where=cnt > 0)
        slot = step.step % self.season
        res = None
        if self.season_step[slot] == step.step - self.season:
            res = np.abs(cur - self.season_mean[:n, slot]) / scale
        self.season_mean[:n, slot] = cur
        self.season_step[slot] = step.step
        return res

    def embedding_distance(self, emb: np.ndarray | None, n: int) -> np.ndarray | None:
        """Distance of each sensor's newest window embedding ``[N, d]`` to its running
        centroid (None when off or no embedding came)."""
        if not self.cfg.anomaly.embedding or emb is None or emb.shape[0] != n:
            return None
        emb = emb.astype(np.float64)
        grow = n - self.centroid.shape[0]
        if grow > 0:                                    # sensors only ever join
            self.centroid = np.concatenate([self.centroid.reshape(-1, emb.shape[1]),
                                            emb[n - grow:]])
            self.centroid_n = np.concatenate([self.centroid_n, np.zeros(grow, np.int64)])
        dist = np.sqrt(((emb - self.centroid) ** 2).mean(axis=1))
        dist[self.centroid_n == 0] = np.nan
        alpha = np.maximum(1.0 / (self.centroid_n + 1), 1.0 / self.cfg.anomaly.long_window)
        self.centroid += alpha[:, None] * (emb - self.centroid)
        self.centroid_n += 1
        return dist

    def drift_channels(self, realized: np.ndarray | None, seasonal: np.ndarray | None,
                       distance: np.ndarray | None) -> dict[str, np.ndarray]:
        """The configured drift channels that have a value this step."""
        stats = {"abs_residual": realized, "seasonal_residual": seasonal,
                 "embedding_distance": distance}
        return {c: v for c, v in stats.items() if v is not None and c in self.channels}

    def state_dict(self) -> dict[str, Any]:
        return {"season_mean": self.season_mean.copy(), "season_step": self.season_step.copy(),
                "centroid": self.centroid.copy(), "centroid_n": self.centroid_n.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.season_mean = np.array(state["season_mean"], np.float64)
        self.season_step = np.array(state["season_step"], np.int64)
        self.centroid = np.array(state["centroid"], np.float64)
        self.centroid_n = np.array(state["centroid_n"], np.int64)
