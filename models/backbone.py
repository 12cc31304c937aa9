"""The spatio-temporal backbone: token embeddings → causal Transformer over time → graph layer.

Tokens (DESIGN.md "Backbone"): a linear embedding of each patch's (values, mask) and event
channels, plus the calendar of the patch's step, plus a node embedding (a learned vector per
pretraining sensor, optional, and a projection of its Laplacian positional encoding, so a
sensor unseen in pretraining still gets a spatial embedding).

Two calendars: ``embedding`` (learned time-of-day and day-of-week tables whose size is tied
to one sampling interval) and ``fourier`` (sin/cos of the time of day, week and year of the
patch's start plus the log sampling interval: the same weights serve any interval, which is
what a backbone pretrained on a corpus of different data sets needs; ``step_ms`` gives the
interval, steps < 0 mark series without timestamps). With ``instance_norm`` every window is
normalized by its own observed mean and standard deviation (RevIN) and the heads work in
those units, so one set of weights serves series of any level and scale. The quantile head
gives the 0.1 and 0.9 quantiles as non-negative offsets below and above the median.
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
DAY_MS = 86_400_000
YEAR_MS = 31_557_600_000      # 365.25 days
CALENDAR_FEATURES = 10
NORM_FLOOR = 0.1              # floor of a window's scale (inputs are z-scored by the caller)
QUANTILES = (0.1, 0.9)


def calendar_features(steps: Tensor, step_ms: Tensor | int) -> Tensor:
    """``[S, T, 10]`` continuous calendar features of patch starts ``steps * step_ms``:
    sin/cos of the day (1st and 2nd harmonic), the week and the year, the log sampling
    interval per patch, and a flag for a known calendar (``steps < 0``: no timestamps, the
    sin/cos are zero)."""
    sm = torch.as_tensor(step_ms, dtype=torch.long, device=steps.device).reshape(-1, 1)
    known = steps >= 0
    t = steps.clamp_min(0) * sm                                            # epoch ms
    day = (t % DAY_MS).double() / DAY_MS
    week = (((t // DAY_MS + EPOCH_DAY_OF_WEEK) % 7).double() + day) / 7
    year = (t % YEAR_MS).double() / YEAR_MS
    ang = 2 * torch.pi * torch.stack([day, 2 * day, week, year], -1)
    cyc = torch.cat([ang.sin(), ang.cos()], -1) * known[..., None]
    log_step = torch.log10(sm.double().clamp_min(1.0)).expand_as(day)[..., None]
    feats = torch.cat([cyc, (log_step - 6.0) / 2.0, known[..., None].double()], -1)
    return feats.to(torch.float32)


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
    graph_gate: bool = False      # the graph layer's output through a learned gate from 0
    proj_dim: int = 32            # contrastive projection size
    adapter_dim: int = 0          # bottleneck adapter before the output norm (0 = none)
    calendar: str = "embedding"   # embedding (tables per interval) or fourier (any interval)
    instance_norm: bool = False   # RevIN per window (the inductive, corpus-pretrained model)
    quantiles: bool = False       # a p10/p90 head (pinball loss)

    def to_dict(self) -> dict[str, int | float | bool]:
        return asdict(self)

    @classmethod
    def inductive(cls, **shape: int | float | bool | str) -> STBackboneConfig:
        """The corpus-pretrained kind: no per-sensor weights, window-normalized, Fourier
        calendar, quantile head; ``shape`` sets the rest (sizes, graph, Laplacian dims)."""
        kw: dict = {"base": "persistence", "steps_per_day": 0, "day_of_week": False,
                    "num_nodes": 0, "calendar": "fourier", "instance_norm": True,
                    "quantiles": True}
        return cls(**{**kw, **shape})


class STBackbone(nn.Module):
    """Backbone with forecast, reconstruction and projection heads."""

    def __init__(self, cfg: STBackboneConfig) -> None:
        super().__init__()
        if cfg.calendar not in ("embedding", "fourier"):
            raise ValueError(f"calendar must be embedding or fourier, not {cfg.calendar!r}")
        self.cfg = cfg
        d = cfg.d_model
        self.embed = PatchEmbedding(cfg.patch_len, d, cfg.side_channels)
        fourier = cfg.calendar == "fourier"
        self.tod = (nn.Embedding(cfg.steps_per_day, d)
                    if cfg.steps_per_day > 0 and not fourier else None)
        self.dow = nn.Embedding(7, d) if cfg.day_of_week and not fourier else None
        self.calendar = nn.Linear(CALENDAR_FEATURES, d) if fourier else None
        self.node = nn.Embedding(cfg.num_nodes, d) if cfg.num_nodes > 0 else None
        self.lap = nn.Linear(cfg.lap_pe_dim, d, bias=False) if cfg.lap_pe_dim > 0 else None
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(TemporalBlock(d, cfg.n_heads, cfg.context_patches,
                                                  cfg.dropout) for _ in range(cfg.n_layers))
        self.graph_layer = (GraphLayer(d, cfg.dropout, cfg.graph_gate) if cfg.graph
                            else None)
        self.adapter = Adapter(d, cfg.adapter_dim) if cfg.adapter_dim > 0 else None
        self.norm = nn.LayerNorm(d)
        self.forecast_head = nn.Linear(d, cfg.horizon)
        self.quantile_head = nn.Linear(d, 2 * cfg.horizon) if cfg.quantiles else None
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
        if self.calendar is not None:
            nn.init.normal_(self.calendar.weight, std=0.02)
            nn.init.zeros_(self.calendar.bias)
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
        if self.quantile_head is not None:       # offsets start at half the window's scale
            nn.init.zeros_(self.quantile_head.weight)
            nn.init.constant_(self.quantile_head.bias, -0.43)
        self.reconstruction_head.reset_parameters()
        for m in self.projection_head:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    # --- pieces -------------------------------------------------------------------------

    def normalize(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Window-normalized inputs (zeros where masked) and each series' ``loc``/``scale``
        ``[S, N]``: its observed window mean and standard deviation with ``instance_norm``
        (the scale floored at ``NORM_FLOOR`` of the caller's units), else 0 and 1."""
        if not self.cfg.instance_norm:
            ones = x.new_ones(x.shape[:2])
            return x, ones * 0.0, ones
        m = mask.to(x.dtype)
        cnt = m.sum((-1, -2)).clamp_min(1.0)
        loc = (x * m).sum((-1, -2)) / cnt
        var = (((x - loc[..., None, None]) * m) ** 2).sum((-1, -2)) / cnt
        scale = torch.sqrt(var + NORM_FLOOR**2)
        z = (x - loc[..., None, None]) / scale[..., None, None]
        return z * m, loc, scale

    def tokens(self, x: Tensor, mask: Tensor, steps: Tensor, *, side: Tensor | None = None,
               node_ids: Tensor | None = None, lap_pe: Tensor | None = None,
               token_mask: Tensor | None = None, step_ms: Tensor | int | None = None) -> Tensor:
        """Token embeddings ``[S, N, T, d]`` of (already normalized) windows.

        ``steps`` ``[S, T]`` are absolute step indices (epoch ms // step ms) for the calendar
        (``fourier`` also needs ``step_ms``, a scalar or ``[S]``); ``node_ids`` ``[N]`` index
        the learned node table (-1 = unseen sensor); ``lap_pe`` ``[N, lap_pe_dim]``;
        ``token_mask`` ``[S, N, T]`` marks tokens replaced by the mask token (masked patch
        modeling).
        """
        h = self.embed(x, mask, side)
        if self.calendar is not None:
            if step_ms is None:
                raise ValueError("the fourier calendar needs step_ms (the patch duration)")
            h = h + self.calendar(calendar_features(steps, step_ms))[:, None]
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
               caches: list[KVCache] | None = None,
               normalized: bool = False, last_only: bool = False
               ) -> tuple[Tensor, list[KVCache]]:
        """Temporal blocks (with caches) then the graph layer; returns ``[S, N, T, d]``
        (``last_only``: ``[S, N, 1, d]``, the last token's, without computing the others'
        outputs in the last block; no caches then). ``normalized``: the edges are the GCN's
        normalized ones (``models.graph.gcn_edges``)."""
        s, n, t, d = tokens.shape
        h = tokens.reshape(s * n, t, d)
        new: list[KVCache] = []
        if last_only and caches is None and self.blocks:
            for block in self.blocks[:-1]:
                h, _ = block(h)
            h = self.blocks[-1].last(h)
            t = 1
        else:
            for i, block in enumerate(self.blocks):
                h, c = block(h, None if caches is None else caches[i])
                new.append(c)
        h = h.reshape(s, n, t, d)
        if self.graph_layer is not None and edge_index is not None:
            h = self.graph_layer(h, edge_index, edge_weight, normalized)
        if self.adapter is not None:
            h = self.adapter(h)
        return self.norm(h), new

    def add_adapter(self, bottleneck: int) -> None:
        """Attach a zero-initialized adapter (outputs unchanged until it learns)."""
        if self.adapter is None:
            dev = self.norm.weight.device
            self.adapter = Adapter(self.cfg.d_model, bottleneck).to(dev)
            self.cfg.adapter_dim = bottleneck

    def forecast(self, h: Tensor, x: Tensor, mask: Tensor,
                 scale: Tensor | None = None) -> Tensor:
        """Next ``horizon`` points after each token ``[S, N, T, H]``: a correction of the last
        observed value up to the token (``base = "persistence"``; a zero head forecasts
        persistence exactly) or of the mean of the token's own points (``"mean"``), in the
        units of ``x``; the head's output is scaled by the window's ``scale`` ``[S, N]``."""
        if self.cfg.base == "persistence":
            anchor = last_observed(x, mask)
        else:
            m = mask.to(x.dtype)
            anchor = (x * m).sum(-1) / m.sum(-1).clamp_min(1.0)
        out = self.forecast_head(h)
        if scale is not None:
            out = out * scale[..., None, None]
        return out + anchor[..., -h.shape[-2]:, None]       # (the last tokens' of ``x``)

    def quantile_offsets(self, h: Tensor, scale: Tensor | None = None) -> Tensor:
        """``[S, N, T, 2, H]`` non-negative distances of the 0.1 quantile below and the 0.9
        quantile above the median forecast, in the units of the inputs."""
        if self.quantile_head is None:
            raise ValueError("this backbone has no quantile head (quantiles=False)")
        q = nn.functional.softplus(self.quantile_head(h))
        q = q.reshape(*h.shape[:-1], 2, self.cfg.horizon)
        return q if scale is None else q * scale[..., None, None, None]

    def reconstruct(self, h: Tensor) -> Tensor:
        """The masked-patch head: each token's points, in window-normalized units."""
        return self.reconstruction_head(h)

    def project(self, h: Tensor) -> Tensor:
        return self.projection_head(h)

    # --- whole passes -------------------------------------------------------------------

    def forward(self, x: Tensor, mask: Tensor, steps: Tensor, *, side: Tensor | None = None,
                node_ids: Tensor | None = None, lap_pe: Tensor | None = None,
                edge_index: Tensor | None = None, edge_weight: Tensor | None = None,
                step_ms: Tensor | int | None = None, normalized: bool = False) -> Tensor:
        """Forecasts after every token of ``[S, N, T, P]`` windows: ``[S, N, T, H]``.

        With ``instance_norm`` the window's statistics include every token, so only the last
        token's forecast is free of its own future (the one served and trained on)."""
        return self.forecast_and_embed(x, mask, steps, side=side, node_ids=node_ids,
                                       lap_pe=lap_pe, edge_index=edge_index,
                                       edge_weight=edge_weight, step_ms=step_ms,
                                       normalized=normalized)[0]

    def forecast_and_embed(self, x: Tensor, mask: Tensor, steps: Tensor, *,
                           side: Tensor | None = None, node_ids: Tensor | None = None,
                           lap_pe: Tensor | None = None, edge_index: Tensor | None = None,
                           edge_weight: Tensor | None = None,
                           step_ms: Tensor | int | None = None,
                           normalized: bool = False) -> tuple[Tensor, Tensor]:
        """The forecasts ``[S, N, T, H]`` and the token embeddings ``[S, N, T, d]`` (the
        forecast head's input), from one pass."""
        out = self.run(x, mask, steps, side=side, node_ids=node_ids, lap_pe=lap_pe,
                       edge_index=edge_index, edge_weight=edge_weight, step_ms=step_ms,
                       normalized=normalized)
        return out["forecast"], out["h"]

    def run(self, x: Tensor, mask: Tensor, steps: Tensor, *, side: Tensor | None = None,
            node_ids: Tensor | None = None, lap_pe: Tensor | None = None,
            edge_index: Tensor | None = None, edge_weight: Tensor | None = None,
            step_ms: Tensor | int | None = None, token_mask: Tensor | None = None,
            heads: tuple[str, ...] = ("forecast",),
            normalized: bool = False, last_only: bool = False) -> dict[str, Tensor]:
        """One pass with the ``heads`` asked for: ``forecast`` ``[S, N, T, H]``,
        ``quantiles`` (offsets ``[S, N, T, 2, H]``), ``reconstruction`` (``[S, N, T, P]``,
        in the units of ``x``), ``projection``; always ``h`` (the embeddings), ``loc`` and
        ``scale`` (the window statistics, ``[S, N]``). ``last_only``: the last token's alone
        (``T = 1`` in every output; what serving reads)."""
        z, loc, scale = self.normalize(x, mask)
        tok = self.tokens(z, mask, steps, side=side, node_ids=node_ids, lap_pe=lap_pe,
                          token_mask=token_mask, step_ms=step_ms)
        h, _ = self.encode(tok, edge_index=edge_index, edge_weight=edge_weight,
                           normalized=normalized, last_only=last_only)
        sc = scale if self.cfg.instance_norm else None
        out = {"h": h, "loc": loc, "scale": scale}
        if "forecast" in heads:
            out["forecast"] = self.forecast(h, x, mask, sc)
        if "quantiles" in heads:
            out["quantiles"] = self.quantile_offsets(h, sc)
        if "reconstruction" in heads:
            out["reconstruction"] = (self.reconstruct(h) * scale[..., None, None]
                                     + loc[..., None, None])
        if "projection" in heads:
            out["projection"] = self.project(h)
        return out

    def step(self, x: Tensor, mask: Tensor, steps: Tensor, caches: list[KVCache] | None, *,
             side: Tensor | None = None, node_ids: Tensor | None = None,
             lap_pe: Tensor | None = None, edge_index: Tensor | None = None,
             edge_weight: Tensor | None = None,
             normalized: bool = False) -> tuple[Tensor, list[KVCache]]:
        """Streaming: one new token per sensor (``[N, 1, P]``) with the cached keys/values of
        the previous ones; returns the forecasts ``[N, H]`` and the updated caches.
        Not with ``instance_norm`` (its statistics span the whole window) or the fourier
        calendar."""
        if self.cfg.instance_norm or self.calendar is not None:
            raise ValueError("streaming with a key/value cache needs instance_norm=False and "
                             "the embedding calendar; run whole windows instead")
        args = (x[None], mask[None], steps.reshape(1, 1))
        tok = self.tokens(*args, side=None if side is None else side[None], node_ids=node_ids,
                          lap_pe=lap_pe)
        h, caches = self.encode(tok, edge_index=edge_index, edge_weight=edge_weight,
                                caches=caches, normalized=normalized)
        return self.forecast(h, x[None], mask[None])[0, :, -1], caches
