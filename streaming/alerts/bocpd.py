"""Bayesian online change-point detection (Adams & MacKay 2007), vectorized over streams.

Each stream (a sensor's channel) has a posterior over its *run length*, the time since its
last change. Within a run the observations are Normal with unknown mean and variance under a
Normal-Gamma prior (``mu0``, ``kappa0``, ``alpha0``, ``beta0``), so the predictive of the
next observation given a run is a Student-t; a change happens with a constant hazard
``1 / expected run length``. After each observation the posterior keeps only the ``R`` most
probable run lengths (the least probable one gives its slot to the new run, which starts
with the change mass), so the state is ``streams x R`` arrays and one update is a handful of
array operations whatever the stream's age.

Two additions for sensor data:

* the prior's mean and scale are per stream and may move (``mu0``, ``beta0``): the monitor
  sets them from the stream's recent level and robust spread, so that a new run is judged
  against what is normal for the sensor;
* an observation may enter with a weight ``w`` in (0, 1] (a tempered likelihood, also applied
  to the sufficient statistics): autocorrelated data carry less information per point than
  independent data, and without tempering a slow wander looks like a run of changes.

Runs are labelled by the step at which their first observation arrived (``start``), so a
caller can ask how much posterior mass lies on runs that began after some step (``mass_after``)
and which such run is most probable (``map_start``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_LOG_2PI = math.log(2 * math.pi)
DTYPE = np.float32      # the posterior's arrays: single precision halves the memory traffic
#                         of the per-step update (masses near the thresholds, 0.9-0.9999, are
#                         far from float32's resolution)


def _lgamma_half_diff(a: np.ndarray) -> np.ndarray:
    """``lgamma(a + 1/2) - lgamma(a)`` for ``a >= 1`` (asymptotic series; error < 1e-3 at
    a = 1, far less above): the Student-t's normalizer without two lgamma calls per cell."""
    inv = 1.0 / a
    out = inv * inv
    out *= inv
    out *= 1.0 / 192.0
    out -= 0.125 * inv
    out += 0.5 * np.log(a)
    return out


