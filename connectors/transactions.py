"""Kafka transactions for exactly-once outputs (``kafka.processing_guarantee = exactly_once``).

Two pieces, each working around a gap between the client libraries and the embedded broker:

* ``start_transactional_producer``: an aiokafka producer with a ``transactional_id``.
  aiokafka 0.14 sends ``InitProducerId`` only in version 0, which the embedded Tansu broker
  answers with an unknown error; Tansu (and every Kafka since 2.5) takes version 3, which
  also carries the producer id and epoch. ``_install_init_producer_id_v3`` adds that version
  to aiokafka's request (version negotiation still picks 0 for a broker without 3).
* ``CommittedFilter``: a ``read_committed`` kafka-python consumer whose records pass only
  when their transaction committed. Kafka hides aborted transactions from such a consumer
  with the ``AbortedTransactions`` list of each fetch answer; Tansu 0.6 sends that list
  empty (its storage engines do not index aborts), so a stock consumer sees the records of a
  transaction aborted by a crash (the last open transaction of a killed worker, fenced by its
  successor). The filter keeps each transactional record until its transaction's marker
  (commit or abort, a control batch the consumer reads anyway) and drops aborted ones, so
  the project's readers see every output once on either broker.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from connectors.security import SecuritySettings

log = logging.getLogger(__name__)

TXN_HEADER = "__stfm_txn"            # synthetic header: the producer id of a transactional record
MARKER_HEADER = "__stfm_txn_end"     # synthetic header of a marker: b"commit" or b"abort"
TRANSACTION_TIMEOUT_MS = 60_000      # an open transaction of a dead worker aborts after this


class TransactionsUnsupported(RuntimeError):
    """The installed client library cannot be taught what transactions need here."""


def transactional_id(group_id: str, readings_topic: str, partition: int) -> str:
    """The transactional id of one region: stable per readings partition, so the worker that
    takes a partition over fences the one that had it (``InitProducerId`` bumps the epoch and
    ends its open transaction)."""
    return f"stfm-{group_id}-{readings_topic}-{partition}"


def _install_init_producer_id_v3() -> None:
    """Add ``InitProducerId`` version 3 to aiokafka's request classes (once)."""
    from aiokafka.protocol import transaction as txn
    from aiokafka.protocol.api import Response
    from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields

    req = txn.InitProducerIdRequest
    if getattr(req, "_stfm_v3", False):
        return
    classes = getattr(req, "_CLASSES", None)
    if not isinstance(classes, tuple) or not hasattr(req, "build"):
        raise TransactionsUnsupported(
            "this aiokafka version builds InitProducerId requests differently than 0.14: "
            "kafka.processing_guarantee = exactly_once needs aiokafka 0.14")

    class InitProducerIdResponseV3(Response):
        API_KEY = 22
        API_VERSION = 3
        FLEXIBLE_VERSION = True
        SCHEMA = Schema(("throttle_time_ms", Int32), ("error_code", Int16),
                        ("producer_id", Int64), ("producer_epoch", Int16),
                        ("tags", TaggedFields))

    class InitProducerIdRequestV3(txn.InitProducerIdRequest_v0):
        API_VERSION = 3
        FLEXIBLE_VERSION = True
        RESPONSE_TYPE = InitProducerIdResponseV3
        SCHEMA = Schema(("transactional_id", CompactString("utf-8")),
                        ("transaction_timeout_ms", Int32), ("producer_id", Int64),
                        ("producer_epoch", Int16), ("tags", TaggedFields))

    v0_build = req.build

    def build(self: Any, request_struct_class: type) -> Any:
        if request_struct_class is InitProducerIdRequestV3:
            # a new producer: no id or epoch yet (-1), the broker assigns them
            return InitProducerIdRequestV3(self._transactional_id,
                                           self._transaction_timeout_ms, -1, -1, {})
        return v0_build(self, request_struct_class)

    req.build = build
    req._CLASSES = (*classes, InitProducerIdRequestV3)
    req._stfm_v3 = True


def ensure_supported() -> None:
    """Raise ``TransactionsUnsupported`` unless the installed aiokafka can be given what
    transactions need here (``_install_init_producer_id_v3``)."""
    _install_init_producer_id_v3()


async def start_transactional_producer(bootstrap_servers: str, txn_id: str, *,
                                       max_batch_size: int = 1024 * 1024,
                                       security: SecuritySettings | None = None) -> Any:
    """A started aiokafka producer with ``transactional_id=txn_id`` (idempotent, acks from
    all replicas). Starting it fences an older producer of the same id: that one's open
    transaction is aborted and its later writes are refused."""
    from connectors.kafka_async import start_producer

    _install_init_producer_id_v3()
    return await start_producer(bootstrap_servers, max_batch_size, security=security,
                                acks="all", enable_idempotence=True, transactional_id=txn_id,
                                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS)


def fenced(producer: Any) -> bool:
    """Whether a transactional producer is beyond use (fenced by a newer one of its id, or
    another fatal transactional error): only a new producer could go on."""
    mgr = getattr(producer, "_txn_manager", None)
    return bool(mgr is not None and mgr.is_fatal_error())


