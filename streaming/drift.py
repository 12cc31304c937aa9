"""Drift monitoring on forecast residuals and embeddings with river detectors.

Three channels per sensor (``drift.channels``), the first two in units of the sensor's
running std:

- ``abs_residual``: the mean absolute error of the model's realized forecast of a step. It
  catches changes the model does not absorb (variance, shape).
- ``seasonal_residual``: the absolute difference between a step's mean and the same step one
  season earlier, i.e. the error of a seasonal-naive reference forecast. An online model with
  instance normalization absorbs a level shift within a step, so its own error spikes only
  briefly; the seasonal reference keeps seeing the shift for a whole season.
- ``embedding_distance``: the distance of the newest window's embedding to the sensor's
  running centroid (a change of shape the forecast head may not show).

Errors and distances are skewed (a few large values), so each channel is log-transformed
(``log(x + 0.1)``), standardized against its own recent level, clipped to ``drift.clip``; the
step's common mode across
sensors is removed (a disturbance of the shared model or a holiday hits every sensor), and
a detector watches the result: Page-Hinkley "up" by default (``streaming.detectors``,
vectorized over sensors, river's arithmetic), or river's ADWIN / KSWIN per sensor. Only
increases of an error count: a detection is evidence only when the statistic is above its
normal level now and on average since the estimated onset, and the evidence says since when.
``update`` returns, per sensor, the evidence of its strongest firing channel;
the alert gate (``streaming.alert_gate``) turns it into alerts (cooldown per sensor).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from river import drift
from scipy.special import log_ndtr, ndtri

from connectors.schemas import format_minute
from streaming.alert_gate import Evidence
from streaming.calibration import TailCalibrator
from streaming.config import MIN_WARMUP_STEPS, DriftConfig
from streaming.detectors import PageHinkleyArray


def make_detector(cfg: DriftConfig, seed: int = 0, warmup: int = 4) -> Any:
    """A fresh river detector as configured (``warmup``: ADWIN's grace period, in steps)."""
    if cfg.detector == "page_hinkley":
        return drift.PageHinkley(min_instances=1, delta=cfg.delta,
                                 threshold=cfg.threshold, alpha=1.0, mode="up")
    if cfg.detector == "adwin":
        return drift.ADWIN(delta=cfg.adwin_delta, clock=1, grace_period=warmup)
    return drift.KSWIN(alpha=cfg.kswin_alpha, window_size=cfg.kswin_window,
                       stat_size=cfg.kswin_stat_size, seed=seed)


_PH_FIELDS = ("_drift_detected", "_sum_increase", "_sum_decrease", "_min_increase",
              "_max_decrease")


def detector_state(det: Any) -> dict[str, Any]:
    """The mutable state of a river detector as plain numbers, lists and bytes-as-lists, so
    that a checkpoint holds no pickled objects. Construction parameters come from the
    configuration and are not saved."""
    if isinstance(det, drift.PageHinkley):
        return {"type": "page_hinkley", **{k: float(getattr(det, k)) for k in _PH_FIELDS},
                "mean_n": float(det._x_mean.n), "mean": float(det._x_mean._mean)}
    if isinstance(det, drift.ADWIN):
        return {"type": "adwin", "drift_detected": bool(det._drift_detected),
                "helper": np.frombuffer(det._helper.__getstate__(), np.uint8).copy()}
    if isinstance(det, drift.KSWIN):
        version, internal, gauss = det._rng.getstate()
        return {"type": "kswin", "drift_detected": bool(det._drift_detected),
                "p_value": float(det.p_value), "n": int(det.n),
                "window": np.asarray(det.window, np.float64),
                "rng": (int(version), np.asarray(internal, np.int64),
                        None if gauss is None else float(gauss))}
    raise TypeError(f"no checkpoint format for detector {type(det).__name__}")


def load_detector_state(det: Any, state: dict[str, Any]) -> None:
    """Put ``state`` (from ``detector_state``) into a freshly made detector of the same type."""
    kind = state.get("type")
    if isinstance(det, drift.PageHinkley) and kind == "page_hinkley":
        for k in _PH_FIELDS:
            setattr(det, k, bool(state[k]) if k == "_drift_detected" else float(state[k]))
        det._x_mean.n = float(state["mean_n"])
        det._x_mean._mean = float(state["mean"])
    elif isinstance(det, drift.ADWIN) and kind == "adwin":
        det._drift_detected = bool(state["drift_detected"])
        det._helper.__setstate__(bytes(np.asarray(state["helper"], np.uint8)))
    elif isinstance(det, drift.KSWIN) and kind == "kswin":
        det._drift_detected = bool(state["drift_detected"])
        det.p_value = float(state["p_value"])
        det.n = int(state["n"])
        det.window.clear()
        det.window.extend(float(v) for v in np.asarray(state["window"]))
        version, internal, gauss = state["rng"]
        det._rng.setstate((int(version), tuple(int(v) for v in np.asarray(internal)),
                           None if gauss is None else float(gauss)))
    else:
        raise ValueError(f"checkpointed detector {kind!r} does not match the configured "
                         f"{type(det).__name__} (drift.detector changed?)")


class _Channel:
    """One channel's per-sensor normal level (log units) and detectors."""

    def __init__(self, cfg: DriftConfig, warmup: int) -> None:
        self.cfg = cfg
        self.warmup = warmup
        self.n = np.zeros(0, np.int64)
        self.mean = np.zeros(0)      # normal level of the statistic (running, then EWMA)
        self.var = np.zeros(0)
        self.ph = (PageHinkleyArray(cfg.delta, cfg.threshold, alpha=1.0)
                   if cfg.detector == "page_hinkley" else None)
        self.river: list[Any] = []   # adwin / kswin: one river detector per sensor
        # the sensor's own tail of z: heavy-tailed errors do not pass for drifts
        self.cal = TailCalibrator(probation=max(MIN_WARMUP_STEPS, warmup // 2),
                                  tail_mass=0.2, long_window=2000)

    def grow(self, n: int) -> None:
        pad = n - len(self.n)
        if pad > 0:
            self.n = np.concatenate([self.n, np.zeros(pad, np.int64)])
            self.mean = np.concatenate([self.mean, np.zeros(pad)])
            self.var = np.concatenate([self.var, np.zeros(pad)])
        if self.ph is None:
            while len(self.river) < n:
                self.river.append(make_detector(self.cfg, seed=len(self.river),
                                                warmup=self.warmup))

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n.copy(), "mean": self.mean.copy(),
                               "var": self.var.copy(), "cal": self.cal.state_dict()}
        if self.ph is not None:
            out["ph"] = self.ph.state_dict()
        else:
            out["detectors"] = [detector_state(d) for d in self.river]
        return out

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        if isinstance(state, list):       # the per-sensor format of earlier checkpoints
            state = _from_per_sensor(state, self.ph is not None)
        self.n = np.array(state["n"], np.int64)
        self.mean = np.array(state["mean"], np.float64)
        self.var = np.array(state["var"], np.float64)
        if "cal" in state:                # earlier checkpoints: calibration starts fresh
            self.cal.load_state_dict(state["cal"])
        if self.ph is not None:
            if "ph" not in state:
                raise ValueError("checkpointed drift detectors are not page_hinkley "
                                 "(drift.detector changed?)")
            self.ph.load_state_dict(state["ph"])
        else:
            if "detectors" not in state:
                raise ValueError(f"checkpointed drift detectors are page_hinkley, configured "
                                 f"{self.cfg.detector} (drift.detector changed?)")
            self.river = []
            for i, st in enumerate(state["detectors"]):
                det = make_detector(self.cfg, seed=i, warmup=self.warmup)
                load_detector_state(det, st)
                self.river.append(det)


def _from_per_sensor(states: list[dict[str, Any]], ph: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"n": [int(s["n"]) for s in states],
                           "mean": [float(s["mean"]) for s in states],
                           "var": [float(s["var"]) for s in states]}
    dets = [s["detector"] for s in states]
    if not ph:
        out["detectors"] = dets
    elif all(d.get("type") == "page_hinkley" for d in dets):
        k = len(dets)
        out["ph"] = {"n": [int(d["mean_n"]) for d in dets],
                     "mean": [float(d["mean"]) for d in dets],
                     "sum": [float(d["_sum_increase"]) for d in dets],
                     "min": [float(d["_min_increase"]) for d in dets],
                     "min_at": [0] * k, "run_sum": [0.0] * k, "run_n": [0] * k}
    return out


class DriftMonitor:
    """Per-sensor drift detection on residual and embedding channels (module docstring).

    A detection becomes evidence only when the statistic is *above* its normal level at the
    firing step and on average since the estimated onset (the errors rose): a statistic that
    fell is never reported as a drift. ``step``/``ts`` of ``update`` date the onset.
    """

    def __init__(self, cfg: DriftConfig, ewma: float = 0.02, common_mode_min: int = 5,
                 step_ms: int = 0, patch_len: int = 12) -> None:
        self.cfg = cfg
        self.warmup = cfg.warmup_steps(patch_len)
        self.ewma = ewma
        self.common_mode_min = common_mode_min
        self.step_ms = step_ms
        self.channels: dict[str, _Channel] = {}
        self.t = 0                    # updates so far (the step label when none is given)

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "channels": {c: ch.state_dict() for c, ch in self.channels.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.channels = {}
        self.t = int(state.get("t", 0))
        for c, st in state["channels"].items():
            ch = _Channel(self.cfg, self.warmup)
            ch.load_state_dict(st)
            self.channels[str(c)] = ch

    def update(self, names: list[str], stats: dict[str, np.ndarray], step: int | None = None,
               ts: int | None = None) -> dict[str, Evidence]:
        """Feed one step's statistic per channel and sensor (NaN = nothing to score); returns
        the evidence of the sensors whose detector fired on a rise (the highest z per
        sensor)."""
        cfg = self.cfg
        self.t += 1
        at = self.t if step is None else int(step)
        best_z = np.full(len(names), -np.inf)
        fired: dict[int, dict[str, Any]] = {}
        for channel, stat in stats.items():
            stat = np.asarray(stat, np.float64)
            if stat.ndim != 1 or len(stat) > len(names):
                raise ValueError(f"drift monitor: {channel} must be one value per sensor "
                                 f"(at most {len(names)}), got shape {stat.shape}")
            m = len(stat)
            ch = self.channels.get(channel)
            if ch is None:
                ch = self.channels[channel] = _Channel(cfg, self.warmup)
            ch.grow(m)
            with np.errstate(invalid="ignore"):
                x = np.log(stat + 0.1)
            ok = ~np.isnan(x)
            cnt = ch.n[:m] + ok
            warm = ok & (cnt <= self.warmup)
            mean, var = ch.mean[:m].copy(), ch.var[:m].copy()
            # warm-up: plain running mean/variance of the statistic
            safe = np.maximum(cnt, 1)
            d = np.where(warm, x - mean, 0.0)
            wmean = mean + d / safe
            wvar = var + (d * (np.where(warm, x, 0.0) - wmean) - var) / safe
            ch.mean[:m] = np.where(warm, wmean, mean)
            ch.var[:m] = np.where(warm, wvar, var)
            ch.n[:m] = cnt
            scored = ok & ~warm
            sd = np.maximum(np.sqrt(np.maximum(var, 0.0)), 0.05)   # log units: a 5 % floor
            z_abs = np.where(scored, (x - mean) / sd, np.nan)
            common = (float(np.median(z_abs[scored]))
                      if int(scored.sum()) >= self.common_mode_min else 0.0)
            z = np.clip(z_abs - common, -cfg.clip, cfg.clip)
            # calibrated: a z in the sensor's fitted tail counts only as far as its tail
            # probability under the sensor's own history says (never more than z itself)
            with np.errstate(invalid="ignore"):
                p = ch.cal.learn_many(np.where(scored, -log_ndtr(-z), np.nan))
                z = np.where(p < ch.cal.tail_mass, np.minimum(z, -ndtri(np.maximum(p, 1e-300))),
                             z)
            run = np.zeros(m)
            onset = np.full(m, at, np.int64)
            if ch.ph is not None:
                det = ch.ph.update(np.where(scored, z, np.nan), at)
                run, onset = ch.ph.last_run_mean, ch.ph.last_onset + 1
                rose = det & (z > 0) & (run > 0)
            else:
                det = np.zeros(m, bool)
                for i in np.flatnonzero(scored).tolist():
                    ch.river[i].update(float(x[i]))
                    if ch.river[i].drift_detected:
                        det[i] = True
                        ch.river[i] = make_detector(cfg, seed=i, warmup=self.warmup)
                run = np.where(scored, z, 0.0)
                rose = det & (z > 0)
            # the normal level follows the data, but not while the error is high
            follow = scored & ~det & (z < 3.0)
            dd = np.where(follow, x - mean, 0.0)
            ch.mean[:m] = np.where(follow, mean + self.ewma * dd, ch.mean[:m])
            ch.var[:m] = np.where(follow, (1 - self.ewma) * (var + self.ewma * dd * dd),
                                  ch.var[:m])
            for i in np.flatnonzero(rose & (z > best_z[:m])).tolist():
                best_z[i] = z[i]
                fired[i] = {"channel": channel, "z": float(z[i]), "x": float(x[i]),
                            "common": common, "mean": float(mean[i]),
                            "sd": float(np.sqrt(max(var[i], 0.0))), "run": float(run[i]),
                            "onset": int(onset[i])}
        return {names[i]: self._evidence(names[i], f, at, ts) for i, f in sorted(fired.items())}

    def _evidence(self, name: str, f: dict[str, Any], at: int, ts: int | None) -> Evidence:
        cfg = self.cfg
        z, x, channel = f["z"], f["x"], f["channel"]
        value, normal = math.exp(x) - 0.1, math.exp(f["mean"]) - 0.1
        steps = max(at - f["onset"] + 1, 1)
        since_ts = (None if ts is None or not self.step_ms
                    else int(ts - (steps - 1) * self.step_ms))
        since = "" if since_ts is None else f" since {format_minute(since_ts)}"
        return Evidence(
            score=z, detector=cfg.detector, statistic=channel,
            severity="critical" if z >= cfg.clip else "warning",
            text=f"{channel} of {name} rose{since} ({steps} steps): {value:.3f} vs normal "
                 f"{normal:.3f} (z={z:.1f}, mean z {f['run']:.1f}; {cfg.detector})",
            detail={"direction": "up", "value": round(value, 6), "baseline": round(normal, 6),
                    "since_step": int(f["onset"]), "since_ts": since_ts, "run_steps": steps,
                    "run_mean_z": round(f["run"], 3),
                    "log_value": round(x, 6), "log_baseline_mean": round(f["mean"], 6),
                    "log_baseline_std": round(f["sd"], 6),
                    "z": round(z, 3), "common_mode_z": round(f["common"], 3)})
