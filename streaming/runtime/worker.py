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
acknowledged (committed or checkpointed) before its outputs were produced. A resume or
fetch position outside its partition (a broker back empty, a topic recreated, retention) is
an error, counted, and handled by ``kafka.offset_out_of_range`` (``OffsetOutOfRange`` with
``fail``); a region assigned straight back keeps its in-memory state.

``kafka.processing_guarantee = exactly_once``: each region has a transactional producer
(``connectors.transactions``, id per readings partition, so a new owner fences the old one)
and each batch's outputs go out in one transaction per region together with that region's
input offsets (``send_offsets_to_transaction``): a ``read_committed`` consumer sees them
once, or not at all until they commit. Checkpoints (every ``checkpoint.every_steps``) lag
the committed offsets, so after a crash a region restores its state at the checkpoint's
offset X, re-processes X up to the group's committed offset Y without emitting anything
(those outputs were committed; the core is deterministic), and emits from Y on
(``split_replay``). Without checkpoints a region resumes at Y with fresh state.
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

from connectors import kafka_async, transactions
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
    origin_headers,
    process_records,
)
from streaming.runtime.observe import Observer, Observers
from streaming.runtime.regions import Regions

log = logging.getLogger(__name__)

__all__ = ["BrokerUnavailable", "LiveWorker", "OffsetOutOfRange", "TransactionFailed"]

CADENCE_HOLD_MAX = 200_000    # readings held at most while inferring the cadence


class OffsetOutOfRange(RuntimeError):
    """A resume or fetch position outside its partition, with ``kafka.offset_out_of_range
    = fail``."""


class TransactionFailed(RuntimeError):
    """A region's transaction failed for a reason no retry fixes (its producer was fenced
    by a newer owner of the partition, or a fatal transactional error): the worker stops
    without acknowledging anything more; a restart resumes from the committed offsets."""


