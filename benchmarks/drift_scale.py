#!/usr/bin/env python
"""What drift monitoring and the alert gate cost per closed step at 200 / 2,000 / 10,000
sensors (issue 17, item 1).

Per closed step, after the warm-up (``drift.warmup_steps`` plus a full KSWIN window), with the
default configuration otherwise: ``DriftMonitor.update`` on three channels (abs_residual,
seasonal_residual, embedding_distance: skewed positive statistics in units of the sensor's
std, 1 % missing, 1 % of the sensors rising 2.5-fold on one channel during the timed steps)
for each ``drift.detector``; of that, the time in ``TailCalibrator.learn_many`` and in
``log_ndtr``/``ndtri``; ``AlertGate.update`` for the "anomaly" kind (a calibrated score for
every sensor, evidence where it crosses ``alerts.anomaly_threshold``) and for the "drift" kind
(the monitor's evidence), and ``AlertGate.name_events``. Median ms per step over the timed
steps (fewer when a configuration is slow: at least 3, until ``--budget-s`` is spent).

    python benchmarks/drift_scale.py [--before before.json] [--json-out now.json]

``--before`` puts the figures of an earlier run (its ``--json-out``, e.g. of the code before
a change) next to this run's in the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import publish  # noqa: E402

CHANNELS = ("abs_residual", "seasonal_residual", "embedding_distance")
PARTS = ("drift", "det", "cal", "ndtr", "gate_anomaly", "gate_drift", "name_events")
DETECTORS = ("PageHinkleyArray", "ADWINArray", "KSWINArray")


class _Clock:
    """Wraps a function and adds the seconds spent in it to ``total``."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.total = fn, 0.0

    def __call__(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.fn(*a, **kw)
        finally:
            self.total += time.perf_counter() - t0


def _stats(rng: np.random.Generator, n: int, k: int, rise: np.ndarray,
           rise_ch: np.ndarray, rise_at: int) -> dict[str, np.ndarray]:
    shape = {"abs_residual": (6.0, 0.13), "seasonal_residual": (3.0, 0.4),
             "embedding_distance": (4.0, 0.15)}
    out = {}
    for j, c in enumerate(CHANNELS):
        a, s = shape[c]
        v = rng.gamma(a, s, n)
        if k >= rise_at:
            v[rise & (rise_ch == j)] *= 2.5
        v[rng.random(n) < 0.01] = np.nan
        out[c] = v
    return out


def measure(n: int, detector: str, timed: int, budget_s: float, seed: int = 0
            ) -> dict[str, float]:
    """Median ms per step of each part at ``n`` sensors with ``detector``."""
    import streaming.alerts.detectors as det_mod
    import streaming.alerts.drift as drift_mod
    from streaming.alerts.alert_gate import AlertGate, Evidence
    from streaming.alerts.calibration import TailCalibrator, exponent, score_of
    from streaming.config import StreamConfig

    cfg = StreamConfig.from_dict({"drift": {"detector": detector}})
    p = cfg.patching
    mon = drift_mod.DriftMonitor(cfg.drift, step_ms=p.interval_ms * p.patch_len,
                                 patch_len=p.patch_len)
    gate = AlertGate(cfg)
    names = [f"s{i:05d}" for i in range(n)]
    rng = np.random.default_rng(seed)
    warm = mon.warmup + cfg.drift.kswin_window + 5
    rise = rng.random(n) < 0.01
    rise_ch = rng.integers(0, 3, n)
    m = exponent(cfg.alerts.max_per_10k, cfg.alerts.anomaly_threshold)
    thr = cfg.alerts.anomaly_threshold
    for i in range(0, n, 50):                      # some events to name
        gate.log_event({"type": "roadworks", "ts": 0, "attrs": {"duration_steps": 10**6}},
                       names[i])
    cal = _Clock(TailCalibrator.learn_many)

    def learn_many(self: Any, s: np.ndarray) -> np.ndarray:
        return cal(self, s)
    ndtr_fns = {k: _Clock(getattr(drift_mod, k)) for k in ("log_ndtr", "ndtri")}
    # the array detectors' own update (absent before they existed: river's per-sensor loop)
    det_cls = [getattr(det_mod, c) for c in DETECTORS if hasattr(det_mod, c)]
    det_clock = {c: _Clock(c.update) for c in det_cls}

    def timed_update(c: type) -> Any:
        def update(self: Any, x: np.ndarray, at: int = 0) -> np.ndarray:
            return det_clock[c](self, x, at)
        return update
    out: dict[str, list[float]] = {k: [] for k in PARTS}
    t_start = None
    step_ms = p.interval_ms * p.patch_len
    for k in range(warm + timed):
        if k == warm:
            TailCalibrator.learn_many = learn_many     # type: ignore[method-assign]
            for name, fn in ndtr_fns.items():
                setattr(drift_mod, name, fn)
            for c in det_cls:
                c.update = timed_update(c)
            t_start = time.perf_counter()
        stats = _stats(rng, n, k, rise, rise_ch, warm + 1)
        score = score_of(rng.random(n), m)
        score[rng.random(n) < 0.01] = np.nan
        ev = {names[i]: Evidence(float(score[i]), "anomaly-likelihood", "residual", "high")
              for i in np.flatnonzero(score >= thr).tolist()}
        ts = k * step_ms
        c0, n0 = cal.total, sum(f.total for f in ndtr_fns.values())
        d0 = sum(f.total for f in det_clock.values())
        t0 = time.perf_counter()
        found = mon.update(names, stats, k, ts)
        t1 = time.perf_counter()
        alerts = gate.update("anomaly", k, ts, ev, names, score)
        t2 = time.perf_counter()
        alerts += gate.update("drift", k, ts, found)
        t3 = time.perf_counter()
        gate.name_events(alerts, ts)
        t4 = time.perf_counter()
        if k >= warm:
            out["drift"].append(t1 - t0)
            out["cal"].append(cal.total - c0)
            out["det"].append(sum(f.total for f in det_clock.values()) - d0)
            out["ndtr"].append(sum(f.total for f in ndtr_fns.values()) - n0)
            out["gate_anomaly"].append(t2 - t1)
            out["gate_drift"].append(t3 - t2)
            out["name_events"].append(t4 - t3)
            if k - warm + 1 >= 3 and time.perf_counter() - t_start > budget_s:
                break
    TailCalibrator.learn_many = cal.fn                 # type: ignore[method-assign]
    for name, fn in ndtr_fns.items():
        setattr(drift_mod, name, fn.fn)
    for c in det_cls:
        c.update = det_clock[c].fn
    res = {key: float(np.median(v) * 1000) for key, v in out.items()}
    if detector != "page_hinkley" and not any(c.__name__ != "PageHinkleyArray"
                                              for c in det_cls):
        del res["det"]                             # river's detectors, inside the loop
    res["steps"] = len(out["drift"])
    return res


def _row(n: int, det: str, r: dict[str, float], label: str) -> str:
    total = r["drift"] + r["gate_anomaly"] + r["gate_drift"] + r["name_events"]
    d = f"{r['det']:.1f}" if "det" in r else "–"
    return (f"| {n:,} | {det} | {label} | {r['drift']:.1f} | {d} | {r['cal']:.1f} | "
            f"{r['ndtr']:.1f} | {r['gate_anomaly']:.2f} | {r['gate_drift']:.2f} | "
            f"{r['name_events']:.2f} | **{total:.1f}** | {int(r['steps'])} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="200,2000,10000")
    ap.add_argument("--detectors", default="page_hinkley,adwin,kswin")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (at most)")
    ap.add_argument("--budget-s", type=float, default=20.0,
                    help="stop timing a configuration after this long (at least 3 steps)")
    ap.add_argument("--before", type=Path, help="an earlier run's --json-out, shown alongside")
    ap.add_argument("--before-label", default="before")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    sizes = [int(s) for s in args.sizes.split(",")]
    dets = args.detectors.split(",")
    now: dict[str, dict[str, float]] = {}
    for det in dets:
        for n in sizes:
            r = measure(n, det, args.steps, args.budget_s)
            now[f"{det}/{n}"] = r
            print(f"{det} n={n}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()),
                  flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(now, indent=1))
    before = json.loads(args.before.read_text()) if args.before else {}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Drift monitoring and alert gate at scale (benchmarks/drift_scale.py, "
             f"issue 17) — {stamp}", "",
             "Command: `python benchmarks/drift_scale.py " + shlex.join(sys.argv[1:]) + "`", "",
             *([f"Rows `{args.before_label}`: the figures of an earlier run of this script "
                f"(`--json-out`), in the same table for comparison.", ""]
               if args.before else []),
             "Median ms per closed step after the warm-up, 3 drift channels, default "
             "configuration. `drift` is `DriftMonitor.update`, of which `det` is the array "
             "detector's update (– where river's detectors ran in a per-sensor loop), `cal` "
             "is `TailCalibrator.learn_many` and `ndtr` is `log_ndtr` + `ndtri`; "
             "`gate anomaly` "
             "is `AlertGate.update` with a score for every sensor, `gate drift` with the "
             "monitor's evidence; total = drift + gates + `name_events`.", "",
             "| sensors | detector | code | drift | det | cal | ndtr | gate anomaly | "
             "gate drift | name_events | total | steps |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for det in dets:
        for n in sizes:
            key = f"{det}/{n}"
            if key in before:
                lines.append(_row(n, det, before[key], args.before_label))
            lines.append(_row(n, det, now[key], "now" if before else "this run"))
    publish("\n".join(lines) + "\n", args.results, record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
