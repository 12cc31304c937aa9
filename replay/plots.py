"""Shared pieces of the report plots: date axes, units, sensor choice, colours, alert strips.

The backtest's ``error_over_time.png`` and ``forecasts.png``, the alerts report's
``timeline.png`` and the demo's plot are read by people who did not write them, so every
time axis shows dates (with the year) in the configured zone and says which zone, every value
axis says its unit (or "input units"), legends sit outside the data, drift, anomaly and each
forecaster have their own colour, and many alerts become a density strip, not a barcode.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from connectors.schemas import zone

DAY_MS = 86_400_000
MANY_ALERTS = 30        # more alerts of one kind than this: a density band, not a rug

# one colour per alert kind and per forecaster; the two lists share none
ALERT_COLOURS = {"drift": "tab:red", "anomaly": "tab:orange", "data-quality": "tab:gray",
                 "model": "#000080"}
_EXTRA_ALERT_COLOURS = ("#e6ab02", "#8b0000", "#008080")
SERVED_COLOUR = "tab:blue"
PERSISTENCE_COLOUR = "black"
EXPERT_COLOURS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:cyan", "tab:olive",
                  "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#666666")
ALERT_MARKERS = {"drift": "v", "anomaly": "o", "data-quality": "x", "model": "s"}

_UNIT = re.compile(r"[(\[]\s*([^()\[\]]+?)\s*[)\]]\s*$")


def unit_of(sensor: str) -> str | None:
    """The unit a sensor's name ends with, ``"T (degC)"`` → ``"degC"`` (also ``[degC]``);
    None when it names none."""
    m = _UNIT.search(str(sensor))
    return m.group(1) if m else None


def value_label(sensors: Sequence[str], what: str = "value") -> str:
    """An axis label with the unit the sensors share, else "(input units)"."""
    units = {unit_of(s) for s in sensors}
    if len(units) == 1 and None not in units:
        return f"{what} ({units.pop()})"
    return f"{what} (input units)"


def units_differ(sensors: Sequence[str]) -> bool:
    """Whether the sensors' names give more than one unit (a named and an unnamed one count
    as different)."""
    units = {unit_of(s) for s in sensors}
    return len(units) > 1


def select_sensors(names: Sequence[str], spec: str | Sequence[str] | None) -> list[int]:
    """Indices of ``names`` chosen by ``spec``: comma-separated ids or globs (``"s00*,s012"``)
    or a list of them, in the order of ``names``. A pattern that matches nothing raises,
    naming the pattern and some of the sensors there are."""
    if spec is None:
        return []
    pats = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec)]
    pats = [p for p in pats if p]
    if not pats:
        raise ValueError("--sensors: no sensor ids or globs given")
    chosen: set[int] = set()
    for p in pats:
        hit = [i for i, s in enumerate(names) if s == p]
        if not hit:
            hit = [i for i, s in enumerate(names) if fnmatch.fnmatchcase(s, p)]
        if not hit:
            some = ", ".join(list(names)[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"--sensors: {p!r} matches no sensor (there are {len(names)}: "
                             f"{some})")
        chosen.update(hit)
    return sorted(chosen)


def to_num(ms: Any) -> np.ndarray:
    """Epoch milliseconds as matplotlib date numbers (days since its epoch, UTC)."""
    import matplotlib.dates as mdates

    return np.asarray(mdates.date2num(np.asarray(ms, np.int64).astype("datetime64[ms]")),
                      np.float64)


def date_axis(ax: Any, tz: str | None, start_ms: int, end_ms: int,
              label: bool = True) -> None:
    """Dates on ``ax``'s x axis in the IANA zone ``tz``: year, month and day on every tick,
    the time of day too when the span is short; the label names the zone."""
    import matplotlib.dates as mdates

    tzinfo = zone(tz)
    span = max(end_ms - start_ms, 1) / DAY_MS
    locator: mdates.DateLocator
    if span <= 3:
        locator, fmt = mdates.AutoDateLocator(tz=tzinfo, minticks=3, maxticks=8), \
            "%Y-%m-%d %H:%M"
    elif span <= 120:
        locator, fmt = mdates.DayLocator(interval=max(1, math.ceil(span / 8)), tz=tzinfo), \
            "%Y-%m-%d"
    elif span <= 3 * 365:
        step = next(s for s in (1, 2, 3, 4, 6, 12) if span / 30.4 / s <= 8 or s == 12)
        locator, fmt = mdates.MonthLocator(bymonth=range(1, 13, step), tz=tzinfo), "%Y-%m"
    else:
        locator, fmt = mdates.YearLocator(base=max(1, math.ceil(span / 365.25 / 8)),
                                          tz=tzinfo), "%Y"
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt, tz=tzinfo))
    ax.set_xlim(to_num([start_ms, max(end_ms, start_ms + 1)]))
    for t in ax.get_xticklabels():
        t.set_rotation(25)
        t.set_horizontalalignment("right")
    if label:
        ax.set_xlabel(f"time ({tz or 'UTC'})")


def legend_outside(ax: Any, handles: list[Any] | None = None,
                   labels: list[str] | None = None, **kw: Any) -> Any:
    """A legend to the right of ``ax``, off the data (duplicate labels once)."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    uniq: dict[str, Any] = {}
    for h, lab in zip(handles, labels or [], strict=False):
        uniq.setdefault(lab, h)
    if not uniq:
        return None
    opts = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0,
            "fontsize": 8, "frameon": False} | kw
    return ax.legend(list(uniq.values()), list(uniq), **opts)


