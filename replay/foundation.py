"""Pretraining the foundation backbone on a corpus (``replay.corpus``).

The model is inductive: no per-sensor weights (``num_nodes = 0``), windows normalized by
their own statistics, a Fourier calendar that works at any sampling interval, Laplacian
encodings and the graph layer where a source has a graph. Objectives, per batch: the
forecast after the last token (MSE in window-normalized units), the p10/p90 quantile head
(pinball loss, around the detached median), masked patches with single dropped points (the
gap filler) and InfoNCE between augmented views. AdamW with a cosine learning rate over
``max_steps``; every ``eval_every`` steps a fixed set of validation batches per source gives
the selection score: the mean over sources of the model's forecast MSE over persistence's
(scale-free, so no data set dominates); the best model is written as a checkpoint directory
(``best/``) and the resumable state as ``last/``. Deterministic under a seed on one thread.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from models.backbone import STBackbone, STBackboneConfig
from models.checkpoint import save_checkpoint
from models.objectives import contrastive_loss, masked_mean, masked_patch_loss, pinball_loss
from models.shape import last_observed
from replay.corpus import MixingSampler, Source, index_windows
from replay.pretrain import BackboneTraining, _device, _save_last
from streaming.config import ConfigError

log = logging.getLogger(__name__)


@dataclass
class FoundationConfig(BackboneTraining):
    """``[foundation]``: the inductive backbone's shape and how the corpus trains it."""

    SECTION: ClassVar[str] = "foundation"
    w_masked: float = 0.5
    w_contrastive: float = 0.05
    w_quantile: float = 0.5
    max_steps: int = 6000          # optimizer steps (the cosine schedule's length)
    max_minutes: float = 0.0       # this run stops after this much training time, resumable
    #                                with --resume (0 = no limit)
    session_steps: int = 0         # this run stops after this many steps, resumable with
    #                                --resume up to max_steps (0 = no limit): hours of
    #                                pretraining in budgeted sessions
    batch_size: int = 64           # windows per batch (a graph source: whole networks)
    point_ratio: float = 0.05      # single points hidden for the gap filler
    stride: int = 0                # rows between window starts (0 = patch_len // 2)
    temperature: float = 0.5       # mixing: source weight = windows ** temperature
    synthetic_share: float = 0.2   # share of batches from synthetic sources
    synthetic_series: int = 400
    synthetic_networks: int = 3
    kernel_series: int = 0         # GP kernel-composition series (KernelSynth-like)
    mixup_series: int = 0          # mixtures of 1-3 real training series (TSMixup-like)
    lagged_networks: int = 0       # networks with lagged cross-sensor effects
    eval_every: int = 500
    val_batches: int = 6           # per source

    def validate(self) -> FoundationConfig:
        bad = self.shape_errors("foundation")
        if bad:
            raise ConfigError(bad[0])
        for k in ("max_steps", "batch_size", "eval_every", "val_batches"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"foundation.{k} must be > 0")
        for k in ("w_forecast", "w_quantile", "w_masked", "w_contrastive", "max_minutes",
                  "stride", "threads", "synthetic_series", "synthetic_networks",
                  "kernel_series", "mixup_series", "lagged_networks", "session_steps"):
            if getattr(self, k) < 0:
                raise ConfigError(f"foundation.{k} must be >= 0")
        if not 0 <= self.synthetic_share < 1:
            raise ConfigError("foundation.synthetic_share must be in [0, 1)")
        if not 0 <= self.point_ratio < 1 or not 0 <= self.mask_ratio < 1:
            raise ConfigError("foundation.mask_ratio and point_ratio must be in [0, 1)")
        return self

    def model_config(self) -> STBackboneConfig:
        return STBackboneConfig.inductive(
            patch_len=self.patch_len, context_patches=self.context_patches,
            horizon=self.horizon, d_model=self.d_model, n_heads=self.n_heads,
            n_layers=self.n_layers, dropout=self.dropout, base=self.base,
            lap_pe_dim=self.lap_pe_dim, graph=self.graph)


@dataclass
class FoundationResult:
    best_score: float
    steps: int
    seconds: float
    checkpoint: str
    history: list[dict[str, Any]] = field(default_factory=list)
    mixing: list[tuple[str, int, float]] = field(default_factory=list)


