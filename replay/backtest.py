"""Backtest: the live worker's online core driven by a recorded file, in time order, no Kafka.

The recording is cut into micro-batches of grid rows and fed to the same ``StreamCore`` the
live worker uses (events first, then readings, as a worker applies a fetched batch), so a
figure measured here holds for the live system. Deterministic under the model seed.

Two feedback modes:

* ``delayed`` (default; what a live system lives in): a forecast is scored before anything
  of its horizon is known and the model learns from it only once the stream has delivered
  all of its true values.
* ``immediate`` (the FSNet/OneNet protocol, for comparison with older tables only): right
  after each forecast the model is told its true values and updated before the next one.

The report: cumulative online MSE/MAE over time, per-sensor errors, alerts, model versions,
steps per second, and PNG plots (error over time with alert markers; forecasts vs truth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from connectors.recordings import Recording
from connectors.schemas import EventBatch, ReadingBatch, to_json
from streaming.pipeline.core import StreamCore

FEEDBACK = ("delayed", "immediate")


@dataclass
class BacktestResult:
    """What one pass produced; errors are forecast minus truth on the input scale."""

    sensors: list[str]
    steps: np.ndarray               # int64 [F]: step of each forecast block
    ts: np.ndarray                  # int64 [F]: its timestamp (end of the step)
    rows: np.ndarray                # int64 [F]: recording row of the first horizon point
    yhat: np.ndarray                # float32 [F, N, H]
    truth: np.ndarray               # float32 [F, N, H] (NaN beyond the recording or missing)
    versions: list[str]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    rejected_readings: int = 0
    rejected_events: int = 0
    grid_collisions: int = 0        # readings that fell on a grid point already filled
    score_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    score_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # ^ the last recording row fed when each anomaly score came out (when it was known)
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    score_components: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [S, N]
    score_raw: dict[str, np.ndarray] = field(default_factory=dict)  # component statistics
    statistics: list[tuple[int, dict[str, np.ndarray]]] = field(default_factory=list)
    # ^ what the drift monitors were fed per step (kept with ``keep_statistics``)
    experts: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [F, N, H]
    quantiles: dict[str, np.ndarray] = field(default_factory=dict)  # "0.1"/"0.9" -> [F, N, H]
    imputation: dict[str, Any] | None = None   # with ``holdout``: gap filling's errors
    interval_ms: int = 0            # grid interval (0: taken from the forecast times)
    timezone: str = "UTC"           # patching.timezone: the zone the plots show times in

    def interval_metrics(self, from_row: int = 0) -> dict[str, list[float | None]] | None:
        """p10-p90 interval of the served forecast per horizon point: the share of truths
        inside (target 0.8), below and above, and the mean width (input units)."""
        if not {"0.1", "0.9"} <= set(self.quantiles):
            return None
        sel = self.scored(from_row)
        lo, hi = self.quantiles["0.1"][sel], self.quantiles["0.9"][sel]
        y = self.truth[sel]
        ok = ~np.isnan(y) & ~np.isnan(lo) & ~np.isnan(hi)
        cnt = ok.sum(axis=(0, 1)).astype(np.float64)

        def share(hit: np.ndarray) -> list[float | None]:
            v = np.where(ok, hit, False).sum(axis=(0, 1)) / np.maximum(cnt, 1)
            return _nan_none(np.where(cnt > 0, v, np.nan))

        width = np.where(ok, hi - lo, 0.0).sum(axis=(0, 1)) / np.maximum(cnt, 1)
        return {"coverage": share((y >= lo) & (y <= hi)), "below": share(y < lo),
                "above": share(y > hi), "width": _nan_none(np.where(cnt > 0, width, np.nan))}

    def scored(self, from_row: int = 0) -> np.ndarray:
        """Forecast blocks counted in the metrics: made at or after ``from_row`` and with
        every horizon point inside the recording."""
        full = ~np.isnan(self.truth).all(axis=1).any(axis=1)
        return np.flatnonzero((self.rows >= from_row) & full)

    def metrics(self, from_row: int = 0) -> dict[str, float]:
        """Cumulative MSE/MAE = mean over all scored online steps, sensors and horizon points."""
        sel = self.scored(from_row)
        err = (self.yhat[sel] - self.truth[sel]).astype(np.float64)
        ok = ~np.isnan(err)
        n = int(ok.sum())
        return {"steps": int(len(sel)), "points": n,
                "mse": float(np.sum(err[ok] ** 2) / n) if n else float("nan"),
                "mae": float(np.sum(np.abs(err[ok])) / n) if n else float("nan"),
                "steps_per_s": len(self.steps) / self.seconds if self.seconds else 0.0}

    def by_horizon(self, from_row: int = 0) -> dict[str, dict[str, list[float | None]]]:
        """MAE and MSE per horizon point of the served forecast and of every expert, on the
        points where the served forecast is scored and that expert forecast, and each one's
        MAE as a share of persistence's on the same points."""
        sel = self.scored(from_row)
        truth = self.truth[sel].astype(np.float64)
        cols = {"served": self.yhat, **self.experts}
        out: dict[str, dict[str, list[float | None]]] = {}
        pers = self.experts.get("persistence")
        for name, arr in cols.items():
            err = arr[sel].astype(np.float64) - truth
            ok = ~np.isnan(err)
            n = ok.sum(axis=(0, 1))
            with np.errstate(invalid="ignore", divide="ignore"):
                mae = np.where(ok, np.abs(err), 0).sum(axis=(0, 1)) / n
                mse = np.where(ok, err ** 2, 0).sum(axis=(0, 1)) / n
                row = {"mae": _nan_none(mae), "mse": _nan_none(mse), "points": n.tolist()}
                if pers is not None:
                    both = ok & ~np.isnan(pers[sel])
                    pe = np.abs(pers[sel].astype(np.float64) - truth)
                    ratio = (np.where(both, np.abs(err), 0).sum(axis=(0, 1))
                             / np.where(both, pe, 0).sum(axis=(0, 1)))
                    row["mae_vs_persistence"] = _nan_none(ratio)
            out[name] = row
        return out

    def points(self, from_row: int = 0) -> dict[str, np.ndarray]:
        """Every realized forecast point as columns: sensor, step, horizon index, ts of the
        forecast point, served forecast, truth and each expert's forecast."""
        sel = self.scored(from_row)
        f, n, h = len(sel), len(self.sensors), self.yhat.shape[2] if self.yhat.ndim == 3 else 0
        keep = ~np.isnan(self.truth[sel]) & ~np.isnan(self.yhat[sel])
        fi, si, hi = np.nonzero(keep)
        interval = (int(np.median(np.diff(self.ts))) // max(h, 1)) if len(self.ts) > 1 else 0
        out = {"sensor": np.asarray(self.sensors, dtype=object)[si],
               "step": self.steps[sel][fi], "h": hi.astype(np.int64),
               "ts": self.ts[sel][fi] + hi * interval if h else np.zeros(0, np.int64),
               "forecast": self.yhat[sel][fi, si, hi], "truth": self.truth[sel][fi, si, hi]}
        for name, arr in self.experts.items():
            out[name] = arr[sel][fi, si, hi]
        del f, n
        return out

    def curve(self, from_row: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Timestamps and the cumulative MSE and MAE after each scored step."""
        sel = self.scored(from_row)
        err = (self.yhat[sel] - self.truth[sel]).astype(np.float64)
        ok = ~np.isnan(err)
        cnt = np.cumsum(ok.sum(axis=(1, 2)))
        sq = np.cumsum(np.where(ok, err**2, 0).sum(axis=(1, 2)))
        ab = np.cumsum(np.where(ok, np.abs(err), 0).sum(axis=(1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.ts[sel], sq / cnt, ab / cnt

    def per_sensor(self, from_row: int = 0) -> list[dict[str, Any]]:
        sel = self.scored(from_row)
        err = (self.yhat[sel] - self.truth[sel]).astype(np.float64)
        out = []
        for i, s in enumerate(self.sensors):
            e = err[:, i]
            e = e[~np.isnan(e)]
            out.append({"sensor": s, "points": int(e.size),
                        "mse": float(np.mean(e**2)) if e.size else float("nan"),
                        "mae": float(np.mean(np.abs(e))) if e.size else float("nan")})
        return out


def _reading_batch(rec: Recording, lo: int, hi: int,
                   values: np.ndarray | None = None) -> ReadingBatch:
    """Rows ``[lo, hi)`` (of ``values``, default the recording's) as a reading batch in time
    order (missing values left out)."""
    vals = (rec.values if values is None else values)[lo:hi]
    n = rec.n_sensors
    obs = ~np.isnan(vals)
    r, c = np.nonzero(obs)
    return ReadingBatch(sensors=[rec.sensors[j] for j in c.tolist()],
                        ts=rec.timestamps[lo:hi][r].astype(np.int64),
                        values=vals[r, c].astype(np.float64),
                        source=np.arange(len(r), dtype=np.int64),
                        partition=np.zeros(len(r), np.int64)) if n else ReadingBatch()


def backtest(rec: Recording, core: StreamCore, *, feedback: str = "delayed",
             batch_rows: int = 0, start_row: int = 0, end_row: int | None = None,
             progress: bool = True, keep_statistics: bool = False,
             keep_experts: bool = True, flush: bool = True, holdout: float = 0.0,
             holdout_seed: int = 0) -> BacktestResult:
    """Feed rows ``[start_row, end_row)`` of ``rec`` through ``core`` and collect its output.

    ``holdout`` hides that share of the observed readings from the core (seeded); the gaps
    the model fills there are scored against the hidden values (``imputation``).

    ``batch_rows`` rows go in per call (0 = one step, ``patch_len`` rows). ``flush`` closes
    the last, partial step at the end of the input (``StreamCore.flush``), as a worker
    leaving on ``--idle-exit`` does.
    """
    if feedback not in FEEDBACK:
        raise ValueError(f"--feedback must be one of {FEEDBACK}, not {feedback!r}")
    end_row = rec.n_steps if end_row is None else end_row
    if not 0 <= start_row < end_row <= rec.n_steps:
        raise ValueError(f"--start-row/--end-row: rows [{start_row}, {end_row}) are outside "
                         f"the recording's {rec.n_steps} rows")
    batch = batch_rows or core.cfg.patching.patch_len
    fed = rec.values
    hidden = np.zeros(rec.values.shape, bool)
    if holdout > 0:
        rng = np.random.default_rng(holdout_seed)
        hidden[start_row:end_row] = (rng.random((end_row - start_row, rec.n_sensors)) < holdout)
        hidden &= ~np.isnan(rec.values)
        fed = np.where(hidden, np.nan, rec.values)
    imputed: dict[tuple[int, int], float] = {}
    dup0 = int(core.patcher.stats.duplicates)
    # truths are matched by grid point, rounded as the patcher rounds readings: rows stamped
    # off the grid (hourly at half past, 10-minute at :07, month starts) are scored too
    grid = core.patcher.clock.grid
    slot_of = {g: i for i, g in enumerate(grid(rec.timestamps).tolist())}

    def row_at(ts: int) -> int:
        return slot_of.get(int(grid(int(ts))), -1)

    col = {s: j for j, s in enumerate(rec.sensors)}
    events = sorted(rec.events, key=lambda e: e["ts"])
    ev_ts = np.array([e["ts"] for e in events], np.int64)
    h = core.cfg.model.horizon
    steps, tss, rows, yhats, truths, versions = [], [], [], [], [], []
    alerts: list[dict[str, Any]] = []
    s_steps: list[int] = []
    s_rows: list[int] = []
    s_blocks: list[Any] = []
    statistics: list[tuple[int, dict[str, np.ndarray]]] = []
    rej_r = rej_e = 0
    ex_blocks: list[dict[str, np.ndarray]] = []
    q_blocks: list[dict[str, np.ndarray]] = []
    bar = tqdm(total=end_row - start_row, desc=f"backtest ({feedback})", unit="row",
               disable=not progress, mininterval=0.5)
    t0 = time.perf_counter()
    def collect(out: Any, hi: int) -> None:
        nonlocal rej_r, rej_e
        rej_r += len(out.rejected_readings)
        rej_e += len(out.rejected_events)
        alerts.extend(a.to_dict() for a in out.alerts)
        if keep_statistics:
            statistics.extend(out.statistics)
        for sb in out.scores:
            s_steps.append(sb.step)
            s_rows.append(hi - 1)
            s_blocks.append(sb)
        for block in out.forecasts:
            first = row_at(block.horizon_ts[0])
            y = np.full((len(block.sensors), h), np.nan)
            idx = [row_at(t) for t in block.horizon_ts]
            have = [k for k, r in enumerate(idx) if 0 <= r < end_row]
            cols = [col.get(s, -1) for s in block.sensors]
            known = [i for i, c in enumerate(cols) if c >= 0]
            if have and known:
                sub = rec.values[np.array([idx[k] for k in have])][:, [cols[i] for i in known]]
                y[np.ix_(known, have)] = sub.T
            steps.append(block.step)
            tss.append(block.ts)
            rows.append(first)
            at = (block.rows if block.rows is not None
                  else np.arange(len(block.sensors), dtype=np.int64))
            yhats.append((at, block.yhat.astype(np.float32)))
            truths.append(y.astype(np.float32))
            if keep_experts:
                ex_blocks.append({e: v.astype(np.float32) for e, v in block.experts.items()})
            q_blocks.append({k: v.astype(np.float32) for k, v in block.q.items()})
            if block.imputed is not None and block.imputed_ts is not None and holdout > 0:
                for a, j in zip(*np.nonzero(~np.isnan(block.imputed)), strict=True):
                    r, c = row_at(block.imputed_ts[j]), cols[a]
                    if r >= 0 and c >= 0 and hidden[r, c]:
                        imputed[(r, c)] = float(block.imputed[a, j])
            versions.append(block.model_version)
            if feedback == "immediate":
                core.feedback(block.step, y)

    for lo in range(start_row, end_row, batch):
        hi = min(lo + batch, end_row)
        t_lo = rec.timestamps[lo] if lo > start_row else np.iinfo(np.int64).min
        e_lo, e_hi = np.searchsorted(ev_ts, [t_lo, rec.timestamps[hi - 1]], side="right")
        if lo == start_row:
            e_lo = 0
        eb = EventBatch(events=events[e_lo:e_hi], source=list(range(e_hi - e_lo)))
        collect(core.process(_reading_batch(rec, lo, hi, fed), eb,
                             arrival_ms=int(rec.timestamps[hi - 1])), hi)
        bar.update(hi - lo)
    if flush:
        collect(core.flush(), end_row)   # the last, partial step: realized, scored, checked
    seconds = time.perf_counter() - t0
    bar.close()
    n = len(core.sensors)
    yhat_all = np.full((len(yhats), n, h), np.nan, np.float32)
    truth_all = np.full((len(yhats), n, h), np.nan, np.float32)
    for f, ((at, yh), tr) in enumerate(zip(yhats, truths, strict=True)):
        yhat_all[f, at] = yh       # a sensor has forecasts from its first reading on
        truth_all[f, at] = tr
    experts = {}
    for e in (ex_blocks[0] if ex_blocks else {}):
        arr = np.full((len(yhats), n, h), np.nan, np.float32)
        for f, ((at, _), blk) in enumerate(zip(yhats, ex_blocks, strict=True)):
            arr[f, at] = blk[e]
        experts[e] = arr
    quantiles = {}
    for k in (q_blocks[0] if q_blocks else {}):
        arr = np.full((len(yhats), n, h), np.nan, np.float32)
        for f, ((at, _), blk) in enumerate(zip(yhats, q_blocks, strict=True)):
            if k in blk:
                arr[f, at] = blk[k]
        quantiles[k] = arr

    def stack_scores(get: Any) -> np.ndarray:
        mat = np.full((len(s_blocks), n), np.nan, np.float32)
        for i, sb in enumerate(s_blocks):
            v = get(sb)
            if v is not None:
                mat[i, :len(v)] = v
        return mat

    names = sorted({c for sb in s_blocks for c in sb.components})
    return BacktestResult(
        sensors=list(core.sensors), steps=np.asarray(steps, np.int64),
        ts=np.asarray(tss, np.int64), rows=np.asarray(rows, np.int64),
        yhat=yhat_all, truth=truth_all,
        versions=versions, alerts=alerts, seconds=seconds, rejected_readings=rej_r,
        rejected_events=rej_e, grid_collisions=int(core.patcher.stats.duplicates) - dup0,
        score_steps=np.asarray(s_steps, np.int64),
        score_rows=np.asarray(s_rows, np.int64), scores=stack_scores(lambda sb: sb.score),
        score_components={c: stack_scores(lambda sb, c=c: sb.components.get(c))
                          for c in names},
        score_raw={c: stack_scores(lambda sb, c=c: sb.raw.get(c)) for c in names},
        statistics=statistics, experts=experts, quantiles=quantiles,
        imputation=_imputation(rec.values, fed, hidden, imputed) if holdout > 0 else None,
        interval_ms=int(core.cfg.patching.interval_ms), timezone=core.cfg.patching.timezone)


def _imputation(values: np.ndarray, fed: np.ndarray, hidden: np.ndarray,
                imputed: dict[tuple[int, int], float]) -> dict[str, Any]:
    """Errors on the hidden readings the model filled, beside carrying the last fed value
    forward (what a gap filler has to beat); on the input scale."""
    if not imputed:
        return {"hidden": int(hidden.sum()), "imputed": 0, "mae": None, "mae_last_value": None}
    rc = np.array(list(imputed), np.int64)
    est = np.array(list(imputed.values()))
    truth = values[rc[:, 0], rc[:, 1]]
    last = np.full(len(rc), np.nan)
    for i, (r, c) in enumerate(rc.tolist()):
        prev = fed[:r, c]
        seen = np.flatnonzero(~np.isnan(prev))
        if len(seen):
            last[i] = prev[seen[-1]]
    ok = ~np.isnan(last)
    return {"hidden": int(hidden.sum()), "imputed": len(rc),
            "mae": float(np.mean(np.abs(est - truth))),
            "mae_last_value": float(np.mean(np.abs(last[ok] - truth[ok]))) if ok.any() else None,
            "mae_model_same_points": float(np.mean(np.abs(est[ok] - truth[ok])))
            if ok.any() else None}


def write_report(res: BacktestResult, out_dir: str | Path, *, from_row: int = 0,
                 plot_sensors: int = 3, title: str = "backtest", sensors: str | None = None,
                 tz: str | None = None) -> dict[str, Any]:
    """``report.json``, ``per_sensor.csv``, ``alerts.jsonl``, ``curve.csv`` and two PNGs.

    ``forecasts.png`` draws the sensors ``sensors`` names (comma-separated ids or globs),
    else ``plot_sensors`` picked automatically; plot times are in ``tz`` (default the
    result's ``patching.timezone``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_h = res.by_horizon(from_row)
    pers = res.experts.get("persistence")
    summary = {"title": title, **res.metrics(from_row),
               "mae_vs_persistence": _ratio(res, pers, from_row),
               "experts": {e: _summary_metrics(res, arr, from_row)
                           for e, arr in res.experts.items()},
               "by_horizon": per_h, "interval_p10_p90": res.interval_metrics(from_row),
               "imputation": res.imputation,
               "forecast_blocks": int(len(res.steps)), "alerts": len(res.alerts),
               "alerts_by_kind": _count(a.get("kind", "?") for a in res.alerts),
               "first_model_version": res.versions[0] if res.versions else None,
               "last_model_version": res.versions[-1] if res.versions else None,
               "rejected_readings": res.rejected_readings,
               "rejected_events": res.rejected_events,
               "grid_collisions": res.grid_collisions, "seconds": res.seconds}
    per = res.per_sensor(from_row)
    with open(out / "per_sensor.csv", "w") as f:
        f.write("sensor,points,mse,mae\n")
        for r in per:
            f.write(f"{r['sensor']},{r['points']},{r['mse']:.6g},{r['mae']:.6g}\n")
    with open(out / "alerts.jsonl", "w") as f:
        for a in res.alerts:
            f.write(to_json(a) + "\n")
    ts, mse, mae = res.curve(from_row)
    with open(out / "curve.csv", "w") as f:
        f.write("ts,cumulative_mse,cumulative_mae\n")
        for t, a, b in zip(ts.tolist(), mse.tolist(), mae.tolist(), strict=True):
            f.write(f"{t},{a:.6g},{b:.6g}\n")
    summary["points_file"] = _write_points(res.points(from_row), out)
    (out / "report.json").write_text(to_json(summary, indent=2))
    from replay.backtest_plots import plot_error_over_time, plot_forecasts

    plot_error_over_time(res, out / "error_over_time.png", from_row=from_row, title=title,
                         tz=tz)
    plot_forecasts(res, out / "forecasts.png", from_row=from_row, sensors=sensors,
                   n_auto=plot_sensors, title=title, tz=tz)
    return summary


def _nan_none(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64)]


def _summary_metrics(res: BacktestResult, arr: np.ndarray, from_row: int) -> dict[str, Any]:
    sel = res.scored(from_row)
    err = (arr[sel] - res.truth[sel]).astype(np.float64)
    ok = ~np.isnan(err)
    n = int(ok.sum())
    return {"points": n, "mae": float(np.abs(err[ok]).mean()) if n else None,
            "mse": float((err[ok] ** 2).mean()) if n else None}


def _ratio(res: BacktestResult, pers: np.ndarray | None, from_row: int) -> float | None:
    """The served forecast's MAE over persistence's, on the points both forecast."""
    if pers is None:
        return None
    sel = res.scored(from_row)
    a = np.abs(res.yhat[sel] - res.truth[sel]).astype(np.float64)
    b = np.abs(pers[sel] - res.truth[sel]).astype(np.float64)
    ok = ~np.isnan(a) & ~np.isnan(b)
    return float(a[ok].sum() / b[ok].sum()) if ok.any() and b[ok].sum() > 0 else None


def _write_points(cols: dict[str, np.ndarray], out: Path) -> str:
    """Every realized forecast point: ``points.parquet`` (pyarrow), one row per point."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({k: pa.array(v.tolist() if v.dtype == object else v)
                      for k, v in cols.items()})
    pq.write_table(table, out / "points.parquet")
    return "points.parquet"


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in items:
        out[k] = out.get(k, 0) + 1
    return out
