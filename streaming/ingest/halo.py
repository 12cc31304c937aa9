"""Halo exchange: a region's graph layer sees its neighbours across a partition cut.

With a sensor graph (``graph``) and a sensor -> partition map (``kafka.partition_map``,
``stfm partition``), every readings partition is a region whose core holds the whole graph
but receives only its own sensors' readings. The sensors of other regions within
``kafka.halo_hops`` hops of its own are its *ghosts*. After a batch, a region forwards the
valid readings of its sensors that are ghosts elsewhere to the ``boundary`` topic, on the
partition of the receiving region (co-partitioned with ``readings``, so the consumer group
assigns both to the same worker). The receiving core takes them as readings on a partition
of their own (``HALO_PARTITION``):

- a region's core holds its own sensors and its ghosts only (``HaloPlan.members``), while
  its model keeps the whole graph: the GCN's normalized edges and the Laplacian encodings
  are the whole graph's, sliced to the region's sensors (``models.graph.gcn_edges``), so
  with ``halo_hops`` >= the graph layers a forecast passes through (one for the forecast,
  one for the imputation pass: 2) an own sensor's forecast equals one region's;
- ghosts never move the region's clock (the clock is the minimum over the partitions it
  waits for; the halo partition can only hold it back), and while their neighbours keep
  sending (a boundary message within ``halo_wait_s``) the region waits for them, so a step
  closes with its ghosts' readings in it;
- no forecasts, alerts or metrics are made for ghosts, and their bad readings are not
  dead-lettered again (their own region did that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from connectors.partitioning import PartitionMap
from streaming.ingest.clock import HALO_PARTITION

__all__ = ["HALO_PARTITION", "HaloPlan"]


@dataclass
class HaloPlan:
    """Who is whose ghost: per region its own sensors and ghosts, per sensor the regions
    that need its readings."""

    partitions: int
    hops: int
    own: dict[int, frozenset[str]] = field(default_factory=dict)
    ghosts: dict[int, frozenset[str]] = field(default_factory=dict)
    exports: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, pmap: PartitionMap, sensors: Sequence[str], edge_index: np.ndarray | None,
              hops: int = 2) -> HaloPlan:
        """The plan for the graph over ``sensors`` (series ids; ``edge_index`` [2, E] indexes
        them, taken as undirected) split by ``pmap``. ``hops`` = 0: no ghosts."""
        if hops < 0:
            raise ValueError(f"kafka.halo_hops must be >= 0, got {hops}")
        names = list(sensors)
        missing = pmap.missing(names)
        if missing:
            raise ValueError(f"{pmap.source or 'partition map'}: {len(missing)} sensor(s) of "
                             f"the graph are not in the map, e.g. {missing[0]!r}")
        n = len(names)
        region = np.array([pmap.partition_of(s) for s in names], np.int64)
        ei = (np.zeros((2, 0), np.int64) if edge_index is None
              else np.asarray(edge_index, np.int64).reshape(2, -1))
        src = np.concatenate([ei[0], ei[1]])
        dst = np.concatenate([ei[1], ei[0]])
        plan = cls(partitions=pmap.partitions, hops=hops)
        need = np.zeros((pmap.partitions, n), bool)        # region r needs sensor i
        for r in range(pmap.partitions):
            reach = region == r
            for _ in range(hops):
                grown = reach.copy()
                grown[dst[reach[src]]] = True
                if (grown == reach).all():
                    break
                reach = grown
            need[r] = reach & (region != r)
            plan.own[r] = frozenset(names[i] for i in np.flatnonzero(region == r))
            plan.ghosts[r] = frozenset(names[i] for i in np.flatnonzero(need[r]))
        for i in np.flatnonzero(need.any(axis=0)):
            plan.exports[names[i]] = tuple(int(r) for r in np.flatnonzero(need[:, i]))
        return plan

    def members(self, region: int) -> frozenset[str]:
        """What the region's core holds: its own sensors and its ghosts."""
        return self.own.get(region, frozenset()) | self.ghosts.get(region, frozenset())

    def sizes(self) -> dict[str, list[int]]:
        """Own sensors and ghosts per region (for the start-up log and the benchmark)."""
        return {"own": [len(self.own.get(r, ())) for r in range(self.partitions)],
                "ghosts": [len(self.ghosts.get(r, ())) for r in range(self.partitions)]}

    def forwards(self, sensors: Sequence[str], source: np.ndarray, region: int
                 ) -> dict[int, list[int]]:
        """Which input records (``source``: each reading's record index) go to which
        regions: records with a reading of one of ``region``'s sensors that others need
        (a multichannel record goes once per region)."""
        out: dict[int, set[int]] = {}
        exports = self.exports
        for s, rec in zip(sensors, source.tolist(), strict=True):
            dests = exports.get(s)
            if dests is None:
                continue
            for r in dests:
                if r != region:
                    out.setdefault(r, set()).add(rec)
        return {r: sorted(v) for r, v in out.items()}
