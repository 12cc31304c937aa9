"""A sensor graph inferred from co-movement, for networks that come without one.

Each sensor is linked to the ``k`` sensors whose readings correlate most with its own
(Pearson correlation over the rows given, pairwise over the rows both observed, at least
``min_corr``), with the correlation as the edge weight; the links are made symmetric. This is
the data-driven adjacency of adaptive-graph models (Graph WaveNet, AGCRN), computed from data
instead of learned per node, so it is inductive: an unseen network gets its own graph from its
own history. The backbone's graph layer (``models.graph.GraphLayer``) uses it like a given
graph (``edge_index``/``edge_weight`` in torch-geometric's form).

Cost: ``O(N^2 R)`` for ``N`` sensors and ``R`` rows, in blocks of ``block`` sensors so memory
stays ``O(block * N)``.
"""

from __future__ import annotations

import numpy as np


def comovement_graph(values: np.ndarray, k: int = 8, min_corr: float = 0.3,
                     min_rows: int = 24, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(edge_index [2, E], edge_weight [E])`` of the ``k`` most correlated neighbours of
    every sensor of ``values`` ``[R rows, N sensors]`` (NaN = missing); a pair needs
    ``min_rows`` rows observed by both and a correlation of at least ``min_corr``. No
    self-loops (the GCN adds its own); every edge appears in both directions."""
    v = np.asarray(values, np.float64)
    if v.ndim != 2:
        raise ValueError(f"comovement graph: values must be [rows, sensors], got {v.shape}")
    if k < 1 or not 0.0 <= min_corr < 1.0:
        raise ValueError(f"comovement graph: k ({k}) must be >= 1 and min_corr ({min_corr}) "
                         "in [0, 1)")
    r, n = v.shape
    obs = np.isfinite(v)
    cnt = obs.sum(0)
    mean = np.divide(np.where(obs, v, 0.0).sum(0), cnt, out=np.zeros(n), where=cnt > 0)
    z = np.where(obs, v - mean, 0.0)
    sd = np.sqrt(np.divide((z * z).sum(0), cnt, out=np.zeros(n), where=cnt > 0))
    z = np.divide(z, sd, out=np.zeros_like(z), where=sd > 0)
    o = obs.astype(np.float64)
    src, dst, wt = [], [], []
    for a in range(0, n, block):
        b = min(n, a + block)
        both = o[:, a:b].T @ o                                   # rows both observed
        corr = np.divide(z[:, a:b].T @ z, both, out=np.zeros((b - a, n)), where=both > 0)
        corr[both < min_rows] = 0.0
        corr[np.arange(b - a), np.arange(a, b)] = 0.0            # no self-loops
        kk = min(k, n - 1)
        if kk <= 0:
            break
        top = np.argpartition(-corr, kk - 1, axis=1)[:, :kk]
        w = np.take_along_axis(corr, top, axis=1)
        keep = w >= min_corr
        rows = np.repeat(np.arange(a, b), kk).reshape(b - a, kk)
        src.append(rows[keep])
        dst.append(top[keep])
        wt.append(w[keep])
    if not src or not sum(len(s) for s in src):
        return np.zeros((2, 0), np.int64), np.zeros(0, np.float32)
    s, d, w = np.concatenate(src), np.concatenate(dst), np.concatenate(wt)
    # symmetric: both directions, a pair found from both ends kept once
    pairs = np.concatenate([np.stack([s, d]), np.stack([d, s])], axis=1)
    weights = np.concatenate([w, w])
    key = pairs[0] * n + pairs[1]
    _, first = np.unique(key, return_index=True)
    return pairs[:, first].astype(np.int64), weights[first].astype(np.float32)
