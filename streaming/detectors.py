"""Streaming change detectors as arrays: one independent detector per sensor, updated for all
sensors in one vectorized call.

``PageHinkleyArray`` is river's ``drift.PageHinkley`` (``mode="up"``, ``min_instances=1``)
over ``N`` streams at once: the same arithmetic in the same order, so it flags the same
updates as ``N`` river detectors fed the same values (``tests/streaming/test_detectors.py``
checks this). It also keeps what river does not: the update at which the cumulative sum was
last at its minimum (the estimated onset of the rise that fired) and the mean of the input
since then, so an alert can say since when and by how much.
"""

from __future__ import annotations

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
