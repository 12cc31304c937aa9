"""NAB scoring on hand-built windows, checked against a direct per-threshold implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from replay.nab import (
    PROFILES,
    NabFile,
    probation_rows,
    score_alerts,
    score_corpus,
    sigma,
    windows_from_timestamps,
)

N = 1000            # probation = 150 rows


def _file(detect_rows: list[int], windows=((400, 499),), n: int = N) -> NabFile:
    s = np.zeros(n)
    s[detect_rows] = 1.0
    return NabFile("f.csv", s, list(windows))


def _naive(files: list[NabFile], profile: str, t: float) -> float:
    """Straight from the rules, one threshold."""
    p = PROFILES[profile]
    raw = 0.0
    for f in files:
        n = len(f.scores)
        prob = probation_rows(n)
        det = [i for i in range(prob, n) if f.scores[i] >= t]
        for lo, hi in f.windows:
            w = hi - lo + 1
            inside = [i for i in det if lo <= i <= hi]
            if inside:
                raw += max(p["tp"] * sigma(-(hi - i + 1) / w) / sigma(-1.0) for i in inside)
            else:
                raw -= p["fn"]
        for i in det:
            if any(lo <= i <= hi for lo, hi in f.windows):
                continue
            before = [(lo, hi) for lo, hi in f.windows if hi < i]
            if not before:
                raw -= p["fp"]
            else:
                lo, hi = before[-1]
                raw += p["fp"] * sigma(abs(i - hi) / (hi - lo))
    return float(raw)


def test_sigma_shape() -> None:
    assert math.isclose(float(sigma(0.0)), 0.0, abs_tol=1e-12)
    assert 0.98 < float(sigma(-1.0)) < 0.99 and -0.99 < float(sigma(1.0)) < -0.98
    assert float(sigma(3.5)) == -1.0
    assert probation_rows(1000) == 150 and probation_rows(100_000) == 750


def test_early_detection_scores_more_than_late() -> None:
    early = score_corpus([_file([400])], threshold=0.5)
    mid = score_corpus([_file([450])], threshold=0.5)
    late = score_corpus([_file([499])], threshold=0.5)
    assert early.score == pytest.approx(100.0)          # window start, no FP: perfect
    assert early.raw > mid.raw > late.raw > 0
    assert late.tp == mid.tp == early.tp == 1


def test_null_and_missed_windows() -> None:
    null = score_corpus([_file([])], threshold=0.5)
    assert null.score == 0.0 and null.fn == 1 and null.raw == -1.0
    low_fn = score_corpus([_file([])], "reward_low_FN_rate", threshold=0.5)
    assert low_fn.raw == -2.0 and low_fn.score == 0.0


@pytest.mark.parametrize("profile, cost", [("standard", 0.11), ("reward_low_FP_rate", 0.22),
                                           ("reward_low_FN_rate", 0.11)])
def test_false_positive_costs_per_profile(profile: str, cost: float) -> None:
    hit = score_corpus([_file([400])], profile, threshold=0.5)
    with_fp = score_corpus([_file([400, 300])], profile, threshold=0.5)   # before the window
    assert hit.raw - with_fp.raw == pytest.approx(cost)
    assert with_fp.fp == 1
    near = score_corpus([_file([400, 502])], profile, threshold=0.5)      # just after it
    far = score_corpus([_file([400, 900])], profile, threshold=0.5)       # far after
    assert hit.raw - near.raw < hit.raw - far.raw == pytest.approx(cost)


def test_probationary_rows_are_not_scored() -> None:
    a = score_corpus([_file([400, 10, 100])], threshold=0.5)
    b = score_corpus([_file([400])], threshold=0.5)
    assert a.raw == b.raw and a.fp == 0


def test_optimized_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    files = []
    for k in range(4):
        n = 600 + 100 * k
        s = np.round(rng.beta(0.5, 3, n), 2)
        wins = [(200 + 10 * k, 239 + 10 * k), (400, 430)]
        for lo, _ in wins:
            s[lo + rng.integers(0, 20)] = 0.9
        files.append(NabFile(f"f{k}", s, wins))
    for profile in PROFILES:
        opt = score_corpus(files, profile)
        grid = np.unique(np.concatenate([f.scores for f in files]))
        brute = max(_naive(files, profile, t) for t in [*grid, np.inf])
        assert opt.raw == pytest.approx(brute, abs=1e-9)
        assert opt.raw == pytest.approx(_naive(files, profile, opt.threshold), abs=1e-9)
        fixed = score_corpus(files, profile, threshold=opt.threshold)
        assert fixed.raw == pytest.approx(opt.raw)


def _spiky_files() -> list[NabFile]:
    rng = np.random.default_rng(1)
    files = []
    for k in range(3):
        n = 800
        s = np.round(rng.beta(0.5, 3, n), 2)
        s[rng.integers(150, n, 12)] = 0.95           # bursts outside and inside the windows
        wins = [(300 + 20 * k, 359 + 20 * k), (600, 650)]
        s[310 + 20 * k: 316 + 20 * k] = np.linspace(0.7, 0.99, 6)
        files.append(NabFile(f"g{k}", s, wins))
    return files


def test_alerts_of_a_plain_threshold_score_as_the_score_does() -> None:
    files = _spiky_files()
    every = score_alerts(files, lambda s, t: np.flatnonzero(s >= t), grid=10_000)
    for profile in PROFILES:
        assert every[profile].raw == pytest.approx(score_corpus(files, profile).raw, abs=1e-9)


def test_alerts_of_the_gate_rule_at_the_best_threshold() -> None:
    """The gate's alerts (hysteresis, cooldown) scored at every threshold by brute force:
    the sweep finds the best, and a coarse grid refined near its best stays close."""
    from streaming.alerts.alert_gate import gate_series

    files = _spiky_files()
    def fire(s: np.ndarray, t: float) -> np.ndarray:
        return gate_series(s, t, clear=min(0.5, t), min_gap_steps=24)

    def brute(profile: str, t: float) -> float:
        hits = []
        for f in files:
            d = np.zeros(len(f.scores))
            d[fire(f.scores, t)] = 1.0
            hits.append(NabFile(f.name, d, f.windows))
        return _naive(hits, profile, 0.5)

    exact = score_alerts(files, fire, grid=10_000)
    coarse = score_alerts(files, fire, grid=8)
    grid = np.unique(np.concatenate([f.scores[f.scores > 0] for f in files]))
    for profile in PROFILES:
        best = max(brute(profile, t) for t in grid)
        assert exact[profile].raw == pytest.approx(best, abs=1e-9)
        assert exact[profile].raw == pytest.approx(brute(profile, exact[profile].threshold))
        assert coarse[profile].raw <= best + 1e-9
        assert coarse[profile].raw == pytest.approx(brute(profile, coarse[profile].threshold))
    plain = score_corpus(files, "standard")       # at its threshold, a burst's repeats
    hits = []                                     # are one alert under the gate's rule
    for f in files:
        d = np.zeros(len(f.scores))
        d[fire(f.scores, plain.threshold)] = 1.0
        hits.append(NabFile(f.name, d, f.windows))
    assert 0 < score_corpus(hits, "standard", threshold=0.5).fp < plain.fp


def test_windows_from_timestamps_and_bad_input() -> None:
    ts = np.arange(0, 100, 5)
    assert windows_from_timestamps(ts, [(10, 24), (50, 50)]) == [(2, 4), (10, 10)]
    with pytest.raises(ValueError, match="NaN"):
        NabFile("x", np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="window"):
        NabFile("x", np.zeros(10), [(5, 12)])
