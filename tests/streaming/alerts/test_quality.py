"""Data-quality alerts: silence and flat lines, raised once, cleared once, and no drift or
anomaly alerts on the sensor meanwhile."""

from __future__ import annotations

import numpy as np
import pytest

from replay.backtest import backtest
from replay.simulator import SimConfig, simulate
from streaming.alerts.quality import DataQuality
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.ingest.patching import ClosedStep
from streaming.pipeline.core import StreamCore

P, IV = 12, 300_000


def _step(k: int, values: np.ndarray) -> ClosedStep:
    return ClosedStep(step=k, start_ts=k * P * IV, end_ts=(k + 1) * P * IV, values=values,
                      events=np.zeros(values.shape[0], np.float32), n_readings=values.size)


def _run(q: DataQuality, steps: int, edit) -> list:
    rng = np.random.default_rng(0)
    events = []
    for k in range(steps):
        v = rng.normal(size=(3, P))
        edit(k, v)
        events += [(k, e) for e in q.update(_step(k, v))]
    return events


def test_silence_is_raised_once_after_its_delay_and_cleared_once() -> None:
    cfg = StreamConfig.from_dict({"data_quality": {"silence_readings": 24}})   # 2 steps
    q = DataQuality(cfg)

    def edit(k: int, v: np.ndarray) -> None:
        if 10 <= k < 20:
            v[1] = np.nan                        # s1 silent for 10 steps
        if k == 30:
            v[:] = np.nan                        # the whole network quiet: not a silence
    ev = _run(q, 40, edit)
    assert [(k, e.sensor, e.condition, e.raised) for k, e in ev] == [
        (11, 1, "silence", True), (20, 1, "silence", False)]
    assert ev[0][1].since_ts == 10 * P * IV and ev[0][1].since_step == 10
    assert ev[1][1].detail["silent_steps"] == 10


def test_flat_line_is_raised_once_and_cleared_when_the_value_changes() -> None:
    cfg = StreamConfig.from_dict({"data_quality": {"flat_readings": 30}})
    q = DataQuality(cfg)

    def edit(k: int, v: np.ndarray) -> None:
        if 5 <= k < 12:
            v[2] = 4.5                           # s2 stuck at 4.5 for 7 steps = 84 readings
    ev = _run(q, 20, edit)
    assert [(k, e.sensor, e.condition, e.raised) for k, e in ev] == [
        (7, 2, "flat_line", True), (12, 2, "flat_line", False)]
    assert ev[0][1].since_ts == 5 * P * IV and ev[0][1].detail["value"] == 4.5
    assert ev[1][1].detail["readings"] == 84
    assert not q.suppressed.any()


def test_a_sensor_that_is_often_flat_learns_it() -> None:
    # a rain gauge: at 0 for 7 steps (84 readings), rain, at 0 again for 10 steps, rain, then
    # stuck for 20 steps: only the first dry spell and the stuck stretch (> 2 x 84) are news
    cfg = StreamConfig.from_dict({"data_quality": {"flat_readings": 30}})
    q = DataQuality(cfg)

    def edit(k: int, v: np.ndarray) -> None:
        if 5 <= k < 12 or 14 <= k < 24 or 26 <= k < 46:
            v[2] = 0.0
    ev = [(k, e.raised) for k, e in _run(q, 50, edit) if e.sensor == 2]
    assert ev == [(7, True), (12, False), (39, True), (46, False)]   # 168 readings at 39


def test_a_silent_sensor_gets_one_alert_and_no_drift_alerts_in_the_core() -> None:
    rec, _ = simulate(SimConfig(n_sensors=8, n_days=6, seed=4, n_events=0, drifts=[]))
    vals = rec.values.copy()
    day = 86_400_000 // rec.interval_ms
    vals[3 * day: 5 * day, 5] = np.nan               # s005 silent for two days
    vals[2 * day: int(3.5 * day), 2] = 11.0          # s002 stuck for a day and a half
    rec.values = vals
    cfg = StreamConfig.from_dict({"drift": {"warmup_readings": 144},
                                  "anomaly": {"probation_readings": 144}})
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=list(rec.sensors))
    res = backtest(rec, core, progress=False)
    dq = sorted((a for a in res.alerts if a["kind"] == "data-quality"),
                key=lambda a: (a["sensors"][0], a["ts"]))
    mine = [(a["sensors"][0], a["detail"]["condition"], a["detail"]["state"]) for a in dq]
    assert mine == [("s002", "flat_line", "raised"), ("s002", "flat_line", "cleared"),
                    ("s005", "silence", "raised"), ("s005", "silence", "cleared")], mine
    silence = dq[2]
    began = int(rec.timestamps[3 * day])
    assert silence["detail"]["since_ts"] == began
    steps_late = (silence["ts"] - began) / (P * rec.interval_ms)
    assert steps_late <= 3, "raised within silence_readings (24 points = 2 steps) + 1"
    assert "silent since" in silence["detail"]["text"] and silence["severity"] == "warning"
    # an operator's words: times with their zone, durations in time units, a next step
    text = silence["detail"]["text"]
    assert " UTC: no reading for 2 h while other sensors report" in text, text
    assert "check the sensor's power and its link" in text
    assert "steps" not in text and " UTC, for " in dq[3]["detail"]["text"]
    # nothing else on those sensors while the conditions were open
    for a in res.alerts:
        if a["kind"] in ("drift", "anomaly"):
            t = a["ts"]
            if "s005" in a["sensors"]:
                assert not dq[2]["ts"] <= t < dq[3]["ts"], a["detail"]["text"]
            if "s002" in a["sensors"]:
                assert not dq[0]["ts"] <= t < dq[1]["ts"], a["detail"]["text"]


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_drift_alerts_say_which_way_the_level_moved(sign: float) -> None:
    from replay.simulator import DriftSpec

    rec, truth = simulate(SimConfig(n_sensors=16, n_days=5, seed=6, n_events=0, drifts=[
        DriftSpec("level_shift", sensor=3, onset_frac=0.6, magnitude=2.5 * sign)]))
    cfg = StreamConfig.from_dict({"drift": {"warmup_readings": 288}, "alerts": {"merge_hops": 0}})
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=list(rec.sensors))
    res = backtest(rec, core, progress=False)
    drifted = set(truth[0].sensors)
    hits = [a for a in res.alerts if a["kind"] == "drift" and a["raised_ts"] >= truth[0].onset_ts
            and set(a["sensors"]) & drifted]
    assert hits, "the level shift must be detected"
    a = hits[0]
    assert a["detail"]["change"] == "level"
    assert a["detail"]["value_direction"] == ("down" if sign < 0 else "up")
    assert ("level fell by" if sign < 0 else "level rose by") in a["detail"]["text"]


def test_a_trend_change_is_told_from_a_level_shift() -> None:
    from streaming.pipeline.core import _trend_change

    rng = np.random.default_rng(0)
    before = 10 + rng.normal(0, 0.2, 48)
    ramp = 10 + 0.05 * np.arange(1, 49) + rng.normal(0, 0.2, 48)     # starts where it was
    slopes = _trend_change(before, ramp, float(np.std(before)))
    assert slopes is not None and abs(slopes[0]) < 0.02 and 0.04 < slopes[1] < 0.06
    shifted = 12 + rng.normal(0, 0.2, 48)                            # a jump, no slope
    assert _trend_change(before, shifted, float(np.std(before))) is None
    assert _trend_change(before, 10 + rng.normal(0, 0.2, 48), float(np.std(before))) is None
