"""Rebalance with real processes: two workers of one group on a 4-partition topic.

Each readings partition is a region with its own core, checkpointed to a store both workers
share. The second worker's arrival hands two regions over (checkpoint, drop, restore on the
other side); then one worker is killed with SIGKILL and the other takes its regions over from
their last checkpoints. Every sensor's forecasts must continue with no gap.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import pytest

from connectors.kafka_io import read_topic
from replay.publish import publish_recording
from replay.simulator import SimConfig, simulate
from streaming.runtime.checkpoint import CheckpointStore

PARTS = 4


def _args(cfg: Path, bs: str, group: str) -> list[str]:
    """A worker that runs until it is stopped (no idle exit: the test decides when the
    input is done, from what the worker reports)."""
    return ["run", "--config", str(cfg), "--bootstrap-servers", bs, "--group-id", group,
            "--fresh", "--status-every", "0.5"]


@pytest.mark.heavy
def test_killed_workers_regions_continue_on_the_survivor(broker, unique: str, tmp_path: Path,
                                                         wait_for, stfm_process,
                                                         last_status) -> None:
    bs = broker.bootstrap_servers
    rec, _ = simulate(SimConfig(n_sensors=16, n_days=3, seed=9, n_events=0))
    cut1, cut2 = 288, 2 * 288                     # day 1 / day 2 / day 3 published in turn
    topic = f"readings-{unique}"
    store = tmp_path / "store"
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        f'[kafka]\nreadings_topic = "{topic}"\nevents_topic = "events-{unique}"\n'
        f'forecasts_topic = "forecasts-{unique}"\nalerts_topic = "alerts-{unique}"\n'
        f'dead_letter_topic = "dead-letter-{unique}"\npartitions = {PARTS}\nmax_batch = 500\n'
        f'[checkpoint]\ndir = "{store}"\nevery_steps = 2\n')
    group = f"g-{unique}"

    def publish(lo: int, hi: int) -> None:
        publish_recording(rec.slice_rows(lo, hi), bs, topic=topic,
                          events_topic=f"events-{unique}", partitions=PARTS, progress=False)

    def checkpointed(p: int) -> int:
        paths = CheckpointStore(store, f"{group}/{topic}-{p}").paths()
        return int(paths[-1].name[5:]) if paths else 0

    publish(0, cut1)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = stfm_process(*_args(cfg, bs, group), log=log_a)
    wait_for(lambda: all(checkpointed(p) for p in range(PARTS)), "worker A on all regions",
             procs=((a, log_a),))
    b = stfm_process(*_args(cfg, bs, group), log=log_b)
    wait_for(lambda: "restored state" in log_b.read_text(), "worker B taking regions over",
             procs=((a, log_a), (b, log_b)))
    before = {p: checkpointed(p) for p in range(PARTS)}
    publish(cut1, cut2)
    wait_for(lambda: all(checkpointed(p) > before[p] for p in range(PARTS)),
             "both workers on day 2", procs=((a, log_a), (b, log_b)))
    os.kill(a.pid, signal.SIGKILL)
    a.wait(60)
    publish(cut2, rec.n_steps)

    def read_all() -> bool:
        """B holds every region and its latest status has every partition at its end."""
        lag = {k: v for k, v in last_status(log_b).get("lag", {}).items()
               if k.startswith(topic + "-")}
        return (log_b.read_text().count("restored state") >= 3 and len(lag) == PARTS
                and not any(lag.values()))

    # B takes A's regions over (after the session timeout) and reads everything
    wait_for(read_all, "worker B to take over and read day 3", timeout=300,
             procs=((b, log_b),))
    b.terminate()                              # checkpoints its regions, then exits
    assert b.wait(120) == 0, log_b.read_text()[-3000:]

    text_b = log_b.read_text()
    assert text_b.count("restored state") >= 3, text_b[-3000:]   # 2 handed over + A's after kill
    assert "handed over" in log_a.read_text()
    steps: dict[str, set[int]] = {}
    for _, v, _, _ in read_topic(bs, f"forecasts-{unique}"):
        f = orjson.loads(v)
        steps.setdefault(f["sensor"], set()).add(f["step"])
    assert set(steps) == set(rec.sensors)
    for s, st in steps.items():
        lo, hi = min(st), max(st)
        assert hi - lo + 1 >= rec.n_steps // 12 - 3, (s, lo, hi)
        assert st == set(range(lo, hi + 1)), (s, sorted(set(range(lo, hi + 1)) - st))
