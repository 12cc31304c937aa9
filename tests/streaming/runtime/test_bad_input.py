"""One bad reading must never cost the others (issue 11), through the worker's input path.

Each test drives ``process_records`` (what the live worker and the Faust engine run per
micro-batch) with a clean stream of 20 sensors plus one bad message, and compares with a
control run of the clean stream alone.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.microbatch import Record, WorkerStats, process_records

SENSORS = [f"s{i:02d}" for i in range(20)]
IV = 300_000
T0 = 1_767_225_600_000
DAY = 86_400_000
ROWS = 24 * 12          # two days of 5-minute readings
BATCH = 500


def _clean() -> list[bytes]:
    return [json.dumps({"sensor": s, "ts": T0 + r * IV,
                        "value": 10.0 + 3 * math.sin(r / 20 + i) + 0.1 * ((r * 7 + i) % 5)}
                       ).encode() for r in range(ROWS) for i, s in enumerate(SENSORS)]


def _run(msgs: list[bytes], graph: bool = True, batch: int = BATCH, **cfg_extra):
    cfg = StreamConfig.from_dict({"patching": {"interval_ms": IV}, **cfg_extra})
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=SENSORS if graph else None)
    stats = WorkerStats()
    forecasts: dict[tuple[str, int], list[float]] = {}
    alerts: list[dict] = []
    dead: list[tuple[bytes, dict]] = []
    for i in range(0, len(msgs), batch):
        recs = [Record("readings", 0, i + j, m[:12], m) for j, m in enumerate(msgs[i:i + batch])]
        out, core_out = process_records(core, recs, cfg, stats, now_ms=T0 + 400 * DAY)
        for block in core_out.forecasts:
            for s, y in zip(block.sensors, block.yhat, strict=True):
                forecasts[(s, block.step)] = y.tolist()
        alerts += [json.loads(v) for _, v in out.alerts]
        dead += [(k, json.loads(v)) for k, v in out.dead_letters]
    return core, stats, forecasts, alerts, dead


@pytest.fixture(scope="module")
def control():
    return _run(_clean())


def test_a_reading_stamped_a_day_ahead_costs_nothing(control):
    msgs = _clean()
    at = 20 * 100 + 3
    bad = json.dumps({"sensor": "s03", "ts": T0 + 100 * IV + DAY, "value": 11.0}).encode()
    msgs.insert(at, bad)
    core, stats, forecasts, alerts, dead = _run(msgs)
    assert stats.readings_accepted == len(msgs) - 1 == control[1].readings_accepted
    assert len(dead) == 1 and dead[0][1]["reason"].startswith("future")
    assert dead[0][1]["original"] == bad.decode() and dead[0][1]["offset"] == at
    assert dead[0][0] == f"readings:0:{at}".encode()       # unique key: topic:partition:offset
    dq = [a for a in alerts if a["kind"] == "data-quality"]
    assert len(dq) == 1 and dq[0]["sensors"] == ["s03"] and "ahead" in dq[0]["detail"]["text"]
    assert forecasts == control[2]                        # nothing else changed


@pytest.mark.parametrize("raw", [b"1e308", b"-1e308", b"9" * 302, b"1e13"])
def test_absurd_values_are_dead_lettered_and_forecasts_stay_finite(control, raw):
    msgs = _clean()
    at = 20 * 150 + 5
    bad = b'{"sensor": "s05", "ts": %d, "value": %s}' % (T0 + 150 * IV, raw)
    msgs.insert(at, bad)
    core, stats, forecasts, alerts, dead = _run(msgs)
    assert len(dead) == 1 and dead[0][1]["reason"].startswith(("out_of_range", "'value'"))
    assert forecasts == control[2]
    assert all(np.isfinite(y).all() for y in forecasts.values())


def test_a_huge_value_within_bounds_never_gives_a_null_forecast():
    msgs = _clean()
    msgs.insert(20 * 150 + 5, json.dumps({"sensor": "s05", "ts": T0 + 150 * IV + 1,
                                          "value": 9e11}).encode())
    core, stats, forecasts, alerts, dead = _run(msgs)
    assert dead == []
    later = {k: y for k, y in forecasts.items() if k[1] > (T0 + 150 * IV) // (12 * IV)}
    assert len(later) == 20 * len({k[1] for k in later})   # every sensor, every step
    assert all(np.isfinite(y).all() for y in later.values())


@pytest.mark.parametrize("graph", [True, False])
def test_no_forecast_before_a_sensors_first_accepted_reading(graph):
    msgs = _clean()
    late_sensor = [json.dumps({"sensor": "s19", "ts": T0 + r * IV, "value": 1.0}).encode()
                   for r in range(ROWS) if r >= 120]
    msgs = [m for m in msgs if b'"s19"' not in m]
    # interleave the late sensor's readings in time order
    by_t = {}
    for m in msgs + late_sensor:
        by_t.setdefault(json.loads(m)["ts"], []).append(m)
    ordered = [m for t in sorted(by_t) for m in by_t[t]]
    for batch in (BATCH, 20):                              # a backlog, and readings paced
        core, stats, forecasts, _, _ = _run(ordered, graph=graph, batch=batch)
        first_step = (T0 + 120 * IV) // (12 * IV)
        steps = sorted(st for s, st in forecasts if s == "s19")
        assert steps and steps[0] == first_step
        assert len(core.sensors) == 20


def test_sensors_whose_readings_are_all_late_never_appear():
    msgs = _clean() + [json.dumps({"sensor": f"old{i}", "ts": T0 - 365 * DAY + r * IV,
                                   "value": 1.0}).encode() for r in range(24) for i in range(5)]
    core, stats, forecasts, alerts, dead = _run(msgs, graph=False)
    assert len(dead) == 120 and all(d["reason"].startswith("late") for _, d in dead)
    assert len(core.sensors) == 20 and not any(s.startswith("old") for s, _ in forecasts)


def test_one_dead_letter_per_message_even_with_several_bad_channels():
    cfg = StreamConfig.from_dict({"patching": {"interval_ms": IV}})
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model))
    raw = json.dumps({"sensor": "m", "ts": T0, "values": {"a": 1e300, "b": -1e300,
                                                         "c": 1.0}}).encode()
    out, _ = process_records(core, [Record("readings", 2, 41, b"m", raw)], cfg)
    assert len(out.dead_letters) == 1
    key, value = out.dead_letters[0]
    d = json.loads(value)
    assert key == b"readings:2:41" and d["key"] == "m" and d["reason"].count("out_of_range") == 2
