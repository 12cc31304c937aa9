#!/usr/bin/env python
"""Online forecasting under concept drift on ETTh2 and ETTm1, both published protocols.

Runs ``replay.backtest`` (the live worker's ``StreamCore``, no Kafka) over the online part of
each data set:

* data: ``ett/ETTh2.csv`` and ``ett/ETTm1.csv`` from ``--data-dir``, all 7 channels as
  sensors (no graph), the first 14,400 rows; z-score with the statistics of the train rows
  [0, 2880); metrics on the normalized values. Splits 20 / 5 / 75 %: train [0, 2880),
  validation [2880, 3600), online [3600, 14400); for ETTm1 the same row borders (as FSNet and
  OneNet; DSOF and PROCEED scaled them x4, so their ETTm1 figures are indicative only).
* warm-up: ``replay.pretrain.pretrain`` on the train rows (forecast loss after every token
  + masked patch modeling + InfoNCE), early stopping on the validation rows; one checkpoint per
  data set and horizon, shared by every protocol and ablation.
* online: one pass with batch size 1 (patch length 1: one row per step, lookback 60 rows =
  60 tokens); the stream starts 61 rows before the online border so the first scored forecast
  has a full lookback; scored forecasts are those whose first horizon row is in the online
  part and whose whole horizon is inside it. Cumulative MSE/MAE = mean over all of them.
* protocols: ``delayed`` (leak-free: the model learns from the forecast made at t once its H
  true values have arrived, at t+H; DSOF/PROCEED) and ``immediate`` (the FSNet/OneNet
  protocol: updated on t+1..t+H right after forecasting at t; it leaks).
* ablations: frozen (no adaptation), supervised only, contrastive only, supervised +
  contrastive, and both + drift steering (drift alerts raise the learning rate).

    python benchmarks/online_forecasting.py --data-dir ../shared/data [--quick]
        [--datasets etth2,ettm1] [--horizons 1,24,48] [--protocols delayed,immediate]
        [--ablations frozen,supervised,contrastive,both,both+drift] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from connectors.recordings import Recording, read_recording  # noqa: E402

TRAIN, VAL, END = 2880, 3600, 14400
LOOKBACK = 60
ABLATIONS = ("frozen", "supervised", "contrastive", "both", "both+drift")
PUBLISHED = {  # cumulative MSE, H = 1 / 24 / 48
    ("immediate", "etth2"): {"OneNet": (0.380, 0.532, 0.609), "FSNet": (0.466, 0.687, 0.846)},
    ("immediate", "ettm1"): {"OneNet": (0.082, 0.098, 0.108), "FSNet": (0.085, 0.115, 0.127)},
    ("delayed", "etth2"): {"DSOF (best backbone)": (0.365, 1.701, 3.082)},
    ("delayed", "ettm1"): {"DSOF (best backbone), x4 borders": (0.096, 0.418, 0.554)},
}
FILES = {"etth2": "ETTh2.csv", "ettm1": "ETTm1.csv"}


def load(data_dir: Path, name: str) -> Recording:
    """The first 14,400 rows, z-scored with the train rows' statistics."""
    path = data_dir / "ett" / FILES[name]
    if not path.exists():
        sys.exit(f"{path} not found (pass the shared data folder with --data-dir)")
    rec = read_recording(path).slice_rows(0, END)
    mu = rec.values[:TRAIN].mean(axis=0)
    sd = rec.values[:TRAIN].std(axis=0)
    return replace(rec, values=(rec.values - mu) / sd)


def warmup(rec: Recording, horizon: int, out: Path, args: argparse.Namespace) -> tuple[str, Any]:
    from replay.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(patch_len=1, context_patches=LOOKBACK, horizon=horizon,
                         d_model=args.d_model, n_heads=4, n_layers=args.layers, dropout=0.1,
                         graph=False, epochs=args.pre_epochs, batch_size=32, lr=1e-3,
                         w_forecast=1.0, w_masked=0.5, w_contrastive=0.05, stride=2,
                         train_rows=TRAIN, val_rows=VAL - TRAIN, test_rows=END - VAL,
                         patience=3, select_on="forecast", seed=args.seed)
    t0 = time.perf_counter()
    res = pretrain(rec, out, cfg, progress=False)
    return res.checkpoint, {"epochs": res.epochs_run, "best_val": res.best_val,
                            "samples_per_s": res.samples_per_s,
                            "seconds": time.perf_counter() - t0}


