"""Worker checkpointing: exactly-once model state over at-least-once Kafka.

Modelled on Quix Streams' ``Checkpoint``: the worker notes the next offset each processed
batch reflects (``store_offset``); when a region's checkpoint is ``due`` (every
``checkpoint.every_steps`` closed steps), on shutdown and when a region is revoked,
``commit`` runs in numbered steps:

1. produce the outputs of everything processed so far and wait for the broker's acks;
2. write each region's whole state (``StreamCore.state_dict``) with the input offsets it
   reflects, atomically (``streaming.runtime.checkpoint``);
3. only then commit those offsets to Kafka.

A crash between the steps re-processes at most the inputs after the last checkpoint: the
same outputs again (same keys) and no model update applied twice. Without
``checkpoint.dir`` the worker commits offsets after each batch's outputs were acknowledged.

With ``kafka.processing_guarantee = exactly_once`` step 1 is the regions' transactions
(outputs and input offsets commit together, every batch) and step 3 commits nothing more:
the checkpoint's offsets are then at or behind the committed ones, and a restart
re-processes the range between them without emitting (``streaming.runtime.worker``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from connectors.kafka_async import TP
from streaming.config import StreamConfig
from streaming.pipeline.core import StreamCore
from streaming.runtime.checkpoint import CheckpointStore

log = logging.getLogger(__name__)


class Checkpointer:
    """Offsets the regions' state reflects, checkpoint cadence and the commit protocol."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        self.enabled = bool(cfg.checkpoint.dir)
        self.positions: dict[TP, int] = {}   # next offset the cores' state reflects
        self._steps_at: dict[int, int] = {}  # region -> closed steps at its last checkpoint
        self.checkpoints = 0

    def store(self, region: int) -> CheckpointStore | None:
        """The checkpoint store of one region (None without ``checkpoint.dir``)."""
        c, k = self.cfg.checkpoint, self.cfg.kafka
        if not c.dir:
            return None
        return CheckpointStore(c.dir, f"{k.group_id}/{k.readings_topic}-{region}", keep=c.keep)

    def store_offset(self, tp: TP, offset: int) -> None:
        """Everything before ``offset`` of ``tp`` is reflected in the cores' state."""
        self.positions[tp] = offset

    def position(self, tp: TP) -> int | None:
        """Where a (re)assigned partition resumes (None: the group's committed offset)."""
        return self.positions.get(tp)

    def restore(self, region: int, core: StreamCore) -> str | None:
        """Load the region's newest valid checkpoint into ``core`` and note its offsets;
        returns the checkpoint's path (None: no checkpoint, the core starts fresh)."""
        store = self.store(region)
        ck = store.load_latest() if store is not None else None
        if ck is not None:
            core.load_state_dict(ck.state)
            self.positions.update(ck.offsets)
            log.info("region %d: restored state from %s (offsets %s)", region, ck.path,
                     {f"{tp.topic}:{tp.partition}": o for tp, o in ck.offsets.items()})
        elif store is not None:
            log.info("region %d: no checkpoint under %s: starting fresh", region, store.dir)
        self.started(region, core)
        return None if ck is None else str(ck.path)

    def started(self, region: int, core: StreamCore) -> None:
        self._steps_at[region] = core.patcher.stats.closed_steps

    def forget(self, region: int) -> None:
        """A region left this worker: its readings (and boundary) positions go with it."""
        self.positions.pop(TP(self.cfg.kafka.readings_topic, region), None)
        self.positions.pop(TP(self.cfg.kafka.boundary_topic, region), None)
        self._steps_at.pop(region, None)

    def due(self, cores: dict[int, StreamCore]) -> list[int]:
        """Regions whose closed steps since their last checkpoint reached the interval."""
        if not self.enabled:
            return []
        every = self.cfg.checkpoint.every_steps
        return [p for p, core in cores.items()
                if core.patcher.stats.closed_steps - self._steps_at.get(p, 0) >= every]

    def region_offsets(self, region: int) -> dict[TP, int]:
        """Offsets a region's state reflects: its readings partition and the events and
        boundary (halo) partitions of the same number (co-partitioned topics)."""
        k = self.cfg.kafka
        topics = (k.readings_topic, k.events_topic, k.boundary_topic)
        return {tp: off for tp, off in self.positions.items()
                if tp.partition == region and tp.topic in topics}

    async def commit(self, regions: list[int], cores: dict[int, StreamCore], *,
                     produce: Callable[[], Awaitable[None]],
                     commit_offsets: Callable[[dict[TP, int]], Awaitable[None]]) -> None:
        """Produce outputs (1), write each region's state with its offsets (2), commit (3)."""
        await produce()
        offsets: dict[TP, int] = {}
        for p in regions:
            store = self.store(p)
            assert store is not None, "commit() needs checkpoint.dir"
            core = cores[p]
            mine = self.region_offsets(p)
            path = store.save(core.state_dict(), mine,
                              {"model_version": core.model.version, "region": p,
                               "closed_steps": core.patcher.stats.closed_steps})
            self._steps_at[p] = core.patcher.stats.closed_steps
            self.checkpoints += 1
            log.debug("checkpoint %s at %s", path, mine)
            offsets.update(mine)
        await commit_offsets(offsets)
