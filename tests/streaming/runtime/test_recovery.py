"""Crash recovery with real processes on a real broker: kill -9, restart, compare.

The worker checkpoints its whole state with the input offsets it reflects and commits those
offsets only after the checkpoint is durable. A run that is killed with SIGKILL at random
points and restarted each time must end with the same forecasts (deduplicated by key) and the
same model parameters as an uninterrupted run on the same input, with no reading missing
from the model's history. The short version runs in CI; ``make soak`` runs the long one
(>= 50,000 readings, 5 kills).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import torch

from connectors.kafka_io import read_topic
from replay.publish import publish_recording
from replay.simulator import SimConfig, simulate
from streaming.runtime.checkpoint import CheckpointStore

ROOT = Path(__file__).resolve().parents[3]


def _config(tmp: Path, name: str, unique: str, store: Path, every: int) -> Path:
    f = tmp / f"{name}.toml"
    f.write_text(
        f'[kafka]\nreadings_topic = "readings-{unique}"\nevents_topic = "events-{unique}"\n'
        f'forecasts_topic = "forecasts-{name}-{unique}"\nalerts_topic = "alerts-{name}-{unique}"\n'
        f'dead_letter_topic = "dead-letter-{name}-{unique}"\nmax_batch = 400\n'
        f'[checkpoint]\ndir = "{store}"\nevery_steps = {every}\n')
    return f


def _worker(cfg: Path, bs: str, group: str, log: Path, *, idle_exit: bool = True
            ) -> subprocess.Popen:
    """A worker of ``group``; with ``idle_exit`` it stops once it has read everything,
    without it it runs until it is killed."""
    idle = ["--idle-exit", "1"] if idle_exit else []
    return subprocess.Popen(
        [sys.executable, "-m", "stfm.cli", "run", "--config", str(cfg),
         "--bootstrap-servers", bs, "--group-id", group, "--fresh", *idle,
         "--summary", str(log.with_suffix(".json"))],
        cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115


def _forecasts(bs: str, topic: str) -> tuple[dict[bytes, bytes], int]:
    """Forecasts deduplicated by key (a replayed key must carry the same value) and the
    number of messages read."""
    out: dict[bytes, bytes] = {}
    n = 0
    for key, value, _, _ in read_topic(bs, topic):
        n += 1
        if key in out:
            assert out[key] == value, f"forecast {key!r} replayed with a different value"
        out[key] = value
    return out, n


def _region_store(store: Path, group: str) -> CheckpointStore:
    """The checkpoints of the one region (readings partition 0) the test uses."""
    topic = "readings-" + group.split("-", 1)[1]
    return CheckpointStore(store, f"{group}/{topic}-0")


def _final_state(store: Path, group: str) -> dict:
    ck = _region_store(store, group).load_latest()
    assert ck is not None
    return ck.state


def _run_with_kills(cfg: Path, bs: str, group: str, store: Path, kills: int, tmp: Path,
                    seed: int, wait_for: Callable[..., None]) -> int:
    """Start the worker, SIGKILL it ``kills`` times at random points after it made progress
    (a new checkpoint), restart it each time, then let it finish. The killed ones have no
    idle exit, so each kill lands whatever the machine's speed. Returns kills done."""
    rng = random.Random(seed)
    ckpts = _region_store(store, group)
    done = 0
    log = tmp / f"{group}.log"

    def newest() -> int:
        return max((int(p.name[5:]) for p in ckpts.paths()), default=0)

    while done < kills:
        before = newest()
        proc = _worker(cfg, bs, group, log, idle_exit=False)
        try:
            wait_for(lambda b=before: newest() > b, "a new checkpoint", procs=((proc, log),))
            time.sleep(rng.uniform(0.0, 0.6))      # somewhere between two checkpoints
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(60)
        assert proc.returncode == -signal.SIGKILL
        done += 1
    proc = _worker(cfg, bs, group, log)
    assert proc.wait(600) == 0, log.read_text()[-3000:]
    return done


@pytest.mark.parametrize(("n_days", "kills"), [
    pytest.param(1.5, 1, id="short"),
    pytest.param(9.0, 5, id="soak", marks=pytest.mark.slow),
])
@pytest.mark.heavy
def test_kill9_restart_gives_the_uninterrupted_result(broker, unique: str, tmp_path: Path,
                                                      wait_for, n_days: float,
                                                      kills: int) -> None:
    bs = broker.bootstrap_servers
    rec, _ = simulate(SimConfig(n_sensors=20, n_days=n_days, seed=7, n_events=0))
    readings = int((~torch.isnan(torch.from_numpy(rec.values))).sum())
    publish_recording(rec, bs, topic=f"readings-{unique}", events_topic=f"events-{unique}",
                      skip_missing=True, progress=False)
    store = tmp_path / "store"
    ref_cfg = _config(tmp_path, "ref", unique, store, every=6)
    bad_cfg = _config(tmp_path, "bad", unique, store, every=6)

    ref = _worker(ref_cfg, bs, f"ref-{unique}", tmp_path / "ref.log")
    assert ref.wait(600) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    done = _run_with_kills(bad_cfg, bs, f"bad-{unique}", store, kills, tmp_path, seed=1,
                           wait_for=wait_for)
    assert done == kills, f"the run finished after {done} of {kills} kills"

    ref_fc, _ = _forecasts(bs, f"forecasts-ref-{unique}")
    bad_fc, n_bad = _forecasts(bs, f"forecasts-bad-{unique}")
    assert len(ref_fc) > 20 * 24 * (n_days - 1)
    assert set(bad_fc) == set(ref_fc)
    assert bad_fc == ref_fc                     # same values and model versions
    assert n_bad >= len(bad_fc)                 # re-processed ranges re-emit the same keys
    versions = {orjson.loads(v)["model_version"] for v in ref_fc.values()}
    assert len(versions) > 10

    a, b = _final_state(store, f"ref-{unique}"), _final_state(store, f"bad-{unique}")
    fa, fb = a["forecaster"], b["forecaster"]       # the stage that holds model and metrics
    for k, va in fa["model"]["model"].items():
        assert torch.equal(va, fb["model"]["model"][k]), k
    assert fa["model"]["n_updates"] == fb["model"]["n_updates"] > 0
    # no reading missing from, or applied twice to, the model's history
    assert a["patcher"]["stats"] == b["patcher"]["stats"]
    assert a["patcher"]["stats"]["accepted"] == readings
    assert (fa["normalizer"]["count"] == fb["normalizer"]["count"]).all()
    assert fa["metrics"] == fb["metrics"]
    summary = json.loads((tmp_path / f"bad-{unique}.json").read_text())
    assert summary["worker"]["restored_from"] is not None
    print(f"\nSOAK kill-9: {readings:,} readings, {done} kills survived, "
          f"{len(bad_fc):,} forecasts (= uninterrupted run), {n_bad - len(bad_fc):,} "
          f"re-emitted duplicates (same key and value), lost readings = "
          f"{readings - b['patcher']['stats']['accepted']}, model updates "
          f"{fb['model']['n_updates']} (= uninterrupted: duplicates applied = 0)")
