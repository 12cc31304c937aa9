"""Publish a recorded data set to Kafka in timestamp order, at a speed factor."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from tqdm import tqdm

from connectors.kafka_async import produce, start_producer
from connectors.kafka_io import Topics, ensure_topics, topic_partitions
from connectors.partitioning import PartitionMap, PartitionMapError
from connectors.recordings import Recording, stations_of
from connectors.schemas import split_series
from connectors.security import SecuritySettings

log = logging.getLogger(__name__)

FLUSH_EVERY = 20_000      # messages buffered before a flush (whole record batches, acked)
BATCH_BYTES = 256 * 1024  # per record batch: well under consumers' default 1 MB fetch limit


class BatchSender:
    """A producer driven synchronously that sends whole record batches per partition
    (``connectors.kafka_async.produce``): kafka-python's per-message ``send`` published
    ~12,000 readings/s here. Keys go to Kafka's default (murmur2) partition unless placed;
    ``flush`` returns once the broker acknowledged everything added before it."""

    def __init__(self, bootstrap_servers: str, *,
                 security: SecuritySettings | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._producer: Any = self._loop.run_until_complete(
                start_producer(bootstrap_servers, max_batch_size=BATCH_BYTES,
                               security=security))
        except BaseException:
            self._loop.close()
            raise
        self._keyed: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self._placed: dict[str, list[tuple[int, bytes | None, bytes]]] = {}
        self.buffered = 0

    def __enter__(self) -> BatchSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, topic: str, key: bytes | None, value: bytes,
            partition: int | None = None) -> None:
        if partition is None:
            self._keyed.setdefault(topic, []).append((key, value))
        else:
            self._placed.setdefault(topic, []).append((partition, key, value))
        self.buffered += 1

    def flush(self) -> int:
        """Send what was added and wait for the acks; returns how many messages."""
        sent = self.buffered
        if sent:
            keyed, placed = self._keyed, self._placed
            self._keyed, self._placed, self.buffered = {}, {}, 0
            self._loop.run_until_complete(produce(self._producer, keyed, placed))
        return sent

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._producer.stop())
        finally:
            self._loop.close()


@dataclass
class PublishStats:
    readings: int = 0         # reading messages (a sensor's "values" message counts once)
    events: int = 0
    seconds: float = 0.0


def _units(sensors: list[str]) -> list[tuple[bytes, bytes, list[int], list[bytes] | None]]:
    """What one timestamp row publishes: ``(key, message prefix, columns, channel prefixes)``
    per single-channel series (``"value"``, channel prefixes None) and per sensor with
    channel series ``"s/c"`` (one ``"values"`` message, keyed by the sensor), in order of
    first appearance."""
    out: list[tuple[bytes, bytes, list[int], list[bytes] | None]] = []
    multi: dict[str, int] = {}
    for j, s in enumerate(sensors):
        station, channel = split_series(s)
        if channel is None:
            out.append((s.encode(), orjson.dumps({"sensor": s})[:-1] + b',"ts":', [j], None))
            continue
        if station not in multi:
            multi[station] = len(out)
            out.append((station.encode(), orjson.dumps({"sensor": station})[:-1] + b',"ts":',
                        [], []))
        _, _, cols, chans = out[multi[station]]
        cols.append(j)
        chans.append(orjson.dumps(channel) + b":")  # type: ignore[union-attr]
    return out


def reading_messages(rec: Recording, *, skip_missing: bool = False) -> int:
    """How many reading messages ``iter_messages`` yields for ``rec``."""
    seen = ~np.isnan(rec.values)
    total = 0
    for _, _, cols, _ in _units(rec.sensors):
        total += int(seen[:, cols].any(axis=1).sum()) if skip_missing else rec.n_steps
    return total


def iter_messages(rec: Recording, *, skip_missing: bool = False
                  ) -> Iterator[tuple[str, bytes, bytes, int]]:
    """``(kind, key, value, ts)`` in timestamp order; events come before readings of their ts.

    ``kind`` is ``"reading"`` or ``"event"``. Missing values are published as ``null``
    unless ``skip_missing``. The channel series ``"s/c"`` of a sensor go out together, one
    message per timestamp keyed by ``s`` (its channels stay on one partition):
    ``{"sensor": s, "ts": t, "values": {c: v, ...}}``; with ``skip_missing`` missing channels
    are left out and a sensor with none at ``t`` publishes nothing.
    """
    events = sorted(rec.events, key=lambda e: e["ts"])
    ei = 0
    units = _units(rec.sensors)
    for t, row in zip(rec.timestamps.tolist(), rec.values, strict=True):
        while ei < len(events) and events[ei]["ts"] <= t:
            ev = events[ei]
            yield "event", (ev.get("sensor") or ev["type"]).encode(), orjson.dumps(ev), ev["ts"]
            ei += 1
        tb = str(t).encode()
        vals = row.tolist()
        for key, prefix, cols, chans in units:
            if chans is None:
                v = vals[cols[0]]
                if v != v and skip_missing:  # NaN
                    continue
                vb = b"null" if v != v else repr(v).encode()
                yield "reading", key, prefix + tb + b',"value":' + vb + b"}", t
                continue
            parts = [c + (b"null" if v != v else repr(v).encode())
                     for c, v in zip(chans, [vals[j] for j in cols], strict=True)
                     if v == v or not skip_missing]
            if parts:
                yield "reading", key, prefix + tb + b',"values":{' + b",".join(parts) + b"}}", t
    for ev in events[ei:]:
        yield "event", (ev.get("sensor") or ev["type"]).encode(), orjson.dumps(ev), ev["ts"]


def _map_routes(rec: Recording, bootstrap_servers: str, topic: str, events_topic: str,
                pmap: PartitionMap, security: SecuritySettings | None = None
                ) -> tuple[dict[bytes, int], bool]:
    """Partition of each reading key under ``pmap`` and whether sensor events follow it
    (the events topic has the partitions); fails for unmapped sensors and a short topic."""
    where = pmap.source or "the partition map"
    missing = pmap.missing(rec.sensors)
    if missing:
        raise PartitionMapError(
            f"{where}: {len(missing)} of the recording's {len(stations_of(rec.sensors)[0])} "
            f"sensors are not in the map, e.g. {', '.join(map(repr, missing[:5]))}")
    have = topic_partitions(bootstrap_servers, [topic, events_topic], security=security)
    n = have.get(topic, 0)
    if n < pmap.partitions:
        raise PartitionMapError(
            f"topic {topic!r} has {n} partition(s) but {where} needs {pmap.partitions}: Kafka "
            f"cannot add them in place here; delete the topic (a new embedded broker starts "
            f"empty), use another topic name, or make a map with --partitions {n}")
    if n > pmap.partitions:
        log.warning("topic %r has %d partitions, the map uses %d: partitions %d.. get no "
                    "readings", topic, n, pmap.partitions, pmap.partitions)
    routes = {s.encode(): pmap.partition_of(s) for s in stations_of(rec.sensors)[0]}
    routes.update({s.encode(): pmap.partition_of(s) for s in rec.sensors})
    return routes, have.get(events_topic, 0) >= pmap.partitions


def publish_recording(rec: Recording, bootstrap_servers: str, *, topic: str = Topics.readings,
                      events_topic: str = Topics.events, speed: float = 0.0,
                      skip_missing: bool = False, partitions: int | None = None,
                      progress: bool = True,
                      partition_map: PartitionMap | None = None,
                      security: SecuritySettings | None = None) -> PublishStats:
    """Publish ``rec`` keyed by sensor, with readings and events interleaved by time
    (a sensor's channel series ``"s/c"`` as one ``"values"`` message per time, ``iter_messages``).

    ``speed`` is the replay factor (1 = real time, 60 = a recorded minute per second);
    0 publishes as fast as possible. ``partitions``: of the topics created when missing
    (default: the map's, else 1). With ``partition_map`` each reading goes explicitly to its
    sensor's partition (and so does an event naming a mapped sensor, when the events topic
    has as many partitions); every sensor must be in the map and the readings topic must
    have at least the map's partitions (``PartitionMapError`` otherwise). ``security``: the
    clients' TLS/SASL settings (``connectors.security``).
    """
    if speed < 0:
        raise ValueError("--speed must be >= 0")
    if partitions is None:
        partitions = partition_map.partitions if partition_map is not None else 1
    ensure_topics(bootstrap_servers, [topic, events_topic], partitions=partitions,
                  security=security)
    routes: dict[bytes, int] = {}
    route_events = False
    if partition_map is not None:
        routes, route_events = _map_routes(rec, bootstrap_servers, topic, events_topic,
                                           partition_map, security)
    stats = PublishStats()
    total = reading_messages(rec, skip_missing=skip_missing)
    t_start = time.monotonic()
    ts0 = int(rec.timestamps[0]) if len(rec.timestamps) else 0
    last_ts = None
    with BatchSender(bootstrap_servers, security=security) as sender, \
            tqdm(total=total + len(rec.events), unit="msg", disable=not progress,
                 desc=f"publish → {topic}", mininterval=0.5) as bar:
        for kind, key, value, ts in iter_messages(rec, skip_missing=skip_missing):
            if speed > 0 and ts != last_ts:
                last_ts = ts
                wait = (ts - ts0) / 1000.0 / speed - (time.monotonic() - t_start)
                if wait > 0:
                    bar.update(sender.flush())
                    time.sleep(wait)
            if kind == "reading":
                sender.add(topic, key, value, routes.get(key))
                stats.readings += 1
            else:
                # events are rare: deliver each before the readings that follow it, so a
                # consumer never sees those readings (and closes their steps) first
                bar.update(sender.flush())
                sender.add(events_topic, key, value,
                           routes.get(key) if route_events else None)
                bar.update(sender.flush())
                stats.events += 1
            if sender.buffered >= FLUSH_EVERY:
                bar.update(sender.flush())
        bar.update(sender.flush())
    stats.seconds = time.monotonic() - t_start
    return stats
