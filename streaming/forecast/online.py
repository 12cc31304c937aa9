"""OnlineModel: a torch forecaster served and updated one closed step at a time."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.backbone import STBackbone
from models.checkpoint import load_checkpoint
from models.graph import gcn_edges, laplacian_pe
from models.objectives import contrastive_loss
from models.patch_transformer import PatchTransformer, PatchTransformerConfig
from streaming.config import AdaptConfig, ModelConfig, PatchingConfig
from streaming.forecast.adaptation import Anchor, Booster, RollbackGuard, select_parameters
from streaming.forecast.reservoir import ReservoirBuffer

log = logging.getLogger(__name__)


def shape_mismatch(arch: dict[str, Any], patching: PatchingConfig,
                   cfg: ModelConfig) -> dict[str, tuple[Any, int]]:
    """The keys where a checkpoint's architecture does not fit the configured grid:
    ``{key: (checkpoint's value, configured value)}``."""
    want = {"patch_len": patching.patch_len, "horizon": cfg.horizon,
            "context_patches": cfg.context_patches}
    return {k: (arch.get(k), v) for k, v in want.items() if arch.get(k) != v}


_SAID_SUPERVISED_ONLY: set[str] = set()   # model classes the note below was logged for

# a target further than this many of its sensor's scales from its mean is left out of the
# online loss: a sensor whose statistics come from a flat start (a light sensor at night, a
# rain gauge) sees its first real values at 10^5 of its scale, which the model cannot learn
# from and which only trip the rollback guard ("exploding loss"); the anomaly score sees them
TARGET_CAP = 50.0
FORWARD_CHUNK = 1024    # sensors per forward pass of a per-sensor model (bounds activations;
#                         1024 was fastest at 10,000 sensors: 328 ms vs 493 ms in one pass)


class OnlineModel:
    """Wraps a forecaster: ``predict_many`` (no state change), ``learn_many`` (a supervised
    update when realized values arrive) and ``contrast_many`` (an InfoNCE update on the
    newest window).

    Inputs are ``[B, K, P]`` windows already z-scored per sensor; outputs are ``[B, H]`` in the
    same units. Updates touch only the parameters ``adapt.params`` selects, mix in windows
    from a reservoir replay buffer, are pulled toward the initial (pretrained) weights, are
    boosted for sensors with a recent drift alert, and roll back to the last good snapshot
    on a NaN or exploding loss (reported through ``drain_alerts``).
    """

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, name: str = "fresh",
                 meta: dict | None = None, adapt: AdaptConfig | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.adapt = adapt or AdaptConfig()
        self.name = name
        self.meta = meta or {}
        self._graph = _GraphContext(model, self.meta) if isinstance(model, STBackbone) else None
        self.n_updates = 0       # realized windows learned from (the model_version counter)
        self.lr_scale = 1.0      # set by the adaptation guard (halved after harmful updates)
        self.n_skipped = 0
        self.n_steps = 0         # optimizer steps (boosts add passes)
        self.params = select_parameters(model, self.adapt)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.lr)
        self.anchor = Anchor(self.params, self.adapt)
        self.booster = Booster(self.adapt)
        self.guard = RollbackGuard(self.params, self.optimizer, self.adapt)
        self.replay = ReservoirBuffer(self.adapt.replay_size, seed=cfg.seed)
        self._gen = torch.Generator().manual_seed(cfg.seed)
        self._alerts: list[dict] = []
        self._contrast_calls = 0
        self.last_embedding: np.ndarray | None = None   # [B, d] of the last prediction
        self.last_quantiles: np.ndarray | None = None   # [B, 2, H] offsets below/above
        self.step_ms: int | None = None                 # patch duration (fourier calendar)
        self.can_contrast = isinstance(model, STBackbone)
        if (self.adapt.contrastive_weight > 0 and not self.can_contrast
                and type(model).__name__ not in _SAID_SUPERVISED_ONLY):
            _SAID_SUPERVISED_ONLY.add(type(model).__name__)     # once, not per copy or region
            log.info("online adaptation: supervised updates only. Contrastive updates "
                     "(adapt.contrastive_weight=%g) need the spatio-temporal backbone's "
                     "projection head (a checkpoint from `stfm replay pretrain`); the %s "
                     "served here has none", self.adapt.contrastive_weight,
                     type(model).__name__)
        self.model.eval()

    @classmethod
    def fresh(cls, patching: PatchingConfig, cfg: ModelConfig,
              adapt: AdaptConfig | None = None) -> OnlineModel:
        torch.manual_seed(cfg.seed)
        net = PatchTransformer(PatchTransformerConfig(**vars(cfg.shape(patching))))
        return cls(net, cfg, name=f"fresh-s{cfg.seed}", adapt=adapt)

    @classmethod
    def from_checkpoint(cls, path: str | Path, patching: PatchingConfig,
                        cfg: ModelConfig, adapt: AdaptConfig | None = None) -> OnlineModel:
        """Load a checkpoint; its architecture must fit the patching and horizon in use."""
        torch.manual_seed(cfg.seed)
        net, meta = load_checkpoint(path)
        bad = shape_mismatch(meta["config"], patching, cfg)
        if bad:
            key, (have, want) = next(iter(bad.items()))
            raise ValueError(f"checkpoint {path}: {key}={have} but the configuration asks "
                             f"for {want}")
        name = meta.get("extra", {}).get("name") or Path(path).name
        if adapt is not None and adapt.checkpoint_lr > 0:
            cfg = dataclasses.replace(cfg, lr=adapt.checkpoint_lr)
        model = cls(net, cfg, name=name, meta=meta, adapt=adapt)
        model.step_ms = patching.interval_ms * patching.patch_len
        return model

    def checkpoint_differences(self, interval_ms: int, sensors: list[str] | None
                               ) -> list[str]:
        """What the checkpoint was trained on that differs from the data it serves, one
        sentence each (empty for a fresh model or a match): the grid interval, and for a
        per-network model (one embedding per sensor) the sensors."""
        from streaming.ingest.cadence import format_interval

        extra = self.meta.get("extra") or {}
        out = []
        trained_iv = extra.get("interval_ms")
        if trained_iv and int(trained_iv) != int(interval_ms):
            out.append(f"trained at a {format_interval(int(trained_iv))} interval, served at "
                       f"{format_interval(int(interval_ms))} (its daily and weekly "
                       "positions and horizons mean other times)")
        trained = extra.get("sensors")
        if trained is not None and sensors is not None and not self.inductive:
            known = set(trained)
            new = [s for s in sensors if s not in known]
            gone = sorted(known - set(sensors))
            if new or gone:
                out.append(f"trained on {len(trained)} sensors, served {len(sensors)}: "
                           f"{len(new)} served sensors it never saw"
                           + (f" (e.g. {', '.join(map(repr, new[:3]))})" if new else "")
                           + f", {len(gone)} of its sensors not served"
                           + (f" (e.g. {', '.join(map(repr, gone[:3]))})" if gone else ""))
        return out

    def frozen_copy(self) -> OnlineModel:
        """A copy of the starting model that never learns (the ``frozen`` expert), placed on
        the same graph and calendar."""
        twin = OnlineModel(copy.deepcopy(self.model), self.cfg, name=f"{self.name}-frozen",
                           meta=self.meta, adapt=self.adapt)
        twin.step_ms = self.step_ms
        if self._graph is not None and twin._graph is not None:
            twin._graph.use_graph(self._graph.names, *self._graph.edges)
        return twin

    @property
    def has_quantiles(self) -> bool:
        return isinstance(self.model, STBackbone) and self.model.quantile_head is not None

    @property
    def inductive(self) -> bool:
        """No per-sensor weights: any network can be served (a corpus-pretrained model)."""
        return isinstance(self.model, STBackbone) and self.model.cfg.num_nodes == 0

    def set_graph(self, sensors: list[str], edge_index: np.ndarray,
                  edge_weight: np.ndarray | None = None) -> None:
        """The live network's graph for an inductive backbone (its graph layer and
        Laplacian encodings) when ``model.live_graph`` is on; a per-network checkpoint keeps
        the graph it was trained on."""
        if self._graph is None or not self.inductive:
            return
        if not self.cfg.live_graph:
            log.info("%s: the network's graph is not used (model.live_graph = false; "
                     "zero-shot on an unseen graph the pretrained graph layer was worse)",
                     self.name)
            return
        self._graph.use_graph(sensors, edge_index, edge_weight)

    @property
    def version(self) -> str:
        return f"{self.name}+{self.n_updates}"

    def adapted_state(self) -> dict[str, Any]:
        """A copy of the adapted weights and the optimizer state (see ``restore_adapted``)."""
        return {"params": {n: p.detach().clone() for n, p in self.params.items()},
                "opt": copy.deepcopy(self.optimizer.state_dict())}

    @torch.no_grad()
    def restore_adapted(self, state: dict[str, Any]) -> None:
        """Put back adapted weights from ``adapted_state``. The optimizer keeps its second
        moments (the step sizes it has learned: a fresh Adam's first steps are as large as
        the learning rate) and forgets its momentum, which pointed the wrong way."""
        for n, p in self.params.items():
            p.copy_(state["params"][n])
        for st in self.optimizer.state.values():
            if "exp_avg" in st:
                st["exp_avg"].zero_()

    @property
    def is_spatial(self) -> bool:
        """Whether the model couples sensors (the backbone's graph layer over a graph with
        edges): it learns from the whole region at once, never from a sample of sensors."""
        return (self._graph is not None and self.model.graph_layer is not None
                and self._graph.edges[0].size > 0)

    @torch.no_grad()
    def predict_with_embedding(self, x: np.ndarray, mask: np.ndarray, side: np.ndarray, *,
                               steps: np.ndarray | None = None,
                               sensors: list[str] | None = None
                               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Forecasts ``[B, H]`` for windows ``[B, K, P]`` and the windows' embeddings
        ``[B, d]`` (the forecast head's input), from one pass; ``steps`` ``[K]`` are the
        windows' step indices and ``sensors`` their ids (the spatio-temporal backbone's)."""
        if x.ndim != 3 or mask.shape != x.shape or side.shape[:2] != x.shape[:2]:
            raise ValueError(f"online model: windows must be x, mask [B, K, P] and side "
                             f"[B, K, E], got {x.shape}, {mask.shape}, {side.shape}")
        if len(x) == 0:
            self.last_embedding = None
            return np.zeros((0, self.cfg.horizon), np.float32), None
        if len(x) > FORWARD_CHUNK and not self.is_spatial:
            return self._predict_in_chunks(x, mask, side, steps, sensors)
        xt, mt, st = torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(side)
        if self._graph is None:
            y, emb = self.model.forecast_and_embed(xt, mt, st)
            self.last_quantiles = None
        else:
            if steps is None or sensors is None:
                raise ValueError("the spatio-temporal backbone needs the step indices and "
                                 "sensors")
            y, emb, q = self._graph.forecast_and_embed(xt, mt, st, steps, sensors,
                                                       self.step_ms)
            self.last_quantiles = None if q is None else q.numpy()
        self.last_embedding = emb.numpy()
        return y.numpy(), self.last_embedding

    def _predict_in_chunks(self, x: np.ndarray, mask: np.ndarray, side: np.ndarray,
                           steps: np.ndarray | None, sensors: list[str] | None
                           ) -> tuple[np.ndarray, np.ndarray | None]:
        """``predict_with_embedding`` over ``FORWARD_CHUNK`` sensors at a time: a per-sensor
        model's forecasts do not depend on the other sensors, and the activations of one
        pass over 50,000 sensors alone took more than a gigabyte."""
        ys, embs, qs = [], [], []
        for i in range(0, len(x), FORWARD_CHUNK):
            sl = slice(i, i + FORWARD_CHUNK)
            y, emb = self.predict_with_embedding(
                x[sl], mask[sl], side[sl], steps=steps,
                sensors=None if sensors is None else sensors[sl])
            ys.append(y)
            embs.append(emb)
            qs.append(self.last_quantiles)
        self.last_embedding = None if embs[0] is None else np.concatenate(embs)
        self.last_quantiles = None if qs[0] is None else np.concatenate(qs)
        return np.concatenate(ys), self.last_embedding

    @property
    def can_impute(self) -> bool:
        """Whether the masked-patch head can fill gaps (a window-normalized backbone)."""
        return isinstance(self.model, STBackbone) and self.model.cfg.instance_norm

    @torch.no_grad()
    def impute(self, x: np.ndarray, mask: np.ndarray, side: np.ndarray, *,
               steps: np.ndarray, sensors: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Missing points of ``[B, K, P]`` windows filled: every point after a sensor's first
        observation in the window (a sensor not there yet is left alone). A token with no
        observation is hidden behind the mask token, as in pretraining, and filled by the
        masked-patch head; a single missing point between observations of its token is
        interpolated between them. Returns the filled windows and the imputed points
        ``[B, K, P]``."""
        if not self.can_impute or self._graph is None:
            raise ValueError(f"{type(self.model).__name__} cannot impute (needs the "
                             "window-normalized spatio-temporal backbone)")
        flat = mask.reshape(len(mask), -1)
        started = np.cumsum(flat, axis=1).reshape(mask.shape) > 0
        fill = started & ~mask
        if not fill.any():
            return x, fill
        empty = torch.from_numpy(~mask.any(-1) & started.any(-1))[None]
        st = torch.as_tensor(np.asarray(steps), dtype=torch.long).reshape(1, -1)
        out = self.model.run(torch.from_numpy(x)[None], torch.from_numpy(mask)[None], st,
                             side=torch.from_numpy(side)[None], token_mask=empty,
                             heads=("reconstruction",), **self._graph.kwargs(sensors,
                                                                            self.step_ms))
        rec = out["reconstruction"][0].numpy().reshape(len(x), -1)
        xf = np.where(flat, x.reshape(len(x), -1), np.nan)
        # a point inside a token with observations: linear between its observed neighbours
        # (measured better than the head for single points); a token with none: the head's
        # shape, its level corrected by its misfit on the observed points around the gap
        rows = np.flatnonzero(fill.reshape(len(x), -1).any(axis=1))
        est = x.reshape(len(x), -1).astype(np.float64)
        short = _interpolate(xf[rows])
        long = rec[rows] + _interpolate(xf[rows] - rec[rows])
        empty_pts = np.repeat(empty[0].numpy()[rows], x.shape[-1], axis=-1)
        est[rows] = np.where(empty_pts, long, short)
        est = est.reshape(x.shape)
        ok = fill & np.isfinite(est)
        return np.where(ok, est, x).astype(x.dtype), ok

    def predict_many(self, x: np.ndarray, mask: np.ndarray, side: np.ndarray, *,
                     steps: np.ndarray | None = None,
                     sensors: list[str] | None = None) -> np.ndarray:
        """Forecasts ``[B, H]`` for windows ``[B, K, P]`` (see ``predict_with_embedding``)."""
        return self.predict_with_embedding(x, mask, side, steps=steps, sensors=sensors)[0]

    # --- updates ------------------------------------------------------------------------

    def boost(self, sensors: list[str], step: int) -> None:
        """A drift alert on ``sensors`` at ``step``: adapt faster there for a while."""
        self.booster.boost(sensors, step)

    def drain_alerts(self) -> list[dict]:
        """``model`` events raised by rollbacks since the last call."""
        out, self._alerts = self._alerts, []
        return out

    def _losses(self, items: list[dict]) -> torch.Tensor:
        """Masked Huber loss of each window; windows that fit together go through one
        forward pass (the current window and its replayed ones usually do)."""
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            key = (it["x"].shape, tuple(it["sensors"] or ()) if self._graph else None)
            groups.setdefault(key, []).append(i)
        out: list[torch.Tensor | None] = [None] * len(items)
        for idx in groups.values():
            sel = [items[i] for i in idx]
            if self._graph is None:
                pred = self.model(*(torch.from_numpy(np.concatenate([it[k] for it in sel]))
                                    for k in ("x", "mask", "side")))
                preds = torch.split(pred, [len(it["x"]) for it in sel])
            else:
                preds = self._graph.forecast_many(
                    *(torch.from_numpy(np.stack([it[k] for it in sel]))
                      for k in ("x", "mask", "side")),
                    np.stack([np.asarray(it["steps"]) for it in sel]), sel[0]["sensors"],
                    self.step_ms)
            for i, it, pr in zip(idx, sel, preds, strict=True):
                y = torch.nan_to_num(torch.from_numpy(it["y"]))
                err = torch.nn.functional.huber_loss(pr, y, reduction="none", delta=1.0)
                m = torch.from_numpy(it["y_mask"]).to(err.dtype) * (y.abs() <= TARGET_CAP)
                if it.get("weight") is not None:
                    m = m * torch.from_numpy(it["weight"])[:, None]
                out[i] = (err * m).sum() / m.sum().clamp_min(1e-6)
        return torch.stack(out)  # type: ignore[arg-type]

    def _apply(self, loss: torch.Tensor, lr_factor: float, where: str, step: int | None,
               sensors: list[str] | None) -> float:
        """Penalty, backward, clip, step; or a rollback when the loss or weights go bad."""
        value = float(loss.detach())
        why = self.guard.is_bad(value)
        if why is None:
            pen = self.anchor.penalty(self.params)
            total = loss if pen is None else loss + pen
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.anchor.observe_grads(self.params)
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
            for g in self.optimizer.param_groups:
                g["lr"] = self.cfg.lr * self.lr_scale * lr_factor
            self.optimizer.step()
            self.n_steps += 1
            if self.guard.weights_ok():
                self.guard.accept(value)
                return value
            why = "non-finite weights after the update"
        self.guard.restore()
        self.n_skipped += 1
        self._alerts.append({
            "kind": "model", "sensors": list(sensors or []), "step": step,
            "detector": "online-update", "statistic": f"{where} loss",
            "severity": "warning",
            "detail": {"reason": why, "action": "restored the last good snapshot of the "
                       "adapted weights", "rollbacks": self.guard.rollbacks,
                       "model_version": self.version}})
        return math.nan

    def learn_many(self, x: np.ndarray, mask: np.ndarray, side: np.ndarray, y: np.ndarray,
                   y_mask: np.ndarray, *, steps: np.ndarray | None = None,
                   sensors: list[str] | None = None, step: int | None = None) -> float:
        """Supervised update(s) on the masked Huber loss of realized values, with replayed
        windows mixed in; returns the loss of the last pass (NaN when skipped or rolled back).

        Huber (quadratic up to one normalized unit, linear beyond) keeps a few sensors with
        sudden large errors, e.g. at a level shift, from dragging the shared model around.
        ``step`` (the current step) times drift boosts.
        """
        if (not self.cfg.learn or not self.adapt.supervised or self.cfg.lr == 0
                or not y_mask.any()):
            return math.nan
        if not np.isfinite(x[mask]).all():
            self._alerts.append({
                "kind": "model", "sensors": list(sensors or []), "step": step,
                "detector": "online-update", "statistic": "input window",
                "severity": "warning",
                "detail": {"reason": "non-finite normalized input; update skipped",
                           "model_version": self.version}})
            self.n_skipped += 1
            return math.nan
        item = {"x": x, "mask": mask, "side": side, "y": y.astype(np.float32),
                "y_mask": y_mask, "steps": steps, "sensors": sensors}
        factors = (self.booster.factors(sensors, step) if sensors is not None
                   and step is not None else [1.0])
        top = max(factors)
        cur = dict(item)
        if top > 1.0 and self._graph is None and len(factors) == len(x):
            cur["weight"] = np.asarray(factors, np.float32)
        passes = 1 + (self.adapt.boost_updates if top > 1.0 else 0)
        replayed = self.replay.sample(self.adapt.replay_k)
        value = math.nan
        self.model.train()
        try:
            for _ in range(passes):
                loss = self._losses([cur, *replayed]).mean()
                value = self._apply(loss, top, "supervised", step, sensors)
                if math.isnan(value):
                    break
        finally:
            self.model.eval()
        if not math.isnan(value):
            self.n_updates += 1
            self.replay.add(item)
        return value

    def contrast_many(self, x: np.ndarray, mask: np.ndarray, side: np.ndarray, *,
                      steps: np.ndarray | None = None, sensors: list[str] | None = None,
                      step: int | None = None) -> float:
        """One InfoNCE update over two augmented views of the newest window (positives: the
        same sensor and token; negatives: the other sensors and tokens)."""
        w = self.adapt.contrastive_weight
        if (w == 0 or not self.can_contrast or not self.cfg.learn or self.cfg.lr == 0
                or len(x) < 2 or steps is None or sensors is None):
            return math.nan
        self._contrast_calls += 1
        if (self._contrast_calls - 1) % self.adapt.contrastive_every:
            return math.nan
        assert self._graph is not None
        kw = self._graph.kwargs(sensors, self.step_ms)
        st = torch.as_tensor(np.asarray(steps), dtype=torch.long).reshape(1, -1)
        self.model.train()
        try:
            loss = w * contrastive_loss(self.model, torch.from_numpy(x)[None],
                                        torch.from_numpy(mask)[None], st, generator=self._gen,
                                        side=torch.from_numpy(side)[None], **kw)
            top = max(self.booster.factors(sensors, step)) if step is not None else 1.0
            return self._apply(loss, top, "contrastive", step, sensors)
        finally:
            self.model.eval()

    # --- state --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything an online run changes: weights, optimizer, penalty reference and
        Fisher, replay buffer, boosts, rollback snapshot, counters, generator."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "anchor": self.anchor.state_dict(), "booster": self.booster.state_dict(),
                "guard": self.guard.state_dict(), "replay": self.replay.state_dict(),
                "n_updates": self.n_updates, "n_skipped": self.n_skipped,
                "n_steps": self.n_steps, "contrast_calls": self._contrast_calls,
                "generator": self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.anchor.load_state_dict(state["anchor"])
        self.booster.load_state_dict(state["booster"])
        self.guard.load_state_dict(state["guard"])
        self.replay.load_state_dict(state["replay"])
        self.n_updates = int(state["n_updates"])
        self.n_skipped = int(state["n_skipped"])
        self.n_steps = int(state["n_steps"])
        self._contrast_calls = int(state["contrast_calls"])
        self._gen.set_state(state["generator"])


def _interpolate(r: np.ndarray) -> np.ndarray:
    """Rows of ``r`` with NaN gaps filled linearly between the nearest finite values (the
    nearest one at the ends; 0 for a row without any)."""
    out = np.zeros_like(r)
    t = np.arange(r.shape[1])
    for i, row in enumerate(r):
        ok = np.isfinite(row)
        if ok.any():
            out[i] = np.interp(t, t[ok], row[ok])
    return out


class _GraphContext:
    """Maps live sensors onto a pretrained backbone's nodes, graph and Laplacian encodings.

    Sensors the checkpoint does not know get no learned node embedding, no Laplacian
    encoding and no edges (they still get temporal and calendar embeddings).
    """

    def __init__(self, model: STBackbone, meta: dict) -> None:
        self.model = model
        extra = meta.get("extra", {})
        ei = np.asarray(extra.get("edge_index", [[], []]), np.int64).reshape(2, -1)
        ew = np.asarray(extra.get("edge_weight", np.ones(ei.shape[1])), np.float32)
        self.use_graph(list(extra.get("sensors", [])), ei, ew)

    def use_graph(self, names: list[str], ei: np.ndarray, ew: np.ndarray | None) -> None:
        """The nodes (by sensor id) and edges that sensors are placed on. The GCN's
        normalized edges and the Laplacian encodings are the whole graph's, so that sensors
        served from part of it (a region holding its own sensors and ghosts,
        ``streaming.ingest.halo``) get exactly what the whole graph gives them."""
        ei = np.asarray(ei, np.int64).reshape(2, -1)
        ew = (np.ones(ei.shape[1], np.float32) if ew is None
              else np.asarray(ew, np.float32))
        self.names = list(names)
        self.node_of = {s: i for i, s in enumerate(names)}
        self.edges = (ei, ew)
        if ei.size:
            nei, nw = gcn_edges(ei, len(names), ew)
            self.norm_edges = (nei.numpy(), nw.numpy())
        else:
            self.norm_edges = (ei, ew)
        dim = self.model.cfg.lap_pe_dim
        self.lap = (laplacian_pe(ei, len(names), dim, ew) if dim and names and ei.size
                    else torch.zeros(len(names), max(dim, 1)))
        self._cache: tuple[tuple[str, ...], tuple] | None = None

    def _for(self, sensors: list[str]) -> tuple:
        key = tuple(sensors)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        ids = torch.tensor([self.node_of.get(s, -1) for s in sensors], dtype=torch.long)
        ei, ew = self.norm_edges
        live = np.full(len(self.node_of), -1, np.int64)   # checkpoint node -> live index
        known_ids = ids.numpy()
        live[known_ids[known_ids >= 0]] = np.flatnonzero(known_ids >= 0)
        src, dst = (live[ei[0]], live[ei[1]]) if ei.size else (ei[0], ei[1])
        keep = (src >= 0) & (dst >= 0) & (src != dst) if ei.size else np.zeros(0, bool)
        # self-loops of the live nodes (weight 1/deg in the whole graph), then their edges
        loops = ei[0] == ei[1] if ei.size else np.zeros(0, bool)
        self_keep = loops & (src >= 0)
        has_edges = bool(keep.any())
        if has_edges:
            pick = np.flatnonzero(keep | self_keep)
            # a live sensor the graph does not know: only its self-loop (weight 1), as the
            # GCN gives an isolated node
            alone = np.flatnonzero(known_ids < 0)
            edge_index = torch.from_numpy(np.concatenate(
                [np.stack([src[pick], dst[pick]]), np.stack([alone, alone])], axis=1))
            edge_weight = torch.from_numpy(np.concatenate(
                [np.asarray(ew[pick], np.float32), np.ones(len(alone), np.float32)]))
        else:
            edge_index = edge_weight = None
        lap = None
        if self.model.cfg.lap_pe_dim:
            lap = torch.zeros(len(sensors), self.model.cfg.lap_pe_dim)
            known = ids >= 0
            lap[known] = self.lap[ids[known]]
        graph = (ids, lap, edge_index, edge_weight)
        self._cache = (key, graph)
        return graph

    def kwargs(self, sensors: list[str], step_ms: int | None = None) -> dict:
        ids, lap, edge_index, edge_weight = self._for(sensors)
        kw = {"node_ids": ids, "lap_pe": lap, "edge_index": edge_index,
              "edge_weight": edge_weight, "normalized": edge_index is not None}
        if self.model.calendar is not None:
            if step_ms is None:
                raise ValueError("this backbone's calendar needs the patch duration: load it "
                                 "with OnlineModel.from_checkpoint(path, patching, ...)")
            kw["step_ms"] = step_ms
        return kw

    def forecast_and_embed(self, x: torch.Tensor, mask: torch.Tensor, side: torch.Tensor,
                           steps: np.ndarray, sensors: list[str], step_ms: int | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Last-token forecasts ``[N, H]``, embeddings ``[N, d]`` and, with a quantile
        head, the p10/p90 offsets ``[N, 2, H]`` of one window."""
        st = torch.as_tensor(np.asarray(steps), dtype=torch.long).reshape(1, -1)
        heads = ("forecast", "quantiles") if self.model.quantile_head is not None \
            else ("forecast",)
        out = self.model.run(x[None], mask[None], st, side=side[None], heads=heads,
                             last_only=True, **self.kwargs(sensors, step_ms))
        q = out["quantiles"][0, :, -1] if "quantiles" in out else None
        return out["forecast"][0, :, -1], out["h"][0, :, -1], q

    def forecast_many(self, x: torch.Tensor, mask: torch.Tensor, side: torch.Tensor,
                      steps: np.ndarray, sensors: list[str],
                      step_ms: int | None = None) -> torch.Tensor:
        """Last-token forecasts ``[S, N, H]`` of ``S`` windows of the same sensors (the last
        token alone is computed: the others' outputs would reach no loss)."""
        st = torch.as_tensor(np.asarray(steps), dtype=torch.long)
        out = self.model.run(x, mask, st, side=side, last_only=True,
                             **self.kwargs(sensors, step_ms))
        return out["forecast"][:, :, -1]
