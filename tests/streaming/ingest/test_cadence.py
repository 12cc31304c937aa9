"""The data's cadence: estimated from the first readings, inferred as the grid when none is
given (``stfm run``), and a loud warning when a given grid disagrees with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from connectors.kafka_io import read_topic
from replay.simulator import SimConfig, simulate, write_simulation
from streaming.ingest.cadence import (
    CadenceEstimator,
    format_interval,
    mismatch,
    mismatch_message,
    nice_interval,
)

HOUR = 3_600_000


def _interleaved(n_sensors: int, n_steps: int, every: int, jitter: int = 0,
                 seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    sensors, ts = [], []
    for t in range(n_steps):
        for s in range(n_sensors):
            sensors.append(f"s{s}")
            ts.append(t * every + (int(rng.integers(-jitter, jitter + 1)) if jitter else 0))
    return sensors, np.asarray(ts, np.int64)


def test_estimates_the_median_spacing_once_enough_sensors_reported() -> None:
    est = CadenceEstimator()
    sensors, ts = _interleaved(5, 4, HOUR, jitter=2_000)
    est.learn_many(sensors[:5], ts[:5])              # one reading each: no spacing yet
    assert est.estimate() is None and est.estimate(force=True) is None
    est.learn_many(sensors[5:10], ts[5:10])          # one spacing each: still too few
    assert est.estimate() is None
    assert est.estimate(force=True).interval_ms == pytest.approx(HOUR, abs=4_000)
    est.learn_many(sensors[10:], ts[10:])
    found = est.estimate()
    assert found is not None and found.sensors == 5 and found.spacings == 15
    assert nice_interval(found.interval_ms) == HOUR   # seconds of jitter round away


def test_out_of_order_and_repeated_readings_say_nothing_about_the_cadence() -> None:
    est = CadenceEstimator(min_sensors=1)
    est.learn_many(["a"] * 6, [0, 60_000, 30_000, 60_000, 120_000, 180_000])
    assert est.estimate().interval_ms == 60_000


def test_a_single_sensor_is_enough_when_it_is_the_only_one() -> None:
    est = CadenceEstimator()
    est.learn_many(["only"] * 4, [0, 10_000, 20_000, 30_000])
    assert est.estimate().interval_ms == 10_000


def test_keeps_a_bounded_number_of_spacings_per_sensor() -> None:
    est = CadenceEstimator(per_sensor=4)
    sensors, ts = _interleaved(3, 50, 1000)
    est.learn_many(sensors, ts)
    assert est.saturated and est.estimate().spacings == 12


def test_mismatch_beyond_a_factor_of_two_either_way() -> None:
    assert not mismatch(300_000, 600_000) and not mismatch(600_000, 300_000)
    assert mismatch(300_000, HOUR) and mismatch(HOUR, 300_000)
    est = CadenceEstimator()
    est.learn_many(*_interleaved(3, 3, HOUR))
    text = mismatch_message(300_000, est.estimate(), "stfm run")
    assert "every 1 h" in text and "5 min" in text and "12x finer" in text
    assert "--interval-ms 3600000" in text          # a CLI flag, not a Python parameter


def test_format_interval() -> None:
    assert [format_interval(v) for v in (500, 1000, 300_000, HOUR, 86_400_000, 5_400_000)] \
        == ["500 ms", "1 s", "5 min", "1 h", "1 d", "1.5 h"]


# --- stfm run on hourly data -------------------------------------------------------------


def _stfm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stfm.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def hourly(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    rec, truths = simulate(SimConfig(n_sensors=4, n_days=8, seed=3, n_events=0,
                                     interval_ms=HOUR))
    path = tmp_path_factory.mktemp("hourly") / "hourly.npz"
    write_simulation(rec, truths, path)
    return path, rec.values.size


def _publish_and_run(broker, unique: str, data: Path, tmp_path: Path, *flags: str
                     ) -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
    bs = broker.bootstrap_servers
    topics = {t: f"{t}-{unique}" for t in ("readings", "events", "forecasts", "alerts",
                                           "dead-letter")}
    pub = _stfm("replay", "publish", str(data), "--bootstrap-servers", bs, "--topic",
                topics["readings"], "--events-topic", topics["events"], "--quiet")
    assert pub.returncode == 0, pub.stderr
    summary = tmp_path / "summary.json"
    sets = [f"--set=kafka.{t.replace('-', '_')}_topic={name}" for t, name in topics.items()]
    run = _stfm("run", "--bootstrap-servers", bs, "--group-id", f"g-{unique}", "--fresh",
                "--idle-exit", "1", "--summary", str(summary), *sets, *flags)
    assert run.returncode == 0, run.stderr[-3000:]
    forecasts = [orjson.loads(v) for _, v, _, _ in read_topic(bs, topics["forecasts"])]
    return run, json.loads(summary.read_text()), forecasts


@pytest.mark.broker
def test_run_infers_an_hourly_grid_when_none_is_given(broker, unique, hourly, tmp_path):
    data, n = hourly
    run, s, forecasts = _publish_and_run(broker, unique, data, tmp_path)
    assert "config: kafka.bootstrap_servers=" in run.stderr        # the effective config
    assert "inferred from the first readings" in run.stderr        # said at start
    assert "grid interval inferred from the data: 1 h = 3600000 ms" in s["cadence"]
    assert s["worker"]["readings_accepted"] == n                    # held readings: none lost
    assert forecasts and all(np.all(np.diff(f["horizon_ts"]) == HOUR) for f in forecasts)
    # one step = patch_len (12) hours: 8 days of hourly data close 16 steps, not 192
    assert s["patcher"]["closed_steps"] == 16


@pytest.mark.broker
def test_run_puts_its_grid_where_jittered_readings_are(broker, unique, tmp_path):
    """An hourly logger at :30 +- a minute, rounded to a grid counted from the full hour,
    would put two readings on one point and none on the next; the inferred grid sits at :30."""
    from connectors.recordings import write_recording

    rec, _ = simulate(SimConfig(n_sensors=4, n_days=4, seed=5, n_events=0, interval_ms=HOUR))
    jitter = np.random.default_rng(2).integers(-60_000, 60_001, rec.n_steps)
    rec.timestamps = rec.timestamps + HOUR // 2 + jitter
    data = write_recording(rec, tmp_path / "at30.npz")
    run, s, forecasts = _publish_and_run(broker, unique, data, tmp_path)
    assert "1 h = 3600000 ms, its points 30 min past" in s["cadence"]
    assert s["worker"]["readings_accepted"] == rec.values.size
    assert s["patcher"]["duplicates"] == 0                         # one reading per point
    assert forecasts and all(t % HOUR == HOUR // 2 for f in forecasts for t in f["horizon_ts"])


@pytest.mark.broker
def test_run_says_how_to_fix_a_given_grid_that_jittered_readings_straddle(broker, unique,
                                                                         tmp_path):
    from connectors.recordings import write_recording

    rec, _ = simulate(SimConfig(n_sensors=4, n_days=2, seed=6, n_events=0, interval_ms=HOUR))
    jitter = np.random.default_rng(3).integers(-60_000, 60_001, rec.n_steps)
    rec.timestamps = rec.timestamps + HOUR // 2 + jitter
    data = write_recording(rec, tmp_path / "at30.npz")
    run, s, _ = _publish_and_run(broker, unique, data, tmp_path, "--interval-ms", str(HOUR))
    assert "WARNING" in run.stderr and "--set patching.grid_phase_ms=1800000" in s["cadence"]


def test_the_phase_most_sensors_share() -> None:
    est = CadenceEstimator()
    rng = np.random.default_rng(0)
    for s in ("a", "b", "c"):
        t = np.arange(20, dtype=np.int64) * HOUR + 30 * 60_000 + rng.integers(-60_000, 60_001,
                                                                              20)
        est.learn_many([s] * 20, t)
    assert est.phase(HOUR) == 30 * 60_000
    assert est.straddling(HOUR, 0) > 0 and est.straddling(HOUR, 30 * 60_000) == 0
    on = CadenceEstimator()
    on.learn_many(["a"] * 20, np.arange(20, dtype=np.int64) * HOUR)
    assert on.phase(HOUR) == 0


@pytest.mark.heavy
@pytest.mark.broker
def test_run_warns_loudly_when_the_grid_is_much_finer_than_the_data(broker, unique, hourly,
                                                                     tmp_path):
    data, _ = hourly
    run, s, _ = _publish_and_run(broker, unique, data, tmp_path, "--interval-ms", "300000")
    assert "WARNING" in run.stderr and "the data arrive every 1 h" in run.stderr
    assert "12x finer" in run.stderr and "--interval-ms 3600000" in run.stderr
    assert "12x finer" in s["cadence"]


@pytest.mark.heavy
def test_backtest_adopts_the_files_interval_and_warns_on_a_far_grid(hourly, tmp_path):
    data, _ = hourly
    r = _stfm("replay", "backtest", str(data), "--fresh", "--out", str(tmp_path / "a"),
              "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "grid interval 3600000 ms from" in r.stderr
    assert "config: patching.interval_ms=3600000" in r.stderr
    r = _stfm("replay", "backtest", str(data), "--fresh", "--out", str(tmp_path / "b"),
              "--quiet", "--interval-ms", "300000", "--end-row", "60")
    assert r.returncode == 2 and "12x finer" in r.stderr and "--force" in r.stderr
    r = _stfm("replay", "backtest", str(data), "--fresh", "--out", str(tmp_path / "b"),
              "--quiet", "--interval-ms", "300000", "--end-row", "60", "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "WARNING" in r.stderr and "12x finer" in r.stderr


def test_month_starts_are_read_as_calendar_months() -> None:
    from connectors.spacing import MONTH_MS

    est = CadenceEstimator(min_sensors=1)
    starts = np.array(["2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01", "2024-05-01"],
                      "datetime64[ms]").astype(np.int64)
    est.learn_many(["a"] * 5, starts)
    found = est.estimate()
    assert found.interval_ms == MONTH_MS and nice_interval(found.interval_ms) == MONTH_MS
    assert format_interval(found.interval_ms) == "1 month"
    fixed = CadenceEstimator(min_sensors=1)            # every 30 days: not months
    fixed.learn_many(["a"] * 5, np.arange(5, dtype=np.int64) * 30 * 86_400_000)
    assert fixed.estimate().interval_ms == 30 * 86_400_000
