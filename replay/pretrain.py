"""Offline pretraining of the spatio-temporal backbone on a recording.

Chronological train/validation split, values z-scored with the training rows' statistics,
windows of ``context_patches`` patches for all sensors at once (so the graph layer sees the
whole network). Objectives are weighted: forecasting after every token, masked patch
modeling and InfoNCE between augmented views. Progress bars, validation every epoch, early
stopping, a resumable ``last/`` state and the best model as a checkpoint directory; the same
seed gives the same model. Runs on a GPU when there is one, on all CPU cores otherwise, and
under ``torchrun`` as data parallel: each rank takes its share of every batch's windows and
the gradients are averaged across ranks before each step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from connectors.recordings import Recording
from models.backbone import STBackbone, STBackboneConfig
from models.checkpoint import save_checkpoint
from models.graph import laplacian_pe
from models.objectives import contrastive_loss, masked_patch_loss, regression_loss
from models.shape import ModelShape
from streaming.config import ConfigError, build_section, read_toml

log = logging.getLogger(__name__)
DAY_MS = 86_400_000


@dataclass
class BackboneTraining(ModelShape):
    """What both pretraining modes share: the backbone's width, the objectives' weights,
    the optimizer; read from the ``SECTION`` table of a TOML file and checked by the
    subclass's ``validate``."""

    SECTION: ClassVar[str] = "pretrain"
    d_model: int = 64
    dropout: float = 0.1
    base: str = "persistence"
    lap_pe_dim: int = 8
    graph: bool = True
    lr: float = 1e-3
    weight_decay: float = 1e-4
    w_forecast: float = 1.0
    w_masked: float = 1.0
    w_contrastive: float = 0.1
    mask_ratio: float = 0.3
    seed: int = 0
    device: str = "auto"
    threads: int = 1               # torch threads on CPU (0 = all cores, shared by ranks):
    #                                one ran 2.7x faster than all on a loaded 2-core machine

    @classmethod
    def load(cls, path: str | Path | None = None,
             overrides: dict[str, Any] | None = None) -> Any:
        """``[SECTION]`` of a TOML file with ``{"SECTION.key": value}`` overrides, typed and
        validated by the same system as the online configuration (errors name the key)."""
        data = read_toml(path, overrides)
        unknown = sorted(set(data) - {cls.SECTION})
        if unknown:
            raise ConfigError(f"unknown section {unknown[0]} (this pretraining reads "
                              f"[{cls.SECTION}])")
        return build_section(cls, data.get(cls.SECTION, {}), cls.SECTION).validate()


@dataclass
class PretrainConfig(BackboneTraining):
    """``[pretrain]``: the backbone's shape (``models.shape``) and how it is trained on one
    recording."""

    epochs: int = 20
    batch_size: int = 8            # windows per step (each holds every sensor)
    block_mask: bool = False
    stride: int = 0                # rows between window starts (0 = patch_len)
    train_rows: int = 0            # rows of the training split (0 = 80 % of the data)
    val_rows: int = 0              # rows of the validation split (0 = 10 % of the data)
    test_rows: int = 0             # rows of the test split after validation (0 = the rest)
    patience: int = 3
    select_on: str = "total"       # validation loss for early stopping and best/: total or a
                                   # single objective (forecast, masked, contrastive)
    init_checkpoint: str = ""      # start from these weights (fine-tuning) instead of random
    trainable: str = "all"         # "all", or "head": only the forecast head (linear probe)
    graph_from: str = "given"      # the graph layer's graph: given (the recording's),
                                   # comovement (each sensor's graph_k most correlated
                                   # sensors over the training rows) or auto (given, else
                                   # comovement)
    graph_k: int = 8               # neighbours per sensor of a comovement graph
    graph_gate: bool = False       # the graph layer's output through a learned gate that
                                   # starts at 0 (the model learns how much neighbours count)

    def validate(self) -> PretrainConfig:
        bad = self.shape_errors("pretrain")
        if bad:
            raise ConfigError(bad[0])
        for k in ("epochs", "batch_size"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"pretrain.{k} must be > 0")
        for k in ("w_forecast", "w_masked", "w_contrastive"):
            if getattr(self, k) < 0:
                raise ConfigError(f"pretrain.{k} must be >= 0")
        for k in ("train_rows", "val_rows", "test_rows", "stride", "threads"):
            if getattr(self, k) < 0:
                raise ConfigError(f"pretrain.{k} must be >= 0")
        if self.select_on not in ("total", "forecast", "masked", "contrastive"):
            raise ConfigError("pretrain.select_on must be total, forecast, masked or "
                              f"contrastive, not {self.select_on!r}")
        if self.select_on != "total" and not getattr(self, f"w_{self.select_on}"):
            raise ConfigError(f"pretrain.select_on={self.select_on!r} needs "
                              f"pretrain.w_{self.select_on} > 0")
        if self.graph_from not in ("given", "comovement", "auto"):
            raise ConfigError(f"pretrain.graph_from must be given, comovement or auto, "
                              f"not {self.graph_from!r}")
        if self.graph_k < 1:
            raise ConfigError("pretrain.graph_k must be >= 1")
        if self.trainable not in ("all", "head"):
            raise ConfigError(f"pretrain.trainable must be 'all' or 'head', "
                              f"not {self.trainable!r}")
        return self


