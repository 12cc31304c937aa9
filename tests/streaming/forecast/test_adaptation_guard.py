"""The adaptation guard (issue 32, "adaptation that never hurts"): the adapting model against
its frozen start over windows of realized forecasts, rollbacks with a halved learning rate,
per-sensor switches to the frozen forecast, and its state."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from connectors.recordings import Recording
from replay.backtest import backtest
from replay.simulator import SimConfig, simulate
from streaming.config import AdaptConfig, ConfigError, StreamConfig
from streaming.forecast.adaptation import AdaptationGuard
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.checkpoint import decode_state, encode_state
from streaming.runtime.microbatch import apply_torch_threads

IV = 300_000


def _guard(window: int = 4, tolerance: float = 0.05, **kw: object) -> AdaptationGuard:
    return AdaptationGuard(AdaptConfig(guard_window=window, guard_tolerance=tolerance, **kw),
                           {"w": "start"})


# --- the weights ---------------------------------------------------------------------------

def test_the_guard_restores_the_last_good_weights_and_halves_the_rate() -> None:
    g = _guard()
    for _ in range(4):
        assert g.observe(1.0, 1.0, updates=1) is None    # as good as the reference
    g.remember(lambda: {"w": "good"}, updates=4)
    assert g.good == {"w": "good"}
    back = None
    for _ in range(4):
        back = back or g.observe(2.0, 1.0, updates=9)    # then much worse
    assert back == {"w": "good"} and g.restores == 1 and g.rejected == 5
    assert g.lr_scale == 0.5
    for _ in range(4):                                   # better again: the rate recovers
        assert g.observe(0.9, 1.0, updates=12) is None
    g.remember(lambda: {"w": "better"}, updates=12)
    assert g.good == {"w": "better"} and g.lr_scale == 1.0


def test_a_window_judged_neither_good_nor_harmful_changes_nothing() -> None:
    g = _guard()
    for _ in range(4):
        assert g.observe(1.04, 1.0, updates=1) is None   # 4 % worse: within the tolerance
    g.remember(lambda: {"w": "later"}, updates=4)
    assert g.good == {"w": "start"} and g.lr_scale == 1.0 and g.restores == 0


def test_a_small_persistent_harm_is_caught_over_several_windows() -> None:
    """3 % worse, below the 5 % tolerance of one window: the stretch since the last good
    weights is judged against 5 % / sqrt(k), which it exceeds at its third window."""
    g = _guard(window=10)
    rng = np.random.default_rng(0)
    for t in range(200):
        ref = 1.0 + 0.01 * rng.normal()
        if g.observe(1.03 * ref, ref, updates=t) is not None:
            break
    assert g.restores == 1 and t == 29                   # at the third window
    assert g.good == {"w": "start"}


def test_a_window_a_little_worse_among_good_ones_is_not_acted_on() -> None:
    g = _guard(window=10)
    for t in range(100):
        worse = 30 <= t < 40                             # one window 4 % worse
        assert g.observe(1.04 if worse else 0.97, 1.0, updates=t) is None
        g.remember(lambda: {"w": "ok"}, updates=t)
    assert g.restores == 0 and g.lr_scale == 1.0


def test_forecasts_still_in_flight_from_rejected_weights_are_not_judged() -> None:
    g = _guard()
    for s in range(4):
        g.observe(2.0, 1.0, updates=s, made_at=s, now=s + 2)
    assert g.restores == 1 and g.valid_from == 5
    for s in (4, 4, 4, 4, 4):                            # made before the restore
        assert g.observe(5.0, 1.0, updates=9, made_at=s, now=6) is None
    assert g.seen == 0


def test_ten_restores_in_a_row_all_but_stop_adaptation() -> None:
    g = _guard(window=2)
    for t in range(40):
        g.observe(2.0, 1.0, updates=t)
    assert g.restores == 20 and g.lr_scale == 1 / 1024


# --- each sensor ---------------------------------------------------------------------------

def test_a_sensor_served_worse_is_switched_to_the_reference_and_back() -> None:
    g = _guard(window=8)
    assert not g.switched(3).any()
    for _ in range(8):   # sensor 0: adapted 20 % worse; 1: 20 % better; 2: 3 % worse
        g.observe_sensors(np.array([1.2, 0.8, 1.03]), np.ones(3))
    assert g.switched(3).tolist() == [True, False, False] and g.switches == 1
    for _ in range(3):                                   # not yet clearly better
        g.observe_sensors(np.array([0.8, 0.8, 1.0]), np.ones(3))
    assert g.switched(3)[0]
    for _ in range(8):
        g.observe_sensors(np.array([0.8, 0.8, 1.0]), np.ones(3))
    assert not g.switched(3).any()


def test_without_guard_sensors_nothing_is_switched() -> None:
    g = _guard(window=8, guard_sensors=False)
    for _ in range(20):
        g.observe_sensors(np.array([2.0]), np.ones(1))
    assert not g.switched(1).any()


def test_guard_tolerance_must_be_below_one() -> None:
    with pytest.raises(ConfigError, match="adapt.guard_tolerance"):
        StreamConfig.from_dict({"adapt": {"guard_tolerance": 1.0}})


# --- state ---------------------------------------------------------------------------------

def test_the_guard_state_round_trips() -> None:
    a = _guard(window=5)
    rng = np.random.default_rng(1)
    for t in range(23):
        a.observe(1.0 + rng.normal(0, 0.1), 1.0, updates=t, made_at=t, now=t + 1)
        a.remember(lambda t=t: {"w": t}, updates=t)
        a.observe_sensors(rng.uniform(0.5, 1.5, 4), np.ones(4))
    a.hold(23, np.ones((4, 2)))
    b = _guard(window=5)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.state_dict().keys() == a.state_dict().keys()
    for t in range(23, 60):
        x, s = 1.0 + rng.normal(0, 0.1), rng.uniform(0.5, 1.5, 4)
        assert a.observe(x, 1.0, updates=t, made_at=t, now=t + 1) == \
            b.observe(x, 1.0, updates=t, made_at=t, now=t + 1)
        a.observe_sensors(s, np.ones(4))
        b.observe_sensors(s, np.ones(4))
        np.testing.assert_array_equal(a.switched(4), b.switched(4))
    assert (a.restores, a.lr_scale, a.switches) == (b.restores, b.lr_scale, b.switches)
    np.testing.assert_array_equal(b.take(23), np.ones((4, 2)))


def test_an_earlier_versions_guard_state_loads() -> None:
    """A checkpoint from before the windows and the per-sensor switch: its last good point
    and counts stay, its comparison starts over."""
    old = {"good": {"w": "old"}, "good_updates": 7, "diff": 0.1, "ref": 1.0, "seen": 30,
           "restores": 2, "rejected": 11, "lr_scale": 0.25}
    g = _guard()
    g.load_state_dict(old)
    assert (g.good, g.good_updates, g.restores, g.rejected, g.lr_scale) == (
        {"w": "old"}, 7, 2, 11, 0.25)
    assert g.seen == 0 and not g.switched(3).any()
    for _ in range(4):
        g.observe(1.0, 1.0, updates=8)
    g.remember(lambda: {"w": "new"}, updates=8)
    assert g.good == {"w": "new"} and g.lr_scale == 0.5


# --- on streams ----------------------------------------------------------------------------

def _run(rec: object, lr: float, guard: bool, learn_hook: object = None
         ) -> tuple[StreamCore, object]:
    cfg = StreamConfig.from_dict({
        "patching": {"patch_len": 4},
        "model": {"lr": lr, "learn_batch": 0, "torch_threads": 1},
        "adapt": {"guard": guard, "guard_window": 24}})
    apply_torch_threads(cfg)                # as the CLI does: results depend on it
    model = OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt)
    if learn_hook is not None:
        learn_hook(model)
    core = StreamCore(cfg, model, sensors=list(rec.sensors))
    return core, backtest(rec, core, progress=False)


def _window_mae(res: object, expert: str, last: int) -> float:
    return float(np.nanmean(np.abs(res.experts[expert][-last:] - res.truth[-last:])))


def _shuffled_targets(model: OnlineModel) -> None:
    """Every update learns from another sensor's truth, flipped: adaptation can only hurt."""
    learn = model.learn_many
    rng = np.random.default_rng(0)

    def shuffled(x, mask, side, y, y_mask, **kw):                 # noqa: ANN001, ANN003
        return learn(x, mask, side, -3.0 * y[rng.permutation(len(y))], y_mask, **kw)

    model.learn_many = shuffled  # type: ignore[method-assign]


