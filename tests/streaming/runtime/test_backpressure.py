"""Backpressure: a producer outpaces the worker; the worker's memory stays bounded and it
reports its lag. The worker only fetches when it is ready for the next batch, and the Kafka
client keeps at most one fetched chunk per partition, so a backlog stays on the broker.

Bound: the worker's peak resident memory may exceed its memory once warmed up (after its
first batches) by at most ``GROWTH_MB`` while the backlog grows by millions of messages.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from connectors.kafka_io import ensure_topics, make_producer

ROOT = Path(__file__).resolve().parents[3]
GROWTH_MB = 250


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _flood(bs: str, topic: str, seconds: float, sensors: int, stop: threading.Event,
           sent: list[int]) -> None:
    producer = make_producer(bs, linger_ms=20, batch_size=512 * 1024)
    t0 = time.monotonic()
    ts = 1_767_225_600_000
    n = 0
    keys = [f"s{i:03d}".encode() for i in range(sensors)]
    while time.monotonic() - t0 < seconds and not stop.is_set():
        for i, key in enumerate(keys):
            producer.send(topic, b'{"sensor": "%s", "ts": %d, "value": %d.5}' % (key, ts, i % 7),
                          key=key)
        n += sensors
        ts += 300_000
    producer.flush()
    producer.close()
    sent.append(n)


@pytest.mark.parametrize("seconds", [pytest.param(10.0, id="short"),
                                     pytest.param(60.0, id="minute", marks=pytest.mark.slow)])
def test_memory_stays_bounded_while_the_producer_outpaces_the_worker(
        broker, unique: str, tmp_path: Path, seconds: float) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the worker's resident memory")
    bs = broker.bootstrap_servers
    topics = {k: f"{k}-{unique}" for k in ("readings", "events", "forecasts", "alerts",
                                          "dead-letter")}
    ensure_topics(bs, list(topics.values()))
    cfg = tmp_path / "w.toml"
    cfg.write_text("[kafka]\n" + "".join(f'{k.replace("-", "_")}_topic = "{v}"\n'
                                          for k, v in topics.items())
                   # one step per reading round: the model runs for every round the producer
                   # sends, so it cannot keep up
                   + "[patching]\npatch_len = 1\n[model]\nlearn_batch = 0\nhorizon = 4\n")
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stfm.cli", "run", "--config", str(cfg),
         "--bootstrap-servers", bs, "--group-id", f"g-{unique}", "--fresh",
         "--status-every", "1", "--summary", str(tmp_path / "s.json")],
        cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    stop = threading.Event()
    sent: list[int] = []
    flood = threading.Thread(target=_flood, args=(bs, topics["readings"], seconds, 200, stop,
                                                  sent))
    try:
        deadline = time.monotonic() + 60
        while "status" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        flood.start()
        time.sleep(min(5.0, seconds / 3))           # warmed up: model built, first batches
        base = _rss_mb(proc.pid)
        peak = base
        while flood.is_alive():
            peak = max(peak, _rss_mb(proc.pid))
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        flood.join()
    finally:
        stop.set()
        proc.terminate()
        proc.wait(60)
    text = log.read_text()
    lags = [sum(json.loads(m)["lag"].values())
            for m in re.findall(r"status (\{.*\})", text)]
    # the backlog when the flood ended: a slow machine may log no status between batches
    # (one per batch), so the lag at exit counts too
    lags.append(sum(json.loads((tmp_path / "s.json").read_text())["worker"]["lag"].values()))
    print(f"sent {sent[0]:,} readings in {seconds:.0f}s; worker RSS {base:.0f} MB warm, "
          f"peak {peak:.0f} MB; max reported lag {max(lags):,}")
    assert max(lags) > 10_000, "the producer did not outpace the worker"
    assert peak - base < GROWTH_MB, (base, peak)
