#!/usr/bin/env python
"""The served forecast per horizon point, as a user gets it: ``stfm replay backtest FILE --out
DIR`` at defaults on whole real files (issue 32).

Each set is run through the CLI (packaged checkpoint, patch 12, H = 12, delayed feedback), and
``report.json``'s ``by_horizon`` gives per horizon point the served MAE over persistence's and
over the best simple forecaster's (persistence, moving average, seasonal naive of a day and a
week, Holt-Winters: the best at that point). Sets: ETTh1, ETTh2, ETTm1, weather (``-9999``
codes missing), exchange rate, Los-loop on its graph.

``--tree DIR`` runs another checkout's CLI (e.g. a ``git worktree`` of an earlier commit, with
this venv linked in) and ``--json-out`` keeps its rows; ``--before FILE`` shows such rows
beside this run's.

Goals (issue 32): served at h = 1 <= 1.00x persistence; at every horizon point <= 0.97x the best
simple forecaster.

    python benchmarks/served_horizon.py [--data-dir ../shared/data] [--jobs 2]
        [--tree DIR] [--json-out rows.json] [--before rows.json --before-label before]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

SIMPLE = ("persistence", "moving_average", "seasonal_day", "seasonal_week", "holt_winters")
SETS: dict[str, tuple[str, list[str]]] = {
    "ETTh1": ("ett/ETTh1.csv", []),
    "ETTh2": ("ett/ETTh2.csv", []),
    "ETTm1": ("ett/ETTm1.csv", []),
    "weather": ("weather/weather.csv", ["--na-values=-9999"]),
    "exchange": ("exchange_rate/exchange_rate.csv", []),
    "Los-loop": ("los_loop/los_speed.csv", ["--start", "2012-03-01T00:00", "--interval-ms",
                                            "300000", "--graph", "{data}/los_loop/los_adj.csv"]),
}


def run_set(name: str, data: Path, tree: Path, out: Path) -> dict[str, Any]:
    """One backtest through ``tree``'s CLI; the per-horizon ratios of its report."""
    file, extra = SETS[name]
    cmd = [sys.executable, "-m", "stfm.cli", "replay", "backtest", str(data / file),
           "--out", str(out / name), "--quiet", *(a.format(data=data) for a in extra)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name}: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    report = json.loads((out / name / "report.json").read_text())
    return {"set": name, "seconds": time.perf_counter() - t0, **ratios(report["by_horizon"])}


def ratios(by_h: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Served MAE over persistence's per horizon point, and over the best simple
    forecaster's at that point (with its name)."""
    served = by_h["served"]["mae"]
    best = []
    for j in range(len(served)):        # (None: an expert with no forecast at that point)
        have = [e for e in SIMPLE if e in by_h and by_h[e]["mae"][j] is not None]
        best.append(min(have, key=lambda e, j=j: by_h[e]["mae"][j]))
    return {"vs_persistence": [s / p for s, p in zip(served, by_h["persistence"]["mae"],
                                                     strict=True)],
            "vs_best": [s / by_h[b]["mae"][j] for j, (s, b) in enumerate(zip(served, best,
                                                                              strict=True))],
            "best": best}


def cells(r: dict[str, Any]) -> list[str]:
    vp, vb = r["vs_persistence"], r["vs_best"]
    worst = max(range(len(vb)), key=lambda j: vb[j])
    return [f"{vp[0]:.3f}", f"{vp[min(5, len(vp) - 1)]:.3f}", f"{vp[-1]:.3f}",
            f"{sum(vp) / len(vp):.3f}", f"{vb[worst]:.3f} (h={worst + 1}, {r['best'][worst]})"]


def main() -> int:
    args, rows, seconds, before = common.cli_sets_run(__doc__, list(SETS), ROOT, run_set)
    table = []
    for r in rows:
        if r["set"] in before:
            table.append([r["set"], args.before_label, *cells(before[r["set"]])])
        table.append([r["set"], args.label if before else "", *cells(r)])
    h1 = [r["vs_persistence"][0] for r in rows]
    every = [max(r["vs_best"]) <= 0.97 for r in rows]
    worst_h1 = max(rows, key=lambda r: r["vs_persistence"][0])
    body = [f"`stfm replay backtest FILE --out DIR` at defaults (packaged checkpoint, patch 12, "
            f"H = 12), whole files of `{args.data_dir}`; served MAE / persistence MAE at h = 1, "
            "6 and 12 and over all h, and served / the best simple forecaster at its worst "
            f"horizon point. {len(rows)} sets, {seconds:.0f} s, {args.jobs} at a time"
            + (f"; `{args.before_label}`: {args.before}" if before else "") + ".", "",
            *common.md_table(["set", "run", "h=1", "h=6", "h=12", "mean over h",
                              "worst served / best simple"], table), "",
            "- Goal (issue 32) served at h = 1 <= 1.00x persistence: "
            + ("**met**" if max(h1) <= 1.0 else
               f"**not met** on {sum(x > 1.0 for x in h1)} of {len(h1)} (worst "
               f"{worst_h1['set']} {worst_h1['vs_persistence'][0]:.3f})") + ".",
            "- Goal (issue 32) served <= 0.97x the best simple forecaster at every horizon "
            "point: " + ("**met**" if all(every) else
                         f"**not met**: met on {sum(every)} of {len(every)} sets, not on "
                         + ", ".join(f"{r['set']} ({max(r['vs_best']):.3f})"
                                     for r, ok in zip(rows, every, strict=True) if not ok))
            + "."]
    summary = common.Summary(
        "served_horizon.py", "`stfm replay backtest` at defaults, served / persistence and / "
        "best simple per horizon point",
        f"h=1: at most {max(h1):.3f}x persistence; <= 0.97x best simple at every h on "
        f"{sum(every)} of {len(every)} sets",
        "h=1 <= 1.00x persistence; every h <= 0.97x best simple",
        f"{'**met**' if max(h1) <= 1.0 else 'not met'}; "
        f"{'**met**' if all(every) else f'not met ({sum(every)} of {len(every)})'}")
    common.publish(common.Section("served_horizon", "Forecasting accuracy",
                                  "Served forecast per horizon (benchmarks/served_horizon.py)",
                                  "\n".join(body), summary), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
