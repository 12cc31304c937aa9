#!/usr/bin/env python
"""Scaling of one worker with the number of sensors (issue 17): steady state, per stage.

``python benchmarks/throughput.py --sensors 200,2000,10000,50000`` runs this (or run it
directly). For every size, in one process:

(1) **Core path at steady state** (no Kafka): readings of a simulated network (a daily sine
    per sensor + noise, 5-minute grid), encoded exactly as ``stfm replay publish`` does, are
    generated step by step in fetch-sized batches (20,000 records, as the worker's
    ``kafka.max_batch``) and run through ``process_records`` with the model ``stfm run``
    serves by default (the packaged checkpoint). Generation is not timed. The first
    ``drift.warmup_steps`` + 2 closed steps are the warm-up; the next ``--steady-steps`` are
    measured: readings/s, ms per closed step by stage (decode + validation, patcher,
    forecaster (model forward, experts, learn step), anomaly scorer, drift, alert gate, rest),
    and RSS (at the start of the steady state, its growth over it, and the peak).
(2) **Pipeline vs raw aiokafka** (sizes up to ``--kafka-max-sensors``): the same readings for
    warm-up + steady steps published to an embedded broker, consumed raw by aiokafka
    (``getmany``) and by the live worker (``LiveWorker``), with the timing of
    ``benchmarks/throughput.py`` (first non-empty fetch -> last outputs acknowledged), so the
    ratio covers the warm-up too. Larger sizes are left out of (2) by default: at 50,000
    sensors it is 20 M messages (~2 GB in the in-memory broker, ~10 min more here).

    python benchmarks/scaling.py --sensors 200,2000,10000,50000 [--steady-steps 8]
        [--kafka-max-sensors 10000] [--results benchmarks/RESULTS.md] [--no-record]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchmarks._report import publish  # noqa: E402
from streaming.config import StreamConfig  # noqa: E402
from streaming.runtime.microbatch import Record, process_records  # noqa: E402

START_MS = 1_767_571_200_000        # 2026-01-05T00:00Z
DAY_MS = 86_400_000
BATCH = 20_000
GOALS = {"rate_10k": 100_000, "ratio": 0.3, "rss_50k_mb": 2048, "drift_gate_ms_10k": 10.0}


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sensor_ids(n_sensors: int) -> list[bytes]:
    return [f"s{j:05d}".encode() for j in range(n_sensors)]


def readings(n_sensors: int, interval_ms: int, seed: int = 0) -> Iterator[list[bytes]]:
    """Grid point after grid point, every sensor's reading (in ``sensor_ids`` order) as the
    publisher encodes it."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(40.0, 70.0, n_sensors)
    amp = rng.uniform(5.0, 20.0, n_sensors)
    phase = rng.uniform(0.0, 2 * np.pi, n_sensors)
    prefixes = [b'{"sensor":"' + s + b'","ts":' for s in sensor_ids(n_sensors)]
    t = 0
    while True:
        ts = START_MS + t * interval_ms
        day = 2 * np.pi * ((ts - START_MS) % DAY_MS) / DAY_MS
        vals = np.round(level + amp * np.sin(day + phase) + rng.normal(0, 1.5, n_sensors), 3)
        tb = str(ts).encode()
        yield [p + tb + b',"value":' + repr(v).encode() + b"}"
               for p, v in zip(prefixes, vals.tolist(), strict=True)]
        t += 1


def batches(n_sensors: int, interval_ms: int) -> Iterator[list[Record]]:
    """Fetch-sized batches of records, in topic order (offsets counted)."""
    off = 0
    buf: list[bytes] = []
    for row in readings(n_sensors, interval_ms):
        buf.extend(row)
        while len(buf) >= BATCH:
            chunk, buf = buf[:BATCH], buf[BATCH:]
            yield [Record("readings", 0, off + i, None, v) for i, v in enumerate(chunk)]
            off += len(chunk)


