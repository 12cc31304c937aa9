"""Anomaly likelihood: turns a raw per-sensor anomaly statistic into a score in [0, 1].

The raw statistic (e.g. the absolute standardized forecast residual) is noisy and its scale
differs per sensor and over time. Following Numenta's anomaly likelihood (Ahmad et al.,
Neurocomputing 2017), each sensor keeps a long-run distribution of the raw statistic
(exponentially weighted mean and variance) and a short moving average; the score is the
Gaussian tail probability that the short average is that far above the long-run mean,
compressed as ``score = 1 - tail ** (1/9)``: 0.23 at tail 0.1, 0.5 at tail 0.002, 0.9 at
tail 1e-9, 0.99 at 1e-18. The compression never saturates (the log tail is computed stably for
large deviations), so the most extreme values keep their order, which a corpus-wide threshold
(NAB) and severities need.
The newest raw value is scored the same way, so a one-step spike is not averaged away.
Vectorized over sensors; ``learn_many`` folds a new value per sensor in and returns the
scores (the statistic is scored against the state *before* it is learned).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import log_ndtr

from streaming.alert_gate import Evidence
from streaming.config import AnomalyConfig


def log_tail(z: np.ndarray) -> np.ndarray:
    """``log P(N(0,1) > z)``, finite far into the tail (scipy's ``log_ndtr``)."""
    return log_ndtr(-np.asarray(z, np.float64))


class AnomalyLikelihood:
    """Per-sensor anomaly likelihood of a raw statistic (NaN = no value this step)."""

    def __init__(self, long_window: int = 2000, short_window: int = 10,
                 warmup: int = 100, min_std: float = 1e-3) -> None:
        if not 0 < short_window < long_window:
            raise ValueError("anomaly likelihood needs 0 < short_window < long_window")
        self.long_alpha = 1.0 / long_window
        self.short_alpha = 2.0 / (short_window + 1)
        self.warmup = warmup
        self.min_std = min_std
        self.count = np.zeros(0, np.int64)
        self.mean = np.zeros(0)
        self.var = np.zeros(0)
        self.short = np.zeros(0)

    def _grow(self, n: int) -> None:
        if n > len(self.count):
            pad = n - len(self.count)
            self.count = np.concatenate([self.count, np.zeros(pad, np.int64)])
            self.mean = np.concatenate([self.mean, np.zeros(pad)])
            self.var = np.concatenate([self.var, np.zeros(pad)])
            self.short = np.concatenate([self.short, np.zeros(pad)])

    def learn_many(self, raw: np.ndarray) -> np.ndarray:
        """Score ``raw`` ``[N]`` against each sensor's history, then learn it. Scores are 0
        during a sensor's warm-up and where ``raw`` is NaN."""
        raw = np.asarray(raw, np.float64)
        n = len(raw)
        self._grow(n)
        ok = ~np.isnan(raw)
        c = self.count[:n]
        short = np.where(c > 0, self.short[:n] + self.short_alpha * (raw - self.short[:n]), raw)
        std = np.sqrt(np.maximum(self.var[:n], self.min_std**2))
        # the short average finds sustained rises, the raw value one-step spikes it dilutes
        z = np.maximum(short - self.mean[:n], raw - self.mean[:n]) / std
        z = np.nan_to_num(z, nan=0.0)
        score = -np.expm1(log_tail(z) / 9.0) if n else np.zeros(0)   # 1 - tail ** (1/9)
        score = np.where(ok & (c >= self.warmup), score, 0.0)
        # learn: running moments with a 1/count step until the long window is reached
        alpha = np.maximum(1.0 / (c + 1), self.long_alpha)
        d = raw - self.mean[:n]
        new_mean = self.mean[:n] + alpha * d
        new_var = (1 - alpha) * (self.var[:n] + alpha * d * d)
        self.mean[:n] = np.where(ok, new_mean, self.mean[:n])
        self.var[:n] = np.where(ok, new_var, self.var[:n])
        self.short[:n] = np.where(ok, short, self.short[:n])
        self.count[:n] = c + ok
        return score

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count.copy(), "mean": self.mean.copy(), "var": self.var.copy(),
                "short": self.short.copy(), "long_alpha": self.long_alpha,
                "short_alpha": self.short_alpha, "warmup": self.warmup,
                "min_std": self.min_std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = np.array(state["count"], np.int64)
        self.mean = np.array(state["mean"], np.float64)
        self.var = np.array(state["var"], np.float64)
        self.short = np.array(state["short"], np.float64)
        self.long_alpha = float(state["long_alpha"])
        self.short_alpha = float(state["short_alpha"])
        self.warmup = int(state["warmup"])
        self.min_std = float(state["min_std"])


@dataclass
class ScoreBlock:
    """Anomaly scores in [0, 1] of every known sensor for one closed step."""

    step: int
    ts: int
    sensors: list[str]
    score: np.ndarray            # float64 [N]: combined score (max of the components)
    components: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N] in [0, 1]
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N] statistic (NaN: none)


