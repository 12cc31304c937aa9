"""replay backtest: same forecasts as the live worker, both feedback modes, the report."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from connectors.kafka_io import ensure_topics, read_topic
from replay.backtest import backtest
from replay.publish import publish_recording
from replay.simulator import DriftSpec, SimConfig, simulate, write_simulation
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.worker import LiveWorker

ROOT = Path(__file__).resolve().parents[2]


def _small_recording():
    rec, _ = simulate(SimConfig(n_sensors=6, n_days=2, seed=3, n_events=0, drifts=[
        DriftSpec("level_shift", sensor=2, onset_frac=0.7, magnitude=2.0)]))
    return rec


def _core(cfg: StreamConfig, sensors: list[str]) -> StreamCore:
    return StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=sensors)


@pytest.mark.broker
def test_backtest_and_live_worker_give_the_same_forecasts(broker, unique) -> None:
    rec = _small_recording()
    bs = broker.bootstrap_servers
    topics = {f"{t}_topic": f"{t.replace('_', '-')}-{unique}"
              for t in ("readings", "events", "forecasts", "alerts", "dead_letter")}
    cfg = StreamConfig.from_dict({"kafka": {"bootstrap_servers": bs, "group_id": f"g-{unique}",
                                            "max_batch": 500, **topics}})
    k = cfg.kafka
    ensure_topics(bs, [k.readings_topic, k.events_topic, k.forecasts_topic, k.alerts_topic,
                       k.dead_letter_topic])
    publish_recording(rec, bs, topic=k.readings_topic, events_topic=k.events_topic,
                      progress=False)
    live_core = _core(cfg, list(rec.sensors))
    asyncio.run(LiveWorker(cfg, live_core, idle_exit_s=0.5).run())
    live = {(f["sensor"], f["step"]): (f["yhat"], f["model_version"])
            for f in (orjson.loads(v) for _, v, _, _ in read_topic(bs, k.forecasts_topic))}

    offline_core = _core(cfg, list(rec.sensors))
    res = backtest(rec, offline_core, progress=False)
    offline = {}
    for b, step in enumerate(res.steps.tolist()):
        for i, s in enumerate(res.sensors):
            offline[(s, step)] = (res.yhat[b, i], res.versions[b])
    assert len(live) > 6 * 400 // 12 and set(live) == set(offline)
    worst = max(float(np.max(np.abs(np.asarray(live[key][0]) - offline[key][0])))
                for key in live)
    assert worst < 1e-4, f"live and backtest forecasts differ by up to {worst}"
    assert all(live[key][1] == offline[key][1] for key in live), "model versions differ"
    assert live_core.model.n_updates == offline_core.model.n_updates > 0


def test_immediate_feedback_learns_right_after_each_forecast() -> None:
    rec = _small_recording()
    cfg = StreamConfig.from_dict({"model": {"horizon": 24}})   # 2 steps ahead
    delayed, immediate = _core(cfg, list(rec.sensors)), _core(cfg, list(rec.sensors))
    rd = backtest(rec, delayed, feedback="delayed", progress=False)
    ri = backtest(rec, immediate, feedback="immediate", progress=False)
    np.testing.assert_array_equal(rd.steps, ri.steps)
    n = len(ri.steps)
    # every forecast fed back at once, except the flushed last step's: its horizon is past
    # the end of the recording
    assert immediate.model.n_updates == n - 1
    assert delayed.model.n_updates == n - 2         # the last two are still waiting for truth
    np.testing.assert_array_equal(rd.yhat[0], ri.yhat[0])   # same model before any update
    assert not np.allclose(rd.yhat[3:], ri.yhat[3:])
    assert ri.versions[1].endswith("+1") and rd.versions[1].endswith("+0")
    m = ri.metrics()
    assert m["steps"] == n - 2 and np.isfinite(m["mse"])    # full horizons only


def test_backtest_rejects_bad_arguments() -> None:
    rec = _small_recording()
    core = _core(StreamConfig(), list(rec.sensors))
    with pytest.raises(ValueError, match="feedback"):
        backtest(rec, core, feedback="sometimes")
    with pytest.raises(ValueError, match="outside the recording"):
        backtest(rec, core, start_row=10, end_row=rec.n_steps + 1)


@pytest.mark.heavy
def test_cli_backtest_writes_report_and_plots(tmp_path: Path) -> None:
    rec, truths = simulate(SimConfig(n_sensors=5, n_days=3, seed=5, n_events=3))
    data = tmp_path / "sim.npz"
    write_simulation(rec, truths, data)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "stfm.cli", "replay", "backtest",
                           str(data), "--fresh", "--out", str(out), "--quiet",
                           "--score-from-row", "288", "--set", "adapt.replay_k=2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("config")]
    # one line: what differs from the defaults (every key with -v)
    assert said == ["config: adapt.replay_k=2 (others default; every key with -v)"], said
    summary = json.loads((out / "report.json").read_text())
    assert summary["steps"] > 40 and np.isfinite(summary["mse"]) and summary["mae"] > 0
    assert summary["last_model_version"] != summary["first_model_version"]
    per = (out / "per_sensor.csv").read_text().splitlines()
    assert per[0] == "sensor,points,mse,mae" and len(per) == 1 + rec.n_sensors
    curve = (out / "curve.csv").read_text().splitlines()
    assert len(curve) == summary["steps"] + 1
    for png in ("error_over_time.png", "forecasts.png"):
        blob = (out / png).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000
    bad = subprocess.run([sys.executable, "-m", "stfm.cli", "replay", "backtest",
                          str(data), "--fresh", "--out", str(out), "--set", "adapt.penalty=l9"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode != 0 and "adapt.penalty" in bad.stderr


def test_the_per_point_file_reproduces_the_report(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from replay.backtest import write_report

    rec = _small_recording()
    cfg = StreamConfig()
    res = backtest(rec, _core(cfg, list(rec.sensors)), progress=False)
    report = write_report(res, tmp_path, from_row=24)
    pts = pq.read_table(tmp_path / report["points_file"]).to_pandas()
    assert len(pts) == report["points"] and set(pts["sensor"]) <= set(rec.sensors)
    err = pts["forecast"] - pts["truth"]
    assert abs(err.abs().mean() - report["mae"]) < 1e-5
    assert abs((err ** 2).mean() - report["mse"]) < 1e-4
    for e, m in report["experts"].items():
        ee = (pts[e] - pts["truth"]).dropna()
        if m["mae"] is None:                        # no forecast yet (a week's season)
            assert ee.empty, e
            continue
        assert abs(ee.abs().mean() - m["mae"]) < 1e-5, e
    by_h = pts.assign(ae=err.abs()).groupby("h")["ae"].mean()
    np.testing.assert_allclose(by_h.to_numpy(), report["by_horizon"]["served"]["mae"],
                               rtol=1e-5)
    pers = report["experts"]["persistence"]["mae"]
    assert report["mae_vs_persistence"] is not None
    assert abs(report["mae_vs_persistence"] - report["mae"] / pers) < 0.02
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["by_horizon"]["served"]["mae"] == report["by_horizon"]["served"]["mae"]


def test_the_last_partial_step_is_closed_and_scored_at_end_of_input() -> None:
    rec = _small_recording().slice_rows(0, 12 * 30 + 5)     # 30 full steps + 5 readings
    core = _core(StreamConfig(), list(rec.sensors))
    res = backtest(rec, core, progress=False)
    assert len(res.steps) == 31 and res.steps[-1] == res.steps[0] + 30
    assert res.score_steps[-1] == res.steps[-1]             # the partial step was scored
    assert res.score_rows[-1] == rec.n_steps - 1
    assert core.patcher.stats.accepted == int((~np.isnan(rec.values)).sum())
    # the forecast made one step earlier is realized by the partial step's 5 readings
    assert np.isfinite(res.truth[-2][:, :5]).all() and np.isnan(res.truth[-2][:, 5:]).all()
    unflushed = backtest(rec, _core(StreamConfig(), list(rec.sensors)), progress=False,
                         flush=False)
    assert len(unflushed.steps) == 30


def test_sensors_left_after_most_fall_silent_keep_their_forecasts() -> None:
    """Eight of ten sensors stop for good: the two left keep getting forecasts (the clock's
    quorum counts only sensors that still send; a replay's arrival time is its rows' time),
    and they are not blamed for stamping ahead."""
    from connectors.recordings import Recording

    iv, rows = 300_000, 1200
    rng = np.random.default_rng(0)
    x = 10 + 5 * np.sin(2 * np.pi * np.arange(rows) / 288)[:, None] + rng.normal(0, 1,
                                                                              (rows, 10))
    x[400:, 2:] = np.nan
    ts = np.datetime64("2026-03-02", "ms").astype(np.int64) + iv * np.arange(rows)
    rec = Recording(timestamps=ts, sensors=[f"s{i}" for i in range(10)], values=x,
                    interval_ms=iv)
    cfg = StreamConfig.from_dict({"patching": {"interval_ms": iv}})
    res = backtest(rec, _core(cfg, list(rec.sensors)), progress=False)
    after = res.rows >= 500
    assert after.sum() == (rows - 500) // cfg.patching.patch_len
    assert np.isfinite(res.yhat[after][:, :2]).all()
    assert res.rejected_readings == 0
    assert not [a for a in res.alerts if a.get("statistic") == "reading timestamp"]
    assert {a["sensors"][0] for a in res.alerts if a.get("statistic") == "silence"} == {
        f"s{i}" for i in range(2, 10)}


@pytest.mark.parametrize("kind", ["half_past", "jittered", "monthly"])
def test_readings_stamped_off_the_grid_are_scored(kind: str) -> None:
    """Hourly readings at half past the hour (+- a minute), or month starts, lie off the
    points of a grid counted from 1970; with the data's phase each is on its own grid point
    and its truth is found there (not "0 steps scored")."""
    from connectors.recordings import Recording
    from connectors.spacing import grid_phase, sampling_interval

    n = 360
    if kind != "monthly":
        ts = np.datetime64("2025-01-01T00:30", "ms").astype(np.int64) + 3_600_000 * np.arange(n)
        if kind == "jittered":      # +-1 min around :30, the half point of an hourly grid
            ts = ts + np.random.default_rng(1).integers(-60_000, 60_001, n)
    else:
        ts = np.arange("1990-01", "2020-01", dtype="datetime64[M]").astype(
            "datetime64[ms]").astype(np.int64)
    x = 10 + np.sin(np.arange(n) * 2 * np.pi / 12) + np.random.default_rng(0).normal(0, .1, n)
    iv = sampling_interval(ts)
    phase = grid_phase(ts, iv)
    assert phase == (1_800_000 if kind != "monthly" else 0)
    rec = Recording(timestamps=ts, sensors=["a"], values=x[:, None], interval_ms=iv)
    core = _core(StreamConfig.from_dict({"patching": {"interval_ms": iv,
                                                      "grid_phase_ms": phase}}), ["a"])
    res = backtest(rec, core, progress=False)
    assert res.grid_collisions == 0 and core.patcher.stats.accepted == n
    # every horizon point inside the recording has its truth: the row rounded to it
    scored = np.flatnonzero(res.rows >= 0)
    assert len(scored) >= n // 12 - 2
    if kind != "monthly":           # the forecast times are the readings' own grid
        assert (res.ts % 3_600_000 == 1_800_000).all()
    for f in scored:
        r = int(res.rows[f])
        k = min(12, n - r)
        np.testing.assert_array_equal(res.truth[f, 0, :k], x[r:r + k].astype(np.float32))
        assert np.isnan(res.truth[f, 0, k:]).all()


def test_readings_that_share_a_grid_point_are_counted() -> None:
    from connectors.recordings import Recording

    ts = np.arange(48, dtype=np.int64) * 1_800_000          # half-hourly on an hourly grid
    rec = Recording(timestamps=ts, sensors=["a"], values=np.ones((48, 1)),
                    interval_ms=1_800_000)
    core = _core(StreamConfig.from_dict({"patching": {"interval_ms": 3_600_000}}), ["a"])
    res = backtest(rec, core, progress=False)
    assert res.grid_collisions == 48 - 25           # 25 grid points, 0 h to 24 h
