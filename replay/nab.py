"""Numenta Anomaly Benchmark scoring, implemented from NAB's published rules.

The rules (``../shared/data/nab/SCORING.md``): per file, a probationary period that is not
scored; anomaly windows; the scaled sigmoid that rewards early detections inside a window and
charges false positives by their distance after the preceding window; the application
profiles; one threshold per profile for the whole corpus, chosen to maximize the raw score;
normalization so that the null detector scores 0 and the perfect one 100.

The threshold sweep is exact and vectorized: every distinct anomaly score is a candidate, and
the raw score of all candidates comes from cumulative sums (false positives) and the record
rows of each window's running maximum (true positives), not from re-scoring per threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np

PROFILES: dict[str, dict[str, float]] = {
    "standard": {"tp": 1.0, "fn": 1.0, "fp": 0.11},
    "reward_low_FP_rate": {"tp": 1.0, "fn": 1.0, "fp": 0.22},
    "reward_low_FN_rate": {"tp": 1.0, "fn": 2.0, "fp": 0.11},
}


def sigma(x: np.ndarray | float) -> np.ndarray:
    """NAB's scaled sigmoid: ``2 / (1 + exp(5x)) - 1`` for ``x <= 3``, ``-1`` beyond."""
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        y = 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    return np.where(x > 3.0, -1.0, y)


def probation_rows(n_rows: int) -> int:
    """Rows at the start of a file that are never scored."""
    return int(min(math.floor(0.15 * n_rows), 0.15 * 5000))


@dataclass
class NabFile:
    """One data file: its anomaly scores per row and its windows as inclusive row ranges."""

    name: str
    scores: np.ndarray                      # float [n] in [0, 1]
    windows: list[tuple[int, int]] = field(default_factory=list)   # [(L, R)] row indices

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, np.float64)
        if self.scores.ndim != 1:
            raise ValueError(f"{self.name}: scores must be one value per row")
        if np.isnan(self.scores).any():
            raise ValueError(f"{self.name}: anomaly scores contain NaN")
        last = -1
        for lo, hi in self.windows:
            if not 0 <= lo <= hi < len(self.scores) or lo <= last:
                raise ValueError(f"{self.name}: window [{lo}, {hi}] is out of order or outside "
                                 f"the file's {len(self.scores)} rows")
            last = hi


def windows_from_timestamps(timestamps: np.ndarray, windows: list[tuple[int, int]]
                            ) -> list[tuple[int, int]]:
    """Map ``[start, end]`` window timestamps (same unit as ``timestamps``) to row ranges:
    the rows whose timestamps lie inside, as NAB labels them."""
    ts = np.asarray(timestamps)
    out = []
    for start, end in windows:
        lo = int(np.searchsorted(ts, start, side="left"))
        hi = int(np.searchsorted(ts, end, side="right")) - 1
        if hi >= lo:
            out.append((lo, hi))
    return out


