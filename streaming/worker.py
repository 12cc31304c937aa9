"""The live worker: Kafka micro-batches in, the online core, forecasts/alerts/dead letters out.

The fetch loop uses aiokafka's ``getmany`` (batched, ~500k msgs/s here) with manual offset
commits: offsets are committed only after the outputs of their batch were acknowledged by the
broker (at-least-once; outputs carry deterministic keys ``sensor:step``). The Faust engine in
``streaming.faust_app`` drives the same ``process_records`` function.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from connectors.schemas import (
    DeadLetter,
    EventBatch,
    decode_events,
    decode_readings,
    encode_alert,
)
from streaming.config import StreamConfig
from streaming.core import CoreOutput, ForecastBlock, StreamCore

log = logging.getLogger(__name__)


@dataclass
class Record:
    """A raw input message, independent of the Kafka client that fetched it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int = 0


@dataclass
class Outputs:
    """Encoded output messages of one batch: ``(key, value)`` per topic."""

    forecasts: list[tuple[bytes, bytes]] = field(default_factory=list)
    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)


@dataclass
class WorkerStats:
    messages: int = 0
    readings_accepted: int = 0
    events_accepted: int = 0
    forecasts: int = 0
    alerts: int = 0
    dead_letters: int = 0
    batches: int = 0
    started: float = field(default_factory=time.time)
    last_processed: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["uptime_s"] = round(time.time() - self.started, 3)
        return d


def encode_forecasts(block: ForecastBlock) -> list[tuple[bytes, bytes]]:
    """One ``forecasts`` message per sensor, keyed ``sensor:step`` (deduplicable)."""
    horizon = block.horizon_ts.tolist()
    yhat = np.round(block.yhat, 6).tolist()
    out = []
    dumps = orjson.dumps
    for s, y in zip(block.sensors, yhat, strict=True):
        out.append((f"{s}:{block.step}".encode(), dumps({
            "sensor": s, "ts": block.ts, "step": block.step, "horizon_ts": horizon, "yhat": y,
            "model_version": block.model_version})))
    return out


def apply_torch_threads(cfg: StreamConfig) -> None:
    """Set torch's intra-op threads as configured (1 by default: the worker's tensors are
    small, and extra threads fight the fetch loop for 2 cores)."""
    import torch

    if cfg.model.torch_threads > 0:
        torch.set_num_threads(cfg.model.torch_threads)


def process_records(core: StreamCore, records: list[Record], cfg: StreamConfig,
                    stats: WorkerStats | None = None,
                    active_partitions: set[int] | None = None) -> tuple[Outputs, CoreOutput]:
    """Validate a micro-batch, run it through the core and encode every output.

    Events of the batch are applied before its readings. Every message that cannot be used
    becomes a dead letter with its reason. ``active_partitions`` are the readings partitions
    with data still to come (the event-time clock waits for them).
    """
    if active_partitions is not None:
        core.patcher.set_partitions(active_partitions)
    known = frozenset(core.sensors) if core.patcher.registry.fixed else None
    kcfg = cfg.kafka
    rd = [r for r in records if r.topic != kcfg.events_topic]
    ev = [r for r in records if r.topic == kcfg.events_topic]
    readings, dead = decode_readings(
        [r.value for r in rd], known_sensors=known, topic=kcfg.readings_topic,
        partitions=[r.partition for r in rd], offsets=[r.offset for r in rd],
        keys=[r.key for r in rd])
    events = EventBatch()
    if ev:
        events, dead_ev = decode_events(
            [r.value for r in ev], known_sensors=known, topic=kcfg.events_topic,
            partitions=[r.partition for r in ev], offsets=[r.offset for r in ev],
            keys=[r.key for r in ev])
        dead.extend(dead_ev)
    core_out = core.process(readings, events)
    for i, reason in core_out.rejected_readings:
        r = rd[int(readings.source[i])]
        dead.append(DeadLetter(r.value, reason, r.topic, r.partition, r.offset, r.key))
    for i, reason in core_out.rejected_events:
        r = ev[events.source[i]]
        dead.append(DeadLetter(r.value, reason, r.topic, r.partition, r.offset, r.key))
    out = Outputs()
    for block in core_out.forecasts:
        out.forecasts.extend(encode_forecasts(block))
    for a in core_out.alerts:
        out.alerts.append((a["id"].encode(), encode_alert(a)))
    for d in dead:
        out.dead_letters.append((d.key, d.to_message()))
    if stats is not None:
        stats.messages += len(records)
        stats.readings_accepted += len(readings) - len(core_out.rejected_readings)
        stats.events_accepted += len(events) - len(core_out.rejected_events)
        stats.forecasts += len(out.forecasts)
        stats.alerts += len(out.alerts)
        stats.dead_letters += len(out.dead_letters)
        stats.batches += 1
        stats.last_processed = time.time()
    return out, core_out


