"""The backtest's two plots: ``error_over_time.png`` and ``forecasts.png``.

``error_over_time.png``: the cumulative MAE of the served forecast, persistence and every
other expert over the scored period, per-sensor scaled (error / that sensor's persistence MAE)
when the sensors' units differ or their error scales differ by more than 10x, since a pooled
MAE in mixed units is dominated by whichever sensor has the biggest numbers; the alerts in a
strip below (a rug for a few, a density band for many).

``forecasts.png``: for a few sensors (``--sensors``, else an automatic pick that the title
names), the last scored forecasts against the truth with the served p10-p90 interval and that
sensor's alerts, on a date axis in ``patching.timezone``.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from replay.plots import (
    ALERT_MARKERS,
    SERVED_COLOUR,
    alert_colour,
    alert_strip,
    date_axis,
    expert_styles,
    legend_outside,
    save_figure,
    select_sensors,
    to_num,
    unit_of,
    units_differ,
    value_label,
)

if TYPE_CHECKING:
    from replay.backtest import BacktestResult

MAX_PANELS = 12           # forecasts.png draws at most this many sensors
SCALE_SPREAD = 10.0       # error scales differing more than this: errors scaled per sensor


def _interval_ms(res: BacktestResult) -> int:
    """Spacing of the forecast points (the grid interval)."""
    if res.interval_ms:
        return int(res.interval_ms)
    h = res.yhat.shape[2] if res.yhat.ndim == 3 else 1
    return int(np.median(np.diff(res.ts))) // max(h, 1) if len(res.ts) > 1 else 1


def sensor_scale(res: BacktestResult, sel: np.ndarray) -> tuple[np.ndarray, str]:
    """Per sensor, the error scale errors are divided by: its persistence MAE on the scored
    points, or (without persistence) the mean absolute deviation of its truth; NaN where
    there is none. And what that scale is, in words."""
    truth = res.truth[sel].astype(np.float64)
    pers = res.experts.get("persistence")
    if pers is not None:
        dev = np.abs(pers[sel].astype(np.float64) - truth)
        what = "sensor's persistence MAE"
    else:
        cnt = (~np.isnan(truth)).sum(axis=(0, 2))
        mean = np.where(np.isnan(truth), 0, truth).sum(axis=(0, 2)) / np.maximum(cnt, 1)
        dev = np.abs(truth - mean[None, :, None])
        what = "sensor's mean absolute deviation"
    ok = ~np.isnan(dev)
    n = ok.sum(axis=(0, 2))
    scale = np.where(ok, dev, 0).sum(axis=(0, 2)) / np.maximum(n, 1)
    return np.where((n > 0) & (scale > 0), scale, np.nan), what


def relative_mae(res: BacktestResult, sel: np.ndarray) -> np.ndarray:
    """Per sensor, the served forecast's MAE over its scale (``sensor_scale``); NaN without
    one."""
    e = np.abs(res.yhat[sel].astype(np.float64) - res.truth[sel])
    ok = ~np.isnan(e)
    mae = np.where(ok, e, 0).sum(axis=(0, 2)) / np.maximum(ok.sum(axis=(0, 2)), 1)
    scale, _ = sensor_scale(res, sel)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok.any(axis=(0, 2)), mae / scale, np.nan)


def choose_sensors(res: BacktestResult, spec: str | None, n: int,
                   from_row: int = 0) -> tuple[list[int], str]:
    """The sensors ``forecasts.png`` draws and why: those ``spec`` names (ids or globs), else
    the ``n`` with the most alerts, filled up with the highest MAE relative to persistence."""
    if spec:
        idx = select_sensors(res.sensors, spec)
        why = f"{len(idx)} sensor{'s' * (len(idx) != 1)} chosen with --sensors {spec!r}"
        if len(idx) > MAX_PANELS:
            why += f" (the first {MAX_PANELS} drawn)"
        return idx[:MAX_PANELS], why
    counts = Counter(s for a in res.alerts for s in a.get("sensors", []))
    rel = np.nan_to_num(relative_mae(res, res.scored(from_row)), nan=-np.inf)
    order = sorted(range(len(res.sensors)), key=lambda i: (-counts[res.sensors[i]], -rel[i]))
    by_alerts = [i for i in order if counts[res.sensors[i]] > 0][:n]
    rest = sorted((i for i in range(len(res.sensors)) if i not in by_alerts),
                  key=lambda i: -rel[i])[:max(n - len(by_alerts), 0)]
    parts = []
    if by_alerts:
        parts.append(f"the {len(by_alerts)} with the most alerts")
    if rest:
        parts.append(f"{'the ' if not by_alerts else ''}{len(rest)} with the highest MAE "
                     "relative to persistence")
    k = len(by_alerts) + len(rest)
    why = f"{k} sensor{'s' * (k != 1)}: " + " and ".join(parts) + " (choose: --sensors)"
    return by_alerts + rest, why


def _alerts_by_kind(alerts: list[dict[str, Any]], lo: int, hi: int,
                    sensor: str | None = None) -> dict[str, np.ndarray]:
    """Alert times per kind inside ``[lo, hi]`` (of one sensor when given)."""
    out: dict[str, list[int]] = {}
    for a in alerts:
        t = int(a.get("ts", 0))
        if lo <= t <= hi and (sensor is None or sensor in a.get("sensors", [])):
            out.setdefault(str(a.get("kind", "?")), []).append(t)
    return {k: np.asarray(v, np.int64) for k, v in out.items()}


def plot_error_over_time(res: BacktestResult, path: str | Path, *, from_row: int = 0,
                         title: str = "backtest", tz: str | None = None) -> Path:
    """``error_figure`` written to ``path`` as a PNG."""
    return save_figure(error_figure(res, from_row=from_row, title=title, tz=tz), path)


def error_figure(res: BacktestResult, *, from_row: int = 0, title: str = "backtest",
                 tz: str | None = None) -> Any:
    """Cumulative MAE over time of the served forecast and every expert (scaled per sensor
    when units or scales differ), with the alerts as a strip below; the open figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tz = tz or res.timezone
    sel = res.scored(from_row)
    ts = res.ts[sel]
    truth = res.truth[sel].astype(np.float64)
    scale, scale_what = sensor_scale(res, sel)
    finite = scale[np.isfinite(scale)]
    spread = float(finite.max() / finite.min()) if len(finite) else 1.0
    mixed = units_differ(res.sensors)
    scaled = mixed or spread > SCALE_SPREAD
    div = scale[None, :, None] if scaled else 1.0
    lo_ms, hi_ms = (int(ts[0]), int(ts[-1])) if len(ts) else (0, 1)
    alerts = _alerts_by_kind(res.alerts, lo_ms, hi_ms)
    if alerts:
        fig, (ax, strip) = plt.subplots(
            2, 1, figsize=(11, 4.6 + 0.25 * len(alerts)), sharex=True, layout="constrained",
            gridspec_kw={"height_ratios": [4, 0.5 + 0.3 * len(alerts)]})
    else:
        fig, ax = plt.subplots(figsize=(11, 4.4), layout="constrained")
        strip = None
    styles = {"served": {"color": SERVED_COLOUR, "lw": 2.0}} | expert_styles(res.experts)
    x = to_num(ts)
    curves: dict[str, np.ndarray] = {}
    # persistence right after the served forecast: the reference the others are read against
    order = sorted(res.experts, key=lambda k: k != "persistence")
    for name, arr in ({"served": res.yhat} | {k: res.experts[k] for k in order}).items():
        if not len(ts):
            break
        e = np.abs(arr[sel].astype(np.float64) - truth) / div
        ok = ~np.isnan(e)
        with np.errstate(invalid="ignore", divide="ignore"):
            curves[name] = (np.cumsum(np.where(ok, e, 0).sum(axis=(1, 2)))
                            / np.cumsum(ok.sum(axis=(1, 2))))
    # a forecaster identical to one drawn before (a fresh model's frozen copy is
    # persistence) is named in that line's label instead of hiding under it
    same: dict[str, list[str]] = {}
    for name, cum in curves.items():
        twin = None if np.isnan(cum).all() else next(
            (k for k in same if np.allclose(curves[k], cum, equal_nan=True)), None)
        same.setdefault(twin or name, []).extend([name] if twin else [])
    for name, twins in same.items():
        label = "served forecast" if name == "served" else name
        if np.isnan(curves[name]).all():
            label += " (no forecast scored)"
        elif twins:
            label += f" (= {', '.join(twins)})"
        ax.plot(x, curves[name], label=label, **styles[name])
    if scaled:
        units = sorted({unit_of(s) or "no unit" for s in res.sensors})
        why = (f"the units differ ({len(units)}: " + ", ".join(units[:4])
               + (", ...)" if len(units) > 4 else ")")
               if mixed else f"the error scales differ {spread:.0f}x")
        ax.set_ylabel(f"cumulative MAE / {scale_what}", fontsize=9)
        sub = f"errors scaled per sensor as {why}"
        if scale_what.endswith("persistence MAE"):
            sub += "; 1 = persistence's MAE"
        if np.isnan(scale).any():
            sub += f"; {int(np.isnan(scale).sum())} sensor(s) without a scale left out"
    else:
        ax.set_ylabel(value_label(res.sensors, "cumulative MAE"), fontsize=9)
        sub = f"pooled over {len(res.sensors)} sensors"
    ax.set_title(f"{title}: cumulative error of the served forecast vs persistence and the "
                 f"other experts\n{sub}", fontsize=10)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    if strip is not None:
        alert_strip(strip, alerts, lo_ms, hi_ms)
        strip.set_ylabel("alerts", fontsize=8)
    date_axis(strip if strip is not None else ax, tz, lo_ms, hi_ms)
    return fig


