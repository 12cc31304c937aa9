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
                                    [--partitions 1] [--results benchmarks/RESULTS.md]
                                    [--no-record]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import cProfile
import gc
import io
import multiprocessing as mp
import os
import platform
import pstats
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from connectors.broker import EmbeddedBroker
from connectors.kafka_io import ensure_topics, make_producer
from connectors.recordings import Recording
from replay.publish import iter_messages, publish_recording
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.microbatch import Outputs, Record, process_records
from streaming.runtime.worker import LiveWorker

START = datetime(2026, 1, 5, tzinfo=UTC)
START_MS = int(START.timestamp() * 1000)
DAY_MS = 86_400_000
BATCH = 20_000                      # records per fetch, as the worker's kafka.max_batch default
FETCH_MAX_BYTES = 64 * 1024 * 1024  # fetch sizes of the raw consumers (a) and (b)
PARTITION_FETCH_BYTES = 16 * 1024 * 1024
GOAL = 100_000                      # readings/s per worker
REF_KAFKA_PYTHON = 62_000           # reference figures on this machine class
REF_AIOKAFKA = 540_000
ROOT = Path(__file__).resolve().parents[1]
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


# --- data ----------------------------------------------------------------------------------


def make_recording(n_sensors: int, n_steps: int, interval_ms: int, seed: int = 0) -> Recording:
    """Per sensor a daily sine (own level, amplitude, phase) + Gaussian noise on a fixed grid."""
    rng = np.random.default_rng(seed)
    ts = START_MS + interval_ms * np.arange(n_steps, dtype=np.int64)
    day = 2 * np.pi * ((ts - START_MS) % DAY_MS) / DAY_MS
    level = rng.uniform(40.0, 70.0, n_sensors)
    amp = rng.uniform(5.0, 20.0, n_sensors)
    phase = rng.uniform(0.0, 2 * np.pi, n_sensors)
    noise = rng.normal(0.0, 1.5, (n_steps, n_sensors))
    values = np.round(level + amp * np.sin(day[:, None] + phase) + noise, 3)
    return Recording(ts, [f"s{j:04d}" for j in range(n_sensors)], values,
                     interval_ms=interval_ms)


def stream_config(bs: str, prefix: str, interval_ms: int, partitions: int,
                  input_prefix: str | None = None) -> StreamConfig:
    """A worker configuration whose topics start with ``prefix`` (phases never mix); the input
    topics with ``input_prefix`` when given. The group is new every time."""
    inp = input_prefix or prefix
    return StreamConfig.from_dict({
        "kafka": {"bootstrap_servers": bs, "group_id": f"{prefix}-{uuid.uuid4().hex[:8]}",
                  "readings_topic": f"{inp}-readings", "events_topic": f"{inp}-events",
                  "forecasts_topic": f"{prefix}-forecasts", "alerts_topic": f"{prefix}-alerts",
                  "dead_letter_topic": f"{prefix}-dead-letter", "partitions": partitions},
        "patching": {"interval_ms": interval_ms}})


def fresh_core(cfg: StreamConfig) -> StreamCore:
    return StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt))


def output_topics(cfg: StreamConfig) -> list[str]:
    k = cfg.kafka
    return [k.forecasts_topic, k.alerts_topic, k.dead_letter_topic]


@dataclass
class Phase:
    name: str
    readings: int
    seconds: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else float("nan")


# --- (a) kafka-python ---------------------------------------------------------------------


def bench_kafka_python(bs: str, topic: str, partitions: int, n: int) -> Phase:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bs, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_bytes=FETCH_MAX_BYTES,
                             max_partition_fetch_bytes=PARTITION_FETCH_BYTES)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        count = 0
        t0 = time.perf_counter()
        deadline = t0 + 600
        while count < n:
            batch = consumer.poll(timeout_ms=1000, max_records=BATCH)
            for msgs in batch.values():
                count += len(msgs)
            if time.perf_counter() > deadline:
                raise TimeoutError(f"kafka-python consumed only {count:,} of {n:,}")
        elapsed = time.perf_counter() - t0
    finally:
        consumer.close()
    return Phase("kafka-python raw", count, elapsed, f"poll(max_records={BATCH})")


# --- (b) aiokafka --------------------------------------------------------------------------


