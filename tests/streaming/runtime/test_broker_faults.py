"""Broker faults with real processes: unreachable at start, gone and back mid-run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from connectors.broker import EmbeddedBroker
from connectors.kafka_async import TP
from connectors.kafka_io import ensure_topics, read_topic
from connectors.recordings import Recording
from replay.publish import publish_recording
from replay.simulator import SimConfig, simulate
from streaming.runtime.checkpoint import CheckpointStore

ROOT = Path(__file__).resolve().parents[3]
# what the worker's Kafka client logs when its broker went away
_NOTICED = ("Unable connect", "Unable to connect", "Connection refused", "Connect attempt",
            "Heartbeat failed", "coordinator dead", "Failed fetch")


@contextmanager
def _held_port() -> Iterator[int]:
    """A port bound but not listening while the block runs: connections to it are refused
    and no other process (another test's broker) can take it meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def test_unreachable_broker_at_start_exits_nonzero_after_the_deadline(tmp_path: Path) -> None:
    with _held_port() as port:
        r = subprocess.run(
            [sys.executable, "-m", "stfm.cli", "run", "--fresh", "--bootstrap-servers",
             f"127.0.0.1:{port}", "--set", "kafka.connect_timeout_s=3"],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 3, r.stderr[-2000:]
    assert f"broker at 127.0.0.1:{port} not reachable after 3s" in r.stderr
    assert "retrying in" in r.stderr                 # it did retry, and said so


def _every_step_once(forecasts: dict[bytes, bytes], rec: Recording) -> None:
    """Every sensor of ``rec`` forecast at every step from the first to the last, no gap."""
    steps: dict[str, set[int]] = {}
    for v in forecasts.values():
        f = orjson.loads(v)
        steps.setdefault(f["sensor"], set()).add(f["step"])
    assert set(steps) == set(rec.sensors)
    first = min(min(s) for s in steps.values())
    last = max(max(s) for s in steps.values())
    assert last - first + 1 >= rec.n_steps // 12 - 2
    for s, st in steps.items():
        assert st == set(range(first, last + 1)), (s, sorted(set(range(first, last + 1)) - st))


def _rows(rec: Recording, lo: int, hi: int) -> Recording:
    return rec.slice_rows(lo, hi)


@pytest.mark.heavy
def test_worker_resumes_after_the_broker_restarts(tmp_path: Path, wait_for) -> None:
    """Stop the embedded broker mid-run and start it again on the same port.

    The embedded broker keeps its data in memory, so after the restart the topics are empty:
    the test recreates them and republishes the unconsumed tail (the rows the worker had not
    read when the broker stopped: it had read all of the first part). So that the tail gets
    the offsets it would have had on a broker that keeps its log, the already consumed first
    part is published again before it; the worker must resume at its own position (the
    first tail offset) and not read the first part twice. The worker is paused (SIGSTOP)
    while the broker comes back and is refilled, so it never meets the broker half-filled.
    """
    rec, _ = simulate(SimConfig(n_sensors=8, n_days=3, seed=4, n_events=0))
    split = int(rec.n_steps * 0.6) // 12 * 12
    head = _rows(rec, 0, split)
    broker = EmbeddedBroker().start()
    port = broker.port
    bs = broker.bootstrap_servers
    topics = {k: f"{k}-x" for k in ("readings", "events", "forecasts", "alerts", "dead-letter")}
    cfg = tmp_path / "w.toml"
    store = tmp_path / "store"
    cfg.write_text(
        "[kafka]\n" + "".join(f'{k.replace("-", "_")}_topic = "{v}"\n' for k, v in topics.items())
        + 'max_batch = 300\nretry_backoff_max_s = 1\n'
        + f'[checkpoint]\ndir = "{store}"\nevery_steps = 4\n')
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
             "--status-every", "0.5", "--summary", str(tmp_path / "summary.json")],
            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        ckpts = CheckpointStore(store, f"g-faults/{topics['readings']}-0")

        def head_checkpointed() -> bool:
            ck = ckpts.paths() and CheckpointStore.read(ckpts.paths()[-1])
            return bool(ck) and ck.offsets.get(TP(topics["readings"], 0)) == n_head

        # the head fully processed; a checkpoint is written after its outputs were acked
        wait_for(head_checkpointed, "the worker to finish the first part",
                 procs=((proc, log),))
        forecasts.update((k, v) for k, v, _, _ in read_topic(bs, topics["forecasts"]))
        seen = len(log.read_text())
        broker.stop()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hold:
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # past TIME_WAIT
            hold.bind(("127.0.0.1", port))      # refused meanwhile; no one else takes it
            wait_for(lambda: any(w in log.read_text()[seen:] for w in _NOTICED),
                     "the worker to notice the broker gone", procs=((proc, log),))
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            broker.start()
            ensure_topics(bs, list(topics.values()))
            publish_recording(rec, bs, topic=topics["readings"], events_topic=topics["events"],
                              progress=False)      # first part (offsets only) + tail
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: f'"messages":{rec.values.size},' in log.read_text(),
                 "the worker to read the tail", procs=((proc, log),))
        proc.terminate()                        # checkpoints, then exits
        assert proc.wait(600) == 0, log.read_text()[-3000:]
        forecasts.update((k, v) for k, v, _, _ in read_topic(bs, topics["forecasts"]))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        broker.stop()
    assert "resuming readings-x-0 at offset" in log.read_text()
    _every_step_once(forecasts, rec)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["worker"]["messages"] == rec.values.size      # the first part read once
    assert summary["patcher"]["duplicates"] == summary["patcher"]["late"] == 0



