#!/usr/bin/env python
"""Change points on short series: the system's alerts at defaults against binary segmentation.

Series (one sensor each, 100-1,000 points):

* the labelled check (``labelled``): 90 series with 0-2 level, variance or trend changes;
* the harder check (``harder``): 60 series of 40-800 points with 0-3 changes, variance
  falls as well as rises, a trend through some series, AR noise up to 0.9 and heavier
  tails. Its difficulty was set so that the two baselines score on it about what the issue
  reports for them on the held-back corpus (never 0.644 / 0.575 here against 0.656 / 0.559
  there; binary segmentation 0.681 / 0.692 against 0.691 / 0.650), where on the labelled
  check they score far more (0.726 / 0.681, 0.804 / 0.855): the better predictor of the
  held-back figure. Nothing of the detector was tuned on it;
* the monthly check (``monthly``): 40 series of 60-400 months on a month grid, a yearly
  cycle of 0-3 noise units, AR noise up to 0.6, 0-2 level, variance or trend changes (the
  seasonal monthly series of economics and operations: passengers, sales, admissions);
* the trending check (``trending``): 40 series of 60-600 points on a clear trend (0.05-0.5
  noise units a point), AR noise up to 0.6, 0-2 changes: the trend turns or the level
  shifts on it (most real series with annotated change points trend: populations, prices,
  emissions; the other checks hold weak trends only). Added in session 14 after the detector
  was seen to miss turns and raise alarms on plain trends; its parameters were set before
  the detector was run on it;
* simulated (``replay.simulator``): per seed, a 5-minute series of 150-1,000 points with one
  injected change (level shift, variance change or seasonality change, onset between 50 and
  75 % of the series, the simulator's range), or none (a quarter of the seeds);
* NAB (``--nab-dir``): per labelled anomaly of the real series, a slice of up to 1,000 points
  around it (from up to 500 before), the labelled time as the annotation.

Detectors: the system (``replay.backtest`` with the default configuration, a fresh model;
every drift and anomaly alert is a detection at its ``ts``), and binary segmentation
(offline, sees the whole series: mean-shift cost, BIC-style penalty ``3 sigma^2 log n`` with
``sigma`` the series' standard deviation), as a user would run it with default settings. An
alert's ``ts`` is when what it reports happened (a drift alert's onset, split to the
reading; an anomaly alert's most surprising reading); it is raised at the end of the step
that shows it (``raised_ts``, 12 readings a step), which is scored too.

Score: the F1 of the Turing change point benchmark (van den Burg & Williams 2020): a
detection within ``--margin`` points of an annotation is a true positive (each annotation at
most once), the series start counts as a change point in both sets, F1 per series, averaged;
and its covering metric (each true segment's best overlap with a found one, by length).

Series without a clock (the labelled, harder and trending checks, read at a daily interval)
are run ``--phases`` times (default 4), starting 0, 3, 6 and 9 readings into a 12-reading
step: which readings share a step moves a check's F1 by about 0.01, more than many changes
tried on the detector; the mean is shown, the lowest and highest phase below the table.

    python benchmarks/change_points.py [--nab-dir ../shared/data/nab] [--seeds 40]
        [--phases 4]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from connectors.recordings import Recording  # noqa: E402


def f1(truth: list[int], found: list[int], margin: int) -> float:
    """TCPD F1: both sets include the start (0); matches within ``margin``, one per truth."""
    t, f = sorted({0, *truth}), sorted({0, *found})
    used: set[int] = set()
    tp = 0
    for x in f:
        best = [c for c in t if abs(c - x) <= margin and c not in used]
        if best:
            used.add(min(best, key=lambda c: abs(c - x)))
            tp += 1
    p, r = tp / len(f), tp / len(t)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def cover(truth: list[int], found: list[int], n: int) -> float:
    """The covering metric of TCPD: each true segment's best Jaccard overlap with a found
    one, weighted by its length."""
    def segs(cps: list[int]) -> list[tuple[int, int]]:
        b = sorted({0, *[c for c in cps if 0 < c < n], n})
        return list(zip(b[:-1], b[1:], strict=True))
    total = 0.0
    for a, b in segs(truth):
        total += (b - a) * max(max(0, min(b, d) - max(a, c)) / (max(b, d) - min(a, c))
                               for c, d in segs(found))
    return total / n


def binseg(x: np.ndarray, min_size: int = 5) -> list[int]:
    """Binary segmentation with a mean-shift cost and a BIC-style penalty on the
    standardized series (``3 log n`` in units of its variance)."""
    x = x[~np.isnan(x)] if np.isnan(x).any() else x
    n = len(x)
    pen = 3.0 * max(float(np.var(x)), 1e-18) * np.log(max(n, 2))
    out: list[int] = []
    segs = [(0, n)]
    while segs:
        a, b = segs.pop()
        seg = x[a:b]
        m = len(seg)
        if m < 2 * min_size:
            continue
        c = np.cumsum(seg)
        k = np.arange(min_size, m - min_size + 1)
        left, right = c[k - 1], c[-1] - c[k - 1]
        gain = left**2 / k + right**2 / (m - k) - c[-1] ** 2 / m
        j = int(np.argmax(gain))
        if gain[j] > pen:
            cut = a + int(k[j])
            out.append(cut)
            segs += [(a, cut), (cut, b)]
    return sorted(out)


def simulated(seeds: int) -> list[tuple[str, np.ndarray, list[int]]]:
    from replay.simulator import DriftSpec, SimConfig, simulate

    kinds = [("level_shift", 1.5), ("variance_change", 3.0), ("seasonality_change", 2.0)]
    out = []
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        n = int(rng.choice([150, 300, 600, 1000]))
        drifts = []
        if seed % 4:
            kind, mag = kinds[seed % len(kinds)]
            drifts = [DriftSpec(kind, sensor=0, onset_frac=float(rng.uniform(0.5, 0.75)),
                                magnitude=mag)]
        rec, truths = simulate(SimConfig(n_sensors=3, n_days=n / 288, seed=seed, n_events=0,
                                         drifts=drifts, outage_rate=0.0))
        x = rec.values[:n, 0]
        at = [int((t.onset_ts - rec.timestamps[0]) // rec.interval_ms) for t in truths
              if 0 in [rec.sensors.index(s) for s in t.sensors]]
        out.append((f"sim-{seed}-{drifts[0].kind if drifts else 'none'}", x, at))
    return out


def _pick_changes(rng: np.random.Generator, cand: np.ndarray, count: int, gap: int
                  ) -> list[int]:
    """Up to ``count`` change points drawn from ``cand``, at least ``gap`` apart, sorted."""
    cps: list[int] = []
    for _ in range(count):
        ok = [c for c in cand if all(abs(c - p) >= gap for p in cps)]
        if not ok:
            break
        cps.append(int(rng.choice(ok)))
    return sorted(cps)


def labelled(seed: int) -> tuple[np.ndarray, int, list[int]]:
    """One series of the labelled check: (values, interval ms, change points). 100-1,000
    points with 0-2 level, variance or trend changes; every third hourly with a daily
    cycle, the others daily without one; AR(0-0.6) noise, a third of it Student-t(5)."""
    rng = np.random.default_rng(5000 + seed)
    n = int(rng.integers(100, 1001))
    seasonal = seed % 3 == 0
    interval = 3_600_000 if seasonal else 86_400_000
    phi = float(rng.choice([0.0, 0.3, 0.6]))
    e = (rng.standard_t(5, n) / np.sqrt(5 / 3) if rng.random() < 0.3 else rng.normal(size=n))
    noise = np.zeros(n)
    for t in range(n):
        noise[t] = (phi * noise[t - 1] if t else 0) + e[t] * np.sqrt(1 - phi ** 2)
    x = 10 + np.zeros(n)
    if seasonal:
        x += rng.uniform(1, 3) * np.sin(2 * np.pi * np.arange(n) / 24 + rng.uniform(0, 6.28))
    cps = _pick_changes(rng, np.arange(60 if seasonal else 40, n - 20),
                        int(rng.choice([0, 1, 1, 2])), 40)
    scale = np.ones(n)
    for c in cps:
        kind = rng.choice(["level", "level", "variance", "trend"])
        if kind == "level":
            x[c:] += rng.choice([-1, 1]) * rng.uniform(2, 5)
        elif kind == "variance":
            scale[c:] *= rng.uniform(2.5, 4)
        else:
            x[c:] += rng.choice([-1, 1]) * rng.uniform(3, 6) / 100 * np.arange(n - c)
    return x + noise * scale, interval, cps


def _ar_noise(rng: np.random.Generator, n: int, phi: float, heavy: float) -> np.ndarray:
    """AR(``phi``) noise of unit variance; with probability ``heavy`` its innovations are
    Student-t(4)."""
    e = rng.standard_t(4, n) / np.sqrt(2) if rng.random() < heavy else rng.normal(size=n)
    noise = np.zeros(n)
    for t in range(n):
        noise[t] = (phi * noise[t - 1] if t else 0) + e[t] * np.sqrt(1 - phi ** 2)
    return noise


def _with_changes(rng: np.random.Generator, x: np.ndarray, noise: np.ndarray,
                  cps: list[int], *, falls: bool) -> np.ndarray:
    """``x`` with a level (1.5-5), variance (x2.5-4; ``falls``: up or down) or trend
    (0.03-0.08 a point) change at each of ``cps``, plus ``noise`` scaled by the variance."""
    t_all = np.arange(len(x))
    scale = np.ones(len(x))
    for c in cps:
        kind = rng.choice(["level", "level", "variance", "trend"])
        if kind == "level":
            x = x + (t_all >= c) * rng.choice([-1, 1]) * rng.uniform(1.5, 5)
        elif kind == "variance":
            scale[c:] *= (rng.choice([rng.uniform(2.5, 4), 1 / rng.uniform(2.5, 4)]) if falls
                          else rng.uniform(2.5, 4))
        else:
            x = x + (t_all >= c) * rng.choice([-1, 1]) * rng.uniform(3, 8) / 100 * (t_all - c)
    return x + noise * scale


def harder(seed: int) -> tuple[np.ndarray, int, list[int]]:
    """One series of the harder check (see the module docstring), read at a daily interval:
    (values, interval ms, change points)."""
    rng = np.random.default_rng(9000 + seed)
    n = int(np.exp(rng.uniform(np.log(40), np.log(800))))
    k = int(rng.choice([0, 1, 1, 2, 2, 3]))
    phi = float(rng.choice([0.0, 0.3, 0.6, 0.9]))
    noise = _ar_noise(rng, n, phi, 0.4)
    t_all = np.arange(n)
    x = 10 + rng.normal(0, 0.02) * t_all * (rng.random() < 0.4)     # a trend throughout
    edge = max(5, n // 10)
    cps = _pick_changes(rng, np.arange(edge, n - edge), k, max(10, n // 8))
    return _with_changes(rng, x, noise, cps, falls=True), 86_400_000, cps


def monthly(seed: int) -> tuple[np.ndarray, int, list[int]]:
    """One series of the monthly check, on a month grid: (values, interval ms, change
    points). 60-400 months with a yearly cycle of 0-3 noise units (any phase), AR(0-0.6)
    noise, a third of it Student-t(4), and 0-2 level, variance (up) or trend changes."""
    from connectors.spacing import MONTH_MS

    rng = np.random.default_rng(13000 + seed)
    n = int(np.exp(rng.uniform(np.log(60), np.log(400))))
    phi = float(rng.choice([0.0, 0.3, 0.6]))
    noise = _ar_noise(rng, n, phi, 0.3)
    t_all = np.arange(n)
    x = 10 + rng.uniform(0, 3) * np.sin(2 * np.pi * t_all / 12 + rng.uniform(0, 6.28))
    edge = max(12, n // 10)
    cps = _pick_changes(rng, np.arange(edge, n - edge), int(rng.choice([0, 1, 1, 2])),
                        max(24, n // 6))
    return _with_changes(rng, x, noise, cps, falls=False), MONTH_MS, cps


def trending(seed: int) -> tuple[np.ndarray, int, list[int]]:
    """One series of the trending check, read at a daily interval: (values, interval ms,
    change points). 60-600 points on a clear trend of 0.05-0.5 noise units a point (either
    way), AR(0-0.6) noise, a third of it Student-t(4), and 0-2 changes: the trend turns
    (a new slope in the same range, at least 0.1 from the old) or the level shifts by 2-5
    units on it (a population, a price index, a filling reservoir)."""
    rng = np.random.default_rng(17000 + seed)
    n = int(np.exp(rng.uniform(np.log(60), np.log(600))))
    phi = float(rng.choice([0.0, 0.3, 0.6]))
    noise = _ar_noise(rng, n, phi, 0.3)
    t_all = np.arange(n)
    slope = float(rng.choice([-1, 1]) * rng.uniform(0.05, 0.5))
    x = 10 + slope * t_all
    edge = max(12, n // 10)
    cps = _pick_changes(rng, np.arange(edge, n - edge), int(rng.choice([0, 1, 1, 2])),
                        max(24, n // 6))
    for c in cps:
        if rng.random() < 2 / 3:
            new = slope
            while abs(new - slope) < 0.1:
                new = float(rng.choice([-1, 1]) * rng.uniform(0.05, 0.5))
            x = x + (new - slope) * np.maximum(t_all - c, 0)
            slope = new
        else:
            x = x + (t_all >= c) * rng.choice([-1, 1]) * rng.uniform(2, 5)
    return x + noise, 86_400_000, cps


def nab(nab_dir: Path) -> list[tuple[str, np.ndarray, list[int]]]:
    import pandas as pd

    labels = json.loads((nab_dir / "labels" / "combined_labels.json").read_text())
    out = []
    for name, stamps in sorted(labels.items()):
        if not stamps:
            continue
        df = pd.read_csv(nab_dir / "data" / name)
        ts = pd.to_datetime(df["timestamp"]).to_numpy()
        for s in stamps:
            i = int(np.searchsorted(ts, np.datetime64(pd.Timestamp(s))))
            lo = max(0, i - 500)
            x = df["value"].to_numpy(np.float64)[lo:lo + 1000]
            if len(x) >= 100:
                out.append((f"nab-{name}-{i}", x, [i - lo]))
    return out


def system(x: np.ndarray, iv: int = 86_400_000, phase: int | None = None
           ) -> tuple[list[int], list[int]]:
    """Positions of the default system's alerts on one series read at interval ``iv``:
    (alert times, estimated change times). A series without timestamps has no wall clock,
    so by default it is read at a daily interval, where no daily cycle is assumed (at 5
    minutes the change detector would first wait a day for one). It starts on 2026-03-02, or
    with ``phase`` that many readings after the start of a step (steps of 12 readings
    counted from 1970: which readings share a step moves the figures by about 0.01)."""
    from replay.backtest import backtest
    from streaming.config import StreamConfig
    from streaming.pipeline.core import StreamCore
    from streaming.pipeline.factory import build_model

    t0 = np.datetime64("2026-03-02", "ms").astype(np.int64)
    cfg = StreamConfig.load(None, {"patching.interval_ms": iv})
    if phase is not None:
        step = iv * cfg.patching.patch_len
        t0 = t0 // step * step + phase * iv
    ts = t0 + iv * np.arange(len(x))
    rec = Recording(timestamps=ts, sensors=["s0"], values=x[:, None], interval_ms=iv)
    core = StreamCore(cfg, build_model(cfg, None), sensors=["s0"])
    res = backtest(rec, core, progress=False)
    at, onset = set(), set()
    for a in res.alerts:
        if a["kind"] not in ("drift", "anomaly"):
            continue
        at.add(int((a["raised_ts"] - ts[0]) // iv))     # when raised
        onset.add(int((a["ts"] - ts[0]) // iv))         # what it reports: onset, reading
    return sorted(at), sorted(onset)


def main() -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--nab-dir", type=Path, help="the nab folder (optional)")
    ap.add_argument("--seeds", type=int, default=40, help="simulated series")
    ap.add_argument("--margin", type=int, default=5)
    ap.add_argument("--groups", default="",
                    help="comma-separated groups to run (default: all): labelled, harder, "
                         "monthly, trending, simulated, nab")
    ap.add_argument("--phases", type=int, default=4,
                    help="series without a clock (the labelled and harder checks) are run "
                         "this many times, starting at readings spread over a step, and "
                         "their scores averaged (default 4)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    want = set(args.groups.split(",")) - {""} or {"labelled", "harder", "monthly",
                                                    "trending", "simulated", "nab"}
    groups: dict[str, list[tuple[np.ndarray, int, list[int]]]] = {}
    if "labelled" in want:
        groups["labelled check"] = [labelled(s) for s in range(90)]
    if "harder" in want:
        groups["harder check"] = [harder(s) for s in range(60)]
    if "monthly" in want:
        groups["monthly check"] = [monthly(s) for s in range(40)]
    if "trending" in want:
        groups["trending check"] = [trending(s) for s in range(40)]
    if "simulated" in want:
        groups["simulated (5 min)"] = [(x, 300_000, t) for _, x, t in simulated(args.seeds)]
    if args.nab_dir and "nab" in want:
        groups["NAB slices (5 min)"] = [(x, 300_000, t) for _, x, t in nab(args.nab_dir)]
    rows = []
    spread: dict[str, list[tuple[float, float]]] = {}     # group -> (F1, cover) per phase
    for label, series in groups.items():
        cells: dict[str, list[float]] = {k: [] for k in (
            "alert", "alert12", "est", "est_cover", "bs", "bs_cover", "never", "never_cover")}
        clockless = (label in ("labelled check", "harder check", "trending check")
                     and args.phases > 1)
        phases = ([round(k * 12 / args.phases) for k in range(args.phases)] if clockless
                  else [None])
        per_phase = {ph: ([], []) for ph in phases}
        for x, iv, truth in series:
            bs = binseg(x)
            for ph in phases:
                found, onsets = system(x, iv, ph)
                est, est_cover = f1(truth, onsets, args.margin), cover(truth, onsets, len(x))
                per_phase[ph][0].append(est)
                per_phase[ph][1].append(est_cover)
                for k, v in (("alert", f1(truth, found, args.margin)),
                             ("alert12", f1(truth, found, 12)),
                             ("est", est), ("est_cover", est_cover),
                             ("bs", f1(truth, bs, args.margin)),
                             ("bs_cover", cover(truth, bs, len(x))),
                             ("never", f1(truth, [], args.margin)),
                             ("never_cover", cover(truth, [], len(x)))):
                    cells[k].append(v)
        if clockless:
            spread[label] = [(float(np.mean(a)), float(np.mean(b)))
                             for a, b in per_phase.values()]
        rows.append((label, len(series), *(float(np.mean(v)) for v in cells.values())))
        print(rows[-1], spread.get(label), flush=True)
    seconds = time.perf_counter() - t0
    body = [f"TCPD F1 (margin {args.margin} points; the start counts as a change point) and "
            "covering, mean over series. Ours: drift + anomaly alerts at defaults, online, by "
            "when each was raised (`raised_ts`: the end of the step that showed it) and by its "
            "`ts`, when what it reports happened (a drift's onset split to the reading, an "
            "anomaly's most surprising reading); binary segmentation: offline, mean-shift "
            "cost, BIC-style penalty. "
            "Series without a clock (the labelled, harder and trending checks; the held-back "
            "corpus) "
            "are read at a daily interval, where no daily cycle is assumed, each run "
            f"{args.phases} times starting at readings spread over a 12-reading step "
            "(which readings share a step moves the figures), the mean shown. "
            f"{seconds:.0f} s.",
            "", *common.md_table(
                ["series", "n", "ours F1: raised_ts", "raised_ts, margin 12",
                 "ours F1: ts", "ours cover", "binseg F1", "binseg cover",
                 "never F1", "never cover"],
                [(label, n, *(f"{x:.3f}" for x in xs)) for label, n, *xs in rows]),
            "",
            "- Goal (issue 29) F1 >= 0.75 and cover >= 0.70 on the held-back corpus at "
            "defaults: **unknown** — that corpus is held back and re-measured by the issue's "
            "author. On these checks (by the alerts' ts): "
            + "; ".join(f"{r[0]} F1 {r[4]:.3f} cover {r[5]:.3f} (binseg {r[6]:.3f} / "
                        f"{r[7]:.3f}, never {r[8]:.3f} / {r[9]:.3f})" for r in rows) + "."]
    if spread:
        body.append("- Over the start phases (F1 / cover, lowest and highest phase): " + "; ".join(
            f"{label} F1 {min(a for a, _ in v):.3f}-{max(a for a, _ in v):.3f}, cover "
            f"{min(b for _, b in v):.3f}-{max(b for _, b in v):.3f}"
            for label, v in spread.items()) + ".")
    hard = next((r for r in rows if r[0] == "harder check"), None)
    verdict = "unknown"
    if hard is not None:
        likely = hard[4] >= 0.75 and hard[5] >= 0.70
        verdict = "unknown (likely met)" if likely else "unknown (likely not met)"
        body.append(
            f"- The harder check, whose baselines score about what they score on the held-back "
            f"corpus, predicts it: F1 {hard[4]:.3f}, cover {hard[5]:.3f}, so the goal is "
            f"{'likely met' if likely else '**likely not met**'} there.")
    summary = common.Summary("change_points.py", "TCPD F1 and covering, system at defaults",
                             ", ".join(f"{r[0]} {r[4]:.3f} / {r[5]:.3f}" for r in rows),
                             "F1 >= 0.75, cover >= 0.70 on the held-back corpus", verdict)
    common.publish(common.Section("change_points", "Alerts",
                                  "Change points on short series (benchmarks/change_points.py)",
                                  "\n".join(body), summary), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
