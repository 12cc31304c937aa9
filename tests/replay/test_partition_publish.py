"""``publish_recording(partition_map=...)`` / ``stfm replay publish --partition-map``: each
sensor's readings land on the partition the map gives it, not where its key hashes to."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from connectors.kafka_io import ensure_topics, partition_of, read_topic, topic_partitions
from connectors.partitioning import PartitionMap, PartitionMapError, partition_graph
from connectors.recordings import Recording, write_recording
from replay.publish import publish_recording
from replay.simulator import SimConfig, simulate

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def net() -> Recording:
    rec, _ = simulate(SimConfig(n_sensors=12, n_days=0.25, seed=5, n_events=0, drifts=[]))
    events = [{"type": "maintenance", "ts": int(rec.timestamps[3]), "sensor": "s004"},
              {"type": "holiday", "ts": int(rec.timestamps[5])}]
    return dataclasses.replace(rec, events=events)


def test_publish_with_a_map_puts_each_sensors_readings_on_its_partition(
        broker, unique, net: Recording) -> None:
    bs = broker.bootstrap_servers
    topic, events = f"pm-{unique}", f"pme-{unique}"
    pmap = partition_graph(net.sensors, net.edge_index, net.edge_weight, 3)
    assert any(pmap.partition_of(s) != partition_of(s, 3) for s in net.sensors)  # not hashing
    stats = publish_recording(net, bs, topic=topic, events_topic=events, partition_map=pmap,
                              progress=False)
    assert topic_partitions(bs, [topic, events]) == {topic: 3, events: 3}   # the map's P
    parts: dict[str, set[int]] = {}
    n = 0
    for key, _, part, _ in read_topic(bs, topic):
        parts.setdefault(key.decode(), set()).add(part)
        n += 1
    assert n == stats.readings == net.n_steps * net.n_sensors
    assert parts == {s: {pmap.partition_of(s)} for s in net.sensors}
    got = {key: part for key, _, part, _ in read_topic(bs, events)}
    assert got[b"s004"] == pmap.partition_of("s004")      # a sensor's event: its region
    assert got[b"holiday"] == partition_of("holiday", 3)  # others: keyed as before


def test_channel_series_follow_their_sensor(broker, unique) -> None:
    rec, _ = simulate(SimConfig(n_sensors=4, n_days=0.1, seed=1, n_events=0, drifts=[]))
    series = [f"{s}/{c}" for s in rec.sensors for c in ("flow", "speed")]
    multi = Recording(timestamps=rec.timestamps, sensors=series,
                      values=np.repeat(rec.values, 2, axis=1))
    pmap = PartitionMap(2, {"s000": 1, "s001": 1, "s002": 0, "s003": 0})
    topic = f"pmc-{unique}"
    publish_recording(multi, broker.bootstrap_servers, topic=topic,
                      events_topic=f"pmce-{unique}", partition_map=pmap, progress=False)
    parts: dict[bytes, set[int]] = {}
    for key, _, part, _ in read_topic(broker.bootstrap_servers, topic):
        parts.setdefault(key, set()).add(part)
    assert parts == {s.encode(): {p} for s, p in pmap.sensors.items()}


def test_sensors_missing_from_the_map_fail_before_publishing(broker, unique,
                                                              net: Recording) -> None:
    pmap = PartitionMap(2, {s: 0 for s in net.sensors[:-2]}, source="map.json")
    topic = f"pmm-{unique}"
    with pytest.raises(PartitionMapError, match=r"map\.json: 2 of the recording's 12 sensors "
                                                r"are not in the map, e\.g\. 's010', 's011'"):
        publish_recording(net, broker.bootstrap_servers, topic=topic,
                          events_topic=f"pmme-{unique}", partition_map=pmap, progress=False)
    assert list(read_topic(broker.bootstrap_servers, topic)) == []


def test_a_topic_with_fewer_partitions_than_the_map_fails(broker, unique,
                                                          net: Recording) -> None:
    bs = broker.bootstrap_servers
    topic = f"pmf-{unique}"
    ensure_topics(bs, [topic], partitions=2)
    pmap = PartitionMap(3, {s: i % 3 for i, s in enumerate(net.sensors)}, source="m3.json")
    with pytest.raises(PartitionMapError,
                       match=rf"topic '{topic}' has 2 partition\(s\) but m3\.json needs 3"):
        publish_recording(net, bs, topic=topic, events_topic=f"pmfe-{unique}",
                          partition_map=pmap, progress=False)


def test_cli_publish_with_a_partition_map(broker, unique, net: Recording,
                                          tmp_path: Path) -> None:
    bs = broker.bootstrap_servers
    write_recording(net, tmp_path / "net.npz")

    def stfm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stfm.cli", *args], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)

    r = stfm("partition", "--graph", "net.npz", "--partitions", "4", "--out", "map.json")
    assert r.returncode == 0, r.stderr[-2000:]
    pmap = PartitionMap.load(tmp_path / "map.json")
    topic = f"pmcli-{unique}"
    r = stfm("replay", "publish", "net.npz", "--bootstrap-servers", bs, "--topic", topic,
             "--events-topic", f"pmclie-{unique}", "--partition-map", "map.json", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert topic_partitions(bs, [topic]) == {topic: 4}
    for key, _, part, _ in read_topic(bs, topic):
        assert part == pmap.partition_of(key.decode())

    PartitionMap(4, {"s000": 0}).save(tmp_path / "small.json")
    r = stfm("replay", "publish", "net.npz", "--bootstrap-servers", bs, "--topic", topic,
             "--partition-map", "small.json", "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "small.json: 11 of the recording's 12 sensors are not in the map" in r.stderr
