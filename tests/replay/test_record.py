"""record ← topic ← publish: a lossless round trip, ranges, and the CLI."""

import subprocess
import sys

import numpy as np
import pytest

from connectors.kafka_io import make_producer
from connectors.recordings import read_recording
from replay.publish import publish_recording
from replay.record import record_topic
from replay.simulator import SimConfig, simulate, write_simulation

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def rec():
    return simulate(SimConfig(n_sensors=5, n_days=1, seed=4, n_events=2, drifts=[]))[0]


def test_publish_then_record_is_lossless(broker, unique, rec):
    bs = broker.bootstrap_servers
    publish_recording(rec, bs, topic=f"r-{unique}", events_topic=f"e-{unique}",
                      partitions=3, progress=False)
    got, stats = record_topic(bs, f"r-{unique}", events_topic=f"e-{unique}", progress=False)
    assert stats.invalid == 0 and stats.readings == rec.values.size
    assert got.sensors == list(rec.sensors)
    np.testing.assert_array_equal(got.timestamps, rec.timestamps)
    np.testing.assert_array_equal(got.values, rec.values)   # NaN (published null) included
    assert got.interval_ms == rec.interval_ms
    assert sorted(got.events, key=lambda e: e["ts"]) == rec.events_sorted()


def test_time_range_and_invalid_messages(broker, unique, rec):
    bs = broker.bootstrap_servers
    topic = f"r2-{unique}"
    publish_recording(rec, bs, topic=topic, events_topic=f"e2-{unique}", progress=False)
    p = make_producer(bs)
    p.send(topic, b"{broken")
    p.flush()
    p.close()
    t0, t1 = int(rec.timestamps[10]), int(rec.timestamps[20])
    # message times (CreateTime) are wall-clock, so ranges over them select by arrival
    got, stats = record_topic(bs, topic, start_offset=10 * 5, end_offset=20 * 5,
                              progress=False)
    np.testing.assert_array_equal(got.timestamps, rec.timestamps[10:20])
    assert got.timestamps[0] == t0 and got.timestamps[-1] < t1
    full, stats = record_topic(bs, topic, progress=False)
    assert stats.invalid == 1 and "not valid JSON" in next(iter(stats.reasons))


def test_cli_record(broker, unique, rec, tmp_path):
    bs = broker.bootstrap_servers
    topic = f"r3-{unique}"
    src = tmp_path / "in.npz"
    write_simulation(rec, [], src)
    publish_recording(rec, bs, topic=topic, events_topic=f"e3-{unique}", progress=False)
    out = tmp_path / "out.npz"
    r = subprocess.run([sys.executable, "-m", "stfm.cli", "replay", "record", "--topic",
                        topic, "--bootstrap-servers", bs, "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    back = read_recording(out)
    np.testing.assert_array_equal(back.values, rec.values)
    assert back.sensors == list(rec.sensors)


def test_record_selects_by_reading_time(broker, unique, rec):
    bs = broker.bootstrap_servers
    topic = f"r4-{unique}"
    publish_recording(rec, bs, topic=topic, events_topic=f"e4-{unique}", progress=False)
    t0, t1 = int(rec.timestamps[10]), int(rec.timestamps[20])
    got, stats = record_topic(bs, topic, start=t0, end=t1, progress=False)
    np.testing.assert_array_equal(got.timestamps, rec.timestamps[10:20])
    np.testing.assert_array_equal(got.values, rec.values[10:20])
    assert stats.outside == rec.values.size - got.values.size
    with pytest.raises(ValueError, match="no valid readings .* with ts in"):
        record_topic(bs, topic, start="2031-01-01T00:00Z", progress=False)
