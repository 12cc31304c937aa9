"""The shape of a forecasting model, defined once: the small model, the backbone, pretraining
and the online configuration all reuse it (dataclass inheritance), so one validation and one
set of names serve them all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # torch is imported where it is used: the configuration needs none
    from torch import Tensor


@dataclass
class ModelSize:
    """Context, horizon and width: what the online configuration's ``[model]`` section holds
    (the patch length is the patcher's, ``[patching] patch_len``)."""

    context_patches: int = 8        # K: tokens of history per sensor
    horizon: int = 12               # H: grid points forecast per step
    d_model: int = 32                # width of the token embeddings
    n_heads: int = 4                 # attention heads (divide d_model)
    n_layers: int = 2                # Transformer blocks over time
    dropout: float = 0.0             # dropout in the blocks (0 online)

    def size_errors(self, section: str) -> list[str]:
        """What is wrong with the shape, each naming its key (``model.d_model ...``)."""
        bad = [f"{section}.{k} must be > 0, got {getattr(self, k)!r}"
               for k in ("context_patches", "horizon", "d_model", "n_heads", "n_layers")
               if getattr(self, k) <= 0]
        if not bad and self.d_model % self.n_heads:
            bad.append(f"{section}.d_model must be divisible by {section}.n_heads")
        if not 0 <= self.dropout < 1:
            bad.append(f"{section}.dropout must be in [0, 1)")
        return bad


BASES = ("mean", "persistence")


@dataclass
class ModelShape(ModelSize):
    """A model's whole shape: its size, the grid points per token, and what its forecast
    corrects: ``persistence`` (the last observed value; a zero head forecasts exactly that)
    or ``mean`` (the window's mean level: the first versions' models)."""

    patch_len: int = 12
    base: str = "mean"

    def shape_errors(self, section: str) -> list[str]:
        bad = self.size_errors(section)
        if self.patch_len <= 0:
            bad.insert(0, f"{section}.patch_len must be > 0, got {self.patch_len!r}")
        if self.base not in BASES:
            bad.append(f"{section}.base must be one of {', '.join(BASES)}, got {self.base!r}")
        return bad


def last_observed(x: Tensor, mask: Tensor) -> Tensor:
    """The last observed value up to the end of each token, carried forward over tokens
    with no observation (0, the normalized mean, before any): ``[..., T, P]`` →
    ``[..., T]``. The persistence forecast a ``persistence``-based model corrects."""
    import torch

    p, t = x.shape[-1], x.shape[-2]
    pos = torch.where(mask, torch.arange(p, device=x.device), -1).amax(-1)   # [..., T]
    in_token = torch.gather(x, -1, pos.clamp_min(0)[..., None])[..., 0]
    have = pos >= 0
    tok = torch.where(have, torch.arange(t, device=x.device), -1)
    last_tok = torch.cummax(tok, dim=-1).values
    carried = torch.gather(in_token, -1, last_tok.clamp_min(0))
    return torch.where(last_tok >= 0, carried, torch.zeros_like(carried))
