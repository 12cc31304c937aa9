"""The data's cadence: how often sensors report, from the first readings of each sensor.

The live worker uses it to infer the grid interval when none was configured (readings are
held until it is known, then processed in order) and, when one was configured, to warn loudly
when the data's cadence and the grid disagree by more than a factor of 2 (hourly data on a
5-minute grid makes 12 grid points per real reading: most "forecasts" are then scored on
forward-filled gaps). Only the first ``per_sensor`` spacings of each sensor are kept, so the
cost stops once the cadence is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from connectors.spacing import (
    calendar_interval,
    calendar_name,
    grid_phase,
    round_interval,
    sampling_interval,
)

MISMATCH_FACTOR = 2.0


@dataclass
class Cadence:
    """What the estimator concluded: the typical spacing and how many sensors say so."""

    interval_ms: int
    sensors: int            # sensors whose spacing went into it
    spacings: int           # spacings seen in all

    def describe(self) -> str:
        return (f"{format_interval(self.interval_ms)} (median spacing of {self.sensors} "
                f"sensor(s), {self.spacings} spacings)")


@dataclass
class CadenceEstimator:
    """Per-sensor first ``per_sensor + 1`` timestamps; ``estimate()`` is the median over
    sensors of each sensor's interval (``connectors.spacing.sampling_interval``; a calendar
    unit when their spacings say so), once ``min_sensors`` sensors (or every sensor seen,
    when fewer) have ``min_spacings`` spacings each."""

    min_spacings: int = 2
    min_sensors: int = 3
    per_sensor: int = 16
    _last: dict[str, int] = field(default_factory=dict)
    _times: dict[str, list[int]] = field(default_factory=dict)   # its first timestamps

    def learn_many(self, sensors: list[str], ts: np.ndarray | list[int]) -> None:
        """Readings ``(sensor, ts)`` in arrival order; out-of-order and repeated timestamps are
        skipped (they say nothing about the cadence)."""
        last, times, cap = self._last, self._times, self.per_sensor + 1
        for s, t in zip(sensors, np.asarray(ts, dtype=np.int64).tolist(), strict=True):
            prev = last.get(s)
            if prev is None:
                last[s] = t
                times[s] = [t]
            elif t > prev:
                last[s] = t
                if len(times[s]) < cap:
                    times[s].append(t)

    @property
    def saturated(self) -> bool:
        """Every sensor seen has its fill of spacings: more readings change nothing."""
        return bool(self._times) and all(len(t) > self.per_sensor
                                          for t in self._times.values())

    def estimate(self, force: bool = False) -> Cadence | None:
        """The cadence, or None while too few spacings were seen (``force``: from whatever
        was seen, None only without a single spacing)."""
        need = 1 if force else self.min_spacings
        ready = [np.asarray(t, np.int64) for t in self._times.values() if len(t) > need]
        if not ready:
            return None
        if not force and len(ready) < min(self.min_sensors, len(self._times)):
            return None
        count = sum(len(t) - 1 for t in ready)
        unit = calendar_interval(np.concatenate([np.diff(t) for t in ready]))
        if unit is not None:        # months (28-31 d apart) on a grid of the mean month
            return Cadence(unit, len(ready), count)
        # each sensor's spacing from the span of its readings over their grid steps (the
        # median of a few jittered spacings is off by seconds), else its median spacing
        per = [float(sampling_interval(t) or np.median(np.diff(t))) for t in ready]
        return Cadence(int(round(float(np.median(per)))), len(ready), count)

    def phase(self, interval_ms: int) -> int:
        """Where the readings sit between grid points of ``interval_ms``
        (``connectors.spacing.grid_phase`` of each sensor's first readings: the phase half of
        them or more share, else 0)."""
        per = [grid_phase(np.asarray(t, np.int64), interval_ms)
               for t in self._times.values() if len(t) >= 3]
        return _common_phase(per)


    def straddling(self, interval_ms: int, phase_ms: int) -> int:
        """Consecutive readings of a sensor one interval apart (+- a quarter) that a grid of
        ``interval_ms`` and phase ``phase_ms`` puts on one grid point or two apart: readings
        that jitter across the grid's half points."""
        n = 0
        for t in self._times.values():
            a = np.asarray(t, np.int64)
            if a.size < 2:
                continue
            grid = (a + interval_ms // 2 - phase_ms) // interval_ms
            one = np.abs(np.diff(a) - interval_ms) <= interval_ms // 4
            n += int((one & (np.diff(grid) != 1)).sum())
        return n


def _common_phase(per: list[int]) -> int:
    """The phase most sensors share (half of them or more), else 0."""
    if not per:
        return 0
    values, counts = np.unique(np.asarray(per, np.int64), return_counts=True)
    top = int(np.argmax(counts))
    return int(values[top]) if counts[top] * 2 >= len(per) else 0


def mismatch(grid_ms: int, cadence_ms: int, factor: float = MISMATCH_FACTOR) -> bool:
    """The grid and the data's cadence differ by more than ``factor`` either way."""
    return max(grid_ms, cadence_ms) > factor * min(grid_ms, cadence_ms)


def nice_interval(ms: int) -> int:
    """A measured spacing as the whole days, hours, minutes, seconds or 10 ms it is within
    0.5 % of (``connectors.spacing.round_interval``), so jitter does not make an odd grid;
    never below 10 ms."""
    return max(10, round_interval(ms))


def format_interval(ms: int) -> str:
    """``300000`` → ``'5 min'``; ``3600000`` → ``'1 h'``; ``86400000`` → ``'1 d'``;
    ``2629746000`` → ``'1 month'`` (a mean Gregorian month: ``connectors.spacing``)."""
    if (unit := calendar_name(ms)) is not None:
        return f"1 {unit}"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size:
            v = ms / size
            return f"{v:g} {unit}" if math.isclose(v, round(v), abs_tol=1e-9) else f"{v:.3g} {unit}"
    return f"{ms} ms"


def mismatch_message(grid_ms: int, cadence: Cadence, where: str) -> str:
    """The loud warning when the configured grid and the data disagree."""
    ratio = max(grid_ms, cadence.interval_ms) / min(grid_ms, cadence.interval_ms)
    finer = grid_ms < cadence.interval_ms
    consequence = ("most grid points get no reading, so the model sees mostly gaps and "
                   "forecasts are scored on few real points" if finer else
                   "several readings fall on one grid point and only the last of them is kept "
                   "(the others count as duplicates)")
    return (f"{where}: the data arrive every {cadence.describe()}, but the grid "
            f"(patching.interval_ms) is {format_interval(grid_ms)}: {ratio:.3g}x "
            f"{'finer' if finer else 'coarser'}; {consequence}. Pass --interval-ms "
            f"{nice_interval(cadence.interval_ms)} (or leave it out for the worker to infer it)")
