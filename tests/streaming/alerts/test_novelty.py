"""Value detectors, their calibration to a false-alarm budget, and the fused score's rule."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.alerts.calibration import TailCalibrator, exponent, fuse, score_of
from streaming.alerts.novelty import ContextNovelty, RangeBreak, RelativeEntropy, WindowedGaussian

BUDGET = 1.0 / 10_000          # alerts.max_per_10k = 1


def _detectors() -> dict[str, object]:
    return {"level": WindowedGaussian(1000, short=6), "jump": WindowedGaussian(1000, diff=True),
            "distribution": RelativeEntropy(), "context": ContextNovelty(), "range": RangeBreak()}


def _run(det: object, x: np.ndarray, cal: TailCalibrator | None = None) -> np.ndarray:
    """Calibrated tail probability per reading of ``x`` ``[T, N]``."""
    cal = cal or TailCalibrator(probation=100, tail_mass=0.2, long_window=8000)
    return np.stack([cal.learn_many(det.learn_many(row)) for row in x])   # type: ignore[attr-defined]


def _seasonal(rng: np.random.Generator, t: int, n: int) -> np.ndarray:
    k = np.arange(t)[:, None]
    return 10 + 2 * np.sin(2 * np.pi * k / 288 + rng.uniform(0, 6, n)) + rng.normal(0, 0.5, (t, n))


@pytest.mark.parametrize("name,bound", [("level", 6), ("jump", 1), ("distribution", 30)])
def test_a_level_shift_is_found_within_a_bound(name: str, bound: int) -> None:
    rng = np.random.default_rng(0)
    x = _seasonal(rng, 2000, 8)
    x[1500:] += 8.0                      # a level shift of ~5 std at reading 1500
    p = _run(_detectors()[name], x)
    hit = p[1500:1500 + bound + 1] <= BUDGET
    assert hit.any(axis=0).sum() >= 6, (name, hit.any(axis=0))     # on most sensors
    assert (p[1000:1500] <= BUDGET).sum() <= 1                      # and not before


def test_context_novelty_sees_a_broken_pattern_and_not_a_repeated_one() -> None:
    saw = np.tile(np.arange(10.0), 60)[:, None]        # 0..9 repeated
    x = np.concatenate([saw, np.arange(9.0, -1, -1)[:, None], saw[:50]])
    det = ContextNovelty()
    s = np.array([det.learn_many(row)[0] for row in x])
    assert (s[100:600] == 0).all()                     # the pattern is known
    assert (s[600:610] > 0).sum() >= 5 and s[600:610].max() > 3   # reversed: new contexts
    assert (s[620:] == 0).all()


@pytest.mark.heavy
def test_fused_detectors_are_quiet_at_the_budget_on_a_stationary_series() -> None:
    rng = np.random.default_rng(1)
    x = _seasonal(rng, 10_000, 10)
    p = {name: _run(det, x) for name, det in _detectors().items()}
    for name, q in p.items():
        if name != "context":
            assert (q <= BUDGET).mean() * 10_000 <= 3.0, name
    fused = fuse(p)
    assert (fused <= BUDGET).mean() * 10_000 <= 3.0


def test_calibration_keeps_a_heavy_tailed_stationary_stream_under_its_budget() -> None:
    # Laplace noise (kurtosis 6): the Gaussian tail of 1e-4 is crossed ~40 times per 10k
    # readings, so the raw surprise would alarm; the calibrated one stays within the budget
    # (Student-t noise overshoots it: see streaming/alerts/calibration.py)
    rng = np.random.default_rng(2)
    x = 5 + rng.laplace(size=(20_000, 20))
    wg = WindowedGaussian(1000)
    s = np.stack([wg.learn_many(row) for row in x])
    raw_rate = (s >= -np.log(BUDGET)).mean() * 10_000
    cal = TailCalibrator(probation=100, tail_mass=0.2, long_window=8000)
    p = np.stack([cal.learn_many(row) for row in s])
    cal_rate = (p[1000:] <= BUDGET).mean() * 10_000
    assert raw_rate > 10 and cal_rate <= 1.0, (raw_rate, cal_rate)


def test_the_fused_score_rule() -> None:
    p = {"a": np.array([1.0, 1e-3, 0.5, 1e-6]), "b": np.array([1.0, 1.0, 1e-3, 0.2])}
    np.testing.assert_allclose(fuse(p), [1.0, 2e-3, 2e-3, 2e-6])   # min(1, K * min_k p_k)
    m = exponent(1.0, 0.9)                                          # budget 1 per 10k at 0.9
    np.testing.assert_allclose(score_of(np.array([1e-4]), m), [0.9])
    s = score_of(np.array([1.0, 1e-2, 1e-4, 1e-8]), m)
    assert s[0] == 0.0 and np.all(np.diff(s) > 0) and s[-1] < 1.0
    assert (score_of(fuse(p), m) >= 0.9).tolist() == [False, False, False, True]


def test_detectors_skip_missing_readings_and_round_trip_their_state() -> None:
    rng = np.random.default_rng(3)
    x = _seasonal(rng, 400, 3)
    x[50:60, 1] = np.nan
    for name, det in _detectors().items():
        out = np.stack([det.learn_many(row) for row in x[:300]])    # type: ignore[attr-defined]
        assert np.isnan(out[50:60, 1]).all() and not np.isnan(out[200:, 0]).any(), name
        twin = _detectors()[name]
        twin.load_state_dict(det.state_dict())                      # type: ignore[attr-defined]
        for row in x[300:]:
            np.testing.assert_array_equal(twin.learn_many(row), det.learn_many(row))  # type: ignore[attr-defined]
        # a new sensor appears: the arrays grow
        assert det.learn_many(np.append(x[-1], 3.0)).shape == (4,)  # type: ignore[attr-defined]


def test_a_break_out_of_the_range_scores_high_and_a_value_inside_scores_nothing() -> None:
    rng = np.random.default_rng(4)
    x = _seasonal(rng, 3000, 6)
    x[2500, :3] = 30.0                      # a spike far above every reading so far
    x[2500, 3:] = 10.0                      # the middle of the range
    det, cal = RangeBreak(), TailCalibrator(probation=100, tail_mass=0.2, long_window=8000)
    s = np.stack([det.learn_many(row) for row in x[:2500]])
    assert (s[1000:] > 0).mean() < 0.01     # inside the range: (nearly) always 0
    for row in s:
        cal.learn_many(row)
    s_now = det.learn_many(x[2500])
    p = cal.learn_many(s_now)
    assert (s_now[:3] > 3).all() and (s_now[3:] == 0).all(), s_now
    assert (p[:3] <= BUDGET).all() and (p[3:] == 1).all(), p
    # a sustained shift too small for one reading to break out: the mean of the last
    # ``short`` readings does
    det = RangeBreak(short=20)
    y = np.concatenate([rng.normal(0, 1, (3000, 4)), rng.normal(2.2, 1, (60, 4))])
    s = np.stack([det.learn_many(row) for row in y])
    assert (s[3000:3060] > 0).any(axis=0).all()


def test_a_slow_seasonal_cycle_after_a_long_history_does_not_keep_scoring() -> None:
    # a yearly-like cycle of 2000 readings with noise, 8 cycles: after the first cycle the
    # range is known and a new cycle is no news
    rng = np.random.default_rng(5)
    k = np.arange(16_000)[:, None]
    x = (10 + 5 * np.sin(2 * np.pi * k / 2000 + rng.uniform(0, 6, 8))
         + rng.normal(0, 0.5, (16_000, 8)))
    p = _run(RangeBreak(), x)
    assert (p[4000:] <= BUDGET).sum() == 0
    det = RangeBreak()
    s = np.stack([det.learn_many(row) for row in x])
    assert (s[4000:] > 0).mean() < 0.002


@pytest.mark.parametrize("kw", [{"short": 0}, {"forget": -1}, {"forget": 1}, {"scale": 0},
                                {"warmup": 0}])
def test_range_break_rejects_bad_settings(kw: dict) -> None:
    with pytest.raises(ValueError):
        RangeBreak(**kw)


def test_the_weighted_fusion_rule_and_its_shares() -> None:
    from streaming.config import AnomalyConfig, ConfigError

    p = {"a": np.array([1.0, 1e-3, 0.5]), "b": np.array([1.0, 1.0, 1e-3])}
    np.testing.assert_allclose(fuse(p, {"a": 0.5, "b": 0.5}), fuse(p))   # equal: Bonferroni
    np.testing.assert_allclose(fuse(p, {"a": 0.9, "b": 0.1}), [1.0, 1e-3 / 0.9, 1e-2])
    a = AnomalyConfig(weights="range:0.9")
    w = a.weights_for(["residual", "level", "range"])
    assert w == pytest.approx({"range": 0.9, "residual": 0.05, "level": 0.05})
    assert a.weights_for(["residual", "level"]) is None        # range not fused: equal shares
    for bad in ("range", "range:0", "range:1.5", "range:x", "nothing:0.5",
                "range:0.6+level:0.4"):
        with pytest.raises(ConfigError):
            AnomalyConfig(weights=bad, detectors="residual+level+jump+range").validate()
