"""OnlineModel: a torch forecaster served and updated one closed step at a time."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.patch_transformer import PatchTransformer, PatchTransformerConfig
from streaming.config import ModelConfig, PatchingConfig


class OnlineModel:
    """Wraps a forecaster: ``predict_many`` (no state change) and ``learn_many`` (one step).

    Inputs are ``[B, K, P]`` windows already z-scored per sensor; outputs are ``[B, H]`` in the
    same units.
    """

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, name: str = "fresh") -> None:
        self.model = model
        self.cfg = cfg
        self.name = name
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
        return cls(net, cfg, name=Path(path).name)

    @property
    def version(self) -> str:
        return f"{self.name}+{self.n_updates}"

    @torch.no_grad()
    def predict_many(self, x: np.ndarray, mask: np.ndarray, side: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.cfg.horizon), np.float32)
        out = self.model(torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(side))
        return out.numpy()

    def learn_many(self, x: np.ndarray, mask: np.ndarray, side: np.ndarray, y: np.ndarray,
                   y_mask: np.ndarray) -> float:
        """One supervised step on the masked Huber loss; returns the loss (NaN when skipped).

        Huber (quadratic up to one normalized unit, linear beyond) keeps a few sensors with
        sudden large errors, e.g. at a level shift, from dragging the shared model around.
        """
        if not self.cfg.learn or self.cfg.lr == 0 or not y_mask.any():
            return math.nan
        self.model.train()
        yt = torch.from_numpy(y)
        mt = torch.from_numpy(y_mask)
        pred = self.model(torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(side))
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