def stream_config(rec: Recording, horizon: int, ablation: str, args: argparse.Namespace) -> Any:
    from streaming.config import StreamConfig

    adapt: dict[str, Any] = {"params": args.params, "normalization": "checkpoint",
                             "replay_size": 256, "replay_k": args.replay_k,
                             "penalty": "l2sp", "penalty_weight": args.penalty,
                             "contrastive_weight": args.contrastive,
                             "contrastive_every": args.contrastive_every, "boost_lr": 1.0}
    model: dict[str, Any] = {"context_patches": LOOKBACK, "horizon": horizon, "lr": args.lr,
                             "learn_batch": 0, "seed": args.seed, "torch_threads": 1}
    if ablation == "frozen":
        model["learn"] = False
    elif ablation == "supervised":
        adapt["contrastive_weight"] = 0.0
    elif ablation == "contrastive":
        adapt["supervised"] = False
    elif ablation == "both+drift":
        adapt["boost_lr"] = args.boost
        adapt["boost_updates"] = 1
    return StreamConfig.from_dict({
        "patching": {"interval_ms": rec.interval_ms, "patch_len": 1, "lateness_ms": 0},
        "model": model, "adapt": adapt})


def one_run(job: dict[str, Any]) -> dict[str, Any]:
    """One (data set, horizon, protocol, ablation) backtest; runs in a worker process."""
    import torch

    torch.set_num_threads(1)
    from replay.backtest import backtest
    from streaming.forecast.online import OnlineModel
    from streaming.pipeline.core import StreamCore

    args = argparse.Namespace(**job["args"])
    rec = load(Path(args.data_dir), job["data"])
    cfg = stream_config(rec, job["h"], job["ablation"], args)
    model = OnlineModel.from_checkpoint(job["ckpt"], cfg.patching, cfg.model, cfg.adapt)
    core = StreamCore(cfg, model, sensors=list(rec.sensors))
    start = VAL - LOOKBACK - 1
    res = backtest(rec, core, feedback=job["protocol"], start_row=start, end_row=END,
                   progress=False)
    m = res.metrics(from_row=VAL)
    drift = sum(1 for a in res.alerts if a.get("kind") == "drift")
    dq = sum(1 for a in res.alerts if a.get("kind") == "data-quality")
    return {**{k: job[k] for k in ("data", "h", "protocol", "ablation")}, **m,
            "updates": model.n_updates, "rollbacks": model.guard.rollbacks,
            "drift_alerts": drift, "dq_alerts": dq, "seconds": res.seconds}


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    common.add_data_dir(ap)
    ap.add_argument("--datasets", default="etth2,ettm1")
    ap.add_argument("--horizons", default="1,24,48")
    ap.add_argument("--protocols", default="delayed,immediate")
    ap.add_argument("--ablations", default=",".join(ABLATIONS))
    ap.add_argument("--ablation-cells", default="",
                    help="run --ablations only in these cells (data:H:protocol,...); the other "
                         "cells run frozen and both+drift (default: every cell, all ablations)")
    ap.add_argument("--pre-epochs", type=int, default=10)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3, help="online learning rate")
    ap.add_argument("--params", default="all", help="adapt.params")
    ap.add_argument("--replay-k", type=int, default=1)
    ap.add_argument("--penalty", type=float, default=1e-4, help="L2-SP weight")
    ap.add_argument("--contrastive", type=float, default=0.05, help="InfoNCE weight")
    ap.add_argument("--contrastive-every", type=int, default=4,
                    help="InfoNCE step on every k-th realized window")
    ap.add_argument("--boost", type=float, default=3.0, help="drift boost of the lr")
    ap.add_argument("--seed", type=int, default=0)
    common.add_jobs(ap, min(2, os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: ETTh2, H=24, 2 pretraining epochs, no record")
    ap.add_argument("--json", type=Path, help="also write the raw rows here")
    args = ap.parse_args(argv)
    if args.quick:
        args.datasets, args.horizons, args.pre_epochs = "etth2", "24", 2
        args.no_record = True
    datasets = args.datasets.split(",")
    horizons = [int(h) for h in args.horizons.split(",")]
    protocols = args.protocols.split(",")
    ablations = args.ablations.split(",")
    cells = set(args.ablation_cells.split(",")) if args.ablation_cells else set()
    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="stfm-online-"))
    warm: dict[tuple[str, int], dict[str, Any]] = {}
    jobs = []
    job_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    for name in datasets:
        rec = load(args.data_dir, name)
        for h in horizons:
            ckpt, info = warmup(rec, h, work / f"{name}-h{h}", args)
            warm[(name, h)] = info
            print(f"warm-up {name} H={h}: {info['epochs']} epochs, best val "
                  f"{info['best_val']:.4f}, {info['seconds']:.0f} s", flush=True)
            for proto in protocols:
                cell_abl = ablations
                if args.ablation_cells and f"{name}:{h}:{proto}" not in cells:
                    cell_abl = [a for a in ("frozen", "both+drift") if a in ablations]
                for abl in cell_abl:
                    jobs.append({"data": name, "h": h, "protocol": proto, "ablation": abl,
                                 "ckpt": ckpt, "args": job_args})
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for r in pool.map(one_run, jobs):
            rows.append(r)
            print(f"  {r['data']} H={r['h']} {r['protocol']:9s} {r['ablation']:11s} "
                  f"MSE {r['mse']:.4f} MAE {r['mae']:.4f}  {r['steps']} steps "
                  f"{r['steps_per_s']:.0f}/s  updates {r['updates']} rollbacks "
                  f"{r['rollbacks']} drift alerts {r['drift_alerts']}", flush=True)
    wall = time.perf_counter() - t_all
    section, detail = table(rows, warm, args, datasets, horizons, protocols, ablations, wall)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    common.publish(section, args, detail=detail)
    return 0


