"""Watching the input partitions: lag, which still have data to come, and whether a group
resumed at the end of everything (said once, loudly: a second ``stfm run`` in the same group
otherwise processes nothing in silence)."""

from __future__ import annotations

import time
from typing import Any


async def active_partitions(consumer: Any, batch: dict[Any, list[Any]],
                            topic: str) -> set[int]:
    """Partitions of ``topic`` with data still to come: in this batch or not caught up."""
    active = {tp.partition for tp in batch if tp.topic == topic}
    for tp in consumer.assignment():
        if tp.topic != topic or tp.partition in active:
            continue
        hw = consumer.highwater(tp)
        if hw is None or await consumer.position(tp) < hw:
            active.add(tp.partition)
    return active


async def lag(consumer: Any) -> dict[str, int]:
    """Messages behind the end, per assigned ``topic-partition`` whose end is known (a fetch
    for it answered): a partition not fetched yet is left out rather than reported as 0."""
    out = {}
    for tp in consumer.assignment():
        hw = consumer.highwater(tp)
        if hw is None:
            continue
        pos = await consumer.position(tp)
        out[f"{tp.topic}-{tp.partition}"] = max(0, hw - pos)
    return out


async def caught_up(consumer: Any, fresh_s: float = 2.0) -> bool:
    """Whether the consumer holds partitions and has read each to its end, as the broker
    said within the last ``fresh_s`` seconds. A partition's end is known only once a fetch
    for it answered, and it stays known only while fetches keep answering: joining the
    group, a slow first fetch or a broker that went away are never taken for an input read
    to its end (an idle exit would otherwise stop a worker that has not read anything yet,
    or one whose broker is down)."""
    tps = consumer.assignment()
    if not tps:
        return False
    oldest = time.time() * 1000 - fresh_s * 1000
    for tp in tps:
        hw = consumer.highwater(tp)
        if hw is None or await consumer.position(tp) < hw:
            return False
        polled = consumer.last_poll_timestamp(tp)
        if polled is None or polled < oldest:
            return False
    return True


async def at_end(consumer: Any, k: Any) -> str | None:
    """The message to say when every assigned readings partition was resumed at its end
    (call before anything was processed; ``k``: ``KafkaConfig``), else None."""
    tps = [tp for tp in consumer.assignment() if tp.topic == k.readings_topic]
    if not tps:
        return None
    ends = []
    for tp in tps:
        hw = consumer.highwater(tp)     # known once a fetch answered for the partition
        if hw is None or hw == 0:
            return None
        pos = await consumer.position(tp)   # nothing processed yet: where we resumed
        if pos < hw:
            return None
        ends.append(f"{tp.topic}-{tp.partition} at offset {pos} of {hw}")
    return (f"nothing to read: consumer group {k.group_id!r} already processed "
            f"{', '.join(ends)} (its committed offsets or checkpoints are at the end). To "
            "process the topic again start over with `stfm run --from-beginning` (fresh "
            "state) or use another `--group-id`.")
