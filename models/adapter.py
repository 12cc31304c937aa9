"""Bottleneck adapter: a small residual MLP that online adaptation may train alone.

``h + up(gelu(down(h)))`` with ``up`` initialized to zero, so attaching an adapter to a
pretrained backbone leaves its outputs unchanged until the adapter learns (Houlsby et al.,
2019). Few parameters to move means fast, stable online updates.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Adapter(nn.Module):
    def __init__(self, d_model: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)
        self.up = nn.Linear(bottleneck, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.down.reset_parameters()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(F.gelu(self.down(h)))
