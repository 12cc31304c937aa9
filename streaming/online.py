"""OnlineModel: a torch forecaster served and updated one closed step at a time."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models.backbone import STBackbone
from models.checkpoint import load_checkpoint
from models.graph import laplacian_pe
from models.patch_transformer import PatchTransformer, PatchTransformerConfig
from streaming.config import ModelConfig, PatchingConfig


class OnlineModel:
    """Wraps a forecaster: ``predict_many`` (no state change) and ``learn_many`` (one step).

    Inputs are ``[B, K, P]`` windows already z-scored per sensor; outputs are ``[B, H]`` in the
    same units.
    """

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, name: str = "fresh",
                 meta: dict | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.name = name
        self._graph = _GraphContext(model, meta or {}) if isinstance(model, STBackbone) else None
        self.n_updates = 0
        self.n_skipped = 0
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.model.eval()

    @classmethod
    def fresh(cls, patching: PatchingConfig, cfg: ModelConfig) -> OnlineModel:
        torch.manual_seed(cfg.seed)
        net = PatchTransformer(PatchTransformerConfig(
            patch_len=patching.patch_len, context_patches=cfg.context_patches,
            horizon=cfg.horizon, d_model=cfg.d_model, n_heads=cfg.n_heads,
            n_layers=cfg.n_layers, dropout=cfg.dropout))
        return cls(net, cfg, name=f"fresh-s{cfg.seed}")

    @classmethod
    def from_checkpoint(cls, path: str | Path, patching: PatchingConfig,
                        cfg: ModelConfig) -> OnlineModel:
        """Load a checkpoint; its architecture must fit the patching and horizon in use."""
        torch.manual_seed(cfg.seed)
        net, meta = load_checkpoint(path)
        arch = meta["config"]
        for key, want in (("patch_len", patching.patch_len), ("horizon", cfg.horizon),
                          ("context_patches", cfg.context_patches)):
            if arch.get(key) != want:
                raise ValueError(f"checkpoint {path}: {key}={arch.get(key)} but the "
                                 f"configuration asks for {want}")
        return cls(net, cfg, name=Path(path).name, meta=meta)

    @property
    def version(self) -> str:
        return f"{self.name}+{self.n_updates}"

    def _forward(self, x: np.ndarray, mask: np.ndarray, side: np.ndarray,
                 steps: np.ndarray | None, sensors: list[str] | None) -> torch.Tensor:
        xt, mt, st = torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(side)
        if self._graph is None:
            return self.model(xt, mt, st)
        if steps is None or sensors is None:
            raise ValueError("the spatio-temporal backbone needs the step indices and sensors")
        return self._graph.forecast(xt, mt, st, steps, sensors)

    @torch.no_grad()
    def predict_many(self, x: np.ndarray, mask: np.ndarray, side: np.ndarray, *,
                     steps: np.ndarray | None = None,
                     sensors: list[str] | None = None) -> np.ndarray:
        """Forecasts ``[B, H]`` for windows ``[B, K, P]``; ``steps`` ``[K]`` are the windows'
        step indices and ``sensors`` their ids (used by the spatio-temporal backbone)."""
        if len(x) == 0:
            return np.zeros((0, self.cfg.horizon), np.float32)
        return self._forward(x, mask, side, steps, sensors).numpy()

    def learn_many(self, x: np.ndarray, mask: np.ndarray, side: np.ndarray, y: np.ndarray,
                   y_mask: np.ndarray, *, steps: np.ndarray | None = None,
                   sensors: list[str] | None = None) -> float:
        """One supervised step on the masked Huber loss; returns the loss (NaN when skipped).

        Huber (quadratic up to one normalized unit, linear beyond) keeps a few sensors with
        sudden large errors, e.g. at a level shift, from dragging the shared model around.
        """
        if not self.cfg.learn or self.cfg.lr == 0 or not y_mask.any():
            return math.nan
        self.model.train()
        yt = torch.from_numpy(y)
        mt = torch.from_numpy(y_mask)
        pred = self._forward(x, mask, side, steps, sensors)
        err = torch.nn.functional.huber_loss(pred, torch.nan_to_num(yt), reduction="none",
                                             delta=1.0)
        loss = (err * mt).sum() / mt.sum()
        self.model.eval()
        value = float(loss.detach())
        if not math.isfinite(value):
            self.n_skipped += 1
            return value
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.n_updates += 1
        return value


class _GraphContext:
    """Maps live sensors onto a pretrained backbone's nodes, graph and Laplacian encodings.

    Sensors the checkpoint does not know get no learned node embedding, no Laplacian
    encoding and no edges (they still get temporal and calendar embeddings).
    """

    def __init__(self, model: STBackbone, meta: dict) -> None:
        self.model = model
        extra = meta.get("extra", {})
        names = list(extra.get("sensors", []))
        self.node_of = {s: i for i, s in enumerate(names)}
        ei = np.asarray(extra.get("edge_index", [[], []]), np.int64).reshape(2, -1)
        ew = np.asarray(extra.get("edge_weight", np.ones(ei.shape[1])), np.float32)
        self.edges = (ei, ew)
        dim = model.cfg.lap_pe_dim
        self.lap = (laplacian_pe(ei, len(names), dim, ew) if dim and names and ei.size
                    else torch.zeros(len(names), max(dim, 1)))
        self._cache: tuple[tuple[str, ...], tuple] | None = None

    def _for(self, sensors: list[str]) -> tuple:
        key = tuple(sensors)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        ids = torch.tensor([self.node_of.get(s, -1) for s in sensors], dtype=torch.long)
        ei, ew = self.edges
        live = np.full(len(self.node_of), -1, np.int64)   # checkpoint node -> live index
        known_ids = ids.numpy()
        live[known_ids[known_ids >= 0]] = np.flatnonzero(known_ids >= 0)
        src, dst = (live[ei[0]], live[ei[1]]) if ei.size else (ei[0], ei[1])
        keep = (src >= 0) & (dst >= 0)
        edge_index = torch.from_numpy(np.stack([src[keep], dst[keep]]))
        edge_weight = torch.from_numpy(ew[keep]) if keep.any() else None
        keep = bool(keep.any())
        lap = None
        if self.model.cfg.lap_pe_dim:
            lap = torch.zeros(len(sensors), self.model.cfg.lap_pe_dim)
            known = ids >= 0
            lap[known] = self.lap[ids[known]]
        graph = (ids, lap, edge_index if keep else None, edge_weight)
        self._cache = (key, graph)
        return graph

    def forecast(self, x: torch.Tensor, mask: torch.Tensor, side: torch.Tensor,
                 steps: np.ndarray, sensors: list[str]) -> torch.Tensor:
        ids, lap, edge_index, edge_weight = self._for(sensors)
        st = torch.as_tensor(np.asarray(steps), dtype=torch.long).reshape(1, -1)
        y = self.model(x[None], mask[None], st, side=side[None], node_ids=ids, lap_pe=lap,
                       edge_index=edge_index, edge_weight=edge_weight)
        return y[0, :, -1]
