"""Multichannel recordings end to end: [T, N, C] file -> publish -> record, backtest and the
live worker's micro-batch path, with each channel a series ``sensor/channel`` of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from connectors.kafka_io import read_topic
from connectors.recordings import Recording, read_recording, write_recording
from replay.backtest import backtest
from replay.publish import iter_messages, publish_recording
from replay.record import record_topic
from replay.simulator import SimConfig, simulate
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.microbatch import Record, encode_forecasts, process_records

ROOT = Path(__file__).resolve().parents[2]
CHANNELS = ("flow", "speed")


def _write_multichannel(path: Path) -> Path:
    """3 sensors x 2 channels over 2 days (5 min), a sensor graph, and missing readings: one
    channel alone, and every channel of a sensor at once."""
    rec, _ = simulate(SimConfig(n_sensors=3, n_days=2, seed=7, n_events=0, drifts=[]))
    data = np.stack([rec.values, 0.5 * rec.values + 3.0], axis=-1)
    data[5, 1, 0] = np.nan
    data[9, 2, :] = np.nan
    np.savez(path, data=data, timestamps=rec.timestamps, sensors=np.array(rec.sensors),
             channels=np.array(CHANNELS), lat=rec.lat, lon=rec.lon,
             edge_index=np.array([[0, 1, 2], [1, 2, 0]]), edge_weight=np.array([0.5, 0.5, 0.5]))
    return path


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return read_recording(_write_multichannel(tmp_path_factory.mktemp("mc") / "multi.npz"))


def test_the_file_reads_as_channel_series_sharing_their_sensor(multi: Recording) -> None:
    assert multi.sensors == ["s000/flow", "s000/speed", "s001/flow", "s001/speed",
                             "s002/flow", "s002/speed"]
    assert np.isnan(multi.values[5, 2]) and not np.isnan(multi.values[5, 3])
    assert np.isnan(multi.values[9, 4:]).all()
    # 3 sensor edges x 2 channels + 3 sensors x 2 channel links
    assert multi.edge_index is not None and multi.edge_index.shape == (2, 12)
    assert multi.lat is not None and multi.lat[0] == multi.lat[1] != multi.lat[2]


def test_publish_sends_one_values_message_per_sensor_and_time(multi: Recording) -> None:
    msgs = [(k, orjson.loads(v)) for kind, k, v, _ in iter_messages(multi) if kind == "reading"]
    assert len(msgs) == multi.n_steps * 3
    key, first = msgs[0]
    assert key == b"s000" and first["sensor"] == "s000" and "value" not in first
    assert first["values"] == {"flow": multi.values[0, 0], "speed": multi.values[0, 1]}
    assert msgs[5 * 3 + 1][1]["values"]["flow"] is None                 # one channel missing
    assert msgs[9 * 3 + 2][1]["values"] == {"flow": None, "speed": None}  # all missing: nulls
    skipped = {(m["sensor"], m["ts"]): m["values"] for m in (
        orjson.loads(v) for kind, _, v, _ in iter_messages(multi, skip_missing=True)
        if kind == "reading")}
    seen = ~np.isnan(multi.values.reshape(multi.n_steps, 3, 2))
    assert len(skipped) == int(seen.any(axis=2).sum()) < multi.n_steps * 3
    ts = multi.timestamps.tolist()
    assert ("s002", ts[9]) not in skipped                              # all missing: none
    assert list(skipped[("s001", ts[5])]) == ["speed"]                 # missing left out


@pytest.mark.broker
def test_multichannel_publish_then_record_round_trip(broker, unique, multi: Recording,
                                                     tmp_path: Path) -> None:
    bs = broker.bootstrap_servers
    topic = f"mc-{unique}"
    stats = publish_recording(multi, bs, topic=topic, events_topic=f"mce-{unique}",
                              progress=False)
    assert stats.readings == multi.n_steps * 3                           # messages, not values
    raw = list(read_topic(bs, topic))
    assert len(raw) == stats.readings
    for key, value, _, _ in raw[:6]:
        msg = orjson.loads(value)
        assert key == msg["sensor"].encode() and set(msg["values"]) == set(CHANNELS)
    got, rstats = record_topic(bs, topic, progress=False)
    assert rstats.invalid == 0 and rstats.readings == multi.values.size
    assert got.sensors == multi.sensors
    np.testing.assert_array_equal(got.timestamps, multi.timestamps)
    np.testing.assert_array_equal(got.values, multi.values)             # NaN where missing
    back = read_recording(write_recording(got, tmp_path / "back.csv"))
    assert back.sensors == multi.sensors
    np.testing.assert_array_equal(back.values, multi.values)


@pytest.mark.broker
def test_a_sensors_channels_share_a_partition(broker, unique, multi: Recording) -> None:
    bs = broker.bootstrap_servers
    topic = f"mcp-{unique}"
    publish_recording(multi, bs, topic=topic, events_topic=f"mcpe-{unique}", partitions=3,
                      skip_missing=True, progress=False)
    parts: dict[bytes | None, set[int]] = {}
    for key, _, part, _ in read_topic(bs, topic):
        parts.setdefault(key, set()).add(part)
    assert set(parts) == {b"s000", b"s001", b"s002"}
    assert all(len(p) == 1 for p in parts.values())
    got, _ = record_topic(bs, topic, progress=False)
    assert sorted(got.sensors) == got.sensors and set(got.sensors) == set(multi.sensors)
    order = [got.sensors.index(s) for s in multi.sensors]
    np.testing.assert_array_equal(got.values[:, order], multi.values)


def _core(cfg: StreamConfig, sensors: list[str]) -> StreamCore:
    return StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=sensors)


def test_backtest_and_worker_forecast_every_channel(multi: Recording) -> None:
    cfg = StreamConfig()
    res = backtest(multi, _core(cfg, list(multi.sensors)), progress=False)
    assert res.sensors == multi.sensors
    assert all(np.isfinite(res.yhat[:, i]).any() for i in range(len(res.sensors)))
    offline = {(s, int(step)): res.yhat[b, i] for b, step in enumerate(res.steps.tolist())
               for i, s in enumerate(res.sensors)}

    # the live worker's micro-batch path over the published messages
    values = [(k, v) for kind, k, v, _ in iter_messages(multi) if kind == "reading"]
    records = [Record(cfg.kafka.readings_topic, 0, i, k, v) for i, (k, v) in enumerate(values)]
    core = _core(cfg, list(multi.sensors))
    per_batch = 3 * cfg.patching.patch_len                 # one step of rows per batch
    live = []
    for lo in range(0, len(records), per_batch):
        out, _ = process_records(core, records[lo:lo + per_batch], cfg)
        assert not out.dead_letters
        live += [orjson.loads(v) for _, v in out.forecasts]
    live += [orjson.loads(v) for block in core.flush().forecasts
             for _, v in encode_forecasts(block)]
    assert {f["sensor"] for f in live} == set(multi.sensors)
    assert all(f["channel"] == f["sensor"].split("/")[1] for f in live)
    worst = max(float(np.max(np.abs(np.asarray(f["yhat"]) - offline[(f["sensor"], f["step"])])))
                for f in live)
    assert worst < 1e-4, f"worker and backtest forecasts differ by up to {worst}"


def test_cli_backtest_of_a_multichannel_file(tmp_path: Path) -> None:
    data = _write_multichannel(tmp_path / "multi.npz")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "stfm.cli", "replay", "backtest", str(data),
                           "--fresh", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 sensors x 2 channels read as 6 series" in proc.stderr
    per = (out / "per_sensor.csv").read_text().splitlines()[1:]
    assert [ln.split(",")[0] for ln in per] == [f"s00{i}/{c}" for i in range(3)
                                                for c in CHANNELS]
    assert all(int(ln.split(",")[1]) > 0 for ln in per)           # scored points per channel
    assert json.loads((out / "report.json").read_text())["steps"] > 0