# --- reading committed transactions on any broker ----------------------------------------


def install_committed_filter(consumer: Any) -> None:
    """Make a kafka-python consumer (created with ``isolation_level="read_committed"``)
    hand out its transactions' markers and tag transactional records (synthetic headers
    ``TXN_HEADER`` / ``MARKER_HEADER``), for ``CommittedFilter`` to filter."""
    from kafka.consumer.fetcher import Fetcher

    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not isinstance(getattr(fetcher, "PartitionRecords", None), type):
        raise TransactionsUnsupported(
            "this kafka-python version has no Fetcher.PartitionRecords: the committed-only "
            "reader needs kafka-python 3")
    fetcher.PartitionRecords = _tagged_records_class(Fetcher.PartitionRecords)


def _tagged_records_class(base: type) -> type:
    from kafka.consumer.fetcher import ConsumerRecord
    from kafka.errors import CorruptRecordError

    class TaggedPartitionRecords(base):  # type: ignore[misc, valid-type]
        """kafka-python's record unpacking, with transactions made visible: control
        batches come out as marker records, transactional records carry their producer."""

        def _unpack_records(self, tp: Any, records: Any, key_deserializer: Any,
                            value_deserializer: Any) -> Iterator[Any]:
            batch = records.next_batch()
            last = None
            while batch is not None:
                last = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(f"record batch for {tp} at offset "
                                             f"{batch.base_offset} failed its crc check")
                pid = None
                if batch.magic == 2:
                    self.leader_epoch = batch.leader_epoch
                    control = next(iter(batch), None) if batch.is_control_batch else None
                    # aborted transactions the broker listed (Kafka does; Tansu does not)
                    if batch.has_producer_id():
                        self._consume_aborted_transactions_up_to(batch.last_offset)
                        if control is not None and control.abort:
                            self.aborted_producer_ids.discard(batch.producer_id)
                        elif self._is_batch_aborted(batch):
                            self.next_fetch_offset = batch.next_offset
                            batch = records.next_batch()
                            continue
                    if batch.is_control_batch:
                        outcome = b"abort" if control is None or control.abort else b"commit"
                        self.next_fetch_offset = batch.next_offset
                        yield ConsumerRecord(
                            tp.topic, tp.partition, self.leader_epoch, batch.base_offset,
                            -1, 0, None, None,
                            [(MARKER_HEADER, outcome), (TXN_HEADER, str(batch.producer_id)
                                                        .encode())], None, -1, -1, -1)
                        batch = records.next_batch()
                        continue
                    if batch.is_transactional:
                        pid = str(batch.producer_id).encode()
                for record in batch:
                    key = self._deserialize(key_deserializer, tp.topic, record.headers,
                                            record.key)
                    value = self._deserialize(value_deserializer, tp.topic, record.headers,
                                              record.value)
                    headers = list(record.headers or [])
                    if pid is not None:
                        headers.append((TXN_HEADER, pid))
                    self.records_read += 1
                    self.bytes_read += record.size_in_bytes
                    self.next_fetch_offset = record.offset + 1
                    yield ConsumerRecord(
                        tp.topic, tp.partition, self.leader_epoch, record.offset,
                        record.timestamp, record.timestamp_type, key, value, headers,
                        record.checksum, len(record.key) if record.key is not None else -1,
                        len(record.value) if record.value is not None else -1, -1)
                batch = records.next_batch()
            if last is not None and last.magic == 2:
                self.next_fetch_offset = last.next_offset
            self.drain()

    return TaggedPartitionRecords


class CommittedFilter:
    """Records of a consumer with ``install_committed_filter`` in, committed ones out, in
    offset order per partition: a transactional record waits for its transaction's marker
    (and so does every record after it in its partition), an aborted one is dropped."""

    def __init__(self) -> None:
        # partition -> [record, producer id or None, decided]; head released when decided
        self._queues: dict[tuple[str, int], deque[list[Any]]] = {}
        self.aborted = 0            # records dropped: their transaction aborted

    def feed(self, records: Iterable[Any]) -> Iterator[Any]:
        """Take records in fetch order; yield those that are now known to be committed."""
        for r in records:
            tags = dict(r.headers or ())
            pid = tags.get(TXN_HEADER)
            q = self._queues.setdefault((r.topic, r.partition), deque())
            if MARKER_HEADER in tags:
                keep = tags[MARKER_HEADER] == b"commit"
                for item in q:
                    if item[1] == pid and item[2] is None:
                        item[2] = keep
                        if not keep:
                            self.aborted += 1
            elif pid is None and not q:
                yield r
                continue
            else:
                headers = [h for h in r.headers if h[0] != TXN_HEADER]
                q.append([r._replace(headers=headers), pid, None if pid else True])
            while q and q[0][2] is not None:
                rec, _, keep = q.popleft()
                if keep:
                    yield rec

    def pending(self) -> int:
        """Records still waiting for their transaction's outcome."""
        return sum(len(q) for q in self._queues.values())
