"""The pieces of online adaptation: which parameters move, the pull toward the pretrained
weights, drift-steered learning-rate boosts and the rollback guard.

``OnlineModel`` (``streaming/forecast/online.py``) combines them into its update steps.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from typing import Any

import numpy as np
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

    Every realized forecast of the adapting model is compared with its reference's (the
    frozen starting model, i.e. the pretrained weights the anchor pulls toward; persistence
    without one) on the same points, none of which either was trained on before forecasting
    them, by the absolute error (the reported MAE's) in units of each sensor's scale, so that
    every sensor weighs the same. Two decisions follow from it.

    **The weights** (all sensors pooled; ``observe``). Forecasts are judged in windows of
    ``adapt.guard_window``. A *stretch* is the windows since the weights were last judged
    good or restored; at the end of each window, with ``D`` the stretch's excess loss over
    the reference's as a share of the reference's and ``k`` its windows:

    * ``D > guard_tolerance / sqrt(k)`` (worse beyond the noise of ``k`` windows): the last
      good weights and optimizer come back (the updates since are rejected), the learning
      rate halves (``lr_scale``, at least 1/1024: adaptation all but stops after ten in a
      row) and forecasts still in flight from the rejected weights are not judged;
    * ``D <= 0`` (at least as good as the reference over the whole stretch): the current
      weights become the last good ones (``remember``) and the learning rate doubles back
      (at most 1);
    * otherwise the stretch goes on, so a small persistent harm is caught once enough
      windows show it, and one bad window among good ones is not.

    **Each sensor** (``adapt.guard_sensors``; ``observe_sensors``). The weights are shared,
    so they can serve most sensors better and one worse (a slow oil temperature among
    loads) without the pooled comparison seeing it. Such a sensor is *switched*: its model
    forecast is the reference's (``switched``) while the adapted forecast's running mean
    error over about ``guard_window`` forecasts exceeds the reference's by more than
    ``guard_tolerance`` of it, until it is below by as much. The adapted forecasts of
    switched sensors are kept until their truth arrives (``hold``/``take``), so they go on
    being judged.
    """

    def __init__(self, cfg: AdaptConfig, initial: dict[str, Any]) -> None:
        self.window = cfg.guard_window
        self.tolerance = cfg.guard_tolerance
        self.per_sensor = cfg.guard_sensors
        self.good = initial                 # weights + optimizer of the last good point
        self.good_updates = 0               # the model's update count there
        self.win = [0.0, 0.0]               # this window: sum of model - reference loss, ref
        self.seen = 0                       # forecasts judged in this window
        self.stretch = [0.0, 0.0]           # the finished windows of the stretch: the same
        self.windows = 0                    # and their number
        self.judged_good = False            # a window just ended well: remember the weights
        self.valid_from: int | None = None  # forecasts made before this step are not judged
        self.restores = 0
        self.rejected = 0                   # updates undone by restores
        self.lr_scale = 1.0                 # learning-rate factor: halved by each restore
        self.err = np.zeros((0, 2))         # [N, 2] running mean error: adapted, reference
        self.count = np.zeros(0, np.int64)  # [N] forecasts in it
        self.switch = np.zeros(0, bool)     # [N] served the reference's forecast
        self.switches = 0                   # sensors switched to the reference (times)
        self.held: dict[int, np.ndarray] = {}   # forecast step -> [N, H] adapted forecasts

    # --- the weights ----------------------------------------------------------------------

    def observe(self, model_loss: float, ref_loss: float, updates: int, *,
                made_at: int | None = None, now: int | None = None
                ) -> dict[str, Any] | None:
        """Fold one realized forecast's pooled losses in (made at step ``made_at``, realized
        at ``now``); returns the weights to restore, if any."""
        if (made_at is not None and self.valid_from is not None
                and made_at < self.valid_from):
            return None                     # made by weights a restore has rejected
        self.win[0] += model_loss - ref_loss
        self.win[1] += ref_loss
        self.seen += 1
        if self.seen < self.window:
            return None
        d = self.stretch[0] + self.win[0]
        r = self.stretch[1] + self.win[1]
        k = self.windows + 1
        self.win, self.seen = [0.0, 0.0], 0
        if r > 0 and d > self.tolerance / math.sqrt(k) * r:
            self.restores += 1
            self.rejected += max(0, updates - self.good_updates)
            self.stretch, self.windows = [0.0, 0.0], 0
            self.lr_scale = max(self.lr_scale / 2, 1 / 1024)
            self.judged_good = False
            if now is not None:
                self.valid_from = now
            return self.good
        if d <= 0:
            self.stretch, self.windows = [0.0, 0.0], 0
            self.judged_good = True
            self.lr_scale = min(1.0, self.lr_scale * 2)
        else:
            self.stretch, self.windows = [d, r], k
        return None

    def remember(self, state: Any, updates: int) -> None:
        """After a window that judged the model at least as good as its reference,
        ``state()`` (its weights and optimizer) becomes the last good point."""
        if self.judged_good:
            self.good, self.good_updates = state(), updates
            self.judged_good = False

    # --- each sensor ----------------------------------------------------------------------

    def switched(self, n: int) -> np.ndarray:
        """``[n]`` whether each sensor is served the reference's forecast."""
        self._grow(n)
        return self.switch[:n].copy() if self.per_sensor else np.zeros(n, bool)

    def observe_sensors(self, model_loss: np.ndarray, ref_loss: np.ndarray) -> None:
        """Fold one realized forecast's per-sensor losses ``[N]`` in (NaN: none)."""
        if not self.per_sensor:
            return
        n = len(model_loss)
        self._grow(n)
        ok = np.isfinite(model_loss) & np.isfinite(ref_loss)
        if not ok.any():
            return
        c = self.count[:n]
        a = np.maximum(1.0 / (c + 1), 1.0 / self.window)[:, None]
        new = np.stack([model_loss, ref_loss], axis=1)
        self.err[:n] = np.where(ok[:, None], self.err[:n] + a * (new - self.err[:n]),
                                self.err[:n])
        c += ok
        m, r = self.err[:n, 0], self.err[:n, 1]
        sw = self.switch[:n]
        ready = c >= self.window
        on = ready & ~sw & (m > (1 + self.tolerance) * r)
        off = sw & (m < (1 - self.tolerance) * r)
        self.switches += int(on.sum())
        sw[on] = True
        sw[off] = False

    def hold(self, step: int, adapted: np.ndarray) -> None:
        """The adapted forecasts ``[N, H]`` made at ``step``, while some sensor is served
        the reference's."""
        self.held[int(step)] = adapted

    def take(self, step: int) -> np.ndarray | None:
        """The adapted forecasts made at ``step`` (None: none held); older ones are dropped
        (their truth will not come)."""
        for s in [s for s in self.held if s < step]:
            del self.held[s]
        return self.held.pop(int(step), None)

    def _grow(self, n: int) -> None:
        if n > len(self.switch):
            k = n - len(self.switch)
            self.err = np.concatenate([self.err, np.zeros((k, 2))])
            self.count = np.concatenate([self.count, np.zeros(k, np.int64)])
            self.switch = np.concatenate([self.switch, np.zeros(k, bool)])

    # --- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"good": self.good, "good_updates": self.good_updates, "win": list(self.win),
                "seen": self.seen, "stretch": list(self.stretch), "windows": self.windows,
                "judged_good": self.judged_good, "valid_from": self.valid_from,
                "restores": self.restores, "rejected": self.rejected,
                "lr_scale": self.lr_scale, "err": self.err.copy(),
                "count": self.count.copy(), "switch": self.switch.copy(),
                "switches": self.switches,
                "held": [[s, a.copy()] for s, a in sorted(self.held.items())]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Also an earlier version's state (a running mean instead of windows, no
        per-sensor part): its comparison starts over, its last good point and counts stay."""
        self.good = state["good"]
        self.good_updates = int(state["good_updates"])
        self.restores = int(state["restores"])
        self.rejected = int(state["rejected"])
        self.lr_scale = float(state["lr_scale"])
        if "win" not in state:
            self.win, self.seen = [0.0, 0.0], 0
            self.stretch, self.windows = [0.0, 0.0], 0
            self.judged_good, self.valid_from = False, None
            self.err, self.count = np.zeros((0, 2)), np.zeros(0, np.int64)
            self.switch, self.switches, self.held = np.zeros(0, bool), 0, {}
            return
        self.win = [float(v) for v in state["win"]]
        self.seen = int(state["seen"])
        self.stretch = [float(v) for v in state["stretch"]]
        self.windows = int(state["windows"])
        self.judged_good = bool(state["judged_good"])
        vf = state["valid_from"]
        self.valid_from = None if vf is None else int(vf)
        self.err = np.array(state["err"], np.float64).reshape(-1, 2)
        self.count = np.array(state["count"], np.int64)
        self.switch = np.array(state["switch"], bool)
        self.switches = int(state["switches"])
        self.held = {int(s): np.asarray(a) for s, a in state["held"]}
