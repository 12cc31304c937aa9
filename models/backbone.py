"""The spatio-temporal backbone: token embeddings → causal Transformer over time → graph layer.

Tokens (DESIGN.md "Backbone"): a linear embedding of each patch's (values, mask) and event
channels, plus time-of-day and day-of-week embeddings of the patch's step, plus a node
embedding (a learned vector per pretraining sensor and a projection of its Laplacian
positional encoding, so a sensor unseen in pretraining still gets a spatial embedding).
The temporal part is sliding-window causal attention with a key/value cache, so streaming one
new token per sensor equals running the whole sequence. The graph layer over the sensors of
each time slice is optional at run time (pass no ``edge_index``).

Shapes: ``S`` samples, ``N`` sensors, ``T`` tokens (patches), ``P`` patch length.
Values are z-scored per sensor by the caller (the online normalizer or the split's
statistics); masked points carry zeros.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from models.adapter import Adapter
from models.attention import KVCache, TemporalBlock
from models.embedding import PatchEmbedding
from models.graph import GraphLayer
from models.shape import ModelShape, last_observed

EPOCH_DAY_OF_WEEK = 3  # 1970-01-01 was a Thursday (Monday = 0)


@dataclass
class STBackboneConfig(ModelShape):
    """The shape (``context_patches`` is the attention window in tokens, ``horizon`` the grid
    points forecast after each token) plus the backbone's own parts."""

    d_model: int = 64
    side_channels: int = 1        # event-count channels per token
    steps_per_day: int = 24       # patches per day for the time-of-day embedding (0 = none)
    day_of_week: bool = True
    num_nodes: int = 0            # learned node embeddings (0 = none)
    lap_pe_dim: int = 8           # Laplacian positional-encoding dims (0 = none)
    graph: bool = True            # build the graph layer (still optional at run time)
    proj_dim: int = 32            # contrastive projection size
    adapter_dim: int = 0          # bottleneck adapter before the output norm (0 = none)

    def to_dict(self) -> dict[str, int | float | bool]:
        return asdict(self)


