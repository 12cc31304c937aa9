"""Spatial layer over the sensor graph (torch-geometric), and Laplacian positional encodings."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def laplacian_pe(edge_index: np.ndarray | Tensor, num_nodes: int, dim: int,
                 edge_weight: np.ndarray | Tensor | None = None) -> Tensor:
    """The ``dim`` smallest non-trivial eigenvectors of the symmetric normalized Laplacian.

    They give every node, including one never seen in pretraining, a position on the graph.
    Signs are fixed (largest-magnitude entry positive) so the encoding is deterministic;
    missing dimensions (tiny graphs) are zero.
    """
    ei = np.asarray(edge_index, dtype=np.int64)
    w = np.ones(ei.shape[1]) if edge_weight is None else np.asarray(edge_weight, np.float64)
    a = np.zeros((num_nodes, num_nodes))
    np.add.at(a, (ei[0], ei[1]), w)
    a = np.maximum(a, a.T)
    np.fill_diagonal(a, 0.0)
    deg = a.sum(1)
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    lap = np.eye(num_nodes) - inv[:, None] * a * inv[None, :]
    vals, vecs = np.linalg.eigh(lap)
    vecs = vecs[:, 1:dim + 1]
    sign = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(vecs.shape[1])])
    vecs = vecs * np.where(sign == 0, 1.0, sign)
    out = np.zeros((num_nodes, dim), np.float32)
    out[:, :vecs.shape[1]] = vecs
    return torch.from_numpy(out)


def gcn_edges(edge_index: np.ndarray | Tensor, num_nodes: int,
              edge_weight: np.ndarray | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The GCN's normalized edges of a whole graph: ``edge_index`` with self-loops and the
    weights ``w_ij / sqrt(d_i d_j)`` (``GCNConv``'s own normalization). A subgraph of them
    (``GraphLayer(..., normalized=True)``) aggregates every kept edge exactly as the whole
    graph does, which is what lets a region holding part of a network (``streaming.ingest.halo``)
    compute its sensors' graph layer as one region over all of it would."""
    from torch_geometric.nn.conv.gcn_conv import gcn_norm  # ~1-2 s to import: when used

    ei = torch.as_tensor(np.asarray(edge_index), dtype=torch.long).reshape(2, -1)
    ew = None if edge_weight is None else torch.as_tensor(np.asarray(edge_weight),
                                                         dtype=torch.float32)
    out_ei, out_w = gcn_norm(ei, ew, num_nodes, improved=False, add_self_loops=True)
    return out_ei, out_w


class GraphLayer(nn.Module):
    """Residual GCN over the nodes of each time slice: ``h + GCN(norm(h))``, or with ``gate``
    ``h + tanh(g) * GCN(norm(h))`` with a learned ``g`` that starts at 0 (ReZero, Bachlechner
    et al. 2021): the layer starts as the identity, and training decides how much the
    neighbours count, so a network whose sensors do not help each other keeps it near 0.

    Input ``[S, N, T, d]`` (S samples of N nodes and T tokens); the same graph applies to
    every sample and time step, batched as disjoint copies as torch-geometric does.
    """

    def __init__(self, d_model: int, dropout: float = 0.0, gate: bool = False) -> None:
        from torch_geometric.nn import GCNConv  # ~1-2 s to import: only models with a graph

        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.conv = GCNConv(d_model, d_model, add_self_loops=True, normalize=True)
        self.drop = nn.Dropout(dropout)
        self.gate = nn.Parameter(torch.zeros(())) if gate else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.conv.reset_parameters()
        if self.gate is not None:
            nn.init.zeros_(self.gate)

    def forward(self, h: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None,
                normalized: bool = False) -> Tensor:
        """``normalized``: ``edge_index``/``edge_weight`` are already the GCN's normalized
        edges with self-loops (``gcn_edges``), used as they are."""
        s, n, t, d = h.shape
        x = self.norm(h).permute(0, 2, 1, 3).reshape(s * t * n, d)
        copies = torch.arange(s * t, device=h.device).repeat_interleave(edge_index.shape[1]) * n
        ei = edge_index.repeat(1, s * t) + copies
        ew = edge_weight.repeat(s * t) if edge_weight is not None else None
        if normalized:
            self.conv.normalize = False
            try:
                y = self.conv(x, ei, ew)
            finally:
                self.conv.normalize = True
        else:
            y = self.conv(x, ei, ew)
        y = y.reshape(s, t, n, d).permute(0, 2, 1, 3)
        if self.gate is not None:
            y = torch.tanh(self.gate) * y
        return h + self.drop(y)
