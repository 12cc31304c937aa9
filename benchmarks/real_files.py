#!/usr/bin/env python
"""What a new user gets from ``stfm replay backtest FILE --out DIR`` at defaults on real files
that are not a plain comma-separated file on a fixed grid: calendar dates (monthly, weekly),
readings stamped off the grid's points, other time and number formats.

Sets (``--data-dir``): the monthly hospital counts (767 series, gzipped CSV), the monthly
sunspot numbers (235 years), the weekly ILI set, and ETTh1 as it is, with every timestamp
moved to half past the hour (as many loggers stamp; written to a temporary file), with up to
a minute of jitter on top, in epoch seconds, and as a German spreadsheet exports it (``;``,
decimal commas, ``dd.mm.yyyy HH:MM`` in a column named ``Zeitstempel``). For each: the grid
the CLI chose, the steps and points it scored, the readings that collided on a grid point,
the served MAE over persistence's and over the best simple forecaster's, and its alerts.
``--tree DIR`` runs another checkout's CLI (a ``git worktree`` of an earlier commit, with
this venv linked in), shown beside this one's with ``--before`` (rows from ``--json-out``).

    python benchmarks/real_files.py [--data-dir ../shared/data] [--jobs 2] [--tree DIR]
        [--json-out rows.json] [--before rows.json --before-label before]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

SIMPLE = ("persistence", "moving_average", "seasonal_day", "seasonal_week", "seasonal_year",
          "holt_winters")
SETS: dict[str, tuple[str, str]] = {      # name: (file under the data dir, how it is stamped)
    "hospital": ("corpus/hospital/hospital.csv.gz", "month starts"),
    "sunspots": ("corpus/sunspots/monthly_sunspots.csv", "month starts"),
    "ILI": ("corpus/ili/national_illness.csv", "weekly"),
    "ETTh1": ("ett/ETTh1.csv", "on the hour"),
    "ETTh1 at :30": ("ett/ETTh1.csv", "half past the hour"),
    "ETTh1 at :30 +-1 min": ("ett/ETTh1.csv", "half past, jittered"),
    "ETTh1 in epoch seconds": ("ett/ETTh1.csv", "epoch seconds"),
    "ETTh1 German CSV": ("ett/ETTh1.csv", "dd.mm.yyyy HH:MM; ';', decimal commas"),
}


def prepare(name: str, data: Path, tmp: Path) -> Path:
    """The file the CLI reads: the set's own, or ETTh1 re-stamped."""
    src = data / SETS[name][0]
    if not name.startswith("ETTh1 "):
        return src
    df = pd.read_csv(src)
    ts = pd.to_datetime(df["date"])
    out = tmp / f"{name.replace(' ', '_').replace(':', '').replace('+-', 'pm')}.csv"
    if name.startswith("ETTh1 at"):
        ts = ts + pd.Timedelta(minutes=30)
        if "jitter" in SETS[name][1]:
            rng = np.random.default_rng(0)
            ts = ts + pd.to_timedelta(rng.integers(-60, 61, len(ts)), unit="s")
        df["date"] = ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    elif "epoch" in name:
        df["date"] = ts.values.astype("datetime64[s]").astype(np.int64)
        df = df.rename(columns={"date": "ts"})
    else:                       # as a German spreadsheet exports it
        df["date"] = ts.dt.strftime("%d.%m.%Y %H:%M")
        df = df.rename(columns={"date": "Zeitstempel"})
        df.to_csv(out, index=False, sep=";", decimal=",")
        return out
    df.to_csv(out, index=False)
    return out


def run_set(name: str, data: Path, tree: Path, tmp: Path) -> dict[str, Any]:
    path = prepare(name, data, tmp)
    out = tmp / f"out-{abs(hash((name, str(tree))))}"
    cmd = [sys.executable, "-m", "stfm.cli", "replay", "backtest", str(path), "--out",
           str(out), "--quiet", "--json"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    row: dict[str, Any] = {"set": name, "stamped": SETS[name][1],
                           "seconds": time.perf_counter() - t0}
    if done.returncode:
        row["error"] = (done.stderr.strip().splitlines() or ["?"])[-1]
        return row
    s = json.loads(done.stdout)
    grid = next((ln for ln in done.stderr.splitlines() if "grid interval" in ln), "")
    experts = s.get("experts", {})
    simple = {e: experts[e]["mae"] for e in SIMPLE if experts.get(e, {}).get("mae")}
    best = min(simple, key=simple.get) if simple else None
    row.update(grid_ms=int(grid.split("grid interval ")[1].split(" ms")[0]) if grid else None,
               steps=s.get("steps", 0), points=s.get("points", 0),
               collisions=s.get("grid_collisions"), mae=s.get("mae"),
               vs_persistence=s.get("mae_vs_persistence"), best=best,
               vs_best=(s["mae"] / simple[best]) if best and s.get("mae") else None,
               alerts=s.get("alerts_by_kind", {}))
    return row


def cells(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return ["refused: " + r["error"][:70], "", "", "", "", ""]
    from streaming.ingest.cadence import format_interval

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    alerts = ", ".join(f"{n} {k}" for k, n in sorted(r["alerts"].items())) or "none"
    return [format_interval(r["grid_ms"]) if r["grid_ms"] else "?",
            f"{r['steps']:,} / {r['points']:,}",
            "-" if r["collisions"] is None else f"{r['collisions']:,}",
            num(r["vs_persistence"]),
            f"{num(r['vs_best'])} ({r['best']})" if r["best"] else "-", alerts]


def main() -> int:
    args, rows, seconds, before = common.cli_sets_run(__doc__, list(SETS), ROOT, run_set)
    table = []
    for r in rows:
        if r["set"] in before:
            table.append([r["set"], r["stamped"], args.before_label, *cells(before[r["set"]])])
        table.append([r["set"], r["stamped"], args.label if before else "", *cells(r)])
    ok = [r for r in rows if "error" not in r]
    scored = all(r["points"] > 0 and not r["collisions"] for r in ok) and len(ok) == len(rows)
    beat = [r for r in ok if r["vs_best"] is not None and r["vs_best"] <= 1.0]
    body = [f"`stfm replay backtest FILE --out DIR --json` at defaults (packaged checkpoint, "
            f"patch 12, H = 12) on whole files of `{args.data_dir}`: the grid it chose, steps "
            "/ points scored, readings that collided on a grid point, served MAE / "
            "persistence and / the best simple forecaster (named), alerts. ETTh1 at :30 is "
            "the same file with every timestamp 30 min later, +-1 min: with uniform jitter "
            f"of up to a minute on top. {len(rows)} sets, {seconds:.0f} s, {args.jobs} at a "
            "time" + (f"; `{args.before_label}`: {args.before}" if before else "") + ".", "",
            *common.md_table(["set", "stamped", "run", "grid", "steps / points scored",
                              "grid collisions", "served / persistence",
                              "served / best simple", "alerts"], table), "",
            "- Every file read, every reading on its own grid point and scored: "
            + ("**met**" if scored else "**not met**") + ".",
            f"- Served at least as good as the best simple forecaster: {len(beat)} of "
            f"{len(rows)} sets."]
    summary = common.Summary(
        "real_files.py", "`stfm replay backtest` on calendar and off-grid real files",
        f"{len(ok)} of {len(rows)} files read and scored; served <= best simple on "
        f"{len(beat)} of {len(rows)}",
        "every file read and every reading scored on its own grid point",
        "**met**" if scored else "not met")
    common.publish(common.Section("real_files", "Forecasting accuracy",
                                  "Calendar and off-grid real files (benchmarks/real_files.py)",
                                  "\n".join(body), summary), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
