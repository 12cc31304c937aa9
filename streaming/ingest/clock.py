"""The event-time clock that a few sensors cannot move, and the verdict on every reading.

A partition's clock is the newest grid time that at least ``m`` of its sensors have reached
(``m = min(patching.clock_quorum, ceil(sensors seen / 2))``): one sensor stamping its
readings a day ahead cannot pull it forward, and dead sensors cannot hold it back. The
watermark is the minimum over the partitions that still have data to come, minus
``lateness_ms``. A reading is *late* when its step is behind it, and *held* when it is more
than ``max_future_ms`` ahead of its partition's clock: held readings neither move the clock
nor enter a step. They are released when the clock comes within reach; dead-lettered as
``future`` when their sensor's next reading shows they were stamped ahead (the sensor is
flagged once per episode); and when a quorum of sensors is held on consistent runs (a stream
starts, or the whole network resumes after a gap) the clock jumps to them.

Verdicts are defined reading by reading (each against the readings before it), so they never
depend on batching. ``running_quorum_clock`` computes that clock for a whole batch at once;
the vectorized path uses it whenever nothing is held, and is checked equal to the
reading-by-reading one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from connectors.schemas import ReadingBatch
    from streaming.config import PatchingConfig
    from streaming.ingest.registry import PatcherStats, SensorRegistry

HALO_PARTITION = 1 << 30  # the clock partition of ghost readings (``streaming.ingest.halo``)
INT_MIN = np.iinfo(np.int64).min
INT_MAX = np.iinfo(np.int64).max
RUN_CONFIRM = 2           # consistent held readings that make a sensor count for a jump
HOLD_MAX_TOTAL = 100_000  # held readings per patcher before the oldest go to dead-letter
_LATE = "late: its step already closed (older than the watermark)"


@dataclass
class FutureFlag:
    """A sensor whose readings arrive stamped far ahead (one per sensor and episode)."""

    sensor: str
    ts: int                   # the offending reading's time
    clock_ts: int | None      # the clock it was judged against (None: processing time)
    reason: str


@dataclass
class Admission:
    """What the patcher decided for a batch."""

    rejected: list[tuple[int, str]] = field(default_factory=list)     # (batch index, reason)
    rejected_held: list[tuple[Any, str]] = field(default_factory=list)  # (handle, reason)
    flags: list[FutureFlag] = field(default_factory=list)
    full: bool = False        # new sensors were refused: the region is at max_sensors


@dataclass
class _Held:
    seq: int
    sensor: str
    ts: int
    value: float
    part: int
    handle: Any               # the driver's handle for a dead letter (plain data) or None
    batch: int                # judge() call that brought it
    index: int                # its index in that batch


class _Run:
    """Consecutive held readings of one sensor that are consistent with each other."""

    __slots__ = ("count", "first", "last")

    def __init__(self, ts: int) -> None:
        self.count, self.first, self.last = 1, ts, ts


def quorum(clock_quorum: int, n_seen: int) -> int:
    """How many sensors must have reached a time before the clock passes it."""
    return max(1, min(clock_quorum, -(-n_seen // 2)))


def mth_largest(values: np.ndarray, m: int) -> int:
    """The ``m``-th largest of ``values`` (``INT_MIN`` when there are fewer than ``m``)."""
    v = values[values > INT_MIN]
    if len(v) < m:
        return INT_MIN
    return int(np.partition(v, len(v) - m)[len(v) - m])


def running_quorum_clock(g: np.ndarray, slot: np.ndarray, init: np.ndarray, c0: int,
                         m: int) -> np.ndarray:
    """Clock after each reading: ``max(c0, m-th largest per-sensor maximum so far)``.

    ``g`` are the readings' grid indices in arrival order, ``slot`` their sensors (dense
    ``0..S-1``), ``init`` the maxima before the batch of *every* sensor of the region, not
    only those in the batch (``INT_MIN``: none yet), ``c0`` the clock before the batch
    (``INT_MIN``: none). O(n log n) for time-ordered streams.

    A sensor reaches level ``v`` at the first reading that lifts its maximum to ``>= v``;
    the clock is ``>= v`` from the reading at which the ``m``-th sensor reached it. Only
    levels above ``c0`` that are some sensor's maximum can become the clock.
    """
    n = len(g)
    out = np.full(n, c0, np.int64)
    if n == 0:
        return out
    order = np.argsort(slot, kind="stable")
    gs = g[order]
    ss = slot[order]
    start = np.ones(n, bool)
    start[1:] = ss[1:] != ss[:-1]
    gid = np.cumsum(start) - 1
    uniq, rank = np.unique(gs, return_inverse=True)
    span = len(uniq)
    key = gid.astype(np.int64) * span + rank     # group-wise running max by offsets
    incl = uniq[np.maximum.accumulate(key) - gid * span]
    incl = np.maximum(incl, init[ss])
    excl = np.empty(n, np.int64)
    excl[1:] = incl[:-1]
    excl[start] = init[ss[start]]
    ev = (incl > excl) & (incl > c0)
    have = np.sort(init[init > INT_MIN])
    if not ev.any() and (len(have) < m or have[len(have) - m] <= c0):
        return out
    new, prev, where = incl[ev], excl[ev], order[ev]
    levels = np.unique(np.concatenate([new, have[have > c0]]))
    before = len(have) - np.searchsorted(have, levels, side="left")  # reached before batch
    need = m - before
    lo = np.searchsorted(levels, prev, side="right")
    hi = np.searchsorted(levels, new, side="right")
    cnt = hi - lo
    total = int(cnt.sum())
    rep = np.repeat(np.arange(len(new)), cnt)
    first = np.cumsum(cnt) - cnt
    lev = lo[rep] + (np.arange(total) - first[rep])
    at = where[rep]
    srt = np.lexsort((at, lev))
    lev, at = lev[srt], at[srt]
    gstart = np.searchsorted(lev, np.arange(len(levels)), side="left")
    gsize = np.searchsorted(lev, np.arange(len(levels)), side="right") - gstart
    reach = np.full(len(levels), INT_MAX, np.int64)
    reach[need <= 0] = -1
    ok = (need > 0) & (gsize >= need)
    reach[ok] = at[gstart[ok] + need[ok] - 1]
    reach = np.maximum.accumulate(reach)   # reaching a level implies reaching those below
    k = np.searchsorted(reach, np.arange(n), side="right") - 1
    has = k >= 0
    out[has] = np.maximum(levels[k[has]], c0)
    return out


class EventClock:
    """The clock and the verdicts of one patcher (see module docstring)."""

    def __init__(self, cfg: PatchingConfig, registry: SensorRegistry,
                 stats: PatcherStats) -> None:
        self.cfg = cfg
        self.registry = registry
        self.stats = stats
        self._iv = cfg.interval_ms
        self._step_ms = cfg.interval_ms * cfg.patch_len
        self._half = cfg.interval_ms // 2
        # a reading goes to the nearest grid point once its phase is taken off: the rounding
        # boundary lies halfway between readings, so jitter never crosses it
        self._round = self._half - cfg.grid_phase_ms
        self._future = cfg.future_ms()
        self._dead_ms = cfg.clock_dead_steps * self._step_ms
        self.active: set[int] = set()         # partitions the clock waits for (empty = all)
        self.clock: dict[int, int] = {}       # partition -> clock (grid index), once started
        self._seen: dict[int, set[str]] = {}  # partition -> sensors with a valid reading
        self._home: dict[str, int] = {}       # sensor -> partition of its first reading
        n = len(registry)
        self.t_max = np.full(n, INT_MIN, np.int64)      # newest accepted grid index
        self.first_step = np.full(n, INT_MAX, np.int64)  # step of the first accepted reading
        self.home_arr = np.full(n, -1, np.int64)         # partition of each sensor
        # when each sensor last sent a valid reading (arrival time: live, its records' Kafka
        # timestamps; a replay, its rows' time), and which are silent for
        # ``clock_dead_steps`` (as of this batch): they do not count toward their quorum
        self.last_arrival = np.full(n, INT_MIN, np.int64)
        self._dead = np.zeros(n, bool)
        self._n_dead: dict[int, int] = {}     # partition -> its silent sensors
        self._held: dict[str, list[_Held]] = {}   # sensor -> its held readings
        self._n_held = 0
        self._runs: dict[str, _Run] = {}
        self._confirmed: dict[int, set[str]] = {}  # partition -> sensors on confirmed runs
        self._releasing = False               # inside _release (no nested releases)
        self._above: dict[int, int] = {}      # partition -> its sensors ahead of its clock
        self._seq = 0
        self._batch = 0
        self._flagged: dict[str, int] = {}    # sensor -> closed_steps at its last future
        # per judge() call: accepted readings, the running late floor, closed steps so far
        self._acc: tuple[Any, Any, Any] = ([], [], [])
        self._floor_now: int | None = None
        self._next_open: int | None = None
        self._out = Admission()
        self.fast_path = True                 # tests switch it off to check equivalence

    # --- public -------------------------------------------------------------------------

    def set_partitions(self, active: set[int]) -> None:
        """Partitions with data still to come; the clock waits for each of them (the live
        worker passes its assigned partitions that are not caught up, so a partition that
        has not delivered yet holds closing back, and an idle one does not)."""
        self.active = set(active)

    @property
    def watermark(self) -> int | None:
        """Event time up to which every waited-for partition's quorum has delivered, minus
        the lateness; None while one of them has no clock yet."""
        c = self._global_clock()
        return None if c is None else c * self._iv - self.cfg.lateness_ms

    def exists(self, n: int, step: int) -> np.ndarray:
        """Which of the first ``n`` sensors existed at ``step`` (had an accepted reading at
        or before it)."""
        return self.first_step[:n] <= step

    @property
    def held(self) -> list[_Held]:
        return [h for hs in self._held.values() for h in hs]

    def holds(self, sensor: str) -> bool:
        """Whether ``sensor`` has readings held (ahead of the clock)."""
        return sensor in self._held

    def unregistered(self) -> int:
        """Sensors with held readings only (they are registered when released)."""
        index = self.registry.index
        return sum(1 for s in self._held if s not in index)

    def grid(self, ts: np.ndarray | int) -> np.ndarray | int:
        """Grid index of a timestamp: the nearest grid point (``k * interval + phase``)."""
        return (ts + self._round) // self._iv

    def step_of(self, ts: np.ndarray | int) -> np.ndarray | int:
        """Step index of a timestamp (nearest grid point, then ``// patch_len``)."""
        return ((ts + self._round) // self._iv) // self.cfg.patch_len

    def closed_before(self, wm: np.ndarray | int) -> np.ndarray | int:
        """First step still open at watermark ``wm``: steps with end - half <= wm are closed."""
        return (wm + self._half) // self._step_ms

    def flag(self, out: Admission, sensor: str, ts: int, clock_ts: int | None, why: str) -> None:
        self._flag(out, sensor, ts, clock_ts, why)

    def judge(self, batch: ReadingBatch, idx: np.ndarray, ok: np.ndarray, part: np.ndarray,
              next_open: int | None, out: Admission, arrival: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Judge the valid readings (``ok``) of a batch against the clock; returns the
        accepted ones (registry index, ts, value) in the order they are to be stored.
        Rejections and flags go into ``out``. ``arrival``: when the batch arrived (None:
        unknown, every sensor seen counts toward the quorum)."""
        self._batch += 1
        if arrival is not None:
            # this batch's known senders arrived now: the others are judged against them
            known = idx[ok]
            self._arrived(known[known >= 0], arrival)
        self._mark_dead(arrival)
        self._next_open = next_open
        self._out = out
        self._acc = ([], [], [])
        if not (self.fast_path and self._judge_fast(batch, idx, ok, part, out)):
            self._judge_sequential(batch, ok, part, batch.refs, out)
        new = ok & (idx < 0)
        if arrival is not None and new.any():      # the senders this batch registered
            index, names = self.registry.index, batch.sensors
            r = np.fromiter((index.get(names[i], -1) for i in np.flatnonzero(new).tolist()),
                            np.int64)
            self._arrived(r[r >= 0], arrival)
        acc = self._acc
        return (np.asarray(acc[0], np.int64), np.asarray(acc[1], np.int64),
                np.asarray(acc[2], np.float64))

    def _mark_dead(self, arrival: int | None) -> None:
        """Which sensors are silent as of this batch: nothing for ``clock_dead_steps`` of
        arrival time while another sensor of their partition kept sending (relative to the
        partition's newest arrival, so a worker that was down or paused finds no one
        silent), counted per partition."""
        la, home = self.last_arrival, self.home_arr
        known = (la > INT_MIN) & (home >= 0) if arrival is not None and self._dead_ms else None
        if known is None or not known.any():
            if self._n_dead:
                self._dead[:] = False
                self._n_dead = {}
            return
        parts, inv = np.unique(home[known], return_inverse=True)
        newest = np.full(len(parts), INT_MIN, np.int64)
        np.maximum.at(newest, inv, la[known])
        self._dead[:] = False
        self._dead[known] = la[known] < newest[inv] - self._dead_ms
        self._n_dead = {}
        if self._dead.any():
            parts, cnt = np.unique(self.home_arr[self._dead], return_counts=True)
            self._n_dead = dict(zip(parts.tolist(), cnt.tolist(), strict=True))

    def _revive(self, r: int) -> None:
        """A silent sensor sent a reading: it counts toward its quorum again."""
        self._dead[r] = False
        p = int(self.home_arr[r])
        self._n_dead[p] -= 1
        if not self._n_dead[p]:
            del self._n_dead[p]

    def _arrived(self, r: np.ndarray, arrival: int) -> None:
        """The registered sensors ``r`` sent a valid reading that arrived at ``arrival``."""
        self.last_arrival[r] = np.maximum(self.last_arrival[r], arrival)

    def state_dict(self) -> dict[str, Any]:
        return {
            "active": sorted(self.active),
            "clock": {int(k): int(v) for k, v in self.clock.items()},
            "seen": {int(k): sorted(v) for k, v in self._seen.items()},
            "home": dict(self._home), "t_max": self.t_max.copy(),
            "first_step": self.first_step.copy(), "last_arrival": self.last_arrival.copy(),
            "held": [(h.seq, h.sensor, h.ts, h.value, h.part, h.handle) for h in self.held],
            "runs": {s: (r.count, r.first, r.last) for s, r in self._runs.items()},
            "seq": self._seq, "flagged": dict(self._flagged),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = {int(p) for p in state["active"]}
        self.clock = {int(k): int(v) for k, v in state["clock"].items()}
        self._seen = {int(k): set(v) for k, v in state["seen"].items()}
        self._home = {str(k): int(v) for k, v in state["home"].items()}
        self.t_max = np.array(state["t_max"], np.int64)
        self.first_step = np.array(state["first_step"], np.int64)
        # (a state from before arrival times: none known, every sensor counts until it sends)
        self.last_arrival = np.array(state.get("last_arrival",
                                               np.full(len(self.first_step), INT_MIN)),
                                     np.int64)
        self._dead = np.zeros(len(self.last_arrival), bool)
        self._n_dead = {}
        self.home_arr = np.array([self._home.get(s, -1) if self.first_step[i] < INT_MAX
                                  else -1 for i, s in enumerate(self.registry.ids)], np.int64)
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

    # --- the verdicts -------------------------------------------------------------------

    def _quorum(self, part: int) -> int:
        """The partition's quorum over its sensors that are not silent (a region whose
        sensors mostly went quiet keeps a clock: the rest move it)."""
        return quorum(self.cfg.clock_quorum,
                      len(self._seen.get(part, ())) - self._n_dead.get(part, 0))

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
        f = self._next_open
        if clock is not None:
            c = int(self.closed_before(clock * self._iv - self.cfg.lateness_ms))
            f = c if f is None else max(f, c)
        return f

    def _flag(self, out: Admission, sensor: str, ts: int, clock_ts: int | None,
              why: str) -> None:
        """Flag a sensor sending readings stamped ahead: once per episode (an episode ends
        after ``future_rearm_steps`` closed steps without such a reading)."""
        last = self._flagged.get(sensor)
        now = self.stats.closed_steps
        if last is None or now - last >= self.cfg.future_rearm_steps:
            out.flags.append(FutureFlag(sensor, ts, clock_ts, why))
        self._flagged[sensor] = now

    def _judge_fast(self, batch: ReadingBatch, idx: np.ndarray, ok: np.ndarray,
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
        if self._n_dead and self._dead[reg[reg >= 0]].any():
            return False            # a silent sensor is back: the quorum grows mid-batch
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
            live = len(seen) - self._n_dead.get(p, 0)
            if live < 2 * q - 1 and any(h == p and s not in seen
                                        for s, h in fresh_names.items()):
                return False        # the quorum size may change inside the batch
        g = self.grid(batch.ts[sel])
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
            floor = self.closed_before(prev * self._iv - self.cfg.lateness_ms)
            floor[prev == INT_MIN] = INT_MIN
            if self._next_open is not None:
                np.maximum(floor, self._next_open, out=floor)
            np.maximum.accumulate(floor, out=floor)
            late = steps < floor
        elif self._next_open is not None:
            late = steps < self._next_open
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
            self.stats.ghost_accepted += int((self.home_arr[ridx] == HALO_PARTITION).sum())
            self._acc = (ridx, batch.ts[acc], batch.values[acc])
        for p, rows in rows_of.items():
            self.clock[p] = int(after[rows[-1]])
        return True

    def _register(self, sensor: str) -> int:
        r = self.registry.add(sensor)
        self._grow_sensors(len(self.registry))
        self.home_arr[r] = self._home[sensor]
        return r

    def _judge_sequential(self, batch: ReadingBatch, ok: np.ndarray, part: np.ndarray,
                          refs: Any, out: Admission) -> None:
        """Reading by reading: holds, releases, jumps (the definition the fast path meets)."""
        names = batch.sensors
        ts_all = batch.ts
        vals = batch.values
        self._acc = ([], [], [])
        self._out = out
        self._floor_now = self._floor(self._global_clock())
        self._above = {p: self._count_above(p) for p in self.clock}
        index = self.registry.index
        for i in np.flatnonzero(ok).tolist():
            s = names[i]
            t = int(ts_all[i])
            if self._n_dead:
                r = index.get(s)
                if r is not None and self._dead[r]:
                    self._revive(r)
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
        self._acc = (np.asarray(acc_idx, np.int64), np.asarray(acc_ts, np.int64),
                     np.asarray(acc_val, np.float64))
        self.stats.held = self._n_held

    def _accept(self, s: str, t: int, v: float) -> None:
        r = self.registry.index.get(s)
        if r is None:
            r = self._register(s)
        elif self.home_arr[r] < 0:
            self.home_arr[r] = self._home[s]
        gi = int(self.grid(t))
        self._acc[0].append(r)
        self._acc[1].append(t)
        self._acc[2].append(v)
        self.stats.accepted += 1
        if self.home_arr[r] == HALO_PARTITION:
            self.stats.ghost_accepted += 1
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
        target = int(self.grid(min(self._runs[s].first for s in confirmed)))
        old = self.clock.get(part)
        if old is not None:
            if target <= old:
                return
            self.stats.clock_jumps += 1
        self._set_clock(part, target)
        c = mth_largest(self.t_max[self._members(part)], m)
        if c > self.clock[part]:
            self._set_clock(part, c)

    def _grow_sensors(self, n: int) -> None:
        if len(self.t_max) < n:
            pad = n - len(self.t_max)
            self.t_max = np.concatenate([self.t_max, np.full(pad, INT_MIN, np.int64)])
            self.first_step = np.concatenate([self.first_step, np.full(pad, INT_MAX,
                                                                       np.int64)])
            self.home_arr = np.concatenate([self.home_arr, np.full(pad, -1, np.int64)])
            self.last_arrival = np.concatenate([self.last_arrival,
                                                np.full(pad, INT_MIN, np.int64)])
            self._dead = np.concatenate([self._dead, np.zeros(pad, bool)])


def _max_opt(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
