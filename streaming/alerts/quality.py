"""Data-quality checks per sensor: silence and flat lines.

A sensor that stops reporting, or reports the same value over and over, is the most common
fault of a live sensor network, and neither is a drift of the process it measures. Per closed
step this stage finds:

- **silence**: a known sensor without any reading for ``data_quality.silence_readings`` grid
  points (rounded up to whole steps) in steps where other sensors reported;
- **flat line**: ``data_quality.flat_readings`` identical consecutive readings (a stuck
  sensor or a frozen gateway repeating its last value). A sensor whose normal includes long
  constant stretches (a rain gauge at 0, a pump switched off) learns it: once a flat line of
  ``L`` readings has cleared, the next is reported only beyond ``2 L`` readings.

Each condition is raised once when it starts (with the time it started) and cleared once when
the sensor recovers (a reading; a different value). While a sensor has an open condition,
``suppressed`` says so and the core drops that sensor's drift and anomaly evidence: a silent
sensor's imputed window is not news about the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.config import StreamConfig
from streaming.ingest.patching import ClosedStep


@dataclass
class QualityEvent:
    """A condition that started (``raised``) or ended on one sensor."""

    sensor: int
    condition: str               # silence | flat_line
    raised: bool                 # False: cleared
    since_step: int              # the condition's first step
    since_ts: int                # when it started (epoch ms)
    detail: dict[str, Any]


class DataQuality:
    """Silence and flat-line state of every sensor (module docstring)."""

    def __init__(self, cfg: StreamConfig) -> None:
        q, p = cfg.data_quality, cfg.patching
        self.cfg = q
        self.iv = p.interval_ms
        self.silence_steps = -(-q.silence_readings // p.patch_len) if q.silence_readings else 0
        self.last_seen = np.full(0, -1, np.int64)      # step of the newest reading (-1: none)
        self.last_ts = np.zeros(0, np.int64)           # its time
        self.silent = np.zeros(0, bool)
        self.last_value = np.full(0, np.nan)
        self.same = np.zeros(0, np.int64)              # identical consecutive readings so far
        self.flat_since = np.zeros(0, np.int64)        # ts of the first of them
        self.flat_step = np.zeros(0, np.int64)
        self.flat = np.zeros(0, bool)
        self.usual_flat = np.zeros(0, np.int64)        # longest cleared flat line so far

    def _grow(self, n: int) -> None:
        pad = n - len(self.last_seen)
        if pad <= 0:
            return

        def cat(a: np.ndarray, fill: Any) -> np.ndarray:
            return np.concatenate([a, np.full(pad, fill, a.dtype)])

        self.last_seen, self.last_ts = cat(self.last_seen, -1), cat(self.last_ts, 0)
        self.silent, self.last_value = cat(self.silent, False), cat(self.last_value, np.nan)
        self.same, self.flat_since = cat(self.same, 0), cat(self.flat_since, 0)
        self.flat_step, self.flat = cat(self.flat_step, 0), cat(self.flat, False)
        self.usual_flat = cat(self.usual_flat, 0)

    @property
    def suppressed(self) -> np.ndarray:
        """``[N]`` bool: sensors with an open condition."""
        return self.silent | self.flat

    def update(self, step: ClosedStep) -> list[QualityEvent]:
        """Fold in one closed step; the conditions that started or ended in it."""
        vals = step.values
        if vals.ndim != 2 or (len(self.last_seen) and vals.shape[0] < len(self.last_seen)):
            raise ValueError(f"data quality: a closed step must be [N, patch_len] values for "
                             f"at least the {len(self.last_seen)} known sensors, got "
                             f"{vals.shape}")
        n, p = vals.shape
        self._grow(n)
        obs = ~np.isnan(vals)
        has = obs.any(axis=1)
        events: list[QualityEvent] = []
        # silence: judged before this step's readings move last_seen
        if self.silence_steps:
            others = int(has.sum()) - has.astype(int) > 0
            known = self.last_seen[:n] >= 0
            gap = step.step - self.last_seen[:n]
            start = known & ~has & others & ~self.silent[:n] & (gap >= self.silence_steps)
            for i in np.flatnonzero(start).tolist():
                since = int(self.last_ts[i]) + self.iv
                events.append(QualityEvent(i, "silence", True, int(self.last_seen[i]) + 1,
                                           since, {"silent_steps": int(gap[i]),
                                                   "last_reading_ts": int(self.last_ts[i])}))
            self.silent[:n] |= start
            back = self.silent[:n] & has
            for i in np.flatnonzero(back).tolist():
                events.append(QualityEvent(i, "silence", False, int(self.last_seen[i]) + 1,
                                           int(self.last_ts[i]) + self.iv,
                                           {"silent_steps": int(step.step - self.last_seen[i]
                                                                - 1)}))
            self.silent[:n] &= ~back
        if self.cfg.flat_readings:
            events += self._flat(step, vals, obs)
        last_col = np.where(obs, np.arange(p), -1).max(axis=1)
        self.last_ts[:n] = np.where(has, step.start_ts + last_col * self.iv, self.last_ts[:n])
        self.last_seen[:n] = np.where(has, step.step, self.last_seen[:n])
        return events

    def _flat(self, step: ClosedStep, vals: np.ndarray, obs: np.ndarray) -> list[QualityEvent]:
        n, p = vals.shape
        events: list[QualityEvent] = []
        need = self.cfg.flat_readings
        last, same = self.last_value[:n], self.same[:n]
        since, flat = self.flat_since[:n], self.flat[:n]
        for j in range(p):
            v, ok = vals[:, j], obs[:, j]
            ts = step.start_ts + j * self.iv
            rep = ok & (v == last)
            new = ok & ~rep
            if flat.any():
                for i in np.flatnonzero(new & flat).tolist():
                    events.append(QualityEvent(i, "flat_line", False, int(self.flat_step[i]),
                                               int(since[i]), {"value": float(last[i]),
                                                               "readings": int(same[i])}))
                cleared = new & flat
                self.usual_flat[:n] = np.where(cleared, np.maximum(self.usual_flat[:n], same),
                                               self.usual_flat[:n])
                flat &= ~new
            same[:] = np.where(rep, same + 1, np.where(new, 1, same))
            since[:] = np.where(new, ts, since)
            self.flat_step[:n] = np.where(new, step.step, self.flat_step[:n])
            last[:] = np.where(ok, v, last)
            start = ok & ~flat & (same >= np.maximum(need, 2 * self.usual_flat[:n]))
            for i in np.flatnonzero(start).tolist():
                events.append(QualityEvent(i, "flat_line", True, int(self.flat_step[i]),
                                           int(since[i]), {"value": float(last[i]),
                                                           "readings": int(same[i])}))
            flat |= start
        return events

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).copy() for k in _FIELDS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in _FIELDS:
            if k == "usual_flat" and k not in state:      # a state of an earlier version
                state = {**state, k: np.zeros(len(state["flat"]), np.int64)}
            setattr(self, k, np.array(state[k], getattr(self, k).dtype))


_FIELDS = ("last_seen", "last_ts", "silent", "last_value", "same", "flat_since", "flat_step",
           "flat", "usual_flat")
