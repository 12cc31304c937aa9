"""Incremental patching: readings → a fixed sampling grid → closed patches (time steps).

Per sensor, readings are aligned to the nearest grid point (``interval_ms``, points at
``k * interval_ms + grid_phase_ms``); every
``patch_len`` grid points form one step. Readings are validated here (unknown sensors of a
fixed sensor set; values beyond ``value_abs_max`` or outside a sensor's range:
``out_of_range``; live, readings stamped further than ``max_future_ms`` ahead of processing
time: ``future``), judged against the event-time clock (``streaming.ingest.clock``: late, held,
accepted) and stored; a step closes when the watermark passes its end. Duplicates: the last
value wins; a null marks a missing value and never overwrites one. A sensor exists from its
first accepted reading on; one that never had one appears nowhere.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.schemas import ReadingBatch
from streaming.config import PatchingConfig
from streaming.ingest.clock import Admission, EventClock
from streaming.ingest.registry import PatcherStats, SensorRegistry


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
class _OpenStep:
    values: np.ndarray
    n: int = 0


@dataclass
class IncrementalPatcher:
    """Turns reading batches into closed steps (see module docstring)."""

    cfg: PatchingConfig
    registry: SensorRegistry = field(default_factory=SensorRegistry)
    next_open: int | None = None    # first step that is not closed yet
    stats: PatcherStats = field(default_factory=PatcherStats)

    def __post_init__(self) -> None:
        c = self.cfg
        self._iv = c.interval_ms
        self._step_ms = c.interval_ms * c.patch_len
        self._half = c.interval_ms // 2
        self._phase = c.grid_phase_ms           # grid point k is at k * interval + phase
        self._future = c.future_ms()
        self.clock = EventClock(c, self.registry, self.stats)
        self._open: dict[int, _OpenStep] = {}
        self._events: dict[int, np.ndarray] = {}
        self._ranges = {p: (float(b[0]), float(b[1])) for p, b in c.value_ranges.items()}
        self._range_cache: dict[str, tuple[float, float] | None] = {}
        self.last_admission = Admission()     # what the last update() decided

    # --- public -------------------------------------------------------------------------

    @property
    def watermark(self) -> int | None:
        """The event-time clock's watermark (None until every waited-for partition has one)."""
        return self.clock.watermark

    def set_partitions(self, active: set[int]) -> None:
        """Partitions with data still to come: the clock waits for each of them."""
        self.clock.set_partitions(active)

    def exists(self, n: int, step: int) -> np.ndarray:
        """Which of the first ``n`` sensors existed at ``step`` (had an accepted reading at
        or before it)."""
        return self.clock.exists(n, step)

    def step_of(self, ts: np.ndarray | int) -> np.ndarray | int:
        """Step index of a timestamp (nearest grid point, then ``// patch_len``)."""
        return self.clock.step_of(ts)

    def step_end(self, step: int) -> int:
        return (step + 1) * self._step_ms + self._phase

    def update(self, batch: ReadingBatch, now_ms: int | None = None,
               arrival_ms: int | None = None
               ) -> tuple[list[ClosedStep], list[tuple[int, str]]]:
        """``admit`` then ``close_ready``: the steps that closed and the rejected readings of
        this batch (held readings rejected later are in ``last_admission``)."""
        self.last_admission = self.admit(batch, now_ms, arrival_ms)
        return self.close_ready(), self.last_admission.rejected

    def _bound_sensors(self, sensors: list[str], idx: np.ndarray, ok: np.ndarray,
                       out: Admission) -> None:
        """Hostile input bounds, rejected in ``out`` (and ``ok`` cleared): a sensor id longer
        than ``max_sensor_id_bytes`` (``invalid``), and new sensors once the region holds
        ``max_sensors`` (``capacity``: the sensors already known keep being served)."""
        c = self.cfg
        cap = c.max_sensor_id_bytes
        for i in np.flatnonzero(ok).tolist():
            s = sensors[i]
            if len(s) > cap // 4 and len(s.encode()) > cap:
                out.rejected.append((i, f"invalid: sensor id of {len(s.encode()):,} bytes is "
                                     f"longer than patching.max_sensor_id_bytes = {cap} "
                                     f"({s[:40]!r}...)"))
                ok[i] = False
                self.stats.long_ids += 1
        new = np.flatnonzero(ok & (idx < 0))
        if not len(new):
            return
        room = c.max_sensors - len(self.registry) - self.clock.unregistered()
        if len(new) <= room:       # fewer readings than room: fewer sensors too
            return
        admitted: set[str] = set()
        for i in new.tolist():
            s = sensors[i]
            if s in admitted or self.clock.holds(s):    # held: known, registered later
                continue
            if len(admitted) < room:
                admitted.add(s)
                continue
            out.rejected.append((i, f"capacity: new sensor {s[:80]!r} would exceed "
                                 f"patching.max_sensors = {c.max_sensors} of this region"))
            ok[i] = False
            self.stats.capacity += 1
            out.full = True

    def admit(self, batch: ReadingBatch, now_ms: int | None = None,
              arrival_ms: int | None = None) -> Admission:
        """Judge and insert a batch of readings (nothing closes yet: see ``close_ready``).

        ``now_ms`` (processing time, live only) bounds how far ahead a reading may be.
        ``arrival_ms`` is when the batch arrived (default ``now_ms``; a replay passes the time
        of the rows it replays): a sensor that has sent nothing for
        ``patching.clock_dead_steps`` steps of it no longer counts toward the clock's quorum.
        """
        out = Admission()
        n = len(batch)
        if len(batch.ts) != n or len(batch.values) != n:
            raise ValueError(f"patcher: a reading batch needs one ts and one value per sensor "
                             f"entry, got {n} sensors, {len(batch.ts)} ts, "
                             f"{len(batch.values)} values")
        if n == 0:
            return out
        ts = batch.ts
        vals = batch.values
        idx = self.registry.find(batch.sensors)
        ok = np.ones(n, bool)
        if self.registry.fixed:
            unknown = idx < 0
            for i in np.flatnonzero(unknown):
                out.rejected.append((int(i), f"unknown sensor {batch.sensors[i][:80]!r}"))
            self.stats.unknown_sensor += int(unknown.sum())
            ok &= ~unknown
        self._bound_sensors(batch.sensors, idx, ok, out)
        bad = self._out_of_range(batch.sensors, vals, ok)
        for i, why in bad:
            out.rejected.append((i, why))
            ok[i] = False
        self.stats.out_of_range += len(bad)
        if now_ms is not None:
            far = ok & (ts > now_ms + self._future)
            for i in np.flatnonzero(far):
                s = batch.sensors[i]
                out.rejected.append((int(i), f"future: ts {int(ts[i])} is more than "
                                     f"{self._future} ms (patching.max_future_ms) ahead of "
                                     f"processing time {now_ms}"))
                self.clock.flag(out, s, int(ts[i]), None, "stamped ahead of processing time")
            self.stats.future += int(far.sum())
            ok &= ~far
        part = batch.partition if len(batch.partition) == n else np.zeros(n, np.int64)
        accepted = self.clock.judge(batch, idx, ok, part, self.next_open, out,
                                    arrival_ms if arrival_ms is not None else now_ms)
        if len(accepted[0]):
            self._insert(*accepted)
        out.rejected.sort(key=lambda r: r[0])
        return out

    def add_events(self, events: list[dict[str, Any]], sensors: list[int | None],
                   now_ms: int | None = None) -> list[tuple[int, str]]:
        """Count events per (sensor, step) as side information: ``sensors`` are the indices
        they touch (None: no known sensor). Late ones are rejected, and live (``now_ms``) so
        are events further than ``max_future_ms`` ahead of processing time. Events ahead of
        the readings' clock are normal: the worker fetches the small events topic ahead of a
        readings backlog."""
        if len(sensors) != len(events):
            raise ValueError(f"patcher: {len(events)} events but {len(sensors)} sensors")
        rejected: list[tuple[int, str]] = []
        for i, (ev, s) in enumerate(zip(events, sensors, strict=True)):
            k = int(self.step_of(ev["ts"]))
            if self.next_open is not None and k < self.next_open:
                rejected.append((i, "late: its step already closed (older than the watermark)"))
                self.stats.late_events += 1
                continue
            if now_ms is not None and ev["ts"] > now_ms + self._future:
                rejected.append((i, f"future: more than {self._future} ms "
                                    "(patching.max_future_ms) ahead of processing time"))
                self.stats.future_events += 1
                continue
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

    def count_events(self, n: int) -> None:
        """Events the core counted into steps that already closed (in the context window)."""
        self.stats.events += n

    def close_ready(self) -> list[ClosedStep]:
        """Close every open step the watermark has passed."""
        wm = self.watermark
        if wm is None:
            return []
        return self._close_before(int(self._closed_before(wm)))

    def close_all(self) -> list[ClosedStep]:
        """Close every open step, the last (partial) one included: the end of the input
        (a finished recording, a worker leaving on ``--idle-exit``). Readings for these
        steps that arrive later are late."""
        if not self._open:
            return []
        return self._close_before(max(self._open) + 1)

    def _close_before(self, first_open: int) -> list[ClosedStep]:
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
                step=k, start_ts=k * self._step_ms + self._phase, end_ts=self.step_end(k),
                values=_grow(op.values, n_sensors), events=events, n_readings=op.n))
        for k in [s for s in self._events if s < first_open]:
            del self._events[k]  # events in steps without any reading: no step to attach to
        self.next_open = first_open
        self.stats.closed_steps += len(closed)
        return closed

    def state_dict(self) -> dict[str, Any]:
        return {
            "sensors": list(self.registry.ids), "fixed": self.registry.fixed,
            "next_open": self.next_open, "clock": self.clock.state_dict(),
            "open": {k: (v.values.copy(), v.n) for k, v in self._open.items()},
            "events": {k: v.copy() for k, v in self._events.items()},
            "stats": dict(vars(self.stats)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.registry = SensorRegistry(state["sensors"], fixed=state["fixed"])
        self.stats = PatcherStats(**state["stats"])
        self.next_open = state["next_open"]
        self.clock.registry, self.clock.stats = self.registry, self.stats
        self.clock.load_state_dict(state["clock"])
        self._open = {int(k): _OpenStep(np.array(v[0]), int(v[1]))
                      for k, v in state["open"].items()}
        self._events = {int(k): np.array(v) for k, v in state["events"].items()}

    # --- judging readings ---------------------------------------------------------------

    def _out_of_range(self, sensors: list[str], vals: np.ndarray,
                      ok: np.ndarray) -> list[tuple[int, str]]:
        """Readings whose value is beyond ``value_abs_max`` or the sensor's range."""
        lim = self.cfg.value_abs_max
        bad: list[tuple[int, str]] = []
        with np.errstate(invalid="ignore"):
            big = ok & (np.abs(vals) > lim)
        for i in np.flatnonzero(big):
            bad.append((int(i), f"out_of_range: value {vals[i]:.6g} is beyond +-{lim:g} "
                                "(patching.value_abs_max)"))
        if self._ranges:
            for i in np.flatnonzero(ok & ~big & ~np.isnan(vals)):
                r = self._range_of(sensors[i])
                if r is not None and not r[0] <= vals[i] <= r[1]:
                    bad.append((int(i), f"out_of_range: value {vals[i]:.6g} is outside "
                                        f"[{r[0]:g}, {r[1]:g}] (patching.value_ranges) of "
                                        f"{sensors[i][:80]!r}"))
        bad.sort()
        return bad

    def _range_of(self, sensor: str) -> tuple[float, float] | None:
        if sensor not in self._range_cache:
            hit = self._ranges.get(sensor)
            if hit is None:
                for pattern, r in self._ranges.items():
                    if fnmatch.fnmatchcase(sensor, pattern):
                        hit = r
                        break
            self._range_cache[sensor] = hit
        return self._range_cache[sensor]

    def _closed_before(self, wm: np.ndarray | int) -> np.ndarray | int:
        """First step still open at watermark ``wm``: steps with end - half <= wm are closed."""
        return (wm + self._half) // self._step_ms

    # --- storing readings ---------------------------------------------------------------

    def _insert(self, idx: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        grid = self.clock.grid(ts)
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



def _grow(a: np.ndarray, n: int) -> np.ndarray:
    if a.shape[0] >= n:
        return a
    out = np.full((n, *a.shape[1:]), np.nan, a.dtype)
    out[: a.shape[0]] = a
    return out


