"""The served forecast (issue 13): baselines, experts weighted online, a model that corrects
persistence, the adaptation guard and bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from connectors.schemas import ReadingBatch
from models.backbone import STBackbone, STBackboneConfig
from models.patch_transformer import PatchTransformer, PatchTransformerConfig
from models.shape import last_observed
from replay.backtest import backtest
from replay.simulator import SimConfig, simulate
from streaming.config import StreamConfig
from streaming.forecast.baselines import Baselines
from streaming.forecast.experts import ExpertWeights, Hedge
from streaming.forecast.online import OnlineModel
from streaming.ingest.patching import ClosedStep
from streaming.pipeline.core import StreamCore
from streaming.runtime.microbatch import apply_torch_threads

IV = 300_000


def _stream(ratios: tuple, t: int, n: int = 4, h: int = 2, seed: int = 0, sd: float = 0.05):
    """Forecasts of experts around a truth of 0: expert e errs by ``ratios[e]`` times a common
    error of ``sd`` scale units (as forecasters of one series err together), plus a little
    noise of its own. ``sd = 0.05``: the small errors of a first horizon point."""
    rng = np.random.default_rng(seed)
    for _ in range(t):
        z = rng.normal(0, sd, (n, h))
        f = np.stack([r * z + rng.normal(0, 0.1 * sd, (n, h)) for r in ratios], axis=2)
        yield f, np.zeros((n, h))


def _run(w: ExpertWeights, stream) -> tuple[float, np.ndarray]:
    """The served forecast's and every expert's summed MAE over ``stream``."""
    served_loss, expert_loss = 0.0, 0.0
    for f, y in stream:
        served, _ = w.combine(f)
        served_loss += float(np.mean(np.abs(served - y)))
        expert_loss += np.mean(np.abs(f - y[..., None]), axis=(0, 1))
        w.update(f, y, np.ones(f.shape[0]))
    return served_loss, expert_loss


def _weights(**kw) -> ExpertWeights:
    s = StreamConfig().serve                   # the served defaults, unless overridden
    args = {"eta": s.eta, "share": s.share, "loss_clip": s.loss_clip, "combine": s.combine,
            "loss": s.loss, **kw}
    return ExpertWeights(["a", "b", "c"], 2, **args)


CLOSE = (1.0, 1.05, 1.9)        # b 5 % worse than a, c like seasonal naive at h = 1


def test_weights_separate_experts_5_percent_apart() -> None:
    """Issue 32: with errors of 0.05 scale units the clipped loss of two experts 5 % apart
    differs by ~1e-4 per update; the rate tuned to that spread still separates them, and the
    mix ends as good as the best expert, where a fixed rate of 4 with a share of 0.01 never
    separates them and keeps averaging in the expert 1.9x worse (its exponential weights'
    mix, without the network's candidates that ``auto`` adds)."""
    w = _weights()
    served, experts = _run(w, _stream(CLOSE, 500))
    assert np.all(w.w[..., 0] > 0.9)                   # every sensor and horizon point
    assert served < 1.01 * experts.min()
    assert np.all(w.hedge.w[..., 0] > 0.9) and np.all(w.convex.w[..., 0] > 0.8)
    assert np.all(np.isfinite(w.hedge.rate())) and np.all(w.hedge.rate() > 50)   # not ~4
    old = _weights(eta=4.0, share=0.01, loss="squared", combine="mix")
    served_old, _ = _run(old, _stream(CLOSE, 500))
    assert np.all(old.w[..., 0] < 0.5) and served_old > 1.1 * experts.min()
    # a fixed rate is still there: the same stream's loss ten times larger separates as fast
    # with a tuned rate as the small one did (the rule is scale-free)
    big = _weights()
    _run(big, _stream(CLOSE, 500, sd=0.5))
    np.testing.assert_allclose(big.w, w.w, atol=0.1)


def test_the_network_weights_separate_what_a_sensor_alone_cannot() -> None:
    """Issue 32, h = 1 on a random walk: experts 2 % apart whose errors are mostly common
    noise. After 300 steps some sensors' own weights still favour a worse expert (about 0.2 on
    the best); the network's (the loss averaged over 32 sensors) are 0.99 on it, and the
    served forecast, which may pick the network's mix or its leader, beats the per-sensor
    mixes alone (``combine = "mix"``: 1.0055x the best expert against 1.0025x)."""
    ratios = (1.0, 1.02, 1.02, 1.9)
    w, mix = _weights(), _weights(combine="mix")
    w.names = mix.names = ["a", "b", "c", "d"]
    for x in (w, mix):
        x.hedge, x.convex, x.pick, x.pool = x._learners()
    served, experts = _run(w, _stream(ratios, 300, n=32, seed=3, sd=0.05))
    served_mix, _ = _run(mix, _stream(ratios, 300, n=32, seed=3, sd=0.05))
    assert np.argmax(w.pool.wk[:, 0], axis=0).tolist() == [0, 0]     # a leads the network
    assert w.pool.wk[0, 0].min() > 0.98 and w.hedge.wk[0].min() < 0.5   # sooner than alone
    assert served < served_mix
    assert served < 1.005 * experts.min()


def test_the_network_weights_learn_from_the_pooled_sensors_only() -> None:
    """A halo region pools its own sensors' losses, not its ghosts': the sensor left out of
    ``pooled`` does not move the network's weights; ``network = False`` keeps the two
    per-sensor mixes only (the pick of earlier versions)."""
    rng = np.random.default_rng(0)
    lead = {}
    for keep in ([True, False], [False, True]):
        w = _weights()
        for _ in range(200):
            z = rng.normal(0, 0.05, (2, 2))
            f = np.stack([z, 2 * z, 3 * z], axis=2)
            f[1] = f[1][:, ::-1]                  # sensor 1: c is the best, a the worst
            w.update(f, np.zeros((2, 2)), np.ones(2), np.array(keep))
        lead[keep[0]] = np.argmax(w.pool.wk[:, 0], axis=0).tolist()
    assert lead == {True: [0, 0], False: [2, 2]}
    local = _weights(network=False)
    assert local.pick.k == 2
    _run(local, _stream(CLOSE, 50))
    assert not local.pool.gap.any()               # never learns


def test_weights_recover_after_the_best_expert_changes() -> None:
    """After 500 updates with a the best, b becomes 5 % better than a: the share at the
    current rate hands the weight to b within a few hundred updates; without a share the
    old standing holds it back (about as long as a led)."""
    w = _weights()
    stuck = _weights(share=0.0, combine="mix")        # the experts' own losses only
    changed = (1.05, 1.0, 1.9)
    for x in (w, stuck):
        _run(x, _stream(CLOSE, 500))
        _run(x, _stream(changed, 300, seed=1))
    assert w.w[..., 1].mean() > 0.9 and stuck.w[..., 1].mean() < 0.1
    served, experts = _run(w, _stream(changed, 100, seed=2))
    assert np.all(w.w[..., 1] > 0.9)
    assert served < 1.01 * experts.min()


def test_the_weighted_loss_stays_within_the_adahedge_bound() -> None:
    """Without a share the learner is AdaHedge: its weighted loss ``sum h_t`` exceeds the
    best arm's by at most ``2 Delta_T`` (its cumulative mixability gap), also where the best
    arm keeps changing and where the losses are linearized ones in [-1, 1]."""
    rng = np.random.default_rng(3)
    for lo in (0.0, -1.0):
        hd = Hedge(3, 2, eta=0.0, share=0.0)
        hd.grow(4)
        hedge, cum = np.zeros((4, 2)), np.zeros((3, 4, 2))
        for k in range(400):
            power = 1.0 + (np.arange(3) == (k // 50) % 3)          # the best arm changes
            loss = lo + (1 - lo) * rng.random((3, 4, 2)) ** power[:, None, None]
            hedge += (hd.wk * loss).sum(axis=0)                    # arm-first [K, N, H]
            cum += loss
            hd.learn(loss, np.ones((4, 2), bool))
        regret = hedge - cum.min(axis=0)
        assert np.all(regret <= 2 * hd.gap + 1e-9)
        assert np.all(hd.gap > 0) and np.all(regret < 0.05 * 400)


def test_weights_state_round_trip_and_an_old_state_starts_fresh() -> None:
    w = _weights()
    _run(w, _stream(CLOSE, 60))
    back = _weights()
    back.load_state_dict(w.state_dict())
    f, y = next(_stream(CLOSE, 1, seed=5))
    np.testing.assert_array_equal(back.combine(f)[0], w.combine(f)[0])
    for ww in (w, back):
        _run(ww, _stream(CLOSE, 20, seed=6))
    np.testing.assert_array_equal(back.w, w.w)
    for a, b in ((back.hedge, w.hedge), (back.convex, w.convex), (back.pick, w.pick),
                 (back.pool, w.pool)):
        np.testing.assert_array_equal(a.gap, b.gap)
        np.testing.assert_array_equal(a.wk, b.wk)
    assert back.updates == w.updates == 80
    # a state from before the network's weights: its pick chose between two mixes; the pick
    # and the pool start fresh, the per-sensor weights carry on
    two = w.state_dict()
    two["pick"] = {"w": np.full((4, 2, 2), 0.5), "gap": np.zeros((4, 2))}
    del two["pool"]
    older = _weights()
    older.load_state_dict(two)
    np.testing.assert_array_equal(older.hedge.wk, w.hedge.wk)
    np.testing.assert_allclose(older.pick.wk, 0.25)
    np.testing.assert_allclose(older.pool.wk, 1 / 3)
    # a state written before the tuned rate (names, weights, updates): the weights of another
    # loss and rate start fresh, the count carries on
    old = _weights()
    old.load_state_dict({"names": ["a", "b", "c"], "w": np.tile([0.7, 0.2, 0.1], (4, 2, 1)),
                         "updates": 7})
    np.testing.assert_allclose(old.w, 1 / 3)
    assert old.updates == 7 and old.hedge.gap.shape == (4, 2) and not old.hedge.gap.any()
    served, _ = _run(old, _stream(CLOSE, 500))
    assert np.all(old.w[..., 0] > 0.9)
    with pytest.raises(ValueError, match="the state weighs"):
        _weights().load_state_dict({**w.state_dict(), "names": ["a", "b"]})


def test_the_mean_over_the_arms_with_a_forecast_matches_its_definition() -> None:
    """``Hedge.mean_with`` (arm by arm, skipping arms without any forecast) equals the
    weighted mean over the arms that have one, renormalized, NaN where none has; with every
    forecast present it is the plain weighted sum."""
    rng = np.random.default_rng(3)
    k, n, h = 5, 40, 6
    w = rng.dirichlet(np.ones(k), size=(n, h)).transpose(2, 0, 1)
    v = rng.normal(size=(k, n, h))
    np.testing.assert_array_equal(Hedge.mean_with(w, v), (w * v).sum(axis=0))
    v[1] = np.nan                                   # an arm without any forecast
    v[3, :10] = np.nan                              # one missing on some sensors
    v[:, 20, 2] = np.nan                            # none at all: NaN
    gone = np.isnan(v)
    ww = np.where(gone, 0.0, w)
    with np.errstate(invalid="ignore"):
        ref = np.where(gone, 0.0, v * w).sum(axis=0) / ww.sum(axis=0)
    out = Hedge.mean_with(w, v)
    assert np.isnan(out[20, 2]) and np.isfinite(np.delete(out.ravel(), 20 * h + 2)).all()
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    # the network's weights, one row broadcast over the sensors
    pool = w[:, :1]
    np.testing.assert_allclose(Hedge.mean_with(np.broadcast_to(pool, v.shape), v),
                               Hedge.mean_with(np.repeat(pool, n, axis=1), v), rtol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 2.0])
def test_sleeping_experts_keep_their_standing_and_missing_truth_changes_nothing(
        eta: float) -> None:
    w = ExpertWeights(["a", "b"], 1, eta=eta, share=0.0, loss_clip=9.0)
    f = np.array([[[1.0, np.nan]]])
    served, leader = w.combine(f)
    assert served[0, 0] == 1.0                      # only the awake expert counts
    w.update(f, np.array([[3.0]]), np.ones(1))      # a's loss 2/3, b charged the same
    np.testing.assert_allclose(w.w[0, 0], [0.5, 0.5])
    assert w.hedge.gap[0, 0] == 0.0                 # nothing learnt about the rate either
    w.update(np.array([[[1.0, 2.0]]]), np.array([[np.nan]]), np.ones(1))
    np.testing.assert_allclose(w.w[0, 0], [0.5, 0.5])
    with pytest.raises(ValueError, match="experts: forecasts must be"):
        w.combine(np.zeros((1, 2, 2)))


@pytest.mark.parametrize("kind", ["patch_transformer", "backbone"])
def test_a_fresh_model_is_exactly_persistence(kind: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 4, 3)
    mask = torch.rand(5, 4, 3) > 0.3
    mask[2] = False                                   # a window with nothing observed
    mask[3, :, :] = False
    mask[3, 1, 0] = True                              # only an old point
    x = x * mask
    if kind == "patch_transformer":
        m = PatchTransformer(PatchTransformerConfig(patch_len=3, context_patches=4, horizon=6,
                                                    d_model=8, n_heads=2, n_layers=1,
                                                    base="persistence"))
        y = m(x, mask, torch.zeros(5, 4, 1))
        want = last_observed(x, mask)[:, -1]
    else:
        m = STBackbone(STBackboneConfig(patch_len=3, context_patches=4, horizon=6, d_model=8,
                                        n_heads=2, n_layers=1, base="persistence",
                                        lap_pe_dim=0, graph=False))
        y = m(x[None], mask[None], torch.arange(4)[None])[0, :, -1]
        want = last_observed(x, mask)[:, -1]
    assert torch.equal(y, want[:, None].expand(5, 6))
    assert want[2] == 0 and want[3] == x[3, 1, 0]


def test_served_by_a_fresh_core_starts_as_persistence() -> None:
    rec = simulate(SimConfig(n_sensors=4, n_days=1, seed=2, n_events=0, drifts=[]))[0]
    cfg = StreamConfig.from_dict({"model": {"lr": 0.0}})
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=list(rec.sensors))
    res = backtest(rec, core, progress=False)
    # the model (and its frozen copy) forecast persistence exactly; the first served forecast
    # is the equal-weight mean of the experts that have a forecast (no season seen yet)
    np.testing.assert_allclose(res.experts["model"], res.experts["persistence"], atol=1e-5)
    np.testing.assert_allclose(res.experts["frozen"], res.experts["persistence"], atol=1e-5)
    first = np.stack([v[0] for v in res.experts.values()])
    assert np.isnan(res.experts["seasonal_day"][0]).all()
    np.testing.assert_allclose(res.yhat[0], np.nanmean(first, axis=0), atol=1e-4)


def test_baselines_forecast_what_they_say() -> None:
    cfg = StreamConfig.from_dict({"patching": {"interval_ms": 3_600_000, "patch_len": 4},
                                  "model": {"horizon": 30, "context_patches": 8},
                                  "baselines": {"ma_points": 3}})
    b = Baselines(cfg)
    assert b.names == ["persistence", "moving_average", "seasonal_day", "seasonal_week",
                       "holt_winters"]
    day = np.arange(24.0)
    for k in range(12):                               # two days of hourly values 0..23
        v = day[(4 * k + np.arange(4)) % 24][None].copy()
        if k == 11:
            v[0, 3] = np.nan                          # the newest point is missing
        b.update(ClosedStep(k, 4 * k * 3_600_000, 4 * (k + 1) * 3_600_000, v,
                            np.zeros(1, np.float32), 4))
    f = b.forecast(1, 48 * 3_600_000)
    assert f["persistence"][0, 0] == 22.0             # the last observed value
    assert f["moving_average"][0, 0] == pytest.approx((20 + 21 + 22) / 3)
    np.testing.assert_array_equal(f["seasonal_day"][0, :23], np.r_[day[:23]])
    assert np.isnan(f["seasonal_day"][0, 23])         # one day back: the missing point
    assert f["seasonal_day"][0, 24] == 0.0            # two days back for the second day
    assert np.isnan(f["seasonal_week"]).all()         # not a week of data yet


def _hourly_steps(rng: np.random.Generator, steps: int):
    for k in range(steps):
        n = 3 + k // 10                                   # sensors keep arriving
        v = rng.normal(10, 3, (n, 4))
        v[rng.random(v.shape) < 0.2] = np.nan
        yield ClosedStep(k, 4 * k * 3_600_000, 4 * (k + 1) * 3_600_000, v,
                         np.zeros(n, np.float32), 4)


def _old_format(state: dict, now: int) -> dict:
    """The checkpoint layout before one ring served every season: a ring per season and
    Holt-Winters' first season in an array of its own (zeros in the season meanwhile)."""
    old = dict(state, buf={"seasonal_week": state["buf"]}, hw=dict(state["hw"]),
               buf_grid={"seasonal_week": state["buf_grid"]})
    del old["seasons"]
    day = np.full((len(state["buf"]), 24), np.nan, np.float32)
    day_grid = np.full(24, -1, np.int64)
    for g in range(max(now - 23, 0), now + 1):
        if state["buf_grid"][g % 168] == g:
            day[:, g % 24], day_grid[g % 24] = state["buf"][:, g % 168], g
    old["buf"]["seasonal_day"], old["buf_grid"]["seasonal_day"] = day, day_grid
    warming = np.isnan(state["hw"]["level"])
    first = np.full_like(state["hw"]["season"], np.nan)
    first[warming] = state["hw"]["season"][warming]
    season = state["hw"]["season"].copy()
    season[warming] = 0.0
    old["hw"].update(first=first, season=season)
    return old


@pytest.mark.parametrize("cut", [3, 5, 60])
def test_baselines_resume_from_old_checkpoints(cut: int) -> None:
    """A checkpoint written before the seasonal baselines shared one ring (and Holt-Winters
    kept its warm-up apart) resumes to the same forecasts, during warm-up and after."""
    cfg = StreamConfig.from_dict({"patching": {"interval_ms": 3_600_000, "patch_len": 4},
                                  "model": {"horizon": 30}})
    steps = list(_hourly_steps(np.random.default_rng(1), 100))
    live = Baselines(cfg)
    for st in steps[:cut + 1]:
        live.update(st)
    resumed = Baselines(cfg)
    resumed.load_state_dict(_old_format(live.state_dict(), live.now))
    for st in steps[cut + 1:]:
        live.update(st)
        resumed.update(st)
        a = live.forecast(len(st.values), st.end_ts)
        b = resumed.forecast(len(st.values), st.end_ts)
        for name in live.names:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert np.isfinite(a["seasonal_day"]).any() and np.isfinite(a["holt_winters"]).all()


@pytest.mark.heavy
def test_the_guard_undoes_adaptation_that_hurts() -> None:
    """A learning rate 1000x too high makes every update hurt: the guard restores the last
    good weights and halves the rate each time, so the model ends near the frozen start's
    error; the served forecast, which weighs the frozen start too, stays near the frozen
    run's either way."""
    rec = simulate(SimConfig(n_sensors=6, n_days=3, seed=4, n_events=0, drifts=[]))[0]
    runs = {}
    for name, lr, guard in (("reckless", 1.0, False), ("guarded", 1.0, True),
                            ("frozen", 0.0, True)):
        cfg = StreamConfig.from_dict({
            "patching": {"patch_len": 4},
            "model": {"lr": lr, "learn_batch": 0, "torch_threads": 1},
            "adapt": {"guard": guard, "guard_window": 24}})
        apply_torch_threads(cfg)                # as the CLI does: results depend on it
        core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                          sensors=list(rec.sensors))
        res = backtest(rec, core, progress=False)
        half = len(res.steps) // 2
        err = np.nanmean(np.abs(res.experts["model"][half:] - res.truth[half:]))
        runs[name] = (core, err)
    g = runs["guarded"][0].forecaster.guard
    assert g.restores > 0 and g.rejected > 0 and g.lr_scale < 1
    assert runs["reckless"][1] > 1.5 * runs["frozen"][1]     # adaptation really hurts
    assert runs["guarded"][1] < 1.1 * runs["frozen"][1]      # the guard takes it back
    for name in ("reckless", "guarded"):
        assert runs[name][0].metrics.mae < 1.05 * runs["frozen"][0].metrics.mae