class StageTimer:
    """Seconds per stage, by wrapping the core's stage objects' methods (instance
    attributes shadow the methods, so the core calls the timed versions)."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}

    def wrap(self, obj: Any, method: str, name: str) -> None:
        fn = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.s[name] = self.s.get(name, 0.0) + time.perf_counter() - t
        setattr(obj, method, timed)


def build_core(cfg: StreamConfig) -> Any:
    from streaming.pipeline.factory import build_core as build
    from streaming.pipeline.factory import resolve_checkpoint

    return build(cfg, resolve_checkpoint(cfg, None, False))


def core_path(n_sensors: int, steady_steps: int) -> dict[str, Any]:
    """(1): steady-state rate, ms per step by stage, RSS."""
    from streaming.runtime import microbatch

    cfg = StreamConfig()
    gc.collect()
    rss0 = rss_mb()
    core = build_core(cfg)
    warm = cfg.drift.warmup_steps(cfg.patching.patch_len) + 2
    tm = StageTimer()
    decode = microbatch.decode_readings
    timed_decode = {"s": 0.0}

    def decode_timed(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return decode(*a, **k)
        finally:
            timed_decode["s"] += time.perf_counter() - t

    for obj, method, name in ((core.patcher, "admit", "patcher"),
                              (core.patcher, "close_ready", "patcher"),
                              (core.forecaster, "predict", "forecaster: forward + experts"),
                              (core.forecaster, "after_step", "forecaster: learn step"),
                              (core.forecaster, "realize", "forecaster: score realized"),
                              (core.scorer, "update", "anomaly scorer"),
                              (core.drift, "update", "drift"),
                              (core.gate, "update", "alert gate"),
                              (core.gate, "name_events", "alert gate")):
        tm.wrap(obj, method, name)
    microbatch.decode_readings = decode_timed
    n_read = steady_read = 0
    steady_s = 0.0
    started = None
    rss_start = 0.0
    try:
        for records in batches(n_sensors, cfg.patching.interval_ms):
            closed = core.patcher.stats.closed_steps
            if started is None and closed >= warm:
                started = closed
                tm.s.clear()
                timed_decode["s"] = 0.0
                gc.collect()
                rss_start = rss_mb()
            t = time.perf_counter()
            process_records(core, records, cfg)
            dt = time.perf_counter() - t
            n_read += len(records)
            if started is not None:
                steady_s += dt
                steady_read += len(records)
                if core.patcher.stats.closed_steps - started >= steady_steps:
                    break
    finally:
        microbatch.decode_readings = decode
    steps = core.patcher.stats.closed_steps - (started or 0)
    stages = {"decode + validate": timed_decode["s"], **tm.s}
    stages["rest (encode outputs, signals, window, quality, ...)"] = (
        steady_s - sum(stages.values()))
    gc.collect()
    return {"sensors": n_sensors, "rate": steady_read / steady_s, "steps": steps,
            "warm_steps": warm, "readings": n_read,
            "ms_per_step": {k: 1000 * v / steps for k, v in stages.items()},
            "rss_before_mb": rss0, "rss_start_mb": rss_start, "rss_growth_mb": rss_mb() - rss_start,
            "peak_mb": peak_mb(), "model": core.model.version}


def pipeline_ratio(n_sensors: int, steps: int) -> dict[str, Any]:
    """(2): raw aiokafka vs the live worker over the same topic."""
    import throughput as tp

    from connectors.broker import EmbeddedBroker
    from connectors.kafka_io import ensure_topics
    from replay.publish import FLUSH_EVERY, BatchSender

    cfg0 = StreamConfig()
    points = steps * cfg0.patching.patch_len
    with EmbeddedBroker() as broker:
        bs = broker.bootstrap_servers
        cfg = tp.stream_config(bs, f"scale{n_sensors}", cfg0.patching.interval_ms, 1)
        k = cfg.kafka
        ensure_topics(bs, [k.readings_topic, k.events_topic] + tp.output_topics(cfg))
        keys = sensor_ids(n_sensors)
        n = 0
        t = time.perf_counter()
        with BatchSender(bs) as sender:
            for i, row in enumerate(readings(n_sensors, cfg.patching.interval_ms)):
                if i >= points:
                    break
                for key, v in zip(keys, row, strict=True):
                    sender.add(k.readings_topic, key, v)
                if sender.buffered >= FLUSH_EVERY:
                    sender.flush()
                n += len(row)
            sender.flush()
        pub_s = time.perf_counter() - t
        raw = asyncio.run(tp._bench_aiokafka(bs, k.readings_topic, 1, n))
        pipe = tp.bench_pipeline(cfg, n, core=build_core(cfg))
    return {"readings": n, "publish_s": pub_s, "raw_rate": raw.rate, "pipe_rate": pipe.rate,
            "ratio": pipe.rate / raw.rate, "pipe_extra": pipe.extra}


def render(rows: list[dict[str, Any]], kafka: dict[int, dict[str, Any]], args: Any,
           when: datetime, seconds: float) -> str:
    stage_names = list(rows[0]["ms_per_step"]) if rows else []
    out = [f"## Scaling with the number of sensors ({when:%Y-%m-%d %H:%M} UTC, issue 17)", "",
           f"`python benchmarks/throughput.py --sensors {args.sensors} --steady-steps "
           f"{args.steady_steps} --kafka-max-sensors {args.kafka_max_sensors}` ({seconds / 60:.0f}"
           f" min; nproc {os.cpu_count()}, 1 torch thread, the packaged checkpoint, defaults: "
           "5-minute grid, 12 points per step, drift page_hinkley on 3 channels)", "",
           "| sensors | core readings/s (steady) | steps measured (after warm-up) | "
           "pipeline readings/s | raw aiokafka readings/s | pipeline / raw | RSS at steady "
           "start (MB) | RSS growth over it (MB) | peak RSS (MB) |",
           "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        kf = kafka.get(r["sensors"])
        kcols = (f"{kf['pipe_rate']:,.0f} | {kf['raw_rate']:,.0f} | {kf['ratio']:.2f}" if kf
                 else "not run | not run | -")
        out.append(f"| {r['sensors']:,} | {r['rate']:,.0f} | {r['steps']} (after "
                   f"{r['warm_steps']}) | {kcols} | {r['rss_start_mb']:,.0f} | "
                   f"{r['rss_growth_mb']:+,.0f} | {r['peak_mb']:,.0f} |")
    out += ["", "Milliseconds per closed step, by stage (steady state, core path):", "",
            "| stage | " + " | ".join(f"{r['sensors']:,}" for r in rows) + " |",
            "|---|" + "---:|" * len(rows)]
    for name in stage_names:
        out.append(f"| {name} | " + " | ".join(f"{r['ms_per_step'].get(name, 0.0):.1f}"
                                              for r in rows) + " |")
    out.append("| **all** | " + " | ".join(f"{sum(r['ms_per_step'].values()):.1f}"
                                           for r in rows) + " |")
    by = {r["sensors"]: r for r in rows}
    goals = []
    if 10_000 in by:
        r = by[10_000]
        worker = kafka[10_000]["pipe_rate"] if 10_000 in kafka else None
        ok = worker is not None and worker >= GOALS["rate_10k"]
        goals.append(f"- >= 100,000 readings/s per worker at 10,000 sensors: "
                     f"{'**met**' if ok else '**not met**'} ("
                     + (f"the worker through Kafka {worker:,.0f}/s; " if worker else
                        "not run through Kafka; ")
                     + f"the core path alone {r['rate']:,.0f}/s)")
        dg = r["ms_per_step"].get("drift", 0) + r["ms_per_step"].get("alert gate", 0)
        goals.append(f"- drift + alert gate <= 10 ms per step at 10,000 sensors: "
                     f"{'**met**' if dg <= GOALS['drift_gate_ms_10k'] else '**not met**'} "
                     f"({dg:.1f} ms)")
    if kafka:
        worst = min(kafka.values(), key=lambda k: k["ratio"])
        goals.append(f"- pipeline >= 0.3x raw aiokafka at every size: "
                     f"{'**met**' if worst['ratio'] >= GOALS['ratio'] else '**not met**'} "
                     f"(lowest {worst['ratio']:.2f}; sizes above {args.kafka_max_sensors:,} "
                     "not run through Kafka)")
    if 50_000 in by:
        r = by[50_000]
        goals.append(f"- RSS < 2 GB at 50,000 sensors: "
                     f"{'**met**' if r['peak_mb'] < GOALS['rss_50k_mb'] else '**not met**'} "
                     f"(peak {r['peak_mb']:,.0f} MB"
                     + (", this process after the smaller sizes)" if len(rows) > 1 else
                        ", a process of its own)"))
    out += ["", *goals, ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sensors", default="200,2000,10000,50000")
    ap.add_argument("--steady-steps", type=int, default=8,
                    help="closed steps measured after the drift warm-up")
    ap.add_argument("--kafka-max-sensors", type=int, default=10_000,
                    help="largest size also run through the broker (pipeline vs raw)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sensors.split(",") if s.strip()]
    when = datetime.now(UTC)
    t0 = time.perf_counter()
    rows, kafka = [], {}
    for n in sizes:
        r = core_path(n, args.steady_steps)
        rows.append(r)
        print(f"[scale] {n:,} sensors: core {r['rate']:,.0f} readings/s over {r['steps']} "
              f"steady steps; ms/step " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                    r["ms_per_step"].items())
              + f"; RSS {r['rss_start_mb']:.0f} MB (+{r['rss_growth_mb']:.0f})", flush=True)
        if n <= args.kafka_max_sensors:
            kf = pipeline_ratio(n, r["warm_steps"] + args.steady_steps)
            kafka[n] = kf
            print(f"[scale] {n:,} sensors via Kafka: {kf['readings']:,} readings, pipeline "
                  f"{kf['pipe_rate']:,.0f}/s vs raw {kf['raw_rate']:,.0f}/s = "
                  f"{kf['ratio']:.2f}", flush=True)
    text = render(rows, kafka, args, when, time.perf_counter() - t0)
    publish(text, args.results, not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
