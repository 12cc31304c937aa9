"""Online adaptation: recovery after a level shift, rollback, boosts, replay, penalties."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from connectors.recordings import Recording
from models.backbone import STBackbone, STBackboneConfig
from replay.backtest import backtest
from streaming.config import AdaptConfig, ConfigError, StreamConfig
from streaming.forecast.adaptation import Anchor, Booster, select_parameters
from streaming.forecast.online import OnlineModel
from streaming.forecast.reservoir import ReservoirBuffer
from streaming.pipeline.core import StreamCore

INTERVAL = 300_000
P, K, H = 12, 8, 12


def _cfg(**adapt: object) -> StreamConfig:
    return StreamConfig.from_dict({
        "patching": {"interval_ms": INTERVAL, "patch_len": P, "lateness_ms": 0},
        "model": {"context_patches": K, "horizon": H, "lr": 3e-3, "seed": 0},
        "drift": {"warmup_readings": 24 * P},
        "adapt": {"replay_k": 1, **adapt}})


def _backbone_model(cfg: StreamConfig, sensors: list[str]) -> OnlineModel:
    torch.manual_seed(0)
    net = STBackbone(STBackboneConfig(patch_len=P, context_patches=K, horizon=H, d_model=16,
                                      n_heads=2, n_layers=1, steps_per_day=24,
                                      num_nodes=len(sensors), lap_pe_dim=0, graph=False))
    meta = {"extra": {"sensors": sensors}}
    return OnlineModel(net, cfg.model, name="test", meta=meta, adapt=cfg.adapt)


def _level_shift_recording(days: int = 12, shift_day: int = 8, n: int = 4,
                           seed: int = 0) -> tuple[Recording, int]:
    """Daily cycles plus noise; every sensor's level jumps by 4 std at ``shift_day``."""
    rng = np.random.default_rng(seed)
    per_day = 86_400_000 // INTERVAL
    t = np.arange(days * per_day)
    phase = rng.uniform(0, 2 * np.pi, n)
    vals = (np.sin(2 * np.pi * t[:, None] / per_day + phase) * 2.0
            + 0.6 * np.sin(4 * np.pi * t[:, None] / per_day + 2 * phase)
            + rng.normal(0, 0.15, (len(t), n)))
    onset = shift_day * per_day
    vals[onset:] += 4.0 * vals[:onset].std(axis=0)
    ts = 1_700_000_000_000 // INTERVAL * INTERVAL + t * INTERVAL
    rec = Recording(timestamps=ts.astype(np.int64), sensors=[f"s{i}" for i in range(n)],
                    values=vals, interval_ms=INTERVAL)
    return rec, onset


@pytest.mark.heavy
def test_error_after_level_shift_recovers_faster_with_adaptation() -> None:
    rec, onset = _level_shift_recording()
    cfg = _cfg(contrastive_weight=0.1)
    core = StreamCore(cfg, _backbone_model(cfg, list(rec.sensors)), sensors=list(rec.sensors))
    backtest(rec, core, end_row=onset, progress=False, flush=False)  # both learn the regime
    frozen = copy.deepcopy(core)
    frozen.model.cfg.learn = False
    after = (onset, rec.n_steps)
    res_a = backtest(rec, core, start_row=after[0], end_row=after[1], progress=False)
    res_f = backtest(rec, frozen, start_row=after[0], end_row=after[1], progress=False)
    np.testing.assert_array_equal(res_a.steps, res_f.steps)
    # the model's own forecasts (the served mix also has persistence, which a level shift
    # does not hurt for long)
    seen = ~np.isnan(res_a.truth).all(axis=(1, 2))      # not the flushed last step's
    err_a = np.nanmean((res_a.experts["model"] - res_a.truth)[seen] ** 2, axis=(1, 2))
    err_f = np.nanmean((res_f.experts["model"] - res_f.truth)[seen] ** 2, axis=(1, 2))
    # after the first day past the shift the adapting model is clearly ahead (0.72x here;
    # the calibrated drift monitor confirms the shift one step after it, which starts the
    # learning-rate boost one step later than an uncalibrated one did: 0.66x)
    day = 86_400_000 // INTERVAL // P
    late_a, late_f = np.nanmean(err_a[day:]), np.nanmean(err_f[day:])
    assert late_a < 0.75 * late_f, (late_a, late_f)
    assert np.nanmean(err_a) < np.nanmean(err_f)
    assert core.model.n_updates > frozen.model.n_updates
    assert res_a.versions[-1] != res_a.versions[0]      # model_version moves as it adapts
    assert len(set(res_f.versions)) == 1


