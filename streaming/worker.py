"""The live worker: Kafka micro-batches in, the online core, forecasts/alerts/dead letters out.

The fetch loop uses aiokafka's ``getmany`` (batched, ~500k msgs/s here) with manual offset
commits: offsets are committed only after the outputs of their batch were acknowledged by the
broker (at-least-once; outputs carry deterministic keys ``sensor:step:model_version``). The
Faust engine in ``streaming.faust_app`` drives the same ``process_records`` function.

With ``checkpoint.dir`` set, the worker checkpoints its whole state (``StreamCore.state_dict``)
with the input offsets it reflects every ``checkpoint.every_steps`` closed steps and on
shutdown, after the outputs of those inputs were acknowledged; only then are the offsets
committed. A (re)started worker loads the newest valid checkpoint and seeks to its offsets, so
a crash re-processes at most the inputs after the last checkpoint: the same outputs again
(same keys) and no model update applied twice.

Broker faults: unreachable at start, the worker retries with backoff and gives up after
``kafka.connect_timeout_s`` (``BrokerUnavailable``); gone mid-run, fetches come back empty,
producing outputs and committing are retried with backoff until the broker returns, and input
is never acknowledged (committed or checkpointed) before its outputs were produced.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiokafka import ConsumerRebalanceListener

from connectors.schemas import (
    DeadLetter,
    EventBatch,
    decode_events,
    decode_readings,
    encode_alert,
)
from streaming.checkpoint import CheckpointStore
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
    checkpoints: int = 0
    restored_from: str | None = None
    retries: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["uptime_s"] = round(time.time() - self.started, 3)
        return d


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached within ``kafka.connect_timeout_s``."""