def test_served_forecasts_stay_within_bounds() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(2000)
    level = np.where(t < 1000, 20.0, 20.0 - 0.05 * (t - 1000))   # drifts down, below zero
    cfg = StreamConfig.from_dict({"serve": {"bounds": {"pm25/*": [0, 500]}}})
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt))
    t0 = 1_767_225_600_000
    vals = level + rng.normal(0, 1, len(t))
    blocks = []
    for i in range(0, len(t), 100):
        sl = slice(i, i + 100)
        out = core.process(ReadingBatch(["pm25/a"] * len(t[sl]), t0 + t[sl] * IV, vals[sl],
                                        np.arange(len(t[sl]))))
        blocks += out.forecasts
    yhat = np.concatenate([b.yhat for b in blocks])
    assert (yhat >= 0).all() and (yhat <= 500).all()
    assert (np.concatenate([b.experts["persistence"] for b in blocks]) < 0).any()


def test_a_sensor_never_seen_below_zero_is_not_forecast_below_zero() -> None:
    cfg = StreamConfig()
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt))
    lo, hi = core.forecaster.bounds(["x"])
    assert lo[0] == -np.inf and hi[0] == np.inf       # nothing seen yet: no bounds
    core.forecaster.observe(np.array([[0.5, 3.0, 10.0, np.nan]]))
    lo, hi = core.forecaster.bounds(["x"])
    assert lo[0] == 0.0 and hi[0] == pytest.approx(10.0 + 0.25 * 9.5)


