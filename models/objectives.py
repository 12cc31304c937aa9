"""Training objectives: regression, masked patch modeling, InfoNCE over augmented views.

All take windows ``x``/``mask`` ``[S, N, T, P]`` (z-scored, zeros where masked) and a
``torch.Generator`` so that pretraining is deterministic under a seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from models.backbone import STBackbone

Encoder = Callable[..., tuple[Tensor, list]]


def masked_mean(err: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def regression_loss(pred: Tensor, target: Tensor, mask: Tensor, kind: str = "mse") -> Tensor:
    """MSE or MAE over the observed target points."""
    diff = pred - torch.nan_to_num(target)
    err = diff**2 if kind == "mse" else diff.abs()
    return masked_mean(err, mask)


def token_mask(shape: tuple[int, int, int], ratio: float, *, block: bool,
               generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """Tokens to hide ``[S, N, T]``: random positions, or one contiguous block per series."""
    s, n, t = shape
    if not block:
        return torch.rand(shape, generator=generator, device=device) < ratio
    length = max(1, int(round(ratio * t)))
    start = torch.randint(0, t - length + 1, (s, n, 1), generator=generator, device=device)
    pos = torch.arange(t, device=device)
    return (pos >= start) & (pos < start + length)


def masked_patch_loss(model: STBackbone, x: Tensor, mask: Tensor, steps: Tensor, *,
                      ratio: float = 0.3, block: bool = False, generator: torch.Generator,
                      point_ratio: float = 0.0, **graph: Tensor | int | None) -> Tensor:
    """Hide a share of the tokens (and, with ``point_ratio``, of single points: the gaps the
    head fills live) and reconstruct their observed values (MSE in window-normalized
    units)."""
    hide = token_mask(x.shape[:3], ratio, block=block, generator=generator, device=x.device)
    visible = mask
    if point_ratio > 0:
        visible = mask & (torch.rand(x.shape, generator=generator, device=x.device)
                          >= point_ratio)
    out = model.run(x * visible, visible, steps, token_mask=hide, heads=("reconstruction",),
                    **graph)
    err = (out["reconstruction"] - x) / out["scale"][..., None, None]
    return masked_mean(err**2, mask & (hide[..., None] | ~visible))


def augment(x: Tensor, mask: Tensor, *, generator: torch.Generator, jitter: float = 0.1,
            scale: float = 0.2, drop: float = 0.1, crop: float = 0.2) -> tuple[Tensor, Tensor]:
    """One random view: jitter (noise), scaling, random point masking and cropping (the
    earliest tokens of the window dropped, i.e. masked out)."""
    s, n, t, p = x.shape
    dev = x.device
    noise = torch.randn(x.shape, generator=generator, device=dev) * jitter
    factor = 1.0 + (torch.rand((s, n, 1, 1), generator=generator, device=dev) * 2 - 1) * scale
    keep = torch.rand(x.shape, generator=generator, device=dev) >= drop
    cut = (torch.rand((s, n, 1), generator=generator, device=dev) * crop * t).long()
    keep = keep & (torch.arange(t, device=dev)[None, None, :, None] >= cut[..., None])
    m = mask & keep
    return (x * factor + noise) * m, m


def info_nce(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE: row i of ``z1`` and ``z2`` is a positive pair (same sensor, same time), every
    other row of the batch is a negative (other sensors and times)."""
    z1 = F.normalize(z1, dim=-1)
    z2 = F.normalize(z2, dim=-1)
    logits = z1 @ z2.T / temperature
    target = torch.arange(len(z1), device=z1.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def contrastive_loss(model: STBackbone, x: Tensor, mask: Tensor, steps: Tensor, *,
                     generator: torch.Generator, temperature: float = 0.2,
                     max_pairs: int = 512, **graph: Tensor | int | None) -> Tensor:
    """InfoNCE between two augmented views; the pair is one (sample, sensor, token)."""
    zs = []
    for _ in range(2):
        xa, ma = augment(x, mask, generator=generator)
        z = model.run(xa, ma, steps, heads=("projection",), **graph)["projection"]
        zs.append(z.reshape(-1, model.cfg.proj_dim))
    n = zs[0].shape[0]
    if n > max_pairs:
        pick = torch.randperm(n, generator=generator, device=x.device)[:max_pairs]
        zs = [z[pick] for z in zs]
    return info_nce(zs[0], zs[1], temperature)


def pinball_loss(pred: Tensor, target: Tensor, mask: Tensor, q: float) -> Tensor:
    """Quantile (pinball) loss of ``pred`` as the ``q`` quantile, over observed targets."""
    diff = torch.nan_to_num(target) - pred
    return masked_mean(torch.maximum(q * diff, (q - 1) * diff), mask)
