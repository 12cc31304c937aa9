#!/usr/bin/env python
"""Throughput and latency of the live pipeline against raw Kafka consumption.

One run, one embedded broker, one topic of ``--sensors x --steps`` simulated readings (default
200 x 5000 = 1,000,000), formatted exactly as ``replay.publish.iter_messages`` does:

(a) raw kafka-python consumption (``KafkaConsumer.poll`` loop, partitions assigned, no group),
(b) raw aiokafka consumption (``AIOKafkaConsumer.getmany(max_records=20000)``, no group),
(c) the full live pipeline: ``LiveWorker`` (aiokafka engine) with a fresh ``StreamCore`` —
    decode + validation, patching, model forward, online learning, drift, encoding and producing
    forecasts/alerts/dead letters, offset commits.

Timing. (a)/(b): the clock starts just before the first poll (the partitions are assigned and
seeked beforehand; no group, so no join) and stops when the N-th message is in hand; rate =
N / elapsed. (c): the consumer's ``getmany`` is wrapped for the duration of the run to note when
the first non-empty fetch returns (group join, assignment and that first fetch round trip are
excluded), and ``LiveWorker._produce`` is wrapped (subclass) to note when the outputs of the last
batch were acknowledged by the broker; rate = N / (last ack - first fetch). The last offset
commit (one round trip) and the consumer/producer shutdown are outside the window. (c') repeats
(c) with ``torch.set_num_threads(1)`` (skip with ``--no-single-thread``): on a small machine
torch's intra-op threads compete with the event loop, the broker and any other process.
(e) the cost of exactly-once outputs: ``--eos-pairs`` (default 2) pairs of runs on fresh
groups, the pipeline with ``kafka.processing_guarantee = exactly_once`` (a transaction per
batch holding its outputs and input offsets, ``connectors.transactions``) and again at least
once, alternating (the first at-least-once run is (c)); the cost is 1 - the median
exactly-once rate / the median at-least-once rate (``--eos-pairs 0`` skips it). Recorded in
its own section, ``exactly_once``.

The machine may be shared: before each timed phase the script waits (``--quiet-wait`` seconds in
all) until other processes use < 0.25 cores, and it reports the average CPU cores used during
each phase by this process, the broker and everything else.

Latency: a separate paced run on fresh topics and a fresh group. A producer *process* (a thread
would fight the worker for the GIL, which a real deployment does not) publishes readings at
``--lat-rate`` readings/s while a ``LiveWorker`` consumes them. Per forecast message, latency =
its Kafka CreateTime (set by the worker's producer) - the CreateTime of the reading that closed
its step, i.e. the first reading (in topic order; the earliest CreateTime) whose
ts >= step_end - interval/2 + lateness (``IncrementalPatcher._closed_before``).

Where the time goes: the records of the topic are read once more (not timed) and run through
``process_records`` without Kafka (a) plainly, for the core-path rate, (b) under cProfile, and
(c) piece by piece (decode+validate, patcher, model forward, learn step, drift, the rest of the
core, encode outputs), plus producing the encoded outputs with the worker's own ``_produce``.

    python benchmarks/throughput.py [--sensors 200] [--steps 5000] [--interval-ms 300000]
                                    [--partitions 1] [--eos-pairs 2]
                                    [--results benchmarks/RESULTS.md] [--no-record]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import multiprocessing as mp
import os
import pstats
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from benchmarks.kafka_phases import (  # noqa: E402
    BATCH,
    Phase,
    aiokafka_consumer,
    bench_aiokafka,
    bench_kafka_python,
    bench_pipeline,
    fresh_core,
    make_recording,
    output_topics,
    stream_config,
)
from connectors.broker import EmbeddedBroker  # noqa: E402
from connectors.kafka_io import ensure_topics, make_producer  # noqa: E402
from replay.publish import iter_messages, publish_recording  # noqa: E402
from streaming.config import StreamConfig  # noqa: E402
from streaming.runtime.microbatch import Outputs, Record, process_records  # noqa: E402
from streaming.runtime.worker import LiveWorker  # noqa: E402

GOAL = 100_000                      # readings/s per worker
EOS_GOAL = 0.15                     # exactly_once costs at most this share of the rate
EOS_NAME = "full pipeline, exactly_once (transactions)"
ALO_NAME = "full pipeline (aiokafka engine)"
REF_KAFKA_PYTHON = 62_000           # reference figures on this machine class
REF_AIOKAFKA = 540_000
_HZ = os.sysconf("SC_CLK_TCK")


# --- CPU accounting (the machine may be shared) --------------------------------------------


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _HZ


def _sys_busy() -> float:
    """CPU seconds all CPUs spent busy (not idle/iowait) since boot."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / _HZ


