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
    ``benchmarks/kafka_phases.py`` (first non-empty fetch -> last outputs acknowledged), so
    the ratio covers the warm-up too. Larger sizes are left out of (2) by default: at 50,000
    sensors it is 20 M messages (~2 GB in the in-memory broker, ~10 min more here).

Recording merges rows by size: the section keeps the recorded rows of the sizes this run did
not measure, each with its own run (``benchmarks/common.py``); the goals are read from the
merged table.

    python benchmarks/scaling.py --sensors 200,2000,10000,50000 [--steady-steps 8]
        [--kafka-max-sensors 10000] [--results benchmarks/RESULTS.md] [--no-record]
"""

from __future__ import annotations

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

from benchmarks import common  # noqa: E402
from benchmarks.kafka_phases import (  # noqa: E402
    BATCH,
    DAY_MS,
    START_MS,
    bench_aiokafka,
    bench_pipeline,
    output_topics,
    stream_config,
)
from streaming.config import StreamConfig  # noqa: E402
from streaming.runtime.microbatch import Record, process_records  # noqa: E402

GOALS = {"rate_10k": 100_000, "ratio": 0.3, "rss_50k_mb": 2048, "drift_gate_ms_10k": 10.0}
KEY = "scaling"
HEADER = ["sensors", "core readings/s (steady)", "via Kafka readings/s",
          "raw aiokafka readings/s", "pipeline / raw", "RSS steady start (MB)",
          "peak RSS (MB)", "run"]


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
                              # the default change detector (drift.detector = bocpd)
                              (core.changes, "update", "drift"),
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
    from connectors.broker import EmbeddedBroker
    from connectors.kafka_io import ensure_topics
    from replay.publish import FLUSH_EVERY, BatchSender

    cfg0 = StreamConfig()
    points = steps * cfg0.patching.patch_len
    with EmbeddedBroker() as broker:
        bs = broker.bootstrap_servers
        cfg = stream_config(bs, f"scale{n_sensors}", cfg0.patching.interval_ms, 1)
        k = cfg.kafka
        ensure_topics(bs, [k.readings_topic, k.events_topic] + output_topics(cfg))
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
        raw = asyncio.run(bench_aiokafka(bs, k.readings_topic, 1, n))
        pipe = bench_pipeline(cfg, n, core=build_core(cfg))
    return {"readings": n, "publish_s": pub_s, "raw_rate": raw.rate, "pipe_rate": pipe.rate,
            "ratio": pipe.rate / raw.rate, "pipe_extra": pipe.extra}


def merged_rows(rows: list[dict[str, Any]], kafka: dict[int, dict[str, Any]], run: str,
                recorded: dict[tuple[str, ...], list[str]]) -> list[list[str]]:
    """This run's rows, and the recorded rows of the sizes it did not measure (with their
    own run cell), by size."""
    new = {}
    for r in rows:
        kf = kafka.get(r["sensors"])
        new[(f"{r['sensors']:,}",)] = [
            f"{r['sensors']:,}", f"{r['rate']:,.0f}",
            *((f"{kf['pipe_rate']:,.0f}", f"{kf['raw_rate']:,.0f}", f"{kf['ratio']:.2f}")
              if kf else ("not run", "not run", "–")),
            f"{r['rss_start_mb']:,.0f}", f"{r['peak_mb']:,.0f}", run]
    merged = {**{k: v for k, v in recorded.items() if len(v) == len(HEADER)}, **new}
    return sorted(merged.values(), key=lambda c: common.number(c[0]) or 0)


def goals(table: list[list[str]]) -> tuple[list[str], list[bool | None]]:
    """The goal lines (issue 17) over the merged rows, and per goal met / not / unmeasured."""
    by = {common.number(c[0]): c for c in table}
    lines, oks = [], []
    r = by.get(10_000)
    via = common.number(r[2]) if r else None
    ok = None if r is None else via is not None and via >= GOALS["rate_10k"]
    oks.append(ok)
    lines.append("- >= 100,000 readings/s per worker at 10,000 sensors: " + (
        "not measured" if r is None else f"{common.verdict(bool(ok))} through Kafka ("
        + (f"{r[2]}/s" if via is not None else "not run") + f"); the core path alone {r[1]}/s."))
    ratios = [(c[0], common.number(c[4])) for c in table]
    run = [x for _, x in ratios if x is not None]
    ok = bool(run) and all(x >= GOALS["ratio"] for x in run)
    oks.append(ok if run else None)
    skipped = [k for k, x in ratios if x is None]
    lines.append("- Pipeline >= 0.3x raw aiokafka at every size: " + (
        "not measured" if not run else common.verdict(ok) + " (" + " / ".join(
            f"{x:.2f}" for x in run) + (f"; not run through Kafka at {', '.join(skipped)}"
                                       if skipped else "") + ")."))
    r = by.get(50_000)
    ok = None if r is None else (common.number(r[6]) or 0) < GOALS["rss_50k_mb"]
    oks.append(ok)
    lines.append("- RSS < 2 GB at 50,000 sensors: " + (
        "not measured" if r is None else f"{common.verdict(bool(ok))} (peak {r[6]} MB)."))
    return lines, oks


def render(rows: list[dict[str, Any]], kafka: dict[int, dict[str, Any]], args: Any,
           when: datetime, seconds: float) -> tuple[common.Section, str]:
    """The section (this run's sizes merged with the recorded ones) and the detail (this
    run's per-stage timings)."""
    run = f"{when:%Y-%m-%d %H:%M}, {common.code_version(short=True)}"
    table = merged_rows(rows, kafka, run, common.recorded_rows(args.results, KEY))
    goal_lines, oks = goals(table)
    warm = rows[0]["warm_steps"] if rows else 0
    body = ["1 torch thread, the packaged checkpoint, defaults (5-minute grid, 12 points per "
            f"step, drift detector {StreamConfig().drift.detector}: the stage 'drift'); "
            f"{args.steady_steps} steady steps "
            f"measured after {warm} warm-up steps; sizes up to {args.kafka_max_sensors:,} "
            "also through an embedded broker (pipeline vs raw aiokafka over the same readings, "
            "warm-up included). The rows of sizes a run did not measure are those of earlier "
            "runs (column run). Milliseconds per closed step by stage: `history/detail.md`.",
            "", *common.md_table(HEADER, table, align="rrrrrrrl"), "", "Goals (issue 17):",
            *goal_lines]
    by = {common.number(c[0]): c for c in table}
    head = []
    if 10_000 in by:
        c = by[10_000]
        head.append(f"10,000 sensors: {c[2]}/s via Kafka (core {c[1]}/s)")
    if 50_000 in by:
        head.append(f"50,000: peak RSS {by[50_000][6]} MB")
    sizes = [c[0] for c in table]
    dates = sorted({c[-1][:10] for c in table if c[-1][:4].isdigit()})
    summary = common.Summary(
        "scaling.py", f"one worker at {sizes[0]}-{sizes[-1]} sensors, steady state",
        "; ".join(head) or "; ".join(f"{c[0]}: {c[1]}/s core" for c in table),
        ">= 100k/s at 10k sensors; >= 0.3x raw at every size; RSS < 2 GB at 50k",
        "; ".join("–" if ok is None else common.index_verdict(ok) for ok in oks),
        " / ".join(dates))
    stage_names = list(rows[0]["ms_per_step"]) if rows else []
    detail = [f"Sizes of this run ({seconds / 60:.0f} min):", "",
              *common.md_table(["sensors", "core readings/s (steady)",
                                "steps measured (after warm-up)", "RSS growth over it (MB)",
                                "peak RSS (MB)"],
                               [(f"{r['sensors']:,}", f"{r['rate']:,.0f}",
                                 f"{r['steps']} (after {r['warm_steps']})",
                                 f"{r['rss_growth_mb']:+,.0f}", f"{r['peak_mb']:,.0f}")
                                for r in rows], align="rrlrr"),
              "", "Milliseconds per closed step, by stage (steady state, core path):", "",
              *common.md_table(
                  ["stage", *(f"{r['sensors']:,}" for r in rows)],
                  [*([name, *(f"{r['ms_per_step'].get(name, 0.0):.1f}" for r in rows)]
                     for name in stage_names),
                   ["**all**", *(f"{sum(r['ms_per_step'].values()):.1f}" for r in rows)]])]
    for r in rows:
        if r["sensors"] == 10_000:
            dg = r["ms_per_step"].get("drift", 0) + r["ms_per_step"].get("alert gate", 0)
            detail += ["", f"Drift + alert gate at 10,000 sensors: {dg:.1f} ms per step "
                       f"(goal <= {GOALS['drift_gate_ms_10k']:g} ms; benchmarks/drift_scale.py "
                       "measures it alone)."]
    section = common.Section(KEY, "Live stream processing",
                             "Scaling with the number of sensors (benchmarks/scaling.py)",
                             "\n".join(body), summary, when=when)
    return section, "\n".join(detail)


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--sensors", default="200,2000,10000,50000")
    ap.add_argument("--steady-steps", type=int, default=8,
                    help="closed steps measured after the drift warm-up")
    ap.add_argument("--kafka-max-sensors", type=int, default=10_000,
                    help="largest size also run through the broker (pipeline vs raw)")
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
    section, detail = render(rows, kafka, args, when, time.perf_counter() - t0)
    common.publish(section, args, detail=detail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
