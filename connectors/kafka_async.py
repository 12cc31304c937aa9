"""aiokafka at the edge of the live worker: clients, retries with backoff, batched producing.

The worker's consumer commits manually (offsets only after outputs were acknowledged, or at
checkpoints) and uses short group timeouts; the producer writes whole record batches per
partition with Kafka's default partitioner (murmur2), so a key always lands on the same
partition whichever client produced it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from connectors.security import SecuritySettings, client_kwargs

log = logging.getLogger(__name__)


class TP(NamedTuple):
    """A topic partition (typed, instead of ``"topic-partition"`` strings)."""

    topic: str
    partition: int


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached within ``kafka.connect_timeout_s``."""


async def retry(what: str, op: Callable[[], Awaitable[Any]], *, servers: str,
                backoff_max_s: float, deadline_s: float | None = None,
                stopped: Callable[[], bool] = lambda: False,
                on_retry: Callable[[], None] = lambda: None,
                fatal: tuple[type[BaseException], ...] = ()) -> Any:
    """``await op()`` until it succeeds, backing off from 0.25 s to ``backoff_max_s``;
    ``deadline_s`` bounds the time (then ``BrokerUnavailable``), None retries until
    ``stopped()``. ``fatal`` errors are raised at once: no retry can fix them (a commit
    refused because the group rebalanced)."""
    from aiokafka.errors import KafkaError

    t0 = time.monotonic()
    wait = 0.25
    attempt = 0
    while True:
        attempt += 1
        try:
            return await op()
        except fatal:
            raise
        except (TimeoutError, KafkaError, OSError) as exc:
            on_retry()
            spent = time.monotonic() - t0
            if deadline_s is not None and spent + wait > deadline_s:
                raise BrokerUnavailable(
                    f"{what}: broker at {servers} not reachable for {spent:.0f}s "
                    f"({type(exc).__name__}: {exc})") from None
            if stopped() and deadline_s is None:
                raise
            log.warning("%s failed (attempt %d: %s: %s); retrying in %.2fs", what, attempt,
                        type(exc).__name__, exc, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, backoff_max_s)


async def start_producer(bootstrap_servers: str, max_batch_size: int = 1024 * 1024, *,
                         security: SecuritySettings | None = None, **settings: Any) -> Any:
    """A started producer; ``max_batch_size`` bounds one record batch (a consumer whose
    fetch limit per partition is below it may stall on a broker without KIP-74);
    ``security``: its TLS/SASL settings (``connectors.security``; None: plaintext);
    ``settings``: other producer settings, over the defaults (e.g. a transactional one's)."""
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(**{"bootstrap_servers": bootstrap_servers, "linger_ms": 5,
                            "max_batch_size": max_batch_size, "acks": 1,
                            "request_timeout_ms": 10_000, **client_kwargs(security, "aiokafka"),
                            **settings})
    try:
        await p.start()
    except BaseException:
        await p.stop()
        raise
    return p


async def start_consumer(k: Any, topics: list[str], listener: Any,
                         copartitioned: bool = False) -> Any:
    """A group consumer with manual commits and short timeouts (``k``: ``KafkaConfig``, its
    security settings included).
    ``copartitioned``: partition ``i`` of every topic goes to the same worker (Kafka's
    range assignor over topics of equal partition counts), as the halo exchange needs."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor
    from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    c = AIOKafkaConsumer(
        bootstrap_servers=k.bootstrap_servers,
        group_id=k.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=k.session_timeout_ms, heartbeat_interval_ms=k.heartbeat_interval_ms,
        max_poll_interval_ms=k.max_poll_interval_ms, max_poll_records=k.max_batch,
        fetch_max_wait_ms=k.fetch_max_wait_ms, request_timeout_ms=10_000,
        fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024,
        # no records of an open transaction, nor of an aborted one where the broker lists
        # them (Kafka; not Tansu: connectors.transactions), e.g. the boundary messages of
        # another region's worker with kafka.processing_guarantee = exactly_once
        isolation_level="read_committed",
        partition_assignment_strategy=(RangePartitionAssignor,) if copartitioned
        else (RoundRobinPartitionAssignor,), **client_kwargs(k, "aiokafka"))
    try:
        await c.start()
        c.subscribe(topics, listener=listener)
    except BaseException:
        await c.stop()
        raise
    return c


@functools.lru_cache(maxsize=1 << 17)
def key_partition(key: bytes, n_partitions: int) -> int:
    """Kafka's default partition of ``key`` among ``n_partitions`` (murmur2, as the Java
    client and aiokafka's ``DefaultPartitioner``), cached: keys repeat every step."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % n_partitions


async def produce(producer: Any, messages: dict[str, list[tuple[bytes | None, bytes]]],
                  placed: dict[str, list[tuple[int, bytes | None, bytes]]] | None = None,
                  headers: dict[str, list[tuple[str, bytes]]] | None = None) -> None:
    """Send ``{topic: [(key, value), ...]}`` (and ``placed``: ``{topic: [(partition, key,
    value), ...]}``) in whole record batches and wait for the acks; ``headers``: the Kafka
    headers of every message of a topic."""
    futures = []
    todo: list[tuple[str, dict[int, list[tuple[bytes | None, bytes]]]]] = []
    for topic, items in (placed or {}).items():
        fixed: dict[int, list[tuple[bytes | None, bytes]]] = {}
        for p, key, value in items:
            fixed.setdefault(p, []).append((key, value))
        todo.append((topic, fixed))
    for topic, msgs in messages.items():
        if not msgs:
            continue
        parts = sorted(await producer.partitions_for(topic))
        by_part: dict[int, list[tuple[bytes | None, bytes]]] = {}
        todo.append((topic, by_part))
        if len(parts) == 1:
            by_part[parts[0]] = list(msgs)
        else:
            for key, value in msgs:
                p = parts[key_partition(key, len(parts))] if key is not None else parts[0]
                by_part.setdefault(p, []).append((key, value))
    for topic, by_part in todo:
        hdr = (headers or {}).get(topic)
        for p, items in by_part.items():
            batch = producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None, headers=hdr) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None,
                                    headers=hdr) is None:
                        raise ValueError(f"an output message for {topic} is larger than the "
                                         "producer's max batch size")
            futures.append(await producer.send_batch(batch, topic, partition=p))
    if futures:
        await asyncio.gather(*futures)
