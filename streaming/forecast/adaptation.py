"""The pieces of online adaptation: which parameters move, the pull toward the pretrained
weights, drift-steered learning-rate boosts and the rollback guard.

``OnlineModel`` (``streaming/forecast/online.py``) combines them into its update steps.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from typing import Any

import torch
from torch import nn

from models.backbone import STBackbone
from streaming.config import AdaptConfig, ConfigError

HEAD_PREFIXES = ("forecast_head.", "head.", "projection_head.")


def select_parameters(model: nn.Module, cfg: AdaptConfig) -> dict[str, nn.Parameter]:
    """The adaptable parameters named by ``adapt.params``; all others are frozen.

    "adapters" attaches a zero-initialized bottleneck adapter to a backbone that has none.
    """
    groups = set(cfg.params.split("+")) if cfg.params != "all" else {"all"}
    if "adapters" in groups:
        if not isinstance(model, STBackbone):
            raise ConfigError("adapt.params: 'adapters' needs the spatio-temporal backbone "
                              "(a checkpoint from `stfm replay pretrain`), not "
                              f"{type(model).__name__}")
        model.add_adapter(cfg.adapter_dim)
    chosen: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():
        take = ("all" in groups
                or ("heads" in groups and name.startswith(HEAD_PREFIXES))
                or ("norms" in groups and ".norm" in f".{name}")
                or ("adapters" in groups and name.startswith("adapter.")))
        p.requires_grad_(take)
        if take:
            chosen[name] = p
    if not chosen:
        raise ConfigError(f"adapt.params={cfg.params!r} selects no parameter of "
                          f"{type(model).__name__}")
    return chosen


class Anchor:
    """Penalty pulling adapted weights toward the pretrained ones.

    ``l2sp``: ``w * sum ||theta - theta0||^2`` (Li et al., 2018). ``ewc``: the same weighted
    per coordinate by an online Fisher estimate, an EMA of squared gradients (EWC++,
    Chaudhry et al., 2018), so weights that matter for the data seen keep closer to home.
    """

    def __init__(self, params: dict[str, nn.Parameter], cfg: AdaptConfig) -> None:
        self.kind = cfg.penalty
        self.weight = cfg.penalty_weight
        self.decay = cfg.ewc_decay
        self.ref = {n: p.detach().clone() for n, p in params.items()}
        self.fisher = ({n: torch.zeros_like(p) for n, p in params.items()}
                       if self.kind == "ewc" else {})

    def penalty(self, params: dict[str, nn.Parameter]) -> torch.Tensor | None:
        if self.kind == "none" or self.weight == 0:
            return None
        total = None
        for n, p in params.items():
            d = (p - self.ref[n]) ** 2
            term = (d * self.fisher[n]).sum() if self.kind == "ewc" else d.sum()
            total = term if total is None else total + term
        return None if total is None else self.weight * total

    def observe_grads(self, params: dict[str, nn.Parameter]) -> None:
        if self.kind != "ewc":
            return
        for n, p in params.items():
            if p.grad is not None:
                self.fisher[n].mul_(self.decay).add_(p.grad.detach() ** 2, alpha=1 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "fisher": self.fisher}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ref = {n: t.clone() for n, t in state["ref"].items()}
        self.fisher = {n: t.clone() for n, t in state["fisher"].items()}


class Booster:
    """Per-sensor learning-rate boosts after drift alerts, decaying linearly to 1."""

    def __init__(self, cfg: AdaptConfig) -> None:
        self.factor = cfg.boost_lr
        self.steps = cfg.boost_steps
        self.started: dict[str, int] = {}

    def boost(self, sensors: list[str], step: int) -> None:
        if self.factor > 1 and self.steps > 0:
            for s in sensors:
                self.started[s] = step

    def factors(self, sensors: list[str], step: int) -> list[float]:
        out = []
        for s in sensors:
            t0 = self.started.get(s)
            if t0 is None:
                out.append(1.0)
                continue
            left = 1.0 - (step - t0) / self.steps
            if left <= 0:
                del self.started[s]
                out.append(1.0)
            else:
                out.append(1.0 + (self.factor - 1.0) * left)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"started": dict(self.started)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.started = {str(k): int(v) for k, v in state["started"].items()}


class RollbackGuard:
    """Snapshots of the adapted weights and optimizer; a NaN or exploding loss (above
    ``rollback_factor`` x the running median) restores the last good snapshot."""

    def __init__(self, params: dict[str, nn.Parameter], opt: torch.optim.Optimizer,
                 cfg: AdaptConfig) -> None:
        self.params = params
        self.opt = opt
        self.factor = cfg.rollback_factor
        self.every = cfg.snapshot_every
        self.history: deque[float] = deque(maxlen=200)
        self.good_since = 0
        self.rollbacks = 0
        self.snapshot = self._take()

    def _take(self) -> dict[str, Any]:
        return {"params": {n: p.detach().clone() for n, p in self.params.items()},
                "opt": copy.deepcopy(self.opt.state_dict())}

    def is_bad(self, loss: float) -> str | None:
        """Why ``loss`` must not be applied (None when it is fine)."""
        if not math.isfinite(loss):
            return f"non-finite loss {loss}"
        if len(self.history) >= 20:
            med = sorted(self.history)[len(self.history) // 2]
            if med > 0 and loss > self.factor * med:
                return f"exploding loss {loss:.4g} > {self.factor:g} x median {med:.4g}"
        return None

    def weights_ok(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.params.values())

    def accept(self, loss: float) -> None:
        self.history.append(loss)
        self.good_since += 1
        if self.good_since >= self.every:
            self.snapshot = self._take()
            self.good_since = 0

    @torch.no_grad()
    def restore(self) -> None:
        for n, p in self.params.items():
            p.copy_(self.snapshot["params"][n])
        self.opt.load_state_dict(copy.deepcopy(self.snapshot["opt"]))
        self.good_since = 0
        self.rollbacks += 1

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "good_since": self.good_since,
                "rollbacks": self.rollbacks, "snapshot": self.snapshot}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque(state["history"], maxlen=200)
        self.good_since = int(state["good_since"])
        self.rollbacks = int(state["rollbacks"])
        self.snapshot = state["snapshot"]


class AdaptationGuard:
    """Keeps adaptation from making the model worse than where it started.

    Every realized forecast compares the adapting model's loss with its reference's (the
    frozen starting model; persistence without it) on the same points, none of which either
    was trained on before forecasting them. A running mean over about ``adapt.guard_window``
    forecasts of the difference decides: while the model is at least as good, its weights
    are remembered as the last good ones (every ``guard_window`` forecasts); when it is
    worse by more than ``adapt.guard_tolerance`` of the reference's loss, the last good
    weights and optimizer state come back (the updates since are rejected), the learning
    rate is halved (``lr_scale``, back up by doubling each good window, at most 1) and the
    comparison starts over. Rejections are counted.
    """

    def __init__(self, cfg: AdaptConfig, initial: dict[str, Any]) -> None:
        self.window = cfg.guard_window
        self.tolerance = cfg.guard_tolerance
        self.good = initial                 # weights + optimizer of the last good point
        self.good_updates = 0               # the model's update count there
        self.diff = 0.0                     # running mean of model loss - reference loss
        self.ref = 0.0                      # running mean of the reference's loss
        self.seen = 0                       # forecasts compared since the last restore
        self.restores = 0
        self.rejected = 0                   # updates undone by restores
        self.lr_scale = 1.0                 # learning-rate factor: halved by each restore

    def observe(self, model_loss: float, ref_loss: float, updates: int
                ) -> dict[str, Any] | None:
        """Fold one realized forecast's losses in; returns the weights to restore, if any."""
        a = max(1.0 / (self.seen + 1), 1.0 / self.window)
        self.diff += a * ((model_loss - ref_loss) - self.diff)
        self.ref += a * (ref_loss - self.ref)
        self.seen += 1
        if self.seen < self.window:
            return None
        if self.diff > self.tolerance * self.ref:
            self.restores += 1
            self.rejected += max(0, updates - self.good_updates)
            self.diff = self.ref = 0.0
            self.seen = 0
            self.lr_scale = max(self.lr_scale / 2, 1 / 1024)
            return self.good
        return None

    def remember(self, state: Any, updates: int) -> None:
        """While the model is at least as good as its reference, ``state()`` (its weights
        and optimizer) becomes the last good point, at most once per window."""
        if (self.seen >= self.window and self.diff <= 0
                and updates >= self.good_updates + self.window):
            self.good, self.good_updates = state(), updates
            self.lr_scale = min(1.0, self.lr_scale * 2)

    def state_dict(self) -> dict[str, Any]:
        return {"good": self.good, "good_updates": self.good_updates, "diff": self.diff,
                "ref": self.ref, "seen": self.seen, "restores": self.restores,
                "rejected": self.rejected, "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.good = state["good"]
        self.good_updates = int(state["good_updates"])
        self.diff, self.ref = float(state["diff"]), float(state["ref"])
        self.seen, self.restores = int(state["seen"]), int(state["restores"])
        self.rejected = int(state["rejected"])
        self.lr_scale = float(state["lr_scale"])
