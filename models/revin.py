"""Reversible instance normalization over a masked window (RevIN, Kim et al., ICLR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RevIN(nn.Module):
    """Normalize each series by its own observed window mean/std; undo it on the outputs."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x``/``mask`` are ``[B, ...]``; returns (normalized x, loc [B, 1], scale [B, 1])."""
        flat_x = x.reshape(x.shape[0], -1)
        m = mask.reshape(mask.shape[0], -1).to(x.dtype)
        cnt = m.sum(dim=1, keepdim=True).clamp_min(1.0)
        loc = (flat_x * m).sum(dim=1, keepdim=True) / cnt
        var = (((flat_x - loc) * m) ** 2).sum(dim=1, keepdim=True) / cnt
        scale = torch.sqrt(var + self.eps)
        shape = (-1,) + (1,) * (x.dim() - 1)
        z = (x - loc.reshape(shape)) / scale.reshape(shape)
        return z * mask.to(x.dtype), loc, scale

    @staticmethod
    def inverse(y: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        return y * scale + loc
