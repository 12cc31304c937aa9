"""Watching a running worker: the hooks a driver calls as it works, for metrics and views.

A driver (the aiokafka worker) calls, in this order per fetched batch, ``region_processed``
for every region's core output and ``batch_processed`` once with the batch's encoded outputs
and the worker's cumulative counters; ``lag_measured`` when it measured consumer lag and
``checkpointed`` after a checkpoint. Observers run on the worker's event loop between
batches: they copy what they need and return quickly; anything served to other threads
(HTTP) is guarded by the observer itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streaming.pipeline.core import CoreOutput, StreamCore
    from streaming.runtime.microbatch import Outputs, WorkerStats


class Observer:
    """Base class: every hook does nothing; subclasses override the ones they need."""

    def region_processed(self, region: int, core: StreamCore, out: CoreOutput) -> None:
        """A region's core consumed its part of a batch (``out``: steps closed, forecasts,
        alerts as objects)."""

    def batch_processed(self, out: Outputs, stats: WorkerStats, seconds: float) -> None:
        """A whole batch went through every region in ``seconds``; ``stats`` are cumulative."""

    def lag_measured(self, lag: dict[str, int]) -> None:
        """Messages behind the end per assigned ``topic-partition``."""

    def checkpointed(self, regions: list[int], at: float) -> None:
        """Regions' state and offsets were written at ``at`` (epoch seconds)."""

    def offset_out_of_range(self, topic: str, partition: int) -> None:
        """A resume or fetch position was outside its partition (handled by the policy)."""


class Observers(Observer):
    """Several observers as one: each hook is called on each, in order."""

    def __init__(self, observers: list[Observer] | tuple[Observer, ...] = ()) -> None:
        self.observers = list(observers)

    def __bool__(self) -> bool:
        return bool(self.observers)

    def region_processed(self, region: int, core: StreamCore, out: CoreOutput) -> None:
        for o in self.observers:
            o.region_processed(region, core, out)

    def batch_processed(self, out: Outputs, stats: WorkerStats, seconds: float) -> None:
        for o in self.observers:
            o.batch_processed(out, stats, seconds)

    def lag_measured(self, lag: dict[str, int]) -> None:
        for o in self.observers:
            o.lag_measured(lag)

    def checkpointed(self, regions: list[int], at: float) -> None:
        for o in self.observers:
            o.checkpointed(regions, at)

    def offset_out_of_range(self, topic: str, partition: int) -> None:
        for o in self.observers:
            o.offset_out_of_range(topic, partition)
