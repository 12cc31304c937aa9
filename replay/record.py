"""Record a Kafka topic range into a ``Recording`` (and a file ``replay publish`` reads back).

The range is given by offsets (the same bounds apply to every partition) and by the
readings' own timestamps. Readings are validated as the live worker does; an invalid one is
counted and left out, never guessed at. Rows are the distinct timestamps, sensors in order of first
appearance (sorted when the topic has several partitions), so ``record(publish(rec))``
gives back ``rec``. A ``"values"`` reading of a multichannel sensor comes back as one series
per channel, ``"<sensor>/<channel>"``, as ``read_recording`` names the channels of a file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from tqdm import tqdm

from connectors.kafka_io import Topics, at_high_watermark, make_consumer
from connectors.recordings import Recording
from connectors.schemas import (
    ReadingBatch,
    decode_events,
    decode_readings,
    format_minute,
    parse_ts,
)
from connectors.security import SecuritySettings

log = logging.getLogger(__name__)


@dataclass
class RecordStats:
    messages: int = 0
    readings: int = 0
    events: int = 0
    invalid: int = 0
    outside: int = 0          # valid readings outside the requested time range
    reasons: dict[str, int] = field(default_factory=dict)


def _when(ts: int | None) -> str:
    return "-" if ts is None else format_minute(ts)


def _starts(consumer: Any, tps: list[Any], start_offset: int | None,
            start_ts: int | None) -> dict[Any, int]:
    first = consumer.beginning_offsets(tps)
    lo = {tp: max(first[tp], start_offset or 0) for tp in tps}
    if start_ts is not None:
        found = consumer.offsets_for_times({tp: start_ts for tp in tps})
        lo = {tp: max(lo[tp], found[tp].offset) if found[tp] else -1 for tp in tps}
    return lo


def consume_range(bootstrap_servers: str, topic: str, *, start_offset: int | None = None,
                  end_offset: int | None = None, start_ts: int | None = None,
                  end_ts: int | None = None, progress: bool = True,
                  timeout_s: float = 300.0, security: SecuritySettings | None = None
                  ) -> tuple[list[bytes], int]:
    """Values of ``topic`` in the range, partition by partition, in offset order.

    A partition ends at ``end_offset``/``end_ts`` when given, and at the latest at its high
    watermark as its fetches report it (the embedded broker's ListOffsets answer for
    "latest" lags behind the log, so the end offsets it reports are not used). Raises
    ``TimeoutError`` when a partition's end is not reached in ``timeout_s``.
    """
    import time

    from kafka import TopicPartition

    consumer = make_consumer(bootstrap_servers, group_id=None, security=security)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise ValueError(f"topic {topic!r} does not exist on {bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        lo = _starts(consumer, tps, start_offset, start_ts)
        out: list[bytes] = []
        bar = tqdm(unit="msg", desc=f"record ← {topic}", disable=not progress)
        for tp in tps:
            if lo[tp] < 0 or (end_offset is not None and lo[tp] >= end_offset):
                continue
            consumer.assign([tp])
            consumer.seek(tp, lo[tp])
            deadline = time.monotonic() + timeout_s
            done = False
            while not done and not at_high_watermark(consumer, [tp]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic}-{tp.partition} on "
                                       f"{bootstrap_servers}: not at its end after "
                                       f"{timeout_s:g}s")
                batch = consumer.poll(timeout_ms=200, max_records=50_000)
                for msg in batch.get(tp, []):
                    if ((end_offset is not None and msg.offset >= end_offset)
                            or (end_ts is not None and msg.timestamp >= end_ts)):
                        done = True
                        break
                    out.append(msg.value)
                    bar.update(1)
        bar.close()
        return out, len(tps)
    finally:
        consumer.close()


def record_topic(bootstrap_servers: str, topic: str = Topics.readings, *,
                 events_topic: str | None = None, start_offset: int | None = None,
                 end_offset: int | None = None, start: str | int | None = None,
                 end: str | int | None = None, interval_ms: int | None = None,
                 progress: bool = True, security: SecuritySettings | None = None
                 ) -> tuple[Recording, RecordStats]:
    """Consume a topic range and build the recording it holds.

    ``start``/``end`` (epoch ms or ISO-8601; ``end`` exclusive) select readings by their
    own ``ts``, not by when they were written to Kafka; offsets bound what is read.
    """
    start_ts = parse_ts(start) if start is not None else None
    end_ts = parse_ts(end) if end is not None else None
    stats = RecordStats()
    raws, n_parts = consume_range(bootstrap_servers, topic, start_offset=start_offset,
                                  end_offset=end_offset, progress=progress, security=security)
    stats.messages = len(raws)
    batch, dead = decode_readings(raws, topic=topic)
    for d in dead:
        stats.reasons[d.reason] = stats.reasons.get(d.reason, 0) + 1
    stats.invalid = len(dead)
    if start_ts is not None or end_ts is not None:
        keep = np.ones(len(batch), bool)
        if start_ts is not None:
            keep &= batch.ts >= start_ts
        if end_ts is not None:
            keep &= batch.ts < end_ts
        stats.outside = int((~keep).sum())
        batch = ReadingBatch([s for s, k in zip(batch.sensors, keep.tolist(), strict=True)
                              if k], batch.ts[keep], batch.values[keep], batch.source[keep],
                             batch.partition[keep])
    if len(batch) == 0:
        where = "" if start_ts is None and end_ts is None else (
            f" with ts in [{_when(start_ts)}, {_when(end_ts)})")
        raise ValueError(f"no valid readings in the requested range of {topic!r}{where} "
                         f"({stats.messages} messages read, {stats.invalid} invalid)")
    sensors = list(dict.fromkeys(batch.sensors))
    if n_parts > 1:
        sensors.sort()  # partitions are read one after the other: arrival order is lost
    col = {s: j for j, s in enumerate(sensors)}
    times, row = np.unique(batch.ts, return_inverse=True)
    values = np.full((len(times), len(sensors)), np.nan)
    cols = np.fromiter((col[s] for s in batch.sensors), np.int64, len(batch))
    values[row, cols] = batch.values  # a repeated (time, sensor): the last one wins
    stats.readings = len(batch)
    events: list[dict[str, Any]] = []
    if events_topic is not None:
        ev_raws, _ = consume_range(bootstrap_servers, events_topic, progress=False,
                                   security=security)
        evb, ev_dead = decode_events(ev_raws, topic=events_topic)
        stats.invalid += len(ev_dead)
        events = [e for e in evb.events if times[0] <= e["ts"] <= times[-1]]
        stats.events = len(events)
    if interval_ms is None and len(times) > 1:
        interval_ms = int(np.median(np.diff(times)))
    rec = Recording(timestamps=times.astype(np.int64), sensors=sensors, values=values,
                    events=events, interval_ms=interval_ms)
    if stats.invalid:
        log.warning("left out %d invalid messages: %s", stats.invalid,
                    orjson.dumps(stats.reasons).decode())
    return rec, stats
