"""Publish a recorded data set to Kafka in timestamp order, at a speed factor."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
from tqdm import tqdm

from connectors.kafka_io import Topics, ensure_topics, make_producer
from connectors.recordings import Recording


@dataclass
class PublishStats:
    readings: int = 0
    events: int = 0
    seconds: float = 0.0


def iter_messages(rec: Recording, *, skip_missing: bool = False
                  ) -> Iterator[tuple[str, bytes, bytes, int]]:
    """``(kind, key, value, ts)`` in timestamp order; events come before readings of their ts.

    ``kind`` is ``"reading"`` or ``"event"``. Missing values are published as ``null``
    unless ``skip_missing``.
    """
    events = sorted(rec.events, key=lambda e: e["ts"])
    ei = 0
    sensors = [s.encode() for s in rec.sensors]
    prefixes = [orjson.dumps({"sensor": s})[:-1] + b',"ts":' for s in rec.sensors]
    for t, row in zip(rec.timestamps.tolist(), rec.values, strict=True):
        while ei < len(events) and events[ei]["ts"] <= t:
            ev = events[ei]
            yield "event", (ev.get("sensor") or ev["type"]).encode(), orjson.dumps(ev), ev["ts"]
            ei += 1
        tb = str(t).encode()
        vals = row.tolist()
        for j, v in enumerate(vals):
            if v != v:  # NaN
                if skip_missing:
                    continue
                vb = b"null"
            else:
                vb = repr(v).encode()
            yield "reading", sensors[j], prefixes[j] + tb + b',"value":' + vb + b"}", t
    for ev in events[ei:]:
        yield "event", (ev.get("sensor") or ev["type"]).encode(), orjson.dumps(ev), ev["ts"]


def publish_recording(rec: Recording, bootstrap_servers: str, *, topic: str = Topics.readings,
                      events_topic: str = Topics.events, speed: float = 0.0,
                      skip_missing: bool = False, partitions: int = 1,
                      progress: bool = True) -> PublishStats:
    """Publish ``rec`` keyed by sensor, with readings and events interleaved by time.

    ``speed`` is the replay factor (1 = real time, 60 = a recorded minute per second);
    0 publishes as fast as possible.
    """
    if speed < 0:
        raise ValueError("speed must be >= 0")
    ensure_topics(bootstrap_servers, [topic, events_topic], partitions=partitions)
    producer = make_producer(bootstrap_servers)
    stats = PublishStats()
    total = int(rec.values.size if not skip_missing else np.isfinite(rec.values).sum())
    t_start = time.monotonic()
    ts0 = int(rec.timestamps[0]) if len(rec.timestamps) else 0
    bar = tqdm(total=total + len(rec.events), unit="msg", disable=not progress,
               desc=f"publish → {topic}", mininterval=0.5)
    last_ts = None
    pending = 0
    try:
        for kind, key, value, ts in iter_messages(rec, skip_missing=skip_missing):
            if speed > 0 and ts != last_ts:
                last_ts = ts
                wait = (ts - ts0) / 1000.0 / speed - (time.monotonic() - t_start)
                if wait > 0:
                    producer.flush()
                    time.sleep(wait)
            if kind == "reading":
                producer.send(topic, value=value, key=key)
                stats.readings += 1
            else:
                # events are rare: deliver each before the readings that follow it, so a
                # consumer never sees those readings (and closes their steps) first
                producer.flush()
                producer.send(events_topic, value=value, key=key)
                producer.flush()
                stats.events += 1
            pending += 1
            if pending >= 5000:
                bar.update(pending)
                pending = 0
        producer.flush()
    finally:
        bar.update(pending)
        bar.close()
        producer.close()
    stats.seconds = time.monotonic() - t_start
    return stats