def graph_kwargs(batch: dict[str, Any], cfg: FoundationConfig) -> dict[str, Any]:
    """The model's graph and calendar inputs of a batch."""
    kw: dict[str, Any] = {"step_ms": batch["step_ms"]}
    if cfg.graph and "edge_index" in batch:
        kw["edge_index"] = batch["edge_index"]
        kw["edge_weight"] = batch.get("edge_weight")
        if cfg.lap_pe_dim:
            kw["lap_pe"] = batch.get("lap_pe")
    return kw


def losses(model: STBackbone, b: dict[str, Any], cfg: FoundationConfig,
           gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The objectives of one batch (see module docstring)."""
    kw = graph_kwargs(b, cfg)
    out = model.run(b["x"], b["mask"], b["steps"], heads=("forecast", "quantiles"), **kw)
    sc = out["scale"][..., None]
    pred = out["forecast"][..., -1, :]
    y, ym = b["y"], b["y_mask"]
    parts = {"forecast": masked_mean(((pred - y) / sc) ** 2, ym)}
    if cfg.w_quantile:
        q = out["quantiles"][..., -1, :, :]
        med = pred.detach()
        parts["quantile"] = (pinball_loss((med - q[..., 0, :]) / sc, y / sc, ym, 0.1)
                             + pinball_loss((med + q[..., 1, :]) / sc, y / sc, ym, 0.9))
    if cfg.w_masked:
        parts["masked"] = masked_patch_loss(model, b["x"], b["mask"], b["steps"],
                                            ratio=cfg.mask_ratio, point_ratio=cfg.point_ratio,
                                            generator=gen, **kw)
    if cfg.w_contrastive:
        parts["contrastive"] = contrastive_loss(model, b["x"], b["mask"], b["steps"],
                                                generator=gen, max_pairs=256, **kw)
    return parts


def total(parts: dict[str, torch.Tensor], cfg: FoundationConfig) -> torch.Tensor:
    return sum(getattr(cfg, f"w_{k}") * v for k, v in parts.items())  # type: ignore[return-value]


@torch.no_grad()
def evaluate(model: STBackbone, val: dict[str, list[dict[str, Any]]],
             cfg: FoundationConfig) -> dict[str, Any]:
    """Per source: forecast MSE over persistence's (over all horizon points, and per point:
    ``mse_ratio_h``), and p10-p90 coverage (window-normalized units); ``score`` is the mean
    ratio over sources."""
    model.eval()
    per: dict[str, dict[str, Any]] = {}
    for name, batches in val.items():
        se = sp = cov = n = 0.0
        se_h = sp_h = 0.0
        for b in batches:
            out = model.run(b["x"], b["mask"], b["steps"], heads=("forecast", "quantiles"),
                            **graph_kwargs(b, cfg))
            sc = out["scale"][..., None]
            pred = out["forecast"][..., -1, :]
            base = last_observed(b["x"], b["mask"])[..., -1:]
            q = out["quantiles"][..., -1, :, :]
            y, ym = b["y"], b["y_mask"]
            m = ym.to(y.dtype)
            err, err_p = ((pred - y) / sc) ** 2 * m, ((base - y) / sc) ** 2 * m
            se += float(err.sum())
            sp += float(err_p.sum())
            se_h = se_h + err.flatten(0, -2).sum(0).double().numpy()
            sp_h = sp_h + err_p.flatten(0, -2).sum(0).double().numpy()
            inside = (y >= pred - q[..., 0, :]) & (y <= pred + q[..., 1, :])
            cov += float((inside.to(y.dtype) * m).sum())
            n += float(m.sum())
        if n:
            per[name] = {"mse_ratio": se / max(sp, 1e-12), "coverage": cov / n,
                         "mse_ratio_h": (se_h / np.maximum(sp_h, 1e-12)).tolist()}
    score = float(np.mean([v["mse_ratio"] for v in per.values()])) if per else math.inf
    return {"score": score, "sources": per}


def pretrain_corpus(sources: list[Source], out_dir: str | Path, cfg: FoundationConfig, *,
                    progress: bool = True, resume: bool = False) -> FoundationResult:
    """Pretrain on ``sources``; writes ``out_dir/best`` (checkpoint) and ``out_dir/last``.
    ``resume``: continue from ``out_dir/last`` (the same sources and configuration); a
    resumed run ends where an uninterrupted one would, with the same model."""
    cfg.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    try:
        return _train(sources, Path(out_dir), cfg, progress, resume)
    finally:
        torch.set_num_threads(threads)


def _train(sources: list[Source], out: Path, cfg: FoundationConfig,
           progress: bool, resume: bool = False) -> FoundationResult:
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    span = cfg.context_patches * cfg.patch_len + cfg.horizon
    sources = index_windows(sources, span, cfg.horizon, cfg.stride or max(1, cfg.patch_len // 2))
    if not sources:
        raise ValueError("corpus pretraining: no source has a training window")
    sampler = MixingSampler(sources, patch_len=cfg.patch_len,
                            context_patches=cfg.context_patches, horizon=cfg.horizon,
                            batch=cfg.batch_size, temperature=cfg.temperature,
                            synthetic_share=cfg.synthetic_share, seed=cfg.seed)
    mixing = sampler.mixing_table()
    for name, n, p in mixing:
        log.info("corpus: %-16s %8d training windows  %5.1f %% of batches", name, n, 100 * p)
    vrng = np.random.default_rng(cfg.seed + 1)
    val = {s.name: [_to(sampler.batch_of(s, "val", vrng), device)
                    for _ in range(cfg.val_batches)]
           for s in sources if s.n_windows("val") > 0}
    torch.manual_seed(cfg.seed)
    model = STBackbone(cfg.model_config()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * min(
            1.0, s / cfg.max_steps))))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    best = math.inf
    t_train = 0.0
    running: dict[str, float] = {}
    step = 0
    last = out / "last"
    if resume and (last / "state.pt").exists():
        saved = torch.load(last / "state.pt", map_location=device, weights_only=True)
        progress_state = json.loads((last / "progress.json").read_text())
        if progress_state.get("config") not in (None, _resumable(cfg)):
            raise ValueError(f"corpus pretraining: {last} was written with another "
                             "[foundation] configuration; resume with the same one (or "
                             "start a new --out)")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        sampler.rng.bit_generator.state = progress_state["sampler_rng"]
        step, best = int(progress_state["step"]), float(progress_state["best"])
        history = progress_state["history"]
        running = progress_state.get("running", {})
        t_train = float(progress_state.get("seconds", 0.0))
        log.info("corpus pretraining: resuming at step %d of %d (best %.4f)", step,
                 cfg.max_steps, best)
    stop = min(cfg.max_steps, step + cfg.session_steps) if cfg.session_steps else cfg.max_steps
    t_session = 0.0
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pretrain", disable=not progress,
               leave=False)
    meta = {"foundation": asdict(cfg), "mixing": mixing, "inductive": True}
    while step < stop:
        t0 = time.perf_counter()
        model.train()
        _, b = sampler.draw()
        parts = losses(model, _to(b, device), cfg, gen)
        loss = total(parts, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        t_train += time.perf_counter() - t0
        t_session += time.perf_counter() - t0
        for k, v in parts.items():
            fv = float(v.detach())
            running[k] = 0.98 * running.get(k, fv) + 0.02 * fv
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
        timed_out = cfg.max_minutes and t_session > 60 * cfg.max_minutes
        if step % cfg.eval_every == 0 or step == stop or timed_out:
            ev = evaluate(model, val, cfg)
            rec = {"step": step, "seconds": round(t_train, 1), "score": ev["score"],
                   **{f"train_{k}": v for k, v in running.items()}, "sources": ev["sources"]}
            history.append(rec)
            improved = ev["score"] < best - 1e-6
            if improved:
                best = ev["score"]
                save_checkpoint(out / "best", model, architecture="st_backbone",
                                config=asdict(model.cfg),
                                extra={**meta, "steps": step, "seconds": round(t_train, 1),
                                       "validation": ev})
            _save_last(last, model, opt, gen, {"step": step, "best": best,
                                               "history": history, "running": running,
                                               "seconds": t_train,
                                               "config": _resumable(cfg),
                                               "sampler_rng": sampler.rng.bit_generator.state},
                       extra={"scheduler": sched.state_dict()})
            (out / "history.json").write_text(json.dumps(history, indent=1))
            if progress:
                tqdm.write(f"step {step}: val MSE / persistence {ev['score']:.4f}"
                           f"{'  *' if improved else ''}  ({t_train / 60:.1f} min)")
            if timed_out:
                log.info("corpus pretraining: time budget of %g min reached at step %d",
                         cfg.max_minutes, step)
                break
    bar.close()
    return FoundationResult(best_score=best, steps=step, seconds=t_train,
                            checkpoint=str(out / "best"), history=history, mixing=mixing)


def _resumable(cfg: FoundationConfig) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (the budgets may differ)."""
    return {k: v for k, v in asdict(cfg).items()
            if k not in ("max_minutes", "session_steps", "device", "threads")}


def _to(b: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
