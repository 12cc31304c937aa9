#!/usr/bin/env python
"""The anomaly score's calibration on stationary streams, and what the detectors cost.

* Calibration: 20 stationary streams of 20,000 readings per noise law (Gaussian, Laplace,
  Student-t with 5, 4, 3 degrees of freedom) through the level detector's windowed Gaussian
  and ``TailCalibrator`` at the defaults; per 10,000 readings after the first 1,000: how often
  the raw Gaussian surprise and the calibrated tail probability cross the budget
  (``alerts.max_per_10k`` = 1, i.e. p <= 1e-4).
* Cost: ``AnomalyScorer.update`` per step of 12 readings at 200 / 2,000 / 10,000 sensors
  with the default detectors and with the residual likelihood alone; and the core path
  (``replay.backtest`` of a 200-sensor simulated recording, 1 torch thread) both ways, in
  one process.

    python benchmarks/calibration.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import publish  # noqa: E402

BUDGET = 1e-4


def crossings(noise: np.ndarray) -> tuple[float, float]:
    """(raw, calibrated) crossings of the budget per 10k readings after the first 1,000."""
    from streaming.alerts.calibration import TailCalibrator
    from streaming.alerts.novelty import WindowedGaussian

    wg, cal = WindowedGaussian(1000), TailCalibrator(100, 0.2, 8000)
    s = np.stack([wg.learn_many(row) for row in noise])
    p = np.stack([cal.learn_many(row) for row in s])
    return (float((s[1000:] >= -np.log(BUDGET)).mean() * 1e4),
            float((p[1000:] <= BUDGET).mean() * 1e4))


def scorer_ms(n: int, detectors: str) -> float:
    """Median ms per ``AnomalyScorer.update`` of one 12-reading step for ``n`` sensors."""
    from streaming.alerts.anomaly import AnomalyScorer
    from streaming.config import StreamConfig

    sc = AnomalyScorer(StreamConfig.from_dict({"anomaly": {"detectors": detectors}}))
    names = [f"s{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    times = []
    for k in range(40):
        vals, res = rng.normal(size=(n, 12)), np.abs(rng.normal(size=n))
        t0 = time.perf_counter()
        sc.update(k, 0, names, res, None, vals, explain_at=0.9)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[10:]) * 1000)


def core_rate(detectors: str) -> float:
    """Readings/s of ``replay.backtest`` on a 200-sensor simulated recording."""
    from replay.backtest import backtest
    from replay.simulator import SimConfig, simulate
    from streaming.config import StreamConfig
    from streaming.pipeline.core import StreamCore
    from streaming.pipeline.factory import build_model

    rec, _ = simulate(SimConfig(n_sensors=200, n_days=5, seed=1, n_events=0))
    cfg = StreamConfig.load(None, {"anomaly.detectors": detectors})
    core = StreamCore(cfg, build_model(cfg, None), sensors=list(rec.sensors))
    t0 = time.perf_counter()
    backtest(rec, core, progress=False)
    return rec.values.size / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import torch

    from streaming.config import AnomalyConfig

    torch.set_num_threads(1)
    default, alone = AnomalyConfig().detectors, "residual"
    rng = np.random.default_rng(2)
    laws = {"Gaussian": lambda: rng.normal(size=(20_000, 20)),
            "Laplace": lambda: rng.laplace(size=(20_000, 20)),
            "Student-t(5)": lambda: rng.standard_t(5, size=(20_000, 20)),
            "Student-t(4)": lambda: rng.standard_t(4, size=(20_000, 20)),
            "Student-t(3)": lambda: rng.standard_t(3, size=(20_000, 20))}
    lines = [f"### Calibration and cost of the anomaly detectors — "
             f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
             "Command: `python benchmarks/calibration.py " + " ".join(sys.argv[1:]) + "`", "",
             "Stationary streams (20 x 20,000 readings), budget 1 per 10k (p <= 1e-4), "
             "after the first 1,000 readings:", "",
             "| noise | raw Gaussian surprise crossings /10k | calibrated crossings /10k |",
             "|---|---|---|"]
    for law, draw in laws.items():
        raw, cal = crossings(5 + draw())
        lines.append(f"| {law} | {raw:.2f} | {cal:.2f} |")
    lines += ["", f"Cost, same process: `AnomalyScorer.update` per 12-reading step, default "
              f"detectors ({default}) vs the residual likelihood alone:", "",
              "| sensors | default (ms/step) | residual alone (ms/step) |", "|---|---|---|"]
    for n in (200, 2000, 10_000):
        lines.append(f"| {n:,} | {scorer_ms(n, default):.1f} | {scorer_ms(n, alone):.1f} |")
    fast, full = core_rate(alone), core_rate(default)
    lines += ["", f"Core path (`replay.backtest`, 200 simulated sensors x 5 days, 1 torch "
              f"thread): {full:,.0f} readings/s with the default detectors, {fast:,.0f} with the "
              f"residual likelihood alone ({full / fast - 1:+.0%})."]
    publish("\n".join(lines) + "\n", args.results, record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