@pytest.mark.heavy
@pytest.mark.parametrize("checkpoints", [True, False])
def test_a_worker_outlives_a_broker_that_restarts_empty(tmp_path: Path, wait_for,
                                                        checkpoints: bool) -> None:
    """The broker restarts empty (in memory) and only the new readings are published: the
    topic restarts at offset 0, far below the worker's position. The worker finds its
    position past the partition's end (an error, counted), reads the partition from its
    start (``kafka.offset_out_of_range = earliest``) and keeps its in-memory state: every
    step of every sensor forecast, no gap, and the steps closed count both parts (a dropped
    state would count only the second). With and without checkpoints."""
    rec, _ = simulate(SimConfig(n_sensors=6, n_days=2, seed=5, n_events=0))
    split = int(rec.n_steps * 0.6) // 12 * 12
    head, tail = rec.slice_rows(0, split), rec.slice_rows(split, rec.n_steps)
    n_head, n_tail = head.values.size, tail.values.size
    assert n_tail < n_head
    broker = EmbeddedBroker().start()
    port, bs = broker.port, broker.bootstrap_servers
    topics = {k: f"{k}-y" for k in ("readings", "events", "forecasts", "alerts", "dead-letter")}
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        "[kafka]\n" + "".join(f'{k.replace("-", "_")}_topic = "{v}"\n' for k, v in topics.items())
        + 'max_batch = 300\nretry_backoff_max_s = 1\n'
        + (f'[checkpoint]\ndir = "{tmp_path / "store"}"\nevery_steps = 4\n' if checkpoints
           else ""))
    log = tmp_path / "worker.log"
    forecasts: dict[bytes, bytes] = {}
    proc = None
    try:
        publish_recording(head, bs, topic=topics["readings"], events_topic=topics["events"],
                          progress=False)
        proc = subprocess.Popen(
            [sys.executable, "-m", "stfm.cli", "run", "--config", str(cfg),
             "--bootstrap-servers", bs, "--group-id", "g-empty", "--fresh",
             "--status-every", "0.5", "--summary", str(tmp_path / "summary.json")],
            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        wait_for(lambda: f'"messages":{n_head},' in log.read_text()
                 and '"readings-y-0":0' in log.read_text(),
                 "the worker to read the first part", procs=((proc, log),))
        # its outputs are acknowledged before the next status line
        seen = len(log.read_text())
        wait_for(lambda: '"lag"' in log.read_text()[seen:], "one more status line",
                 procs=((proc, log),))
        forecasts.update((k, v) for k, v, _, _ in read_topic(bs, topics["forecasts"]))
        seen = len(log.read_text())
        broker.stop()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hold:
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hold.bind(("127.0.0.1", port))
            wait_for(lambda: any(w in log.read_text()[seen:] for w in _NOTICED),
                     "the worker to notice the broker gone", procs=((proc, log),))
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            broker.start()
            ensure_topics(bs, list(topics.values()))
            publish_recording(tail, bs, topic=topics["readings"], events_topic=topics["events"],
                              progress=False)      # the new readings only, from offset 0
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: f'"messages":{n_head + n_tail},' in log.read_text(),
                 "the worker to read the new readings", procs=((proc, log),))
        proc.terminate()
        assert proc.wait(600) == 0, log.read_text()[-3000:]
        forecasts.update((k, v) for k, v, _, _ in read_topic(bs, topics["forecasts"]))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        broker.stop()
    text = log.read_text()
    assert "is outside the partition" in text and "reading it from its start" in text, text[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["worker"]["offsets_out_of_range"] >= 1
    assert summary["worker"]["messages"] == n_head + n_tail
    _every_step_once(forecasts, rec)
    assert summary["patcher"]["closed_steps"] >= rec.n_steps // 12 - 1, summary["patcher"]
