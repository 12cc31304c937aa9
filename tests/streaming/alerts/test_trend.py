"""The trend frame: a sensor's steady drift learned from its step levels and taken out."""

from __future__ import annotations

import numpy as np

from streaming.alerts.trend import TrendFrame

P = 12


def feed(tf: TrendFrame, levels: np.ndarray, start: int = 100) -> list[np.ndarray]:
    """Step levels ``[T, N]`` into ``tf``; returns the ``changed`` mask of each step."""
    out = []
    for k, y in enumerate(levels):
        tf.grow(len(y), start + k)
        tf.frame(start + k, len(y))
        out.append(tf.learn(y, start + k))
    return out


def test_a_steady_trend_is_learned_and_a_random_walk_is_not() -> None:
    """Column 0 trends by 0.3 a reading (3.6 a step) under step noise 0.3; columns 1-8 are
    random walks with the same step noise (their levels fit a line as well, their
    differences have mean 0); column 9 is noise without a trend."""
    rng = np.random.default_rng(3)
    steps = 300
    lv = np.zeros((steps, 10))
    lv[:, 0] = 3.6 * np.arange(steps) + rng.normal(0, 0.3, steps)
    lv[:, 1:9] = np.cumsum(rng.normal(0, 0.3, (steps, 8)), axis=0)
    lv[:, 9] = rng.normal(0, 0.3, steps)
    tf = TrendFrame(P)
    changed = np.array(feed(tf, lv))
    assert abs(tf.drift[0] - 0.3) < 0.002
    first = int(np.argmax(changed[:, 0]))
    assert changed[first, 0] and first <= 10                 # a few steps of differences
    assert changed[:, 0].sum() == 1                          # refined, not restarted
    assert np.all(tf.drift[1:] == 0.0) and not changed[:, 1:].any()


def test_the_frame_is_continuous_when_the_drift_changes() -> None:
    """A refined or new drift bends the frame from the end of the step on: the frame at the
    next step's first reading continues from the last one by one new drift."""
    tf = TrendFrame(P)
    lv = np.array([[10.0], [13.6], [17.2], [20.8], [24.4]])
    feed(tf, lv)
    drift = tf.drift[0]
    assert abs(drift - 0.3) < 1e-9
    end = tf.frame(104, 1)[0, -1]
    nxt = tf.frame(105, 1)[0]
    assert abs(nxt[0] - end - drift) < 1e-9 and abs(nxt[-1] - nxt[0] - 11 * drift) < 1e-9
    assert abs(tf.at(0, 105) - end) < 1e-9


def test_a_turn_is_learned_again_after_a_restart() -> None:
    rng = np.random.default_rng(5)
    up = 3.6 * np.arange(40) + rng.normal(0, 0.3, 40)
    down = up[-1] - 2.4 * np.arange(1, 41) + rng.normal(0, 0.3, 40)
    tf = TrendFrame(P)
    feed(tf, up[:, None])
    tf.restart([0], 139)
    changed = feed(tf, down[:, None], start=140)
    assert abs(tf.drift[0] + 0.2) < 0.005
    assert sum(bool(c[0]) for c in changed) == 1


def test_state_round_trip_and_an_old_state() -> None:
    rng = np.random.default_rng(1)
    lv = 3.6 * np.arange(20)[:, None] + rng.normal(0, 0.3, (20, 3))
    a, b = TrendFrame(P), TrendFrame(P)
    feed(a, lv[:10])
    b.load_state_dict(a.state_dict(), 3)
    ca, cb = feed(a, lv[10:], 110), feed(b, lv[10:], 110)
    assert all(np.array_equal(x, y) for x, y in zip(ca, cb, strict=True))
    assert np.array_equal(a.frame(130, 3), b.frame(130, 3))
    old = TrendFrame(P)
    old.load_state_dict({}, 3)           # a checkpoint from before: no drift known
    assert np.all(old.drift == 0) and np.all(old.frame(7, 3) == 0)
