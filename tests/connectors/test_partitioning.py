"""Graph-aware partitioning (issue 17): the METIS sensor -> partition map keeps every sensor,
is deterministic, cuts fewer graph edges than Kafka's key hashing, and round-trips as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from connectors.kafka_io import partition_of
from connectors.partitioning import (
    PartitionMap,
    PartitionMapError,
    edge_cut,
    hash_partition,
    partition_graph,
    read_sensor_graph,
    sensor_graph,
)
from connectors.recordings import expand_channels, load_graph
from replay.simulator import SimConfig, simulate


@pytest.fixture(scope="module")
def sim() -> tuple[list[str], np.ndarray, np.ndarray]:
    """The simulator's sensor network: a Gaussian-kernel kNN graph over 60 sensors."""
    rec, _ = simulate(SimConfig(n_sensors=60, n_days=0.05, seed=11, n_events=0, drifts=[]))
    assert rec.edge_index is not None and rec.edge_weight is not None
    return rec.sensors, rec.edge_index, rec.edge_weight


def _metr_la(shared_data: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    d = shared_data / "los_loop"
    if not (d / "los_adj.csv").is_file() or not (d / "graph_sensor_ids.txt").is_file():
        pytest.skip(f"Los-loop / METR-LA graph not found at {d} (los_adj.csv, "
                    f"graph_sensor_ids.txt)")
    return read_sensor_graph(d / "los_adj.csv", d / "graph_sensor_ids.txt")


@pytest.mark.parametrize("parts", [1, 2, 4, 8])
def test_the_map_keeps_every_sensor(sim, parts: int) -> None:
    sensors, ei, ew = sim
    pmap = partition_graph(sensors, ei, ew, parts)
    assert list(pmap.sensors) == sensors
    assert all(0 <= pmap.partition_of(s) < parts for s in sensors)
    assert sorted(set(pmap.sensors.values())) == list(range(parts))     # none left empty
    assert pmap.balance()["max_over_mean"] <= 1.2


def test_partitioning_is_deterministic(sim) -> None:
    sensors, ei, ew = sim
    for parts in (3, 4, 12):
        a = partition_graph(sensors, ei, ew, parts)
        b = partition_graph(sensors, ei, ew, parts)
        assert a.sensors == b.sensors and a.edge_cut == b.edge_cut
    # the edge order of the input does not matter
    order = np.random.default_rng(0).permutation(ei.shape[1])
    c = partition_graph(sensors, ei[:, order], ew[order], 4)
    assert c.sensors == partition_graph(sensors, ei, ew, 4).sensors


@pytest.mark.parametrize("parts", [2, 4, 8])
def test_edge_cut_is_lower_than_hashings_on_the_simulated_network(sim, parts: int) -> None:
    sensors, ei, ew = sim
    metis = edge_cut(partition_graph(sensors, ei, ew, parts), sensors, ei, ew)
    hashed = edge_cut(hash_partition(sensors, parts), sensors, ei, ew)
    assert metis.edges == hashed.edges > 0
    assert metis.cut < hashed.cut and metis.weight_share < hashed.weight_share
    assert metis.cut <= 0.6 * hashed.cut


@pytest.mark.parametrize("parts", [2, 4, 8])
def test_edge_cut_is_lower_than_hashings_on_metr_la(shared_data: Path, parts: int) -> None:
    sensors, ei, ew = _metr_la(shared_data)
    assert len(sensors) == 207
    pmap = partition_graph(sensors, ei, ew, parts)
    assert len(pmap.sensors) == 207
    metis = edge_cut(pmap, sensors, ei, ew)
    hashed = edge_cut(hash_partition(sensors, parts), sensors, ei, ew)
    assert metis.edges == 1313                   # 2,833 non-zeros: 207 self-loops + 2 x 1313
    assert metis.cut < 0.3 * hashed.cut and metis.weight_share < 0.3 * hashed.weight_share
    assert pmap.edge_cut == metis.to_dict()
    assert pmap.balance()["max_over_mean"] <= 1.05


def test_hash_partition_is_kafkas_key_hashing(sim) -> None:
    sensors, _, _ = sim
    hashed = hash_partition(sensors, 5)
    assert hashed.method == "hash"
    assert hashed.sensors == {s: partition_of(s, 5) for s in sensors}


def test_two_cliques_split_at_their_bridge() -> None:
    sensors = [f"n{i}" for i in range(8)]
    edges = [(a, b) for g in (range(4), range(4, 8)) for a in g for b in g if a < b]
    edges.append((3, 4))
    ei = np.array(edges).T
    pmap = partition_graph(sensors, ei, None, 2)
    assert pmap.edge_cut is not None and pmap.edge_cut["cut"] == 1
    assert {pmap.partition_of(s) for s in sensors[:4]} == {0}
    assert {pmap.partition_of(s) for s in sensors[4:]} == {1}
    # weights steer the cut: make the bridge heavy and one clique's inner edges light
    w = np.ones(ei.shape[1])
    w[-1] = 50.0
    split = partition_graph(sensors, ei, w, 2)
    assert split.partition_of("n3") == split.partition_of("n4")


def test_the_graph_is_symmetrized_without_self_loops() -> None:
    ei = np.array([[0, 1, 1, 2, 2], [1, 0, 1, 0, 0]])
    w = np.array([0.2, 0.7, 5.0, 0.3, 0.4])
    nodes, pairs, wt, counts = sensor_graph(["a", "b", "c"], ei, w)
    assert nodes == ["a", "b", "c"] and counts.tolist() == [1, 1, 1]
    assert pairs.tolist() == [[0, 0], [1, 2]] and wt.tolist() == [0.7, 0.4]
    with pytest.raises(ValueError, match="finite"):
        sensor_graph(["a", "b"], np.array([[0], [1]]), np.array([np.nan]))


def test_channel_series_are_mapped_by_their_sensor() -> None:
    stations = [f"s{i}" for i in range(6)]
    series = [f"{s}/{c}" for s in stations for c in ("flow", "speed")]
    ring = np.array([[i for i in range(6)], [(i + 1) % 6 for i in range(6)]])
    ei, ew = expand_channels(series, ring, np.ones(6), stations=stations)
    pmap = partition_graph(series, ei, ew, 2)
    assert list(pmap.sensors) == stations                 # the key: the sensor id
    assert pmap.partition_of("s0/flow") == pmap.partition_of("s0/speed") == pmap.sensors["s0"]
    assert pmap.edge_cut is not None and pmap.edge_cut["cut"] == 2     # a ring cut in two
    assert "s3/flow" in pmap and "s9" not in pmap
    assert hash_partition(series, 3).sensors == {s: partition_of(s, 3) for s in stations}


def test_bad_partition_counts_are_refused(sim) -> None:
    sensors, ei, ew = sim
    with pytest.raises(ValueError, match="positive"):
        partition_graph(sensors, ei, ew, 0)
    with pytest.raises(ValueError, match="100 partitions for 60 sensors"):
        partition_graph(sensors, ei, ew, 100)


def test_json_round_trip(tmp_path: Path, sim) -> None:
    sensors, ei, ew = sim
    pmap = partition_graph(sensors, ei, ew, 4, seed=3, graph="net.npz")
    path = pmap.save(tmp_path / "map.json")
    doc = json.loads(path.read_text())
    assert doc["partitions"] == 4 and doc["method"] == "metis" and doc["graph"] == "net.npz"
    assert doc["sensors"] == pmap.sensors and doc["edge_cut"]["cut"] == pmap.edge_cut["cut"]
    assert doc["balance"]["sizes"] == pmap.sizes()
    back = PartitionMap.load(path)
    assert back == pmap and back.source == str(path)
    assert edge_cut(back, sensors, ei, ew).to_dict() == pmap.edge_cut


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"sensors": {"a": 0}}', "key 'partitions' is missing"),
    ('{"partitions": 2}', "key 'sensors' is missing"),
    ('{"partitions": 0, "sensors": {}}', "key 'partitions': must be a positive integer"),
    ('{"partitions": 2, "sensors": ["a"]}', "key 'sensors': must be an object"),
    ('{"partitions": 2, "sensors": {"a": 0, "b": 2}}', "key 'sensors'['b']: partition 2"),
    ('{"partitions": 2, "sensors": {"a": "0"}}', "key 'sensors'['a']: partition '0'"),
    ('{"partitions": 2, "sensors": {"a": true}}', "key 'sensors'['a']: partition True"),
    ('{"partitions": 2, "sensors": {}, "method": 3}', "key 'method'"),
    ('{"partitions": 2, "sensors": {}, "edge_cut": 3}', "key 'edge_cut'"),
])
def test_load_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(PartitionMapError) as e:
        PartitionMap.load(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)