class BOCPDArray:
    """Run-length posteriors of ``n`` streams, pruned to ``runs`` run lengths each.

    The arrays are laid out ``[runs, streams]``: the per-step reductions over a stream's runs
    (max, sum, argmin) then run along contiguous rows, several times faster than along a
    short last axis at 10,000 streams."""

    def __init__(self, hazard: float = 1 / 250, runs: int = 16, kappa0: float = 0.05,
                 alpha0: float = 2.0) -> None:
        if not 0 < hazard < 1:
            raise ValueError(f"bocpd: hazard must be in (0, 1), got {hazard}")
        if runs < 2:
            raise ValueError(f"bocpd: runs must be >= 2, got {runs}")
        if kappa0 <= 0 or alpha0 < 1:
            raise ValueError(f"bocpd: need kappa0 > 0 and alpha0 >= 1 (got {kappa0}, {alpha0})")
        self.hazard, self.runs, self.kappa0, self.alpha0 = hazard, runs, kappa0, alpha0
        self.log_h, self.log_1mh = math.log(hazard), math.log1p(-hazard)
        self.n_streams = 0
        r = runs
        self.logp = np.zeros((r, 0), DTYPE)   # log posterior of each run (-inf: empty slot)
        self.n = np.zeros((r, 0), DTYPE)      # weighted observations in the run
        self.mean = np.zeros((r, 0), DTYPE)   # their mean
        self.m2 = np.zeros((r, 0), DTYPE)     # their sum of squared deviations
        self.start = np.zeros((r, 0), np.int64)   # step of the run's first observation
        self.mu0 = np.zeros(0)           # prior mean per stream
        self.beta0 = np.ones(0)          # prior scale per stream (alpha * variance)
        self.alpha = np.zeros(0)         # prior shape per stream (alpha0 unless set)
        self.origin = np.zeros(0)        # per stream, what the single-precision run means
        #                                  are relative to (its first value; moved when the
        #                                  data wander far from it)

    def grow(self, n: int, t: int = 0) -> None:
        """Room for ``n`` streams; new ones start with one run beginning at step ``t``."""
        add = n - self.n_streams
        if add <= 0:
            return
        r = self.runs
        logp = np.full((r, add), -np.inf, DTYPE)
        logp[0] = 0.0
        self.logp = np.concatenate([self.logp, logp], axis=1)
        self.n = np.concatenate([self.n, np.zeros((r, add), DTYPE)], axis=1)
        self.mean = np.concatenate([self.mean, np.zeros((r, add), DTYPE)], axis=1)
        self.m2 = np.concatenate([self.m2, np.zeros((r, add), DTYPE)], axis=1)
        self.start = np.concatenate([self.start, np.full((r, add), t, np.int64)], axis=1)
        self.mu0 = np.concatenate([self.mu0, np.zeros(add)])
        self.beta0 = np.concatenate([self.beta0, np.ones(add)])
        self.alpha = np.concatenate([self.alpha, np.full(add, self.alpha0)])
        self.origin = np.concatenate([self.origin, np.full(add, np.nan)])
        self.n_streams = n

    def reset(self, mask: np.ndarray, t: int) -> None:
        """Forget the runs of the streams in ``mask``: each starts over with one run whose
        first observation is that of step ``t``."""
        idx = np.flatnonzero(np.asarray(mask)[:self.n_streams])
        if not len(idx):
            return
        self.logp[:, idx] = -np.inf
        self.logp[0, idx] = 0.0
        for a in (self.n, self.mean, self.m2):
            a[:, idx] = 0.0
        self.start[:, idx] = t

    def seed(self, idx: np.ndarray, value: np.ndarray, weight: float) -> None:
        """Give the streams ``idx`` (just reset, one run each) ``weight`` observations at
        ``value``: where their run is known to start."""
        if not len(idx):
            return
        value = np.asarray(value, np.float64)
        self.origin[idx] = np.where(np.isnan(self.origin[idx]), value, self.origin[idx])
        j = np.argmax(self.logp[:, idx], axis=0)
        self.n[j, idx] = weight
        self.mean[j, idx] = (value - self.origin[idx]).astype(DTYPE)
        self.m2[j, idx] = 0.0

    def _log_t(self, rows: np.ndarray | slice, xx: np.ndarray) -> np.ndarray:
        """Student-t log predictive of ``xx`` ``[1, rows]`` under each kept run's posterior:
        with ``q = beta_n (kappa_n + 1) / kappa_n``,
        ``lgamma(a + 1/2) - lgamma(a) - log(2 pi q) / 2 - (a + 1/2) log(1 + (x - mu)^2 / 2q)``."""
        # (in place where it can be: this is most of a step's cost at 10,000 sensors)
        k0, n, mean = DTYPE(self.kappa0), self.n[:, rows], self.mean[:, rows]
        inv_kn = 1.0 / (k0 + n)
        an = 0.5 * n
        an += self.alpha[rows].astype(DTYPE)
        dm = mean - (self.mu0[rows] - self.origin[rows]).astype(DTYPE)
        e = dm * inv_kn
        e *= k0
        e += xx
        e -= mean                                   # x - mu_n
        q = dm * dm
        q *= n
        q *= inv_kn
        q *= k0
        q += self.m2[:, rows]
        q *= DTYPE(0.5)
        q += self.beta0[rows].astype(DTYPE)
        q *= 1.0 + inv_kn                           # beta_n (kappa_n + 1) / kappa_n
        out = e * e
        out /= 2 * q
        np.log1p(out, out=out)
        out *= an + 0.5
        out += 0.5 * (np.log(q) + DTYPE(_LOG_2PI))
        return _lgamma_half_diff(an) - out

    def update(self, x: np.ndarray, t: int, w: np.ndarray | None = None) -> np.ndarray:
        """One observation per stream (NaN: none, the stream is left as it is) arriving at
        step ``t`` (a change after it starts a run labelled ``t + 1``); ``w`` the
        observations' weights (default 1). Returns the log predictive density each
        observation had (NaN where none), the change model's surprise."""
        x = np.asarray(x, np.float64)
        m = self.n_streams
        if x.shape != (m,):
            raise ValueError(f"bocpd: expected {m} observations, got shape {x.shape}")
        ok = ~np.isnan(x)
        out = np.full(m, np.nan)
        if not ok.any():
            return out
        rows: np.ndarray | slice = slice(None) if ok.all() else np.flatnonzero(ok)
        k = m if isinstance(rows, slice) else len(rows)
        ww = (np.ones(k, DTYPE) if w is None
              else np.clip(np.asarray(w, np.float64)[rows], 1e-3, 1.0).astype(DTYPE))
        self._anchor(rows, x[rows])
        xx = (x[rows] - self.origin[rows]).astype(DTYPE)
        lj = self._log_t(rows, xx)
        lj *= ww
        lj += self.logp[:, rows]
        mx = lj.max(axis=0)
        evidence = mx + np.log(np.exp(lj - mx).sum(axis=0))
        grow = lj
        grow += DTYPE(self.log_1mh)
        n, mean, m2 = self.n[:, rows], self.mean[:, rows], self.m2[:, rows]
        n1 = n + ww
        d = xx - mean
        mean1 = d * ww
        mean1 /= n1
        mean1 += mean
        m21 = xx - mean1
        m21 *= d
        m21 *= ww
        m21 += m2
        start1 = self.start[:, rows]
        # the least probable run gives its slot to the new one (empty slots first)
        j = np.argmin(grow, axis=0)
        r = np.arange(k)
        # the normalizer without a second pass: the kept runs' mass after the split is
        # exp(evidence) less the (1 - h) share of the dropped run
        dropped = np.exp(np.minimum(grow[j, r] - evidence, 0.0))
        log_total = evidence + np.log(np.maximum(1.0 - dropped, 1e-30))
        grow[j, r] = evidence + DTYPE(self.log_h)
        n1[j, r] = 0.0
        mean1[j, r] = 0.0
        m21[j, r] = 0.0
        start1[j, r] = t + 1          # the new run's first observation is the next one
        grow -= log_total
        if isinstance(rows, slice):
            self.logp, self.n, self.mean, self.m2, self.start = grow, n1, mean1, m21, start1
        else:
            self.logp[:, rows], self.n[:, rows], self.mean[:, rows] = grow, n1, mean1
            self.m2[:, rows], self.start[:, rows] = m21, start1
        # the stream's surprise: log p(x | past) (the evidence before the hazard split)
        out[rows] = evidence / ww
        return out

    def _anchor(self, rows: np.ndarray | slice, x: np.ndarray) -> None:
        """Keep each stream's values near its origin: set on the first value, moved to the
        value when it is more than 10,000 prior scales away (the runs' means move with it;
        their spreads do not change)."""
        org = self.origin[rows]
        scale = np.sqrt(self.beta0[rows] / self.alpha[rows])
        with np.errstate(invalid="ignore"):
            move = np.isnan(org) | (np.abs(x - org) > 1e4 * scale)
        if not move.any():
            return
        idx = np.arange(self.n_streams)[rows][move]
        delta = np.where(np.isnan(org[move]), 0.0, x[move] - org[move])
        self.mean[:, idx] -= delta.astype(DTYPE)
        self.origin[idx] = x[move]

    def mass_after(self, t0: np.ndarray) -> np.ndarray:
        """Posterior mass of the runs that started after step ``t0`` (per stream)."""
        return np.where(self.start > np.asarray(t0), np.exp(self.logp), DTYPE(0.0)).sum(axis=0)

    def map_start(self, t0: np.ndarray) -> np.ndarray:
        """Start step of the most probable run among those that began after ``t0``."""
        p = np.where(self.start > np.asarray(t0), self.logp, -np.inf)
        return self.start[np.argmax(p, axis=0), np.arange(self.n_streams)]

    def run_summary(self, i: int, t0: int) -> tuple[float, float, float, float]:
        """The means either side of stream ``i``'s change after step ``t0``: (mean, weight) of
        its most probable run started after ``t0``, and of the observations before that
        run within its most probable run started at or before ``t0`` (that run holds the
        new run's observations too: they are taken out)."""
        after = self.start[:, i] > t0
        lp = self.logp[:, i]
        pa = np.where(after, lp, -np.inf)
        pb = np.where(~after, lp, -np.inf)
        ja, jb = int(np.argmax(pa)), int(np.argmax(pb))
        o = float(self.origin[i]) if np.isfinite(self.origin[i]) else 0.0
        ma, na = float(self.mean[ja, i]) + o, float(self.n[ja, i])
        if not np.isfinite(pb[jb]):
            return ma, na, float(self.mu0[i]), 0.0
        mb, nb = float(self.mean[jb, i]) + o, float(self.n[jb, i])
        rest = nb - na
        if rest > 1e-6:
            return ma, na, (nb * mb - na * ma) / rest, rest
        return ma, na, float(self.mu0[i]), 0.0

    def state_dict(self) -> dict[str, Any]:
        """The run arrays as ``[streams, runs]`` (the checkpoint's layout since it began)."""
        return {"hazard": self.hazard, "runs": self.runs, "kappa0": self.kappa0,
                "alpha0": self.alpha0, "logp": self.logp.T.copy(), "n": self.n.T.copy(),
                "mean": self.mean.T.copy(), "m2": self.m2.T.copy(),
                "start": self.start.T.copy(),
                "mu0": self.mu0.copy(), "beta0": self.beta0.copy(), "alpha": self.alpha.copy(),
                "origin": self.origin.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        runs = int(state["runs"])
        if runs != self.runs:
            raise ValueError(f"bocpd: state has {runs} run lengths, this detector {self.runs}")
        for k in ("logp", "n", "mean", "m2"):
            setattr(self, k, np.ascontiguousarray(np.asarray(state[k], DTYPE)
                                                  .reshape(-1, runs).T))
        self.start = np.ascontiguousarray(np.asarray(state["start"], np.int64)
                                          .reshape(-1, runs).T)
        self.mu0 = np.asarray(state["mu0"], np.float64).copy()
        self.beta0 = np.asarray(state["beta0"], np.float64).copy()
        self.alpha = np.asarray(state["alpha"], np.float64).copy()
        self.origin = np.asarray(state["origin"], np.float64).copy()
        self.n_streams = len(self.mu0)