def _row_weights(f: NabFile, prof: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the weighted score of a detection there, and whether it is inside a window.
    Probationary rows get weight 0 and count as outside (they are never scored)."""
    n = len(f.scores)
    w = np.full(n, -prof["fp"])
    inside = np.zeros(n, bool)
    prev: tuple[int, int] | None = None
    bounds = [*f.windows, (n, n)]
    cursor = 0
    for lo, hi in bounds:
        if prev is not None and cursor < lo:
            r_prev, width = prev[1], prev[1] - prev[0] + 1
            i = np.arange(cursor, lo)
            x = np.abs(i - r_prev) / max(width - 1, 1)
            w[cursor:lo] = prof["fp"] * sigma(x)
        if lo >= n:
            break
        width = hi - lo + 1
        i = np.arange(lo, hi + 1)
        x = -(hi - i + 1) / width
        w[lo:hi + 1] = prof["tp"] * sigma(x) / sigma(-1.0)
        inside[lo:hi + 1] = True
        prev = (lo, hi)
        cursor = hi + 1
    w[:probation_rows(n)] = 0.0
    return w, inside


@dataclass
class NabScore:
    profile: str
    threshold: float
    raw: float
    score: float            # normalized: null = 0, perfect = 100
    tp: int                 # windows detected
    fn: int
    fp: int                 # detected rows outside windows
    n_windows: int


def score_corpus(files: list[NabFile], profile: str = "standard",
                 threshold: float | None = None) -> NabScore:
    """Normalized NAB score of ``files`` under ``profile``; the threshold is optimized over
    every distinct score unless given."""
    prof = PROFILES[profile]
    cand = np.unique(np.concatenate([f.scores for f in files] + [np.array([np.inf])]))[::-1]
    if threshold is not None:
        cand = np.array([threshold], np.float64)
    # candidates in descending order; index j means "detect where score >= cand[j]"
    fp_sum = np.zeros(len(cand))
    fp_cnt = np.zeros(len(cand), np.int64)
    tp_diff = np.zeros(len(cand) + 1)
    det_diff = np.zeros(len(cand) + 1, np.int64)
    n_windows = 0
    desc = -cand                            # ascending, for searchsorted
    for f in files:
        w, inside = _row_weights(f, prof)
        n = len(f.scores)
        start = probation_rows(n)
        out_rows = np.flatnonzero(~inside[start:]) + start
        if len(out_rows):
            # a row with score s is detected for every candidate <= s: from index pos(s) on
            pos = np.searchsorted(desc, -f.scores[out_rows], side="left")
            np.add.at(fp_sum, pos[pos < len(cand)], w[out_rows][pos < len(cand)])
            np.add.at(fp_cnt, pos[pos < len(cand)], 1)
        for lo, hi in f.windows:
            n_windows += 1
            lo_s = max(lo, start)
            # no detection: -fn for every candidate, adjusted below where detected
            tp_diff[0] += -prof["fn"]
            if lo_s > hi:
                continue
            s = f.scores[lo_s:hi + 1]
            run = np.maximum.accumulate(s)
            rec = np.flatnonzero(np.r_[True, run[1:] > run[:-1]])     # record rows
            vals = run[rec]
            # for candidates c with vals[k-1] < c <= vals[k], the earliest detection is rec[k]
            prev_val = -np.inf
            for k in range(len(rec) - 1, -1, -1):
                hi_c, lo_c = vals[k], (vals[k - 1] if k > 0 else prev_val)
                # candidate indices j with lo_c < cand[j] <= hi_c
                j0 = int(np.searchsorted(desc, -hi_c, side="left"))
                j1 = int(np.searchsorted(desc, -lo_c, side="left")) if k > 0 else len(cand)
                if j1 > j0:
                    gain = w[lo_s + rec[k]] + prof["fn"]
                    tp_diff[j0] += gain
                    tp_diff[j1] -= gain
                    det_diff[j0] += 1
                    det_diff[j1] -= 1
    raw = np.cumsum(tp_diff)[:-1] + np.cumsum(fp_sum)
    detected = np.cumsum(det_diff)[:-1]
    fps = np.cumsum(fp_cnt)
    best = int(np.argmax(raw)) if threshold is None else 0
    null = -prof["fn"] * n_windows
    perfect = prof["tp"] * n_windows
    norm = 100.0 * (raw[best] - null) / (perfect - null) if perfect != null else 0.0
    return NabScore(profile, float(cand[best]), float(raw[best]), float(norm),
                    int(detected[best]), int(n_windows - detected[best]), int(fps[best]),
                    n_windows)


def score_alerts(files: list[NabFile], fire: Callable[[np.ndarray, float], np.ndarray],
                 profiles: Iterable[str] = tuple(PROFILES), grid: int = 200,
                 floor: float = 0.0) -> dict[str, NabScore]:
    """NAB scores, one threshold per profile, of the *alerts* a rule raises on each file's
    score series: ``fire(scores, threshold)`` gives the rows that alert at that threshold
    (e.g. the alert gate's hysteresis and cooldown, ``alert_gate.gate_series``), so what is
    scored is what a user would be paged with, not every row above the threshold.

    Thresholds tried: every distinct score above ``floor`` when there are at most ``grid``,
    else ``grid`` quantiles of them and then every distinct score between the neighbours of
    each profile's best quantile (the rule's alerts are not monotone in the threshold, so no
    cumulative sweep as in ``score_corpus``)."""
    vals = np.unique(np.concatenate([f.scores[f.scores > floor] for f in files]))
    if not len(vals):
        vals = np.array([np.inf])
    names = list(profiles)

    def at(th: float) -> dict[str, NabScore]:
        hits = []
        for f in files:
            d = np.zeros(len(f.scores))
            d[np.asarray(fire(f.scores, th), np.int64)] = 1.0
            hits.append(NabFile(f.name, d, f.windows))
        return {p: replace(score_corpus(hits, p, threshold=0.5), threshold=float(th))
                for p in names}

    def best() -> dict[str, NabScore]:
        return {p: max(tried.values(), key=lambda s, p=p: s[p].raw)[p] for p in names}

    coarse = vals if len(vals) <= grid else np.unique(np.quantile(vals, np.linspace(0, 1, grid)))
    coarse = np.append(coarse, np.inf)              # never alerting is a candidate too
    tried = {float(th): at(th) for th in coarse}
    if len(vals) <= grid:
        return best()
    keys = sorted(tried)
    for sc in best().values():                      # refine around each profile's best
        k = keys.index(sc.threshold)
        lo, hi = keys[max(k - 1, 0)], keys[min(k + 1, len(keys) - 1)]
        for th in vals[(vals > lo) & (vals < hi)]:
            if float(th) not in tried:
                tried[float(th)] = at(th)
    return best()
