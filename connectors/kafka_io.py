"""Kafka helpers (kafka-python for admin and simple clients, aiokafka for the fast path).

Consumer-group timeouts are short by default so a group joins in seconds (the broker's default
45 s session timeout makes the first join slow). Every helper takes ``security``: the TLS/SASL
settings of its clients (``connectors.security``; None: plaintext).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from connectors.security import SecuritySettings, client_kwargs

SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000
MAX_POLL_INTERVAL_MS = 60_000


@dataclass(frozen=True)
class Topics:
    """Names of the topics the system reads and writes."""

    readings: str = "readings"
    events: str = "events"
    forecasts: str = "forecasts"
    alerts: str = "alerts"
    dead_letter: str = "dead-letter"

    def all(self) -> list[str]:
        return [self.readings, self.events, self.forecasts, self.alerts, self.dead_letter]


def ensure_topics(bootstrap_servers: str, names: Iterable[str], partitions: int = 1,
                  timeout_s: float = 15.0, *, security: SecuritySettings | None = None) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers,
                             request_timeout_ms=int(timeout_s * 1000),
                             **client_kwargs(security, "kafka-python"))
    try:
        existing = set(admin.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(n, partitions, 1) for n in missing])
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout_s
        while set(missing) - set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not visible after {timeout_s}s: {missing}")
            time.sleep(0.05)
    finally:
        admin.close()


def topic_partitions(bootstrap_servers: str, names: Iterable[str],
                     timeout_s: float = 15.0, *, security: SecuritySettings | None = None
                     ) -> dict[str, int]:
    """Partition count of each existing topic among ``names`` (missing ones left out)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers,
                             request_timeout_ms=int(timeout_s * 1000) + 1000,
                             **client_kwargs(security, "kafka-python"))
    try:
        out = {}
        existing = consumer.topics()
        for n in dict.fromkeys(names):
            if n in existing:
                parts = consumer.partitions_for_topic(n)
                out[n] = len(parts) if parts else 0
        return out
    finally:
        consumer.close()


def create_topics(bootstrap_servers: str, names: Iterable[str], partitions: int, *,
                  security: SecuritySettings | None = None) -> dict[str, tuple[int, bool]]:
    """Create each topic with ``partitions`` unless it exists; returns ``name -> (partitions,
    created)`` so a caller can say which existing ones have another layout."""
    names = list(dict.fromkeys(names))
    before = topic_partitions(bootstrap_servers, names, security=security)
    ensure_topics(bootstrap_servers, [n for n in names if n not in before], partitions,
                  security=security)
    after = topic_partitions(bootstrap_servers, names, security=security)
    return {n: (after.get(n, 0), n not in before) for n in names}


def partition_of(key: str, n_partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) gives a message key."""
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(n_partitions))
    return int(DefaultPartitioner()(key.encode(), parts, parts))


def make_producer(bootstrap_servers: str, *, security: SecuritySettings | None = None,
                  **overrides: object):
    """A kafka-python producer tuned for throughput (batched, lingering a little)."""
    from kafka import KafkaProducer

    cfg: dict[str, object] = dict(bootstrap_servers=bootstrap_servers, linger_ms=5,
                                  batch_size=512 * 1024, acks=1, retries=5,
                                  **client_kwargs(security, "kafka-python"))
    cfg.update(overrides)
    return KafkaProducer(**cfg)


def make_consumer(bootstrap_servers: str, *topics: str, group_id: str | None = None,
                  from_beginning: bool = True, security: SecuritySettings | None = None,
                  **overrides: object):
    """A kafka-python consumer with short group timeouts, reading committed records only
    (``read_committed``: no open transaction's; for aborted ones on every broker see
    ``connectors.transactions.CommittedFilter``)."""
    from kafka import KafkaConsumer

    cfg: dict[str, object] = dict(
        bootstrap_servers=bootstrap_servers, group_id=group_id, isolation_level="read_committed",
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=group_id is not None,
        session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS, **client_kwargs(security, "kafka-python"),
    )
    cfg.update(overrides)
    return KafkaConsumer(*topics, **cfg)


def at_high_watermark(consumer: Any, tps: list[Any]) -> bool:
    """Whether a kafka-python consumer has read each of ``tps`` up to the high watermark its
    fetches last reported (False for a partition no fetch has answered yet)."""
    for tp in tps:
        hw = consumer.highwater(tp)
        if hw is None or consumer.position(tp) < hw:
            return False
    return True


def read_topic(bootstrap_servers: str, topic: str, *, max_messages: int | None = None,
               timeout_s: float = 300.0, security: SecuritySettings | None = None
               ) -> Iterator[tuple[bytes | None, bytes, int, int]]:
    """Yield ``(key, value, partition, offset)`` of a topic from the beginning to its end:
    committed records only (``read_committed``, and aborted transactions left out on every
    broker, ``connectors.transactions``).

    The end of a partition is the high watermark its fetches report (the broker's answer
    to a ListOffsets request for "latest" is not used: the embedded broker's lags behind
    the log). Raises ``TimeoutError`` when a partition's end is not reached in ``timeout_s``.
    """
    from kafka import TopicPartition

    from connectors.transactions import CommittedFilter, install_committed_filter

    consumer = make_consumer(bootstrap_servers, group_id=None, consumer_timeout_ms=200,
                             security=security)
    committed = CommittedFilter()       # records of aborted transactions left out
    install_committed_filter(consumer)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        n = 0
        deadline = time.monotonic() + timeout_s
        while True:
            batch = consumer.poll(timeout_ms=200, max_records=10_000)
            for records in batch.values():
                for r in committed.feed(records):
                    yield r.key, r.value, r.partition, r.offset
                    n += 1
                    if max_messages is not None and n >= max_messages:
                        return
            if at_high_watermark(consumer, tps):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading topic {topic!r} on {bootstrap_servers}: not at "
                                   f"its end after {timeout_s:g}s")
    finally:
        consumer.close()
