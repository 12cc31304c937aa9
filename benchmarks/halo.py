#!/usr/bin/env python
"""Forecast error of partitioned regions with and without the halo exchange (issue 17).

Los-loop (207 METR-LA sensors on their graph, 5-minute speeds): the whole recording goes
through ``replay.partitioned.run_partitioned`` (each region's core runs the live worker's
``process_records``; forwarded boundary readings reach the other regions as ``boundary``
records) as one region, and as ``--partitions`` regions split by METIS (``stfm partition``)
or by Kafka's key hashing, with and without the halo. The served model is the shipped
checkpoint with the network's graph in its graph layer (``model.live_graph``; the setting
where a cut can cost anything: with the default per-sensor model a region's forecasts do not
depend on its neighbours) and, for reference, the default (no graph layer). Everything
adapts online as served (delayed feedback); scored leak-free on forecasts made in the test
split (the last 20 %, after the checkpoint's pretraining rows), values in mph. A last run
with online learning off checks that the halo reproduces one region's forecasts exactly.

    python benchmarks/halo.py --data-dir ../shared/data [--partitions 4] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import publish  # noqa: E402

from connectors.partitioning import (  # noqa: E402
    PartitionMap,
    edge_cut,
    hash_partition,
    partition_graph,
)
from connectors.recordings import Recording, load_graph, read_recording  # noqa: E402
from replay.partitioned import PartitionedRun, run_partitioned  # noqa: E402


def los_loop(data_dir: Path) -> Recording:
    d = data_dir / "los_loop"
    if not (d / "los_speed.csv").exists():
        sys.exit(f"{d / 'los_speed.csv'} not found (pass the shared data folder with "
                 "--data-dir)")
    rec = read_recording(d / "los_speed.csv", start="2012-03-01T00:00", interval_ms=300_000)
    rec.edge_index, rec.edge_weight = load_graph(d / "los_adj.csv", list(rec.sensors))
    return rec


def score(rec: Recording, run: PartitionedRun, first_row: int) -> dict[str, float]:
    """MAE / RMSE of the served forecasts made at or after ``first_row`` against the
    recording, with persistence (the last observed value) on the same points."""
    row_of = {int(t): i for i, t in enumerate(rec.timestamps)}
    col = {s: i for i, s in enumerate(rec.sensors)}
    last = _ffill(rec.values)
    err, per = [], []
    for (s, step), yhat in run.forecasts.items():
        hts = run.horizon_ts[step]
        r0 = row_of.get(int(hts[0]))
        if r0 is None or r0 < first_row or r0 + len(hts) > rec.n_steps:
            continue
        i = col[s]
        truth = rec.values[r0:r0 + len(hts), i]
        err.append(yhat - truth)
        per.append(last[r0 - 1, i] - truth)
    e, p = np.array(err), np.array(per)
    ok = np.isfinite(e) & np.isfinite(p)
    return {"points": int(ok.sum()), "mae": float(np.abs(e[ok]).mean()),
            "rmse": float(np.sqrt((e[ok] ** 2).mean())),
            "persistence": float(np.abs(p[ok]).mean())}


def _ffill(v: np.ndarray) -> np.ndarray:
    out = v.copy()
    for t in range(1, len(out)):
        bad = np.isnan(out[t])
        out[t, bad] = out[t - 1, bad]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from streaming.config import StreamConfig
    from streaming.pipeline.core import StreamCore
    from streaming.pipeline.factory import build_model, resolve_checkpoint

    rec = los_loop(args.data_dir)
    test_row = int(rec.n_steps * 0.8)
    names = list(rec.sensors)
    maps: dict[str, PartitionMap] = {
        "METIS": partition_graph(names, rec.edge_index, rec.edge_weight, args.partitions),
        "hash": hash_partition(names, args.partitions)}
    cuts = {m: edge_cut(pm, names, rec.edge_index, rec.edge_weight) for m, pm in maps.items()}

    def config(graph: bool, learn: bool = True, hops: int = 2) -> Any:
        return StreamConfig.from_dict({
            "patching": {"interval_ms": rec.interval_ms, "lateness_ms": 0},
            "model": {"live_graph": graph, "torch_threads": 1, "learn": learn},
            "adapt": {"contrastive_weight": 0.1 if learn else 0.0},
            "kafka": {"halo_hops": hops}, "anomaly": {"embedding": False}})

    def go(cfg: Any, pmap: PartitionMap | None, halo: bool) -> tuple[PartitionedRun, float]:
        ck = resolve_checkpoint(cfg, None, False)

        def make(keep: Any = None) -> StreamCore:
            m = build_model(cfg, ck)
            m.set_graph(names, rec.edge_index, rec.edge_weight)
            return StreamCore(cfg, m, sensors=[s for s in names if keep is None or s in keep])

        t0 = time.perf_counter()
        run = run_partitioned(rec, cfg, make, pmap, halo=halo)
        return run, time.perf_counter() - t0

    p = args.partitions
    plans = [("graph layer (live_graph)", True, "one region", None, False, 2),
             ("graph layer (live_graph)", True, f"{p} x METIS, no halo", "METIS", False, 2),
             ("graph layer (live_graph)", True, f"{p} x METIS, halo 2 hops", "METIS", True, 2),
             ("graph layer (live_graph)", True, f"{p} x METIS, halo 1 hop", "METIS", True, 1),
             ("graph layer (live_graph)", True, f"{p} x hash, no halo", "hash", False, 2),
             ("graph layer (live_graph)", True, f"{p} x hash, halo 2 hops", "hash", True, 2),
             ("default (no graph layer)", False, "one region", None, False, 2),
             ("default (no graph layer)", False, f"{p} x METIS, no halo", "METIS", False, 2)]
    rows = []
    ref: dict[str, float] = {}
    for model, graph, layout, m, halo, hops in plans:
        run, secs = go(config(graph, hops=hops), maps[m] if m else None, halo)
        sc = score(rec, run, test_row)
        if m is None:
            ref[model] = sc["mae"]
        ghosts = (sum(run.plan.sizes()["ghosts"]) if run.plan is not None else 0)
        rows.append((model, layout, sc, ref[model], ghosts, run.stats.halo_forwarded, secs))
        print(model, layout, sc, f"{secs:.0f}s", flush=True)
    # exactness with online learning off: the halo's forecasts vs one region's
    exact = {}
    one, _ = go(config(True, learn=False), None, False)
    for name, hops, halo in (("halo 2 hops", 2, True), ("halo 1 hop", 1, True),
                             ("no halo", 2, False)):
        r, _ = go(config(True, learn=False, hops=hops), maps["METIS"], halo)
        keys = set(one.forecasts) & set(r.forecasts)
        d = np.array([np.abs(one.forecasts[k] - r.forecasts[k]).max() for k in keys])
        exact[name] = (len(keys), len(one.forecasts), float(d.max()), int((d > 1e-4).sum()))

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Halo exchange: partitioned regions on Los-loop (benchmarks/halo.py, issue 17) "
             f"— {now}", "",
             f"Command: `python benchmarks/halo.py --data-dir ../shared/data --partitions {p}`",
             "",
             f"Los-loop, {rec.n_sensors} sensors, {rec.edge_index.shape[1]} directed edges, "
             f"{rec.n_steps} rows of 5 min; the whole recording streamed, scored on the "
             f"forecasts made in the test split (rows >= {test_row}), H = 12 (1 h), values in "
             "mph, the shipped checkpoint adapting online as served (delayed feedback). Edge "
             f"cut at P = {p}: METIS {cuts['METIS'].cut} of {cuts['METIS'].edges} undirected "
             f"edges ({cuts['METIS'].share:.1%}), hashing {cuts['hash'].cut} "
             f"({cuts['hash'].share:.1%}).", "",
             "| model | layout | points | served MAE | RMSE | vs one region | persistence MAE "
             "| ghosts (all regions) | readings forwarded | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, layout, sc, r, ghosts, fwd, secs in rows:
        lines.append(f"| {model} | {layout} | {sc['points']:,} | {sc['mae']:.4f} | "
                     f"{sc['rmse']:.4f} | {sc['mae'] / r - 1:+.2%} | {sc['persistence']:.4f} "
                     f"| {ghosts} | {fwd:,} | {secs:.0f} |")
    lines += ["", f"Online learning off (so that regions' models cannot drift apart), "
              f"{p} x METIS vs one region, the same forecasts?", "",
              "| run | forecasts compared | of one region's | max abs difference (mph) | "
              "forecasts differing by > 1e-4 |", "|---|---:|---:|---:|---:|"]
    for name, (n, total, mx, nd) in exact.items():
        lines.append(f"| {name} | {n:,} | {total:,} | {mx:.3g} | {nd:,} |")
    publish("\n".join(lines) + "\n", args.results, record=not args.no_record)


if __name__ == "__main__":
    main()
