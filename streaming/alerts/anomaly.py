"""The anomaly score: detectors on the values and on the forecast residual, fused.

Components, per sensor: the anomaly likelihood of the nowcast residual (and of the window
embedding's distance to its centroid), and the value detectors of ``streaming.alerts.novelty``
(``anomaly.detectors``: level, jump, distribution, context), which do not depend on the
forecaster being any good. Each component's surprise is calibrated on the sensor's own
history (``streaming.alerts.calibration.TailCalibrator``) and the calibrated tail probabilities
are fused by Bonferroni's rule (weighted by ``anomaly.weights``) into one score in [0, 1] whose
alert threshold is the false-alarm budget ``alerts.max_per_10k``.

``AnomalyLikelihood`` turns a raw per-sensor anomaly statistic into a score in [0, 1].

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

from streaming.alerts.alert_gate import Evidence
from streaming.alerts.calibration import TailCalibrator, exponent, fuse, score_of
from streaming.alerts.novelty import ContextNovelty, RangeBreak, RelativeEntropy, WindowedGaussian
from streaming.config import StreamConfig


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
    score: np.ndarray            # float64 [N]: the fused score
    components: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N] in [0, 1]
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N] statistic (NaN: none)


def value_detector(name: str, cfg: StreamConfig) -> Any:
    """A fresh value detector of ``anomaly.detectors``."""
    a = cfg.anomaly
    if name == "level":
        return WindowedGaussian(a.level_window, short=6)
    if name == "jump":
        return WindowedGaussian(a.level_window, diff=True)
    if name == "distribution":
        return RelativeEntropy()
    if name == "context":
        return ContextNovelty()
    if name == "range":
        return RangeBreak(a.range_short, forget=a.range_forget)
    raise ValueError(f"anomaly: unknown value detector {name!r}")


STATISTIC = {
    "residual": "nowcast |residual|/std",
    "embedding": "embedding distance to running centroid",
    "level": "value vs its recent mean (windowed Gaussian)",
    "jump": "change from the previous reading (persistence residual)",
    "distribution": "distribution of the recent readings (relative entropy)",
    "context": "pattern of the last readings (contextual novelty)",
    "range": "value beyond its own range so far (range break)",
}


class AnomalyScorer:
    """The per-step anomaly score of every sensor (module docstring).

    Every component gives a tail probability per sensor and step: the value detectors score
    each reading of the step and keep the most surprising one; the residual and embedding
    likelihoods score the step. Each is calibrated per sensor; the fused probability is
    ``min(1, K * min_k p_k)`` and the score ``1 - p ** (1 / m)`` with ``m`` such that the
    score reaches ``alerts.anomaly_threshold`` exactly at ``p = alerts.max_per_10k / 10^4``.
    Sensors scoring at or above ``explain_at`` get evidence naming the leading component and
    its values, with every component's score in the detail.
    """

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        a, p = cfg.anomaly, cfg.patching.patch_len
        steps = max(24, -(-a.probation_readings // p))
        self.residual = AnomalyLikelihood(a.long_window, a.short_window, warmup=steps)
        self.embedding = AnomalyLikelihood(a.long_window, a.short_window, warmup=steps)
        step_window = max(50, a.calibration_window // p)
        self.cal = {c: TailCalibrator(steps, a.tail_mass, step_window)
                    for c in ("residual", "embedding")}
        self.use = a.detector_names()
        self.values = {d: value_detector(d, cfg) for d in a.value_detectors()}
        for d, det in self.values.items():
            # a window statistic moves slowly, so its tail takes more readings to learn;
            # tested once per step, its calibration counts steps
            if det.once_per_step:
                self.cal[d] = TailCalibrator(
                    -(-(a.probation_readings + 8 * det.window) // p), a.tail_mass,
                    max(50, a.calibration_window // p))
            else:
                self.cal[d] = TailCalibrator(a.probation_readings, a.tail_mass,
                                             a.calibration_window)
        self.m = exponent(cfg.alerts.max_per_10k, cfg.alerts.anomaly_threshold)
        self._gap = np.zeros(0, bool)      # sensors whose previous step had a missing reading
        self._weights: dict[tuple[str, ...], dict[str, float] | None] = {}   # fusion shares

    def _likelihood(self, name: str, lik: AnomalyLikelihood, stat: np.ndarray) -> np.ndarray:
        """Calibrated tail probability of a per-step likelihood component."""
        n = len(stat)
        lik._grow(n)
        warm = lik.count[:n] >= lik.warmup
        sc = lik.learn_many(stat)
        s = np.where(warm & ~np.isnan(stat), -9.0 * np.log1p(-np.minimum(sc, 1 - 1e-16)),
                     np.nan)
        return self.cal[name].learn_many(s)

    def update(self, step: int, ts: int, names: list[str], residual: np.ndarray,
               distance: np.ndarray | None, values: np.ndarray | None = None,
               explain_at: float = 1.0) -> tuple[ScoreBlock, dict[str, Evidence]]:
        """Score one step (every detector scores, then learns). ``values`` ``[N, P]``: the
        step's readings (NaN: none), for the value detectors."""
        n = len(names)
        if len(residual) != n or (distance is not None and len(distance) != n):
            raise ValueError(f"anomaly scorer: residual ({len(residual)}) and distance must "
                             f"have one value per sensor ({n})")
        if values is not None and (values.ndim != 2 or values.shape[0] != n):
            raise ValueError(f"anomaly scorer: values must be [sensors={n}, readings], got "
                             f"shape {values.shape}")
        use = self.use
        if values is not None:
            # a nowcast over a context with missing readings is not news about the process:
            # no residual score on a step with a gap, nor on the step after it
            gap = np.isnan(values).any(axis=1)
            prev = np.zeros(n, bool)
            prev[:min(n, len(self._gap))] = self._gap[:n]
            self._gap = gap
            residual = np.where(gap | prev, np.nan, residual)
        p: dict[str, np.ndarray] = {}
        raw: dict[str, np.ndarray] = {}
        if "residual" in use:
            p["residual"] = self._likelihood("residual", self.residual, residual)
            raw["residual"] = residual
        if distance is not None and "embedding" in use:
            p["embedding"] = self._likelihood("embedding", self.embedding, distance)
            raw["embedding"] = distance
        at: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        if values is not None and self.values:
            for name, det in self.values.items():
                best = np.ones(n)
                where = np.zeros(n, np.int64)
                surprise = np.full(n, np.nan)
                ref = np.full((n, 3), np.nan)
                for j in range(values.shape[1]):
                    x = values[:, j]
                    before = _reference(det, n)
                    s = (det.learn_many(x, score=j == values.shape[1] - 1)
                         if det.once_per_step else det.learn_many(x))
                    pj = self.cal[name].learn_many(s)
                    better = (pj < best) | ((pj == best) & (s > np.nan_to_num(surprise, nan=-1)))
                    best = np.where(better, pj, best)
                    where = np.where(better, j, where)
                    surprise = np.where(better, s, surprise)
                    if before is not None:
                        ref = np.where(better[:, None], before, ref)
                p[name] = best
                raw[name] = surprise
                at[name] = (where, surprise, ref)
        key = tuple(p)
        if key not in self._weights:
            self._weights[key] = self.cfg.anomaly.weights_for(list(p))
        w = self._weights[key]
        fused = fuse(p, w) if p else np.ones(n)
        score = score_of(fused, self.m)
        comps = {c: score_of(v, self.m) for c, v in p.items()}
        block = ScoreBlock(step, ts, list(names), score, comps, raw)
        evidence = {}
        for i in np.flatnonzero(score >= explain_at):
            which = min(p, key=lambda c: p[c][i] / (w[c] if w else 1.0))
            text, d = self._explain(which, i, residual, distance, values, at)
            d.update({"detector": "fused", "component": which, "statistic": STATISTIC[which],
                      "fused_p": float(fused[i]),
                      "scores": {c: round(float(v[i]), 4) for c, v in comps.items()},
                      "p": {c: float(v[i]) for c, v in p.items()},
                      "weights": ({c: round(v, 6) for c, v in w.items()} if w else
                                  {c: round(1.0 / len(p), 6) for c in p}),
                      "rule": ("p = min(1, K * min_k p_k)" if w is None else
                               "p = min(1, min_k p_k / w_k), w: " + ", ".join(
                                   f"{c} {v:.3g}" for c, v in w.items()))
                      + "; score = 1 - p ** (1/m)"})
            d = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                 for k, v in d.items()}          # strict JSON: null, never NaN
            evidence[names[i]] = Evidence(score=float(score[i]), detector="fused",
                                          statistic=STATISTIC[which], text=text, detail=d)
        return block, evidence

    def _explain(self, which: str, i: int, residual: np.ndarray, distance: np.ndarray | None,
                 values: np.ndarray | None, at: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The leading component's words and numbers for sensor ``i``."""
        d: dict[str, Any] = {"residual": round(float(residual[i]), 4)}
        if i < len(self.residual.mean):
            d["residual_long_mean"] = round(float(self.residual.mean[i]), 4)
        if distance is not None:
            d["embedding_distance"] = round(float(distance[i]), 4)
            if i < len(self.embedding.mean):
                d["embedding_long_mean"] = round(float(self.embedding.mean[i]), 4)
        if which == "residual":
            return (f"its readings are off the model's expectation by {residual[i]:.2f} of "
                    f"its usual spread (normally {self.residual.mean[i]:.2f})", d)
        if which == "embedding":
            return (f"its recent pattern is unlike its usual ones (distance "
                    f"{distance[i]:.3g}, normally {self.embedding.mean[i]:.3g})",  # type: ignore[index]
                    d)
        where, surprise, ref = at[which]
        j = int(where[i])
        x = float(values[i, j]) if values is not None else float("nan")
        d.update({"value": x, "reading": j, "surprise": round(float(surprise[i]), 3)})
        mean, std = float(ref[i, 0]), float(ref[i, 1])
        if which == "level":
            d.update({"normal_mean": mean, "normal_std": std})
            side = "above" if x > mean else "below"
            return (f"value {x:.4g} is far {side} its recent mean {mean:.4g} "
                    f"({abs(x - mean) / max(std, 1e-12):.1f} standard deviations)", d)
        if which == "jump":
            prev = float(ref[i, 2])
            d.update({"previous": prev, "normal_jump_std": std})
            return (f"reading {x:.4g} jumped by {x - prev:+.4g} from the previous one, "
                    f"{abs(x - prev - mean) / max(std, 1e-12):.1f}x its usual step-to-step "
                    "change", d)
        if which == "range":
            lo, hi = mean, std
            d.update({"range_low": lo, "range_high": hi})
            if x > hi or x < lo:
                side = "above its highest" if x > hi else "below its lowest"
                return (f"value {x:.4g} is {side} reading so far (range {lo:.4g} to "
                        f"{hi:.4g})", d)
            return (f"the mean of its last {self.values[which].short} readings left the range "
                    f"of such means so far (value {x:.4g}; readings so far {lo:.4g} to "
                    f"{hi:.4g})", d)
        if which == "distribution":
            return (f"the distribution of its last {self.values[which].window} readings "
                    f"matches none of its usual ones (value {x:.4g})", d)
        return (f"the pattern of its last {self.values[which].context} readings was never "
                f"seen on it before (value {x:.4g})", d)

    def state_dict(self) -> dict[str, Any]:
        return {"gap": self._gap.copy(), "residual": self.residual.state_dict(),
                "embedding": self.embedding.state_dict(),
                "calibration": {c: cal.state_dict() for c, cal in self.cal.items()},
                "values": {d: det.state_dict() for d, det in self.values.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.residual.load_state_dict(state["residual"])
        self.embedding.load_state_dict(state["embedding"])
        self._gap = np.array(state.get("gap", []), bool)
        # a state of an earlier version has no calibration or value detectors: they start
        # fresh (their probation runs again)
        for c, st in state.get("calibration", {}).items():
            if c in self.cal:
                self.cal[c].load_state_dict(st)
        for d, st in state.get("values", {}).items():
            if d in self.values:
                self.values[d].load_state_dict(st)


def _reference(det: Any, n: int) -> np.ndarray | None:
    """``[n, 3]`` mean and std a windowed Gaussian scores the next value against, and the
    previous value (jump mode); a range break's low and high of the readings."""
    if isinstance(det, RangeBreak):
        det._grow(n)
        return np.stack([det.lo[:n, 0], det.hi[:n, 0], np.full(n, np.nan)], axis=1)
    if not isinstance(det, WindowedGaussian):
        return None
    det.m.grow(n)
    prev = det.prev[:n] if len(det.prev) >= n else np.full(n, np.nan)
    return np.stack([det.m.mean[:n], det.m.std(n), prev], axis=1)
