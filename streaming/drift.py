"""Drift monitoring on forecast residuals with river detectors, and the alert policy.

Each sensor's residual statistic (mean absolute forecast error of a realized step, in units of
the sensor's running std) is standardized against its own recent history and fed to a river
detector. Only increases of the error raise alerts: a model that gets better is no drift.
The policy adds a warm-up, a per-sensor cooldown and a severity.
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
class _SensorState:
    detector: Any
    n: int = 0
    mean: float = 0.0      # EWMA of the statistic (its normal level)
    var: float = 0.0       # EWMA variance of the statistic
    cooldown: int = 0
    last_alert_step: int | None = None


class ResidualDriftMonitor:
    """Per-sensor drift detection on forecast residuals; ``update`` returns alert dicts."""

    def __init__(self, cfg: DriftConfig, ewma: float = 0.02) -> None:
        self.cfg = cfg
        self.ewma = ewma
        self.sensors: list[_SensorState] = []
        self.n_alerts = 0

    def _state(self, i: int) -> _SensorState:
        while len(self.sensors) <= i:
            self.sensors.append(_SensorState(make_detector(self.cfg, seed=len(self.sensors))))
        return self.sensors[i]

    def update(self, step: int, ts: int, sensor_idx: np.ndarray, names: list[str],
               stat: np.ndarray) -> list[dict[str, Any]]:
        """Feed one realized step's statistic per sensor (NaN = nothing to score)."""
        alerts: list[dict[str, Any]] = []
        cfg = self.cfg
        for i, name, x in zip(sensor_idx.tolist(), names, stat.tolist(), strict=True):
            if math.isnan(x):
                continue
            st = self._state(i)
            st.n += 1
            if st.n <= cfg.warmup_steps:
                # warm-up: learn the statistic's normal level (plain running mean/variance)
                d = x - st.mean
                st.mean += d / st.n
                st.var += (d * (x - st.mean) - st.var) / st.n
                continue
            sd = max(math.sqrt(max(st.var, 0.0)), 0.05 * abs(st.mean), 1e-6)
            z = (x - st.mean) / sd
            st.detector.update(z if cfg.detector == "page_hinkley" else x)
            fired = st.detector.drift_detected
            if st.cooldown > 0:
                st.cooldown -= 1
            # the normal level follows the data, but not while the error is unusually high
            if not fired and z < 3.0:
                d = x - st.mean
                st.mean += self.ewma * d
                st.var = (1 - self.ewma) * (st.var + self.ewma * d * d)
            if not fired or st.cooldown > 0:
                continue
            if cfg.detector != "page_hinkley" and z <= 0:
                continue  # ADWIN/KSWIN report changes both ways; a drop of the error is fine
            st.cooldown = cfg.cooldown_steps
            st.last_alert_step = step
            self.n_alerts += 1
            alerts.append({
                "id": f"drift:{name}:{step}", "kind": "drift", "sensors": [name], "ts": int(ts),
                "step": int(step), "detector": cfg.detector, "statistic": "abs_residual",
                "severity": "critical" if z > 6 else "warning",
                "detail": {"value": round(x, 6), "baseline_mean": round(st.mean, 6),
                           "baseline_std": round(math.sqrt(max(st.var, 0.0)), 6),
                           "z": round(z, 3),
                           "text": f"{cfg.detector} fired on the absolute forecast residual of "
                                   f"{name}: {x:.3f} vs normal {st.mean:.3f} (z={z:.1f})"},
            })
            st.detector = make_detector(cfg, seed=i)
        return alerts
