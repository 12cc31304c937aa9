"""Gap filling: missing grid points inside the model's context are filled and flagged."""

from __future__ import annotations

import numpy as np
import orjson
import torch

from connectors.recordings import Recording
from models.backbone import STBackbone, STBackboneConfig
from replay.backtest import backtest
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.microbatch import encode_forecasts

P, IV = 6, 300_000
CFG = StreamConfig.from_dict({"patching": {"interval_ms": IV, "patch_len": P, "lateness_ms": 0},
                              "model": {"context_patches": 4, "horizon": 6}})


def _model() -> OnlineModel:
    torch.manual_seed(0)
    net = STBackbone(STBackboneConfig.inductive(
        patch_len=P, context_patches=4, horizon=6, d_model=16, n_heads=2, n_layers=1,
        lap_pe_dim=0, graph=False))
    m = OnlineModel(net, CFG.model, name="inductive", adapt=CFG.adapt)
    m.step_ms = IV * P
    return m


def _rec(rows: int = 240, n: int = 3) -> Recording:
    t = np.arange(rows)
    v = 10 + np.sin(2 * np.pi * t / 48)[:, None] * np.arange(1, n + 1)
    return Recording(timestamps=1_767_225_600_000 + t * IV, sensors=[f"s{i}" for i in range(n)],
                     values=v, interval_ms=IV)


def test_single_gaps_are_interpolated_whole_patches_come_from_the_head() -> None:
    m = _model()
    x = np.sin(np.arange(24) / 3.0).reshape(1, 4, P).astype(np.float32).repeat(2, 0)
    mask = np.ones_like(x, bool)
    mask[0, 1, 2] = False                  # one point inside an observed token
    mask[1, 2, :] = False                  # a whole token
    mask[1, 0, :2] = False                 # before the sensor's first reading: left alone
    x = np.where(mask, x, 0.0).astype(np.float32)
    filled, imp = m.impute(x, mask, np.zeros((2, 4, 1), np.float32), steps=np.arange(4),
                           sensors=["a", "b"])
    assert imp.sum() == 1 + P and not imp[1, 0].any()
    assert filled[0, 1, 2] == np.float32((x[0, 1, 1] + x[0, 1, 3]) / 2)
    assert np.isfinite(filled[1, 2]).all()
    np.testing.assert_array_equal(filled[mask], x[mask])        # observed points unchanged


def test_imputed_points_are_flagged_in_forecast_messages_and_scored_by_the_backtest() -> None:
    rec = _rec()
    rec.values[100:103, 1] = np.nan                 # a gap across two steps
    core = StreamCore(CFG, _model(), sensors=list(rec.sensors))
    res = backtest(rec, core, progress=False, holdout=0.05, holdout_seed=1)
    imp = res.imputation
    assert imp is not None and imp["imputed"] > 0.8 * imp["hidden"] > 0
    assert imp["mae"] is not None and np.isfinite(imp["mae"])
    core = StreamCore(CFG, _model(), sensors=list(rec.sensors))
    from replay.backtest import _reading_batch

    out = core.process(_reading_batch(rec, 0, 120))
    flagged = [b for b in out.forecasts if b.imputed is not None]
    assert flagged, "the step with the gap carries its imputed points"
    msgs = [orjson.loads(v) for b in flagged for _, v in encode_forecasts(b)]
    marked = [m for m in msgs if "imputed" in m]
    assert {m["sensor"] for m in marked} == {"s1"}
    ts = {t for m in marked for t, _ in m["imputed"]}
    assert ts == {int(rec.timestamps[r]) for r in (100, 101, 102)}
    assert all("q" in m and m["q"]["0.1"][0] <= m["yhat"][0] <= m["q"]["0.9"][0]
               for m in msgs)