def split_replay(batch: dict[Any, list[Any]], until: dict[TP, int]
                 ) -> tuple[dict[Any, list[Any]], dict[Any, list[Any]]]:
    """Split a fetched batch at the offsets in ``until`` (per partition, the group's
    committed offset): records below it were processed and their outputs committed before a
    crash (they are processed again, silently, to rebuild the state the checkpoint lacks);
    the rest are new. Returns ``(silent, new)``; partitions not in ``until`` are all new."""
    silent: dict[Any, list[Any]] = {}
    new: dict[Any, list[Any]] = {}
    for tp, msgs in batch.items():
        y = until.get(TP(tp[0], tp[1]))
        if y is None or not msgs or msgs[0].offset >= y:
            new[tp] = msgs
            continue
        cut = next((i for i, m in enumerate(msgs) if m.offset >= y), len(msgs))
        silent[tp] = msgs[:cut]
        if cut < len(msgs):
            new[tp] = msgs[cut:]
    return silent, new


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
        # Kafka headers on the alerts: which engine and worker raised them
        self.headers = {cfg.kafka.alerts_topic: origin_headers("aiokafka")}
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
        self._assigning = False     # between an assignment and the seeks it makes
        self._sought: dict[TP, int] = {}    # where the last assignment put each partition
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
        self._parked: set[int] = set()    # regions revoked, kept until the next assignment
        self._expect: dict[TP, tuple[int, str]] = {}   # resume offsets not checked yet
        self.failure: BaseException | None = None   # why the worker stopped itself
        # exactly_once: a transactional producer per region, the offsets each partition's
        # last transaction committed, and per partition the committed offset below which
        # re-processed records emit nothing (``split_replay``)
        self.exactly_once = cfg.kafka.processing_guarantee == "exactly_once"
        self._txn: dict[int, Any] = {}
        self._txn_done: dict[TP, int] = {}
        self._replay: dict[TP, int] = {}
        self.replayed = 0          # records re-processed without emitting (exactly_once)
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
        if self.exactly_once:
            transactions.ensure_supported()     # a client library it cannot teach: now
        producer = await self._retry("connecting the producer",
                                     lambda: kafka_async.start_producer(k.bootstrap_servers,
                                                                        security=k),
                                     k.connect_timeout_s)
        listener = _Rebalance(self)
        topics = [k.readings_topic, k.events_topic]
        if self.halo is not None:
            from connectors.kafka_io import ensure_topics

            await asyncio.to_thread(ensure_topics, k.bootstrap_servers, [k.boundary_topic],
                                    partitions=self.halo.partitions, security=k)
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
            for region in list(self._txn):
                await self._close_txn(region)
        self._sync_stats()
        if self.failure is not None:
            raise self.failure
        return self.stats

    def _sync_stats(self) -> None:
        self.stats.checkpoints = self.checkpointer.checkpoints
        self.stats.restored_from = self.regions.restored_from

    async def _loop(self, consumer: Any, producer: Any) -> None:
        k = self.cfg.kafka
        last_status = last_lag = last_range = time.monotonic()
        idle = False
        while not self._stop.is_set():
            generation = self._generation       # the assignment the batch is fetched for
            batch = await self._fetch(consumer)
            if batch and (self._assigning or generation != self._generation):
                # fetched while an assignment was sought to where its partitions resume
                async with self._work:      # until the assignment's seeks are done
                    batch = await self._trim(consumer, batch)
                    generation = self._generation
            if self._expect:
                await self.check_positions(consumer, batch)
            now = time.monotonic()
            if batch and self._cadence_open:
                batch = self._watch_cadence(batch)
            if batch:
                async with self._work:
                    if generation != self._generation:     # a rebalance since the fetch
                        batch = await self._trim(consumer, batch)
                    if batch:
                        await self._handle(consumer, producer, batch)
            elif self._inflight is not None and self._inflight.done():
                async with self._work:
                    await self._settle()
            elif self.nothing_to_read is None and self.stats.messages == 0 and not self._held:
                self.nothing_to_read = await watch.at_end(consumer, k)
                if self.nothing_to_read:
                    log.warning("%s", self.nothing_to_read)
            if now - last_range >= min(self.status_every_s, self.cfg.observe.lag_every_s):
                last_range = now
                await self.check_positions(consumer)
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
        if self.exactly_once and isinstance(self.failure, TransactionFailed):
            log.error("no final checkpoint: a transaction failed, so the state is ahead of "
                      "the committed offsets")
            return
        # the end of the input: the last, partial step is closed, forecast and scored
        last = Outputs()
        by_region: dict[int, Outputs] = {}
        if idle:
            t0 = time.perf_counter()
            for p, core in sorted(self.cores.items()):
                by_region[p] = flush_cores({p: core}, self.stats,
                                           self.observers.region_processed)
                last.forecasts += by_region[p].forecasts
                last.alerts += by_region[p].alerts
            self.observers.batch_processed(last, self.stats, time.perf_counter() - t0)
        if self.checkpointer.enabled and self.cores:
            await self._checkpoint(list(self.cores), last, by_region)        # on shutdown
        elif self.exactly_once:
            await self._deliver(producer, last, None, by_region)
        elif last.forecasts or last.alerts:
            await self._produce(producer, last)

    async def _handle(self, consumer: Any, producer: Any, batch: dict[Any, list[Any]]) -> None:
        """Process a fetched batch, then deliver its outputs and store/commit its offsets
        (through a checkpoint when one is due)."""
        k = self.cfg.kafka
        active = await watch.active_partitions(consumer, batch, k.readings_topic)
        halo = (await watch.active_partitions(consumer, batch, k.boundary_topic)
                if self.halo is not None else set())
        new = batch
        if self._replay:
            silent, new = split_replay(batch, self._replay)
            if silent:
                # emitted before a crash: rebuild the state, drop the outputs again
                self._process(silent, active, halo)
                self.replayed += sum(len(m) for m in silent.values())
            for tp, msgs in batch.items():
                key = TP(tp.topic, tp.partition)
                if key in self._replay and msgs[-1].offset + 1 >= self._replay[key]:
                    del self._replay[key]
                    log.info("%s-%d: caught up with its committed offset; emitting again "
                             "(%d records re-processed silently so far)", key.topic,
                             key.partition, self.replayed)
        by_region: dict[int, Outputs] = {}
        out = self._process(new, active, halo, by_region) if new else Outputs()
        await self._settle()                # outputs and commits stay in batch order
        offsets = {TP(tp.topic, tp.partition): msgs[-1].offset + 1
                   for tp, msgs in batch.items()}
        for tp, off in offsets.items():
            self.checkpointer.store_offset(tp, off)
        due = self.checkpointer.due(self.cores)
        if due:
            await self._checkpoint(due, out, by_region)
        else:
            self._inflight = asyncio.create_task(self._deliver(
                producer, out, None if self.checkpointer.enabled else offsets, by_region))

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
                p = self.cfg.patching
                phase = self.cadence.phase(grid)
                if mismatch(grid, found.interval_ms):
                    self.cadence_note = mismatch_message(grid, found, "stfm run")
                    log.warning("%s", self.cadence_note)
                elif phase != p.grid_phase_ms and self.cadence.straddling(grid,
                                                                          p.grid_phase_ms):
                    self.cadence_note = (
                        f"stfm run: the readings sit {format_interval(phase)} after the "
                        f"grid's points and jitter across the half point between two of "
                        f"them, so some share a grid point and leave the next one empty; "
                        f"--set patching.grid_phase_ms={phase} puts the grid where they are")
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
            p.grid_phase_ms = self.cadence.phase(p.interval_ms)
            at = (f", its points {format_interval(p.grid_phase_ms)} past the interval's "
                  f"multiples, where the readings are (patching.grid_phase_ms)"
                  if p.grid_phase_ms else "")
            self.cadence_note = (f"grid interval inferred from the data: "
                                 f"{format_interval(p.interval_ms)} = {p.interval_ms} ms{at}; "
                                 f"the readings come every {found.describe()}. Pass "
                                 f"--interval-ms to set it")
            log.info("%s", self.cadence_note)        # right as inferred: not a warning
            self.regions.rebuild()
        merged: dict[Any, list[Any]] = {}
        for b in self._held:
            for tp, msgs in b.items():
                merged.setdefault(tp, []).extend(msgs)
        self._held = []
        return merged

    def _process(self, batch: dict[Any, list[Any]], active: set[int],
                 halo_active: set[int] | frozenset[int] = frozenset(),
                 by_region: dict[int, Outputs] | None = None) -> Outputs:
        """Split a fetched batch by region, run each region's core, merge the outputs
        (and keep each region's in ``by_region`` when given: its transaction's share).
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
            if by_region is not None:
                by_region[p] = o
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

    async def _deliver(self, producer: Any, out: Outputs, offsets: dict[TP, int] | None,
                       by_region: dict[int, Outputs] | None = None) -> None:
        """Produce a batch's outputs, then (without checkpoints) commit its input offsets;
        with exactly_once, one transaction per region holds both (``by_region``: each
        region's outputs). Runs while the next batch is fetched and processed."""
        if self.exactly_once:
            try:
                await self._transact(self._txn_work(by_region or {}))
            except TransactionFailed as exc:
                self._fail(exc)
            return
        await self._produce(producer, out)
        if offsets is not None:
            await self._commit_offsets(offsets)

    async def _checkpoint(self, regions: list[int], out: Outputs,
                          by_region: dict[int, Outputs] | None = None) -> None:
        if self.exactly_once:
            # the outputs and offsets go in the regions' transactions; the checkpoint's
            # offsets are then the committed ones, and nothing is committed outside them
            async def produce() -> None:
                await self._transact(self._txn_work(by_region or {}))

            async def nothing(_: dict[TP, int]) -> None:
                return None

            try:
                await self.checkpointer.commit(regions, self.cores, produce=produce,
                                               commit_offsets=nothing)
            except TransactionFailed as exc:
                self._fail(exc)         # no state written past the committed offsets
                return
        else:
            await self.checkpointer.commit(regions, self.cores,
                                           produce=lambda: self._produce(self._producer, out),
                                           commit_offsets=self._commit_offsets)
        self.observers.checkpointed(regions, time.time())

    def _fail(self, exc: TransactionFailed) -> None:
        """Stop the worker over a failed transaction (``run`` raises it)."""
        if self.failure is None:
            log.error("%s: stopping (a restart resumes from the committed offsets)", exc)
            self.failure = exc
        self.stop()

    # --- exactly_once: transactions -----------------------------------------------------

    def _txn_work(self, by_region: dict[int, Outputs]
                  ) -> dict[int, tuple[Outputs, dict[TP, int]]]:
        """Per region, the outputs and input offsets its next transaction carries: its
        readings, events and boundary partitions (co-partitioned; an events partition without
        a region of its number goes with the lowest region), only partitions this worker is
        assigned and whose offset moved forward. Regions with neither are left out."""
        if self.failure is not None:
            return {}
        k = self.cfg.kafka
        work: dict[int, tuple[Outputs, dict[TP, int]]] = {
            r: (o, {}) for r, o in by_region.items()
            if o.forecasts or o.alerts or o.dead_letters or o.boundary}
        owned = {TP(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        regions = sorted(self.cores)
        for tp, off in self.checkpointer.positions.items():
            # committed offsets only move forward (re-processing below them commits nothing)
            if (tp not in owned or self._txn_done.get(tp, -1) >= off
                    or tp.topic not in (k.readings_topic, k.events_topic, k.boundary_topic)):
                continue
            region = tp.partition if tp.partition in self.cores else (
                regions[0] if regions else None)
            if region is not None:
                work.setdefault(region, (Outputs(), {}))[1][tp] = off
        return work

    async def _transact(self, work: dict[int, tuple[Outputs, dict[TP, int]]]) -> None:
        """One transaction per region (concurrently): its outputs and its input offsets
        commit together or not at all. Raises ``TransactionFailed`` when one cannot."""
        if not work:
            return
        results = await asyncio.gather(*(self._transact_region(r, out, offs)
                                         for r, (out, offs) in sorted(work.items())),
                                       return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise res

    async def _transact_region(self, region: int, out: Outputs, offsets: dict[TP, int]
                               ) -> None:
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaTimeoutError

        k = self.cfg.kafka
        msgs, placed = self._messages(out)

        async def once() -> None:
            producer = await self._txn_producer(region)
            try:
                async with producer.transaction():      # aborted when anything fails
                    if any(msgs.values()) or placed:
                        await kafka_async.produce(producer, msgs, placed, self.headers)
                    if offsets:
                        await producer.send_offsets_to_transaction(
                            {TopicPartition(*tp): off for tp, off in offsets.items()},
                            k.group_id)
            except Exception as exc:
                retriable = (getattr(exc, "retriable", False)
                             or isinstance(exc, (KafkaTimeoutError, TimeoutError, OSError)))
                if retriable and not transactions.fenced(producer):
                    raise               # the broker is away: the whole transaction again
                raise TransactionFailed(
                    f"region {region}: transaction of producer "
                    f"{transactions.transactional_id(k.group_id, k.readings_topic, region)!r} "
                    f"failed ({type(exc).__name__}: {exc}); another worker may own the "
                    "partition now (fenced)") from exc

        await self._retry(f"producing outputs of region {region} (transaction)", once,
                          fatal=(TransactionFailed,))
        self._txn_done.update(offsets)

    async def _txn_producer(self, region: int) -> Any:
        """The region's transactional producer, started (which fences an older one of
        the same id, and ends its open transaction) on first use."""
        producer = self._txn.get(region)
        if producer is None:
            k = self.cfg.kafka
            txn_id = transactions.transactional_id(k.group_id, k.readings_topic, region)
            producer = await self._retry(
                f"starting the transactional producer {txn_id!r}",
                lambda: transactions.start_transactional_producer(
                    k.bootstrap_servers, txn_id, security=k),
                k.connect_timeout_s)
            self._txn[region] = producer
        return producer

    async def _close_txn(self, region: int) -> None:
        producer = self._txn.pop(region, None)
        if producer is not None:
            try:
                await producer.stop()
            except Exception as exc:   # a fenced producer may refuse to close cleanly
                log.warning("closing the transactional producer of region %d: %s: %s",
                            region, type(exc).__name__, exc)

    async def assigned_transactions(self, consumer: Any, seek: dict[TP, int | None]) -> None:
        """exactly_once, on assignment: close the producers of regions handed over, start
        those of the assigned regions (fencing their previous owners, whose open
        transactions end), then, where a region resumes from a checkpoint behind the
        group's committed offset, note that offset: records below it are re-processed
        without emitting (``split_replay``)."""
        if not self.exactly_once:
            return
        from aiokafka import TopicPartition

        k = self.cfg.kafka
        for region in list(self._txn):
            if region not in self.cores:
                await self._close_txn(region)
        await asyncio.gather(*(self._txn_producer(tp.partition) for tp in seek
                               if tp.topic == k.readings_topic))
        self._replay.clear()
        self._txn_done.clear()
        for tp, off in seek.items():
            committed = await consumer.committed(TopicPartition(*tp))
            if committed is None:
                continue
            self._txn_done[tp] = committed
            if off is not None and off >= 0 and committed > off:
                self._replay[tp] = committed
                log.info("%s-%d: resuming at %d (checkpoint) with outputs committed up to %d: "
                         "re-processing that range without emitting", tp.topic, tp.partition,
                         off, committed)

    def _messages(self, out: Outputs) -> tuple[dict[str, list[tuple[bytes | None, bytes]]],
                                               dict[str, list[tuple[int, bytes | None, bytes]]]
                                               | None]:
        k = self.cfg.kafka
        msgs: dict[str, list[tuple[bytes | None, bytes]]] = {
            k.forecasts_topic: list(out.forecasts), k.alerts_topic: list(out.alerts),
            k.dead_letter_topic: out.dead_letters}
        placed = {k.boundary_topic: out.boundary} if out.boundary else None
        return msgs, placed

    async def _produce(self, producer: Any, out: Outputs) -> None:
        """Send every output and wait for the acks, retrying the whole set (same keys: a
        consumer deduplicates) until the broker takes it."""
        msgs, placed = self._messages(out)
        if any(msgs.values()) or placed:
            await self._retry("producing outputs",
                              lambda: kafka_async.produce(producer, msgs, placed,
                                                          self.headers))

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
        # kept until the assignment says where they went: a region that comes straight back
        # (the group re-formed, e.g. after a broker restart) continues from its in-memory
        # state; one that went elsewhere is dropped then (in an eager rebalance nobody reads
        # a partition between its revocation and the next assignment)
        self._parked.update(gone)

    def on_assigned(self, assigned: list[TP]) -> dict[TP, int | None]:
        """Regions arriving: restored from their checkpoints; returns where each assigned
        partition resumes (an offset; None: the group's committed offset; -1: its start)."""
        k = self.cfg.kafka
        self._generation += 1
        self._assigning = True                  # until ``assignment_done``
        self._idle_since = None                 # idleness counts again from the new assignment
        self._expect.clear()                    # resume offsets of the new assignment follow
        # readings held for the cadence were never processed: fetched again from where each
        # partition resumes (kept, they would be processed twice)
        self._held.clear()
        self._sought.clear()
        back = {tp.partition for tp in assigned if tp.topic == k.readings_topic}
        for p in sorted(self._parked):
            if p in back:
                log.info("region %d assigned back: continuing from its in-memory state", p)
            else:
                self.regions.drop(p)
                log.info("region %d handed over", p)
        self._parked.clear()
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

    async def _trim(self, consumer: Any, batch: dict[Any, list[Any]]
                    ) -> dict[Any, list[Any]]:
        """A batch fetched before or during a rebalance, once its seeks are done: a
        partition's records are kept only when they were fetched from where the assignment
        put it (they start there and moved the consumer just past them); the others are
        dropped (the seeks moved their partitions back to where their state resumes, so
        they come again: processed now, they would be applied twice)."""
        from aiokafka import TopicPartition

        owned = consumer.assignment()
        kept: dict[Any, list[Any]] = {}
        for tp, msgs in batch.items():
            atp = TopicPartition(tp.topic, tp.partition)
            if (msgs and atp in owned
                    and self._sought.get(TP(tp.topic, tp.partition)) == msgs[0].offset
                    and await consumer.position(atp) == msgs[-1].offset + 1):
                kept[tp] = msgs
        dropped = sum(len(m) for tp, m in batch.items() if tp not in kept)
        if dropped:
            log.info("%d records fetched before a rebalance dropped: their partitions resume "
                     "from their checkpoints or committed offsets", dropped)
        return kept

    def sought(self, tp: TP, offset: int) -> None:
        """The assignment under way put ``tp`` at ``offset`` (for ``_trim``)."""
        self._sought[tp] = offset

    def assignment_failed(self, exc: Exception) -> None:
        """The assignment hook failed (e.g. the broker went away while a region's
        transactional producer started): stop, ``run`` raises it."""
        log.error("assigning partitions failed: %s: %s; stopping", type(exc).__name__, exc)
        self.failure = self.failure or exc
        self.stop()

    def assignment_done(self) -> None:
        """The assigned partitions were sought to where they resume: a batch fetched in the
        meantime (from the positions before the seeks, e.g. the group's committed offsets)
        is dropped like one fetched before the rebalance."""
        self._generation += 1
        self._assigning = False

    def out_of_range(self, tp: TP, offset: int, start: int, end: int | None, why: str) -> str:
        """A position outside its partition ``[start, end]``: logged as an error, counted,
        and handled by ``kafka.offset_out_of_range``; returns where to go (earliest or
        latest). With ``fail`` the worker stops and ``run`` raises."""
        policy = self.cfg.kafka.offset_out_of_range
        self.stats.offsets_out_of_range += 1
        self.observers.offset_out_of_range(tp.topic, tp.partition)
        span = f"offsets {start} to {end}" if end is not None else f"it starts at {start}"
        msg = (f"{tp.topic}-{tp.partition}: {why} offset {offset} is outside the partition "
               f"({span}): the topic was recreated, the broker restarted empty or retention "
               "passed it")
        if policy == "fail":
            log.error("%s; kafka.offset_out_of_range = fail: stopping", msg)
            self.failure = self.failure or OffsetOutOfRange(
                f"{msg} (kafka.offset_out_of_range = fail; set it to earliest to re-read the "
                "partition, or latest to skip to its end)")
            self.stop()
            return "latest"       # read nothing more of it while stopping
        where = ("from its start" if policy == "earliest" else "from its end")
        log.error("%s; reading it %s (kafka.offset_out_of_range = %s; the regions keep their "
                  "state)", msg, where, policy)
        return policy

    def expect(self, tp: TP, offset: int, why: str) -> None:
        """``tp`` resumes at ``offset``: checked against its end on the first fetch answer."""
        self._expect[tp] = (offset, why)

    async def check_positions(self, consumer: Any, batch: dict[Any, list[Any]] | None = None
                              ) -> None:
        """Positions past their partition's end, found once a fetch answered (its end is
        then known): a resume offset past it, or a broker restarted empty or a topic
        recreated while the group stayed (a broker may answer such fetches with nothing: the
        new data below the position would be skipped in silence). Also a resume position the
        client reset by itself (the broker said out of range: the first records fetched are
        below it). Each is handled as ``out_of_range``; records of a partition that must not
        be read from its start are taken out of ``batch``."""
        for tp in list(consumer.assignment()):
            hw = consumer.highwater(tp)
            if hw is None:
                continue
            key = TP(tp.topic, tp.partition)
            expected = self._expect.pop(key, None)
            got = batch.get(tp) if batch else None
            if expected is not None and got and got[0].offset < expected[0]:
                where = self.out_of_range(key, expected[0], got[0].offset, hw, expected[1])
                if where != "earliest":
                    batch.pop(tp, None)
                    await consumer.seek_to_end(tp)
                continue
            pos = await consumer.position(tp)
            if pos > hw:
                low = (await consumer.beginning_offsets([tp])).get(tp, 0)
                where = self.out_of_range(key, pos, low, hw, expected[1] if expected
                                          else "fetch")
                if where == "earliest":
                    await consumer.seek_to_beginning(tp)
                else:
                    await consumer.seek_to_end(tp)

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
        consumer = self.consumer
        async with self.worker.working():
            try:
                await self._assign(consumer, assigned)
            except Exception as exc:
                # aiokafka would only log it, and the partitions would be read from wherever
                # they are, whatever the regions' state reflects: the worker stops instead
                self.worker.assignment_failed(exc)
            finally:
                self.worker.assignment_done()

    async def _assign(self, consumer: Any, assigned: Any) -> None:
        """Regions restored (``on_assigned``), transactional producers started, every
        assigned partition sought to where it resumes."""
        from aiokafka import TopicPartition

        seek = self.worker.on_assigned([TP(tp.topic, tp.partition) for tp in assigned])
        await self.worker.assigned_transactions(consumer, seek)
        seek = await self._in_range(consumer, seek)
        for tp, off in seek.items():
            if off is None:
                continue
            if off == -2:
                await consumer.seek_to_end(TopicPartition(*tp))
            elif off < 0:
                await consumer.seek_to_beginning(TopicPartition(*tp))
                log.info("%s-%d: from the beginning", *tp)
            else:
                consumer.seek(TopicPartition(*tp), off)
                log.info("resuming %s-%d at offset %d", tp.topic, tp.partition, off)
            self.worker.sought(tp, await consumer.position(TopicPartition(*tp)))

    async def _in_range(self, consumer: Any, seek: dict[TP, int | None]
                        ) -> dict[TP, int | None]:
        """``seek`` with every resume offset (a checkpoint's, the in-memory one, or the
        group's committed offset) checked against its partition's start; one before it is
        replaced as ``kafka.offset_out_of_range`` says (-1: the start, -2: the end). The end
        is checked on the first fetch answer (``LiveWorker.check_positions``): the end a
        broker lists is not reliable on every broker (Tansu lists its batches).
        Every partition gets an explicit position (a group without a committed offset reads
        from the start), so a batch fetched before the seeks can be dropped safely
        (``LiveWorker.assignment_done``)."""
        from aiokafka import TopicPartition

        want: dict[TP, tuple[int, str]] = {}
        out = dict(seek)
        for tp, off in seek.items():
            if off is not None and off >= 0:
                want[tp] = (off, "resume (checkpoint)" if self.worker.checkpointer.enabled
                            else "resume")
            elif off is None:
                meta = await consumer.committed(TopicPartition(*tp))
                if meta is not None:
                    want[tp] = (meta, "committed")
                else:
                    out[tp] = -1            # nothing committed: from the start
        if not want:
            return out
        starts = await consumer.beginning_offsets([TopicPartition(*tp) for tp in want])
        for tp, (off, why) in want.items():
            start = starts[TopicPartition(*tp)]
            if off < start:
                where = self.worker.out_of_range(tp, off, start, None, why)
                out[tp] = -1 if where == "earliest" else -2
            else:
                out[tp] = off
                self.worker.expect(tp, off, why)
        return out
