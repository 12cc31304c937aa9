"""The worker's input path: when a batch arrived, from its records' Kafka timestamps."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.microbatch import Record, arrival_ms, process_records

IV = 300_000
T0 = 1_767_225_600_000
DAY = 86_400_000


@dataclass
class _FaustLike:
    """A record whose timestamp is in seconds, as Faust's ``Message`` gives it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: float


def test_arrival_is_the_median_kafka_timestamp() -> None:
    recs = [Record("readings", 0, i, None, b"x", T0 + i * 1000) for i in range(9)]
    recs.append(Record("readings", 0, 9, None, b"x", T0 + 30 * DAY))   # a producer ahead
    assert arrival_ms(recs, now_ms=5) == T0 + 4500
    assert arrival_ms([Record("readings", 0, 0, None, b"x")], now_ms=5) == 5
    assert arrival_ms([], now_ms=None) is None
    faust = [_FaustLike("readings", 0, 0, None, b"x", T0 / 1000 + 1.5)]
    assert arrival_ms(faust, now_ms=5) == T0 + 1500
    many = [Record("readings", 0, i, None, b"x", T0 + i) for i in range(50_000)]
    assert abs(arrival_ms(many, now_ms=None) - (T0 + 25_000)) <= 50   # a sample of them


def test_a_backlog_where_most_sensors_fell_silent_keeps_forecasting_the_rest() -> None:
    """A worker catching up on two days of a stream (processing time stands still) in which
    8 of 10 sensors stopped after the first 400 readings: the records' own timestamps say
    the 8 are silent, so the two left keep the clock going and get their forecasts."""
    sensors = [f"s{i}" for i in range(10)]
    cfg = StreamConfig.from_dict({"patching": {"interval_ms": IV}})
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=sensors)
    rng = np.random.default_rng(0)
    msgs = [(T0 + r * IV, json.dumps({"sensor": s, "ts": T0 + r * IV,
                                      "value": float(10 + rng.normal())}).encode())
            for r in range(576) for i, s in enumerate(sensors) if i < 2 or r < 400]
    steps, rejected = set(), 0
    for k in range(0, len(msgs), 500):
        recs = [Record("readings", 0, k + j, None, m, ts)          # produced in real time
                for j, (ts, m) in enumerate(msgs[k:k + 500])]
        _, out = process_records(core, recs, cfg, now_ms=T0 + 3 * DAY)
        steps |= {b.step for b in out.forecasts}
        rejected += len(out.rejected_readings)
    last_step = (T0 + 575 * IV) // (IV * 12)
    assert rejected == 0
    assert max(steps) >= last_step - 2            # forecasts to the end of the backlog
