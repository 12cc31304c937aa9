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
with online learning off checks that the halo reproduces one region's forecasts exactly; it
also turns off the network's expert weights (``serve.network_weights``), which a region learns
over its own sensors (the runs above keep them, as served by default; one region without them
is a row of its own).

    python benchmarks/halo.py --data-dir ../shared/data [--partitions 4] [--no-record]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from connectors.partitioning import (  # noqa: E402
    PartitionMap,
    edge_cut,
    hash_partition,
    partition_graph,
)
from connectors.recordings import Recording, load_graph, read_recording  # noqa: E402
from replay.partitioned import PartitionedRun, run_partitioned  # noqa: E402

GOAL = 0.01                         # halo-exchanged regions within 1 % of one region's MAE


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
    ap = common.parser(__doc__)
    common.add_data_dir(ap)
    ap.add_argument("--partitions", type=int, default=4)
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

    def config(graph: bool, learn: bool = True, hops: int = 2, network: bool = True) -> Any:
        return StreamConfig.from_dict({
            "patching": {"interval_ms": rec.interval_ms, "lateness_ms": 0},
            "model": {"live_graph": graph, "torch_threads": 1, "learn": learn},
            "serve": {"network_weights": learn and network},
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
    OFF = "one region, serve.network_weights = false"      # the served mix's network weights
    plans = [("graph layer (live_graph)", True, "one region", None, False, 2),
             ("graph layer (live_graph)", True, f"{p} x METIS, no halo", "METIS", False, 2),
             ("graph layer (live_graph)", True, f"{p} x METIS, halo 2 hops", "METIS", True, 2),
             ("graph layer (live_graph)", True, f"{p} x METIS, halo 1 hop", "METIS", True, 1),
             ("graph layer (live_graph)", True, f"{p} x hash, no halo", "hash", False, 2),
             ("graph layer (live_graph)", True, f"{p} x hash, halo 2 hops", "hash", True, 2),
             ("graph layer (live_graph)", True, OFF, None, False, 2),
             ("default (no graph layer)", False, "one region", None, False, 2),
             ("default (no graph layer)", False, OFF, None, False, 2),
             ("default (no graph layer)", False, f"{p} x METIS, no halo", "METIS", False, 2)]
    rows = []
    ref: dict[str, float] = {}
    for model, graph, layout, m, halo, hops in plans:
        run, secs = go(config(graph, hops=hops, network=layout != OFF), maps[m] if m else None,
                       halo)
        sc = score(rec, run, test_row)
        if layout == "one region":
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

    graph = "graph layer (live_graph)"
    halos = [(layout, sc["mae"] / r - 1) for model, layout, sc, r, *_ in rows
             if model == graph and "halo" in layout and "no halo" not in layout]
    ok = bool(halos) and all(abs(x) <= GOAL for _, x in halos)
    head = next((x for layout, x in halos if "METIS" in layout and "2 hops" in layout),
                halos[0][1] if halos else float("nan"))
    persistence = rows[0][2]
    body = [f"Los-loop, {rec.n_sensors} sensors, {rec.n_steps} rows of 5 min, whole recording "
            f"streamed, scored on forecasts made in the test split (rows >= {test_row}), H = 12 "
            f"(1 h), mph, the shipped checkpoint adapting online as served. Persistence MAE "
            f"{persistence['persistence']:.4f} on the same {persistence['points']:,} points. "
            f"Edge cut at P = {p}: METIS {cuts['METIS'].share:.1%}, hashing "
            f"{cuts['hash'].share:.1%} of {cuts['METIS'].edges:,} undirected edges.", "",
            *common.md_table(["model", "layout", "served MAE", "vs one region", "ghosts",
                              "readings forwarded"],
                             [(model, layout, f"{sc['mae']:.4f}", f"{sc['mae'] / r - 1:+.2%}",
                               ghosts, f"{fwd:,}")
                              for model, layout, sc, r, ghosts, fwd, _ in rows],
                             align="llrrrr"), "",
            f"- Goal (issue 17) halo-exchanged partitions within {GOAL:.0%} of single-region "
            f"error: {common.verdict(ok)} ("
            + ", ".join(f"{layout} {x:+.2%}" for layout, x in halos) + ").",
            f"- With online learning off, {p} x METIS vs one region: "
            + "; ".join(f"{name} {nd:,} of {n:,} forecasts differ (max {mx:.3g} mph)"
                        for name, (n, total, mx, nd) in exact.items()) + "."]
    detail = [*common.md_table(["model", "layout", "points", "served MAE", "RMSE",
                                "persistence MAE", "seconds"],
                               [(model, layout, f"{sc['points']:,}", f"{sc['mae']:.4f}",
                                 f"{sc['rmse']:.4f}", f"{sc['persistence']:.4f}", f"{secs:.0f}")
                                for model, layout, sc, _, _, _, secs in rows], align="llrrrrr"),
              "", f"Online learning off, {p} x METIS vs one region, the same forecasts?", "",
              *common.md_table(["run", "forecasts compared", "of one region's",
                                "max abs difference (mph)", "forecasts differing by > 1e-4"],
                               [(name, f"{n:,}", f"{total:,}", f"{mx:.3g}", f"{nd:,}")
                                for name, (n, total, mx, nd) in exact.items()])]
    summary = common.Summary("halo.py", f"{p} regions vs one on Los-loop",
                             f"METIS + halo: MAE {head:+.2%} vs one region",
                             f"within {GOAL:.0%} of one region", common.index_verdict(ok))
    common.publish(common.Section("halo", "Live stream processing",
                                  "Halo exchange (benchmarks/halo.py)", "\n".join(body), summary),
                   args, detail="\n".join(detail))


if __name__ == "__main__":
    main()
