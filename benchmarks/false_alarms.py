#!/usr/bin/env python
"""False alarms on real data at default settings: alerts per 10,000 readings.

* ETTh2, ETTm1, weather, Los-loop (``../shared/data``): each recording (its first
  ``--max-readings`` readings, whole rows) is replayed through ``replay.backtest`` with the
  default configuration (fresh model, the file's interval); every alert counts, by kind. These
  sets have no labelled anomalies, so every alert is counted as a false alarm: an upper bound.
* NAB (``--nab-dir``): the 58 series side by side on a 5-minute row clock (as in
  ``benchmarks/nab.py``), replayed at defaults (patch length 12); every drift and anomaly
  alert whose time falls outside the series' labelled windows (and after NAB's probation)
  counts, per 10,000 readings outside the windows.
* NAB score stream (``--nab-scores``, the ``--save`` file of ``benchmarks/nab.py``, patch
  length 1): the fused score crossing the alert threshold outside the windows, counted like
  the alert gate does (one alert, then ``alerts.anomaly_cooldown_steps`` rows of cooldown
  and re-arm below ``alerts.anomaly_clear``).

Goal (issue 14): at most 1 per 10,000 readings at defaults.

    python benchmarks/false_alarms.py --data-dir ../shared/data [--nab-dir ../shared/data/nab]
        [--nab-scores nab.npz]
        [--sets etth2,ettm1,weather,los_loop] [--max-readings 150000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import publish  # noqa: E402


def gate_alerts(score: np.ndarray, threshold: float, clear: float, cooldown: int) -> list[int]:
    """Rows where the alert gate would fire on one series' score stream."""
    out, armed, last = [], True, -10**9
    for r, v in enumerate(score):
        if not armed:
            armed = v < clear
            continue
        if v >= threshold and r - last >= cooldown:
            out.append(r)
            last, armed = r, False
    return out


def nab_false_alarms(path: Path, threshold: float, clear: float, cooldown: int
                     ) -> tuple[int, int]:
    """(alerts outside the windows, readings outside the windows) of a saved NAB run."""
    from replay.nab import probation_rows

    z = np.load(path, allow_pickle=False)
    combined, lengths = z["combined"], z["lengths"]
    windows = json.loads(str(z["windows"]))
    alerts = readings = 0
    for j, n in enumerate(lengths):
        inside = np.zeros(n, bool)
        inside[:probation_rows(int(n))] = True          # not scored by NAB either
        for lo, hi in windows[j]:
            inside[lo:hi + 1] = True
        rows = gate_alerts(combined[:n, j], threshold, clear, cooldown)
        alerts += sum(1 for r in rows if not inside[r])
        readings += int((~inside).sum())
    return alerts, readings


