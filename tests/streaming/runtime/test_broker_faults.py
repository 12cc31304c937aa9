"""Broker faults with real processes: unreachable at start, gone and back mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import orjson

from connectors.broker import EmbeddedBroker, free_port
from connectors.kafka_async import TP
from connectors.kafka_io import ensure_topics, read_topic
from connectors.recordings import Recording
from replay.publish import publish_recording
from replay.simulator import SimConfig, simulate
from streaming.runtime.checkpoint import CheckpointStore

ROOT = Path(__file__).resolve().parents[3]


def test_unreachable_broker_at_start_exits_nonzero_after_the_deadline(tmp_path: Path) -> None:
    port = free_port()
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "stfm.cli", "run", "--fresh", "--bootstrap-servers",
         f"127.0.0.1:{port}", "--set", "kafka.connect_timeout_s=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    took = time.monotonic() - t0
    assert r.returncode == 3, r.stderr[-2000:]
    assert f"broker at 127.0.0.1:{port} not reachable after 3s" in r.stderr
    assert "retrying in" in r.stderr                 # it did retry, and said so
    assert took < 60


def _rows(rec: Recording, lo: int, hi: int) -> Recording:
    return rec.slice_rows(lo, hi)


def test_worker_resumes_after_the_broker_restarts(tmp_path: Path) -> None:
    """Stop the embedded broker mid-run and start it again on the same port.

    The embedded broker keeps its data in memory, so after the restart the topics are empty:
    the test recreates them and republishes the unconsumed tail (the rows the worker had not
    read when the broker stopped: it had read all of the first part). So that the tail gets
    the offsets it would have had on a broker that keeps its log, the already consumed first
    part is published again before it; the worker must resume at its own position (the
    first tail offset) and not read the first part twice.
    """
    rec, _ = simulate(SimConfig(n_sensors=8, n_days=3, seed=4, n_events=0))
    split = int(rec.n_steps * 0.6) // 12 * 12
    head = _rows(rec, 0, split)
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    bs = broker.bootstrap_servers
    topics = {k: f"{k}-x" for k in ("readings", "events", "forecasts", "alerts", "dead-letter")}
    cfg = tmp_path / "w.toml"
    store = tmp_path / "store"
    cfg.write_text(
        "[kafka]\n" + "".join(f'{k.replace("-", "_")}_topic = "{v}"\n' for k, v in topics.items())
        + f'max_batch = 300\n[checkpoint]\ndir = "{store}"\nevery_steps = 4\n')
    log = tmp_path / "worker.log"
    forecasts: dict[bytes, bytes] = {}
    proc = None
    try:
        publish_recording(head, bs, topic=topics["readings"], events_topic=topics["events"],
                          progress=False)
        n_head = head.values.size               # one message per reading, NaN as null
        proc = subprocess.Popen(
            [sys.executable, "-m", "stfm.cli", "run", "--config", str(cfg),
             "--bootstrap-servers", bs, "--group-id", "g-faults", "--fresh",
             "--idle-exit", "20", "--summary", str(tmp_path / "summary.json")],
            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        ckpts = CheckpointStore(store, f"g-faults/{topics['readings']}-0")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:      # wait until the head is fully processed
            ck = ckpts.paths() and CheckpointStore.read(ckpts.paths()[-1])
            if ck and ck.offsets.get(TP(topics["readings"], 0)) == n_head:
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        else:
            raise AssertionError("the worker did not finish the first part")
        time.sleep(1.0)                         # let the last outputs be acknowledged
        forecasts.update((k, v) for k, v, _, _ in read_topic(bs, topics["forecasts"]))
        broker.stop()
        time.sleep(3.0)                         # the worker sees the broker gone
        assert proc.poll() is None, "the worker died with the broker"
        broker.start()
        ensure_topics(bs, list(topics.values()))
        publish_recording(rec, bs, topic=topics["readings"], events_topic=topics["events"],
                          progress=False)          # first part (offsets only) + tail
        assert proc.wait(180) == 0, log.read_text()[-3000:]
        forecasts.update((k, v) for k, v, _, _ in read_topic(bs, topics["forecasts"]))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        broker.stop()
    assert "resuming readings-x-0 at offset" in log.read_text()
    steps: dict[str, set[int]] = {}
    for v in forecasts.values():
        f = orjson.loads(v)
        steps.setdefault(f["sensor"], set()).add(f["step"])
    assert set(steps) == set(rec.sensors)
    first = min(min(s) for s in steps.values())
    last = max(max(s) for s in steps.values())
    assert last - first + 1 >= rec.n_steps // 12 - 2
    for s, st in steps.items():                 # every sensor: every step, no gap
        assert st == set(range(first, last + 1)), (s, sorted(set(range(first, last + 1)) - st))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["worker"]["messages"] == rec.values.size      # the first part read once
    assert summary["patcher"]["duplicates"] == summary["patcher"]["late"] == 0