def _aiokafka_consumer(bs: str) -> Any:
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(bootstrap_servers=bs, group_id=None, enable_auto_commit=False,
                            auto_offset_reset="earliest", max_poll_records=BATCH,
                            fetch_max_bytes=FETCH_MAX_BYTES,
                            max_partition_fetch_bytes=PARTITION_FETCH_BYTES)


async def _bench_aiokafka(bs: str, topic: str, partitions: int, n: int) -> Phase:
    from aiokafka import TopicPartition

    consumer = _aiokafka_consumer(bs)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        count = 0
        t0 = time.perf_counter()
        deadline = t0 + 600
        while count < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            for msgs in batch.values():
                count += len(msgs)
            if time.perf_counter() > deadline:
                raise TimeoutError(f"aiokafka consumed only {count:,} of {n:,}")
        elapsed = time.perf_counter() - t0
    finally:
        await consumer.stop()
    return Phase("aiokafka raw", count, elapsed, f"getmany(max_records={BATCH})")


async def read_records(bs: str, topic: str, partitions: int, n: int | None = None,
                       idle_s: float = 2.0) -> tuple[list[list[Record]], float]:
    """All records of ``topic`` as the worker builds them, in fetch batches (not timed), and
    the seconds spent building the ``Record`` objects (the worker does this per batch)."""
    from aiokafka import TopicPartition

    consumer = _aiokafka_consumer(bs)
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


# --- (c) the live pipeline -----------------------------------------------------------------


