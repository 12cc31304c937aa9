"""The live worker: Kafka micro-batches in, each region's core, outputs out, offsets committed.

The fetch loop uses aiokafka's ``getmany`` (batched, ~500k msgs/s here) with manual offset
commits after the outputs of a batch were acknowledged (at-least-once; outputs carry
deterministic keys). Processing stays on the event loop while the previous batch's outputs are
produced. With ``checkpoint.dir``, state and offsets go through ``streaming.runtime.checkpointing``
(outputs → state → offsets). Regions (one per readings partition) are in
``streaming.runtime.regions``; the per-batch work is
``streaming.runtime.microbatch.process_records``, the same function the Faust engine runs.

Broker faults: unreachable at start, the worker retries with backoff and gives up after
``kafka.connect_timeout_s`` (``BrokerUnavailable``); gone mid-run, fetches come back empty,
producing and committing are retried until the broker returns, and input is never
acknowledged (committed or checkpointed) before its outputs were produced.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import ConsumerRebalanceListener

from connectors import kafka_async
from connectors.kafka_async import TP, BrokerUnavailable
from connectors.schemas import decode_readings
from streaming.config import StreamConfig
from streaming.ingest.cadence import (
    Cadence,
    CadenceEstimator,
    format_interval,
    mismatch,
    mismatch_message,
    nice_interval,
)
from streaming.ingest.halo import HALO_PARTITION, HaloPlan
from streaming.pipeline.core import StreamCore
from streaming.runtime import watch
from streaming.runtime.checkpointing import Checkpointer
from streaming.runtime.microbatch import (
    Outputs,
    WorkerStats,
    apply_torch_threads,
    flush_cores,
    process_records,
)
from streaming.runtime.observe import Observer, Observers
from streaming.runtime.regions import Regions

log = logging.getLogger(__name__)

__all__ = ["BrokerUnavailable", "LiveWorker"]

CADENCE_HOLD_MAX = 200_000    # readings held at most while inferring the cadence


class LiveWorker:
    """Consume ``readings``/``events``, drive the regions' cores, produce, commit.

    ``core``: the first region's core; ``core_factory()``: a new core for another region
    (``core_factory(keep=sensors)`` with the halo exchange: a core over those sensors of the
    graph, ``streaming.pipeline.factory.build_core``)."""

    def __init__(self, cfg: StreamConfig, core: StreamCore | None = None, *,
                 core_factory: Callable[..., StreamCore] | None = None,
                 idle_exit_s: float | None = None, max_messages: int | None = None,
                 status_every_s: float = 10.0, from_beginning: bool = False,
                 observers: list[Observer] | tuple[Observer, ...] = (),
                 infer_interval: bool = False) -> None:
        self.cfg = cfg
        self.observers = Observers(observers)   # metrics, the live page
        self.checkpointer = Checkpointer(cfg)
        # the halo exchange (``streaming.ingest.halo``): with a partition map and a graph, each
        # region's core holds its own sensors and ghosts; the ghosts' readings come through
        # the boundary topic and its boundary sensors' readings go out
        self.halo = halo_plan(cfg)
        self._make = core_factory
        if self.halo is not None:
            if core_factory is None:
                raise ValueError("the halo exchange needs a core_factory (a core per region)")
            core = None                          # each region's core is its own subset
        factory = self._region_core if core_factory is not None else None
        self.regions = Regions(self.checkpointer, core, factory)
        self.regions.restore = not from_beginning
        self.idle_exit_s = idle_exit_s
        self.max_messages = max_messages
        self.status_every_s = status_every_s
        self.stats = WorkerStats()
        self.nothing_to_read: str | None = None  # said once when the group is at the end
        self._from_beginning = from_beginning    # the first assignment starts over
        self._stop = asyncio.Event()
        # held while a batch is processed and delivered, and by the rebalance hooks: aiokafka
        # runs them in its own task, and a region must not be checkpointed and dropped by a
        # revocation while a batch of it is half processed (or its outputs unacknowledged)
        self._work = asyncio.Lock()
        self._generation = 0        # rebalances seen (revocations and assignments)
        self._inflight: asyncio.Task[None] | None = None    # delivery of the last batch
        # idle since (monotonic): the input was read to its end (every assigned partition
        # fetched at least once) with nothing held or in flight; None while it is not
        self._idle_since: float | None = None
        self._consumer: Any = None
        self._producer: Any = None
        # the data's cadence: inferred before anything is processed (``infer_interval``,
        # readings held meanwhile), else checked against the configured grid
        self.infer_interval = infer_interval
        self.cadence = CadenceEstimator()
        self.cadence_note: str | None = None       # what was inferred, or the mismatch
        self._cadence_open = True
        self._watched = 0
        self._held: list[dict[Any, list[Any]]] = []
        self._halo_seen: dict[int, float] = {}    # region -> last boundary data (monotonic)
        if self.halo is not None:
            self.regions.on_new = self._own_sensors
            log.info("halo exchange over %r: %d hop(s), own sensors per region %s, ghosts %s",
                     cfg.kafka.boundary_topic, self.halo.hops, self.halo.sizes()["own"],
                     self.halo.sizes()["ghosts"])

    def _region_core(self, region: int) -> StreamCore:
        """A new core for a region: with the halo, over its own sensors and ghosts."""
        assert self._make is not None
        if self.halo is not None:
            return self._make(keep=self.halo.members(region))
        return self._make()

    def _own_sensors(self, region: int, core: StreamCore) -> None:
        assert self.halo is not None
        core.set_own(self.halo.own.get(region, frozenset()))
        self._halo_seen.setdefault(region, time.monotonic())

    @property
    def cores(self) -> dict[int, StreamCore]:
        return self.regions.cores

    def stop(self) -> None:
        self._stop.set()

    def working(self) -> asyncio.Lock:
        """The lock held while a batch is processed and delivered (``async with``): the
        rebalance hooks take it, so a rebalance never lands in the middle of a batch."""
        return self._work

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> WorkerStats:
        apply_torch_threads(self.cfg)
        k = self.cfg.kafka
        producer = await self._retry("connecting the producer",
                                     lambda: kafka_async.start_producer(k.bootstrap_servers),
                                     k.connect_timeout_s)
        listener = _Rebalance(self)
        topics = [k.readings_topic, k.events_topic]
        if self.halo is not None:
            from connectors.kafka_io import ensure_topics

            await asyncio.to_thread(ensure_topics, k.bootstrap_servers, [k.boundary_topic],
                                    partitions=self.halo.partitions)
            topics.append(k.boundary_topic)
        try:
            consumer = await self._retry(
                "connecting the consumer", lambda: kafka_async.start_consumer(
                    k, topics, listener, copartitioned=self.halo is not None),
                k.connect_timeout_s)
        except BaseException:
            await producer.stop()
            raise
        listener.consumer = self._consumer = consumer
        self._producer = producer
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests run the worker in a thread)
        try:
            await self._loop(consumer, producer)
        finally:
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()
            await consumer.stop()
            await producer.stop()
        self._sync_stats()
        return self.stats

    def _sync_stats(self) -> None:
        self.stats.checkpoints = self.checkpointer.checkpoints
        self.stats.restored_from = self.regions.restored_from

    async def _loop(self, consumer: Any, producer: Any) -> None:
        k = self.cfg.kafka
        last_status = last_lag = time.monotonic()
        idle = False
        while not self._stop.is_set():
            batch = await self._fetch(consumer)
            generation = self._generation       # the assignment the batch was fetched for
            now = time.monotonic()
            if batch and self._cadence_open:
                batch = self._watch_cadence(batch)
            if batch:
                async with self._work:
                    if generation == self._generation:
                        await self._handle(consumer, producer, batch)
                    else:
                        # a rebalance came between the fetch and now: every assigned
                        # partition resumes where its state says (checkpoint or committed
                        # offset), so these records come again; processed now they would be
                        # applied twice
                        log.info("a batch fetched before a rebalance is dropped (%d records): "
                                 "its partitions resume from their checkpoints or committed "
                                 "offsets", sum(len(m) for m in batch.values()))
            elif self._inflight is not None and self._inflight.done():
                async with self._work:
                    await self._settle()
            elif self.nothing_to_read is None and self.stats.messages == 0 and not self._held:
                self.nothing_to_read = await watch.at_end(consumer, k)
                if self.nothing_to_read:
                    log.warning("%s", self.nothing_to_read)
            if now - last_status >= self.status_every_s:
                last_status = last_lag = now
                self.stats.lag = await watch.lag(consumer)
                self.observers.lag_measured(self.stats.lag)
                self._sync_stats()
                log.info("status %s", orjson.dumps(self.stats.as_dict()).decode())
            elif self.observers and now - last_lag >= self.cfg.observe.lag_every_s:
                last_lag = now
                self.stats.lag = await watch.lag(consumer)
                self.observers.lag_measured(self.stats.lag)
            if self.max_messages is not None and self.stats.messages >= self.max_messages:
                break
            if self.idle_exit_s is not None:
                # idle: the input read to its end with nothing in flight; a worker that has
                # read nothing yet waits for its first input (a consumer started before its
                # producer), unless its group already read everything there is
                started = (self.stats.messages > 0 or bool(self._held)
                           or self.nothing_to_read is not None)
                if batch or self._inflight is not None or not started:
                    self._idle_since = None
                elif not await watch.caught_up(consumer):
                    self._idle_since = None
                elif self._idle_since is None:
                    self._idle_since = now
                elif now - self._idle_since >= self.idle_exit_s:
                    log.info("idle for %.1fs with no lag: stopping", self.idle_exit_s)
                    idle = True
                    break
        self.stats.lag = await watch.lag(consumer)      # at exit, for the summary
        async with self._work:
            await self._shut_down(consumer, producer, idle)

    async def _shut_down(self, consumer: Any, producer: Any, idle: bool) -> None:
        """What is left when the loop ends: held readings, the last delivery, at the end
        of the input (``idle``) the last partial step, and the final checkpoint."""
        if self._held:          # the input ended (or we stop) before the cadence was clear
            await self._handle(consumer, producer, self._release(force=True))
        await self._settle()
        # the end of the input: the last, partial step is closed, forecast and scored
        last = Outputs()
        if idle:
            t0 = time.perf_counter()
            last = flush_cores(self.cores, self.stats, self.observers.region_processed)
            self.observers.batch_processed(last, self.stats, time.perf_counter() - t0)
        if self.checkpointer.enabled and self.cores:
            await self._checkpoint(list(self.cores), last)        # on shutdown
        elif last.forecasts or last.alerts:
            await self._produce(producer, last)

    async def _handle(self, consumer: Any, producer: Any, batch: dict[Any, list[Any]]) -> None:
        """Process a fetched batch, then deliver its outputs and store/commit its offsets
        (through a checkpoint when one is due)."""
        k = self.cfg.kafka
        active = await watch.active_partitions(consumer, batch, k.readings_topic)
        halo = (await watch.active_partitions(consumer, batch, k.boundary_topic)
                if self.halo is not None else set())
        out = self._process(batch, active, halo)
        await self._settle()                # outputs and commits stay in batch order
        offsets = {TP(tp.topic, tp.partition): msgs[-1].offset + 1
                   for tp, msgs in batch.items()}
        for tp, off in offsets.items():
            self.checkpointer.store_offset(tp, off)
        due = self.checkpointer.due(self.cores)
        if due:
            await self._checkpoint(due, out)
        else:
            self._inflight = asyncio.create_task(self._deliver(
                producer, out, None if self.checkpointer.enabled else offsets))

    # --- the data's cadence ---------------------------------------------------------------

    def _watch_cadence(self, batch: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
        """Learn the cadence from a batch's readings. Inferring: hold the batch until the
        cadence is known, then return every held batch as one (empty while holding).
        Checking: say loudly when the grid and the data disagree; the batch goes on."""
        k = self.cfg.kafka
        raws = [m.value for tp, msgs in batch.items() if tp.topic == k.readings_topic
                for m in msgs]
        readings, _ = decode_readings(raws, timezone=self.cfg.patching.timezone)
        self.cadence.learn_many(readings.sensors, readings.ts)
        self._watched += len(raws)
        found = self.cadence.estimate()
        if found is None and (self.cadence.saturated or self._watched >= CADENCE_HOLD_MAX):
            found = self.cadence.estimate(force=True)
        if not self.infer_interval:
            if found is not None:
                self._cadence_open = False
                grid = self.cfg.patching.interval_ms
                if mismatch(grid, found.interval_ms):
                    self.cadence_note = mismatch_message(grid, found, "stfm run")
                    log.warning("%s", self.cadence_note)
            return batch
        self._held.append(batch)
        if found is None:
            if len(self._held) == 1:
                log.info("holding readings until their cadence is known (no --interval-ms "
                         "given): %d sensor(s) seen so far", len(readings.sensors))
            return {}
        return self._release(found)

    def _release(self, found: Cadence | None = None, force: bool = False
                 ) -> dict[Any, list[Any]]:
        """Set the grid from the inferred cadence, rebuild the regions' cores on it, and
        hand back the held batches as one."""
        if found is None and force:
            found = self.cadence.estimate(force=True)
        self._cadence_open = False
        p = self.cfg.patching
        if found is None:
            self.cadence_note = (f"no sensor sent two readings: the grid stays at "
                                 f"{format_interval(p.interval_ms)} (patching.interval_ms)")
            log.warning("%s", self.cadence_note)
        else:
            p.interval_ms = nice_interval(found.interval_ms)
            self.cadence_note = (f"grid interval inferred from the data: "
                                 f"{format_interval(p.interval_ms)} = {p.interval_ms} ms; the "
                                 f"readings come every {found.describe()}. Pass --interval-ms "
                                 f"to set it")
            log.warning("%s", self.cadence_note)
            self.regions.rebuild()
        merged: dict[Any, list[Any]] = {}
        for b in self._held:
            for tp, msgs in b.items():
                merged.setdefault(tp, []).extend(msgs)
        self._held = []
        return merged

    def _process(self, batch: dict[Any, list[Any]], active: set[int],
                 halo_active: set[int] | frozenset[int] = frozenset()) -> Outputs:
        """Split a fetched batch by region, run each region's core, merge the outputs.
        ``halo_active``: boundary partitions with ghost readings still to come."""
        # aiokafka's records go in as they are (no copy per message: ``InputRecord``)
        recs = {(tp.topic, tp.partition): msgs for tp, msgs in batch.items()}
        out = Outputs()
        t0 = time.perf_counter()
        now_ms = int(time.time() * 1000)
        for p, records in sorted(self.regions.split(recs, self.cfg.kafka.events_topic).items()):
            core = self.regions.get(p)
            o, core_out = process_records(core, records, self.cfg, self.stats,
                                          self._waits_for(p, active, halo_active, recs),
                                          now_ms=now_ms, halo=self.halo, region=p)
            self.observers.region_processed(p, core, core_out)
            out.forecasts += o.forecasts
            out.alerts += o.alerts
            out.dead_letters += o.dead_letters
            out.boundary += o.boundary
            for kind, n in o.dead_reasons.items():
                out.dead_reasons[kind] = out.dead_reasons.get(kind, 0) + n
        self.observers.batch_processed(out, self.stats, time.perf_counter() - t0)
        return out

    def _waits_for(self, region: int, active: set[int], halo_active: set[int] | frozenset[int],
                   recs: dict[tuple[str, int], list[Any]]) -> set[int]:
        """The clock partitions a region waits for: its readings partition while it has data
        to come, and with ghosts also their halo partition while it has data to come or
        their regions sent something within ``kafka.halo_wait_s`` (so a step closes with its
        ghosts' readings in it; a neighbour that went quiet holds nothing back for longer).
        Ghosts never move the clock: with a halo the own partition is always waited for."""
        mine = {region} & active
        if self.halo is None or not self.halo.ghosts.get(region):
            return mine
        now = time.monotonic()
        if (self.cfg.kafka.boundary_topic, region) in recs:
            self._halo_seen[region] = now
        if region in halo_active or (
                now - self._halo_seen.get(region, now) < self.cfg.kafka.halo_wait_s):
            return {region, HALO_PARTITION}
        return {region}

    async def _settle(self) -> None:
        """Wait for the previous batch's delivery (outputs, then its commit)."""
        if self._inflight is not None:
            await self._inflight
            self._inflight = None

    # --- delivery and commits -----------------------------------------------------------

    async def _deliver(self, producer: Any, out: Outputs, offsets: dict[TP, int] | None) -> None:
        """Produce a batch's outputs, then (without checkpoints) commit its input offsets.
        Runs while the next batch is fetched and processed."""
        await self._produce(producer, out)
        if offsets is not None:
            await self._commit_offsets(offsets)

    async def _checkpoint(self, regions: list[int], out: Outputs) -> None:
        await self.checkpointer.commit(regions, self.cores,
                                       produce=lambda: self._produce(self._producer, out),
                                       commit_offsets=self._commit_offsets)
        self.observers.checkpointed(regions, time.time())

    async def _produce(self, producer: Any, out: Outputs) -> None:
        """Send every output and wait for the acks, retrying the whole set (same keys: a
        consumer deduplicates) until the broker takes it."""
        k = self.cfg.kafka
        msgs = {k.forecasts_topic: out.forecasts, k.alerts_topic: out.alerts,
                k.dead_letter_topic: out.dead_letters}
        placed = {k.boundary_topic: out.boundary} if out.boundary else None
        if any(msgs.values()) or placed:
            await self._retry("producing outputs",
                              lambda: kafka_async.produce(producer, msgs, placed))

    async def _commit_offsets(self, offsets: dict[TP, int]) -> None:
        """Commit (advisory when checkpoints hold the offsets); retried while the broker is
        away. Partitions this worker no longer owns are left to their new owner."""
        from aiokafka import TopicPartition
        from aiokafka.errors import CommitFailedError, IllegalStateError

        consumer = self._consumer
        owned = consumer.assignment()
        mine = {TopicPartition(*tp): off for tp, off in offsets.items()
                if TopicPartition(*tp) in owned}
        if not mine:
            return
        try:
            await self._retry("committing offsets", lambda: consumer.commit(mine),
                              fatal=(CommitFailedError, IllegalStateError))
        except (CommitFailedError, IllegalStateError) as exc:
            # a rebalance took the partitions: the checkpoint still holds the offsets
            log.warning("commit skipped after a rebalance: %s", exc)

    async def _retry(self, what: str, op: Callable[[], Awaitable[Any]],
                     deadline_s: float | None = None,
                     fatal: tuple[type[BaseException], ...] = ()) -> Any:
        k = self.cfg.kafka

        def counted() -> None:
            self.stats.retries += 1

        return await kafka_async.retry(what, op, servers=k.bootstrap_servers,
                                       backoff_max_s=k.retry_backoff_max_s,
                                       deadline_s=deadline_s, stopped=self._stop.is_set,
                                       on_retry=counted, fatal=fatal)

    # --- rebalances (public: the listener calls these) ----------------------------------

    async def on_revoked(self, revoked: list[TP]) -> None:
        """Regions leaving this worker: checkpointed (after their outputs) and dropped, once
        the batch being processed is done."""
        async with self._work:
            self._generation += 1
            await self._revoke(revoked)

    async def _revoke(self, revoked: list[TP]) -> None:
        k = self.cfg.kafka
        gone = sorted(tp.partition for tp in revoked
                      if tp.topic == k.readings_topic and tp.partition in self.cores)
        if not gone:
            return
        await self._settle()
        if self.checkpointer.enabled:
            await self._checkpoint(gone, Outputs())
        for p in gone:
            self.regions.drop(p)
            log.info("region %d handed over", p)

    def on_assigned(self, assigned: list[TP]) -> dict[TP, int | None]:
        """Regions arriving: restored from their checkpoints; returns where each assigned
        partition resumes (an offset; None: the group's committed offset; -1: its start)."""
        k = self.cfg.kafka
        self._generation += 1
        self._idle_since = None                 # idleness counts again from the new assignment
        for tp in assigned:
            if tp.topic == k.readings_topic:
                self.regions.get(tp.partition)
        seek: dict[TP, int | None] = {}
        for tp in assigned:
            off = self.checkpointer.position(tp)
            seek[tp] = off if off is not None else (-1 if self._from_beginning else None)
        self._from_beginning = False
        self.regions.restore = True             # later arrivals resume from checkpoints
        return seek

    # --- fetching -----------------------------------------------------------------------

    async def _fetch(self, consumer: Any) -> dict[Any, list[Any]]:
        """One micro-batch of readings plus the events fetched so far. Events are fetched on
        their own: ``getmany`` fills ``max_records`` from the partitions in order, so a
        readings backlog would starve the small events topic. Readings are never processed
        before every assigned events partition has answered a fetch (its end is known), so
        events published before the readings they touch are applied first however slow that
        first answer is."""
        k = self.cfg.kafka
        rd_tps = [tp for tp in consumer.assignment() if tp.topic != k.events_topic]
        batch: dict[Any, list[Any]] = dict(await consumer.getmany(
            *rd_tps, timeout_ms=k.fetch_timeout_ms, max_records=k.max_batch))
        t0 = time.monotonic()
        warned = False
        while True:
            ev_tps = [tp for tp in consumer.assignment() if tp.topic == k.events_topic]
            if not ev_tps:
                return batch
            unknown = any(consumer.highwater(tp) is None for tp in ev_tps)
            for tp, msgs in (await consumer.getmany(
                    *ev_tps, timeout_ms=k.fetch_timeout_ms if unknown else 0,
                    max_records=k.max_batch)).items():
                batch.setdefault(tp, []).extend(msgs)
            if (not unknown or not batch or self._stop.is_set()
                    or all(consumer.highwater(tp) is not None for tp in ev_tps)):
                return batch
            if not warned and time.monotonic() - t0 > 10:
                warned = True
                log.warning("readings wait for the first answer of the events partitions "
                            "(%s), so that events are applied before the readings they touch",
                            ", ".join(f"{tp.topic}-{tp.partition}" for tp in ev_tps))


def halo_plan(cfg: StreamConfig) -> HaloPlan | None:
    """The halo exchange's plan when it applies: ``kafka.halo`` on, a partition map and a
    graph with edges (``graph``); None otherwise."""
    k = cfg.kafka
    if not (k.halo and k.partition_map and cfg.graph):
        return None
    from connectors.partitioning import PartitionMap
    from connectors.recordings import read_recording

    rec = read_recording(cfg.graph)
    if rec.edge_index is None or rec.edge_index.shape[1] == 0:
        return None
    return HaloPlan.build(PartitionMap.load(k.partition_map), list(rec.sensors),
                          rec.edge_index, k.halo_hops)


class _Rebalance(ConsumerRebalanceListener):
    """aiokafka's rebalance hooks, handed to the worker's public ``on_revoked`` and
    ``on_assigned``; seeks each assigned partition where the worker says it resumes."""

    def __init__(self, worker: LiveWorker) -> None:
        self.worker = worker
        self.consumer: Any = None       # set once the consumer exists

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.worker.on_revoked([TP(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        from aiokafka import TopicPartition

        consumer = self.consumer
        async with self.worker.working():
            seek = self.worker.on_assigned([TP(tp.topic, tp.partition) for tp in assigned])
            for tp, off in seek.items():
                if off is None:
                    continue
                if off < 0:
                    await consumer.seek_to_beginning(TopicPartition(*tp))
                    log.info("%s-%d: from the beginning (--from-beginning)", *tp)
                else:
                    consumer.seek(TopicPartition(*tp), off)
                    log.info("resuming %s-%d at offset %d", tp.topic, tp.partition, off)