@dataclass
class PretrainResult:
    best_val: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_s: float = 0.0
    checkpoint: str = ""


@dataclass
class WindowData:
    """A recording cut into model windows, normalized with training statistics."""

    x: torch.Tensor          # [R, N] z-scored values (0 where missing)
    mask: torch.Tensor       # [R, N] observed
    steps: torch.Tensor      # [R] absolute step index of each row's patch (calendar features)
    loc: np.ndarray
    scale: np.ndarray
    starts: dict[str, np.ndarray]
    span: int                # rows per window: context + horizon


def prepare(rec: Recording, cfg: PretrainConfig) -> WindowData:
    """Normalize with the training rows and list the window starts of each split."""
    n_rows = rec.n_steps
    train = cfg.train_rows or int(0.8 * n_rows)
    val = cfg.val_rows or int(0.1 * n_rows)
    end = train + val + cfg.test_rows if cfg.test_rows else n_rows
    if end > n_rows:
        raise ValueError(f"--train-rows + --val-rows + --test-rows (pretrain.*_rows) = {end} "
                         f"exceeds the recording's {n_rows} rows")
    vals = rec.values.astype(np.float64)
    loc = np.nanmean(vals[:train], axis=0)
    scale = np.nanstd(vals[:train], axis=0)
    loc = np.where(np.isfinite(loc), loc, 0.0)
    scale = np.where(np.isfinite(scale) & (scale > 1e-8), scale, 1.0)
    z = (vals - loc) / scale
    obs = np.isfinite(z)
    interval = rec.interval_ms or int(np.median(np.diff(rec.timestamps)))
    step_ms = interval * cfg.patch_len
    span = cfg.context_patches * cfg.patch_len + cfg.horizon
    stride = cfg.stride or cfg.patch_len

    def starts(lo: int, hi: int) -> np.ndarray:
        return np.arange(lo, hi - span + 1, stride, dtype=np.int64)

    return WindowData(
        x=torch.from_numpy(np.where(obs, z, 0.0).astype(np.float32)),
        mask=torch.from_numpy(obs), steps=torch.from_numpy(
            (rec.timestamps + interval // 2) // step_ms),
        loc=loc, scale=scale, span=span,
        starts={"train": starts(0, train), "val": starts(train - span + cfg.horizon
                                                         if train >= span else 0, train + val),
                "test": starts(train + val - span + cfg.horizon, end)})


def batch_of(data: WindowData, starts: np.ndarray, cfg: PretrainConfig,
             device: torch.device) -> dict[str, torch.Tensor]:
    """Windows ``[S, N, K, P]``, their forecast targets ``[S, N, K, H]`` and steps ``[S, K]``."""
    k, p, h = cfg.context_patches, cfg.patch_len, cfg.horizon
    rows = torch.from_numpy(starts)[:, None] + torch.arange(data.span)[None]      # [S, span]
    xs = data.x[rows].permute(0, 2, 1)                                            # [S, N, span]
    ms = data.mask[rows].permute(0, 2, 1)
    x = xs[..., : k * p].reshape(*xs.shape[:2], k, p)
    m = ms[..., : k * p].reshape(*ms.shape[:2], k, p)
    tgt_idx = (torch.arange(k)[:, None] + 1) * p + torch.arange(h)[None]           # [K, H]
    y = xs[..., tgt_idx]
    ym = ms[..., tgt_idx]
    steps = data.steps[rows[:, : k * p : p]]
    return {k_: v.to(device) for k_, v in
            {"x": x, "mask": m, "y": y, "y_mask": ym, "steps": steps}.items()}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _losses(model: STBackbone, b: dict[str, torch.Tensor], cfg: PretrainConfig,
            graph: dict[str, Any], gen: torch.Generator,
            last_token: bool = False) -> dict[str, torch.Tensor]:
    """The weighted objectives; ``last_token`` scores only the forecast made with the full
    lookback (the standard metric, whose targets all lie inside the window's split)."""
    out: dict[str, torch.Tensor] = {}
    if cfg.w_forecast:
        pred = model(b["x"], b["mask"], b["steps"], **graph)
        sel = slice(-1, None) if last_token else slice(None)
        out["forecast"] = regression_loss(pred[..., sel, :], b["y"][..., sel, :],
                                          b["y_mask"][..., sel, :])
    if cfg.w_masked:
        out["masked"] = masked_patch_loss(model, b["x"], b["mask"], b["steps"],
                                          ratio=cfg.mask_ratio, block=cfg.block_mask,
                                          generator=gen, **dict(graph))
    if cfg.w_contrastive:
        out["contrastive"] = contrastive_loss(model, b["x"], b["mask"], b["steps"],
                                              generator=gen, **dict(graph))
    return out


def _total(parts: dict[str, torch.Tensor], cfg: PretrainConfig) -> torch.Tensor:
    w = {"forecast": cfg.w_forecast, "masked": cfg.w_masked, "contrastive": cfg.w_contrastive}
    return sum(w[k] * v for k, v in parts.items())  # type: ignore[return-value]


def with_graph(rec: Recording, cfg: PretrainConfig) -> Recording:
    """``rec`` with the graph ``pretrain.graph_from`` asks for: a comovement graph
    (``models.cograph``) computed from the training rows only (no look at validation or test
    rows), or the recording's own."""
    given = rec.edge_index is not None and np.asarray(rec.edge_index).shape[-1] > 0
    if not cfg.graph or cfg.graph_from == "given" or (cfg.graph_from == "auto" and given):
        return rec
    from models.cograph import comovement_graph

    train = cfg.train_rows or int(0.8 * rec.n_steps)
    ei, ew = comovement_graph(rec.values[:train], k=cfg.graph_k)
    log.info("pretraining on a comovement graph: %d sensors, %d edges (%d most correlated "
             "neighbours each over the %d training rows)", rec.n_sensors, ei.shape[1],
             cfg.graph_k, train)
    return dataclasses.replace(rec, edge_index=ei, edge_weight=ew)


def build_model(rec: Recording, cfg: PretrainConfig) -> tuple[STBackbone, dict[str, Any]]:
    """The backbone for ``rec`` and the graph inputs it needs (node ids, Laplacian PE)."""
    interval = rec.interval_ms or int(np.median(np.diff(rec.timestamps)))
    per_day = DAY_MS // (interval * cfg.patch_len)
    has_graph = cfg.graph and rec.edge_index is not None and rec.edge_index.shape[1] > 0
    mcfg = STBackboneConfig(
        patch_len=cfg.patch_len, context_patches=cfg.context_patches, horizon=cfg.horizon,
        d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers, dropout=cfg.dropout,
        base=cfg.base, steps_per_day=int(per_day) if per_day >= 2 else 0,
        num_nodes=rec.n_sensors,
        lap_pe_dim=cfg.lap_pe_dim if has_graph else 0, graph=has_graph,
        graph_gate=has_graph and cfg.graph_gate)
    torch.manual_seed(cfg.seed)
    model = STBackbone(mcfg)
    graph: dict[str, Any] = {"node_ids": torch.arange(rec.n_sensors)}
    if has_graph:
        graph["edge_index"] = torch.from_numpy(np.asarray(rec.edge_index, np.int64))
        if rec.edge_weight is not None:
            graph["edge_weight"] = torch.from_numpy(np.asarray(rec.edge_weight, np.float32))
        if cfg.lap_pe_dim:
            graph["lap_pe"] = laplacian_pe(rec.edge_index, rec.n_sensors, cfg.lap_pe_dim,
                                           rec.edge_weight)
    return model, graph


@torch.no_grad()
def evaluate(model: STBackbone, data: WindowData, split: str, cfg: PretrainConfig,
             graph: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Losses on a split with a fixed generator (the same masks and views every time)."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    sums: dict[str, float] = {}
    n = 0
    starts = data.starts[split]
    for i in range(0, len(starts), cfg.batch_size):
        b = batch_of(data, starts[i:i + cfg.batch_size], cfg, device)
        parts = _losses(model, b, cfg, graph, gen, last_token=True)
        parts["total"] = _total(parts, cfg)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(b["x"])
        n += len(b["x"])
    return {k: v / max(n, 1) for k, v in sums.items()}


def pretrain(rec: Recording, out_dir: str | Path, cfg: PretrainConfig, *,
             resume: bool = False, progress: bool = True) -> PretrainResult:
    """Pretrain on ``rec``; writes ``out_dir/best`` (checkpoint) and ``out_dir/last`` (state)."""
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dist = _init_distributed()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    device = _device(cfg.device)
    if device.type == "cuda" and dist:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
    try:
        return _train(rec, out, cfg, dist, rank, world, device, resume, progress)
    finally:
        torch.set_num_threads(threads)


def _train(rec: Recording, out: Path, cfg: PretrainConfig, dist: Any, rank: int, world: int,
           device: torch.device, resume: bool, progress: bool) -> PretrainResult:
    data = prepare(rec, cfg)
    if len(data.starts["train"]) == 0 or len(data.starts["val"]) == 0:
        raise ValueError("recording too short for one training and one validation window")
    rec = with_graph(rec, cfg)
    model, graph = build_model(rec, cfg)
    if cfg.graph and not model.cfg.graph:
        # one truth in the checkpoint: the stored pretraining config says what was trained
        log.warning("pretraining without the graph layer: the recording has no graph (pass "
                    "--graph ADJ, or --no-graph to say so)")
        cfg = dataclasses.replace(cfg, graph=False)
    if cfg.init_checkpoint:
        from models.checkpoint import load_checkpoint

        init, init_meta = load_checkpoint(cfg.init_checkpoint)
        if init.cfg != model.cfg:
            raise ValueError(f"{cfg.init_checkpoint}: architecture {init.cfg} does not match "
                             f"{model.cfg}")
        _check_init_data(cfg.init_checkpoint, init_meta, rec, data)
        model.load_state_dict(init.state_dict())
    model.to(device)
    graph = {k: v.to(device) for k, v in graph.items()}
    if cfg.trainable == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("forecast_head."))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    state = {"epoch": 0, "best_val": math.inf, "bad_epochs": 0, "history": []}
    last = out / "last"
    if resume and (last / "state.pt").exists():
        saved = torch.load(last / "state.pt", map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])  # dropout draws from the global generator
        if device.type == "cuda" and "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), device)
        state = json.loads((last / "progress.json").read_text())
        if rank == 0:
            log.info("resuming after epoch %d (best validation %.5f)", state["epoch"],
                     state["best_val"])
    meta = {"pretrain": asdict(cfg), "loc": data.loc.tolist(), "scale": data.scale.tolist(),
            "sensors": list(rec.sensors), "interval_ms": rec.interval_ms}
    if "edge_index" in graph:
        meta["edge_index"] = graph["edge_index"].cpu().tolist()
        if "edge_weight" in graph:
            meta["edge_weight"] = graph["edge_weight"].cpu().tolist()
    samples = 0
    t_train = 0.0
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        if state["bad_epochs"] >= cfg.patience:
            break
        # a linear probe learns on the frozen encoder's features: no dropout in them
        model.train(cfg.trainable == "all")
        order = data.starts["train"][torch.randperm(len(data.starts["train"]),
                                                    generator=gen).numpy()]
        loss_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + epoch)
        bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}",
                   disable=not progress or rank != 0, leave=False)
        t0 = time.perf_counter()
        running = 0.0
        for j, i in enumerate(bar):
            chunk = order[i:i + cfg.batch_size][rank::world]
            if len(chunk) == 0:
                continue
            b = batch_of(data, chunk, cfg, device)
            parts = _losses(model, b, cfg, graph, loss_gen)
            loss = _total(parts, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if dist:
                _allreduce_grads(model, dist, world)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            samples += len(chunk)
            running += float(loss.detach())
            bar.set_postfix(loss=f"{running / (j + 1):.4f}")
        t_train += time.perf_counter() - t0
        val = evaluate(model, data, "val", cfg, graph, device)
        record = {"epoch": epoch, "train_loss": running / max(1, len(bar)),
                  **{f"val_{k}": v for k, v in val.items()}}
        state["history"].append(record)
        state["epoch"] = epoch
        improved = val[cfg.select_on] < state["best_val"] - 1e-6
        if improved:
            state["best_val"] = val[cfg.select_on]
            state["bad_epochs"] = 0
        else:
            state["bad_epochs"] += 1
        if rank == 0:
            if progress:
                tqdm.write(f"epoch {epoch}: train {record['train_loss']:.4f}  "
                           + "  ".join(f"val {k} {v:.4f}" for k, v in val.items())
                           + ("  *" if improved else ""))
            if improved:
                save_checkpoint(out / "best", model, architecture="st_backbone",
                                config=model.cfg.to_dict(), extra=meta)
            _save_last(last, model, opt, gen, state)
    if dist:
        dist.barrier()
    return PretrainResult(best_val=state["best_val"], epochs_run=state["epoch"],
                          history=state["history"],
                          samples_per_s=samples * world / t_train if t_train else 0.0,
                          checkpoint=str(out / "best"))


def _check_init_data(path: str, meta: dict[str, Any], rec: Recording,
                     data: WindowData) -> None:
    """A checkpoint to fine-tune from must know the same sensors (its node embeddings are
    per sensor); a different normalization is allowed but logged, since its features then
    see shifted inputs until fine-tuning adapts."""
    meta = meta.get("extra", meta)
    sensors = meta.get("sensors")
    if sensors is not None and list(sensors) != list(rec.sensors):
        missing = sorted(set(rec.sensors) - set(sensors))[:5]
        extra = sorted(set(sensors) - set(rec.sensors))[:5]
        raise ValueError(f"{path}: pretrained on other sensors than this recording "
                         f"(not in the checkpoint: {missing}; only in the checkpoint: {extra}"
                         f"{'; same sensors in another order' if not missing + extra else ''})")
    loc, scale = meta.get("loc"), meta.get("scale")
    if loc is not None and scale is not None:
        dloc = np.max(np.abs(np.asarray(loc) - data.loc) / data.scale)
        if dloc > 0.1 or np.max(np.abs(np.log(np.asarray(scale) / data.scale))) > 0.1:
            log.warning("%s: normalization differs from this recording's training rows "
                        "(largest location shift %.2f standard deviations)", path, dloc)


def _save_last(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
               gen: torch.Generator, state: dict[str, Any],
               extra: dict[str, Any] | None = None) -> None:
    """The resumable state, replaced atomically (temp dir + rename); ``extra``: more of it
    (a learning-rate scheduler's) in ``state.pt``."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    blob = {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), **(extra or {})}
    dev = next(model.parameters()).device
    if dev.type == "cuda":
        blob["cuda_rng"] = torch.cuda.get_rng_state(dev)
    torch.save(blob, tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps(state))
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _init_distributed() -> Any:
    """torch.distributed under torchrun (WORLD_SIZE > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist


def _allreduce_grads(model: torch.nn.Module, dist: Any, world: int) -> None:
    """Average gradients across ranks (each rank computed its share of the batch)."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world
