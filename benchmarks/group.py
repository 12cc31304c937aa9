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

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402


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
    ap = common.parser(__doc__)
    ap.add_argument("--sensors", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=48, help="closed steps of data (12 points)")
    args = ap.parse_args(argv)

    from benchmarks.kafka_phases import make_recording
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
    one, last = runs[0]["rate"], runs[-1]["rate"]
    body = [f"{n:,} readings of {args.sensors:,} sensors, {args.steps} steps of 12 points, "
            f"published first ({pub_s:.0f} s); the packaged model; checkpoints on; the "
            f"{len(os.sched_getaffinity(0))} cores shared by the workers and the broker.", "",
            *common.md_table(["workers", "readings/s (all workers)", "vs one worker",
                              "messages per worker", "forecasts", "checkpoints"],
                             [(r["workers"], f"{r['rate']:,.0f}",
                               f"**{r['rate'] / one:.2f}x**" if r is runs[-1] else
                               f"{r['rate'] / one:.2f}x",
                               " / ".join(f"{m:,}" for m in r["messages"]), f"{r['forecasts']:,}",
                               r["checkpoints"]) for r in runs], align="rrrlrr"),
            "", "No numeric goal (issue 17 asks for the two-worker run to be reported)."]
    summary = common.Summary("group.py", f"{runs[-1]['workers']} workers vs 1 on a 2-partition "
                             "topic", f"{last / one:.2f}x ({last:,.0f} vs {one:,.0f} readings/s)",
                             "none set", "–")
    common.publish(common.Section("group", "Live stream processing",
                                  "Consumer group (benchmarks/group.py)", "\n".join(body), summary),
                   args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
