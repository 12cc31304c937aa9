"""Causal sliding-window self-attention with a key/value cache for streaming inference.

Each token attends to itself and the ``window - 1`` tokens before it, with a learned bias per
head and relative offset instead of absolute positions. Because nothing depends on where a
sequence starts, a streaming step that feeds one new token with the cached keys/values of the
previous ``window - 1`` tokens gives exactly the outputs of running the whole sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KVCache = tuple[Tensor, Tensor]


class SlidingWindowAttention(nn.Module):
    """Multi-head causal attention over the last ``window`` tokens."""

    def __init__(self, d_model: int, n_heads: int, window: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        self.d_model, self.n_heads, self.window = d_model, n_heads, window
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.rel_bias = nn.Parameter(torch.zeros(n_heads, window))
        self.dropout = dropout
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.qkv.reset_parameters()
        self.out.reset_parameters()
        nn.init.zeros_(self.rel_bias)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """``x``: ``[B, T, d]``; ``cache``: keys/values ``[B, h, C, dh]`` of the C tokens before.

        Returns the outputs ``[B, T, d]`` and the cache for the next call (the last
        ``window - 1`` keys/values).
        """
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        c = k.shape[2] - t
        qpos = torch.arange(c, c + t, device=x.device)
        kpos = torch.arange(c + t, device=x.device)
        offset = qpos[:, None] - kpos[None, :]                       # [T, C+T]
        allowed = (offset >= 0) & (offset < self.window)
        bias = self.rel_bias[:, offset.clamp(0, self.window - 1)]    # [h, T, C+T]
        bias = bias.masked_fill(~allowed, float("-inf"))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.unsqueeze(0),
            dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, t, self.d_model)
        keep = self.window - 1
        new_cache = (k[:, :, -keep:], v[:, :, -keep:]) if keep > 0 else \
            (k[:, :, :0], v[:, :, :0])
        return self.out(y), new_cache

    def keys_values(self, x: Tensor) -> KVCache:
        """The cache ``forward`` would leave after ``x`` ``[B, T, d]`` (its last ``window -
        1`` keys/values), without attending: what a query after ``x`` needs."""
        b, t, d = x.shape
        keep = max(self.window - 1, 0)
        x = x[:, t - min(keep, t):]
        kv = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:])
        kv = kv.view(b, x.shape[1], 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]


class TemporalBlock(nn.Module):
    """Pre-norm Transformer block: sliding-window attention + MLP."""

    def __init__(self, d_model: int, n_heads: int, window: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SlidingWindowAttention(d_model, n_heads, window, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(),
                                 nn.Linear(2 * d_model, d_model))
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm1.reset_parameters()
        self.norm2.reset_parameters()
        self.attn.reset_parameters()
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, gain=1 / math.sqrt(2))
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        a, cache = self.attn(self.norm1(x), cache)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.norm2(x))), cache

    def last(self, x: Tensor) -> Tensor:
        """The output ``[B, 1, d]`` at the last token of ``x`` ``[B, T, d]`` alone: the same as
        ``forward(x)[0][:, -1:]`` (the earlier tokens give their keys and values only), at
        about a quarter of the cost when only the last token is read."""
        n1 = self.norm1(x)
        cache = self.attn.keys_values(n1[:, :-1]) if x.shape[1] > 1 else None
        a, _ = self.attn(n1[:, -1:], cache)
        y = x[:, -1:] + self.drop(a)
        return y + self.drop(self.mlp(self.norm2(y)))