@pytest.mark.heavy
@pytest.mark.parametrize("harm", ["learning rate", "shuffled targets"])
def test_adaptation_that_hurts_is_rolled_back_to_no_worse_than_frozen(harm: str) -> None:
    """Updates that hurt (a learning rate 1000x too high, or targets of other sensors): the
    guard rolls back and cuts the rate, and over its last window the adapting model's error
    is no worse than the frozen start's by more than the tolerance; unguarded, it is."""
    rec = simulate(SimConfig(n_sensors=6, n_days=3, seed=4, n_events=0, drifts=[]))[0]
    lr, hook = (1.0, None) if harm == "learning rate" else (3e-2, _shuffled_targets)
    guarded, res_g = _run(rec, lr, True, hook)
    reckless, res_r = _run(rec, lr, False, hook)
    g = guarded.forecaster.guard
    assert g.restores > 0 and g.rejected > 0 and g.lr_scale < 1
    w = 24
    # the unguarded adapting model really is worse than its frozen start
    assert _window_mae(res_r, "model", w) > 1.2 * _window_mae(res_r, "frozen", w)
    # the guarded one is not (its 'model' forecasts: the adapted ones, or the frozen
    # start's for a switched sensor)
    assert _window_mae(res_g, "model", w) <= 1.05 * _window_mae(res_g, "frozen", w)
    assert guarded.forecaster.expert_mae("model") < reckless.forecaster.expert_mae("model")


