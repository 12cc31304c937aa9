#!/usr/bin/env python
"""Zero-shot forecasting with the corpus-pretrained backbone, leave one data set out (issue 15).

For every held-out data set D: pretrain the inductive backbone (``replay.foundation``, the
shipped checkpoint's recipe with a shorter step budget) on every other data set of the shared
folder (their rows before the online part) plus synthetic series; then run the live core
(``replay.backtest``, delayed feedback: a forecast is learned from only once its horizon has
been observed) over D from ``--warm-rows`` rows before its online part to its end, twice:

* with the pretrained checkpoint (defaults: the adapting model, a frozen copy and the
  baselines weighted online): columns ``zero-shot`` (the frozen copy: the pretrained model
  as shipped, never updated), ``zs+adapt`` (the model adapting online, supervised and
  contrastive), ``served`` (the served mix), ``persistence``, ``seasonal`` (seasonal naive:
  a day for sub-daily data, a week for daily data, none otherwise);
* with a fresh model (``--fresh``'s default PatchTransformer): column ``fresh``, the online
  model trained from scratch on the same stream.

Scored on forecasts whose horizon starts in the online part and lies inside the recording,
on values z-scored with D's train rows; H = 12 grid points (the default grid: patch 12,
horizon 12, context 8 patches), reported at h = 1, 6, 12 and averaged. ``p10-p90`` is the
share of truths inside the served interval (target 0.80; adaptive conformal calibration
online, ``streaming.forecast.intervals``), ``width`` its mean width. Goals (issue 15): zero-shot
beats persistence on every set at every horizon; zs+adapt beats fresh by >= 10 % MAE on
average; coverage 0.75-0.85.

    python benchmarks/zero_shot.py --data-dir ../shared/data [--datasets etth1,...]
        [--steps 3000] [--jobs 2] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from connectors.recordings import Recording  # noqa: E402
from replay.corpus import EVALUATION_SETS, MONTH_MS, SHARED  # noqa: E402

DAY_MS = 86_400_000
HORIZONS = (1, 6, 12)
MAIN_SETS = ("etth1", "etth2", "ettm1", "los_loop", "sz_taxi", "weather", "exchange")


def held_out_recording(data_dir: Path, name: str) -> tuple[Recording, int, int]:
    """D as a recording z-scored with its train rows, and its online part's borders."""
    from replay.corpus import shared_source

    src = shared_source(data_dir, name, online=True)
    b = src.blocks[0]
    n = b.values.shape[1]
    ts = b.ts
    if b.interval_ms == MONTH_MS or ts is None:      # a regular grid for the patcher
        ts = (ts[0] if ts is not None else 0) + np.arange(len(b.values)) * b.interval_ms
    # the live grid is aligned to epoch multiples of the interval: weekly data stamped on
    # Tuesdays (epoch day 0 is a Thursday) moves back to the grid, by less than an interval
    ts = np.asarray(ts, np.int64)
    ts = ts - ts[0] % b.interval_ms
    rec = Recording(timestamps=np.asarray(ts, np.int64), sensors=[f"c{i}" for i in range(n)],
                    values=b.values.astype(np.float64), interval_ms=b.interval_ms)
    if b.graph is not None:
        rec.edge_index = b.graph["edge_index"].numpy()
        ew = b.graph.get("edge_weight")
        rec.edge_weight = None if ew is None else ew.numpy()
    return rec, b.val, len(b.values)


