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

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

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
    args = common.parser(__doc__).parse_args()

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
    rates = {law: crossings(5 + draw()) for law, draw in laws.items()}
    cost = {n: (scorer_ms(n, default), scorer_ms(n, alone)) for n in (200, 2000, 10_000)}
    fast, full = core_rate(alone), core_rate(default)
    budget = BUDGET * 1e4                       # crossings per 10k readings
    ok = [law for law, (_, cal) in rates.items() if cal <= budget]
    bad = [law for law in rates if law not in ok]
    cost_text = ", ".join(f"{d:.1f} vs {a:.1f} {'ms at ' if n == 200 else 'at '}{n:,}"
                          + (" sensors" if n == 200 else "") for n, (d, a) in cost.items())
    body = ["Stationary streams (20 x 20,000 readings), budget 1 per 10k (p <= 1e-4), "
            "crossings per 10k after the first 1,000 readings:", "",
            *common.md_table(["noise", "raw Gaussian surprise", "calibrated"],
                             [(law, f"{raw:.2f}", f"{cal:.2f}")
                              for law, (raw, cal) in rates.items()]),
            "",
            "- Goal (issue 14) a stationary stream stays within the budget (<= 1 per 10k): "
            + "; ".join(([f"{common.verdict(True)} for {', '.join(ok)}"] if ok else [])
                        + ([f"{common.verdict(False)} for {', '.join(bad)}"] if bad else []))
            + ".",
            f"- Cost, `AnomalyScorer.update` per 12-reading step, default detectors "
            f"({default}) vs the residual likelihood alone: {cost_text}. Core path of a "
            f"200-sensor backtest (1 torch thread): {full:,.0f} readings/s with the defaults "
            f"vs {fast:,.0f} with the residual alone ({full / fast - 1:+.0%}). No goal set for "
            "the cost."]
    lo = min(rates, key=lambda k: rates[k][1])
    hi = max(rates, key=lambda k: rates[k][1])
    met = ("**met**" if not bad else "not met" if not ok else
           f"met for {', '.join(ok)}; not for {', '.join(bad)}")
    summary = common.Summary("calibration.py",
                             "alert rate at the budget on stationary noise; detector cost",
                             f"{rates[lo][1]:.2f} ({lo}) to {rates[hi][1]:.2f} ({hi}) per 10k",
                             "<= 1 per 10k", met)
    common.publish(common.Section(
        "calibration", "Alerts",
        "Calibration and cost of the anomaly detectors (benchmarks/calibration.py)",
        "\n".join(body), summary), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