def _daily_cycles(days: int, n: int = 6, seed: int = 0) -> Recording:
    """Two daily harmonics per sensor plus a little noise: a fresh model (persistence)
    learns to forecast the cycle."""
    rng = np.random.default_rng(seed)
    per_day = 86_400_000 // IV
    t = np.arange(days * per_day)
    phase = rng.uniform(0, 2 * np.pi, n)
    vals = (2.0 * np.sin(2 * np.pi * t[:, None] / per_day + phase)
            + 0.6 * np.sin(4 * np.pi * t[:, None] / per_day + 2 * phase)
            + rng.normal(0, 0.15, (len(t), n)))
    ts = 1_700_000_000_000 // IV * IV + t * IV
    return Recording(timestamps=ts.astype(np.int64), sensors=[f"s{i}" for i in range(n)],
                     values=vals, interval_ms=IV)


def test_adaptation_that_helps_is_left_alone() -> None:
    """A fresh model learns daily cycles: it ends well ahead of its frozen start and the
    guard never acts (no rollback, no sensor switched, the full learning rate)."""
    rec = _daily_cycles(days=4)
    cfg = StreamConfig.from_dict({"patching": {"patch_len": 12, "interval_ms": IV},
                                  "model": {"learn_batch": 0, "torch_threads": 1},
                                  "adapt": {"guard_window": 24}})
    apply_torch_threads(cfg)
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=list(rec.sensors))
    backtest(rec, core, progress=False)
    g = core.forecaster.guard
    assert g.restores == 0 and g.switches == 0 and g.lr_scale == 1.0
    assert core.forecaster.expert_mae("model") < 0.85 * core.forecaster.expert_mae("frozen")


def test_a_switched_sensor_is_served_the_frozen_forecast_and_still_judged() -> None:
    rec = simulate(SimConfig(n_sensors=4, n_days=1, seed=2, n_events=0, drifts=[]))[0]
    cfg = StreamConfig.from_dict({"patching": {"patch_len": 4},
                                  "model": {"learn_batch": 0, "torch_threads": 1},
                                  "adapt": {"guard_window": 10_000,
                                            "guard_tolerance": 0.99}})   # acts on its own never
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=list(rec.sensors))
    g = core.forecaster.guard
    g.switched(4)
    g.switch[1] = True
    res = backtest(rec, core, progress=False)
    model, frozen = res.experts["model"], res.experts["frozen"]
    np.testing.assert_array_equal(model[:, 1], frozen[:, 1])
    assert not np.allclose(model[:, 0], frozen[:, 0], equal_nan=True)
    # the held adapted forecasts of sensor 1 were judged: its running errors differ
    assert g.count[1] > 0 and g.err[1, 0] != g.err[1, 1]
    assert len(g.held) <= 3      # those in flight: a horizon of 12 is 3 steps of 4


def test_a_core_with_a_switched_sensor_resumes_from_a_checkpoint() -> None:
    """The guard's state (windows, switches, the held adapted forecasts in flight) goes
    through the worker's checkpoint format: the resumed core forecasts exactly as the one
    that kept running."""
    rec = _daily_cycles(days=2, n=4)
    cfg = StreamConfig.from_dict({"patching": {"patch_len": 12, "interval_ms": IV},
                                  "model": {"learn_batch": 0, "torch_threads": 1,
                                            "horizon": 24},
                                  "adapt": {"guard_window": 6}})

    def make() -> StreamCore:
        return StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                          sensors=list(rec.sensors))

    live = make()
    g = live.forecaster.guard
    g.switched(4)
    g.switch[2] = True
    cut = 300
    backtest(rec, live, end_row=cut, progress=False, flush=False)
    assert g.held and g.count[2] > 0
    buf = io.BytesIO()
    torch.save(encode_state(live.state_dict()), buf)
    buf.seek(0)
    resumed = make()
    resumed.load_state_dict(decode_state(torch.load(buf, weights_only=True)))
    a = backtest(rec, live, start_row=cut, progress=False)
    b = backtest(rec, resumed, start_row=cut, progress=False)
    np.testing.assert_array_equal(a.experts["model"], b.experts["model"])
    np.testing.assert_array_equal(a.yhat, b.yhat)
    ga, gb = live.forecaster.guard, resumed.forecaster.guard
    assert (ga.restores, ga.switches, ga.lr_scale) == (gb.restores, gb.switches, gb.lr_scale)
    np.testing.assert_array_equal(ga.switched(4), gb.switched(4))