def nab_at_defaults(nab_dir: Path, overrides: dict[str, Any]) -> tuple[Counter, int, float]:
    """(alerts by kind outside the windows, readings outside them, seconds) of the NAB
    corpus replayed at defaults."""
    from nab import INTERVAL_MS, corpus_recording, load_corpus

    from replay.backtest import backtest
    from replay.nab import probation_rows, windows_from_timestamps
    from streaming.config import StreamConfig
    from streaming.pipeline.core import StreamCore
    from streaming.pipeline.factory import build_model

    names, values, stamps, windows = load_corpus(nab_dir)
    rec = corpus_recording(names, values)
    cfg = StreamConfig.load(None, {"patching.interval_ms": INTERVAL_MS, **overrides})
    core = StreamCore(cfg, build_model(cfg, None), sensors=list(rec.sensors))
    t0 = time.perf_counter()
    res = backtest(rec, core, progress=False)
    inside = []
    for j, n in enumerate(names):
        m = np.zeros(len(values[j]), bool)
        m[:probation_rows(len(values[j]))] = True
        for lo, hi in windows_from_timestamps(stamps[j], windows[n]):
            m[lo:hi + 1] = True
        inside.append(m)
    kinds: Counter = Counter()
    for a in res.alerts:
        if a["severity"] == "info":
            continue
        row = int((a["ts"] - rec.timestamps[0]) // INTERVAL_MS)
        for s in a["sensors"]:
            j = names.index(s)
            if row < len(inside[j]) and not inside[j][row]:
                kinds[a["kind"]] += 1
                break
    return kinds, int(sum((~m).sum() for m in inside)), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, type=Path, help="the shared data folder")
    ap.add_argument("--sets", default="etth2,ettm1,weather,los_loop")
    ap.add_argument("--max-readings", type=int, default=150_000)
    ap.add_argument("--nab-dir", type=Path, help="the nab folder: replay NAB at defaults")
    ap.add_argument("--nab-scores", type=Path, help="benchmarks/nab.py --save output")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="configuration overrides (default: none, the defaults are measured)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import torch
    from real_forecasting import load

    from replay.backtest import backtest
    from stfm.cli import _set_overrides
    from streaming.config import StreamConfig
    from streaming.pipeline.core import StreamCore
    from streaming.pipeline.factory import build_model

    torch.set_num_threads(1)
    rows = []
    for name in [s for s in args.sets.split(",") if s]:
        rec, _ = load(args.data_dir, name)
        keep = max(1, args.max_readings // len(rec.sensors))
        rec = rec.slice_rows(0, min(keep, rec.n_steps))
        cfg = StreamConfig.load(None, {"patching.interval_ms": rec.interval_ms,
                                       **_set_overrides(args.set)})
        core = StreamCore(cfg, build_model(cfg, None), sensors=list(rec.sensors))
        t0 = time.perf_counter()
        res = backtest(rec, core, progress=False)
        n = int(np.isfinite(rec.values).sum())
        # a data-quality condition that clears sends an "info" alert: not a false alarm
        kinds = Counter(a["kind"] for a in res.alerts if a["severity"] != "info")
        leads = Counter(a["detail"]["explained"][a["sensors"][0]].get("component", "?")
                        for a in res.alerts if a["kind"] == "anomaly")
        rows.append((name, n, kinds, leads, time.perf_counter() - t0))
        print(name, n, dict(kinds), dict(leads), flush=True)
    cfg = StreamConfig.load(None, _set_overrides(args.set))
    a = cfg.alerts
    lines = [f"### False alarms on real data at defaults — "
             f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
             "Command: `python benchmarks/false_alarms.py " + " ".join(sys.argv[1:]) + "`", "",
             f"Defaults: budget alerts.max_per_10k = {a.max_per_10k:g}, anomaly threshold "
             f"{a.anomaly_threshold}, cooldown {a.anomaly_cooldown_steps} steps, value detectors "
             f"{cfg.anomaly.detectors}, probation {cfg.anomaly.probation_readings} readings, "
             f"drift warm-up {cfg.drift.warmup_readings} readings. Real sets without labels: "
             f"every alert counts as false (an upper bound). Overrides: {args.set or 'none'}. "
             "Goal: <= 1 per 10k.", "",
             "| data | readings | anomaly /10k | drift /10k | data-quality raised /10k | "
             "anomaly alerts by leading component | seconds |", "|---|---|---|---|---|---|---|"]
    for name, n, kinds, leads, sec in rows:
        per = {k: kinds.get(k, 0) / n * 1e4 for k in ("anomaly", "drift", "data-quality")}
        lines.append(f"| {name} | {n:,} | {per['anomaly']:.2f} | {per['drift']:.2f} | "
                     f"{per['data-quality']:.2f} | {dict(leads) or '-'} | {sec:.0f} |")
    if args.nab_dir:
        kinds, n, sec = nab_at_defaults(args.nab_dir, _set_overrides(args.set))
        per = {k: kinds.get(k, 0) / n * 1e4 for k in ("anomaly", "drift", "data-quality")}
        lines.append(f"| NAB outside windows (58 series, defaults) | {n:,} | {per['anomaly']:.2f} "
                     f"| {per['drift']:.2f} | {per['data-quality']:.2f} | | {sec:.0f} |")
    if args.nab_scores:
        al, n = nab_false_alarms(args.nab_scores, a.anomaly_threshold, a.anomaly_clear,
                                 a.anomaly_cooldown_steps)
        lines.append(f"| NAB outside windows (fused score through the gate rule, patch 1) | "
                     f"{n:,} | {al / n * 1e4:.2f} | | | {al} alerts | |")
    publish("\n".join(lines) + "\n", args.results, record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
