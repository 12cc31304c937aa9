"""Streaming change detectors as arrays: one independent detector per sensor, updated for all
sensors in one vectorized call.

``PageHinkleyArray`` is river's ``drift.PageHinkley`` (``mode="up"``, ``min_instances=1``)
over ``N`` streams at once: the same arithmetic in the same order, so it flags the same
updates as ``N`` river detectors fed the same values (``tests/streaming/alerts/test_detectors.py``
checks this). It also keeps what river does not: the update at which the cumulative sum was
last at its minimum (the estimated onset of the rise that fired) and the mean of the input
since then, so an alert can say since when and by how much.

``ADWINArray`` is river's ``drift.ADWIN`` over ``N`` streams: the same exponential histogram
of bucket totals, the same cut points and cut condition in the same float arithmetic, so it
flags the same updates (a detection resets the stream, as river resets on its next update).
``KSWINArray`` is river's ``drift.KSWIN`` over ``N`` streams: the same windows, statistic,
p-value and rule; only the random sample of the older part comes from one numpy generator
instead of one ``random.Random`` per detector, so detections agree in distribution, not
update for update (see the class docstring).

Every detector takes one value per stream and update (``[N]``, NaN: no value, the stream is
left as it is), grows as streams appear and keeps its state as plain arrays and numbers.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import numpy as np


class PageHinkleyArray:
    """``N`` one-sided (upward) Page-Hinkley tests.

    Per stream: ``mean`` is the running mean of its inputs since the last detection, ``sum``
    accumulates ``x - mean - delta`` (times ``alpha`` for forgetting), and the test fires when
    ``sum`` rises more than ``threshold`` above its running minimum. A stream that fires is
    reset (as river resets on its next update). NaN inputs leave a stream untouched.
    """

    def __init__(self, delta: float = 0.005, threshold: float = 50.0,
                 alpha: float = 1.0) -> None:
        if threshold <= 0 or delta < 0 or not 0 < alpha <= 1:
            raise ValueError("Page-Hinkley needs threshold > 0, delta >= 0, 0 < alpha <= 1")
        self.delta, self.threshold, self.alpha = delta, threshold, alpha
        self.n = np.zeros(0, np.int64)
        self.mean = np.zeros(0)
        self.sum = np.zeros(0)
        self.min = np.zeros(0)
        self.min_at = np.zeros(0, np.int64)    # the ``at`` of the update that set ``min``
        self.run_sum = np.zeros(0)             # inputs since ``min_at`` (exclusive)
        self.run_n = np.zeros(0, np.int64)
        self.last_onset = np.zeros(0, np.int64)    # per stream, as of the last update
        self.last_run_mean = np.zeros(0)

    def __len__(self) -> int:
        return len(self.n)

    def _grow(self, n: int) -> None:
        pad = n - len(self.n)
        if pad <= 0:
            return
        self.n = np.concatenate([self.n, np.zeros(pad, np.int64)])
        self.mean = np.concatenate([self.mean, np.zeros(pad)])
        self.sum = np.concatenate([self.sum, np.zeros(pad)])
        self.min = np.concatenate([self.min, np.full(pad, np.inf)])
        self.min_at = np.concatenate([self.min_at, np.zeros(pad, np.int64)])
        self.run_sum = np.concatenate([self.run_sum, np.zeros(pad)])
        self.run_n = np.concatenate([self.run_n, np.zeros(pad, np.int64)])

    def update(self, x: np.ndarray, at: int = 0) -> np.ndarray:
        """Feed one value per stream (``[N]``, NaN = none); returns ``[N]`` bool: fired.
        ``at`` labels this update (a step index) for ``min_at``. Before a fired stream is
        reset, its onset and run are copied to ``last_onset``/``last_run_mean``."""
        x = np.asarray(x, np.float64)
        if x.ndim != 1:
            raise ValueError(f"Page-Hinkley: one value per stream, got shape {x.shape}")
        m = len(x)
        self._grow(m)
        ok = ~np.isnan(x)
        n = self.n[:m] + ok
        safe_n = np.maximum(n, 1)
        mean = np.where(ok, self.mean[:m] + (1.0 / safe_n) * (np.where(ok, x, 0.0)
                                                              - self.mean[:m]), self.mean[:m])
        dev = x - mean
        s = np.where(ok, self.alpha * self.sum[:m] + dev - self.delta, self.sum[:m])
        lower = ok & (s < self.min[:m])
        mn = np.where(lower, s, self.min[:m])
        self.min_at[:m] = np.where(lower, at, self.min_at[:m])
        self.run_sum[:m] = np.where(lower, 0.0, self.run_sum[:m] + np.where(ok & ~lower, x, 0.0))
        self.run_n[:m] = np.where(lower, 0, self.run_n[:m] + (ok & ~lower))
        fired = ok & (s - mn > self.threshold)
        self.last_onset = self.min_at[:m].copy()
        self.last_run_mean = self.run_sum[:m] / np.maximum(self.run_n[:m], 1)
        self.n[:m] = np.where(fired, 0, n)
        self.mean[:m] = np.where(fired, 0.0, mean)
        self.sum[:m] = np.where(fired, 0.0, s)
        self.min[:m] = np.where(fired, np.inf, mn)
        self.run_sum[:m] = np.where(fired, 0.0, self.run_sum[:m])
        self.run_n[:m] = np.where(fired, 0, self.run_n[:m])
        return fired

    def state_dict(self) -> dict[str, Any]:
        """The streams' state; ``delta``/``threshold``/``alpha`` come from the configuration."""
        return {k: getattr(self, k).copy() for k in _ARRAYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in _ARRAYS:
            setattr(self, k, np.array(state[k], getattr(self, k).dtype))


_ARRAYS = ("n", "mean", "sum", "min", "min_at", "run_sum", "run_n")


def _pad(a: np.ndarray, n: int, fill: float = 0.0) -> np.ndarray:
    """``a`` grown along its first axis to ``n`` rows of ``fill``."""
    if len(a) >= n:
        return a
    return np.concatenate([a, np.full((n - len(a), *a.shape[1:]), fill, a.dtype)])


def _series(x: Any, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 1:
        raise ValueError(f"{what}: one value per stream, got shape {x.shape}")
    return x


class ADWINArray:
    """``N`` ADWIN detectors (river's ``drift.ADWIN``, Bifet & Gavaldà 2007) on arrays.

    Per stream, as in river: an exponential histogram of the values since the last
    detection (level ``l`` holds up to ``max_buckets`` bucket totals of ``2**l`` values each;
    when a level overflows its two oldest buckets merge into the next level), the width, the
    total and the running sum of squared deviations (``variance``, river's update). Every
    ``clock`` values, once the width exceeds ``grace_period``, every boundary between buckets
    is a cut into an older part ``W0`` and a recent part ``W1``; the stream fires when at a cut
    with both parts at least ``min_window_length`` long ``|mean(W0) - mean(W1)| > epsilon``,
    ``epsilon = sqrt(2 m v d) + 2/3 d m`` with ``m = 1/(n0 - mwl + 1) + 1/(n1 - mwl + 1)``,
    ``v = variance / width``, ``d = ln(2 ln(width) / delta)``.

    The sums run in river's order (bucket totals merged pairwise, ``u0`` accumulated from the
    oldest bucket, ``u1`` from the total by subtraction; the logarithms by the C library, as
    Rust's) so the same values give the same detections. Two simplifications, neither
    changing a detection: bucket variances are not kept (river uses them only to shrink the
    window after a detection, and a detection resets the stream here as river resets on its
    next update), and the detection flag is not kept (a fired stream is reset at once).
    Memory per stream: ``(max_buckets + 1) * levels`` floats, ``levels ~ log2(width / 5)``;
    the arrays are levels-first (``counts[level, stream]``, ``totals[level, slot, stream]``)
    so that the running sums over cuts are whole-vector operations.
    """

    def __init__(self, delta: float = 0.002, clock: int = 32, max_buckets: int = 5,
                 min_window_length: int = 5, grace_period: int = 10) -> None:
        if not 0 < delta < 1 or clock < 1 or max_buckets < 1 or min_window_length < 1 \
                or grace_period < 0:
            raise ValueError("ADWIN needs 0 < delta < 1, clock >= 1, max_buckets >= 1, "
                             "min_window_length >= 1, grace_period >= 0")
        self.delta, self.clock, self.max_buckets = delta, clock, max_buckets
        self.min_window_length, self.grace_period = min_window_length, grace_period
        self.width = np.zeros(0)                       # values in the window (exact floats)
        self.total = np.zeros(0)
        self.variance = np.zeros(0)                    # sum of squared deviations
        self.tick = np.zeros(0, np.int64)              # updates since the last reset
        self.counts = np.zeros((1, 0), np.int64)       # [levels, N] buckets per level
        self.totals = np.zeros((1, max_buckets + 1, 0))    # [levels, slots, N], oldest first
        self._dprime = np.zeros(0)                     # ln(2 ln(w) / delta) by width w

    def __len__(self) -> int:
        return len(self.width)

    def _grow(self, n: int) -> None:
        pad = n - len(self.width)
        if pad > 0:
            self.width, self.total = _pad(self.width, n), _pad(self.total, n)
            self.variance, self.tick = _pad(self.variance, n), _pad(self.tick, n)
            self.counts = np.concatenate(
                [self.counts, np.zeros((self.counts.shape[0], pad), np.int64)], axis=1)
            self.totals = np.concatenate(
                [self.totals, np.zeros((*self.totals.shape[:2], pad))], axis=2)

    def update(self, x: np.ndarray, at: int = 0) -> np.ndarray:
        """Feed one value per stream (``[N]``, NaN = none); returns ``[N]`` bool: fired (the
        stream is then reset). ``at`` is unused (the interface of ``PageHinkleyArray``)."""
        x = _series(x, "ADWIN")
        m = len(x)
        self._grow(m)
        fired = np.zeros(m, bool)
        rows = np.flatnonzero(~np.isnan(x))
        if not len(rows):
            return fired
        v = x[rows]
        c0 = self.counts[0, rows]
        self.totals[0, c0, rows] = v
        self.counts[0, rows] = c0 + 1
        w = self.width[rows] + 1.0
        total = self.total[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            dv = v - total / (w - 1.0)
            inc = np.where(w > 1.0, (w - 1.0) * dv * dv / w, 0.0)
        self.variance[rows] = self.variance[rows] + inc
        self.total[rows] = total + v
        self.width[rows] = w
        self._compress(rows[c0 + 1 == self.max_buckets + 1])
        self.tick[rows] += 1
        check = rows[(self.tick[rows] % self.clock == 0) & (w > self.grace_period)]
        if len(check):
            hit = check[self._cut(check)]
            fired[hit] = True
            self._reset(hit)
        return fired

    def _compress(self, rows: np.ndarray) -> None:
        """River's bucket merge for the streams whose first level overflowed: a level with
        ``max_buckets + 1`` buckets merges its two oldest into one bucket of the next level,
        and so on up."""
        mb = self.max_buckets
        lvl = 0
        while len(rows):
            if lvl + 1 >= self.counts.shape[0]:
                n = len(self.width)
                self.counts = np.concatenate([self.counts, np.zeros((1, n), np.int64)])
                self.totals = np.concatenate([self.totals, np.zeros((1, mb + 1, n))])
            merged = self.totals[lvl, 0, rows] + self.totals[lvl, 1, rows]
            c = self.counts[lvl + 1, rows]
            self.totals[lvl + 1, c, rows] = merged
            self.counts[lvl + 1, rows] = c + 1
            for k in range(mb - 1):
                self.totals[lvl, k, rows] = self.totals[lvl, k + 2, rows]
            self.totals[lvl, mb - 1:, rows[:, None]] = 0.0
            self.counts[lvl, rows] -= 2
            rows = rows[c + 1 == mb + 1]
            lvl += 1

    def _delta_prime(self, width: np.ndarray) -> np.ndarray:
        """``ln(2 ln(width) / delta)`` by the C library's ``log`` (numpy's vectorized ``log``
        may differ from it in the last bit), tabulated by width as widths are integers."""
        top = int(width.max())
        if top >= len(self._dprime):
            more = [math.log(2.0 * math.log(w) / self.delta) if w > 1 else -math.inf
                    for w in range(len(self._dprime), 2 * top + 1)]
            self._dprime = np.concatenate([self._dprime, more])
        return self._dprime[width.astype(np.int64)]

    def _cut(self, rows: np.ndarray) -> np.ndarray:
        """Whether any cut of each stream in ``rows`` separates two different means.

        One pass over the levels from the oldest to the newest: the running sizes and sums
        bucket by bucket (river's order), then the cut condition for the level's
        ``max_buckets`` cuts as ``[max_buckets, R]`` arrays in preallocated buffers (the
        ``[cuts, R]`` arrays of one fully vectorized pass are megabytes of temporaries per
        update, whose page faults cost more than the arithmetic, and numpy's cumulative
        sums along an axis are slow)."""
        everyone = len(rows) == len(self.width)
        counts = self.counts if everyone else np.take(self.counts, rows, axis=1)
        totals = self.totals if everyone else np.take(self.totals, rows, axis=2)
        width = self.width if everyone else self.width[rows]
        mb, r = self.max_buckets, len(width)
        mwl = float(self.min_window_length)
        dp = self._delta_prime(width)
        vw = (self.variance if everyone else self.variance[rows]) / width
        dp23 = 2.0 / 3.0 * dp
        n0, n1, u0, u1 = (np.empty((mb, r)) for _ in range(4))
        a, b, c = (np.empty((mb, r)) for _ in range(3))
        valid, ok, hit = (np.empty((mb, r), bool) for _ in range(3))
        # before the oldest bucket: W0 empty, W1 the whole window
        prev_n0, prev_u0 = np.zeros(r), np.zeros(r)
        prev_u1 = (self.total if everyone else self.total[rows]).copy()
        fired = np.zeros(r, bool)
        top = int(np.flatnonzero(counts.any(axis=1)).max())
        slots = np.arange(mb)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            for lvl in range(top, -1, -1):
                np.less(slots, counts[lvl], out=valid)
                np.multiply(valid, float(1 << lvl), out=a)
                for k in range(mb):
                    # an empty slot adds 0.0: it repeats the cut before it (or has n0 = 0)
                    np.add(prev_n0, a[k], out=n0[k])
                    np.add(prev_u0, totals[lvl, k], out=u0[k])
                    np.subtract(prev_u1, totals[lvl, k], out=u1[k])
                    prev_n0, prev_u0, prev_u1 = n0[k], u0[k], u1[k]
                prev_n0, prev_u0, prev_u1 = prev_n0.copy(), prev_u0.copy(), prev_u1.copy()
                np.subtract(width, n0, out=n1)
                np.greater_equal(n0, mwl, out=ok)
                np.greater_equal(n1, mwl, out=hit)
                np.logical_and(ok, hit, out=ok)
                # |u0/n0 - u1/n1| > sqrt(2 m v d) + 2/3 d m, m = 1/(n0-mwl+1) + 1/(n1-mwl+1)
                np.divide(u0, n0, out=a)
                np.divide(u1, n1, out=b)
                np.subtract(a, b, out=a)
                np.abs(a, out=a)
                # n0, n1 and mwl are small integers: (n - mwl) + 1 == n - (mwl - 1) exactly
                np.subtract(n0, mwl - 1.0, out=b)
                np.divide(1.0, b, out=b)
                np.subtract(n1, mwl - 1.0, out=c)
                np.divide(1.0, c, out=c)
                np.add(b, c, out=b)
                np.multiply(b, 2.0, out=c)
                np.multiply(c, vw, out=c)
                np.multiply(c, dp, out=c)
                np.sqrt(c, out=c)
                np.multiply(dp23, b, out=b)
                np.add(c, b, out=c)
                np.greater(a, c, out=hit)
                np.logical_and(hit, ok, out=hit)
                np.logical_or(fired, hit.any(axis=0), out=fired)
        return fired

    def _reset(self, rows: np.ndarray) -> None:
        for a in (self.width, self.total, self.variance, self.tick):
            a[rows] = 0
        self.counts[:, rows] = 0
        self.totals[:, :, rows] = 0.0

    def state_dict(self) -> dict[str, Any]:
        """The streams' state (``counts`` ``[levels, N]``, ``totals`` ``[levels, slots,
        N]``); the parameters come from the configuration."""
        return {k: getattr(self, k).copy() for k in _ADWIN_ARRAYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        arrays = {k: np.array(state[k], getattr(self, k).dtype) for k in _ADWIN_ARRAYS}
        n, slots = len(arrays["width"]), self.max_buckets + 1
        c, t = arrays["counts"], arrays["totals"]
        if (any(len(arrays[k]) != n for k in ("total", "variance", "tick"))
                or c.ndim != 2 or c.shape[1] != n or t.shape != (c.shape[0], slots, n)):
            raise ValueError(f"ADWIN state does not fit max_buckets={self.max_buckets} "
                             f"(shapes {({k: a.shape for k, a in arrays.items()})})")
        for k, a in arrays.items():
            setattr(self, k, a)


_ADWIN_ARRAYS = ("width", "total", "variance", "tick", "counts", "totals")


@functools.lru_cache(maxsize=8)
def _ks_p_values(r: int) -> np.ndarray:
    """The p-value of ``scipy.stats.ks_2samp`` (``method="auto"``, as river calls it) for two
    samples of ``r`` values whose ECDFs differ by at most ``h / r``, for ``h = 0 .. r``: with
    equal sizes the exact p-value depends on ``h`` alone."""
    from scipy import stats

    base = np.arange(r, dtype=np.float64)
    out = np.ones(r + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        for h in range(1, r + 1):
            res = stats.ks_2samp(base, base + h, method="auto")
            assert round(float(res.statistic) * r) == h
            out[h] = float(res.pvalue)
    out.flags.writeable = False
    return out


class KSWINArray:
    """``N`` KSWIN detectors (river's ``drift.KSWIN``, Raab et al. 2020) on arrays.

    Per stream, as in river: a window of the last ``window_size`` values; once it is full,
    every update compares ``stat_size`` values drawn without replacement from its older
    ``window_size - stat_size`` values with its most recent ``stat_size`` values by a
    two-sample Kolmogorov-Smirnov test and fires when ``p <= alpha`` and the statistic
    ``> 0.1``. The statistic and p-value are scipy's (``ks_2samp``, exact for equal sizes): the
    statistic is ``h / stat_size`` for an integer ``h``, so the p-value of every ``h`` is
    computed once. A fired stream's window is emptied (river keeps the recent part only
    until its next update, which resets the detector).

    The one difference from river: the draws come from one seeded numpy ``Generator`` for
    all streams (its state is in ``state_dict``) rather than one ``random.Random(seed)`` per
    detector, reseeded at each reset. The same values are therefore compared with different
    random subsets than river's, and detections agree in distribution, not update for
    update: ``tests/streaming/alerts/test_detectors.py`` checks delays on changes and false alarms
    on stationary streams against river over many seeds.
    """

    def __init__(self, alpha: float = 0.005, window_size: int = 100, stat_size: int = 30,
                 seed: int = 0) -> None:
        if not 0 <= alpha <= 1 or not 0 < stat_size < window_size:
            raise ValueError("KSWIN needs 0 <= alpha <= 1 and 0 < stat_size < window_size")
        self.alpha, self.window_size, self.stat_size = alpha, window_size, stat_size
        self.rng = np.random.default_rng(seed)
        # ring buffer per stream, each value written twice (slots j and j + window_size) so
        # that a window is one run of slots from ``pos``: [N, 2 * window_size]
        self.ring = np.zeros((0, 2 * window_size))
        self.n = np.zeros(0, np.int64)                 # values in the window
        self.pos = np.zeros(0, np.int64)               # next slot (the oldest once full)
        self.p_values = _ks_p_values(stat_size)        # by h = statistic * stat_size
        self.statistic = np.zeros(0)                   # of the last update (NaN: no test)
        self.p_value = np.zeros(0)

    def __len__(self) -> int:
        return len(self.n)

    def _grow(self, n: int) -> None:
        if n > len(self.n):
            self.ring, self.n, self.pos = _pad(self.ring, n), _pad(self.n, n), _pad(self.pos, n)

    def window(self, i: int) -> np.ndarray:
        """Stream ``i``'s window, oldest first."""
        w, k = self.window_size, int(self.n[i])
        return self.ring[i, self.pos[i] + w - k:self.pos[i] + w].copy()

    def update(self, x: np.ndarray, at: int = 0) -> np.ndarray:
        """Feed one value per stream (``[N]``, NaN = none); returns ``[N]`` bool: fired (the
        stream's window is then emptied). ``at`` is unused (the interface of
        ``PageHinkleyArray``)."""
        x = _series(x, "KSWIN")
        m = len(x)
        self._grow(m)
        fired = np.zeros(m, bool)
        self.statistic, self.p_value = np.full(m, np.nan), np.full(m, np.nan)
        rows = np.flatnonzero(~np.isnan(x))
        w = self.window_size
        pos = self.pos[rows]
        self.ring[rows, pos] = self.ring[rows, pos + w] = x[rows]
        self.pos[rows] = np.where(pos + 1 == w, 0, pos + 1)
        self.n[rows] = np.minimum(self.n[rows] + 1, w)
        full = rows[self.n[rows] == w]
        if len(full):
            stat, p = self._test(full)
            self.statistic[full], self.p_value[full] = stat, p
            hit = full[(p <= self.alpha) & (stat > 0.1)]
            fired[hit] = True
            self.n[hit] = 0
            self.pos[hit] = 0
        return fired

    def _test(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """KS statistic and p-value of a fresh random sample of each full window's older
        part against its recent part."""
        w, r = self.window_size, self.stat_size
        first = (rows * (2 * w) + self.pos[rows])[:, None]      # the oldest value's slot
        at = np.concatenate([first + self._draw(rows), first + np.arange(w - r, w)], axis=1)
        return ks_equal_samples(np.take(self.ring, at), r, self.p_values)

    def _draw(self, rows: np.ndarray) -> np.ndarray:
        """``[R, stat_size]``: per stream a uniform random subset of the positions ``0 ..
        window_size - stat_size - 1`` (0: the oldest), by sorting random keys that carry
        their position in the low bits (one integer sort; no argpartition)."""
        older = self.window_size - self.stat_size
        bits = max(1, (older - 1).bit_length())
        keys = (self.rng.integers(0, 1 << (62 - bits), size=(len(rows), older),
                                  dtype=np.int64) << bits) | np.arange(older)
        return np.sort(keys, axis=1)[:, :self.stat_size] & ((1 << bits) - 1)

    def state_dict(self) -> dict[str, Any]:
        """The windows (``[N, window_size]``, oldest first; ``n`` values each, the last
        ``n`` columns) and the generator's state; the parameters come from the
        configuration."""
        w = self.window_size
        idx = (self.pos[:, None] + np.arange(w)) if len(self.n) else np.zeros((0, w), int)
        return {"window": np.take_along_axis(self.ring, idx, axis=1), "n": self.n.copy(),
                "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        w = self.window_size
        window = np.array(state["window"], np.float64).reshape(-1, w)
        n = np.array(state["n"], np.int64)
        if len(window) != len(n) or (n < 0).any() or (n > w).any():
            raise ValueError(f"KSWIN state does not fit window_size={w}")
        self.ring = np.concatenate([window, window], axis=1)
        self.n, self.pos = n, np.zeros(len(n), np.int64)
        if state.get("rng") is not None:
            self.rng = _rng_from(state["rng"])


def ks_equal_samples(vals: np.ndarray, r: int, p_values: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample KS test per row of ``vals`` ``[R, 2r]`` (first ``r`` columns: one sample,
    last ``r``: the other): ``scipy.stats.ks_2samp``'s statistic and, from ``p_values`` (by
    ``h``, ``_ks_p_values``), its p-value. Ties count as scipy counts them (the ECDFs are
    compared after the last of equal values)."""
    order = np.argsort(vals, axis=1)
    srt = np.sort(vals, axis=1)
    # ECDF difference in units of 1/r after each pooled value: +1 per value of the first
    # sample, -1 per value of the second (|diff| <= r fits int8 for r <= 127)
    one = np.int8(1) if r <= 127 else np.int32(1)
    diff = np.cumsum((order < r).astype(one.dtype) * (one + one) - one, axis=1,
                     dtype=one.dtype)
    diff[:, :-1][srt[:, 1:] == srt[:, :-1]] = 0        # inside a run of equal values
    h = np.abs(diff).max(axis=1).astype(np.int64)
    return h * 1.0 / r, p_values[h]


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy generator's state as strings and small numbers (checkpoints take no 128-bit
    integers)."""
    st = rng.bit_generator.state
    return {"bit_generator": st["bit_generator"],
            "state": {k: str(v) for k, v in st["state"].items()},
            "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"])}


def _rng_from(state: dict[str, Any]) -> np.random.Generator:
    name = state["bit_generator"]
    if name != "PCG64":
        raise ValueError(f"KSWIN state: unknown random generator {name!r} (expected PCG64)")
    bg = np.random.PCG64()
    bg.state = {"bit_generator": name, "state": {k: int(v) for k, v in state["state"].items()},
                "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}
    return np.random.Generator(bg)
