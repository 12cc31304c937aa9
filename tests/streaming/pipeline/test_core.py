"""The online core without Kafka: forecasts per closed step, learning, determinism."""

import numpy as np
import pytest

from connectors.schemas import EventBatch, ReadingBatch
from replay.simulator import SimConfig, simulate
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore


@pytest.fixture(scope="module")
def rec():
    return simulate(SimConfig(n_sensors=8, n_days=4, seed=3, n_events=0, drifts=[]))[0]


def _run(rec, batch: int, **cfg):
    c = StreamConfig.from_dict(cfg)
    core = StreamCore(c, OnlineModel.fresh(c.patching, c.model))
    t, n = rec.values.shape
    ts = np.repeat(rec.timestamps, n)
    ss = list(rec.sensors) * t
    vv = rec.values.reshape(-1)
    blocks = []
    for i in range(0, len(vv), batch):
        out = core.process(ReadingBatch(ss[i:i + batch], ts[i:i + batch], vv[i:i + batch],
                                        np.arange(len(vv[i:i + batch]))))
        blocks += out.forecasts
    return core, blocks


def test_one_forecast_block_per_closed_step_for_every_sensor(rec):
    core, blocks = _run(rec, 5000)
    steps = [b.step for b in blocks]
    assert steps == list(range(steps[0], core.patcher.next_open))
    assert all(b.sensors == list(rec.sensors) and b.yhat.shape == (8, 12) for b in blocks)
    b = blocks[10]
    assert b.horizon_ts[0] == b.ts and np.all(np.diff(b.horizon_ts) == 300_000)


def test_online_learning_improves_and_beats_frozen(rec):
    # a fresh model is persistence (it corrects it); the served forecast weighs it with the
    # frozen start and the baselines: learning never makes it worse, and it beats persistence
    core, _ = _run(rec, 5000)
    frozen, _ = _run(rec, 5000, model={"lr": 0.0})
    assert core.model.n_updates > 80 and frozen.model.n_updates == 0
    assert core.metrics.mae <= frozen.metrics.mae
    assert core.metrics.mae < 0.95 * core.forecaster.expert_metrics["persistence"].mae


def test_deterministic_and_independent_of_batch_size(rec):
    _, a = _run(rec, 5000)
    _, b = _run(rec, 777)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.yhat, y.yhat, rtol=1e-6, atol=1e-6)
        assert x.model_version == y.model_version


def test_events_enter_the_context_even_when_late(rec):
    c = StreamConfig()
    core = StreamCore(c, OnlineModel.fresh(c.patching, c.model), sensors=list(rec.sensors))
    n = rec.n_sensors
    rows = 24 * 12
    core.process(ReadingBatch(list(rec.sensors) * rows, np.repeat(rec.timestamps[:rows], n),
                              rec.values[:rows].reshape(-1), np.arange(rows * n)))
    t_recent = int(rec.timestamps[rows - 30])
    t_old = int(rec.timestamps[0])
    out = core.process(ReadingBatch(), EventBatch(
        [{"type": "incident", "ts": t_recent, "sensor": rec.sensors[2]},
         {"type": "incident", "ts": t_old, "sensor": rec.sensors[2]},
         {"type": "incident", "ts": t_recent, "sensor": "unknown"}], [0, 1, 2]))
    assert core.window.events[2].sum() == 1.0
    reasons = dict(out.rejected_events)
    assert set(reasons) == {1, 2}
    assert "older than the model's context" in reasons[1] and "no known sensor" in reasons[2]


def test_horizon_longer_than_context_is_rejected():
    c = StreamConfig.from_dict({"model": {"horizon": 200, "context_patches": 4}})
    with pytest.raises(ValueError, match="must cover the horizon"):
        StreamCore(c, OnlineModel.fresh(c.patching, c.model))
