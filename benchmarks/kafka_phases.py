"""The timed Kafka phases that ``throughput.py`` and ``scaling.py`` share, and the simulated
network they (and ``group.py``) publish.

* ``make_recording``: per sensor a daily sine (own level, amplitude, phase) + Gaussian noise on
  a 5-minute grid; ``stream_config``: a worker configuration on fresh topics and a new group.
* (a) ``bench_kafka_python`` and (b) ``bench_aiokafka``: raw consumption of a topic
  (partitions assigned and seeked, no group): the clock starts just before the first poll and
  stops when the N-th message is in hand.
* (c) ``bench_pipeline``: the live worker (``LiveWorker``, aiokafka engine) over the same
  topic, from the return of its first non-empty fetch to the acknowledgement of its last
  outputs (``fetch_clock``, ``TimedWorker``); with ``kafka.processing_guarantee =
  exactly_once`` to the commit of its last transaction.
"""

from __future__ import annotations

import asyncio
import bisect
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from connectors.kafka_io import ensure_topics
from connectors.recordings import Recording
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.microbatch import Outputs
from streaming.runtime.worker import LiveWorker

START = datetime(2026, 1, 5, tzinfo=UTC)
START_MS = int(START.timestamp() * 1000)
DAY_MS = 86_400_000
BATCH = 20_000                      # records per fetch, as the worker's kafka.max_batch default
FETCH_MAX_BYTES = 64 * 1024 * 1024  # fetch sizes of the raw consumers (a) and (b)
PARTITION_FETCH_BYTES = 16 * 1024 * 1024


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


def aiokafka_consumer(bs: str) -> Any:
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(bootstrap_servers=bs, group_id=None, enable_auto_commit=False,
                            auto_offset_reset="earliest", max_poll_records=BATCH,
                            fetch_max_bytes=FETCH_MAX_BYTES,
                            max_partition_fetch_bytes=PARTITION_FETCH_BYTES)


async def bench_aiokafka(bs: str, topic: str, partitions: int, n: int) -> Phase:
    from aiokafka import TopicPartition

    consumer = aiokafka_consumer(bs)
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

    async def _transact(self, work: Any) -> None:
        """exactly_once: the batch's transactions (outputs and offsets) committed."""
        t = time.perf_counter()
        await super()._transact(work)
        if work:
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
