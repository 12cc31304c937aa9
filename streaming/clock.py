"""The event-time clock that a few sensors cannot move: a quorum over per-sensor times.

A region's clock is the newest grid time that at least ``m`` of its sensors have reached
(``m = min(patching.clock_quorum, ceil(sensors seen / 2))``): one sensor stamping its
readings a day ahead cannot pull it forward, and dead sensors cannot hold it back. This
module holds the vectorized piece: the clock after every reading of a batch, computed
exactly (the same value a reading-by-reading loop gives), so verdicts never depend on how
readings are batched.
"""

from __future__ import annotations

import numpy as np

INT_MIN = np.iinfo(np.int64).min
INT_MAX = np.iinfo(np.int64).max


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