def encode_forecasts(block: ForecastBlock) -> list[tuple[bytes, bytes]]:
    """One ``forecasts`` message per sensor, keyed ``sensor:step:model_version``: a replayed
    range reproduces the same keys, so consumers deduplicate by key."""
    horizon = block.horizon_ts.tolist()
    yhat = np.round(block.yhat, 6).tolist()
    out = []
    dumps = orjson.dumps
    for s, y in zip(block.sensors, yhat, strict=True):
        out.append((f"{s}:{block.step}:{block.model_version}".encode(), dumps({
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
                    active_partitions: set[int] | None = None,
                    now_ms: int | None = None) -> tuple[Outputs, CoreOutput]:
    """Validate a micro-batch, run it through the core and encode every output.

    Every message that cannot be used becomes one dead letter with its reason(s), keyed
    ``topic:partition:offset``. ``active_partitions`` are the readings partitions with data
    still to come (the event-time clock waits for them); ``now_ms`` is processing time (live
    only: a reading stamped further ahead of it than ``patching.max_future_ms`` is
    ``future``).
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

    def handle(i: int) -> tuple:
        r = rd[int(readings.source[i])]
        return DeadLetter(r.value, "", r.topic, r.partition, r.offset, r.key).handle()

    readings.refs = handle
    events = EventBatch()
    if ev:
        events, dead_ev = decode_events(
            [r.value for r in ev], known_sensors=known, topic=kcfg.events_topic,
            partitions=[r.partition for r in ev], offsets=[r.offset for r in ev],
            keys=[r.key for r in ev])
        dead.extend(dead_ev)
    accepted = core.patcher.stats.accepted
    core_out = core.process(readings, events, now_ms=now_ms)
    for i, reason in core_out.rejected_readings:
        r = rd[int(readings.source[i])]
        dead.append(DeadLetter(r.value, reason, r.topic, r.partition, r.offset, r.key))
    for i, reason in core_out.rejected_events:
        r = ev[events.source[i]]
        dead.append(DeadLetter(r.value, reason, r.topic, r.partition, r.offset, r.key))
    for h, reason in core_out.rejected_held:
        if h is not None:
            dead.append(DeadLetter.from_handle(h, reason))
    out = Outputs()
    for block in core_out.forecasts:
        out.forecasts.extend(encode_forecasts(block))
    for a in core_out.alerts:
        out.alerts.append((a["id"].encode(), encode_alert(a)))
    for d in _one_per_message(dead):
        out.dead_letters.append((d.unique_key(), d.to_message()))
    if stats is not None:
        stats.messages += len(records)
        stats.readings_accepted += core.patcher.stats.accepted - accepted
        stats.events_accepted += len(events) - len(core_out.rejected_events)
        stats.forecasts += len(out.forecasts)
        stats.alerts += len(out.alerts)
        stats.dead_letters += len(out.dead_letters)
        stats.batches += 1
        stats.last_processed = time.time()
    return out, core_out


def _one_per_message(dead: list[DeadLetter]) -> list[DeadLetter]:
    """One dead letter per input message: the channels of a multichannel reading rejected
    for different reasons share one, with the reasons joined."""
    seen: dict[tuple[str, int | None, int | None], DeadLetter] = {}
    out: list[DeadLetter] = []
    for d in dead:
        if d.partition is None or d.offset is None:
            out.append(d)
            continue
        k = (d.topic, d.partition, d.offset)
        first = seen.get(k)
        if first is None:
            seen[k] = d
            out.append(d)
        elif d.reason not in first.reason:
            first.reason = f"{first.reason}; {d.reason}"
    return out


class LiveWorker:
    """Consume ``readings``/``events``, drive the cores, produce outputs, commit offsets.

    A region is a partition of the readings topic (the sensor graph is partitioned by
    region): each assigned readings partition gets its own ``StreamCore``, restored from the
    checkpoint store when one is configured, so when partitions move between the workers of
    a group the new owner picks a region up where its last checkpoint left it. Events go to
    the core of the same partition number (co-partitioned topics), else to the core that
    knows the event's sensor. ``core`` serves the first region (``cores[p]`` afterwards);
    ``core_factory`` builds the others (needed for more than one readings partition).
    """

    def __init__(self, cfg: StreamConfig, core: StreamCore | None = None, *,
                 core_factory: Callable[[], StreamCore] | None = None,
                 idle_exit_s: float | None = None, max_messages: int | None = None,
                 status_every_s: float = 10.0, from_beginning: bool = False) -> None:
        if core is None and core_factory is None:
            raise ValueError("LiveWorker needs a core or a core_factory")
        self.cfg = cfg
        self._spare = core
        self.core_factory = core_factory
        self.cores: dict[int, StreamCore] = {}  # readings partition -> its region's core
        self.idle_exit_s = idle_exit_s
        self.max_messages = max_messages
        self.status_every_s = status_every_s
        self.stats = WorkerStats()
        self._stop = asyncio.Event()
        # next offset per (topic, partition) that the cores' state reflects: restored from
        # checkpoints, advanced by every processed batch; partitions (re)assigned to this
        # worker are sought there, so nothing is re-applied after a rebalance either
        self._positions: dict[tuple[str, int], int] = {}
        self._ckpt_steps: dict[int, int] = {}
        self._inflight: asyncio.Task[None] | None = None    # delivery of the last batch
        self._assigned_at = time.monotonic()    # idleness counts from data or an assignment
        # --from-beginning: the first assignment ignores committed offsets and checkpoints
        self._from_beginning = from_beginning
        self.nothing_to_read: str | None = None  # said once when the group is at the end

    def stop(self) -> None:
        self._stop.set()

    def store(self, partition: int) -> CheckpointStore | None:
        """The checkpoint store of one region (None without ``checkpoint.dir``)."""
        c = self.cfg.checkpoint
        if not c.dir:
            return None
        return CheckpointStore(c.dir, f"{self.cfg.kafka.group_id}/"
                               f"{self.cfg.kafka.readings_topic}-{partition}", keep=c.keep)

    def region(self, partition: int) -> StreamCore:
        """The core of a readings partition: restored from its newest valid checkpoint, or
        new."""
        core = self.cores.get(partition)
        if core is not None:
            return core
        if self._spare is not None:
            core, self._spare = self._spare, None
        elif self.core_factory is not None:
            core = self.core_factory()
        else:
            raise ValueError(f"this worker owns readings partition {partition} besides "
                             "another one: give it a core_factory")
        store = self.store(partition)
        ck = (store.load_latest() if store is not None and not self._from_beginning
              else None)
        if ck is not None:
            core.load_state_dict(ck.state)
            for name, off in ck.offsets.items():
                topic, _, part = name.rpartition("-")
                self._positions[(topic, int(part))] = off
            self.stats.restored_from = str(ck.path)
            log.info("region %d: restored state from %s (offsets %s)", partition, ck.path,
                     ck.offsets)
        elif store is not None:
            log.info("region %d: no checkpoint under %s: starting fresh", partition, store.dir)
        self.cores[partition] = core
        self._ckpt_steps[partition] = core.patcher.stats.closed_steps
        return core

    def _due(self) -> list[int]:
        """Regions whose closed steps since their last checkpoint reached the interval."""
        if not self.cfg.checkpoint.dir:
            return []
        every = self.cfg.checkpoint.every_steps
        return [p for p, core in self.cores.items()
                if core.patcher.stats.closed_steps - self._ckpt_steps[p] >= every]

    def _process(self, batch: dict[Any, list[Any]], active: set[int]) -> Outputs:
        """Split a fetched batch by region, run each region's core, merge the outputs."""
        k = self.cfg.kafka
        by_part: dict[int, list[Record]] = {}
        events: list[Record] = []
        for tp, msgs in batch.items():
            recs = [Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp)
                    for m in msgs]
            if tp.topic == k.events_topic:
                events.extend(recs)
            else:
                by_part.setdefault(tp.partition, []).extend(recs)
        for p in by_part:
            self.region(p)
        for r in events:
            by_part.setdefault(self._event_region(r), []).append(r)
        out = Outputs()
        for p, recs in sorted(by_part.items()):
            o, _ = process_records(self.region(p), recs, self.cfg, self.stats,
                                   {p} & active, now_ms=int(time.time() * 1000))
            out.forecasts += o.forecasts
            out.alerts += o.alerts
            out.dead_letters += o.dead_letters
        return out

    def _event_region(self, r: Record) -> int:
        """The region an event belongs to: its partition's (co-partitioned topics), else the
        region that knows its sensor, else the first region."""
        if r.partition in self.cores or not self.cores:
            return r.partition
        try:
            sensor = orjson.loads(r.value).get("sensor")
        except (orjson.JSONDecodeError, AttributeError):
            sensor = None
        for p, core in sorted(self.cores.items()):
            if sensor in core.patcher.registry.index:
                return p
        return min(self.cores)

    async def _retry(self, what: str, op: Any, deadline_s: float | None = None) -> Any:
        """Run ``await op()`` until it succeeds, backing off; ``deadline_s`` bounds the time
        (then ``BrokerUnavailable``), None retries until the worker is stopped."""
        from aiokafka.errors import KafkaError

        k = self.cfg.kafka
        t0 = time.monotonic()
        wait = 0.25
        attempt = 0
        while True:
            attempt += 1
            try:
                return await op()
            except (TimeoutError, KafkaError, OSError) as exc:
                self.stats.retries += 1
                spent = time.monotonic() - t0
                if deadline_s is not None and spent + wait > deadline_s:
                    raise BrokerUnavailable(
                        f"{what}: broker at {k.bootstrap_servers} not reachable for "
                        f"{spent:.0f}s ({type(exc).__name__}: {exc})") from None
                if self._stop.is_set() and deadline_s is None:
                    raise
                log.warning("%s failed (attempt %d: %s: %s); retrying in %.2fs", what,
                            attempt, type(exc).__name__, exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, k.retry_backoff_max_s)

    async def run(self) -> WorkerStats:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        apply_torch_threads(self.cfg)
        k = self.cfg.kafka
        deadline = k.connect_timeout_s

        async def start_producer() -> Any:
            p = AIOKafkaProducer(bootstrap_servers=k.bootstrap_servers, linger_ms=5,
                                 max_batch_size=1024 * 1024, acks=1,
                                 request_timeout_ms=10_000)
            try:
                await p.start()
            except BaseException:
                await p.stop()
                raise
            return p

        async def start_consumer() -> Any:
            c = AIOKafkaConsumer(
                bootstrap_servers=k.bootstrap_servers,
                group_id=k.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=k.session_timeout_ms,
                heartbeat_interval_ms=k.heartbeat_interval_ms,
                max_poll_interval_ms=k.max_poll_interval_ms, max_poll_records=k.max_batch,
                fetch_max_wait_ms=k.fetch_max_wait_ms, request_timeout_ms=10_000,
                fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024)
            try:
                await c.start()
                c.subscribe([k.readings_topic, k.events_topic],
                            listener=_RegionRebalance(self, c))
            except BaseException:
                await c.stop()
                raise
            return c

        producer = await self._retry("connecting the producer", start_producer, deadline)
        try:
            consumer = await self._retry("connecting the consumer", start_consumer, deadline)
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
        self._inflight = None
        try:
            while not self._stop.is_set():
                batch = await self._fetch(consumer)
                now = time.monotonic()
                if batch:
                    out = self._process(batch, await self._active_partitions(consumer, batch))
                    if self._inflight is not None:
                        await self._inflight  # outputs and commits stay in batch order
                        self._inflight = None
                    offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
                    self._positions.update({(tp.topic, tp.partition): off
                                            for tp, off in offsets.items()})
                    due = self._due()
                    if due:
                        # outputs first, then the durable checkpoint, then the commit
                        await self._produce(producer, out)
                        await self._checkpoint(consumer, due)
                    else:
                        self._inflight = asyncio.create_task(self._deliver(
                            consumer, producer, out,
                            None if self.cfg.checkpoint.dir else offsets))
                    last_data = now
                elif self._inflight is not None and self._inflight.done():
                    await self._inflight
                    self._inflight = None
                elif self.nothing_to_read is None and self.stats.messages == 0:
                    await self._check_at_end(consumer)
                if now - last_status >= self.status_every_s:
                    last_status = now
                    await self._update_lag(consumer)
                    log.info("status %s", orjson.dumps(self.stats.as_dict()).decode())
                if self.max_messages is not None and self.stats.messages >= self.max_messages:
                    break
                if (self.idle_exit_s is not None and not batch and self._inflight is None
                        and now - max(last_data, self._assigned_at) >= self.idle_exit_s):
                    await self._update_lag(consumer)
                    if sum(self.stats.lag.values()) == 0:
                        log.info("idle for %.1fs with no lag: stopping", self.idle_exit_s)
                        break
            if self._inflight is not None:
                await self._inflight
                self._inflight = None
            if self.cfg.checkpoint.dir and self.cores:
                await self._checkpoint(consumer, list(self.cores))        # on shutdown
        finally:
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()
            await consumer.stop()
            await producer.stop()
        return self.stats

    async def _check_at_end(self, consumer: Any) -> None:
        """Say once, loudly, when this group resumed every readings partition at its end:
        a second ``stfm run`` in the same group otherwise processes nothing in silence."""
        k = self.cfg.kafka
        tps = [tp for tp in consumer.assignment() if tp.topic == k.readings_topic]
        if not tps:
            return
        ends = []
        for tp in tps:
            hw = consumer.highwater(tp)     # known once a fetch answered for the partition
            if hw is None or hw == 0:
                return
            pos = await consumer.position(tp)   # nothing processed yet: where we resumed
            if pos < hw:
                return
            ends.append(f"{tp.topic}-{tp.partition} at offset {pos} of {hw}")
        self.nothing_to_read = (
            f"nothing to read: consumer group {k.group_id!r} already processed "
            f"{', '.join(ends)} (its committed offsets or checkpoints are at the end). To "
            "process the topic again start over with `stfm run --from-beginning` (fresh "
            "state) or use another `--group-id`.")
        log.warning("%s", self.nothing_to_read)

    def _region_offsets(self, partition: int) -> dict[str, int]:
        """Offsets a region's state reflects: its readings partition and the events
        partition of the same number (co-partitioned topics)."""
        k = self.cfg.kafka
        return {f"{t}-{p}": off for (t, p), off in self._positions.items()
                if p == partition and t in (k.readings_topic, k.events_topic)}

    async def _checkpoint(self, consumer: Any, regions: list[int]) -> None:
        """Write each region's state with the offsets it reflects, then commit them. Call
        only after the outputs of everything processed so far were acknowledged."""
        from aiokafka import TopicPartition

        commit: dict[Any, int] = {}
        for p in regions:
            store = self.store(p)
            assert store is not None
            core = self.cores[p]
            offsets = self._region_offsets(p)
            path = store.save(core.state_dict(), offsets,
                              {"model_version": core.model.version, "region": p,
                               "closed_steps": core.patcher.stats.closed_steps})
            self._ckpt_steps[p] = core.patcher.stats.closed_steps
            self.stats.checkpoints += 1
            log.debug("checkpoint %s at %s", path, offsets)
            for name, off in offsets.items():
                topic, _, part = name.rpartition("-")
                commit[TopicPartition(topic, int(part))] = off
        await self._commit(consumer, commit)

    async def _commit(self, consumer: Any, offsets: dict[Any, int]) -> None:
        """Commit (advisory when checkpoints hold the offsets); retried while the broker is
        away. Partitions this worker no longer owns are left to their new owner."""
        from aiokafka.errors import CommitFailedError, IllegalStateError

        owned = consumer.assignment()
        mine = {tp: off for tp, off in offsets.items() if tp in owned}
        if not mine:
            return
        try:
            await self._retry("committing offsets", lambda: consumer.commit(mine))
        except (CommitFailedError, IllegalStateError) as exc:
            # a rebalance took the partitions: the checkpoint still holds the offsets
            log.warning("commit skipped after a rebalance: %s", exc)

    async def _deliver(self, consumer: Any, producer: Any, out: Outputs,
                       offsets: dict[Any, int] | None) -> None:
        """Produce a batch's outputs, then commit its input offsets (at-least-once).

        Runs while the next batch is fetched and processed: the CPU-bound core stays on the
        event loop (a worker thread lost to GIL contention on 2 cores) and only the network
        round trips overlap. With checkpoints, offsets are committed at checkpoints only.
        """
        await self._produce(producer, out)
        if offsets is not None:
            await self._commit(consumer, offsets)

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
        """Send every output and wait for the broker's acks, retrying the whole set (same
        keys: a consumer deduplicates) until the broker takes it."""
        if out.forecasts or out.alerts or out.dead_letters:
            await self._retry("producing outputs", lambda: self._produce_once(producer, out))

    async def _produce_once(self, producer: Any, out: Outputs) -> None:
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


class _RegionRebalance(ConsumerRebalanceListener):
    """Rebalance hooks: a region leaving this worker is checkpointed and dropped (after its
    outputs were produced); a region arriving is restored from its checkpoint, and every
    assigned partition is sought to the offset its state reflects."""

    def __init__(self, worker: LiveWorker, consumer: Any) -> None:
        self.worker = worker
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        w = self.worker
        k = w.cfg.kafka
        gone = sorted(tp.partition for tp in revoked
                      if tp.topic == k.readings_topic and tp.partition in w.cores)
        if not gone:
            return
        if w._inflight is not None:
            await w._inflight
            w._inflight = None
        if w.cfg.checkpoint.dir:
            await w._checkpoint(self.consumer, gone)
        for p in gone:
            del w.cores[p]
            w._positions.pop((k.readings_topic, p), None)
            log.info("region %d handed over", p)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        w = self.worker
        k = w.cfg.kafka
        w._assigned_at = time.monotonic()
        for tp in assigned:
            if tp.topic == k.readings_topic:
                w.region(tp.partition)          # restores its checkpoint, if any
        for tp in assigned:
            off = w._positions.get((tp.topic, tp.partition))
            if off is not None:
                self.consumer.seek(tp, off)
                log.info("resuming %s-%d at offset %d", tp.topic, tp.partition, off)
            elif w._from_beginning:
                await self.consumer.seek_to_beginning(tp)
                log.info("%s-%d: from the beginning (--from-beginning)", tp.topic,
                         tp.partition)
        w._from_beginning = False               # only the first assignment starts over
