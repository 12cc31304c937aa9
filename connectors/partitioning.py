"""Graph-aware partitioning: which readings partition (region) each sensor goes to.

Every readings partition is a region with its own core (model, state, alerts), and a sensor's
region is the partition its readings land on. Keyed by sensor id, Kafka's default partitioner
hashes the key (``hash_partition``, exactly ``kafka_io.partition_of``), which scatters graph
neighbours over the regions. ``partition_graph`` instead asks METIS (``pymetis``) for balanced
parts with few cut edges, so that neighbours share a region; producers then send each reading
to ``PartitionMap.partition_of(sensor)`` explicitly.

The map is by sensor, the message key: channel series ``"s/c"`` of a multichannel sensor are
one node (``s``) and go to one partition, like their ``"values"`` message. A graph over
channel series (``expand_channels``) is collapsed to its sensors first.

A map is saved as JSON::

    {"partitions": P, "method": "metis", "sensors": {"id": p, ...},
     "edge_cut": {...}, "graph": "path", "seed": 0, "balance": {...}}

and ``PartitionMap.load`` raises ``PartitionMapError`` naming the file and the key at fault.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from connectors.kafka_io import partition_of as _hash_partition_of
from connectors.recordings import stations_of
from connectors.schemas import split_series

__all__ = [
    "PartitionMapError",
    "PartitionMap",
    "EdgeCut",
    "sensor_graph",
    "partition_graph",
    "hash_partition",
    "edge_cut",
    "balance",
    "read_sensor_graph",
]

_WEIGHT_SCALE = 1000     # METIS takes integer edge weights: the largest becomes this


class PartitionMapError(ValueError):
    """A bad partition map (file), or a sensor it does not place; the message says where."""


@dataclass(frozen=True)
class EdgeCut:
    """Undirected edges (self-loops left out) whose ends lie in different partitions."""

    cut: int                 # edges cut
    edges: int               # edges in all
    cut_weight: float
    total_weight: float

    @property
    def share(self) -> float:
        """Fraction of the edges that are cut."""
        return self.cut / self.edges if self.edges else 0.0

    @property
    def weight_share(self) -> float:
        """Fraction of the edge weight that is cut."""
        return self.cut_weight / self.total_weight if self.total_weight else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"cut": self.cut, "edges": self.edges, "share": round(self.share, 6),
                "cut_weight": round(self.cut_weight, 6),
                "total_weight": round(self.total_weight, 6),
                "weight_share": round(self.weight_share, 6)}

    def __str__(self) -> str:
        return (f"{self.cut}/{self.edges} edges cut ({self.share:.1%}), "
                f"{self.weight_share:.1%} of the edge weight")


@dataclass
class PartitionMap:
    """Sensor id -> partition, for ``partitions`` partitions."""

    partitions: int
    sensors: dict[str, int]
    method: str = "metis"
    edge_cut: dict[str, Any] | None = None
    graph: str | None = None
    seed: int | None = None
    source: str | None = field(default=None, compare=False)   # the file it was loaded from

    def __post_init__(self) -> None:
        if isinstance(self.partitions, bool) or not isinstance(self.partitions, int) \
                or self.partitions < 1:
            raise PartitionMapError(f"{self._where()}partitions must be a positive integer, "
                                    f"got {self.partitions!r}")
        for s, p in self.sensors.items():
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < self.partitions:
                raise PartitionMapError(
                    f"{self._where()}sensor {s!r}: partition {p!r} is not an integer in "
                    f"[0, {self.partitions})")

    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""

    def __contains__(self, sensor: object) -> bool:
        if not isinstance(sensor, str):
            return False
        return sensor in self.sensors or split_series(sensor)[0] in self.sensors

    def partition_of(self, sensor: str) -> int:
        """The partition of a sensor, or of the sensor of a channel series ``"s/c"``
        (``PartitionMapError`` if the map does not place it)."""
        p = self.sensors.get(sensor)
        if p is None:
            p = self.sensors.get(split_series(sensor)[0])
        if p is None:
            raise PartitionMapError(
                f"{self.source or 'partition map'}: sensor {sensor!r} is not in the map "
                f"({len(self.sensors)} sensors); make the map from a graph with this sensor "
                f"(`stfm partition`)")
        return p

    def missing(self, sensors: Sequence[str]) -> list[str]:
        """The sensors (of series ids, in order of first appearance) the map does not place."""
        return [s for s in stations_of(sensors)[0] if s not in self]

    def sizes(self) -> list[int]:
        """Sensors per partition."""
        return np.bincount(np.fromiter(self.sensors.values(), np.int64, len(self.sensors)),
                           minlength=self.partitions).tolist()

    def balance(self) -> dict[str, Any]:
        """Sensors per partition and max/mean (1 = perfectly balanced)."""
        return balance(self.sizes())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"partitions": self.partitions, "method": self.method,
                               "sensors": dict(self.sensors)}
        if self.edge_cut is not None:
            out["edge_cut"] = self.edge_cut
        if self.graph is not None:
            out["graph"] = self.graph
        if self.seed is not None:
            out["seed"] = self.seed
        out["balance"] = self.balance()
        return out

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> PartitionMap:
        """Read a map saved by ``save``; errors name the file and the key."""
        p = Path(path)

        def err(msg: str) -> PartitionMapError:
            return PartitionMapError(f"{p}: {msg}")

        try:
            doc = json.loads(p.read_text())
        except OSError as e:
            raise err(f"cannot read: {e.strerror or e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise err(f"not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise err(f"expected a JSON object, got {type(doc).__name__}")
        for key in ("partitions", "sensors"):
            if key not in doc:
                raise err(f"key {key!r} is missing")
        parts = doc["partitions"]
        if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
            raise err(f"key 'partitions': must be a positive integer, got {parts!r}")
        sensors = doc["sensors"]
        if not isinstance(sensors, dict):
            raise err(f"key 'sensors': must be an object {{sensor id: partition}}, got "
                      f"{type(sensors).__name__}")
        for s, q in sensors.items():
            if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q < parts:
                raise err(f"key 'sensors'[{s!r}]: partition {q!r} is not an integer in "
                          f"[0, {parts})")
        method = doc.get("method", "metis")
        if not isinstance(method, str):
            raise err(f"key 'method': must be a string, got {method!r}")
        cut = doc.get("edge_cut")
        if cut is not None and not isinstance(cut, dict):
            raise err(f"key 'edge_cut': must be an object, got {type(cut).__name__}")
        graph = doc.get("graph")
        if graph is not None and not isinstance(graph, str):
            raise err(f"key 'graph': must be a string, got {graph!r}")
        seed = doc.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise err(f"key 'seed': must be an integer, got {seed!r}")
        return cls(partitions=parts, sensors=dict(sensors), method=method, edge_cut=cut,
                   graph=graph, seed=seed, source=str(p))


def balance(sizes: Sequence[int]) -> dict[str, Any]:
    """``{"sizes": [...], "max": m, "mean": x, "max_over_mean": m / x}``."""
    sizes = [int(s) for s in sizes]
    mean = sum(sizes) / len(sizes) if sizes else 0.0
    mx = max(sizes) if sizes else 0
    return {"sizes": sizes, "max": mx, "mean": round(mean, 4),
            "max_over_mean": round(mx / mean, 4) if mean else 0.0}


def sensor_graph(sensors: Sequence[str], edge_index: np.ndarray | None,
                 edge_weight: np.ndarray | None = None
                 ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The undirected graph over the sensors behind series ids.

    ``edge_index`` [2, E] indexes ``sensors`` (series ids; channel series ``"s/c"`` of one
    sensor become one node). Returns ``(nodes, pairs [2, M] with pairs[0] < pairs[1], weights
    [M], series per node [len(nodes)])``: self-loops and edges within a sensor dropped, both
    directions of an edge merged into one (the larger weight), parallel edges likewise.
    Weights default to 1; they must be finite and >= 0 (zero-weight edges are dropped).
    """
    nodes, of = stations_of(list(sensors))
    counts = np.bincount(of, minlength=len(nodes)) if len(of) else np.zeros(0, np.int64)
    if edge_index is None:
        return nodes, np.zeros((2, 0), np.int64), np.zeros(0), counts
    ei = np.asarray(edge_index, np.int64).reshape(2, -1)
    n = len(sensors)
    if ei.size and (ei.min() < 0 or ei.max() >= n):
        raise ValueError(f"edge_index refers to nodes outside [0, {n})")
    w = (np.ones(ei.shape[1]) if edge_weight is None
         else np.asarray(edge_weight, np.float64).reshape(-1))
    if w.shape != (ei.shape[1],):
        raise ValueError(f"edge_weight must have shape ({ei.shape[1]},), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("edge weights must be finite and >= 0")
    a, b = of[ei[0]], of[ei[1]]
    keep = (a != b) & (w > 0)
    lo, hi, w = np.minimum(a, b)[keep], np.maximum(a, b)[keep], w[keep]
    if not lo.size:
        return nodes, np.zeros((2, 0), np.int64), np.zeros(0), counts
    code = lo * len(nodes) + hi
    order = np.lexsort((-w, code))               # per pair, the largest weight first
    code, w = code[order], w[order]
    first = np.ones(code.size, bool)
    first[1:] = code[1:] != code[:-1]
    code, w = code[first], w[first]
    pairs = np.stack([code // len(nodes), code % len(nodes)]).astype(np.int64)
    return nodes, pairs, w.astype(np.float64), counts


def _cut(assign: np.ndarray, pairs: np.ndarray, w: np.ndarray) -> EdgeCut:
    cut = assign[pairs[0]] != assign[pairs[1]] if pairs.size else np.zeros(0, bool)
    return EdgeCut(cut=int(cut.sum()), edges=int(pairs.shape[1]),
                   cut_weight=float(w[cut].sum()), total_weight=float(w.sum()))


def edge_cut(pmap: PartitionMap, sensors: Sequence[str], edge_index: np.ndarray | None,
             edge_weight: np.ndarray | None = None) -> EdgeCut:
    """How many of the graph's edges (over ``sensors``, as for ``sensor_graph``: undirected,
    no self-loops or edges within a sensor) join sensors of different partitions, and their
    share of the edge weight. Every sensor must be in the map."""
    nodes, pairs, w, _ = sensor_graph(sensors, edge_index, edge_weight)
    missing = [s for s in nodes if s not in pmap]
    if missing:
        raise PartitionMapError(f"{pmap.source or 'partition map'}: {len(missing)} sensor(s) "
                                f"of the graph are not in the map, e.g. {missing[0]!r}")
    assign = np.array([pmap.partition_of(s) for s in nodes], np.int64)
    return _cut(assign, pairs, w)


def hash_partition(sensors: Sequence[str], parts: int) -> PartitionMap:
    """Today's layout: each sensor (key) where Kafka's default partitioner puts it."""
    if parts < 1:
        raise ValueError(f"partitions must be >= 1, got {parts}")
    nodes = stations_of(list(sensors))[0]
    return PartitionMap(partitions=parts, method="hash",
                        sensors={s: _hash_partition_of(s, parts) for s in nodes})


def partition_graph(sensors: Sequence[str], edge_index: np.ndarray | None,
                    edge_weight: np.ndarray | None, parts: int, seed: int = 0, *,
                    graph: str | None = None) -> PartitionMap:
    """A balanced sensor -> partition map with few cut edges (METIS, via ``pymetis``).

    The graph is made undirected over the sensors (``sensor_graph``); weights are scaled to
    integers 1..1000 for METIS; a sensor's weight is its number of series (its channels), so
    partitions balance the series they carry. METIS runs with a fixed seed (recursive
    bisection up to 8 parts, k-way beyond), so the same input gives the same map; partitions
    are then numbered in order of their first sensor. The map's ``edge_cut`` is recorded.
    """
    import pymetis

    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"partitions must be a positive integer, got {parts!r}")
    nodes, pairs, w, counts = sensor_graph(sensors, edge_index, edge_weight)
    n = len(nodes)
    if n == 0:
        raise ValueError("no sensors to partition")
    if parts > n:
        raise ValueError(f"{parts} partitions for {n} sensors: some would get none")
    if parts == 1:
        assign = np.zeros(n, np.int64)
    else:
        iw = (np.maximum(1, np.rint(w / w.max() * _WEIGHT_SCALE)).astype(np.int64)
              if w.size else w.astype(np.int64))
        src = np.concatenate([pairs[0], pairs[1]])
        dst = np.concatenate([pairs[1], pairs[0]])
        ww = np.concatenate([iw, iw])
        order = np.lexsort((dst, src))
        src, dst, ww = src[order], dst[order], ww[order]
        starts = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(src, minlength=n), out=starts[1:])
        opts = pymetis.Options(seed=int(seed))
        res = pymetis.part_graph(
            parts, pymetis.CSRAdjacency(adj_starts=starts.tolist(), adjacent=dst.tolist()),
            vweights=counts.astype(np.int64).tolist(),
            eweights=ww.tolist() if ww.size else None,
            recursive=parts <= 8, options=opts)
        raw = np.asarray(res.vertex_part, np.int64)
        relabel: dict[int, int] = {}
        for q in raw.tolist():
            relabel.setdefault(q, len(relabel))
        for q in range(parts):                    # a part METIS left empty (rare) keeps a number
            relabel.setdefault(q, len(relabel))
        assign = np.array([relabel[q] for q in raw.tolist()], np.int64)
    pmap = PartitionMap(partitions=parts, method="metis",
                        sensors={s: int(p) for s, p in zip(nodes, assign.tolist(), strict=True)},
                        graph=graph, seed=int(seed))
    pmap.edge_cut = _cut(assign, pairs, w).to_dict()
    return pmap


def read_sensor_graph(graph: str | Path, sensors_from: str | Path | None = None
                      ) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """``(sensors, edge_index, edge_weight)`` of a graph file for ``partition_graph``.

    ``graph`` is a recording with a graph (``.npz``/``.h5``: its sensors, ``edge_index`` and
    ``edge_weight``) or a graph CSV (N x N adjacency or ``src,dst[,weight]`` edge list,
    ``load_graph``) whose sensor ids come from ``sensors_from``: a recording (only its sensor
    ids are read) or a text file of ids separated by commas or whitespace (as METR-LA's
    ``graph_sensor_ids.txt``), in the adjacency's row order.
    """
    from connectors.recordings import RecordingError, load_graph, read_recording

    g = Path(graph)
    if g.suffix.lower() == ".csv":
        if sensors_from is None:
            raise ValueError(f"{g}: a graph CSV has no sensor ids; give --sensors-from (a "
                             f"recording or a text file of ids, in the adjacency's order)")
        src = Path(sensors_from)
        if src.suffix.lower() == ".txt":
            try:
                sensors = src.read_text().replace(",", " ").split()
            except OSError as e:
                raise RecordingError(f"{src}: cannot read: {e.strerror or e}") from None
            if not sensors:
                raise RecordingError(f"{src}: no sensor ids")
            if len(set(sensors)) != len(sensors):
                dup = next(s for i, s in enumerate(sensors) if s in sensors[:i])
                raise RecordingError(f"{src}: duplicate sensor id {dup!r}")
        else:
            sensors = read_recording(src, start=0, interval_ms=1).sensors
        ei, ew = load_graph(g, sensors)
        return list(sensors), ei, ew
    if sensors_from is not None:
        raise ValueError(f"{g}: --sensors-from is for graph CSVs; a recording names its "
                         f"sensors")
    rec = read_recording(g, start=0, interval_ms=1)
    if rec.edge_index is None:
        raise RecordingError(f"{g}: the recording has no graph (edge_index/adjacency); give "
                             f"an adjacency CSV with --sensors-from {g}")
    return list(rec.sensors), rec.edge_index, rec.edge_weight