class TimedWorker(LiveWorker):
    """LiveWorker that notes when it produced the outputs of each batch and when they were
    acknowledged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.produces: list[tuple[float, float]] = []

    @property
    def last_ack(self) -> float | None:
        return self.produces[-1][1] if self.produces else None

    async def _produce(self, producer: Any, out: Outputs) -> None:
        t = time.perf_counter()
        await super()._produce(producer, out)
        self.produces.append((t, time.perf_counter()))


@contextmanager
def fetch_clock() -> Iterator[dict[str, Any]]:
    """Wrap ``AIOKafkaConsumer.getmany`` while the block runs, noting every call (entry, exit,
    records) and the return of the first non-empty one (before it: the group join)."""
    from aiokafka import AIOKafkaConsumer

    orig = AIOKafkaConsumer.getmany
    clock: dict[str, Any] = {"first": None, "calls": []}

    async def getmany(self: Any, *partitions: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        res = await orig(self, *partitions, **kwargs)
        now = time.perf_counter()
        clock["calls"].append((t, now, sum(len(v) for v in res.values())))
        if clock["first"] is None and res:
            clock["first"] = now
        return res

    AIOKafkaConsumer.getmany = getmany  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        AIOKafkaConsumer.getmany = orig  # type: ignore[method-assign]


def bench_pipeline(cfg: StreamConfig, n: int, core: StreamCore | None = None) -> Phase:
    ensure_topics(cfg.kafka.bootstrap_servers, output_topics(cfg))
    core = core if core is not None else fresh_core(cfg)
    worker = TimedWorker(cfg, core, idle_exit_s=30.0, max_messages=n)
    t_start = time.perf_counter()
    with fetch_clock() as clock:
        stats = asyncio.run(worker.run())
    t_done = time.perf_counter()
    if clock["first"] is None or worker.last_ack is None:
        raise RuntimeError("the worker processed nothing")
    elapsed = worker.last_ack - clock["first"]
    # the live loop per batch: getmany (events, then readings) -> Records + process_records
    # -> _produce -> commit
    calls = [c for c in clock["calls"] if clock["first"] <= c[0] < worker.last_ack]
    entries = [t0 for t0, _, _ in clock["calls"]]
    exits = [t1 for _, t1, _ in clock["calls"]]
    fetch_s = sum(t1 - t0 for t0, t1, _ in calls)
    produce_s = sum(p1 - p0 for p0, p1 in worker.produces)
    stalls = sum(1 for t0, t1, k in calls if not k and t1 - t0 > 0.01)
    last_exit = [bisect.bisect_right(exits, p0) - 1 for p0, _ in worker.produces]
    # sequential loop: no getmany starts between a batch's fetch and the produce of its outputs
    overlapped = any(i + 1 < len(entries) and entries[i + 1] < p0
                     for i, (p0, _) in zip(last_exit, worker.produces, strict=True))
    process_s = other_s = None
    if not overlapped:
        process_s = sum(p0 - exits[i] for i, (p0, _) in zip(last_exit, worker.produces,
                                                             strict=True))
        other_s = elapsed - fetch_s - process_s - produce_s
    loop = {"fetch_s": fetch_s, "empty_polls": stalls, "overlapped": overlapped,
            "process_s": process_s, "produce_s": produce_s, "other_s": other_s}
    extra = {"wall_s": t_done - t_start, "join_s": clock["first"] - t_start, "loop": loop,
             "batches": stats.batches, "accepted": stats.readings_accepted,
             "forecasts": stats.forecasts, "alerts": stats.alerts,
             "dead_letters": stats.dead_letters, "model": core.model.version}
    return Phase("full pipeline (aiokafka engine)", stats.messages, elapsed,
                 "LiveWorker: first non-empty fetch -> last outputs acked", extra)


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


def machine_info() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiokafka
    import kafka
    import torch

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True, check=True).stdout
        changed = [line[3:] for line in dirty.splitlines() if line[3:] != "benchmarks/RESULTS.md"]
        if changed:
            rev += f" + uncommitted changes in {', '.join(changed)}"
    except (OSError, subprocess.CalledProcessError):
        rev = "unknown"
    return {"nproc": str(len(os.sched_getaffinity(0))), "cpu": model, "code": rev,
            "python": platform.python_version(), "torch": torch.__version__,
            "torch threads": str(torch.get_num_threads()), "aiokafka": aiokafka.__version__,
            "kafka-python": kafka.__version__, "numpy": np.__version__}


def command_line() -> str:
    exe = Path(sys.executable)
    try:
        shown = str(exe.relative_to(Path.cwd()))
    except ValueError:
        shown = "python" if exe.parent.name == "bin" else str(exe)
    return shlex.join([shown, *sys.argv])


def loop_text(lp: dict[str, Any]) -> str:
    """Where the live loop spent its time (additive only when the loop is sequential)."""
    if lp["overlapped"]:
        return (f"the worker overlaps processing with fetching, so the parts do not add up: "
                f"in getmany {lp['fetch_s']:.2f} s ({lp['empty_polls']} polls timed out "
                f"empty), produce + acks {lp['produce_s']:.2f} s")
    return (f"waiting in getmany {lp['fetch_s']:.2f} s ({lp['empty_polls']} polls timed out "
            f"empty), Records + process_records {lp['process_s']:.2f} s, produce + acks "
            f"{lp['produce_s']:.2f} s, commit + rest {lp['other_s']:.2f} s")


def render(phases: list[Phase], lat: dict[str, Any] | None, pieces: list[tuple[str, float]],
           n: int, core_rate: float | None, args: argparse.Namespace, when: datetime,
           info: dict[str, str]) -> str:
    b = phases[1].rate
    pipe = phases[2]
    c = pipe.rate
    lines = [f"## Throughput (benchmarks/throughput.py) — {when:%Y-%m-%d %H:%M} UTC", "",
             "```", command_line(), "```", "",
             f"Machine: nproc {info['nproc']}, CPU {info['cpu']}; Python {info['python']}, "
             f"torch {info['torch']} ({info['torch threads']} intra-op threads by default), "
             f"aiokafka {info['aiokafka']}, kafka-python {info['kafka-python']}, numpy "
             f"{info['numpy']}; embedded Tansu broker on the same machine. Code: {info['code']}.",
             "",
             f"Topic: {args.sensors} sensors x {args.steps} steps = {n:,} readings, "
             f"{args.partitions} partition(s), interval {args.interval_ms} ms.", "",
             "| phase | readings | seconds | readings/s | ratio vs aiokafka | CPU cores: "
             "this process / broker / other processes |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for p in phases:
        cpu = p.extra.get("cpu")
        load = (f"{cpu['self']:.2f} / {cpu['broker']:.2f} / {cpu['other']:.2f}" if cpu
                else "-")
        lines.append(f"| {p.name} | {p.readings:,} | {p.seconds:.2f} | {p.rate:,.0f} | "
                     f"{p.rate / b:.3f} | {load} |")
    lines.append("")
    if lat is not None:
        cpu = lat["cpu"]
        lines += [f"- reading-to-forecast latency p50: **{lat['p50']:.0f} ms**",
                  f"- reading-to-forecast latency p99: **{lat['p99']:.0f} ms** "
                  f"(max {lat['max']:.0f} ms; {lat['forecasts']:,} forecasts over "
                  f"{lat['steps']} steps; readings paced at {lat['rate_achieved']:,.0f}/s "
                  f"(target {lat['rate_target']:,.0f}/s) for {lat['publish_s']:.0f} s by a "
                  f"producer process; CPU cores worker / producer / broker / other processes "
                  f"{cpu['self']:.2f} / {cpu['producer']:.2f} / {cpu['broker']:.2f} / "
                  f"{cpu['other']:.2f}, averaged over the phase)"]
    lines += [f"- full pipeline / aiokafka raw, (c)/(b): **{c / b:.3f}**",
              f"- goal >= {GOAL:,} readings/s per worker: "
              f"**{'met' if c >= GOAL else 'NOT met'}** ({c:,.0f} readings/s with the "
              "library defaults)"]
    for p in phases[3:]:
        lines.append(f"- {p.name}: {p.rate:,.0f} readings/s "
                     f"(goal {'met' if p.rate >= GOAL else 'not met'})")
    if core_rate is not None:
        lines.append(f"- core path alone (process_records over the same records, no Kafka): "
                     f"{core_rate:,.0f} readings/s")
    for p in phases[2:]:
        lines.append(f"- live loop of '{p.name}' ({p.seconds:.2f} s): "
                     f"{loop_text(p.extra['loop'])}")
    ex = pipe.extra
    lines += [f"- pipeline outputs: {ex['forecasts']:,} forecasts, {ex['alerts']} alerts, "
              f"{ex['dead_letters']:,} dead letters ({ex['accepted']:,} of {n:,} readings "
              f"accepted) in {ex['batches']} batches; group join + "
              f"first fetch {ex['join_s']:.2f} s (excluded from the window)", ""]
    if pieces:
        total = sum(s for _, s in pieces)
        lines += ["Where the time goes (pieces timed one by one over the same records; fetch at "
                  "the raw aiokafka rate, produce with the worker's `_produce`):", "",
                  "| piece | seconds | share | µs/reading |", "| --- | ---: | ---: | ---: |"]
        for name, s in pieces:
            lines.append(f"| {name} | {s:.2f} | {100 * s / total:.0f}% | "
                         f"{1e6 * s / n:.2f} |")
        lines += [f"| **sum** | {total:.2f} | 100% | {1e6 * total / n:.2f} |", ""]
    return "\n".join(lines) + "\n"


def append_results(path: Path, text: str) -> None:
    if not path.exists() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Benchmark results\n")
    with path.open("a") as fh:
        fh.write("\n" + text)


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
        from scaling import main as scaling_main

        return scaling_main(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sensors", type=int, default=200)
    ap.add_argument("--steps", type=int, default=5000, help="grid points per sensor")
    ap.add_argument("--interval-ms", type=int, default=300_000)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-record", action="store_true", help="do not append to --results")
    ap.add_argument("--lat-rate", type=float, default=20_000,
                    help="paced readings/s of the latency run")
    ap.add_argument("--lat-seconds", type=float, default=25.0)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-single-thread", action="store_true",
                    help="skip the extra pipeline run with torch.set_num_threads(1)")
    ap.add_argument("--quiet-wait", type=float, default=120.0,
                    help="seconds in all to wait for other processes to go quiet before phases")
    ap.add_argument("--top", type=int, default=15, help="functions shown per profile table")
    args = ap.parse_args(argv)
    n = args.sensors * args.steps
    if n < 1_000_000:
        print(f"note: {n:,} readings (< 1,000,000: not the reference size)", flush=True)
    when = datetime.now(UTC)
    info = machine_info()
    print(f"[bench] {when:%Y-%m-%d %H:%M:%S} UTC, nproc {info['nproc']} ({info['cpu']}), "
          f"torch threads {info['torch threads']}", flush=True)
    import torch

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
            _bench_aiokafka(bs, k.readings_topic, args.partitions, n))), "(b)")
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

    text = render(phases, lat, pieces, n, core_rate, args, when, info)
    print(text, flush=True)
    if not args.no_record:
        append_results(args.results, text)
        print(f"[bench] appended to {args.results}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
