"""Patch token embedding: a linear map of a patch's (values, mask) plus side channels."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PatchEmbedding(nn.Module):
    """Embed ``[..., P]`` patches with their masks and ``[..., E]`` side channels."""

    def __init__(self, patch_len: int, d_model: int, side_channels: int = 1) -> None:
        super().__init__()
        self.patch_len = patch_len
        self.side_channels = side_channels
        self.proj = nn.Linear(2 * patch_len + side_channels, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor, side: Tensor | None = None) -> Tensor:
        m = mask.to(x.dtype)
        if side is None:
            side = x.new_zeros(*x.shape[:-1], self.side_channels)
        return self.proj(torch.cat([x * m, m, side], dim=-1))