class LiveWorker:
    """Consume ``readings``/``events``, drive the core, produce outputs, commit offsets."""

    def __init__(self, cfg: StreamConfig, core: StreamCore, *, idle_exit_s: float | None = None,
                 max_messages: int | None = None, status_every_s: float = 10.0) -> None:
        self.cfg = cfg
        self.core = core
        self.idle_exit_s = idle_exit_s
        self.max_messages = max_messages
        self.status_every_s = status_every_s
        self.stats = WorkerStats()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> WorkerStats:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        apply_torch_threads(self.cfg)
        k = self.cfg.kafka
        consumer = AIOKafkaConsumer(
            k.readings_topic, k.events_topic, bootstrap_servers=k.bootstrap_servers,
            group_id=k.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=k.session_timeout_ms, heartbeat_interval_ms=k.heartbeat_interval_ms,
            max_poll_interval_ms=k.max_poll_interval_ms, max_poll_records=k.max_batch,
            fetch_max_wait_ms=k.fetch_max_wait_ms,
            fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024)
        producer = AIOKafkaProducer(bootstrap_servers=k.bootstrap_servers, linger_ms=5,
                                    max_batch_size=1024 * 1024, acks=1)
        await producer.start()
        try:
            await consumer.start()
        except BaseException:
            await producer.stop()
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests run the worker in a thread)
        last_data = time.monotonic()
        last_status = time.monotonic()
        inflight: asyncio.Task[None] | None = None
        try:
            while not self._stop.is_set():
                batch = await self._fetch(consumer)
                now = time.monotonic()
                if batch:
                    records = [Record(tp.topic, tp.partition, m.offset, m.key, m.value,
                                      m.timestamp) for tp, msgs in batch.items() for m in msgs]
                    out, _ = process_records(self.core, records, self.cfg, self.stats,
                                             await self._active_partitions(consumer, batch))
                    if inflight is not None:
                        await inflight  # outputs and commits stay in batch order
                    offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
                    inflight = asyncio.create_task(self._deliver(consumer, producer, out,
                                                                 offsets))
                    last_data = now
                elif inflight is not None and inflight.done():
                    await inflight
                    inflight = None
                if now - last_status >= self.status_every_s:
                    last_status = now
                    await self._update_lag(consumer)
                    log.info("status %s", orjson.dumps(self.stats.as_dict()).decode())
                if self.max_messages is not None and self.stats.messages >= self.max_messages:
                    break
                if (self.idle_exit_s is not None and not batch and inflight is None
                        and now - last_data >= self.idle_exit_s):
                    await self._update_lag(consumer)
                    if sum(self.stats.lag.values()) == 0:
                        log.info("idle for %.1fs with no lag: stopping", self.idle_exit_s)
                        break
            if inflight is not None:
                await inflight
                inflight = None
        finally:
            if inflight is not None and not inflight.done():
                inflight.cancel()
            await consumer.stop()
            await producer.stop()
        return self.stats

    async def _deliver(self, consumer: Any, producer: Any, out: Outputs,
                       offsets: dict[Any, int]) -> None:
        """Produce a batch's outputs, then commit its input offsets (at-least-once).

        Runs while the next batch is fetched and processed: the CPU-bound core stays on the
        event loop (a worker thread lost to GIL contention on 2 cores) and only the network
        round trips overlap.
        """
        await self._produce(producer, out)
        await consumer.commit(offsets)

    async def _active_partitions(self, consumer: Any, batch: dict[Any, list[Any]]) -> set[int]:
        """Readings partitions with data still to come: in this batch or not caught up."""
        k = self.cfg.kafka
        active = {tp.partition for tp in batch if tp.topic != k.events_topic}
        for tp in consumer.assignment():
            if tp.topic == k.events_topic or tp.partition in active:
                continue
            hw = consumer.highwater(tp)
            if hw is None or await consumer.position(tp) < hw:
                active.add(tp.partition)
        return active

    async def _fetch(self, consumer: Any) -> dict[Any, list[Any]]:
        """One micro-batch of readings plus the events fetched so far.

        Events are fetched on their own because ``getmany`` fills ``max_records`` from the
        partitions in order, so a readings backlog would starve the small events topic and
        its events would arrive after their steps closed. Until the first fetch response of
        an events partition is in, we wait for it briefly.
        """
        k = self.cfg.kafka
        rd_tps = [tp for tp in consumer.assignment() if tp.topic != k.events_topic]
        batch: dict[Any, list[Any]] = dict(await consumer.getmany(
            *rd_tps, timeout_ms=k.fetch_timeout_ms, max_records=k.max_batch))
        ev_tps = [tp for tp in consumer.assignment() if tp.topic == k.events_topic]
        if ev_tps:
            unknown = any(consumer.highwater(tp) is None for tp in ev_tps)
            batch.update(await consumer.getmany(
                *ev_tps, timeout_ms=k.fetch_timeout_ms if unknown else 0,
                max_records=k.max_batch))
        return batch

    async def _update_lag(self, consumer: Any) -> None:
        lag = {}
        for tp in consumer.assignment():
            hw = consumer.highwater(tp)
            pos = await consumer.position(tp)
            lag[f"{tp.topic}-{tp.partition}"] = max(0, (hw or 0) - pos)
        self.stats.lag = lag

    async def _produce(self, producer: Any, out: Outputs) -> None:
        """Send every output in whole record batches and wait for the broker's acks.

        Keys are partitioned as Kafka's default partitioner does (murmur2), so a key always
        lands on the same partition whichever client produced it.
        """
        from aiokafka.partitioner import DefaultPartitioner

        k = self.cfg.kafka
        futures = []
        for topic, msgs in ((k.forecasts_topic, out.forecasts), (k.alerts_topic, out.alerts),
                            (k.dead_letter_topic, out.dead_letters)):
            if not msgs:
                continue
            parts = sorted(await producer.partitions_for(topic))
            by_part: dict[int, list[tuple[bytes | None, bytes]]] = {}
            if len(parts) == 1:
                by_part[parts[0]] = list(msgs)
            else:
                for key, value in msgs:
                    p = DefaultPartitioner()(key, parts, parts) if key is not None else parts[0]
                    by_part.setdefault(p, []).append((key, value))
            for p, items in by_part.items():
                batch = producer.create_batch()
                for key, value in items:
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        futures.append(await producer.send_batch(batch, topic, partition=p))
                        batch = producer.create_batch()
                        if batch.append(key=key, value=value, timestamp=None) is None:
                            raise ValueError(f"an output message for {topic} is larger than "
                                             "the producer's max batch size")
                futures.append(await producer.send_batch(batch, topic, partition=p))
        if futures:
            await asyncio.gather(*futures)