def table(rows: list[dict[str, Any]], warm: dict, args: argparse.Namespace,
          datasets: list[str], horizons: list[int], protocols: list[str],
          ablations: list[str], wall: float) -> tuple[common.Section, str]:
    """The section (a table per protocol with the published numbers, the goal) and the
    detail (warm-up runs, adaptation counters)."""
    by = {(r["data"], r["h"], r["protocol"], r["ablation"]): r for r in rows}
    best = "both+drift" if "both+drift" in ablations else ablations[-1]
    body = [f"STBackbone d_model {args.d_model}, {args.layers} layer(s), patch 1, lookback "
            f"{LOOKBACK}; warm-up pretraining on rows [0, {TRAIN}) (<= {args.pre_epochs} "
            f"epochs); online batch size 1, Adam lr {args.lr}; cumulative MSE / MAE on z-scored "
            f"values over [{VAL}, {END}). {args.jobs} runs in parallel, 1 torch thread each; "
            f"{wall / 60:.1f} min. MSE / MAE per horizon:", ""]
    cells: list[tuple[str, str, int, float, float]] = []   # protocol, data, H, ours, best pub
    for proto in protocols:
        label = ("Delayed feedback (leak-free, primary)" if proto == "delayed"
                 else "Immediate feedback (FSNet/OneNet protocol; leaks future values)")
        table_rows = []
        for name in datasets:
            for abl in ablations:
                rs = [by.get((name, h, proto, abl)) for h in horizons]
                sps = [r["steps_per_s"] for r in rs if r]
                table_rows.append([name, abl if abl != best else f"**{abl}**",
                                   *(f"{r['mse']:.3f} / {r['mae']:.3f}" if r else "–"
                                     for r in rs), f"{np.mean(sps):.0f}" if sps else "–"])
            for who, vals in PUBLISHED.get((proto, name), {}).items():
                table_rows.append([name, f"published: {who}",
                                   *(f"{vals[(1, 24, 48).index(h)]:.3f}" if h in (1, 24, 48)
                                     else "–" for h in horizons), ""])
            for h in horizons:
                pubs = [v[(1, 24, 48).index(h)] for v in PUBLISHED.get((proto, name), {}).values()
                        if h in (1, 24, 48)]
                r = by.get((name, h, proto, best))
                if pubs:
                    cells.append((proto, name, h, r["mse"] if r else float("nan"), min(pubs)))
        body += [f"{label}:", "",
                 *common.md_table(["data", "variant", *(f"H={h}" for h in horizons), "steps/s"],
                                  table_rows, align="ll" + "l" * len(horizons) + "r"), ""]
    beat = [c for c in cells if c[3] < c[4]]
    ok = bool(cells) and len(beat) == len(cells)
    body.append(f"- Goal (issue 4) beat the best published number in every cell of both "
                f"protocols: {common.verdict(ok)}: {best} beats it in {len(beat)} of {len(cells)} "
                "cells (" + "; ".join(
                    f"{p} {d} H={h}: {o:.3f} vs {b:.3f}" + ("" if o == o else " (not run)")
                    for p, d, h, o, b in cells) + ").")
    first = next((c for c in cells if c[0] == "delayed" and c[3] == c[3]), None)
    detail = ["Warm-up runs: " + "; ".join(
        f"{k[0]} H={k[1]}: {v['epochs']} epochs, best val {v['best_val']:.4f}, "
        f"{v['samples_per_s']:.0f} windows/s" for k, v in warm.items()), "",
        "Adaptation counters: " + "; ".join(
            f"{r['data']} H={r['h']} {r['protocol']} {r['ablation']}: updates {r['updates']}, "
            f"rollbacks {r['rollbacks']}, drift alerts {r['drift_alerts']}" for r in rows
            if r["ablation"] in ("both", "both+drift"))]
    summary = common.Summary(
        "online_forecasting.py", f"{', '.join(datasets)} under drift vs published online "
        "learners", (f"delayed {first[1]} H={first[2]}: {first[3]:.3f} vs {first[4]:.3f}; "
                     if first else "") + f"beats {len(beat)} of {len(cells)} published cells",
        "beat the best published number in every cell of both protocols", common.index_verdict(ok))
    return (common.Section("online_forecasting", "Forecasting accuracy",
                           "Online forecasting under drift (benchmarks/online_forecasting.py)",
                           "\n".join(body), summary), "\n".join(detail))


if __name__ == "__main__":
    sys.exit(main())
