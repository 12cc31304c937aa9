"""Bounds on hostile input (issue 30): sensors per region and sensor-id length, each with a
reason in the dead letter, a count, and (capacity) one alert."""

from __future__ import annotations

import numpy as np
import pytest

from connectors.schemas import ReadingBatch, reason_kind
from streaming.config import ConfigError, StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore

IV = 300_000
T0 = 1_767_225_600_000      # 2026-01-01 UTC


def _core(**over: object) -> StreamCore:
    cfg = StreamConfig.load(None, {k: v for k, v in over.items()})
    return StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model))


def _batch(sensors: list[str], k: int) -> ReadingBatch:
    n = len(sensors)
    return ReadingBatch(list(sensors), np.full(n, T0 + k * IV, np.int64), np.ones(n),
                        np.arange(n))


def test_new_sensors_beyond_the_cap_are_dead_lettered_with_one_alert() -> None:
    core = _core(**{"patching.max_sensors": 5})
    first = [f"s{i}" for i in range(8)]
    out = core.process(_batch(first + first[:2], 0))     # repeats of admitted ids are fine
    reasons = [r for _, r in out.rejected_readings]
    assert len(reasons) == 3 and all(reason_kind(r) == "capacity" for r in reasons), reasons
    assert "patching.max_sensors = 5" in reasons[0] and "'s5'" in reasons[0]
    p = core.patcher
    assert len(p.registry) + p.clock.unregistered() == 5 and p.stats.capacity == 3
    alerts = [a for a in out.alerts if a.detector == "capacity"]
    assert len(alerts) == 1 and alerts[0].kind == "data-quality"
    assert "5 sensors" in alerts[0].text and "dead-letter as 'capacity'" in alerts[0].text
    # later: the known sensors are served, more new ids refused, no second alert
    out = core.process(_batch(first[:5] + ["x1", "x2"], 1))
    assert [i for i, _ in out.rejected_readings] == [5, 6]
    assert not [a for a in out.alerts if a.detector == "capacity"]
    for k in range(2, 5):
        assert not core.process(_batch(first[:5], k)).rejected_readings
    assert p.stats.capacity == 5 and sorted(p.registry.ids) == first[:5]
    assert p.stats.accepted + p.stats.held == 5 * 5 + 2     # every reading of the known ones


def test_a_long_sensor_id_is_invalid_and_not_registered() -> None:
    core = _core()
    huge = "x" * 1_500_000
    out = core.process(_batch(["ok", huge, "é" * 200], 0))   # 400 bytes in 200 characters
    reasons = dict(out.rejected_readings)
    assert set(reasons) == {1, 2}
    assert "sensor id of 1,500,000 bytes is longer than patching.max_sensor_id_bytes = 256" \
        in reasons[1] and len(reasons[1]) < 300       # the id itself is not copied whole
    assert reason_kind(reasons[1]) == "invalid" and "400 bytes" in reasons[2]
    p = core.patcher
    assert p.registry.ids == [] and p.clock.holds("ok") and not p.clock.holds(huge)
    assert p.stats.long_ids == 2


def test_the_bounds_are_validated() -> None:
    for key in ("patching.max_sensors", "patching.max_sensor_id_bytes"):
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            StreamConfig.load(None, {key: 0})