class AnomalyScorer:
    """The per-step anomaly score of every sensor: the maximum of the likelihoods of the
    nowcast residual and (``anomaly.embedding``) of the embedding's distance to its running
    centroid. Sensors scoring at or above ``explain_at`` get evidence that says which
    component and which values."""

    def __init__(self, cfg: AnomalyConfig) -> None:
        self.cfg = cfg
        self.residual = AnomalyLikelihood(cfg.long_window, cfg.short_window,
                                          warmup=cfg.warmup_steps)
        self.embedding = AnomalyLikelihood(cfg.long_window, cfg.short_window,
                                           warmup=cfg.warmup_steps)

    def update(self, step: int, ts: int, names: list[str], residual: np.ndarray,
               distance: np.ndarray | None, explain_at: float
               ) -> tuple[ScoreBlock, dict[str, Evidence]]:
        """Score one step (the likelihoods score, then learn, each statistic)."""
        if len(residual) != len(names) or (distance is not None and len(distance) != len(names)):
            raise ValueError(f"anomaly scorer: residual ({len(residual)}) and distance must "
                             f"have one value per sensor ({len(names)})")
        comps = {"residual": self.residual.learn_many(residual)}
        raw = {"residual": residual}
        if distance is not None:
            comps["embedding"] = self.embedding.learn_many(distance)
            raw["embedding"] = distance
        score = np.max(np.stack(list(comps.values())), axis=0)
        block = ScoreBlock(step, ts, list(names), score, comps, raw)
        evidence = {}
        for i in np.flatnonzero(score >= explain_at):
            which = max(comps, key=lambda c: comps[c][i])
            d: dict[str, Any] = {"detector": "anomaly-likelihood", "component": which,
                                 "residual": round(float(residual[i]), 4),
                                 "residual_long_mean": round(float(self.residual.mean[i]), 4)}
            d["statistic"] = ("nowcast |residual|/std" if which == "residual"
                              else "embedding distance to running centroid")
            if distance is not None:
                d["embedding_distance"] = round(float(distance[i]), 4)
                d["embedding_long_mean"] = round(float(self.embedding.mean[i]), 4)
            d["scores"] = {c: round(float(v[i]), 4) for c, v in comps.items()}
            if which == "residual":
                text = (f"nowcast |residual|/std {residual[i]:.2f} vs normal "
                        f"{self.residual.mean[i]:.2f}")
            else:
                text = (f"embedding distance {distance[i]:.3f} vs normal "   # type: ignore[index]
                        f"{self.embedding.mean[i]:.3f}")
            evidence[names[i]] = Evidence(score=float(score[i]), detector="anomaly-likelihood",
                                          statistic=d["statistic"], text=text, detail=d)
        return block, evidence

    def state_dict(self) -> dict[str, Any]:
        return {"residual": self.residual.state_dict(),
                "embedding": self.embedding.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.residual.load_state_dict(state["residual"])
        self.embedding.load_state_dict(state["embedding"])
