#!/usr/bin/env python
"""A consumer group of two workers vs one worker on a 2-partition topic (issue 17).

The readings of a simulated network (``benchmarks/throughput.py``'s recording: a daily sine
per sensor + noise, 5-minute grid) are published to a 2-partition readings topic on an
embedded broker first (not timed), keyed by sensor as ``stfm replay publish`` does. Then
``stfm run`` processes them (the packaged model, checkpoints on so that a region handed
over keeps its state) as (a) one worker owning both regions and (b) two workers of one
group started together (the first to join takes both regions, the second takes one over
from its checkpoint when it joins: that handover is inside the measured time). Rate =
readings published / (last batch processed - first batch processed, over all workers), from
each worker's ``--summary``; process start-up and group joining are outside it.

    python benchmarks/group.py [--sensors 2000] [--steps 48] [--no-record]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchmarks._report import publish  # noqa: E402


def run_group(bs: str, cfg_path: Path, workers: int, work: Path, interval_ms: int
              ) -> dict[str, Any]:
    group = f"group-{uuid.uuid4().hex[:8]}"
    procs = []
    for w in range(workers):
        log = work / f"{group}-{w}.log"
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "stfm.cli", "run", "--config", str(cfg_path),
             "--bootstrap-servers", bs, "--group-id", group, "--interval-ms", str(interval_ms),
             "--idle-exit", "6", "--summary", str(log.with_suffix(".json"))],
            cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT), log))  # noqa: SIM115
    for p, log in procs:
        if p.wait(timeout=3600) != 0:
            raise RuntimeError(f"worker failed: {log.read_text()[-3000:]}")
    stats = [orjson.loads(log.with_suffix(".json").read_bytes())["worker"] for _, log in procs]
    active = [s for s in stats if s["messages"]]
    first = min(s["first_processed"] for s in active)
    last = max(s["last_processed"] for s in active)
    return {"workers": workers, "seconds": last - first,
            "messages": [s["messages"] for s in stats],
            "forecasts": sum(s["forecasts"] for s in stats),
            "checkpoints": sum(s["checkpoints"] for s in stats)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sensors", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=48, help="closed steps of data (12 points)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    from throughput import make_recording

    from connectors.broker import EmbeddedBroker
    from connectors.kafka_io import ensure_topics, make_producer

    interval = 300_000
    rec = make_recording(args.sensors, args.steps * 12, interval)
    runs = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        bs = broker.bootstrap_servers
        work = Path(tmp)
        topic = f"group-{uuid.uuid4().hex[:6]}"
        ensure_topics(bs, [f"{topic}-readings", f"{topic}-events"], partitions=2)
        producer = make_producer(bs)
        n = 0
        t0 = time.perf_counter()
        keys = [s.encode() for s in rec.sensors]
        for i, ts in enumerate(rec.timestamps.tolist()):
            for key, v in zip(keys, rec.values[i].tolist(), strict=True):
                producer.send(f"{topic}-readings", orjson.dumps(
                    {"sensor": key.decode(), "ts": ts, "value": v}), key=key)
                n += 1
        producer.flush()
        producer.close()
        pub_s = time.perf_counter() - t0
        for workers in (1, 2):
            cfg_path = work / f"w{workers}.toml"
            cfg_path.write_text(
                f'[kafka]\nreadings_topic = "{topic}-readings"\nevents_topic = "{topic}-events"\n'
                f'forecasts_topic = "{topic}-forecasts-{workers}"\n'
                f'alerts_topic = "{topic}-alerts-{workers}"\n'
                f'dead_letter_topic = "{topic}-dead-letter-{workers}"\npartitions = 2\n'
                f'[checkpoint]\ndir = "{work / f"store{workers}"}"\n')
            r = run_group(bs, cfg_path, workers, work, interval)
            r["rate"] = n / r["seconds"]
            runs.append(r)
            print(r, flush=True)
    one = runs[0]["rate"]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## A consumer group: two workers vs one on a 2-partition topic "
             f"(benchmarks/group.py, "
             f"issue 17) — {now}", "",
             f"`python benchmarks/group.py --sensors {args.sensors} --steps {args.steps}` "
             f"({n:,} readings of {args.sensors:,} sensors, {args.steps} steps of 12 points, "
             f"published first in {pub_s:.0f} s; 2 cores shared by the workers and the "
             "broker; the packaged model; checkpoints on)", "",
             "| workers | readings/s (all workers) | vs one worker | messages per worker | "
             "forecasts | checkpoints |", "|---:|---:|---:|---|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['workers']} | {r['rate']:,.0f} | {r['rate'] / one:.2f}x | "
                     f"{' / '.join(f'{m:,}' for m in r['messages'])} | {r['forecasts']:,} | "
                     f"{r['checkpoints']} |")
    publish("\n".join(lines) + "\n", args.results, record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
