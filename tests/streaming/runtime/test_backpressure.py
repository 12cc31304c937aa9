"""Backpressure: a backlog far larger than the worker's batches waits on the broker, not in
the worker's memory. The worker only fetches when it is ready for the next batch (at most
``kafka.max_batch`` records), and the Kafka client keeps at most one fetched chunk per
partition, so its memory does not grow with the backlog; nothing is lost and the lag drains.

The backlog exists by construction, whatever the machine's speed: it is published before the
worker starts. Two workers run the same configuration from scratch, one on a short input and
one on that input followed by a backlog ``BACKLOG`` times larger. Bound: the second one's peak
resident memory exceeds the first one's by at most ``GROWTH_MB``, a fraction of what the
backlog would take held as records (about 500 bytes each).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from connectors.kafka_io import ensure_topics
from connectors.recordings import Recording
from replay.publish import publish_recording

ROOT = Path(__file__).resolve().parents[3]
SENSORS = 200
INTERVAL_MS = 300_000
MAX_BATCH = 10_000
GROWTH_MB = 100


def _recording(steps: int) -> Recording:
    rng = np.random.default_rng(7)
    ts = 1_767_225_600_000 + INTERVAL_MS * np.arange(steps, dtype=np.int64)
    day = np.sin(2 * np.pi * (ts % 86_400_000) / 86_400_000)[:, None]
    values = 50 + 10 * day + rng.normal(0, 1, (steps, SENSORS))
    return Recording(ts, [f"s{i:03d}" for i in range(SENSORS)], values, interval_ms=INTERVAL_MS)


def _drain(bs: str, unique: str, tmp_path: Path, rec: Recording, name: str) -> dict:
    """Publish ``rec`` to fresh topics, then run a worker until it has read all of it."""
    topics = {k: f"{k}-{name}-{unique}" for k in ("readings", "events", "forecasts", "alerts",
                                                 "dead-letter")}
    ensure_topics(bs, list(topics.values()))
    publish_recording(rec, bs, topic=topics["readings"], events_topic=topics["events"],
                      progress=False)
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text("[kafka]\n" + "".join(f'{k.replace("-", "_")}_topic = "{v}"\n'
                                          for k, v in topics.items())
                   # no learning: what is measured is the input path, not the model
                   + f"max_batch = {MAX_BATCH}\n[model]\nlearn = false\nhorizon = 4\n")
    log, summary = tmp_path / f"{name}.log", tmp_path / f"{name}.json"
    with open(log, "wb") as out:
        rc = subprocess.run(
            [sys.executable, "-m", "stfm.cli", "run", "--config", str(cfg),
             "--bootstrap-servers", bs, "--group-id", f"g-{name}-{unique}", "--fresh",
             "--interval-ms", str(INTERVAL_MS), "--idle-exit", "0.5",
             "--summary", str(summary)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode
    assert rc == 0, log.read_text()[-3000:]
    worker = json.loads(summary.read_text())["worker"]
    n = rec.values.size
    # nothing lost, nothing read twice, the lag drained, in batches of at most max_batch
    assert worker["readings_accepted"] == n and worker["messages"] == n
    assert worker["dead_letters"] == 0
    assert worker["lag"] == {f"{topics['readings']}-0": 0, f"{topics['events']}-0": 0}
    assert worker["batches"] >= n // MAX_BATCH
    return worker


@pytest.mark.parametrize("backlog", [pytest.param(20, id="short"),
                                     pytest.param(100, id="long", marks=pytest.mark.slow)])
@pytest.mark.heavy
def test_memory_does_not_grow_with_the_backlog(broker, unique: str, tmp_path: Path,
                                               backlog: int) -> None:
    bs = broker.bootstrap_servers
    short = _recording(120)
    small = _drain(bs, unique, tmp_path, short, "small")
    large = _drain(bs, unique, tmp_path, _recording(120 * (1 + backlog)), "large")
    held_mb = 500 * SENSORS * 120 * backlog / 2**20
    print(f"backlog {SENSORS * 120 * backlog:,} readings (~{held_mb:.0f} MB held as records); "
          f"peak RSS {small['peak_rss_mb']:.0f} MB on {short.values.size:,} readings, "
          f"{large['peak_rss_mb']:.0f} MB with the backlog")
    assert GROWTH_MB < held_mb / 2       # the bound would catch a worker that held it
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < GROWTH_MB, (small, large)
