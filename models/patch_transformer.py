"""A small causal patch Transformer forecaster (PatchTST-like, channel independent)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from models.embedding import PatchEmbedding
from models.revin import RevIN
from models.shape import ModelShape, last_observed


@dataclass
class PatchTransformerConfig(ModelShape):
    side_channels: int = 1

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


def _last_token(layer: nn.TransformerEncoderLayer, h: Tensor) -> Tensor:
    """A pre-norm encoder layer's output ``[B, 1, d]`` at the last token of ``h`` ``[B, T,
    d]`` alone (its query attends to every token, as the causal mask lets it): the same as
    the layer's whole pass read at the last token, without the others' attention and MLP
    (the only token the forecast reads). ``PatchTransformer`` builds its layers pre-norm."""
    n = layer.norm1(h)
    a = layer.self_attn(n[:, -1:], n, n, need_weights=False)[0]
    y = h[:, -1:] + layer.dropout1(a)
    return y + layer._ff_block(layer.norm2(y))


class PatchTransformer(nn.Module):
    """Forecast the next ``horizon`` points of each series from its last K patches.

    Causal attention over patch tokens, the last token's state feeds a linear forecast head.
    The head starts at zero, so an untrained model forecasts its base exactly: the last
    observed value (``base = "persistence"``: the head learns a correction of persistence in
    units of the window's scale) or the window mean (``"mean"``, RevIN's location).
    """

    def __init__(self, cfg: PatchTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.revin = RevIN()
        self.embed = PatchEmbedding(cfg.patch_len, cfg.d_model, cfg.side_channels)
        self.pos = nn.Parameter(torch.zeros(cfg.context_patches, cfg.d_model))
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, 2 * cfg.d_model,
                                           cfg.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.horizon)
        causal = torch.triu(torch.ones(cfg.context_patches, cfg.context_patches, dtype=torch.bool),
                            diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embed.reset_parameters()
        nn.init.normal_(self.pos, std=0.02)
        for mod in self.encoder.modules():
            if isinstance(mod, nn.Linear | nn.LayerNorm):
                mod.reset_parameters()
        self.norm.reset_parameters()
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, mask: Tensor, side: Tensor | None = None) -> Tensor:
        """``x``, ``mask``: ``[B, K, P]``; ``side``: ``[B, K, E]``; returns ``[B, horizon]``."""
        return self.forecast_and_embed(x, mask, side)[0]

    def forecast_and_embed(self, x: Tensor, mask: Tensor,
                           side: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The forecasts ``[B, horizon]`` and the window's embedding ``[B, d_model]`` (the
        forecast head's input), from one pass."""
        k = x.shape[1]
        z, loc, scale = self.revin(x, mask)
        h = self.embed(z, mask, side) + self.pos[-k:]
        layers = self.encoder.layers
        for layer in layers[:-1]:
            h = layer(h, src_mask=self.causal_mask[:k, :k])
        emb = self.norm(_last_token(layers[-1], h)[:, 0])
        out = self.head(emb)
        if self.cfg.base == "persistence":   # a correction of the last observed value
            return last_observed(x, mask)[:, -1:] + out * scale, emb
        return RevIN.inverse(out, loc, scale), emb