def test_holt_winters_initializes_in_blocks_as_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole network completing its first season at once is initialized in blocks (bounded
    temporaries at scale); the blocks give exactly the one-shot result."""
    from streaming.forecast import baselines as bl

    cfg = StreamConfig.from_dict({"patching": {"interval_ms": 3_600_000, "patch_len": 4},
                                  "model": {"horizon": 30}})
    steps = list(_hourly_steps(np.random.default_rng(2), 40))
    out = []
    for block in (10_000, 2):
        monkeypatch.setattr(bl, "_INIT_BLOCK", block)
        b = Baselines(cfg)
        for st in steps:
            b.update(st)
        out.append(b.forecast(len(steps[-1].values), steps[-1].end_ts)["holt_winters"])
    assert np.isfinite(out[0]).all()
    np.testing.assert_array_equal(out[0], out[1])


def test_monthly_data_get_a_yearly_season() -> None:
    from connectors.spacing import MONTH_MS

    cfg = StreamConfig.from_dict({"patching": {"interval_ms": MONTH_MS, "patch_len": 12},
                                  "model": {"horizon": 12}})
    b = Baselines(cfg)
    assert b.names == ["persistence", "moving_average", "seasonal_year", "holt_winters"]
    assert b.seasons == {"seasonal_year": 12} and b.hw.m == 12
    year = np.array([5.0, 4, 6, 9, 12, 15, 17, 16, 13, 10, 7, 5])
    for k in range(3):                                 # three years of the same cycle
        b.update(ClosedStep(k, k * 12 * MONTH_MS, (k + 1) * 12 * MONTH_MS, year[None] + k,
                            np.zeros(1, np.float32), 12))
    f = b.forecast(1, 36 * MONTH_MS)
    np.testing.assert_array_equal(f["seasonal_year"][0], year + 2)   # last year's months
    daily = Baselines(StreamConfig.from_dict({"patching": {"interval_ms": 86_400_000}}))
    assert "seasonal_year" not in daily.names          # 365.2425 days: not whole days
