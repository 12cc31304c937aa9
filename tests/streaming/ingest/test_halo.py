"""The halo exchange: regions split by a partition map see their graph neighbours' readings.

Units: who is whose ghost; ghosts get no forecasts, alerts, metrics or dead letters. In one
process (``replay.partitioned``, the worker's ``process_records``): two METIS regions with
the halo give exactly one region's forecasts (online learning off, so that the regions'
models cannot drift apart); without it, forecasts near the cut change. Through the broker:
two ``stfm run`` workers of one group on a 2-partition topic, forwarding through the
``boundary`` topic, produce those same forecasts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from connectors.kafka_io import read_topic
from connectors.partitioning import PartitionMap, partition_graph
from connectors.recordings import write_recording
from replay.partitioned import run_partitioned
from replay.publish import publish_recording
from replay.simulator import SimConfig, simulate
from streaming.config import ConfigError, StreamConfig
from streaming.ingest.halo import HALO_PARTITION, HaloPlan
from streaming.pipeline.core import StreamCore
from streaming.pipeline.factory import build_model, resolve_checkpoint
from streaming.runtime.microbatch import Record, WorkerStats, process_records


def _path_plan(hops: int) -> HaloPlan:
    # a path a-b-c-d-e-f cut in the middle: {a, b, c} | {d, e, f}
    names = list("abcdef")
    ei = np.array([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    pmap = PartitionMap(2, {s: 0 if s in "abc" else 1 for s in names})
    return HaloPlan.build(pmap, names, ei, hops)


def test_plan_ghosts_are_the_other_regions_sensors_within_the_hops() -> None:
    one, two = _path_plan(1), _path_plan(2)
    assert one.own == {0: frozenset("abc"), 1: frozenset("def")}
    assert one.ghosts == {0: frozenset("d"), 1: frozenset("c")}
    assert two.ghosts == {0: frozenset("de"), 1: frozenset("bc")}
    assert two.exports == {"b": (1,), "c": (1,), "d": (0,), "e": (0,)}
    assert _path_plan(0).ghosts == {0: frozenset(), 1: frozenset()}
    # records forwarded: each record once per region that needs one of its readings
    fw = two.forwards(["a", "b", "c", "b/x"], np.array([0, 1, 2, 1]), 0)
    assert fw == {1: [1, 2]}
    with pytest.raises(ValueError, match="not in the map"):
        HaloPlan.build(PartitionMap(1, {"a": 0}), ["a", "zz"], np.zeros((2, 0), int))
    with pytest.raises(ConfigError, match="kafka.halo_hops"):
        StreamConfig.from_dict({"kafka": {"halo_hops": -1}})


def _network() -> tuple:
    rec, _ = simulate(SimConfig(n_sensors=24, n_days=2, seed=3, n_events=0))
    pmap = partition_graph(list(rec.sensors), rec.edge_index, rec.edge_weight, 2)
    return rec, pmap


def _cfg(rec, **kafka) -> StreamConfig:
    return StreamConfig.from_dict({
        "patching": {"interval_ms": rec.interval_ms},
        "model": {"live_graph": True, "learn": False, "torch_threads": 1},
        # the network's expert weights average the losses of a worker's own sensors: a
        # region's differ from the whole network's (serve.network_weights)
        "serve": {"network_weights": False},
        "adapt": {"contrastive_weight": 0.0}, "kafka": kafka})


def _maker(rec, cfg: StreamConfig):
    ck = resolve_checkpoint(cfg, None, False)
    assert ck is not None, "the package's checkpoint (with a graph layer) is needed"

    def make(keep=None) -> StreamCore:
        m = build_model(cfg, ck)
        m.set_graph(list(rec.sensors), rec.edge_index, rec.edge_weight)
        return StreamCore(cfg, m, sensors=[s for s in rec.sensors if keep is None or s in keep])
    return make


@pytest.mark.heavy
def test_halo_regions_forecast_exactly_as_one_region() -> None:
    rec, pmap = _network()
    cfg = _cfg(rec)
    make = _maker(rec, cfg)
    one = run_partitioned(rec, cfg, make, None)
    halo = run_partitioned(rec, cfg, make, pmap, halo=True)
    cut = run_partitioned(rec, cfg, make, pmap, halo=False)
    assert halo.plan is not None and all(halo.plan.ghosts.values())
    assert halo.stats.halo_forwarded > 0 and halo.stats.halo_received > 0
    assert halo.stats.halo_dropped == 0
    assert len(one.forecasts) == 24 * (rec.n_steps // 12)
    assert set(halo.forecasts) == set(one.forecasts) == set(cut.forecasts)
    diff = {k: float(np.abs(halo.forecasts[k] - one.forecasts[k]).max()) for k in one.forecasts}
    assert max(diff.values()) < 1e-6
    off = [k for k in one.forecasts if np.abs(cut.forecasts[k] - one.forecasts[k]).max() > 1e-3]
    assert len(off) > len(one.forecasts) // 10, "the cut should change forecasts near it"
    # each region forecasts, alerts on and scores its own sensors only
    for p, core in halo.cores.items():
        own = halo.plan.own[p]
        assert core.forecasts_made == sum(1 for s, _ in one.forecasts if s in own)
    assert halo.served.n == one.served.n
    assert halo.served.abs_err == pytest.approx(one.served.abs_err, rel=1e-9)
    # one hop is not enough: the imputation pass is a second graph layer (the simulated
    # network has missing readings)
    hop1 = run_partitioned(rec, _cfg(rec, halo_hops=1), make, pmap, halo=True)
    assert any(np.abs(hop1.forecasts[k] - one.forecasts[k]).max() > 1e-6
               for k in one.forecasts)


def test_ghost_readings_are_not_dead_lettered_or_counted_as_own() -> None:
    rec, pmap = _network()
    cfg = _cfg(rec)
    plan = HaloPlan.build(pmap, list(rec.sensors), rec.edge_index, 2)
    core = _maker(rec, cfg)(plan.members(0))
    core.set_own(plan.own[0])
    mine, ghosts = sorted(plan.own[0])[:3], sorted(plan.ghosts[0])[:3]
    k = cfg.kafka
    recs = []
    for t in range(30):
        ts = int(rec.timestamps[t])
        recs += [Record(k.readings_topic, 0, len(recs), s.encode(),
                        orjson.dumps({"sensor": s, "ts": ts, "value": 1.0})) for s in mine]
        recs += [Record(k.boundary_topic, 0, len(recs), s.encode(),
                        orjson.dumps({"sensor": s, "ts": ts, "value": 2.0})) for s in ghosts]
    recs.append(Record(k.boundary_topic, 0, len(recs), b"x", b'{"sensor": 1}'))
    stats = WorkerStats()
    out, core_out = process_records(core, recs, cfg, stats, {0, HALO_PARTITION}, halo=plan,
                                    region=0)
    assert out.dead_letters == []           # the bad boundary record is its region's
    assert stats.readings_accepted == 90 and stats.halo_received == 90
    # own readings go to the region that keeps them as ghosts
    wanted = sum(30 for s in mine if s in plan.exports)
    assert len(out.boundary) == wanted and {d for d, _, _ in out.boundary} <= {1}
    # forecasts for own sensors only
    assert core_out.forecasts
    assert all(set(b.sensors) <= plan.own[0] for b in core_out.forecasts)


@pytest.mark.heavy
def test_two_workers_with_the_halo_forecast_as_one_region(broker, unique: str, tmp_path: Path,
                                                          wait_for, stfm_process,
                                                          last_status) -> None:
    rec, pmap = _network()
    bs = broker.bootstrap_servers
    graph = write_recording(rec, tmp_path / "net.npz")
    map_path = pmap.save(tmp_path / "map.json")
    t = {n: f"{n}-{unique}" for n in ("readings", "events", "forecasts", "alerts",
                                      "dead-letter", "boundary")}
    cfg_path = tmp_path / "w.toml"
    cfg_path.write_text(
        f'[kafka]\nreadings_topic = "{t["readings"]}"\nevents_topic = "{t["events"]}"\n'
        f'forecasts_topic = "{t["forecasts"]}"\nalerts_topic = "{t["alerts"]}"\n'
        f'dead_letter_topic = "{t["dead-letter"]}"\nboundary_topic = "{t["boundary"]}"\n'
        f'partitions = 2\nmax_batch = 2000\nhalo_wait_s = 1e9\n'
        f'[checkpoint]\ndir = "{tmp_path / "store"}"\n'
        '[model]\nlive_graph = true\nlearn = false\n[adapt]\ncontrastive_weight = 0.0\n'
        '[serve]\nnetwork_weights = false\n')

    # no idle exit: the test stops both once they have exchanged everything
    args = ["run", "--config", str(cfg_path), "--bootstrap-servers", bs, "--group-id",
            f"g-{unique}", "--graph", str(graph), "--partition-map", str(map_path),
            "--interval-ms", str(rec.interval_ms), "--status-every", "0.5"]
    total = int((~np.isnan(rec.values)).sum())

    def exchanged_everything() -> bool:
        """Both read all their input and took every ghost reading the other forwarded."""
        sa, sb = last_status(log_a), last_status(log_b)
        if len(sa.get("lag", {})) < 3 or len(sb.get("lag", {})) < 3:
            return False
        return (sa["readings_accepted"] + sb["readings_accepted"] == total
                and sa["halo_received"] + sa["halo_dropped"] == sb["halo_forwarded"] > 0
                and sb["halo_received"] + sb["halo_dropped"] == sa["halo_forwarded"] > 0
                and not any(sa["lag"].values()) and not any(sb["lag"].values()))

    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = stfm_process(*args, "--summary", str(log_a.with_suffix(".json")), log=log_a)
    wait_for(lambda: all(f"region {r}: no checkpoint" in log_a.read_text() for r in (0, 1)),
             "worker A on both regions", procs=((a, log_a),))
    b = stfm_process(*args, "--summary", str(log_b.with_suffix(".json")), log=log_b)
    wait_for(lambda: "handed over" in log_a.read_text() and "restored state" in
             log_b.read_text(), "worker B taking a region over", procs=((a, log_a), (b, log_b)))
    publish_recording(rec, bs, topic=t["readings"], events_topic=t["events"],
                      partition_map=pmap, progress=False, skip_missing=True)
    wait_for(exchanged_everything, "both workers to read and exchange everything",
             timeout=300, procs=((a, log_a), (b, log_b)))
    for p in (a, b):
        p.terminate()                           # checkpoint, then exit
    assert a.wait(120) == 0, log_a.read_text()[-3000:]
    assert b.wait(120) == 0, log_b.read_text()[-3000:]
    summaries = [orjson.loads(p.with_suffix(".json").read_bytes()) for p in (log_a, log_b)]
    # each worker ran one region, with ghosts from the other
    assert all(s["worker"]["readings_accepted"] > 0 for s in summaries)
    assert sum(s["worker"]["readings_accepted"] for s in summaries) == total
    assert all(s["worker"]["halo_forwarded"] > 0 and s["worker"]["halo_received"] > 0
               for s in summaries)
    got = {}
    for _, value, _, _ in read_topic(bs, t["forecasts"]):
        m = orjson.loads(value)
        got[(m["sensor"], m["step"])] = np.array(m["yhat"])
    cfg = _cfg(rec)
    one = run_partitioned(rec, cfg, _maker(rec, cfg), None)
    # the workers were stopped, not at the end of an input: the last partial step stays open
    # (a later reading would close it), so they forecast every step one region forecasts
    # but that one
    last = max(step for _, step in one.forecasts)
    assert set(got) == {k for k in one.forecasts if k[1] < last}
    worst = max(float(np.abs(got[k] - one.forecasts[k]).max()) for k in got)
    assert worst < 1e-5       # messages carry 6 decimals
