"""The forecaster stage: the frozen copy's forward pass sleeps while its weight is negligible."""

from __future__ import annotations

import numpy as np
import torch

from replay.backtest import backtest
from replay.simulator import SimConfig, simulate
from streaming.config import StreamConfig
from streaming.forecast.forecaster import FROZEN_PROBE
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.microbatch import apply_torch_threads


def _core(rec: object, sleep: int) -> tuple[StreamCore, list[int]]:
    """A core whose frozen copy is useless (its output shifted far off), counting the steps
    at which its forward pass ran."""
    cfg = StreamConfig.from_dict({"patching": {"patch_len": 4},
                                  "model": {"learn_batch": 0, "torch_threads": 1},
                                  "serve": {"frozen_sleep_steps": sleep}})
    apply_torch_threads(cfg)
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=list(rec.sensors))
    frozen = core.forecaster.frozen
    ran: list[tuple[int, int]] = []
    forward = frozen.predict_with_embedding

    def off(x, mask, side, *, steps, sensors):                     # noqa: ANN001, ANN202
        ran.append((int(steps[-1]), len(x)))
        z, em = forward(x, mask, side, steps=steps, sensors=sensors)
        return z + 25.0, em

    frozen.predict_with_embedding = off  # type: ignore[method-assign]
    return core, ran


def test_a_negligible_frozen_copy_sleeps_and_a_drift_alert_wakes_it() -> None:
    torch.manual_seed(0)
    rec = simulate(SimConfig(n_sensors=4, n_days=3, seed=3, n_events=0, drifts=[]))[0]
    core, ran = _core(rec, sleep=24)
    f = core.forecaster
    awake: dict[int, int] = {}       # step: sensors the frozen copy must forecast
    predict = f.predict

    def watched(inp, sensors, *a, **kw):                            # noqa: ANN001, ANN202
        step, n = int(inp.steps[-1]), len(sensors)
        low = np.r_[f._frozen_low, np.zeros(n, np.int64)][:n]
        awake[step] = n if step % FROZEN_PROBE == 0 else int((low < 24).sum())
        return predict(inp, sensors, *a, **kw)

    f.predict = watched  # type: ignore[method-assign]
    res = backtest(rec, core, progress=False)
    steps = len(awake)
    asleep = sum(4 - v for v in awake.values())
    assert asleep >= steps, (asleep, steps)          # a quarter of the sensor-steps at least
    # its forward pass ran on exactly the awake sensors (all on a probe step), and only then
    assert {s: k for s, k in ran} == {s: k for s, k in awake.items() if k}
    assert f.frozen_skipped == asleep
    # the served forecast is as good as with the frozen copy always run
    always, ran_always = _core(rec, sleep=0)
    backtest(rec, always, progress=False)
    assert len(ran_always) == steps and all(k == 4 for _, k in ran_always)
    assert f.metrics.mae <= 1.02 * always.forecaster.metrics.mae
    assert np.isfinite(res.yhat).all()
    # the sleep counts round-trip; a drift alert wakes every sensor
    twin, _ = _core(rec, sleep=24)
    twin.forecaster.load_state_dict(f.state_dict())
    assert np.array_equal(twin.forecaster._frozen_low, f._frozen_low)
    assert twin.forecaster.frozen_skipped == f.frozen_skipped
    probe_off = FROZEN_PROBE * 1000 + 1
    assert f._frozen_due(probe_off, 4) is not None
    f.boost(list(rec.sensors)[:1], steps)
    assert f._frozen_due(probe_off, 4) is None