def alert_colour(kind: str, seen: dict[str, str] | None = None) -> str:
    """The colour of an alert kind (a kind not known gets the next spare colour)."""
    if kind in ALERT_COLOURS:
        return ALERT_COLOURS[kind]
    seen = {} if seen is None else seen
    if kind not in seen:
        seen[kind] = _EXTRA_ALERT_COLOURS[len(seen) % len(_EXTRA_ALERT_COLOURS)]
    return seen[kind]


def expert_styles(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Line style per forecaster: persistence black dashed, every other its own colour."""
    out: dict[str, dict[str, Any]] = {}
    k = 0
    for n in names:
        if n == "persistence":
            out[n] = {"color": PERSISTENCE_COLOUR, "ls": "--", "lw": 1.4}
        else:
            out[n] = {"color": EXPERT_COLOURS[k % len(EXPERT_COLOURS)], "lw": 1.0,
                      "alpha": 0.85}
            k += 1
    return out


def _bin_ms(span_ms: int) -> tuple[int, str]:
    """A round bin width giving at most ~200 bins over the span, and its name."""
    for ms, name in ((3_600_000, "hour"), (6 * 3_600_000, "6 hours"), (DAY_MS, "day"),
                     (7 * DAY_MS, "week"), (30 * DAY_MS, "30 days")):
        if span_ms / ms <= 200:
            return ms, name
    return 365 * DAY_MS, "year"


def alert_strip(ax: Any, alerts_ms: dict[str, np.ndarray], start_ms: int,
                end_ms: int) -> None:
    """One row per alert kind on ``ax``: a rug of ticks (one artist per kind) for a few
    alerts, a density band (alerts per bin, one artist per kind) for more than
    ``MANY_ALERTS``; the row's label gives the count."""
    kinds = [k for k in alerts_ms if len(alerts_ms[k])]
    extra: dict[str, str] = {}
    bin_ms, bin_name = _bin_ms(max(end_ms - start_ms, 1))
    notes = []
    for row, kind in enumerate(kinds):
        t = np.sort(np.asarray(alerts_ms[kind], np.int64))
        colour = alert_colour(kind, extra)
        if len(t) <= MANY_ALERTS:
            ax.eventplot([to_num(t)], lineoffsets=row, linelengths=0.8, colors=[colour],
                         linewidths=1.2)
        else:
            edges_ms = np.arange(start_ms - start_ms % bin_ms, end_ms + bin_ms, bin_ms)
            counts, _ = np.histogram(t, bins=edges_ms)
            top = max(int(counts.max()), 1)
            ax.stairs(row - 0.4 + 0.8 * counts / top, to_num(edges_ms), baseline=row - 0.4,
                      fill=True, color=colour, alpha=0.85, lw=0)
            notes.append(f"{kind}: bar height = alerts per {bin_name}, top {top}")
    ax.set_yticks(range(len(kinds)),
                  [f"{k} ({len(alerts_ms[k])})" for k in kinds], fontsize=7)
    ax.set_ylim(-0.6, max(len(kinds), 1) - 0.4)
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", alpha=0.3)
    if notes:
        ax.text(1.01, 0.5, "\n".join(notes), transform=ax.transAxes, fontsize=7,
                va="center", ha="left")


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG and close it."""
    import matplotlib.pyplot as plt

    out = Path(path)
    try:
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return out
