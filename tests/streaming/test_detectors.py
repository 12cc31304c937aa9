"""Array detectors against river, and the drift monitor's direction rule."""

from __future__ import annotations

import numpy as np
from river import drift

from streaming.config import DriftConfig
from streaming.detectors import PageHinkleyArray
from streaming.drift import DriftMonitor


def _streams(n: int, t: int, seed: int) -> np.ndarray:
    """``[t, n]``: noise with level shifts up and down at random times, some gaps."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, n))
    for j in range(n):
        for at in rng.integers(10, t, size=3):
            x[at:, j] += rng.choice([-3.0, 2.0, 4.0])
    x[rng.random((t, n)) < 0.05] = np.nan
    return x


def test_page_hinkley_array_flags_what_river_flags() -> None:
    x = _streams(40, 600, seed=0)
    arr = PageHinkleyArray(delta=0.5, threshold=10.0)
    river = [drift.PageHinkley(min_instances=1, delta=0.5, threshold=10.0, alpha=1.0,
                               mode="up") for _ in range(x.shape[1])]
    ours, theirs = [], []
    for t, row in enumerate(x):
        ours += [(t, j) for j in np.flatnonzero(arr.update(row, t)).tolist()]
        for j, v in enumerate(row.tolist()):
            if v == v:
                river[j].update(v)
                if river[j].drift_detected:
                    theirs.append((t, j))
    assert len(ours) > 40 and ours == theirs


def test_page_hinkley_array_state_round_trips_and_dates_the_onset() -> None:
    x = np.zeros((120, 2))
    x[60:, 0] = 3.0                                # stream 0 rises at t = 60
    a, b = PageHinkleyArray(0.5, 10.0), PageHinkleyArray(0.5, 10.0)
    fired_at = None
    for t in range(120):
        if t == 50:
            b.load_state_dict(a.state_dict())
        fa = a.update(x[t], t)
        if t >= 50:
            np.testing.assert_array_equal(fa, b.update(x[t], t))
        if fa[0] and fired_at is None:
            fired_at, onset = t, int(a.last_onset[0]) + 1
    assert fired_at is not None and 60 < fired_at < 70 and onset == 60


def _monitor() -> DriftMonitor:
    return DriftMonitor(DriftConfig(warmup_readings=20), common_mode_min=99, step_ms=300_000,
                        patch_len=1)


def test_a_falling_error_never_raises_an_upward_drift() -> None:
    rng = np.random.default_rng(1)
    mon = _monitor()
    fired = []
    for t in range(400):
        # normal 1.0, a long high stretch, then the error falls far below normal
        level = 1.0 if t < 100 else (3.0 if t < 160 else 0.05)
        err = np.abs(level + 0.05 * rng.standard_normal(3))
        for name, ev in mon.update(["a", "b", "c"], {"abs_residual": err}, t,
                                   t * 300_000).items():
            fired.append((t, name, ev.detail["z"]))
    assert fired, "the rise at t = 100 must be detected"
    assert all(t < 160 for t, _, _ in fired), f"fired after the error fell: {fired}"
    assert all(z > 0 for _, _, z in fired)


def test_a_rise_is_reported_with_its_onset_and_direction() -> None:
    rng = np.random.default_rng(2)
    mon = _monitor()
    out = []
    for t in range(200):
        err = np.abs(1.0 + 0.1 * rng.standard_normal(2))
        if t >= 120:
            err[1] *= 3.0
        ev = mon.update(["a", "b"], {"abs_residual": err}, t, t * 300_000)
        out += [(t, e) for s, e in ev.items() if s == "b"]
        assert "a" not in ev
    t, e = out[0]
    assert 120 <= t < 130
    assert e.detail["direction"] == "up" and e.detail["since_step"] in range(110, 122)
    assert e.detail["since_ts"] == e.detail["since_step"] * 300_000
    assert "rose since" in e.text and e.detail["value"] > e.detail["baseline"]
