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
a change) next to this run's in the table. Recording merges rows by (sensors, detector): the
section keeps the recorded rows of the pairs this run did not measure, each with its own run
(``benchmarks/common.py``); the goal is read from the merged table.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

CHANNELS = ("abs_residual", "seasonal_residual", "embedding_distance")
PARTS = ("drift", "det", "cal", "ndtr", "gate_anomaly", "gate_drift", "name_events")
DETECTORS = ("PageHinkleyArray", "ADWINArray", "KSWINArray")
KEY = "drift_scale"
HEADER = ["sensors", "detector", "drift", "det", "cal", "ndtr", "gate anomaly", "gate drift",
          "total", "before: total", "run"]
GOAL_MS, GOAL_SENSORS, DEFAULT = 10.0, 10_000, "page_hinkley"


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


def _total(r: dict[str, float]) -> float:
    return r["drift"] + r["gate_anomaly"] + r["gate_drift"] + r["name_events"]


def _cells(n: int, det: str, r: dict[str, float], before: dict[str, float] | None,
           run: str) -> list[str]:
    """A row of the section's table (``before``: the same key in an earlier run's json)."""
    d = f"{r['det']:.1f}" if "det" in r else "–"
    return [f"{n:,}", det, f"{r['drift']:.1f}", d, f"{r['cal']:.1f}", f"{r['ndtr']:.1f}",
            f"{r['gate_anomaly']:.2f}", f"{r['gate_drift']:.2f}", f"**{_total(r):.1f}**",
            f"{_total(before):.1f}" if before else "–", run]


def main() -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--sizes", type=common.int_list, default="200,2000,10000",
                    help="numbers of sensors")
    ap.add_argument("--detectors", default="page_hinkley,adwin,kswin")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (at most)")
    ap.add_argument("--budget-s", type=float, default=20.0,
                    help="stop timing a configuration after this long (at least 3 steps)")
    ap.add_argument("--before", type=Path, help="an earlier run's --json-out, shown alongside")
    ap.add_argument("--before-label", default="before")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    sizes = args.sizes
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
    section = render(now, before, sizes, dets, args)
    detail = common.md_table(["sensors", "detector", *PARTS, "total", "steps"],
                             [[f"{n:,}", det, *(f"{now[f'{det}/{n}'].get(k, float('nan')):.2f}"
                                                for k in PARTS),
                               f"{_total(now[f'{det}/{n}']):.2f}", int(now[f"{det}/{n}"]["steps"])]
                              for det in dets for n in sizes])
    common.publish(section, args, detail="\n".join(detail))
    return 0


def render(now: dict[str, dict[str, float]], before: dict[str, dict[str, float]],
           sizes: list[int], dets: list[str], args: Any) -> common.Section:
    """The section: this run's rows merged with the recorded rows of the (sensors, detector)
    pairs it did not measure, and the goal read from the merged table."""
    when = datetime.now(UTC)
    run = f"{when:%Y-%m-%d %H:%M}, {common.code_version(short=True)}"
    new = {(f"{n:,}", det): _cells(n, det, now[f"{det}/{n}"], before.get(f"{det}/{n}"), run)
           for det in dets for n in sizes}
    old = {k: v for k, v in common.recorded_rows(args.results, KEY, 2).items()
           if len(v) == len(HEADER)}
    order = {d: i for i, d in enumerate(("page_hinkley", "adwin", "kswin"))}
    table = sorted({**old, **new}.values(),
                   key=lambda c: (order.get(c[1], 9), c[1], common.number(c[0]) or 0))
    goal_row = next((c for c in table
                     if common.number(c[0]) == GOAL_SENSORS and c[1] == DEFAULT), None)
    total = common.number(goal_row[8]) if goal_row else None
    ok = total is not None and total <= GOAL_MS
    body = ["Median ms per closed step after the warm-up, 3 drift channels, defaults "
            f"(`{DEFAULT}` is the default detector). `drift` = `DriftMonitor.update`, of which "
            "`det` is the array detector's update (– where river's detectors ran in a "
            "per-sensor loop); `cal` = `TailCalibrator.learn_many`, `ndtr` = `log_ndtr` + "
            "`ndtri`; `gate anomaly` = `AlertGate.update` with a score for every sensor, `gate "
            "drift` with the monitor's evidence; total = drift + gates + `name_events`. `before: "
            "total` = the same row in an earlier run's `--json-out` (`--before`"
            + (f": {args.before_label}" if before else "") + "). The rows of (sensors, "
            "detector) pairs a run did not measure are those of earlier runs (column run).", "",
            *common.md_table(HEADER, table, align="rlrrrrrrrrl"), "",
            f"- Goal (issue 17) drift + alert gate <= {GOAL_MS:g} ms per step at "
            f"{GOAL_SENSORS:,} sensors: " + (f"{common.verdict(ok)} for the default {DEFAULT} "
                                             f"monitor, {total:.1f} ms." if goal_row
                                             else "not measured.")]
    summary = common.Summary(
        "drift_scale.py", "drift monitor + alert gate ms per step",
        f"{total:.1f} ms at {GOAL_SENSORS:,} sensors" if goal_row else
        f"not measured at {GOAL_SENSORS:,} sensors",
        f"<= {GOAL_MS:g} ms at {GOAL_SENSORS:,} sensors",
        common.index_verdict(ok) if goal_row else "–")
    return common.Section(KEY, "Alerts",
                          "Drift monitoring and alert gate at scale (benchmarks/drift_scale.py)",
                          "\n".join(body), summary, when=when)


if __name__ == "__main__":
    raise SystemExit(main())