def test_nan_loss_rolls_back_and_raises_data_quality_alert() -> None:
    rec, onset = _level_shift_recording(days=4, shift_day=3)
    cfg = _cfg(snapshot_every=5, contrastive_weight=0.0)
    model = _backbone_model(cfg, list(rec.sensors))
    core = StreamCore(cfg, model, sensors=list(rec.sensors))
    backtest(rec, core, end_row=onset, progress=False)
    assert model.n_updates > 10
    snap = {n: t.clone() for n, t in model.guard.snapshot["params"].items()}
    poison = {"on": True}

    def hook(_mod: torch.nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        return out * math.nan if poison["on"] and model.model.training else out

    handle = model.model.forecast_head.register_forward_hook(hook)
    res = backtest(rec, core, start_row=onset, end_row=onset + 3 * P, progress=False)
    handle.remove()
    dq = [a for a in res.alerts if a["kind"] == "model"]
    assert len(dq) == 1, "a NaN loss raises one model alert for the region"
    assert "non-finite loss" in dq[0]["detail"]["reason"]
    assert dq[0]["id"].startswith("model:") and dq[0]["sensors"] == []
    assert dq[0]["detail"]["batch_sensors"] > 0
    assert not [a for a in res.alerts if a["kind"] == "data-quality"]
    for n, p in model.params.items():
        assert torch.equal(p.detach(), snap[n]), f"{n} not restored"
        assert torch.isfinite(p).all()
    assert model.guard.rollbacks >= 1
    assert np.isfinite(res.yhat).all(), "forecasts stay finite after the rollback"
    # and it keeps learning once the input is sane again
    before = model.n_updates
    backtest(rec, core, start_row=onset + 3 * P, end_row=onset + 8 * P, progress=False)
    assert model.n_updates > before


def _warmed_up_pair() -> tuple[OnlineModel, np.random.Generator, dict, list[float]]:
    """A two-sensor model after 25 ordinary updates on one window: the model, the generator,
    the window's inputs (``x``, ``mask``, ``side``, ``steps``) and the updates' losses."""
    cfg = _cfg(snapshot_every=1, replay_size=0)
    model = _backbone_model(cfg, ["a", "b"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, K, P)).astype(np.float32)
    win = {"x": x, "mask": np.ones_like(x, bool), "side": np.zeros((2, K, 1), np.float32),
           "steps": np.arange(K)}
    losses = [model.learn_many(win["x"], win["mask"], win["side"],
                               rng.normal(size=(2, H)).astype(np.float32),
                               np.ones((2, H), bool), steps=win["steps"], sensors=["a", "b"],
                               step=1) for _ in range(25)]
    return model, rng, win, losses


def test_exploding_loss_is_rolled_back() -> None:
    model, _, w, losses = _warmed_up_pair()
    assert all(math.isfinite(v) for v in losses)
    before = {n: p.detach().clone() for n, p in model.params.items()}
    out = model.learn_many(w["x"], w["mask"], w["side"], np.full((2, H), 45.0, np.float32),
                           np.ones((2, H), bool), steps=w["steps"], sensors=["a", "b"], step=2)
    assert math.isnan(out)
    alerts = model.drain_alerts()
    assert alerts and "exploding loss" in alerts[0]["detail"]["reason"]
    for n, p in model.params.items():
        assert torch.equal(p.detach(), before[n])


def test_targets_far_beyond_their_sensors_scale_are_left_out_of_the_loss() -> None:
    """A sensor whose statistics come from a flat start sees its first real values at 10^5
    of its scale: those targets are not learned from (``TARGET_CAP``), the others are, and
    nothing is rolled back."""
    from streaming.forecast.online import TARGET_CAP

    model, rng, w, _ = _warmed_up_pair()
    y = rng.normal(size=(2, H)).astype(np.float32)
    y[1] = 2.5e5                                      # b: a flat start's first real value
    item = {**w, "y": y, "y_mask": np.ones((2, H), bool), "sensors": ["a", "b"]}
    only_a = {**item, "y_mask": np.array([[True] * H, [False] * H])}
    with torch.no_grad():
        assert float(model._losses([item])[0]) == pytest.approx(
            float(model._losses([only_a])[0]))
    out = model.learn_many(w["x"], w["mask"], w["side"], y, np.ones((2, H), bool),
                           steps=w["steps"], sensors=["a", "b"], step=2)
    assert math.isfinite(out) and not model.drain_alerts()
    assert 2.5e5 > TARGET_CAP


def test_parameter_groups_and_adapter_keeps_outputs() -> None:
    net = STBackbone(STBackboneConfig(patch_len=P, context_patches=K, horizon=H, d_model=16,
                                      n_heads=2, n_layers=1, num_nodes=0, lap_pe_dim=0,
                                      graph=False))
    torch.nn.init.normal_(net.forecast_head.weight)
    x = torch.randn(1, 3, K, P)
    m = torch.ones_like(x, dtype=torch.bool)
    st = torch.arange(K)[None]
    before = net(x, m, st)
    chosen = select_parameters(net, AdaptConfig(params="adapters+norms+heads"))
    assert torch.allclose(net(x, m, st), before, atol=1e-5), "a new adapter changed outputs"
    assert any(n.startswith("adapter.") for n in chosen)
    assert all(n.startswith(("adapter.", "forecast_head.", "projection_head."))
               or "norm" in n for n in chosen)
    assert not net.embed.proj.weight.requires_grad
    only_heads = select_parameters(copy.deepcopy(net), AdaptConfig(params="heads"))
    assert set(only_heads) == {n for n in chosen if "head" in n}
    with pytest.raises(ConfigError, match="adapt.params"):
        AdaptConfig(params="heads+everything").validate()


def test_penalties_pull_toward_reference() -> None:
    lin = torch.nn.Linear(3, 2)
    params = dict(lin.named_parameters())
    for kind in ("l2sp", "ewc"):
        anchor = Anchor(params, AdaptConfig(penalty=kind, penalty_weight=1.0))
        assert float(anchor.penalty(params).detach()) == 0.0
        with torch.no_grad():
            lin.weight.add_(1.0)
        lin.weight.grad = torch.ones_like(lin.weight)
        anchor.observe_grads(params)
        assert float(anchor.penalty(params).detach()) > 0.0
        with torch.no_grad():
            lin.weight.sub_(1.0)
    assert Anchor(params, AdaptConfig(penalty="none")).penalty(params) is None


def test_booster_decays_back_to_one() -> None:
    b = Booster(AdaptConfig(boost_lr=3.0, boost_steps=10))
    b.boost(["a"], step=100)
    f = [b.factors(["a", "b"], s) for s in (100, 105, 110, 120)]
    assert f[0] == [3.0, 1.0] and f[1] == [2.0, 1.0] and f[2] == [1.0, 1.0] and f[3] == [1.0, 1.0]


@pytest.mark.heavy
def test_drift_alert_boosts_updates() -> None:
    rec, onset = _level_shift_recording(days=10, shift_day=8)
    runs = {}
    for boost in (1.0, 3.0):
        cfg = _cfg(boost_lr=boost, boost_updates=1, contrastive_weight=0.0)
        model = _backbone_model(cfg, list(rec.sensors))
        core = StreamCore(cfg, model, sensors=list(rec.sensors))
        res = backtest(rec, core, progress=False)
        drift = [a for a in res.alerts if a["kind"] == "drift"]
        runs[boost] = (model.n_updates, len(drift), model.n_steps)
    assert runs[3.0][1] > 0, "the level shift must raise a drift alert"
    # the same realized windows, but a drift alert adds update passes for a while
    assert runs[3.0][0] == runs[1.0][0]
    assert runs[1.0][2] == runs[1.0][0]
    assert runs[3.0][2] > runs[3.0][0]


def test_reservoir_is_uniform_and_round_trips() -> None:
    buf = ReservoirBuffer(50, seed=1)
    for i in range(5000):
        buf.add({"i": i})
    kept = np.array([it["i"] for it in buf.items])
    assert len(kept) == 50 and buf.seen == 5000
    assert 1500 < kept.mean() < 3500                   # not just the first or the last ones
    state = buf.state_dict()
    other = ReservoirBuffer(0)
    other.load_state_dict(copy.deepcopy(state))
    assert [it["i"] for it in other.sample(5)] == [it["i"] for it in buf.sample(5)]


def test_online_model_state_round_trip_gives_identical_future() -> None:
    rec, onset = _level_shift_recording(days=3, shift_day=2)
    cfg = _cfg(contrastive_weight=0.1, penalty="ewc")
    sensors = list(rec.sensors)
    a = StreamCore(cfg, _backbone_model(cfg, sensors), sensors=sensors)
    backtest(rec, a, end_row=onset, progress=False)
    b = StreamCore(cfg, _backbone_model(cfg, sensors), sensors=sensors)
    backtest(rec, b, end_row=onset, progress=False)       # same input → same state
    state = copy.deepcopy(a.model.state_dict())
    fresh = _backbone_model(cfg, sensors)
    fresh.load_state_dict(state)
    b.model = fresh
    ra = backtest(rec, a, start_row=onset, progress=False)
    rb = backtest(rec, b, start_row=onset, progress=False)
    np.testing.assert_allclose(ra.yhat, rb.yhat, atol=1e-6)
    assert ra.versions == rb.versions


def test_adapt_config_errors_name_the_key() -> None:
    for bad, key in (({"penalty": "l3"}, "adapt.penalty"), ({"boost_lr": 0.5}, "adapt.boost_lr"),
                     ({"replay_k": -1}, "adapt.replay_k"),
                     ({"normalization": "x"}, "adapt.normalization")):
        with pytest.raises(ConfigError, match=key):
            StreamConfig.from_dict({"adapt": bad})
    with pytest.raises(ConfigError, match="adapt.nope"):
        StreamConfig.from_dict({"adapt": {"nope": 1}})


def test_contrastive_updates_sample_learn_batch_sensors_like_supervised_ones() -> None:
    """At scale the contrastive step is as cheap as the supervised one: a seeded sample of
    ``model.learn_batch`` sensors (issue 17: over all 10,000 sensors it cost 3 s per step)."""
    import numpy as np

    from connectors.recordings import Recording
    from replay.backtest import backtest
    from streaming.config import StreamConfig
    from streaming.pipeline.core import StreamCore
    from streaming.pipeline.factory import build_model, resolve_checkpoint

    iv, n = 300_000, 24
    cfg = StreamConfig.from_dict({"model": {"learn_batch": 8}})
    model = build_model(cfg, resolve_checkpoint(cfg, None, False))   # the packaged backbone
    assert model.can_contrast
    seen: list[tuple[str, int]] = []
    for name in ("learn_many", "contrast_many"):
        real = getattr(model, name)

        def spy(x, *a, _real=real, _name=name, **k):
            seen.append((_name, len(x)))
            return _real(x, *a, **k)
        setattr(model, name, spy)
    t = np.arange(600)
    rec = Recording(timestamps=1_767_225_600_000 + t * iv, sensors=[f"s{i}" for i in range(n)],
                    values=10 + np.sin(2 * np.pi * t / 288)[:, None] * np.arange(1, n + 1),
                    interval_ms=iv)
    backtest(rec, StreamCore(cfg, model, sensors=list(rec.sensors)), progress=False)
    sizes = {name: [k for nm, k in seen if nm == name] for name in ("learn_many",
                                                                    "contrast_many")}
    assert sizes["learn_many"] and set(sizes["learn_many"]) == {8}, sizes
    assert sizes["contrast_many"] and set(sizes["contrast_many"]) == {8}, sizes


def test_a_per_sensor_model_forecasts_the_same_in_chunks(monkeypatch) -> None:
    """Large networks go through the forward pass ``FORWARD_CHUNK`` sensors at a time."""
    import numpy as np

    import streaming.forecast.online as online
    from streaming.config import StreamConfig
    from streaming.pipeline.factory import build_model, resolve_checkpoint

    cfg = StreamConfig()
    model = build_model(cfg, resolve_checkpoint(cfg, None, False))
    rng = np.random.default_rng(0)
    n, k, p = 11, cfg.model.context_patches, cfg.patching.patch_len
    x = rng.normal(size=(n, k, p)).astype(np.float32)
    mask = rng.random((n, k, p)) > 0.1
    side = np.zeros((n, k, 1), np.float32)
    steps, sensors = np.arange(100, 100 + k), [f"s{i}" for i in range(n)]
    whole = model.predict_with_embedding(x, mask, side, steps=steps, sensors=sensors)
    q_whole = model.last_quantiles
    monkeypatch.setattr(online, "FORWARD_CHUNK", 4)
    parts = model.predict_with_embedding(x, mask, side, steps=steps, sensors=sensors)
    np.testing.assert_allclose(parts[0], whole[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts[1], whole[1], rtol=1e-5, atol=1e-6)
    assert q_whole is not None
    np.testing.assert_allclose(model.last_quantiles, q_whole, rtol=1e-5, atol=1e-6)