class CpuMeter:
    """Average cores used by this process, the broker and everything else over an interval."""

    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid
        self._t0 = self._snap()

    def _snap(self) -> tuple[float, float, float, float]:
        return (time.perf_counter(), _sys_busy(), _proc_cpu(os.getpid()),
                _proc_cpu(self.broker_pid) if self.broker_pid else 0.0)

    def start(self) -> None:
        self._t0 = self._snap()

    def read(self) -> dict[str, float]:
        t1 = self._snap()
        dt = max(t1[0] - self._t0[0], 1e-9)
        own = (t1[2] - self._t0[2]) / dt
        broker = (t1[3] - self._t0[3]) / dt
        other = max(0.0, (t1[1] - self._t0[1]) / dt - own - broker)
        return {"self": own, "broker": broker, "other": other, "seconds": dt}

    def wait_quiet(self, limit_s: float, threshold: float = 0.25) -> tuple[float, float]:
        """Wait (at most ``limit_s``) until other processes use < ``threshold`` cores over a
        half-second window; returns (seconds waited, their load in the last window)."""
        t0 = time.perf_counter()
        while True:
            self.start()
            time.sleep(0.5)
            other = self.read()["other"]
            waited = time.perf_counter() - t0
            if other < threshold or waited >= limit_s:
                return waited, other


async def read_records(bs: str, topic: str, partitions: int, n: int | None = None,
                       idle_s: float = 2.0) -> tuple[list[list[Record]], float]:
    """All records of ``topic`` as the worker builds them, in fetch batches (not timed), and
    the seconds spent building the ``Record`` objects (the worker does this per batch)."""
    from aiokafka import TopicPartition

    consumer = aiokafka_consumer(bs)
    await consumer.start()
    batches: list[list[Record]] = []
    build_s = 0.0
    gc.disable()  # the records pile up here (never in the worker): keep GC out of build_s
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        count = 0
        last = time.monotonic()
        while n is None or count < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            if not batch:
                if time.monotonic() - last > idle_s:
                    break
                continue
            last = time.monotonic()
            t = time.perf_counter()
            records = [Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp)
                       for tp, msgs in batch.items() for m in msgs]
            build_s += time.perf_counter() - t
            batches.append(records)
            count += len(records)
    finally:
        gc.enable()
        await consumer.stop()
    return batches, build_s


# --- latency -------------------------------------------------------------------------------


def _paced_producer(bs: str, topic: str, n_sensors: int, n_steps: int, interval_ms: int,
                    rate: float, skip: int, result: Any) -> None:
    """Child process: publish the readings after the first ``skip`` at ``rate`` readings/s."""
    rec = make_recording(n_sensors, n_steps, interval_ms, seed=1)
    producer = make_producer(bs)
    chunk = max(1, int(rate * 0.002))  # re-check the pace every ~2 ms
    sent = 0
    t0 = time.perf_counter()
    try:
        for i, (_, key, value, _) in enumerate(iter_messages(rec)):
            if i < skip:
                continue
            if sent % chunk == 0:
                delay = t0 + sent / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            producer.send(topic, value=value, key=key)
            sent += 1
        producer.flush()
    finally:
        producer.close()
    result.put((sent, time.perf_counter() - t0, time.process_time()))


async def _read_with_timestamps(bs: str, topic: str, n: int | None,
                                idle_s: float = 2.0) -> list[tuple[bytes, int]]:
    batches, _ = await read_records(bs, topic, 1, n, idle_s)
    return [(r.value, r.timestamp) for b in batches for r in b]


