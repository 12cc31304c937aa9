"""Incremental patching: readings → a fixed sampling grid → closed patches (time steps).

Per sensor, readings are aligned to the nearest grid point (``interval_ms``). Every
``patch_len`` grid points form one step. A step closes when the watermark (the event-time
clock minus ``lateness_ms``) passes its end; a reading for a closed step is late and rejected
with a reason.

The clock is robust to single sensors (``streaming.clock``): it is the newest grid time that
a quorum of sensors has reached, per input partition, and the minimum over the partitions
that still have data to come. A reading further than ``max_future_ms`` ahead of its
partition's clock is *held*: it neither moves the clock nor enters a step. It is released
when the clock comes within reach; it goes to dead-letter as ``future`` when its sensor's
later readings show it was stamped ahead (or when too many are held); and when a quorum of
sensors is held on consistent runs (the whole network resumed after a gap, or a new stream
starts) the clock jumps there and they are released. In the live worker a reading further
than ``max_future_ms`` ahead of processing time is ``future`` at once.

Values beyond ``value_abs_max`` or outside a sensor's configured range are ``out_of_range``.
A sensor exists from its first accepted reading on (``first_step``); one that never had one
appears nowhere. The result depends only on the order of the readings, never on how they
are batched.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.schemas import ReadingBatch
from streaming.clock import INT_MAX, INT_MIN, mth_largest, quorum, running_quorum_clock
from streaming.config import PatchingConfig

RUN_CONFIRM = 2           # consistent held readings that make a sensor count for a jump
HOLD_MAX_TOTAL = 100_000  # held readings per patcher before the oldest go to dead-letter


class SensorRegistry:
    """Sensor id ↔ dense index. Fixed (e.g. by a sensor graph) or growing."""

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

    def find(self, sensors: list[str]) -> np.ndarray:
        """Indices of ``sensors`` (-1 for those not registered), adding none."""
        get = self.index.get
        return np.fromiter((get(s, -1) for s in sensors), np.int64, len(sensors))


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
    future: int = 0
    out_of_range: int = 0
    unknown_sensor: int = 0
    duplicates: int = 0
    null_values: int = 0
    closed_steps: int = 0
    events: int = 0
    late_events: int = 0
    future_events: int = 0
    held: int = 0             # readings held right now (ahead of the clock)
    released: int = 0         # held readings accepted later
    clock_jumps: int = 0


@dataclass
class FutureFlag:
    """A sensor whose readings arrive stamped far ahead (one per sensor and episode)."""

    sensor: str
    ts: int                   # the offending reading's time
    clock_ts: int | None      # the clock it was judged against (None: processing time)
    reason: str


@dataclass
class Admission:
    """What ``admit`` decided for a batch."""

    rejected: list[tuple[int, str]] = field(default_factory=list)     # (batch index, reason)
    rejected_held: list[tuple[Any, str]] = field(default_factory=list)  # (handle, reason)
    flags: list[FutureFlag] = field(default_factory=list)


@dataclass
class _OpenStep:
    values: np.ndarray
    n: int = 0


@dataclass
class _Held:
    seq: int
    sensor: str
    ts: int
    value: float
    part: int
    handle: Any               # the driver's handle for a dead letter (plain data) or None
    batch: int                # admit() call that brought it
    index: int                # its index in that batch


class _Run:
    """Consecutive held readings of one sensor that are consistent with each other."""

    __slots__ = ("count", "first", "last")

    def __init__(self, ts: int) -> None:
        self.count, self.first, self.last = 1, ts, ts


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
        self._future = c.future_ms()
        self.active: set[int] = set()         # partitions the clock waits for (empty = all)
        self.clock: dict[int, int] = {}       # partition -> clock (grid index), once started
        self._seen: dict[int, set[str]] = {}  # partition -> sensors with a valid reading
        self._home: dict[str, int] = {}       # sensor -> partition of its first reading
        n = len(self.registry)
        self.t_max = np.full(n, INT_MIN, np.int64)      # newest accepted grid index
        self.first_step = np.full(n, INT_MAX, np.int64)  # step of the first accepted reading
        self.home_arr = np.full(n, -1, np.int64)         # partition of each sensor
        self._open: dict[int, _OpenStep] = {}
        self._events: dict[int, np.ndarray] = {}
        self._held: dict[str, list[_Held]] = {}   # sensor -> its held readings
        self._n_held = 0
        self._runs: dict[str, _Run] = {}
        self._confirmed: dict[int, set[str]] = {}  # partition -> sensors on confirmed runs
        self._releasing = False               # inside _release (no nested releases)
        self._above: dict[int, int] = {}      # partition -> its sensors ahead of its clock
        # per admit() call, sequential path: accepted readings, the running late floor
        self._acc: tuple[list[int], list[int], list[float]] = ([], [], [])
        self._floor_now: int | None = None
        self._out = Admission()
        self.last_admission = Admission()     # what the last update() decided
        self._seq = 0
        self._batch = 0
        self._flagged: dict[str, int] = {}    # sensor -> closed_steps at its last future
        self._ranges: dict[str, tuple[float, float]] = {}
        self._range_cache: dict[str, tuple[float, float] | None] = {}
        for pattern, bounds in c.value_ranges.items():
            self._ranges[pattern] = (float(bounds[0]), float(bounds[1]))
        self.fast_path = True                 # tests switch it off to check equivalence

    # --- public -------------------------------------------------------------------------

    def set_partitions(self, active: set[int]) -> None:
        """Partitions with data still to come; the clock waits for each of them.

        The live worker passes its assigned partitions that are not caught up, so a
        partition that has not delivered yet holds closing back, and an idle one does not.
        """
        self.active = set(active)

    @property
    def watermark(self) -> int | None:
        """Event time up to which every waited-for partition's quorum has delivered, minus
        the lateness; None while one of them has no clock yet."""
        c = self._global_clock()
        return None if c is None else c * self._iv - self.cfg.lateness_ms

    def step_of(self, ts: np.ndarray | int) -> np.ndarray | int:
        """Step index of a timestamp (nearest grid point, then ``// patch_len``)."""
        return ((ts + self._half) // self._iv) // self.cfg.patch_len

    def step_end(self, step: int) -> int:
        return (step + 1) * self._step_ms

    def exists(self, n: int, step: int) -> np.ndarray:
        """Which of the first ``n`` sensors existed at ``step`` (had an accepted reading at
        or before it)."""
        return self.first_step[:n] <= step

    def update(self, batch: ReadingBatch, now_ms: int | None = None
               ) -> tuple[list[ClosedStep], list[tuple[int, str]]]:
        """``admit`` then ``close_ready``: the steps that closed and the rejected readings of
        this batch (held readings rejected later are in ``last_admission``)."""
        self.last_admission = self.admit(batch, now_ms)
        return self.close_ready(), self.last_admission.rejected

    def admit(self, batch: ReadingBatch, now_ms: int | None = None) -> Admission:
        """Judge and insert a batch of readings (nothing closes yet: see ``close_ready``).

        ``now_ms`` (processing time, live only) bounds how far ahead a reading may be.
        """
        out = Admission()
        n = len(batch)
        self._batch += 1
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
                self._flag(out, s, int(ts[i]), None, "stamped ahead of processing time")
            self.stats.future += int(far.sum())
            ok &= ~far
        part = batch.partition if len(batch.partition) == n else np.zeros(n, np.int64)
        refs = batch.refs
        self._out = out
        done = self.fast_path and self._admit_fast(batch, idx, ok, part, out)
        if not done:
            self._admit_sequential(batch, ok, part, refs, out)
        out.rejected.sort(key=lambda r: r[0])
        return out

    def add_events(self, events: list[dict[str, Any]], sensor_of: Any,
                   now_ms: int | None = None) -> list[tuple[int, str]]:
        """Count events per (sensor, step) as side information; late ones are rejected, and
        live (``now_ms``) so are events further than ``max_future_ms`` ahead of processing
        time. Events ahead of the readings' clock are normal: the worker fetches the small
        events topic ahead of a readings backlog.

        ``sensor_of(event) -> index | None`` resolves the sensor an event touches.
        """
        rejected: list[tuple[int, str]] = []
        for i, ev in enumerate(events):
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

    def close_ready(self) -> list[ClosedStep]:
        """Close every open step the watermark has passed."""
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

    def state_dict(self) -> dict[str, Any]:
        return {
            "sensors": list(self.registry.ids), "fixed": self.registry.fixed,
            "next_open": self.next_open, "active": sorted(self.active),
            "clock": {int(k): int(v) for k, v in self.clock.items()},
            "seen": {int(k): sorted(v) for k, v in self._seen.items()},
            "home": dict(self._home), "t_max": self.t_max.copy(),
            "first_step": self.first_step.copy(),
            "open": {k: (v.values.copy(), v.n) for k, v in self._open.items()},
            "events": {k: v.copy() for k, v in self._events.items()},
            "held": [(h.seq, h.sensor, h.ts, h.value, h.part, h.handle)
                     for hs in self._held.values() for h in hs],
            "runs": {s: (r.count, r.first, r.last) for s, r in self._runs.items()},
            "seq": self._seq, "flagged": dict(self._flagged),
            "stats": dict(vars(self.stats)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.registry = SensorRegistry(state["sensors"], fixed=state["fixed"])
        self.next_open = state["next_open"]
        self.active = {int(p) for p in state["active"]}
        self.clock = {int(k): int(v) for k, v in state["clock"].items()}
        self._seen = {int(k): set(v) for k, v in state["seen"].items()}
        self._home = {str(k): int(v) for k, v in state["home"].items()}
        self.t_max = np.array(state["t_max"], np.int64)
        self.first_step = np.array(state["first_step"], np.int64)
        self.home_arr = np.array([self._home.get(s, -1) if self.first_step[i] < INT_MAX
                                  else -1 for i, s in enumerate(self.registry.ids)], np.int64)
        self._open = {int(k): _OpenStep(np.array(v[0]), int(v[1]))
                      for k, v in state["open"].items()}
        self._events = {int(k): np.array(v) for k, v in state["events"].items()}
        self._held = {}
        for q, s, t, v, p, h in sorted(state["held"], key=lambda x: x[0]):
            self._held.setdefault(str(s), []).append(
                _Held(int(q), str(s), int(t), float(v), int(p), h, -1, -1))
        self._n_held = sum(len(v) for v in self._held.values())
        self._runs = {}
        self._confirmed = {}
        for s, (c, f, last) in state["runs"].items():
            r = _Run(int(f))
            r.count, r.last = int(c), int(last)
            self._runs[s] = r
            if r.count >= RUN_CONFIRM:
                self._confirmed.setdefault(self._home[s], set()).add(s)
        self._seq = int(state["seq"])
        self._flagged = {str(k): int(v) for k, v in state["flagged"].items()}
        self.stats = PatcherStats(**state["stats"])

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

    def _quorum(self, part: int) -> int:
        return quorum(self.cfg.clock_quorum, len(self._seen.get(part, ())))

    def _global_clock(self) -> int | None:
        """Minimum over the partitions the clock waits for (``set_partitions``, else every
        partition seen so far); None if one of them has no clock yet."""
        parts = self.active or set(self._seen)
        if not parts:
            return None
        vals = [self.clock.get(p) for p in parts]
        if any(v is None for v in vals):
            return None
        return min(vals)  # type: ignore[type-var]

    def _floor(self, clock: int | None) -> int | None:
        """First step still open at ``clock`` (with the closed steps)."""
        f = self.next_open
        if clock is not None:
            c = int(self._closed_before(clock * self._iv - self.cfg.lateness_ms))
            f = c if f is None else max(f, c)
        return f

    def _closed_before(self, wm: np.ndarray | int) -> np.ndarray | int:
        """First step still open at watermark ``wm``: steps with end - half <= wm are closed."""
        return (wm + self._half) // self._step_ms

    def _grid(self, ts: np.ndarray | int) -> np.ndarray | int:
        return (ts + self._half) // self._iv

    def _flag(self, out: Admission, sensor: str, ts: int, clock_ts: int | None,
              why: str) -> None:
        """Flag a sensor sending readings stamped ahead: once per episode (an episode ends
        after ``future_rearm_steps`` closed steps without such a reading)."""
        last = self._flagged.get(sensor)
        now = self.stats.closed_steps
        if last is None or now - last >= self.cfg.future_rearm_steps:
            out.flags.append(FutureFlag(sensor, ts, clock_ts, why))
        self._flagged[sensor] = now

    def _admit_fast(self, batch: ReadingBatch, idx: np.ndarray, ok: np.ndarray,
                    part: np.ndarray, out: Admission) -> bool:
        """The vectorized path, exact when nothing is held and no reading turns out to be
        ahead of its clock; returns False (state untouched) when the sequential path must
        decide instead."""
        if self._held:
            return False
        sel = np.flatnonzero(ok)
        n = len(sel)
        if n == 0:
            return True
        names = batch.sensors
        q = self.cfg.clock_quorum
        reg = idx[sel]
        # the clock partition of each reading: its sensor's first partition
        grp = np.full(n, -1, np.int64)
        known = reg >= 0
        if known.any():
            grp[known] = self.home_arr[reg[known]]
        fresh = np.flatnonzero(grp < 0)
        fresh_names: dict[str, int] = {}
        for j in fresh.tolist():
            s = names[sel[j]]
            h = fresh_names.get(s)
            if h is None:
                h = self._home.get(s, int(part[sel[j]]))
                fresh_names[s] = h
            grp[j] = h
        groups = np.unique(grp).tolist()
        for p in groups:
            if p not in self.clock:
                return False
            seen = self._seen.get(p, set())
            if len(seen) < 2 * q - 1 and any(h == p and s not in seen
                                             for s, h in fresh_names.items()):
                return False        # the quorum size may change inside the batch
        g = self._grid(batch.ts[sel])
        after = np.empty(n, np.int64)
        before = np.empty(n, np.int64)
        rows_of = {}
        for p in groups:
            rows = np.flatnonzero(grp == p) if len(groups) > 1 else np.arange(n)
            rows_of[p] = rows
            members = np.flatnonzero(self.home_arr == p)
            slot_arr = np.full(len(self.home_arr), -1, np.int64)
            slot_arr[members] = np.arange(len(members))
            r = reg[rows]
            slots = np.full(len(rows), -1, np.int64)
            slots[r >= 0] = slot_arr[r[r >= 0]]
            init = list(self.t_max[members])
            extra: dict[str, int] = {}
            for j in np.flatnonzero(slots < 0).tolist():
                s = names[sel[rows[j]]]
                k = extra.get(s)
                if k is None:
                    k = extra[s] = len(init)
                    init.append(INT_MIN)
                slots[j] = k
            c0 = self.clock[p]
            a = running_quorum_clock(g[rows], slots, np.asarray(init, np.int64), c0,
                                     self._quorum(p))
            after[rows] = a
            before[rows[0]] = c0
            before[rows[1:]] = a[:-1]
        if (batch.ts[sel] > before * self._iv + self._future).any():
            return False        # a reading ahead of its clock: held, decided reading by reading
        # the waited-for clock after each reading: min over partitions (forward-filled)
        glob: np.ndarray | None = np.full(n, INT_MAX, np.int64)
        for p in self.active or set(self._seen):
            if p not in self.clock:
                glob = None
                break
            col = np.full(n, self.clock[p], np.int64)
            rows = rows_of.get(p)
            if rows is not None:
                if len(rows) == n:
                    col = after
                else:
                    mark = np.full(n, -1, np.int64)
                    mark[rows] = rows
                    last = np.maximum.accumulate(mark)
                    has = last >= 0
                    col[has] = after[last[has]]
            np.minimum(glob, col, out=glob)
        steps = g // self.cfg.patch_len
        if glob is not None:
            prev = np.empty(n, np.int64)
            g0 = self._global_clock()
            prev[0] = INT_MIN if g0 is None else g0
            prev[1:] = glob[:-1]
            floor = self._closed_before(prev * self._iv - self.cfg.lateness_ms)
            floor[prev == INT_MIN] = INT_MIN
            if self.next_open is not None:
                np.maximum(floor, self.next_open, out=floor)
            np.maximum.accumulate(floor, out=floor)
            late = steps < floor
        elif self.next_open is not None:
            late = steps < self.next_open
        else:
            late = np.zeros(n, bool)
        # commit: new sensors' partitions, verdicts, registry, per-sensor and partition clocks
        for s, h in fresh_names.items():
            self._home.setdefault(s, h)
            self._seen.setdefault(h, set()).add(s)
        if late.any():
            for j in np.flatnonzero(late).tolist():
                out.rejected.append((int(sel[j]), _LATE))
            self.stats.late += int(late.sum())
            keep = ~late
            acc, ridx, g_acc, st_acc = sel[keep], reg[keep].copy(), g[keep], steps[keep]
        else:
            acc, ridx, g_acc, st_acc = sel, reg.copy(), g, steps
        if len(acc):
            for j in np.flatnonzero(ridx < 0).tolist():
                s = names[acc[j]]
                r = self.registry.index.get(s)
                ridx[j] = self._register(s) if r is None else r
            new_home = self.home_arr[ridx] < 0
            if new_home.any():
                for r in np.unique(ridx[new_home]).tolist():
                    self.home_arr[r] = self._home[self.registry.ids[r]]
            np.maximum.at(self.t_max, ridx, g_acc)
            np.minimum.at(self.first_step, ridx, st_acc)
            self.stats.accepted += len(acc)
            self._insert(ridx, batch.ts[acc], batch.values[acc])
        for p, rows in rows_of.items():
            self.clock[p] = int(after[rows[-1]])
        return True

    def _register(self, sensor: str) -> int:
        r = self.registry.add(sensor)
        self._grow_sensors(len(self.registry))
        self.home_arr[r] = self._home[sensor]
        return r

    def _admit_sequential(self, batch: ReadingBatch, ok: np.ndarray, part: np.ndarray,
                          refs: Any, out: Admission) -> None:
        """Reading by reading: holds, releases, jumps (the definition the fast path meets)."""
        names = batch.sensors
        ts_all = batch.ts
        vals = batch.values
        self._acc = ([], [], [])
        self._out = out
        self._floor_now = self._floor(self._global_clock())
        self._above = {p: self._count_above(p) for p in self.clock}
        for i in np.flatnonzero(ok).tolist():
            s = names[i]
            t = int(ts_all[i])
            h = self._home.setdefault(s, int(part[i]))
            self._seen.setdefault(h, set()).add(s)
            c = self.clock.get(h)
            if c is None or t > c * self._iv + self._future:
                self._hold(_Held(self._seq, s, t, float(vals[i]), h,
                                 refs(i) if refs is not None else None, self._batch, i))
                self._seq += 1
                self._try_jump(h)
                continue
            if s in self._held:
                self._reject_held_of(s, c)
            floor = self._floor_now
            if floor is not None and int(self.step_of(t)) < floor:
                out.rejected.append((i, _LATE))
                self.stats.late += 1
                continue
            self._accept(s, t, float(vals[i]))
        acc_idx, acc_ts, acc_val = self._acc
        if acc_idx:
            self._insert(np.asarray(acc_idx, np.int64), np.asarray(acc_ts, np.int64),
                         np.asarray(acc_val, np.float64))
        self.stats.held = self._n_held

    def _accept(self, s: str, t: int, v: float) -> None:
        r = self.registry.index.get(s)
        if r is None:
            r = self._register(s)
        elif self.home_arr[r] < 0:
            self.home_arr[r] = self._home[s]
        gi = int(self._grid(t))
        self._acc[0].append(r)
        self._acc[1].append(t)
        self._acc[2].append(v)
        self.stats.accepted += 1
        self.first_step[r] = min(self.first_step[r], gi // self.cfg.patch_len)
        old = self.t_max[r]
        if gi > old:
            self.t_max[r] = gi
            h = self._home[s]
            c = self.clock.get(h)
            if c is not None and gi > c >= old:
                self._above[h] = self._above.get(h, 0) + 1
                if self._above[h] >= self._quorum(h):
                    self._advance(h)

    def _members(self, part: int) -> np.ndarray:
        return np.flatnonzero(self.home_arr == part)

    def _count_above(self, part: int) -> int:
        return int((self.t_max[self._members(part)] > self.clock[part]).sum())

    def _advance(self, part: int) -> None:
        """Recompute a partition's clock once a quorum of its sensors passed it; release what
        the new clock reaches."""
        c = mth_largest(self.t_max[self._members(part)], self._quorum(part))
        if c > self.clock[part]:
            self._set_clock(part, c)

    def _set_clock(self, part: int, c: int) -> None:
        self.clock[part] = c
        self._above[part] = self._count_above(part)
        self._floor_now = _max_opt(self._floor_now,
                                   self._floor(self._global_clock()))
        if not self._releasing:
            self._release(part)

    def _release(self, part: int) -> None:
        """Accept the held readings of ``part`` that its clock now reaches (arrival order)."""
        self._releasing = True
        try:
            while True:
                reach = self.clock[part] * self._iv + self._future
                ready = sorted((h for hs in self._held.values() for h in hs
                                if h.part == part and h.ts <= reach), key=lambda h: h.seq)
                if not ready:
                    return
                for h in ready:
                    self._unhold(h)
                for h in ready:
                    floor = self._floor_now
                    if floor is not None and int(self.step_of(h.ts)) < floor:
                        self._reject(h, _LATE, late=True)
                        continue
                    self.stats.released += 1
                    self._accept(h.sensor, h.ts, h.value)     # may advance the clock
        finally:
            self._releasing = False

    def _hold(self, h: _Held) -> None:
        run = self._runs.get(h.sensor)
        confirmed = self._confirmed.setdefault(h.part, set())
        if run is not None and run.last < h.ts <= run.last + self._future:
            run.count += 1
            run.last = h.ts
            if run.count >= RUN_CONFIRM:
                confirmed.add(h.sensor)
        else:
            self._runs[h.sensor] = _Run(h.ts)
            confirmed.discard(h.sensor)
        mine = self._held.setdefault(h.sensor, [])
        mine.append(h)
        self._n_held += 1
        per_sensor = 2 * self.cfg.patch_len
        if len(mine) > per_sensor:
            self._drop_held(mine[0], "held longer than its sensor's hold limit "
                            f"({per_sensor} readings)")
        if self._n_held > HOLD_MAX_TOTAL:
            oldest = min((hs[0] for hs in self._held.values()), key=lambda x: x.seq)
            self._drop_held(oldest, f"more than {HOLD_MAX_TOTAL} readings held")

    def _unhold(self, h: _Held) -> None:
        mine = self._held[h.sensor]
        mine.remove(h)
        self._n_held -= 1
        if not mine:
            del self._held[h.sensor]
            self._runs.pop(h.sensor, None)
            self._confirmed.get(h.part, set()).discard(h.sensor)

    def _drop_held(self, h: _Held, why: str) -> None:
        self._unhold(h)
        c = self.clock.get(h.part)
        self._reject(h, f"future: ahead of the event-time clock; {why}")
        self._flag(self._out, h.sensor, h.ts, None if c is None else c * self._iv,
                   "readings stamped far ahead of the network clock")

    def _reject_held_of(self, sensor: str, clock: int) -> None:
        """The sensor's newest reading is not ahead: the ones it had ahead were mis-stamped."""
        mine = list(self._held.get(sensor, []))
        for h in mine:
            self._unhold(h)
            self._reject(h, f"future: more than {self._future} ms (patching.max_future_ms) "
                            f"ahead of the event-time clock ({clock * self._iv}) and of "
                            "its sensor's later readings")
        if mine:
            self._flag(self._out, sensor, mine[0].ts, clock * self._iv,
                       "readings stamped far ahead of the network clock")

    def _reject(self, h: _Held, reason: str, late: bool = False) -> None:
        if late:
            self.stats.late += 1
        else:
            self.stats.future += 1
        if h.batch == self._batch:
            self._out.rejected.append((h.index, reason))
        else:
            self._out.rejected_held.append((h.handle, reason))

    def _try_jump(self, part: int) -> None:
        """Start the clock, or move it across a gap, when a quorum of sensors is held on
        consistent runs: the clock goes to the earliest of their runs, and what it reaches
        is released."""
        m = self._quorum(part)
        confirmed = self._confirmed.get(part, ())
        if len(confirmed) < m:
            return
        target = int(self._grid(min(self._runs[s].first for s in confirmed)))
        old = self.clock.get(part)
        if old is not None:
            if target <= old:
                return
            self.stats.clock_jumps += 1
        self._set_clock(part, target)
        c = mth_largest(self.t_max[self._members(part)], m)
        if c > self.clock[part]:
            self._set_clock(part, c)

    # --- storing readings ---------------------------------------------------------------

    def _grow_sensors(self, n: int) -> None:
        if len(self.t_max) < n:
            pad = n - len(self.t_max)
            self.t_max = np.concatenate([self.t_max, np.full(pad, INT_MIN, np.int64)])
            self.first_step = np.concatenate([self.first_step, np.full(pad, INT_MAX,
                                                                       np.int64)])
            self.home_arr = np.concatenate([self.home_arr, np.full(pad, -1, np.int64)])

    def _insert(self, idx: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        grid = (ts + self._half) // self._iv
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


_LATE = "late: its step already closed (older than the watermark)"


def _max_opt(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _grow(a: np.ndarray, n: int) -> np.ndarray:
    if a.shape[0] >= n:
        return a
    out = np.full((n, *a.shape[1:]), np.nan, a.dtype)
    out[: a.shape[0]] = a
    return out


