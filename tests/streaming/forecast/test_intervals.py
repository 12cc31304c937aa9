"""p10/p90 bounds of the served forecast, calibrated online (adaptive conformal)."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.forecast.intervals import IntervalCalibrator


@pytest.mark.parametrize("offset", [0.05, 20.0])
def test_coverage_converges_to_80_percent_from_a_bad_start(offset: float) -> None:
    """A model whose quantile offsets are far too narrow or too wide still ends up with
    10 % of truths below and 10 % above, at every horizon point."""
    rng = np.random.default_rng(0)
    ic = IntervalCalibrator(4)
    inside = below = above = n = 0
    for t in range(3000):
        served = rng.normal(size=(20, 4))
        y = served + rng.normal(size=(20, 4)) * np.array([0.5, 1, 2, 4])
        lo, hi = ic.bounds(served, np.ones(20), np.full((20, 2, 4), offset))
        assert (lo <= served).all() and (served <= hi).all()
        ic.learn(y, served, lo, hi)
        if t >= 1000:
            inside += ((y >= lo) & (y <= hi)).sum(axis=0)
            below += (y < lo).sum(axis=0)
            above += (y > hi).sum(axis=0)
            n += 20
    np.testing.assert_allclose(inside / n, 0.8, atol=0.02)
    np.testing.assert_allclose(below / n, 0.1, atol=0.015)
    np.testing.assert_allclose(above / n, 0.1, atol=0.015)


def test_without_model_quantiles_the_width_follows_the_served_error() -> None:
    rng = np.random.default_rng(1)
    ic = IntervalCalibrator(2)
    lo, hi = ic.bounds(np.zeros((3, 2)), np.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose(hi - lo, [[1, 1], [2, 2], [4, 4]])   # before any error
    for _ in range(500):
        served = np.zeros((3, 2))
        lo, hi = ic.bounds(served, np.ones(3))
        ic.learn(rng.normal(size=(3, 2)) * np.array([[1], [3], [10]]), served, lo, hi)
    width = (hi - lo).mean(axis=1)
    assert width[0] < width[1] < width[2]
    np.testing.assert_allclose(width / width[0], [1, 3, 10], rtol=0.35)


def test_missing_truth_teaches_nothing_and_rate_zero_keeps_raw_quantiles() -> None:
    ic = IntervalCalibrator(3, rate=0.0)
    served = np.zeros((2, 3))
    lo, hi = ic.bounds(served, np.ones(2), np.ones((2, 2, 3)))
    ic.learn(np.full((2, 3), 100.0), served, lo, hi)
    np.testing.assert_allclose(ic.bounds(served, np.ones(2), np.ones((2, 2, 3)))[1], 1.0)
    ic2 = IntervalCalibrator(3)
    ic2.learn(np.full((2, 3), np.nan), served, lo, hi)
    assert ic2.realized == 0 and (ic2.log_mult == 0).all()