def closing_times(values: list[bytes], kafka_ts: np.ndarray, cfg: StreamConfig
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """``f(steps) -> CreateTime`` of the first reading that closed each step."""
    pc = cfg.patching
    step_ms = pc.interval_ms * pc.patch_len
    ts = np.fromiter((orjson.loads(v)["ts"] for v in values), np.int64, len(values))
    # the last step a reading closes: step k is closed once ts >= end(k) - half + lateness
    last_closed = (ts - pc.lateness_ms + pc.interval_ms // 2) // step_ms - 1
    order = np.argsort(last_closed, kind="stable")
    c_sorted = last_closed[order]
    suffix_min = np.minimum.accumulate(kafka_ts[order][::-1])[::-1]

    def f(steps: np.ndarray) -> np.ndarray:
        i = np.searchsorted(c_sorted, steps, side="left")
        if (i >= len(c_sorted)).any():
            raise ValueError("a forecast for a step no reading closed")
        return suffix_min[i]

    return f


def bench_latency(bs: str, n_sensors: int, interval_ms: int, rate: float,
                  seconds: float, meter: CpuMeter) -> dict[str, Any]:
    cfg = stream_config(bs, f"lat-{uuid.uuid4().hex[:6]}", interval_ms, 1)  # fresh topics
    k = cfg.kafka
    ensure_topics(bs, [k.readings_topic, k.events_topic, *output_topics(cfg)])
    n_steps = max(int(rate * seconds / n_sensors), 4 * cfg.patching.patch_len)
    n = n_sensors * n_steps
    # one warm-up reading (the first of the stream) lets the worker join its group first
    first_key, first_value = next((key, value) for _, key, value, _ in
                                  iter_messages(make_recording(n_sensors, 1, interval_ms,
                                                               seed=1)))
    producer = make_producer(bs)
    producer.send(k.readings_topic, value=first_value, key=first_key)
    producer.flush()
    producer.close()
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    child = ctx.Process(target=_paced_producer, name="paced-producer", daemon=True,
                        args=(bs, k.readings_topic, n_sensors, n_steps, interval_ms, rate, 1,
                              result))
    core = fresh_core(cfg)
    worker = LiveWorker(cfg, core, idle_exit_s=30.0, max_messages=n)

    async def main() -> Any:
        task = asyncio.create_task(worker.run())
        while worker.stats.messages < 1 and not task.done():
            await asyncio.sleep(0.05)
        child.start()
        return await task

    meter.start()
    stats = asyncio.run(main())
    cpu = meter.read()
    child.join(60)
    if child.exitcode != 0:
        raise RuntimeError(f"paced producer failed (exit code {child.exitcode})")
    sent, pub_s, producer_cpu_s = result.get(timeout=5)
    cpu["producer"] = producer_cpu_s / cpu["seconds"]
    cpu["other"] = max(0.0, cpu["other"] - cpu["producer"])
    readings = asyncio.run(_read_with_timestamps(bs, k.readings_topic, n))
    forecasts = asyncio.run(_read_with_timestamps(bs, k.forecasts_topic, stats.forecasts))
    close_at = closing_times([v for v, _ in readings],
                             np.array([t for _, t in readings], np.int64), cfg)
    steps = np.fromiter((orjson.loads(v)["step"] for v, _ in forecasts), np.int64,
                        len(forecasts))
    f_ts = np.array([t for _, t in forecasts], np.int64)
    lat = (f_ts - close_at(steps)).astype(np.float64)
    return {"readings": n, "rate_target": rate, "rate_achieved": sent / pub_s,
            "publish_s": pub_s, "cpu": cpu, "forecasts": len(forecasts),
            "steps": len(np.unique(steps)),
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max()), "mean": float(lat.mean()), "min": float(lat.min()),
            "batches": stats.batches}


# --- where the time goes -------------------------------------------------------------------


def run_core_path(cfg: StreamConfig, batches: list[list[Record]]) -> tuple[float, int]:
    core = fresh_core(cfg)
    t = time.perf_counter()
    n = 0
    for records in batches:
        process_records(core, records, cfg)
        n += len(records)
    return time.perf_counter() - t, n


def profile_core_path(cfg: StreamConfig, batches: list[list[Record]], top: int) -> str:
    core = fresh_core(cfg)
    prof = cProfile.Profile()
    prof.enable()
    for records in batches:
        process_records(core, records, cfg)
    prof.disable()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf).strip_dirs()
    st.sort_stats("cumulative").print_stats(top)
    st.sort_stats("tottime").print_stats(top)
    return buf.getvalue()