class STBackbone(nn.Module):
    """Backbone with forecast, reconstruction and projection heads."""

    def __init__(self, cfg: STBackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = PatchEmbedding(cfg.patch_len, d, cfg.side_channels)
        self.tod = nn.Embedding(cfg.steps_per_day, d) if cfg.steps_per_day > 0 else None
        self.dow = nn.Embedding(7, d) if cfg.day_of_week else None
        self.node = nn.Embedding(cfg.num_nodes, d) if cfg.num_nodes > 0 else None
        self.lap = nn.Linear(cfg.lap_pe_dim, d, bias=False) if cfg.lap_pe_dim > 0 else None
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(TemporalBlock(d, cfg.n_heads, cfg.context_patches,
                                                  cfg.dropout) for _ in range(cfg.n_layers))
        self.graph_layer = GraphLayer(d, cfg.dropout) if cfg.graph else None
        self.adapter = Adapter(d, cfg.adapter_dim) if cfg.adapter_dim > 0 else None
        self.norm = nn.LayerNorm(d)
        self.forecast_head = nn.Linear(d, cfg.horizon)
        self.reconstruction_head = nn.Linear(d, cfg.patch_len)
        self.projection_head = nn.Sequential(nn.Linear(d, d), nn.GELU(),
                                             nn.Linear(d, cfg.proj_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embed.reset_parameters()
        for emb in (self.tod, self.dow, self.node):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        if self.lap is not None:
            nn.init.normal_(self.lap.weight, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for block in self.blocks:
            block.reset_parameters()
        if self.graph_layer is not None:
            self.graph_layer.reset_parameters()
        if self.adapter is not None:
            self.adapter.reset_parameters()
        self.norm.reset_parameters()
        nn.init.zeros_(self.forecast_head.weight)
        nn.init.zeros_(self.forecast_head.bias)
        self.reconstruction_head.reset_parameters()
        for m in self.projection_head:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    # --- pieces -------------------------------------------------------------------------

    def tokens(self, x: Tensor, mask: Tensor, steps: Tensor, *, side: Tensor | None = None,
               node_ids: Tensor | None = None, lap_pe: Tensor | None = None,
               token_mask: Tensor | None = None) -> Tensor:
        """Token embeddings ``[S, N, T, d]``.

        ``steps`` ``[S, T]`` are absolute step indices (epoch ms // step ms) for the calendar
        embeddings; ``node_ids`` ``[N]`` index the learned node table (-1 = unseen sensor);
        ``lap_pe`` ``[N, lap_pe_dim]``; ``token_mask`` ``[S, N, T]`` marks tokens replaced by
        the mask token (masked patch modeling).
        """
        h = self.embed(x, mask, side)
        if self.tod is not None:
            h = h + self.tod(steps % self.cfg.steps_per_day)[:, None]
        if self.dow is not None and self.cfg.steps_per_day > 0:
            day = steps // self.cfg.steps_per_day
            h = h + self.dow((day + EPOCH_DAY_OF_WEEK) % 7)[:, None]
        if self.node is not None and node_ids is not None:
            known = (node_ids >= 0) & (node_ids < self.cfg.num_nodes)
            emb = self.node(node_ids.clamp(0, self.cfg.num_nodes - 1)) * known[:, None]
            h = h + emb[None, :, None]
        if self.lap is not None and lap_pe is not None:
            h = h + self.lap(lap_pe)[None, :, None]
        if token_mask is not None:
            h = torch.where(token_mask[..., None], self.mask_token.expand_as(h), h)
        return h

    def encode(self, tokens: Tensor, *, edge_index: Tensor | None = None,
               edge_weight: Tensor | None = None,
               caches: list[KVCache] | None = None) -> tuple[Tensor, list[KVCache]]:
        """Temporal blocks (with caches) then the graph layer; returns ``[S, N, T, d]``."""
        s, n, t, d = tokens.shape
        h = tokens.reshape(s * n, t, d)
        new: list[KVCache] = []
        for i, block in enumerate(self.blocks):
            h, c = block(h, None if caches is None else caches[i])
            new.append(c)
        h = h.reshape(s, n, t, d)
        if self.graph_layer is not None and edge_index is not None:
            h = self.graph_layer(h, edge_index, edge_weight)
        if self.adapter is not None:
            h = self.adapter(h)
        return self.norm(h), new

    def add_adapter(self, bottleneck: int) -> None:
        """Attach a zero-initialized adapter (outputs unchanged until it learns)."""
        if self.adapter is None:
            dev = self.norm.weight.device
            self.adapter = Adapter(self.cfg.d_model, bottleneck).to(dev)
            self.cfg.adapter_dim = bottleneck

    def forecast(self, h: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        """Next ``horizon`` points after each token ``[S, N, T, H]``: a correction of the last
        observed value up to the token (``base = "persistence"``; a zero head forecasts
        persistence exactly) or of the mean of the token's own points (``"mean"``)."""
        if self.cfg.base == "persistence":
            anchor = last_observed(x, mask)
        else:
            m = mask.to(x.dtype)
            anchor = (x * m).sum(-1) / m.sum(-1).clamp_min(1.0)
        return self.forecast_head(h) + anchor[..., None]

    def reconstruct(self, h: Tensor) -> Tensor:
        return self.reconstruction_head(h)

    def project(self, h: Tensor) -> Tensor:
        return self.projection_head(h)

    # --- whole passes -------------------------------------------------------------------

    def forward(self, x: Tensor, mask: Tensor, steps: Tensor, *, side: Tensor | None = None,
                node_ids: Tensor | None = None, lap_pe: Tensor | None = None,
                edge_index: Tensor | None = None, edge_weight: Tensor | None = None) -> Tensor:
        """Forecasts after every token of ``[S, N, T, P]`` windows: ``[S, N, T, H]``."""
        return self.forecast_and_embed(x, mask, steps, side=side, node_ids=node_ids,
                                       lap_pe=lap_pe, edge_index=edge_index,
                                       edge_weight=edge_weight)[0]

    def forecast_and_embed(self, x: Tensor, mask: Tensor, steps: Tensor, *,
                           side: Tensor | None = None, node_ids: Tensor | None = None,
                           lap_pe: Tensor | None = None, edge_index: Tensor | None = None,
                           edge_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The forecasts ``[S, N, T, H]`` and the token embeddings ``[S, N, T, d]`` (the
        forecast head's input), from one pass."""
        tok = self.tokens(x, mask, steps, side=side, node_ids=node_ids, lap_pe=lap_pe)
        h, _ = self.encode(tok, edge_index=edge_index, edge_weight=edge_weight)
        return self.forecast(h, x, mask), h

    def step(self, x: Tensor, mask: Tensor, steps: Tensor, caches: list[KVCache] | None, *,
             side: Tensor | None = None, node_ids: Tensor | None = None,
             lap_pe: Tensor | None = None, edge_index: Tensor | None = None,
             edge_weight: Tensor | None = None) -> tuple[Tensor, list[KVCache]]:
        """Streaming: one new token per sensor (``[N, 1, P]``) with the cached keys/values of
        the previous ones; returns the forecasts ``[N, H]`` and the updated caches."""
        args = (x[None], mask[None], steps.reshape(1, 1))
        tok = self.tokens(*args, side=None if side is None else side[None], node_ids=node_ids,
                          lap_pe=lap_pe)
        h, caches = self.encode(tok, edge_index=edge_index, edge_weight=edge_weight,
                                caches=caches)
        return self.forecast(h, x[None], mask[None])[0, :, -1], caches