def pretrain_job(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from replay.corpus import shared_source, synthetic_sources
    from replay.foundation import FoundationConfig, pretrain_corpus

    best = Path(job["out"], "best")
    if job.get("reuse") and (best / "weights.pt").exists():     # pretrained by an earlier run
        from models.checkpoint import read_meta

        extra = read_meta(best)["extra"]
        size = sum(f.stat().st_size for f in best.iterdir())
        return {**job, "ckpt": str(best), "minutes": extra["seconds"] / 60,
                "steps_run": extra["steps"], "ckpt_bytes": size,
                "val_score": extra["validation"]["score"], "reused": True}
    cfg = FoundationConfig(max_steps=job["steps"], eval_every=max(250, job["steps"] // 6),
                           threads=1, seed=0)
    sources = [shared_source(job["data_dir"], n) for n in SHARED if n != job["held_out"]]
    sources += synthetic_sources(0, n_series=cfg.synthetic_series,
                                 n_networks=cfg.synthetic_networks)
    t0 = time.perf_counter()
    res = pretrain_corpus(sources, job["out"], cfg, progress=False)
    size = sum(f.stat().st_size for f in Path(res.checkpoint).iterdir())
    return {**job, "ckpt": res.checkpoint, "minutes": (time.perf_counter() - t0) / 60,
            "steps_run": res.steps, "ckpt_bytes": size, "val_score": res.best_score}


def stream_cfg(rec: Recording, graph: bool = False) -> Any:
    from streaming.config import StreamConfig

    return StreamConfig.from_dict({
        "patching": {"interval_ms": rec.interval_ms, "lateness_ms": 0},
        "model": {"torch_threads": 1, "live_graph": graph},
        "anomaly": {"embedding": False}})


def eval_job(job: dict[str, Any]) -> dict[str, Any]:
    """Both runs over D; every column's errors per horizon point on the common points."""
    import torch

    torch.set_num_threads(1)
    from replay.backtest import backtest
    from streaming.pipeline.core import StreamCore
    from streaming.pipeline.factory import build_model

    rec, va, end = held_out_recording(Path(job["data_dir"]), job["held_out"])
    start = max(0, va - job["warm_rows"])
    cols: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {"data": job["held_out"], "sensors": rec.n_sensors,
                           "interval_min": rec.interval_ms / 60000}
    for variant in ("pretrained", "fresh"):
        cfg = stream_cfg(rec, job.get("live_graph", False))
        model = build_model(cfg, None if variant == "fresh" else job["ckpt"])
        if rec.edge_index is not None:
            model.set_graph(list(rec.sensors), rec.edge_index, rec.edge_weight)
        core = StreamCore(cfg, model, sensors=list(rec.sensors))
        t0 = time.perf_counter()
        res = backtest(rec, core, start_row=start, end_row=end, progress=False,
                       holdout=job.get("holdout", 0.02))
        out[f"seconds_{variant}"] = time.perf_counter() - t0
        sel = res.scored(va)
        if variant == "pretrained":
            truth = res.truth[sel]
            cols["zero-shot"] = res.experts["frozen"][sel]
            cols["zs+adapt"] = res.experts["model"][sel]
            cols["served"] = res.yhat[sel]
            cols["persistence"] = res.experts["persistence"][sel]
            season = ("seasonal_day" if rec.interval_ms < DAY_MS else "seasonal_week")
            if season in res.experts and not np.isnan(res.experts[season][sel]).all():
                cols["seasonal"] = res.experts[season][sel]
            lo, hi = res.quantiles["0.1"][sel], res.quantiles["0.9"][sel]
            out["updates"] = core.model.n_updates
            out["imputation"] = res.imputation
        else:
            cols["fresh"] = res.experts["model"][sel]
    ok = ~np.isnan(truth)
    for c in cols.values():
        ok &= ~np.isnan(c)
    out["points"] = int(ok.sum())
    for name, c in cols.items():
        err = np.where(ok, c - truth, np.nan).astype(np.float64)
        out[name] = {"mse": np.nanmean(err**2, axis=(0, 1)).tolist(),
                     "mae": np.nanmean(np.abs(err), axis=(0, 1)).tolist()}
    inside = np.where(ok, (truth >= lo) & (truth <= hi), np.nan)
    out["coverage"] = np.nanmean(inside, axis=(0, 1)).tolist()
    out["width"] = np.nanmean(np.where(ok, hi - lo, np.nan), axis=(0, 1)).tolist()
    return out


COLS = ("zero-shot", "zs+adapt", "served", "fresh", "persistence", "seasonal")


def table(rows: list[dict[str, Any]], pre: dict[str, dict[str, Any]],
          args: argparse.Namespace, seconds: float) -> tuple[common.Section, str]:
    """The section (per held-out set: the goals' figures and the MAE at h = 12) and the
    detail (MSE / MAE at h = 1, 6, 12 per column, coverage, width, pretraining)."""
    gains, beats, covs, summary_rows = [], [], [], []
    for r in rows:
        zs, pe = r["zero-shot"], r["persistence"]
        worse = [h + 1 for h in range(12) if zs["mae"][h] >= pe["mae"][h]
                 or zs["mse"][h] >= pe["mse"][h]]
        g = 1 - np.mean(r["zs+adapt"]["mae"]) / np.mean(r["fresh"]["mae"])
        cov = float(np.mean(r["coverage"]))
        gains.append(g)
        beats.append(not worse)
        covs.append(cov)
        summary_rows.append([r["data"], "yes" if not worse else
                             f"no (h = {','.join(map(str, worse))})", f"{100 * g:+.1f} %",
                             f"{cov:.3f}", " / ".join(f"{r[c]['mae'][11]:.3f}" for c in (
                                 "zero-shot", "zs+adapt", "served", "fresh", "persistence"))])
    gain = float(np.mean(gains)) if gains else float("nan")
    cov_ok = [0.75 <= c <= 0.85 for c in covs]
    ok = (all(beats), gain >= 0.10, all(cov_ok))
    body = [f"Each held-out set: a checkpoint pretrained ({args.steps:,} steps) on the other "
            "sets + synthetic series, then streamed over the held-out set's online part from "
            f"{args.warm_rows:,} rows before it, delayed feedback, H = 12 grid points, "
            "z-scored with its train rows. zero-shot = frozen; zs+adapt = the same adapting "
            "online; served = the served mix; fresh = a fresh online model. "
            f"{seconds / 60:.0f} min, {args.jobs} jobs. Per horizon: `history/detail.md`.", "",
            *common.md_table(["held out", "zero-shot < persistence at every h",
                              "zs+adapt vs fresh (MAE, h 1-12)", "p10-p90 coverage",
                              "MAE h=12: zero-shot / zs+adapt / served / fresh / persistence"],
                             summary_rows, align="llrrl"), "",
            "Goals (issue 15):",
            f"- Zero-shot frozen beats persistence on every held-out set at every horizon: "
            f"{common.verdict(ok[0])}, {sum(beats)} of {len(rows)}.",
            f"- Zero-shot + adaptation beats the fresh online model by >= 10 % MAE on average: "
            f"{common.verdict(ok[1])}, {100 * gain:+.1f} % over the {len(rows)} sets.",
            f"- p10-p90 coverage within 75-85 %: {common.verdict(ok[2])} on {sum(cov_ok)} of "
            f"{len(rows)} (mean {np.mean(covs):.3f})."]
    detail = [*common.md_table(["held out", "h", *COLS, "p10-p90", "width"],
                               [[r["data"] if hi == 0 else "", h,
                                 *(f"{r[c]['mse'][h - 1]:.3f} / {r[c]['mae'][h - 1]:.3f}" if c in r
                                   else "–" for c in COLS),
                                 f"{r['coverage'][h - 1]:.2f}", f"{r['width'][h - 1]:.2f}"]
                                for r in rows for hi, h in enumerate(HORIZONS)],
                               align="ll" + "r" * (len(COLS) + 2)), "",
              "Pretraining: " + "; ".join(
                  f"{k}: {v.get('steps_run', '?')} steps, {v.get('minutes', 0):.1f} min, "
                  f"{v.get('ckpt_bytes', 0) / 1e6:.2f} MB" for k, v in pre.items())]
    summary = common.Summary("zero_shot.py", f"leave-one-set-out zero-shot, {len(rows)} sets",
                             f"{sum(beats)} of {len(rows)} sets beat persistence at every h; "
                             f"adapt vs fresh {100 * gain:+.1f} %; coverage {np.mean(covs):.3f}",
                             "every set; >= +10 %; 75-85 %",
                             "; ".join([common.index_verdict(ok[0]), common.index_verdict(ok[1]),
                                        common.index_verdict(ok[2]) if ok[2] else
                                        f"not met ({sum(cov_ok)}/{len(rows)})"]))
    return (common.Section("zero_shot", "Forecasting accuracy",
                           "Zero-shot forecasting (benchmarks/zero_shot.py)", "\n".join(body),
                           summary), "\n".join(detail))


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    common.add_data_dir(ap)
    ap.add_argument("--datasets", default=",".join(MAIN_SETS),
                    help=f"held-out sets (any of {', '.join(EVALUATION_SETS)})")
    ap.add_argument("--steps", type=int, default=3000, help="pretraining steps per held-out set")
    ap.add_argument("--warm-rows", type=int, default=1200,
                    help="rows streamed before the online part (both runs)")
    common.add_jobs(ap)
    ap.add_argument("--work", default="/tmp/stfm-zero-shot")
    ap.add_argument("--live-graph", action="store_true",
                    help="the pretrained model uses the held-out set's graph (model.live_graph)")
    ap.add_argument("--reuse", action="store_true",
                    help="take the checkpoints an earlier run left in --work (evaluate only)")
    args = ap.parse_args(argv)
    names = args.datasets.split(",")
    bad = [n for n in names if n not in EVALUATION_SETS]
    if bad:
        ap.error(f"--datasets: {bad[0]!r} is not one of {', '.join(EVALUATION_SETS)}")
    data_dir = Path(args.data_dir)
    if not (data_dir / "ett").exists():
        ap.error(f"{data_dir} is not the shared data folder (no ett/)")
    t0 = time.perf_counter()
    jobs = [{"held_out": n, "data_dir": str(data_dir), "steps": args.steps,
             "out": f"{args.work}/{n}", "warm_rows": args.warm_rows, "reuse": args.reuse,
             "live_graph": args.live_graph} for n in names]
    with ProcessPoolExecutor(args.jobs) as ex:
        pre = {r["held_out"]: r for r in ex.map(pretrain_job, jobs)}
        print(json.dumps({k: {x: v[x] for x in ("minutes", "steps_run", "val_score")}
                          for k, v in pre.items()}), flush=True)
        rows = list(ex.map(eval_job, [pre[n] for n in names]))
    seconds = time.perf_counter() - t0
    section, detail = table(rows, pre, args, seconds)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    (Path(args.work) / "rows.json").write_text(json.dumps({"rows": rows, "pretrain": pre},
                                                          default=str))
    common.publish(section, args, detail=detail)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
