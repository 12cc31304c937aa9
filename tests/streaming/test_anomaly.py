"""Anomaly likelihood: quiet on stationary noise, high on a burst, state round trip."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from streaming.anomaly import AnomalyLikelihood


def test_quiet_on_noise_high_on_burst() -> None:
    rng = np.random.default_rng(0)
    al = AnomalyLikelihood(long_window=500, short_window=5, warmup=100)
    raw = np.abs(rng.normal(size=(3000, 3)))
    raw[2500:2510, 1] += 6.0                      # a burst on sensor 1 only
    scores = np.stack([al.learn_many(r) for r in raw])
    assert (scores[:100] == 0).all()              # warm-up
    calm = scores[200:2500]
    assert np.quantile(calm, 0.999) < 0.5
    assert scores[2500:2515, 1].max() > 0.8
    assert scores[2500:2515, [0, 2]].max() < 0.5
    assert ((scores >= 0) & (scores <= 1)).all()


def test_nan_is_skipped_and_state_round_trips() -> None:
    al = AnomalyLikelihood(long_window=50, short_window=3, warmup=5)
    rng = np.random.default_rng(1)
    for _ in range(60):
        al.learn_many(np.abs(rng.normal(size=2)))
    before = copy.deepcopy(al.state_dict())
    out = al.learn_many(np.array([np.nan, np.nan]))
    assert (out == 0).all()
    for k in ("count", "mean", "var", "short"):
        np.testing.assert_array_equal(al.state_dict()[k], before[k])
    other = AnomalyLikelihood()
    other.load_state_dict(before)
    x = np.array([0.3, 4.0])
    np.testing.assert_array_equal(other.learn_many(x), al.learn_many(x))
    with pytest.raises(ValueError):
        AnomalyLikelihood(long_window=5, short_window=10)
