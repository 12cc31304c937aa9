"""Drift monitoring on forecast residuals with river detectors, and the alert policy.

Two residual channels per sensor, both in units of the sensor's running std:

- ``abs_residual``: the mean absolute error of the model's realized forecast of a step. It
  catches changes the model does not absorb (variance, shape).
- ``seasonal_residual``: the absolute difference between a step's mean and the same step one
  season earlier, i.e. the error of a seasonal-naive reference forecast. An online model with
  instance normalization absorbs a level shift within a step, so its own error spikes only
  briefly; the seasonal reference keeps seeing the shift for a whole season.

Each channel is standardized against its own recent level, the step's common mode across
sensors is removed (a disturbance of the shared model or a holiday hits every sensor), and
a river detector (Page-Hinkley "up" by default) watches the result. Only increases of an
error raise alerts. The policy adds a warm-up, a per-sensor cooldown shared by the channels,
and a severity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from river import drift

from streaming.config import DriftConfig


def make_detector(cfg: DriftConfig, seed: int = 0) -> Any:
    """A fresh river detector as configured."""
    if cfg.detector == "page_hinkley":
        return drift.PageHinkley(min_instances=1, delta=cfg.delta,
                                 threshold=cfg.threshold, alpha=1.0, mode="up")
    if cfg.detector == "adwin":
        return drift.ADWIN(delta=cfg.adwin_delta, clock=1, grace_period=cfg.warmup_steps)
    return drift.KSWIN(alpha=cfg.adwin_delta, window_size=100, stat_size=30, seed=seed)


@dataclass
class _ChannelState:
    detector: Any
    n: int = 0
    mean: float = 0.0      # normal level of the statistic (running, then EWMA)
    var: float = 0.0


class ResidualDriftMonitor:
    """Per-sensor drift detection on residual channels; ``update`` returns alert dicts."""

    def __init__(self, cfg: DriftConfig, ewma: float = 0.02, common_mode_min: int = 5) -> None:
        self.cfg = cfg
        self.ewma = ewma
        self.common_mode_min = common_mode_min
        self.channels: dict[str, list[_ChannelState]] = {}
        self.cooldown: dict[int, int] = {}
        self.n_alerts = 0

    def _state(self, channel: str, i: int) -> _ChannelState:
        states = self.channels.setdefault(channel, [])
        while len(states) <= i:
            states.append(_ChannelState(make_detector(self.cfg, seed=len(states))))
        return states[i]

    def update(self, step: int, ts: int, names: list[str],
               stats: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Feed one step's statistic per channel and sensor (NaN = nothing to score)."""
        cfg = self.cfg
        for i in list(self.cooldown):
            self.cooldown[i] -= 1
            if self.cooldown[i] <= 0:
                del self.cooldown[i]
        fired: dict[int, tuple[str, float, float, float, _ChannelState]] = {}
        for channel, stat in stats.items():
            scored: list[tuple[int, float, float, _ChannelState]] = []
            for i, x in enumerate(stat.tolist()):
                if math.isnan(x):
                    continue
                st = self._state(channel, i)
                st.n += 1
                if st.n <= cfg.warmup_steps:
                    d = x - st.mean  # warm-up: plain running mean/variance of the statistic
                    st.mean += d / st.n
                    st.var += (d * (x - st.mean) - st.var) / st.n
                    continue
                sd = max(math.sqrt(max(st.var, 0.0)), 0.05 * abs(st.mean), 1e-6)
                scored.append((i, x, (x - st.mean) / sd, st))
            common = 0.0
            if len(scored) >= self.common_mode_min:
                common = float(np.median([z for _, _, z, _ in scored]))
            for i, x, z_abs, st in scored:
                z = z_abs - common
                st.detector.update(z if cfg.detector == "page_hinkley" else x)
                hit = st.detector.drift_detected and (cfg.detector == "page_hinkley" or z > 0)
                if st.detector.drift_detected:
                    st.detector = make_detector(cfg, seed=i)
                elif z < 3.0:
                    # the normal level follows the data, but not while the error is high
                    d = x - st.mean
                    st.mean += self.ewma * d
                    st.var = (1 - self.ewma) * (st.var + self.ewma * d * d)
                if hit and i not in self.cooldown and (i not in fired or z > fired[i][1]):
                    fired[i] = (channel, z, x, common, st)
        alerts = []
        for i in sorted(fired):
            channel, z, x, common, st = fired[i]
            self.cooldown[i] = cfg.cooldown_steps + 1
            self.n_alerts += 1
            name = names[i]
            alerts.append({
                "id": f"drift:{name}:{step}", "kind": "drift", "sensors": [name], "ts": int(ts),
                "step": int(step), "detector": cfg.detector, "statistic": channel,
                "severity": "critical" if z > 6 else "warning",
                "detail": {"value": round(x, 6), "baseline_mean": round(st.mean, 6),
                           "baseline_std": round(math.sqrt(max(st.var, 0.0)), 6),
                           "z": round(z, 3), "common_mode_z": round(common, 3),
                           "text": f"{cfg.detector} fired on {channel} of {name}: "
                                   f"{x:.3f} vs normal {st.mean:.3f} (z={z:.1f})"},
            })
        return alerts