def test_a_missing_file_and_an_unmapped_sensor_are_named(tmp_path: Path) -> None:
    with pytest.raises(PartitionMapError, match=r"nope\.json: cannot read"):
        PartitionMap.load(tmp_path / "nope.json")
    path = PartitionMap(2, {"a": 0, "b": 1}).save(tmp_path / "m.json")
    pmap = PartitionMap.load(path)
    assert pmap.partition_of("b") == 1 and pmap.partition_of("a/speed") == 0
    with pytest.raises(PartitionMapError, match=r"m\.json: sensor 'zz' is not in the map"):
        pmap.partition_of("zz")
    assert pmap.missing(["a/x", "zz/x", "b", "yy"]) == ["zz", "yy"]


def _stfm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stfm.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_cli_partition_writes_the_map_and_reports_the_cut(tmp_path: Path) -> None:
    rec, _ = simulate(SimConfig(n_sensors=24, n_days=0.05, seed=2, n_events=0, drifts=[]))
    from connectors.recordings import write_recording

    write_recording(rec, tmp_path / "net.npz")
    runs = []
    for out in ("a.json", "b.json"):
        r = _stfm("partition", "--graph", "net.npz", "--partitions", "3", "--out", out,
                  cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(json.loads((tmp_path / out).read_text())["sensors"])
    assert runs[0] == runs[1] and list(runs[0]) == rec.sensors           # deterministic
    assert "edge cut  metis:" in r.stdout and "hash:" in r.stdout and "max/mean" in r.stdout

    # a dense adjacency CSV with the ids from a text file gives the same map
    adj = np.zeros((24, 24))
    adj[rec.edge_index[0], rec.edge_index[1]] = rec.edge_weight
    np.savetxt(tmp_path / "adj.csv", adj, delimiter=",")
    (tmp_path / "ids.txt").write_text(",".join(rec.sensors))
    r = _stfm("partition", "--graph", "adj.csv", "--sensors-from", "ids.txt",
              "--partitions", "3", "--out", "c.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "c.json").read_text())["sensors"] == runs[0]
    ei, ew = load_graph(tmp_path / "adj.csv", rec.sensors)
    assert ei.shape == rec.edge_index.shape

    r = _stfm("partition", "--graph", "adj.csv", "--partitions", "3", "--out", "d.json",
              cwd=tmp_path)
    assert r.returncode == 2 and "--sensors-from" in r.stderr.splitlines()[-1]
    assert "Traceback" not in r.stderr
