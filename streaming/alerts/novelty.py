"""Detectors on the raw values, independent of the forecaster: one per sensor, vectorized.

Each detector reads one value per sensor per call (``learn_many(x)``, NaN = no reading),
scores it against the sensor's state *before* learning it, and returns a *surprise*
``-ln p`` per sensor (0 = nothing unusual; NaN = no value). ``p`` is the detector's own tail
probability under its model of "normal"; it is only approximately right on real data (values
are autocorrelated and heavy-tailed), which is why ``streaming.alerts.calibration`` re-calibrates
every surprise on the sensor's own history before they are fused.

* ``WindowedGaussian``: the value's two-sided Gaussian tail against an exponentially
  weighted mean and variance of the last ``window`` values (NAB's Windowed Gaussian), and
  (``short > 1``) that of the mean of the last ``short`` values, so a sustained shift too
  small for one reading adds up.
  Fed the raw values it sees level excursions; fed the first differences (the residual of
  persistence, the simplest forecaster) it sees jumps.
* ``RelativeEntropy``: whether the distribution of the last ``window`` values matches none
  of the sensor's usual distributions (Wang et al., "Statistical techniques for online
  anomaly detection in data centers", IM 2011): G-tests against a few past windows'
  histograms, with a chi-square tail.
* ``RangeBreak``: how far the value, and the mean of the last few values, break out of the
  range of the sensor's values so far (the running min and max, optionally fading), as a share
  of that range.
* ``ContextNovelty``: in the spirit of CAD OSE (contextual anomaly detection): the last
  few values quantized into levels of the range seen so far form a context; a context never
  seen on the sensor is surprising by ``-ln`` of the sensor's recent rate of new contexts.

All state is arrays indexed by sensor; new sensors are appended on first sight.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import chdtrc, chdtri, log_ndtr

from streaming.alerts.rowwise import row_max, row_sum

LN2 = float(np.log(2.0))


def _pad(a: np.ndarray, n: int, fill: float = 0.0) -> np.ndarray:
    if n <= a.shape[0]:
        return a
    pad = np.full((n - a.shape[0], *a.shape[1:]), fill, a.dtype)
    return np.concatenate([a, pad])


class _Moments:
    """Exponentially weighted mean/variance per sensor (1/n steps until ``window``)."""

    def __init__(self, window: int, min_std: float = 1e-6) -> None:
        self.alpha = 1.0 / window
        self.min_std = min_std
        self.n = np.zeros(0, np.int64)
        self.mean = np.zeros(0)
        self.var = np.zeros(0)

    def grow(self, n: int) -> None:
        self.n, self.mean, self.var = _pad(self.n, n), _pad(self.mean, n), _pad(self.var, n)

    def std(self, n: int) -> np.ndarray:
        scale = np.maximum(np.abs(self.mean[:n]) * 1e-6, self.min_std)
        return np.sqrt(np.maximum(self.var[:n], scale**2))

    def learn(self, x: np.ndarray, ok: np.ndarray) -> None:
        n = len(x)
        a = np.maximum(1.0 / (self.n[:n] + 1), self.alpha)
        d = np.where(ok, x - self.mean[:n], 0.0)
        self.mean[:n] += np.where(ok, a * d, 0.0)
        self.var[:n] = np.where(ok, (1 - a) * (self.var[:n] + a * d * d), self.var[:n])
        self.n[:n] += ok

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n.copy(), "mean": self.mean.copy(), "var": self.var.copy()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.n = np.array(s["n"], np.int64)
        self.mean = np.array(s["mean"], np.float64)
        self.var = np.array(s["var"], np.float64)


class _Ring:
    """The last ``size`` values per sensor (NaN where fewer)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = np.full((0, size), np.nan)
        self.pos = np.zeros(0, np.int64)

    def grow(self, n: int) -> None:
        self.buf, self.pos = _pad(self.buf, n, np.nan), _pad(self.pos, n)

    def push(self, x: np.ndarray, ok: np.ndarray) -> None:
        rows = np.flatnonzero(ok)
        self.buf[rows, self.pos[rows] % self.size] = x[rows]
        self.pos[rows] += 1

    def ordered(self, n: int) -> np.ndarray:
        """``[n, size]`` oldest first."""
        idx = (self.pos[:n, None] + np.arange(self.size)[None, :]) % self.size
        return np.take_along_axis(self.buf[:n], idx, axis=1)

    def state_dict(self) -> dict[str, Any]:
        return {"buf": self.buf.copy(), "pos": self.pos.copy()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.buf = np.array(s["buf"], np.float64)
        self.pos = np.array(s["pos"], np.int64)


class WindowedGaussian:
    """Two-sided Gaussian tail of each value against its sensor's recent mean and std."""

    once_per_step = False        # scored on every reading

    def __init__(self, window: int = 1000, diff: bool = False, short: int = 1) -> None:
        if window < 2 or short < 1:
            raise ValueError("windowed Gaussian needs window >= 2 and short >= 1")
        self.window, self.diff, self.short = window, diff, short
        self.m = _Moments(window)
        self.prev = np.zeros(0)          # last value (diff mode), NaN: none yet
        self.recent = _Ring(short)       # the last ``short`` inputs (for their mean)

    def learn_many(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        n = len(x)
        self.m.grow(n)
        self.prev = _pad(self.prev, n, np.nan)
        if self.diff:
            # consecutive readings only: across a gap the change is not one step's
            v = x - self.prev[:n]
            self.prev[:n] = x
        else:
            v = x
        ok = ~np.isnan(v)
        std = self.m.std(n)
        z = np.abs(v - self.m.mean[:n]) / std
        if self.short > 1:
            # a sustained shift: the mean of the last ``short`` inputs, against the standard
            # error of such a mean (calibration corrects for autocorrelation)
            self.recent.grow(n)
            self.recent.push(v, ok)
            win = self.recent.buf[:n]
            full = (~np.isnan(win)).all(axis=1)
            with np.errstate(invalid="ignore"):
                zs = np.abs(np.nanmean(np.where(full[:, None], win, 0.0), axis=1)
                            - self.m.mean[:n]) / (std / np.sqrt(self.short))
            z = np.maximum(z, np.where(full, zs, 0.0))
        s = -(log_ndtr(-np.nan_to_num(z)) + LN2)
        s = np.where(ok & (self.m.n[:n] >= 2), np.maximum(s, 0.0), np.where(ok, 0.0, np.nan))
        self.m.learn(v, ok)
        return s

    def state_dict(self) -> dict[str, Any]:
        return {"moments": self.m.state_dict(), "prev": self.prev.copy(),
                "recent": self.recent.state_dict()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.m.load_state_dict(s["moments"])
        self.prev = np.array(s["prev"], np.float64)
        if "recent" in s:
            self.recent.load_state_dict(s["recent"])


class _Range:
    """Expanding min and max per sensor: the value range seen so far."""

    def __init__(self) -> None:
        self.lo = np.zeros(0)
        self.hi = np.zeros(0)

    def grow(self, n: int) -> None:
        self.lo, self.hi = _pad(self.lo, n, np.inf), _pad(self.hi, n, -np.inf)

    def learn(self, x: np.ndarray, ok: np.ndarray) -> None:
        n = len(x)
        self.lo[:n] = np.where(ok, np.minimum(self.lo[:n], np.nan_to_num(x)), self.lo[:n])
        self.hi[:n] = np.where(ok, np.maximum(self.hi[:n], np.nan_to_num(x)), self.hi[:n])

    def level(self, v: np.ndarray, n: int, levels: int) -> np.ndarray:
        """``v`` (``[n]`` or ``[n, k]``) as an integer level in ``[0, levels)`` of the range."""
        lo = np.where(np.isfinite(self.lo[:n]), self.lo[:n], 0.0)
        span = np.maximum(np.nan_to_num(self.hi[:n] - self.lo[:n], posinf=0.0, neginf=0.0),
                          1e-12)
        if v.ndim == 2:
            lo, span = lo[:, None], span[:, None]
        with np.errstate(invalid="ignore"):
            z = np.nan_to_num((v - lo) / span * levels, nan=0.0, posinf=levels, neginf=0.0)
        return np.clip(z, 0, levels - 1).astype(np.int64)

    def state_dict(self) -> dict[str, Any]:
        return {"lo": self.lo.copy(), "hi": self.hi.copy()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.lo = np.array(s["lo"], np.float64)
        self.hi = np.array(s["hi"], np.float64)


class RelativeEntropy:
    """Whether the recent window's distribution matches none of the sensor's usual ones.

    Per sensor up to ``hypotheses`` histograms of past windows (the "normal modes", each with
    the number of windows that matched it). The window of the last ``window`` values, binned
    into ``bins`` bins of the range seen so far, matches a hypothesis when its G-test
    ``2 W KL(P || Q)`` is below the chi-square ``1 - significance`` quantile; a window that
    matches none becomes a new hypothesis (replacing the least matched). The surprise is the
    chi-square tail of the G-test against the nearest *established* hypothesis (matched more
    than ``established`` times), so a new regime stays surprising until it has recurred.
    """

    once_per_step = True         # the window test is costly: the core runs it once per step

    def __init__(self, window: int = 52, bins: int = 10, hypotheses: int = 8,
                 established: int = 1, significance: float = 0.01,
                 warmup_windows: int = 3) -> None:
        if window < 4 or bins < 2 or hypotheses < 1 or not 0 < significance < 1:
            raise ValueError("relative entropy needs window >= 4, bins >= 2, hypotheses >= 1 "
                             "and 0 < significance < 1")
        self.window, self.bins, self.hypotheses = window, bins, hypotheses
        self.established = established
        self.match_at = float(chdtri(bins - 1, significance))   # chi2 isf
        self.range = _Range()
        self.ring = _Ring(window)
        self.hyp = np.zeros((0, hypotheses, bins))
        self.count = np.zeros((0, hypotheses))
        self.seen = np.zeros(0, np.int64)       # readings seen per sensor
        self.fresh = np.zeros(0, np.int64)      # readings since the last scoring
        self.warmup_windows = warmup_windows

    def learn_many(self, x: np.ndarray, score: bool = True) -> np.ndarray:
        """Take one value per sensor; with ``score`` also test the window (the test is
        ``O(window x bins)`` per sensor, so a caller may test once per several readings:
        the core tests once per step). Without ``score`` the result is all NaN."""
        x = np.asarray(x, np.float64)
        n = len(x)
        self.range.grow(n)
        self.ring.grow(n)
        self.hyp, self.count = _pad(self.hyp, n), _pad(self.count, n)
        self.seen, self.fresh = _pad(self.seen, n), _pad(self.fresh, n)
        ok = ~np.isnan(x)
        self.range.learn(x, ok)
        self.ring.push(x, ok)
        self.seen[:n] += ok
        self.fresh[:n] += ok
        if not score:
            return np.full(n, np.nan)
        win = self.ring.buf[:n]
        have = ~np.isnan(win)
        cnt = have.sum(axis=1)
        b = self.range.level(win, n, self.bins)
        rows = np.arange(n)
        idx = (rows[:, None] * self.bins + b)[have]
        p = np.bincount(idx, minlength=n * self.bins).reshape(n, self.bins).astype(np.float64)
        p /= np.maximum(cnt, 1)[:, None]
        q = self.hyp[:n] + 1e-3
        q /= q.sum(axis=2, keepdims=True)
        pp = p[:, None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(pp > 0, pp * np.log(pp / q), 0.0).sum(axis=2)
        g = np.where(self.count[:n] > 0, 2.0 * cnt[:, None] * np.maximum(kl, 0.0), np.inf)
        g_est = np.where(self.count[:n] > self.established, g, np.inf).min(axis=1)
        with np.errstate(divide="ignore"):       # -log of the chi2 tail (inf where it is 0)
            s = np.where(np.isfinite(g_est),
                         -np.log(chdtrc(self.bins - 1, np.where(np.isfinite(g_est), g_est, 0.0))),
                         0.0)
        # NaN until the reference distributions had a few windows to form, and where no
        # reading came since the last test
        ready = ((self.fresh[:n] > 0) & (cnt >= self.window)
                 & (self.seen[:n] >= self.warmup_windows * self.window))
        self.fresh[:n] = 0
        s = np.where(ready, np.maximum(s, 0.0), np.nan)
        best = g.argmin(axis=1)
        match = g[rows, best] < self.match_at
        hit = np.flatnonzero(ready & match)
        self.count[hit, best[hit]] += 1
        miss = np.flatnonzero(ready & ~match)
        slot = self.count[:n].argmin(axis=1)[miss]
        self.hyp[miss, slot] = p[miss]
        self.count[miss, slot] = 1
        return s

    def state_dict(self) -> dict[str, Any]:
        return {"range": self.range.state_dict(), "ring": self.ring.state_dict(),
                "hyp": self.hyp.copy(), "count": self.count.copy(), "seen": self.seen.copy(),
                "fresh": self.fresh.copy()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.range.load_state_dict(s["range"])
        self.ring.load_state_dict(s["ring"])
        self.hyp = np.array(s["hyp"], np.float64)
        self.count = np.array(s["count"], np.float64)
        self.seen = np.array(s["seen"], np.int64)
        self.fresh = np.array(s["fresh"], np.int64)


class ContextNovelty:
    """Surprise of a never-seen short context of quantized values (CAD OSE in spirit).

    Values are quantized into ``levels`` levels of the range seen so far; the last
    ``context`` levels form a context. A context never seen on the sensor has surprise
    ``-ln r``, ``r`` the sensor's recent rate of new contexts (so a sensor that keeps
    producing new contexts is not surprised by one more); a seen context has surprise 0.
    """

    once_per_step = False

    def __init__(self, context: int = 2, levels: int = 16, long_window: int = 2000) -> None:
        if context < 1 or levels < 2 or levels**context > 1 << 20:
            raise ValueError("context novelty needs context >= 1, levels >= 2 and at most "
                             "2**20 contexts")
        self.context, self.levels = context, levels
        self.alpha = 1.0 / long_window
        self.range = _Range()
        self.recent = np.zeros((0, context), np.int64)   # the last levels, oldest first
        self.filled = np.zeros(0, np.int64)
        self.seen = np.zeros((0, levels**context), bool)
        self.rate = np.zeros(0)                          # EW rate of new contexts
        self.k = np.zeros(0, np.int64)                   # contexts formed

    def learn_many(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        n = len(x)
        self.range.grow(n)
        self.recent, self.filled = _pad(self.recent, n), _pad(self.filled, n)
        self.seen, self.rate, self.k = _pad(self.seen, n), _pad(self.rate, n), _pad(self.k, n)
        ok = ~np.isnan(x)
        self.range.learn(x, ok)
        lvl = self.range.level(x, n, self.levels)
        rec = np.where(ok[:, None], np.concatenate([self.recent[:n, 1:], lvl[:, None]], 1),
                       self.recent[:n])
        filled = np.where(ok, self.filled[:n] + 1, 0)     # a gap breaks the context
        code = rec @ (self.levels ** np.arange(self.context - 1, -1, -1))
        formed = ok & (filled >= self.context)
        rows = np.arange(n)
        new = formed & ~self.seen[rows, code]
        rate = self.rate[:n]
        s = np.where(new, -np.log(np.maximum(rate, 1.0 / (self.k[:n] + 2.0))), 0.0)
        s = np.where(ok, s, np.nan)
        f = np.flatnonzero(formed)
        self.seen[f, code[f]] = True
        a = np.maximum(1.0 / (self.k[:n] + 1), self.alpha)
        self.rate[:n] = np.where(formed, rate + a * (new - rate), rate)
        self.k[:n] += formed
        self.recent[:n], self.filled[:n] = rec, np.minimum(filled, self.context)
        return s

    def state_dict(self) -> dict[str, Any]:
        return {"range": self.range.state_dict(), "recent": self.recent.copy(),
                "filled": self.filled.copy(), "seen": self.seen.copy(),
                "rate": self.rate.copy(), "k": self.k.copy()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.range.load_state_dict(s["range"])
        self.recent = np.array(s["recent"], np.int64)
        self.filled = np.array(s["filled"], np.int64)
        self.seen = np.array(s["seen"], bool)
        self.rate = np.array(s["rate"], np.float64)
        self.k = np.array(s["k"], np.int64)


class RangeBreak:
    """How far a reading, and the mean of the last ``short`` readings, break out of the
    sensor's own range so far (NAB's record-breaking anomalies: a spike or a level never seen).

    Per sensor an envelope ``[lo, hi]`` of the readings and one of their ``short``-reading
    means: a value outside widens it at once; with ``forget > 0`` both edges move toward the
    envelope's middle by ``1 / forget`` of its span per reading, so a range not revisited for
    about ``forget`` readings is forgotten (``forget = 0``: the plain running min and max).
    The statistic is the excess beyond the envelope as a share of its span,
    ``e = max(x - hi, lo - x, 0) / span`` (the larger of the reading's and the mean's), and
    the surprise ``ln(1 + e / scale)`` (0 inside the range; NaN for the first ``warmup``
    readings, while the range forms and every reading breaks it). Being inside is the rule, so
    the calibration's tail is the sensor's rate of breaks times how large this one is among
    its breaks: a sensor that keeps setting records (a trend, a season) is not surprised by
    one more, a break after a long quiet history is.
    """

    once_per_step = False

    def __init__(self, short: int = 20, forget: float = 0.0, scale: float = 0.01,
                 warmup: int = 50) -> None:
        if short < 1 or forget < 0 or (0 < forget < 2) or scale <= 0 or warmup < 1:
            raise ValueError("range break needs short >= 1, forget 0 (never) or >= 2, "
                             "scale > 0 and warmup >= 1")
        self.short, self.forget, self.scale, self.warmup = short, float(forget), scale, warmup
        self.lo = np.zeros((0, 2))          # [sensors, (reading, mean)]; +inf: none yet
        self.hi = np.zeros((0, 2))
        self.seen = np.zeros(0, np.int64)
        self.recent = _Ring(short)

    def _grow(self, n: int) -> None:
        self.lo, self.hi = _pad(self.lo, n, np.inf), _pad(self.hi, n, -np.inf)
        self.seen = _pad(self.seen, n)
        self.recent.grow(n)

    def excess(self, v: np.ndarray, n: int) -> np.ndarray:
        """``[n, 2]`` share of the span by which ``v`` ``[n, 2]`` is outside the envelope
        (0 inside; NaN where ``v`` is NaN or no envelope yet)."""
        known = np.isfinite(self.lo[:n])
        lo, hi = np.where(known, self.lo[:n], 0.0), np.where(known, self.hi[:n], 0.0)
        span = np.maximum(hi - lo, np.maximum(1e-9 * np.abs(lo + hi), 1e-12))
        e = np.maximum(np.maximum(v - hi, lo - v), 0.0) / span
        return np.where(known & ~np.isnan(v), np.minimum(e, 1e6), np.nan)

    def learn_many(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        n = len(x)
        self._grow(n)
        ok = ~np.isnan(x)
        self.recent.push(x, ok)
        # the ring holds readings only, NaN until filled: its sum is NaN until then
        mean = np.where(ok, row_sum(self.recent.buf[:n]) / self.short, np.nan)
        v = np.stack([x, mean], axis=1)
        e = row_max(np.nan_to_num(self.excess(v, n), nan=0.0))
        s = np.where(ok, np.log1p(e / self.scale), np.nan)
        s = np.where(self.seen[:n] < self.warmup, np.nan, s)   # the range is forming
        # learn: forget a little of the span, then widen to the new values
        have = ~np.isnan(v)
        lo, hi = self.lo[:n], self.hi[:n]
        if self.forget:
            shrink = np.where(np.isfinite(lo), (hi - lo) / (2.0 * self.forget), 0.0)
            shrink = np.where(ok[:, None], shrink, 0.0)
            lo, hi = lo + shrink, hi - shrink
        self.lo[:n] = np.where(have, np.fmin(lo, v), lo)
        self.hi[:n] = np.where(have, np.fmax(hi, v), hi)
        self.seen[:n] += ok
        return s

    def state_dict(self) -> dict[str, Any]:
        return {"lo": self.lo.copy(), "hi": self.hi.copy(), "seen": self.seen.copy(),
                "recent": self.recent.state_dict()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.lo = np.array(s["lo"], np.float64).reshape(-1, 2)
        self.hi = np.array(s["hi"], np.float64).reshape(-1, 2)
        self.seen = np.array(s["seen"], np.int64)
        self.recent.load_state_dict(s["recent"])
