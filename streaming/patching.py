"""Incremental patching: readings → a fixed sampling grid → closed patches (time steps).

Per sensor, readings are aligned to the nearest grid point (``interval_ms``). Every
``patch_len`` grid points form one step. A step closes when the watermark (newest reading time
minus ``lateness_ms``) passes its end; a reading for a closed step is late and rejected with a
reason. The result depends only on the order of the readings, never on how they are batched:
the watermark a reading sees is the running maximum of the readings before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.schemas import ReadingBatch
from streaming.config import PatchingConfig


class SensorRegistry:
    """Sensor id ↔ dense index. Fixed (e.g. by a sensor graph) or growing on first sight."""

    def __init__(self, sensors: list[str] | None = None, *, fixed: bool = False) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.fixed = fixed
        for s in sensors or []:
            self.add(s)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, sensor: str) -> int:
        i = self.index.get(sensor)
        if i is None:
            i = len(self.ids)
            self.index[sensor] = i
            self.ids.append(sensor)
        return i

    def lookup(self, sensors: list[str]) -> np.ndarray:
        """Indices of ``sensors`` (-1 for unknown ones when fixed; new ones are added otherwise)."""
        get = self.index.get
        if self.fixed:
            return np.fromiter((get(s, -1) for s in sensors), np.int64, len(sensors))
        add = self.add
        return np.fromiter((get(s) if s in self.index else add(s) for s in sensors),
                           np.int64, len(sensors))


@dataclass
class ClosedStep:
    """One closed time step: ``patch_len`` grid points for every known sensor."""

    step: int
    start_ts: int
    end_ts: int
    values: np.ndarray      # float64 [N, P]; NaN = no reading at that grid point
    events: np.ndarray      # float32 [N]; events that touched the sensor in this step
    n_readings: int


@dataclass
class PatcherStats:
    accepted: int = 0
    late: int = 0
    too_far_ahead: int = 0
    unknown_sensor: int = 0
    duplicates: int = 0
    null_values: int = 0
    closed_steps: int = 0
    events: int = 0
    late_events: int = 0


@dataclass
class _OpenStep:
    values: np.ndarray
    n: int = 0


@dataclass
class IncrementalPatcher:
    """Turns reading batches into closed steps (see module docstring)."""

    cfg: PatchingConfig
    registry: SensorRegistry = field(default_factory=SensorRegistry)
    max_ts: int | None = None       # newest reading time seen (any partition)
    next_open: int | None = None    # first step that is not closed yet
    stats: PatcherStats = field(default_factory=PatcherStats)

    def __post_init__(self) -> None:
        self.part_max: dict[int, int] = {}  # newest reading time per input partition
        self.active: set[int] = set()       # partitions the clock waits for (empty = all seen)
        self._open: dict[int, _OpenStep] = {}
        self._events: dict[int, np.ndarray] = {}
        self._step_ms = self.cfg.interval_ms * self.cfg.patch_len
        self._half = self.cfg.interval_ms // 2

    # --- public -------------------------------------------------------------------------

    def set_partitions(self, active: set[int]) -> None:
        """Partitions with data still to come; the clock waits for each of them.

        The live worker passes its assigned partitions that are not caught up, so a
        partition that has not delivered yet holds closing back, and an idle one does not.
        """
        self.active = set(active)

    def _clock_parts(self) -> set[int]:
        return self.active if self.active else set(self.part_max)

    @property
    def watermark(self) -> int | None:
        """Event time up to which every active partition has delivered, minus the lateness."""
        parts = self._clock_parts()
        if not parts or any(p not in self.part_max for p in parts):
            return None
        return min(self.part_max[p] for p in parts) - self.cfg.lateness_ms

    def step_of(self, ts: np.ndarray | int) -> np.ndarray | int:
        """Step index of a timestamp (nearest grid point, then ``// patch_len``)."""
        return ((ts + self._half) // self.cfg.interval_ms) // self.cfg.patch_len

    def step_end(self, step: int) -> int:
        return (step + 1) * self._step_ms

    def update(self, batch: ReadingBatch) -> tuple[list[ClosedStep], list[tuple[int, str]]]:
        """Insert a batch of readings; return the steps that closed and the rejected readings.

        Rejections are ``(index into batch, reason)``.
        """
        rejected: list[tuple[int, str]] = []
        n = len(batch)
        if n == 0:
            return [], rejected
        idx = self.registry.lookup(batch.sensors)
        ok = idx >= 0
        if not ok.all():
            for i in np.flatnonzero(~ok):
                rejected.append((int(i), f"unknown sensor {batch.sensors[i][:80]!r}"))
            self.stats.unknown_sensor += int((~ok).sum())
        ts = batch.ts
        part = batch.partition if len(batch.partition) == n else np.zeros(n, np.int64)
        late, ahead = self._admission(ts, ok, part)
        for i in np.flatnonzero(late):
            rejected.append((int(i), "late: its step already closed (older than the watermark)"))
        for i in np.flatnonzero(ahead):
            rejected.append((int(i), "ts too far ahead of the newest reading "
                                     f"(> {self.cfg.max_gap_steps} steps)"))
        self.stats.late += int(late.sum())
        self.stats.too_far_ahead += int(ahead.sum())
        keep = ok & ~late & ~ahead
        self.stats.accepted += int(keep.sum())
        if keep.any():
            self._insert(idx[keep], ts[keep], batch.values[keep])
        rejected.sort()
        return self._close_ready(), rejected

    def add_events(self, events: list[dict[str, Any]], sensor_of: Any) -> list[tuple[int, str]]:
        """Count events per (sensor, step) as side information; late ones are rejected.

        ``sensor_of(event) -> index | None`` resolves the sensor an event touches.
        """
        rejected: list[tuple[int, str]] = []
        for i, ev in enumerate(events):
            k = int(self.step_of(ev["ts"]))
            if self.next_open is not None and k < self.next_open:
                rejected.append((i, "late: its step already closed (older than the watermark)"))
                self.stats.late_events += 1
                continue
            s = sensor_of(ev)
            if s is None:
                rejected.append((i, "event names no known sensor and no position near one"))
                continue
            counts = self._events.get(k)
            if counts is None or len(counts) <= s:
                grown = np.zeros(max(len(self.registry), s + 1), np.float32)
                if counts is not None:
                    grown[: len(counts)] = counts
                counts = self._events[k] = grown
            counts[s] += 1.0
            self.stats.events += 1
        return rejected

    def state_dict(self) -> dict[str, Any]:
        return {
            "sensors": list(self.registry.ids), "fixed": self.registry.fixed,
            "max_ts": self.max_ts, "next_open": self.next_open,
            "part_max": dict(self.part_max), "active": sorted(self.active),
            "open": {k: (v.values.copy(), v.n) for k, v in self._open.items()},
            "events": {k: v.copy() for k, v in self._events.items()},
            "stats": dict(vars(self.stats)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.registry = SensorRegistry(state["sensors"], fixed=state["fixed"])
        self.max_ts = state["max_ts"]
        self.part_max = {int(k): int(v) for k, v in state["part_max"].items()}
        self.active = {int(p) for p in state["active"]}
        self.next_open = state["next_open"]
        self._open = {int(k): _OpenStep(np.array(v[0]), int(v[1]))
                      for k, v in state["open"].items()}
        self._events = {int(k): np.array(v) for k, v in state["events"].items()}
        self.stats = PatcherStats(**state["stats"])

    # --- internals ----------------------------------------------------------------------

    def _closed_before(self, wm: np.ndarray | int) -> np.ndarray | int:
        """First step still open at watermark ``wm``: steps with end - half <= wm are closed."""
        return (wm + self._half) // self._step_ms

    def _admission(self, ts: np.ndarray, ok: np.ndarray,
                   part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Late / too-far-ahead flags, each reading judged against the readings before it.

        The event-time clock is the minimum over input partitions of the newest reading
        each has delivered, so a partition read ahead of another (a backlog read one
        partition after the other) does not make the other's readings late.
        """
        lo = np.iinfo(np.int64).min
        n = len(ts)
        gap = self.cfg.max_gap_steps * self._step_ms
        run = np.where(ok, ts, lo)
        run[0] = max(run[0], self.max_ts if self.max_ts is not None else lo)
        np.maximum.accumulate(run, out=run)
        prev = np.empty(n, np.int64)
        prev[0] = self.max_ts if self.max_ts is not None else lo
        prev[1:] = run[:-1]
        ahead = ok & (prev != lo) & (ts - prev > gap)
        if ahead.any():
            return self._admission_sequential(ts, ok, part)
        seen = set(np.unique(part[ok]).tolist())
        clock = self.active | seen if self.active else set(self.part_max) | seen
        hi = np.iinfo(np.int64).max
        base = np.full(n, hi, np.int64)
        for p in sorted(clock | set(self.part_max)):
            r = np.where(ok & (part == p), ts, lo)
            r[0] = max(r[0], self.part_max.get(p, lo))
            np.maximum.accumulate(r, out=r)
            if p in clock:
                pp = np.empty(n, np.int64)
                pp[0] = self.part_max.get(p, lo)
                pp[1:] = r[:-1]
                # an expected partition that has not delivered yet holds the clock back
                wait = p in self.active
                np.minimum(base, np.where(pp == lo, lo if wait else hi, pp), out=base)
            if r[-1] != lo:
                self.part_max[p] = int(r[-1])
        blocked = (base == hi) | (base == lo)
        floor = np.where(blocked, lo, self._closed_before(np.where(blocked, 0, base)
                                                          - self.cfg.lateness_ms))
        if self.next_open is not None:
            floor = np.maximum(floor, self.next_open)
        np.maximum.accumulate(floor, out=floor)  # a closed step stays closed
        late = ok & (self.step_of(ts) < floor)
        if run[-1] != lo:
            self.max_ts = int(run[-1])
        return late, ahead

    def _admission_sequential(self, ts: np.ndarray, ok: np.ndarray,
                              part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Slow path, only for batches holding a reading far ahead: excluded readings must not
        # advance the clock, which the vectorized running maximum cannot express.
        n = len(ts)
        gap = self.cfg.max_gap_steps * self._step_ms
        late = np.zeros(n, bool)
        ahead = np.zeros(n, bool)
        mx = self.max_ts
        floor = self.next_open
        for i in range(n):
            if not ok[i]:
                continue
            t = int(ts[i])
            if mx is not None and t - mx > gap:
                ahead[i] = True
                continue
            wm = self.watermark
            if wm is not None:
                c = int(self._closed_before(wm))
                floor = c if floor is None else max(floor, c)
            if floor is not None and int(self.step_of(t)) < floor:
                late[i] = True
            mx = t if mx is None else max(mx, t)
            p = int(part[i])
            self.part_max[p] = max(self.part_max.get(p, t), t)
        self.max_ts = mx
        return late, ahead

    def _insert(self, idx: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        grid = (ts + self._half) // self.cfg.interval_ms
        step = grid // self.cfg.patch_len
        pos = grid - step * self.cfg.patch_len
        nulls = np.isnan(values)
        self.stats.null_values += int(nulls.sum())
        if nulls.any():
            # a null says "missing": it never overwrites a real value
            idx, step, pos, values = idx[~nulls], step[~nulls], pos[~nulls], values[~nulls]
        if len(idx) == 0:
            return
        n_sensors = len(self.registry)
        p = self.cfg.patch_len
        # last reading wins for a repeated (sensor, grid point); find the last occurrences
        key = (step - step.min()) * (n_sensors * p) + idx * p + pos
        rev_unique = np.unique(key[::-1], return_index=True)[1]
        last = len(key) - 1 - rev_unique
        self.stats.duplicates += len(key) - len(last)
        for k in np.unique(step[last]):
            sel = last[step[last] == k]
            op = self._open.get(int(k))
            if op is None:
                op = self._open[int(k)] = _OpenStep(np.full((n_sensors, p), np.nan))
            elif op.values.shape[0] < n_sensors:
                op.values = _grow(op.values, n_sensors)
            before = np.isnan(op.values[idx[sel], pos[sel]])
            self.stats.duplicates += int((~before).sum())
            op.values[idx[sel], pos[sel]] = values[sel]
            op.n += len(sel)

    def _close_ready(self) -> list[ClosedStep]:
        wm = self.watermark
        if wm is None:
            return []
        first_open = int(self._closed_before(wm))
        closed: list[ClosedStep] = []
        if self.next_open is not None and first_open <= self.next_open:
            return closed
        n_sensors = len(self.registry)
        for k in sorted(s for s in self._open if s < first_open):
            op = self._open.pop(k)
            ev = self._events.pop(k, None)
            events = np.zeros(n_sensors, np.float32)
            if ev is not None:
                events[: len(ev)] = ev[:n_sensors]
            closed.append(ClosedStep(
                step=k, start_ts=k * self._step_ms, end_ts=self.step_end(k),
                values=_grow(op.values, n_sensors), events=events, n_readings=op.n))
        for k in [s for s in self._events if s < first_open]:
            del self._events[k]  # events in steps without any reading: no step to attach to
        self.next_open = first_open
        self.stats.closed_steps += len(closed)
        return closed


def _grow(a: np.ndarray, n: int) -> np.ndarray:
    if a.shape[0] >= n:
        return a
    out = np.full((n, *a.shape[1:]), np.nan, a.dtype)
    out[: a.shape[0]] = a
    return out