def _series(res: BacktestResult, blocks: np.ndarray, i: int, interval: int
            ) -> dict[str, np.ndarray]:
    """One sensor's forecast points of ``blocks`` as time-sorted columns (a point several
    blocks forecast keeps the latest forecast); NaN rows break the lines at gaps."""
    h = res.yhat.shape[2]
    t = (res.ts[blocks][:, None] + np.arange(h)[None, :] * interval).ravel()
    lead = np.broadcast_to(np.arange(1, h + 1), (len(blocks), h)).ravel()
    cols = {"yhat": res.yhat[blocks, i].ravel(), "truth": res.truth[blocks, i].ravel()}
    if {"0.1", "0.9"} <= set(res.quantiles):
        cols["lo"] = res.quantiles["0.1"][blocks, i].ravel()
        cols["hi"] = res.quantiles["0.9"][blocks, i].ravel()
    # the latest block wins: unique over the reversed order keeps its first (= latest) hit
    _, first = np.unique(t[::-1], return_index=True)
    keep = (len(t) - 1 - first)
    order = keep[np.argsort(t[keep])]
    out = {"t": t[order], "lead": lead[order]} | {k: v[order].astype(np.float64)
                                                   for k, v in cols.items()}
    gap = np.flatnonzero(np.diff(out["t"]) > 1.5 * interval)
    if len(gap):
        out = {k: np.insert(v.astype(np.float64), gap + 1,
                            out["t"][gap] + interval if k == "t" else np.nan)
               for k, v in out.items()}
    return out


