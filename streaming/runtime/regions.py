"""Regions: one readings partition = one region = one ``StreamCore`` (model, state, alerts).

A region is created on first data or assignment, restored from its newest checkpoint (unless
the worker starts over with ``--from-beginning``), and dropped when its partition leaves the
worker. Events go to the region of the same partition number (co-partitioned topics), else to
the region that knows the event's sensor, else to the first region.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from streaming.pipeline.core import StreamCore
from streaming.runtime.checkpointing import Checkpointer
from streaming.runtime.microbatch import InputRecord


class Regions:
    """The cores of the readings partitions this worker owns."""

    def __init__(self, checkpointer: Checkpointer, core: StreamCore | None = None,
                 core_factory: Callable[[int], StreamCore] | None = None) -> None:
        """``core``: the first region's core (optional); ``core_factory(region)``: a new
        core for a region."""
        if core is None and core_factory is None:
            raise ValueError("a worker needs a core or a core_factory")
        self.checkpointer = checkpointer
        self.cores: dict[int, StreamCore] = {}
        self.restore = True                   # False: start over, ignoring checkpoints
        self.restored_from: str | None = None
        self._spare = core
        self._factory = core_factory
        self._restored: dict[int, bool] = {}    # partition -> its core was restored
        self.on_new: Callable[[int, StreamCore], None] | None = None   # sees each new core

    def get(self, partition: int) -> StreamCore:
        """The core of a readings partition: restored from its checkpoint, or new."""
        core = self.cores.get(partition)
        if core is not None:
            return core
        if self._spare is not None:
            core, self._spare = self._spare, None
        elif self._factory is not None:
            core = self._factory(partition)
        else:
            raise ValueError(f"this worker owns readings partition {partition} besides "
                             "another one: give it a core_factory")
        self._restored[partition] = self.restore
        if self.restore:
            self.restored_from = self.checkpointer.restore(partition, core) or self.restored_from
        else:
            self.checkpointer.started(partition, core)
        self.cores[partition] = core
        if self.on_new is not None:
            self.on_new(partition, core)
        return core

    def rebuild(self) -> None:
        """New cores for every region (the configuration changed before any data was
        processed, e.g. the grid interval was inferred), restored as the first ones were."""
        restored = {p: self._restored.get(p, self.restore) for p in self.cores}
        self.cores.clear()
        self._spare = None
        if self._factory is None:
            raise ValueError("rebuilding the regions' cores needs a core_factory")
        keep = self.restore
        for p, was in restored.items():
            self.restore = was
            self.get(p)
        self.restore = keep

    def drop(self, partition: int) -> None:
        self.cores.pop(partition, None)
        self.checkpointer.forget(partition)

    def split(self, batch: dict[tuple[str, int], list[InputRecord]], events_topic: str
              ) -> dict[int, list[InputRecord]]:
        """A fetched batch by region: each readings partition's records, plus the events
        routed to it."""
        by_part: dict[int, list[InputRecord]] = {}
        events: list[InputRecord] = []
        for (topic, partition), recs in batch.items():   # readings, and halo ghosts
            if topic == events_topic:
                events.extend(recs)
            else:
                by_part.setdefault(partition, []).extend(recs)
        for p in by_part:
            self.get(p)
        for r in events:
            by_part.setdefault(self._event_region(r), []).append(r)
        return by_part

    def _event_region(self, r: InputRecord) -> int:
        if r.partition in self.cores or not self.cores:
            return r.partition
        try:
            sensor = orjson.loads(r.value).get("sensor")
        except (orjson.JSONDecodeError, AttributeError):
            sensor = None
        for p, core in sorted(self.cores.items()):
            if isinstance(sensor, str) and core.knows(sensor):
                return p
        return min(self.cores)
