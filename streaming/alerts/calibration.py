"""Self-calibration of detector surprises to a false-alarm budget, and their fusion.

A detector's surprise ``s = -ln p`` is only as honest as its model: on autocorrelated,
heavy-tailed sensor data a Gaussian tail of 1e-6 may happen every day. ``TailCalibrator``
therefore replaces each sensor's ``p`` by the tail probability of ``s`` *in that sensor's own
recent history*, estimated by peaks over threshold (Siffer et al., "Anomaly detection in
streams with extreme value theory", KDD 2017): a running ``1 - tail_mass`` quantile ``t`` of
the surprise (stochastic approximation), the exceedance rate ``r``, and a generalized Pareto
tail of the excesses above ``t`` (shape ``gamma`` and scale ``beta`` by the method of
moments, the shape kept in ``[min_shape, max_shape]`` so a light tail is never extrapolated
as if it could not be heavier):

    p_cal(s) = min(1, r * (1 + gamma (s - t) / beta) ** (-1 / gamma))

the fraction of the sensor's readings expected to be at least that surprising. During a
sensor's probation (``probation`` readings) ``p_cal = 1``. Measured on stationary streams
(``tests/streaming/alerts/test_novelty.py``): Gaussian and Laplace noise stay under the budget;
Student-t noise overshoots it (x1.4 at 5 degrees of freedom, x2.8 at 3;
``benchmarks/calibration.py``), because moment estimates of the shape are biased low for such
tails (a Hill estimator fixed that in an unrecorded trial but raised the false-alarm rate and
lowered the NAB score on real series, so it is not used).

``fuse`` combines the calibrated tail probabilities of ``K`` detectors by Bonferroni's rule,
``p = min(1, K * min_k p_k)`` (a valid tail probability whatever the dependence between
them; weighted, ``min(1, min_k p_k / w_k)`` with shares ``w_k`` of the budget summing to 1,
``anomaly.weights``), and ``score_of`` maps it to a score in [0, 1] with
``score = 1 - p ** (1 / m)``, where ``m`` makes the alert threshold correspond to the budget:
``score >= threshold`` exactly when ``p <= max_per_10k / 10_000``, so a stationary stream
crosses the threshold on at most about that many readings per 10,000 (alerts are fewer still:
a burst of crossings is one alert).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class TailCalibrator:
    """Per-sensor peaks-over-threshold calibration of one detector's surprise."""

    def __init__(self, probation: int = 100, tail_mass: float = 0.2,
                 long_window: int = 8000, min_shape: float = 0.1,
                 max_shape: float = 0.5) -> None:
        if probation < 1 or not 0 < tail_mass < 0.5 or long_window < 10:
            raise ValueError("tail calibrator needs probation >= 1, 0 < tail_mass < 0.5, "
                             "long_window >= 10")
        self.probation, self.tail_mass, self.long_window = probation, tail_mass, long_window
        self.min_shape, self.max_shape = min_shape, max_shape
        self.n = np.zeros(0, np.int64)
        self.t = np.zeros(0)        # running (1 - tail_mass) quantile of the surprise
        self.sigma = np.zeros(0)    # mean excess above t
        self.sq = np.zeros(0)       # mean squared excess above t
        self.rate = np.zeros(0)     # exceedance rate (tends to tail_mass)
        self.scale = np.zeros(0)    # mean |surprise|: the quantile tracker's step size

    _ARRAYS = ("t", "sigma", "sq", "rate", "scale")

    def _gpd(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Generalized Pareto shape and scale of the excesses by the method of moments,
        ``gamma = (1 - m^2 / v) / 2``, ``beta = m (m^2 / v + 1) / 2`` (``m``, ``v``: mean
        and variance of the excesses), the shape kept in ``[min_shape, max_shape]``."""
        m = np.maximum(self.sigma[:n], 1e-9)
        v = np.maximum(self.sq[:n] - m * m, 1e-18)
        r = m * m / v
        mom = 0.5 * (1.0 - r)
        beta = np.where(mom > 0, 0.5 * m * (r + 1.0), m)
        return np.clip(mom, self.min_shape, self.max_shape), np.maximum(beta, 1e-9)

    def _grow(self, n: int) -> None:
        if n > len(self.n):
            k = n - len(self.n)
            self.n = np.concatenate([self.n, np.zeros(k, np.int64)])
            for name in self._ARRAYS:
                setattr(self, name, np.concatenate([getattr(self, name), np.zeros(k)]))

    def learn_many(self, s: np.ndarray) -> np.ndarray:
        """Calibrated tail probability of each surprise ``s`` ``[N]`` (NaN: none -> 1), from
        the state before ``s`` is learned."""
        s = np.asarray(s, np.float64)
        n = len(s)
        self._grow(n)
        ok = ~np.isnan(s)
        sv = np.maximum(np.nan_to_num(s), 0.0)
        c = self.n[:n]
        t, sig, rate = self.t[:n], self.sigma[:n], self.rate[:n]
        gamma, beta = self._gpd(n)
        x = np.maximum(sv - t, 0.0) / beta
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            log_tail = -np.log1p(gamma * x) / gamma
            p = np.maximum(rate, 1.0 / (c + 1.0)) * np.exp(np.minimum(log_tail, 0.0))
        p = np.where(ok & (c >= self.probation) & (sv > t) & (sig > 0), np.minimum(p, 1.0),
                     1.0)
        # learn
        a = np.maximum(1.0 / (c + 1.0), 1.0 / self.long_window)
        above = sv > t
        scale = np.where(ok, self.scale[:n] + a * (sv - self.scale[:n]), self.scale[:n])
        # stochastic quantile step: up by (1 - q) * eta on an exceedance, down by q * eta else
        step = np.where(c == 0, sv - t, np.maximum(scale, 1e-9) * np.minimum(1.0, 10.0 * a)
                        * np.where(above, 1.0 - self.tail_mass, -self.tail_mass))
        ea = np.maximum(1.0 / (c * self.tail_mass + 1.0), 1.0 / (self.long_window
                                                              * self.tail_mass))
        upd = ok & above
        self.sigma[:n] = np.where(upd, sig + ea * ((sv - t) - sig), sig)
        self.sq[:n] = np.where(upd, self.sq[:n] + ea * ((sv - t) ** 2 - self.sq[:n]),
                               self.sq[:n])
        self.rate[:n] = np.where(ok, rate + a * (above - rate), rate)
        self.t[:n] = np.maximum(np.where(ok, t + step, t), 0.0)
        self.scale[:n] = scale
        self.n[:n] = c + ok
        return p

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n.copy(), **{k: getattr(self, k).copy() for k in self._ARRAYS}}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.n = np.array(s["n"], np.int64)
        for name in self._ARRAYS:
            setattr(self, name, np.array(s[name], np.float64))


def fuse(p: dict[str, np.ndarray], weights: dict[str, float] | None = None) -> np.ndarray:
    """Bonferroni: ``min(1, K * min_k p_k)`` over the ``K`` detectors' tail probabilities;
    with ``weights`` (shares of the budget, summing to at most 1) the weighted rule
    ``min(1, min_k p_k / w_k)``, equally valid whatever the dependence (``K`` equal shares
    ``1/K`` are the plain rule)."""
    if not weights:
        stack = np.stack(list(p.values()))
        return np.minimum(1.0, len(p) * stack.min(axis=0))
    stack = np.stack([v / weights[k] for k, v in p.items()])
    return np.minimum(1.0, stack.min(axis=0))


def exponent(max_per_10k: float, threshold: float) -> float:
    """``m`` of ``score = 1 - p ** (1/m)`` that puts ``threshold`` at ``p = budget``."""
    q = max_per_10k / 10_000.0
    return math.log(q) / math.log(1.0 - threshold)


def score_of(p: np.ndarray, m: float) -> np.ndarray:
    """Fused tail probability -> score in [0, 1] (monotone; ``p = 1`` gives 0)."""
    return -np.expm1(np.log(np.maximum(p, 1e-300)) / m)