def plot_forecasts(res: BacktestResult, path: str | Path, *, from_row: int = 0,
                   sensors: str | None = None, n_auto: int = 3, points: int = 720,
                   title: str = "backtest", tz: str | None = None) -> Path:
    """``forecasts_figure`` written to ``path`` as a PNG."""
    return save_figure(forecasts_figure(res, from_row=from_row, sensors=sensors, n_auto=n_auto,
                                  points=points, title=title, tz=tz), path)


def forecasts_figure(res: BacktestResult, *, from_row: int = 0, sensors: str | None = None,
                     n_auto: int = 3, points: int = 720, title: str = "backtest",
                     tz: str | None = None) -> Any:
    """The last ``points`` forecast points of each chosen sensor (``choose_sensors``) against
    the truth, with the p10-p90 interval where the model served one and the sensor's alerts
    as markers; the open figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tz = tz or res.timezone
    picks, why = choose_sensors(res, sensors, n_auto, from_row)
    sel = res.scored(from_row)
    interval = _interval_ms(res)
    h = res.yhat.shape[2] if res.yhat.ndim == 3 else 1
    stride = max(1, round(float(np.median(np.diff(res.ts))) / interval)) if len(res.ts) > 1 \
        else h
    blocks = sel[-max(1, math.ceil(points / stride)):] if len(sel) else sel
    n = max(1, len(picks))
    fig, axes = plt.subplots(n, 1, figsize=(11, 1.2 + 2.3 * n), sharex=True, squeeze=False,
                             layout="constrained")
    has_q = {"0.1", "0.9"} <= set(res.quantiles)
    band_drawn = False
    lo_ms = hi_ms = 0
    handles: dict[str, Any] = {}
    for ax, i in zip(axes[:, 0], picks, strict=False):
        s = _series(res, blocks, i, interval) if len(blocks) else None
        name = res.sensors[i]
        if s is None or not len(s["t"]):
            ax.text(0.5, 0.5, "no scored forecasts", transform=ax.transAxes, ha="center")
            continue
        lo_ms, hi_ms = int(np.nanmin(s["t"])), int(np.nanmax(s["t"]))
        x = to_num(s["t"])
        ax.plot(x, s["truth"], color="0.25", lw=1.1, label="truth (recorded)")
        leads = s["lead"][~np.isnan(s["lead"])]
        lead = f"{int(leads.min())}-{int(leads.max())}" if len(leads) else "?"
        ax.plot(x, s["yhat"], color=SERVED_COLOUR, lw=1.1,
                label=f"served forecast ({lead} points ahead)")
        if has_q and not (np.isnan(s["lo"]).all() or np.isnan(s["hi"]).all()):
            ax.fill_between(x, s["lo"], s["hi"], color=SERVED_COLOUR, alpha=0.2, lw=0,
                            label="p10-p90 interval (served)")
            band_drawn = True
        kinds = _alerts_by_kind(res.alerts, lo_ms, hi_ms, name)
        extra: dict[str, str] = {}
        for kind, t in kinds.items():
            ax.scatter(to_num(t), np.full(len(t), 0.97), transform=ax.get_xaxis_transform(),
                       marker=ALERT_MARKERS.get(kind, "s"), s=28,
                       color=alert_colour(kind, extra), label=f"{kind} alert", zorder=4,
                       clip_on=False)
        n_alerts = sum(a_sensor == name for a in res.alerts
                       for a_sensor in a.get("sensors", []))
        ax.set_title(f"{name}: {n_alerts} alert{'s' * (n_alerts != 1)} in the whole run",
                     fontsize=9, loc="left")
        ax.set_ylabel(value_label([name]), fontsize=8)
        ax.grid(alpha=0.3)
        for hd, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, hd)
    if handles:
        legend_outside(axes[0, 0], list(handles.values()), list(handles))
    days = (hi_ms - lo_ms) / 86_400_000
    span = f"{days:.1f} days" if days >= 1 else f"{(hi_ms - lo_ms) / 3_600_000:.0f} hours"
    fig.suptitle(f"{title}: forecasts vs truth, the last {span} of scored forecasts\n{why}",
                 fontsize=10)
    if not band_drawn:
        note = ("no p10-p90 band: the model served no quantile forecasts in this backtest"
                if not has_q else "no p10-p90 band: no quantiles for these points")
        fig.text(0.01, 0.005, note, fontsize=8, color="0.3", ha="left", va="bottom")
    date_axis(axes[-1, 0], tz, lo_ms, max(hi_ms, lo_ms + 1))
    return fig
