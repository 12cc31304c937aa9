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
a river detector (Page-Hinkley "up" by default) watches the result. Only increases of an
error count. ``update`` returns, per sensor, the evidence of its strongest firing channel;
the alert gate (``streaming.alert_gate``) turns it into alerts (cooldown per sensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from river import drift

from streaming.alert_gate import Evidence
from streaming.config import DriftConfig


def make_detector(cfg: DriftConfig, seed: int = 0) -> Any:
    """A fresh river detector as configured."""
    if cfg.detector == "page_hinkley":
        return drift.PageHinkley(min_instances=1, delta=cfg.delta,
                                 threshold=cfg.threshold, alpha=1.0, mode="up")
    if cfg.detector == "adwin":
        return drift.ADWIN(delta=cfg.adwin_delta, clock=1, grace_period=cfg.warmup_steps)
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


@dataclass
class _ChannelState:
    detector: Any
    n: int = 0
    mean: float = 0.0      # normal level of the statistic (running, then EWMA)
    var: float = 0.0


class DriftMonitor:
    """Per-sensor drift detection on residual and embedding channels (module docstring)."""

    def __init__(self, cfg: DriftConfig, ewma: float = 0.02, common_mode_min: int = 5) -> None:
        self.cfg = cfg
        self.ewma = ewma
        self.common_mode_min = common_mode_min
        self.channels: dict[str, list[_ChannelState]] = {}

    def _state(self, channel: str, i: int) -> _ChannelState:
        states = self.channels.setdefault(channel, [])
        while len(states) <= i:
            states.append(_ChannelState(make_detector(self.cfg, seed=len(states))))
        return states[i]

    def state_dict(self) -> dict[str, Any]:
        return {"channels": {c: [{"n": st.n, "mean": st.mean, "var": st.var,
                                  "detector": detector_state(st.detector)} for st in states]
                             for c, states in self.channels.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.channels = {}
        for c, states in state["channels"].items():
            out = []
            for i, st in enumerate(states):
                det = make_detector(self.cfg, seed=i)
                load_detector_state(det, st["detector"])
                out.append(_ChannelState(det, int(st["n"]), float(st["mean"]), float(st["var"])))
            self.channels[str(c)] = out

    def update(self, names: list[str], stats: dict[str, np.ndarray]) -> dict[str, Evidence]:
        """Feed one step's statistic per channel and sensor (NaN = nothing to score); returns
        the evidence of the sensors whose detector fired (the highest z per sensor)."""
        cfg = self.cfg
        fired: dict[int, tuple[str, float, float, float, _ChannelState]] = {}
        for channel, stat in stats.items():
            stat = np.asarray(stat, np.float64)
            if stat.ndim != 1 or len(stat) > len(names):
                raise ValueError(f"drift monitor: {channel} must be one value per sensor "
                                 f"(at most {len(names)}), got shape {stat.shape}")
            scored: list[tuple[int, float, float, _ChannelState]] = []
            for i, x in enumerate(np.log(stat + 0.1).tolist()):
                if math.isnan(x):
                    continue
                st = self._state(channel, i)
                st.n += 1
                if st.n <= cfg.warmup_steps:
                    d = x - st.mean  # warm-up: plain running mean/variance of the statistic
                    st.mean += d / st.n
                    st.var += (d * (x - st.mean) - st.var) / st.n
                    continue
                sd = max(math.sqrt(max(st.var, 0.0)), 0.05)   # log units: a 5 % floor
                scored.append((i, x, (x - st.mean) / sd, st))
            common = 0.0
            if len(scored) >= self.common_mode_min:
                common = float(np.median([z for _, _, z, _ in scored]))
            for i, x, z_abs, st in scored:
                z = min(max(z_abs - common, -cfg.clip), cfg.clip)
                st.detector.update(z if cfg.detector == "page_hinkley" else x)
                hit = st.detector.drift_detected and (cfg.detector == "page_hinkley" or z > 0)
                if st.detector.drift_detected:
                    st.detector = make_detector(cfg, seed=i)
                elif z < 3.0:
                    # the normal level follows the data, but not while the error is high
                    d = x - st.mean
                    st.mean += self.ewma * d
                    st.var = (1 - self.ewma) * (st.var + self.ewma * d * d)
                if hit and (i not in fired or z > fired[i][1]):
                    fired[i] = (channel, z, x, common, st)
        out = {}
        for i in sorted(fired):
            channel, z, x, common, st = fired[i]
            name = names[i]
            out[name] = Evidence(
                score=z, detector=cfg.detector, statistic=channel,
                severity="critical" if z >= cfg.clip else "warning",
                text=f"{cfg.detector} fired on {channel} of {name}: "
                     f"{math.exp(x) - 0.1:.3f} vs normal {math.exp(st.mean) - 0.1:.3f} "
                     f"(z={z:.1f})",
                detail={"value": round(math.exp(x) - 0.1, 6),
                        "baseline": round(math.exp(st.mean) - 0.1, 6),
                        "log_value": round(x, 6), "log_baseline_mean": round(st.mean, 6),
                        "log_baseline_std": round(math.sqrt(max(st.var, 0.0)), 6),
                        "z": round(z, 3), "common_mode_z": round(common, 3)})
        return out
