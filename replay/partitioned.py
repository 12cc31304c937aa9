"""A recording through partitioned regions in one process, with or without the halo exchange.

What a consumer group of workers computes, without the broker: every reading becomes the
readings message a producer keyed by the partition map would send, each region's core runs
``process_records`` (the live worker's code path) on its partition's messages, and the
readings it forwards for the halo (``Outputs.boundary``) reach the receiving region as
``boundary`` records in its next batch. Regions wait for their ghosts' clock, as a worker
does while its neighbours keep sending, so the forecasts equal a live group's. Used by the
halo tests and ``benchmarks/halo.py`` (1 vs P partitions on a real graph).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson

from connectors.partitioning import PartitionMap
from connectors.recordings import Recording
from streaming.config import StreamConfig
from streaming.forecast.metrics import OnlineMetrics
from streaming.ingest.halo import HALO_PARTITION, HaloPlan
from streaming.pipeline.core import StreamCore
from streaming.runtime.microbatch import Record, WorkerStats, process_records


@dataclass
class PartitionedRun:
    """Forecasts and online errors of the regions of one run."""

    forecasts: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    # ^ (sensor, step) -> served forecast [H] on the input scale
    horizon_ts: dict[int, np.ndarray] = field(default_factory=dict)   # step -> times [H]
    served: OnlineMetrics = field(default_factory=OnlineMetrics)
    experts: dict[str, OnlineMetrics] = field(default_factory=dict)
    stats: WorkerStats = field(default_factory=WorkerStats)
    plan: HaloPlan | None = None
    cores: dict[int, StreamCore] = field(default_factory=dict)


def _messages(rec: Recording, rows: range) -> list[tuple[str, bytes]]:
    """``(sensor, readings message)`` of every observed value of ``rows``, in time order."""
    out = []
    for t in rows:
        ts = int(rec.timestamps[t])
        row = rec.values[t]
        for i in np.flatnonzero(~np.isnan(row)):
            s = rec.sensors[i]
            out.append((s, orjson.dumps({"sensor": s, "ts": ts, "value": float(row[i])})))
    return out


def run_partitioned(rec: Recording, cfg: StreamConfig,
                    make_core: Callable[..., StreamCore], pmap: PartitionMap | None, *,
                    halo: bool = True, rows_per_batch: int | None = None,
                    start_row: int = 0, end_row: int | None = None) -> PartitionedRun:
    """Run ``rec`` (rows ``[start_row, end_row)``) through one region per partition of
    ``pmap`` (None: one region), each core from ``make_core(keep)`` (a core over the
    sensors ``keep`` of the recording's graph, all of them for None, its model on the whole
    graph; ``streaming.pipeline.factory.build_core``); ``halo``: with the exchange of
    ``cfg.kafka.halo_hops`` hops (each core holds its own sensors and ghosts), else each
    core holds its own sensors only.
    ``rows_per_batch``: grid rows per micro-batch (default: one step)."""
    parts = 1 if pmap is None else pmap.partitions
    plan = (HaloPlan.build(pmap, list(rec.sensors), rec.edge_index, cfg.kafka.halo_hops)
            if pmap is not None and halo and rec.edge_index is not None else None)
    run = PartitionedRun(plan=plan)
    owner = {s: 0 if pmap is None else pmap.partition_of(s) for s in rec.sensors}
    own = {p: frozenset(s for s, q in owner.items() if q == p) for p in range(parts)}
    if pmap is None:
        cores = {0: make_core(None)}
    else:
        cores = {p: make_core(plan.members(p) if plan is not None else own[p])
                 for p in range(parts)}
        for p, core in cores.items():
            core.set_own(own[p])
    run.cores = cores
    k = cfg.kafka
    inbox: dict[int, list[Record]] = {p: [] for p in range(parts)}
    offsets = dict.fromkeys(range(parts), 0)
    boundary_offsets = dict.fromkeys(range(parts), 0)
    end = rec.n_steps if end_row is None else end_row
    step_rows = rows_per_batch or cfg.patching.patch_len

    def collect(core_out: object) -> None:
        for block in core_out.forecasts:            # type: ignore[attr-defined]
            run.horizon_ts[block.step] = block.horizon_ts
            for s, y in zip(block.sensors, block.yhat, strict=True):
                run.forecasts[(s, block.step)] = y

    for lo in range(start_row, end, step_rows):
        by_part: dict[int, list[Record]] = {p: [] for p in range(parts)}
        for s, msg in _messages(rec, range(lo, min(end, lo + step_rows))):
            p = owner[s]
            by_part[p].append(Record(k.readings_topic, p, offsets[p], s.encode(), msg))
            offsets[p] += 1
        for p in range(parts):
            records = by_part[p] + inbox[p]
            inbox[p] = []
            if not records:
                continue
            waits = {p, HALO_PARTITION} if plan is not None and plan.ghosts.get(p) else {p}
            out, core_out = process_records(cores[p], records, cfg, run.stats, waits,
                                            halo=plan, region=p)
            collect(core_out)
            for dest, key, value in out.boundary:
                inbox[dest].append(Record(k.boundary_topic, dest, boundary_offsets[dest], key,
                                          value))
                boundary_offsets[dest] += 1
    # the neighbours' last readings, then the end of the input
    for p in range(parts):
        if inbox[p]:
            _, core_out = process_records(cores[p], inbox[p], cfg, run.stats,
                                          {p, HALO_PARTITION}, halo=plan, region=p)
            collect(core_out)
    for p in range(parts):
        collect(cores[p].flush())
    for core in cores.values():
        f = core.forecaster
        _merge(run.served, f.metrics)
        for e, m in f.expert_metrics.items():
            _merge(run.experts.setdefault(e, OnlineMetrics()), m)
    return run


def _merge(into: OnlineMetrics, m: OnlineMetrics) -> None:
    into.n += m.n
    into.abs_err += m.abs_err
    into.sq_err += m.sq_err
    into.abs_err_norm += m.abs_err_norm
    into.sq_err_norm += m.sq_err_norm