class _Timer:
    """Accumulates seconds per piece; ``wrap`` times a callable."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}

    def add(self, name: str, dt: float) -> None:
        self.s[name] = self.s.get(name, 0.0) + dt

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t)
        return timed


def breakdown(cfg: StreamConfig, batches: list[list[Record]]) -> tuple[_Timer, list[Outputs]]:
    """The real ``process_records`` over the batches, with timers around its pieces."""
    from streaming.runtime import microbatch

    tm = _Timer()
    core = fresh_core(cfg)
    # instance attributes shadow the methods: the core calls the timed versions
    core.patcher.admit = tm.wrap("patcher", core.patcher.admit)  # type: ignore[method-assign]
    core.patcher.close_ready = tm.wrap("patcher",  # type: ignore[method-assign]
                                       core.patcher.close_ready)
    core.model.predict_with_embedding = tm.wrap(  # type: ignore[method-assign]
        "model forward", core.model.predict_with_embedding)
    core.model.learn_many = tm.wrap("learn step", core.model.learn_many)  # type: ignore
    core.drift.update = tm.wrap("drift", core.drift.update)  # type: ignore[method-assign]
    core.process = tm.wrap("core.process", core.process)  # type: ignore[method-assign]
    decode = microbatch.decode_readings
    microbatch.decode_readings = tm.wrap("decode+validate", decode)
    outs: list[Outputs] = []
    try:
        for records in batches:
            t0 = time.perf_counter()
            out, _ = process_records(core, records, cfg)
            tm.add("process_records", time.perf_counter() - t0)
            outs.append(out)
    finally:
        microbatch.decode_readings = decode
    tm.s["encode outputs"] = (tm.s.pop("process_records") - tm.s["decode+validate"]
                              - tm.s["core.process"])
    inner = sum(tm.s.get(k, 0.0) for k in ("patcher", "model forward", "learn step", "drift"))
    tm.s["core other (ring, normalizer, truth, metrics)"] = tm.s.pop("core.process") - inner
    return tm, outs


async def time_produce(cfg: StreamConfig, outs: list[Outputs]) -> float:
    """Produce the encoded outputs batch by batch, exactly as the worker does (acks awaited)."""
    from connectors import kafka_async

    producer = await kafka_async.start_producer(cfg.kafka.bootstrap_servers)
    k = cfg.kafka
    try:
        t = time.perf_counter()
        for out in outs:
            await kafka_async.produce(producer, {k.forecasts_topic: out.forecasts,
                                                 k.alerts_topic: out.alerts,
                                                 k.dead_letter_topic: out.dead_letters})
        return time.perf_counter() - t
    finally:
        await producer.stop()


# --- report --------------------------------------------------------------------------------


def loop_text(lp: dict[str, Any]) -> str:
    """Where the live loop spent its time (additive only when the loop is sequential)."""
    if lp["overlapped"]:
        return (f"the worker overlaps processing with fetching, so the parts do not add up: "
                f"in getmany {lp['fetch_s']:.2f} s ({lp['empty_polls']} polls timed out "
                f"empty), produce + acks {lp['produce_s']:.2f} s")
    return (f"waiting in getmany {lp['fetch_s']:.2f} s ({lp['empty_polls']} polls timed out "
            f"empty), Records + process_records {lp['process_s']:.2f} s, produce + acks "
            f"{lp['produce_s']:.2f} s, commit + rest {lp['other_s']:.2f} s")


def eos_cost(phases: list[Phase]) -> tuple[float, float, float]:
    """Median at-least-once and exactly-once rates of the pipeline runs, and the cost
    (1 - exactly-once / at-least-once)."""
    alo = float(np.median([p.rate for p in phases if p.name.startswith(ALO_NAME)]))
    eos = float(np.median([p.rate for p in phases if p.name.startswith(EOS_NAME)]))
    return alo, eos, 1 - eos / alo


def eos_section(phases: list[Phase], eos: list[Phase], n: int, args: argparse.Namespace,
                when: datetime) -> common.Section:
    """The exactly-once section: the runs of each guarantee and the cost."""
    alo_rate, eos_rate, cost = eos_cost(phases)
    runs = [p for p in phases if p.name.startswith((ALO_NAME, EOS_NAME))]
    rows = [(p.name, f"{p.rate:,.0f}", f"{p.rate / alo_rate:.3f}") for p in runs]
    rows.append(("**median exactly_once / median at_least_once**", f"{eos_rate:,.0f} / "
                 f"{alo_rate:,.0f}", f"**{eos_rate / alo_rate:.3f}**"))
    met = cost <= EOS_GOAL
    ex = eos[0].extra
    body = [f"{args.sensors:,} sensors x {args.steps:,} steps = {n:,} readings, "
            f"{args.partitions} partition(s) (one region each: a transaction per region and "
            "batch), no checkpoints; at-least-once and exactly-once runs alternate on fresh "
            "groups over the same input, in the same run.", "",
            *common.md_table(["phase", "readings/s", "ratio vs median at-least-once"], rows),
            "",
            f"- Goal (issue 30) exactly-once costs <= {EOS_GOAL:.0%} of the rate: "
            f"{common.verdict(met)} ({cost:+.1%}).",
            f"- Per exactly-once batch ({ex['batches']} batches in the first run): begin, "
            "produce the outputs, `send_offsets_to_transaction` (AddOffsetsToTxn + "
            "TxnOffsetCommit), EndTxn; acks from all in-sync replicas (`acks=all`) instead "
            "of the leader's."]
    return common.Section(
        "exactly_once", "Live stream processing",
        "Exactly-once outputs (benchmarks/throughput.py, exactly-once phase)", "\n".join(body),
        common.Summary("exactly_once", f"cost of kafka.processing_guarantee = exactly_once, "
                       f"{args.sensors:,} sensors", f"{cost:+.1%} readings/s vs at least once "
                       f"({eos_rate:,.0f} vs {alo_rate:,.0f}/s)", f"<= {EOS_GOAL:.0%}",
                       common.index_verdict(met)), when=when)


def render(phases: list[Phase], lat: dict[str, Any] | None, pieces: list[tuple[str, float]],
           n: int, core_rate: float | None, args: argparse.Namespace, when: datetime
           ) -> tuple[list[common.Section], str]:
    """The throughput section (and the latency one when that phase ran), and the detail."""
    b = phases[1].rate
    pipe = phases[2]
    c = pipe.rate
    rows = [(p.name, f"{p.rate:,.0f}", f"**{p.rate / b:.3f}**" if p is pipe
             else f"{p.rate / b:.3f}") for p in phases]
    if core_rate is not None:
        rows.append(("core path alone (`process_records`, no Kafka)", f"{core_rate:,.0f}", "–"))
    ex = pipe.extra
    body = [f"{args.sensors} sensors x {args.steps:,} steps = {n:,} readings, "
            f"{args.partitions} partition(s), interval {args.interval_ms:,} ms; a fresh model "
            "(`OnlineModel.fresh`); embedded broker on the same machine.", "",
            *common.md_table(["phase", "readings/s", "ratio vs aiokafka"], rows), "",
            f"- Goal (issue 2) >= {GOAL:,} readings/s per worker: {common.verdict(c >= GOAL)} "
            f"({c:,.0f}/s)."]
    body += [f"- {p.name}: goal {'met' if p.rate >= GOAL else 'not met'}" for p in phases[3:]
             if not p.name.startswith((EOS_NAME, ALO_NAME + ","))]
    if pieces:
        total = sum(s for _, s in pieces)
        top = sorted(pieces, key=lambda x: -x[1])
        body.append("- Where the time goes (µs per reading, pieces timed one by one): "
                    + ", ".join(f"{name} {1e6 * s / n:.2f}"
                                + (f" ({100 * s / total:.0f} %)" if s / total >= 0.2 else "")
                                for name, s in top)
                    + f"; sum {1e6 * total / n:.2f}.")
    body.append(f"- Outputs: {ex['forecasts']:,} forecasts, {ex['alerts']} alerts, "
                f"{ex['dead_letters']:,} dead letters.")
    sections = [common.Section(
        "throughput", "Live stream processing", "Throughput (benchmarks/throughput.py)",
        "\n".join(body),
        common.Summary("throughput.py", f"one worker, {args.sensors:,} sensors, {n:,} readings "
                       "via Kafka vs raw clients", f"{c:,.0f} readings/s = {c / b:.3f}x raw "
                       "aiokafka", f">= {GOAL:,} readings/s per worker",
                       common.index_verdict(c >= GOAL)), when=when)]
    eos = [p for p in phases if p.name.startswith(EOS_NAME)]
    if eos:
        sections.append(eos_section(phases, eos, n, args, when))
    if lat is not None:
        sections.append(common.Section(
            "latency", "Live stream processing",
            "Latency (benchmarks/throughput.py, latency phase)",
            f"- Reading-to-forecast latency: **p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} "
            f"ms** (max {lat['max']:.0f} ms), {lat['forecasts']:,} forecasts over "
            f"{lat['steps']} steps, {args.sensors:,} sensors, readings paced at "
            f"{lat['rate_achieved']:,.0f}/s for {lat['publish_s']:.0f} s by a producer "
            "process.\n- No goal set (issue 2 asks for p50/p99 to be reported).",
            common.Summary("latency", f"reading-to-forecast latency at {lat['rate_target']:,.0f} "
                           "readings/s", f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms",
                           "none set", "–"), when=when))
    detail = common.md_table(["phase", "readings", "seconds", "readings/s", "ratio vs aiokafka",
                              "CPU cores: this process / broker / other processes"],
                             [(p.name, f"{p.readings:,}", f"{p.seconds:.2f}", f"{p.rate:,.0f}",
                               f"{p.rate / b:.3f}",
                               "{self:.2f} / {broker:.2f} / {other:.2f}".format(**p.extra["cpu"])
                               if "cpu" in p.extra else "-") for p in phases], align="lrrrrl")
    detail.append("")
    detail += [f"- live loop of '{p.name}' ({p.seconds:.2f} s): {loop_text(p.extra['loop'])}"
               for p in phases[2:]]
    detail.append(f"- pipeline: {ex['accepted']:,} of {n:,} readings accepted in "
                  f"{ex['batches']} batches; group join + first fetch {ex['join_s']:.2f} s "
                  "(excluded from the window)")
    if lat is not None:
        cpu = lat["cpu"]
        detail.append(f"- latency phase: CPU cores worker / producer / broker / other "
                      f"processes {cpu['self']:.2f} / {cpu['producer']:.2f} / "
                      f"{cpu['broker']:.2f} / {cpu['other']:.2f}, averaged over the phase")
    if pieces:
        total = sum(s for _, s in pieces)
        detail += ["", "Where the time goes (pieces timed one by one over the same records; "
                   "fetch at the raw aiokafka rate, produce with the worker's `_produce`):", "",
                   *common.md_table(["piece", "seconds", "share", "µs/reading"],
                                    [*((name, f"{s:.2f}", f"{100 * s / total:.0f}%",
                                        f"{1e6 * s / n:.2f}") for name, s in pieces),
                                     ("**sum**", f"{total:.2f}", "100%",
                                      f"{1e6 * total / n:.2f}")])]
    return sections, "\n".join(detail)


# --- main ----------------------------------------------------------------------------------


class Runner:
    """Runs timed phases after waiting for the machine to be quiet, noting the CPU load."""

    def __init__(self, meter: CpuMeter, quiet_budget_s: float) -> None:
        self.meter = meter
        self.quiet_left = quiet_budget_s

    def quiet(self) -> None:
        if self.quiet_left <= 0:
            return
        waited, other = self.meter.wait_quiet(min(self.quiet_left, 60.0))
        self.quiet_left -= waited
        if waited > 1.0:
            print(f"[bench] waited {waited:.0f} s for other processes to quiet down (their "
                  f"load now {other:.2f} cores)", flush=True)

    def run(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, dict[str, float]]:
        self.quiet()
        self.meter.start()
        res = fn(*args)
        return res, self.meter.read()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sizes = next((a.split("=", 1)[1] if "=" in a else argv[i + 1]
                  for i, a in enumerate(argv) if a.split("=")[0] == "--sensors"), "")
    if "," in sizes:        # several sizes: the scaling run (benchmarks/scaling.py)
        from benchmarks.scaling import main as scaling_main

        return scaling_main(argv)
    ap = common.parser(__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sensors", type=int, default=200,
                    help="sensors; a comma-separated list runs benchmarks/scaling.py")
    ap.add_argument("--steps", type=int, default=5000, help="grid points per sensor")
    ap.add_argument("--interval-ms", type=int, default=300_000)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--lat-rate", type=float, default=20_000,
                    help="paced readings/s of the latency run")
    ap.add_argument("--lat-seconds", type=float, default=25.0)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-single-thread", action="store_true",
                    help="skip the extra pipeline run with torch.set_num_threads(1)")
    ap.add_argument("--eos-pairs", type=int, default=2,
                    help="pairs of exactly_once / at_least_once pipeline runs (0: none)")
    ap.add_argument("--quiet-wait", type=float, default=120.0,
                    help="seconds in all to wait for other processes to go quiet before phases")
    ap.add_argument("--top", type=int, default=15, help="functions shown per profile table")
    args = ap.parse_args(argv)
    n = args.sensors * args.steps
    if n < 1_000_000:
        print(f"note: {n:,} readings (< 1,000,000: not the reference size)", flush=True)
    when = datetime.now(UTC)
    import torch

    print(f"[bench] {when:%Y-%m-%d %H:%M:%S} UTC, nproc {len(os.sched_getaffinity(0))}, "
          f"torch threads {torch.get_num_threads()}", flush=True)

    default_threads = torch.get_num_threads()

    with EmbeddedBroker() as broker:
        bs = broker.bootstrap_servers
        runner = Runner(CpuMeter(broker._proc.pid if broker._proc else None), args.quiet_wait)
        cfg = stream_config(bs, "bench", args.interval_ms, args.partitions)
        k = cfg.kafka
        t = time.perf_counter()
        rec = make_recording(args.sensors, args.steps, args.interval_ms)
        gen_s = time.perf_counter() - t
        pub = publish_recording(rec, bs, topic=k.readings_topic, events_topic=k.events_topic,
                                partitions=args.partitions, progress=False)
        del rec
        print(f"[bench] broker {bs}; generated {n:,} readings in {gen_s:.1f} s, published "
              f"{pub.readings:,} in {pub.seconds:.1f} s ({pub.readings / pub.seconds:,.0f}/s, "
              "kafka-python producer; not measured)", flush=True)

        phases: list[Phase] = []

        def record(p: Phase, cpu: dict[str, float], label: str) -> None:
            p.extra["cpu"] = cpu
            phases.append(p)
            print(f"[bench] {label} {p.name}: {p.readings:,} in {p.seconds:.2f} s = "
                  f"{p.rate:,.0f} readings/s (CPU cores self/broker/other {cpu['self']:.2f}/"
                  f"{cpu['broker']:.2f}/{cpu['other']:.2f})", flush=True)
            if "loop" in p.extra:
                print(f"[bench]     loop: {loop_text(p.extra['loop'])}", flush=True)

        record(*runner.run(bench_kafka_python, bs, k.readings_topic, args.partitions, n), "(a)")
        record(*runner.run(lambda: asyncio.run(
            bench_aiokafka(bs, k.readings_topic, args.partitions, n))), "(b)")
        record(*runner.run(bench_pipeline, cfg, n), "(c)")
        ex = phases[-1].extra
        print(f"[bench]     {ex['forecasts']:,} forecasts, {ex['alerts']} alerts, "
              f"{ex['dead_letters']} dead letters, {ex['batches']} batches; join + first fetch "
              f"{ex['join_s']:.2f} s excluded; wall {ex['wall_s']:.1f} s", flush=True)
        if phases[-1].readings != n:
            raise RuntimeError(f"pipeline consumed {phases[-1].readings:,} of {n:,} readings")
        if ex["accepted"] != n:
            print(f"[bench] WARNING: only {ex['accepted']:,} of {n:,} readings were accepted; "
                  f"the rest went to the dead-letter topic", flush=True)
        if default_threads > 1 and not args.no_single_thread:
            torch.set_num_threads(1)
            try:
                cfg1 = stream_config(bs, "bench1", args.interval_ms, args.partitions,
                                     input_prefix="bench")
                p1, cpu1 = runner.run(bench_pipeline, cfg1, n)
            finally:
                torch.set_num_threads(default_threads)
            p1.name = "full pipeline, torch.set_num_threads(1)"
            record(p1, cpu1, "(c')")

        for i in range(args.eos_pairs):
            cfg_e = stream_config(bs, f"bench-eos{i}", args.interval_ms, args.partitions,
                                  input_prefix="bench")
            cfg_e.kafka.processing_guarantee = "exactly_once"
            pe, cpue = runner.run(bench_pipeline, cfg_e, n)
            pe.name = EOS_NAME + (f", run {i + 1}" if args.eos_pairs > 1 else "")
            record(pe, cpue, "(e)")
            if pe.readings != n:
                raise RuntimeError(f"exactly_once pipeline consumed {pe.readings:,} of {n:,}")
            if i + 1 < args.eos_pairs:      # the first at-least-once run is (c)
                cfg_a = stream_config(bs, f"bench-alo{i}", args.interval_ms, args.partitions,
                                      input_prefix="bench")
                pa, cpua = runner.run(bench_pipeline, cfg_a, n)
                pa.name = f"{ALO_NAME}, run {i + 2}"
                record(pa, cpua, "(e)")
        if args.eos_pairs:
            alo_rate, eos_rate, cost = eos_cost(phases)
            print(f"[bench] exactly_once: median {eos_rate:,.0f} vs at_least_once "
                  f"{alo_rate:,.0f} readings/s: cost {cost:+.1%} (goal <= {EOS_GOAL:.0%})",
                  flush=True)

        lat = None
        if not args.no_latency:
            runner.quiet()
            lat = bench_latency(bs, args.sensors, args.interval_ms, args.lat_rate,
                                args.lat_seconds, runner.meter)
            print(f"[bench] latency: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, max "
                  f"{lat['max']:.0f} ms over {lat['forecasts']:,} forecasts "
                  f"({lat['readings']:,} readings paced at {lat['rate_achieved']:,.0f}/s, "
                  f"{lat['batches']} batches)", flush=True)

        pieces: list[tuple[str, float]] = []
        core_rate = None
        if not args.no_profile:
            batches, build_s = asyncio.run(read_records(bs, k.readings_topic, args.partitions,
                                                        n))
            gc.collect()
            gc.freeze()  # the worker never holds 1M records: keep the GC from walking them
            runner.quiet()
            core_s, core_n = run_core_path(cfg, batches)
            core_rate = core_n / core_s
            print(f"[bench] core path (process_records, no Kafka, {len(batches)} batches): "
                  f"{core_s:.2f} s = {core_rate:,.0f} readings/s", flush=True)
            runner.quiet()
            tm, outs = breakdown(cfg, batches)
            prof_cfg = stream_config(bs, "prof", args.interval_ms, 1)
            ensure_topics(bs, output_topics(prof_cfg))
            produce_s = asyncio.run(time_produce(prof_cfg, outs))
            del outs
            fetch_s = n / phases[1].rate
            pieces = [("fetch (aiokafka raw rate)", fetch_s), ("build Record objects", build_s)]
            pieces += [(name, tm.s[name]) for name in (
                "decode+validate", "patcher", "model forward", "learn step", "drift",
                "core other (ring, normalizer, truth, metrics)", "encode outputs")]
            pieces.append(("produce outputs (acks awaited)", produce_s))
            print(f"\n[bench] cProfile of process_records over the same {n:,} records "
                  f"(top {args.top}):", flush=True)
            print(profile_core_path(cfg, batches, args.top), flush=True)
            gc.unfreeze()
            del batches

    sections, detail = render(phases, lat, pieces, n, core_rate, args, when)
    for k, sec in enumerate(sections):
        common.publish(sec, args, detail=detail if k == 0 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
