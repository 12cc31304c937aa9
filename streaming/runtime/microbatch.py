"""One micro-batch through the online core: raw messages in, encoded outputs out.

``process_records`` is what every driver runs per batch (the aiokafka worker, the Faust
agent, the throughput benchmark): validate the messages at the edge, apply the batch to the
region's core, and encode forecasts, alerts and dead letters (one per bad input message,
keyed ``topic:partition:offset``). Nothing here touches Kafka.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol

import numpy as np
import orjson

from connectors.schemas import (
    CHANNEL_SEP,
    ENGINE_HEADER,
    WORKER_HEADER,
    DeadLetter,
    EventBatch,
    decode_events,
    decode_readings,
    encode_alert,
    reason_kind,
    split_series,
)
from streaming.config import StreamConfig
from streaming.ingest.halo import HALO_PARTITION, HaloPlan
from streaming.pipeline.core import CoreOutput, ForecastBlock, StreamCore


class InputRecord(Protocol):
    """What a driver hands ``process_records`` per input message: the Kafka client's own
    record objects (aiokafka's ``ConsumerRecord``) have these attributes, so a fetch goes in
    without a copy per message; ``Record`` builds one by hand."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class Record:
    """A raw input message built by hand (tests, Faust, backtests of topic dumps)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int = 0          # Kafka CreateTime (epoch ms), as aiokafka names it


@dataclass
class Outputs:
    """Encoded output messages of one batch: ``(key, value)`` per topic."""

    forecasts: list[tuple[bytes, bytes]] = field(default_factory=list)
    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    dead_reasons: dict[str, int] = field(default_factory=dict)  # reason kind -> messages
    boundary: list[tuple[int, bytes | None, bytes]] = field(default_factory=list)
    # ^ (region, key, value): readings forwarded to the regions that keep them as ghosts


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
    first_processed: float = 0.0    # wall-clock end of the first batch (0: none yet)
    last_processed: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)
    checkpoints: int = 0
    restored_from: str | None = None
    retries: int = 0
    halo_forwarded: int = 0     # readings messages forwarded to other regions (``boundary``)
    halo_received: int = 0      # ghost readings taken from ``boundary``
    halo_dropped: int = 0       # ghost readings a region could not use (e.g. late)
    offsets_out_of_range: int = 0   # resume / fetch positions outside their partition

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["uptime_s"] = round(time.time() - self.started, 3)
        d["peak_rss_mb"] = peak_rss_mb()
        return d


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (``getrusage``: KB on Linux, bytes
    on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def encode_forecasts(block: ForecastBlock) -> list[tuple[bytes, bytes]]:
    """One ``forecasts`` message per sensor, keyed ``sensor:step:model_version``: a replayed
    range reproduces the same keys, so consumers deduplicate by key. ``expert`` names the
    expert that leads the sensor's weights; ``q`` holds the p10 and p90 bounds
    (``{"0.1": [...], "0.9": [...]}``, ``streaming.forecast.intervals``); ``imputed`` lists the
    step's readings the model filled in (``[[ts, value], ...]``), when it filled any.
    A channel series ``"s/c"`` of a multichannel sensor keeps ``"sensor": "s/c"`` (keys stay
    unique) and adds ``"channel": "c"``."""
    # what every sensor's message shares is serialized once (orjson.Fragment embeds it)
    horizon = orjson.Fragment(orjson.dumps(block.horizon_ts.tolist()))
    yhat = np.round(block.yhat, 6).tolist()
    expert = block.expert or [""] * len(block.sensors)
    qs = {k: np.round(v, 6).tolist() for k, v in block.q.items()}
    imputed = (None if block.imputed is None or block.imputed_ts is None
               else ~np.isnan(block.imputed).all(axis=1))
    out = []
    dumps = orjson.dumps
    for i, (s, y, e) in enumerate(zip(block.sensors, yhat, expert, strict=True)):
        msg = {"sensor": s, "ts": block.ts, "step": block.step, "horizon_ts": horizon,
               "yhat": y, "model_version": block.model_version, "expert": e}
        if CHANNEL_SEP in s:         # a channel series (cheap test first)
            channel = split_series(s)[1]
            if channel is not None:
                msg["channel"] = channel
        if qs:
            msg["q"] = {k: v[i] for k, v in qs.items()}
        if imputed is not None and imputed[i]:
            msg["imputed"] = [[int(t), round(float(v), 6)] for t, v in
                              zip(block.imputed_ts, block.imputed[i], strict=True)
                              if not np.isnan(v)]
        out.append((f"{s}:{block.step}:{block.model_version}".encode(), dumps(msg)))
    return out


def origin_headers(engine: str) -> list[tuple[str, bytes]]:
    """The Kafka headers a live worker puts on its alerts: its engine and ``host:pid``, so
    that alerts two engines or workers wrote to one topic can be told apart (``stfm alerts
    tail``). Headers, not the message: a re-processed range still gives the same messages."""
    return [(ENGINE_HEADER, engine.encode()),
            (WORKER_HEADER, f"{socket.gethostname()}:{os.getpid()}".encode())]


def encode_outputs(core_out: CoreOutput) -> Outputs:
    """The forecast and alert messages of a core output (dead letters are the caller's)."""
    out = Outputs()
    for block in core_out.forecasts:
        out.forecasts.extend(encode_forecasts(block))
    for a in core_out.alerts:
        out.alerts.append((a.id.encode(), encode_alert(a)))
    return out


def flush_cores(cores: dict[int, StreamCore], stats: WorkerStats | None = None,
                on_region: Callable[[int, StreamCore, CoreOutput], None] | None = None
                ) -> Outputs:
    """End of input (``--idle-exit``): close every region's last, partial step and encode
    what that produced (``on_region`` sees each region's output)."""
    out = Outputs()
    for p, core in sorted(cores.items()):
        core_out = core.flush()
        if on_region is not None:
            on_region(p, core, core_out)
        o = encode_outputs(core_out)
        out.forecasts += o.forecasts
        out.alerts += o.alerts
    if stats is not None:
        stats.forecasts += len(out.forecasts)
        stats.alerts += len(out.alerts)
    return out


def apply_torch_threads(cfg: StreamConfig) -> None:
    """Set torch's intra-op threads as configured (1 by default: the worker's tensors are
    small, and extra threads fight the fetch loop for 2 cores)."""
    import torch

    if cfg.model.torch_threads > 0:
        torch.set_num_threads(cfg.model.torch_threads)


_VALUE, _PARTITION, _OFFSET, _KEY = (attrgetter(a) for a in ("value", "partition", "offset",
                                                               "key"))
_ARRIVAL_SAMPLE = 1001       # records whose Kafka timestamps say when a batch arrived


def arrival_ms(records: Sequence[InputRecord], now_ms: int | None) -> int | None:
    """When a batch's readings arrived, for the event-time clock's quorum: the median Kafka
    timestamp (CreateTime or LogAppendTime; epoch ms, or seconds as Faust gives them) of up
    to ``_ARRIVAL_SAMPLE`` evenly spaced records. A backlog read after a restart arrived
    when it was produced, not when it is read, and a few producers with a wrong clock do
    not move a median. ``now_ms`` where the records carry none (``Record`` built by hand
    with timestamp 0)."""
    step = max(1, len(records) // _ARRIVAL_SAMPLE)
    ts = [getattr(r, "timestamp", None) for r in records[::step]]
    v = np.array([t for t in ts if isinstance(t, int | float) and t > 0], np.float64)
    if not len(v):
        return now_ms
    v = np.where(v < 1e11, v * 1000.0, v)            # seconds (Faust) -> ms
    return int(np.median(v))


def process_records(core: StreamCore, records: Sequence[InputRecord], cfg: StreamConfig,
                    stats: WorkerStats | None = None,
                    active_partitions: set[int] | None = None,
                    now_ms: int | None = None, *, halo: HaloPlan | None = None,
                    region: int | None = None) -> tuple[Outputs, CoreOutput]:
    """Validate a micro-batch, run it through the core and encode every output.

    Every message that cannot be used becomes one dead letter with its reason(s), keyed
    ``topic:partition:offset``. ``active_partitions`` are the readings partitions with data
    still to come (the event-time clock waits for them); ``now_ms`` is processing time (live
    only: a reading stamped further ahead of it than ``patching.max_future_ms`` is
    ``future``); the records' Kafka timestamps say when the batch arrived (``arrival_ms``:
    the clock's quorum leaves out sensors that fell silent). With a ``halo`` plan, records
    of ``kafka.boundary_topic`` are ghost readings (clock partition ``HALO_PARTITION``; not
    dead-lettered again, counted in
    ``stats.halo_dropped`` when unusable), and the valid readings of ``region``'s sensors
    that other regions keep as ghosts come back in ``Outputs.boundary``.
    """
    if active_partitions is not None:
        core.set_partitions(active_partitions)
    known = core.known_sensors()
    kcfg = cfg.kafka
    ev_topic = kcfg.events_topic
    if any(r.topic == ev_topic for r in records):
        rd = [r for r in records if r.topic != ev_topic]
        ev = [r for r in records if r.topic == ev_topic]
    else:
        rd, ev = records, []
    parts = list(map(_PARTITION, rd))
    ghost_recs: np.ndarray | None = None          # bool per record of ``rd``: from boundary
    if halo is not None:
        ghost_recs = np.fromiter((r.topic == kcfg.boundary_topic for r in rd), bool, len(rd))
        if ghost_recs.any():
            parts = [HALO_PARTITION if g else p for g, p in zip(ghost_recs, parts, strict=True)]
        else:
            ghost_recs = None
    readings, dead = decode_readings(
        list(map(_VALUE, rd)), known_sensors=known, topic=kcfg.readings_topic,
        partitions=parts, offsets=list(map(_OFFSET, rd)),
        keys=list(map(_KEY, rd)), timezone=cfg.patching.timezone)
    if ghost_recs is not None:
        # a ghost's bad readings were dead-lettered by its own region
        dead = [d for d in dead if d.topic != kcfg.boundary_topic and not (
            d.partition == HALO_PARTITION)]

    def handle(i: int) -> tuple:
        r = rd[int(readings.source[i])]
        return DeadLetter(r.value, "", r.topic, r.partition, r.offset, r.key).handle()

    readings.refs = handle
    events = EventBatch()
    if ev:
        events, dead_ev = decode_events(
            [r.value for r in ev], known_sensors=known, topic=kcfg.events_topic,
            partitions=[r.partition for r in ev], offsets=[r.offset for r in ev],
            keys=[r.key for r in ev], timezone=cfg.patching.timezone)
        dead.extend(dead_ev)
    accepted = core.patcher.stats.accepted
    ghosts_before = core.patcher.stats.ghost_accepted
    core_out = core.process(readings, events, now_ms=now_ms, arrival_ms=arrival_ms(rd, now_ms))
    rejected = np.zeros(len(readings), bool)
    dropped = 0
    for i, reason in core_out.rejected_readings:
        rejected[i] = True
        r = rd[int(readings.source[i])]
        if ghost_recs is not None and ghost_recs[int(readings.source[i])]:
            dropped += 1
            continue
        dead.append(DeadLetter(r.value, reason, r.topic, r.partition, r.offset, r.key))
    for i, reason in core_out.rejected_events:
        r = ev[events.source[i]]
        dead.append(DeadLetter(r.value, reason, r.topic, r.partition, r.offset, r.key))
    for h, reason in core_out.rejected_held:
        if h is not None:
            dead.append(DeadLetter.from_handle(h, reason))
    out = encode_outputs(core_out)
    ghost_readings = core.patcher.stats.ghost_accepted - ghosts_before
    if halo is not None and region is not None and len(readings):
        src = readings.source
        keep = ~rejected
        if ghost_recs is not None:
            keep &= ~ghost_recs[src]
        idx = np.flatnonzero(keep)
        sens = readings.sensors
        for dest, recs in halo.forwards([sens[i] for i in idx], src[idx], region).items():
            out.boundary.extend((dest, rd[j].key, rd[j].value) for j in recs)
    for d in _one_per_message(dead):
        out.dead_letters.append((d.unique_key(), d.to_message()))
        kind = reason_kind(d.reason)
        out.dead_reasons[kind] = out.dead_reasons.get(kind, 0) + 1
    if stats is not None:
        stats.messages += len(records)
        stats.readings_accepted += core.patcher.stats.accepted - accepted - ghost_readings
        stats.halo_received += ghost_readings
        stats.halo_dropped += dropped
        stats.halo_forwarded += len(out.boundary)
        stats.events_accepted += len(events) - len(core_out.rejected_events)
        stats.forecasts += len(out.forecasts)
        stats.alerts += len(out.alerts)
        stats.dead_letters += len(out.dead_letters)
        stats.batches += 1
        stats.last_processed = time.time()
        if not stats.first_processed:
            stats.first_processed = stats.last_processed
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
