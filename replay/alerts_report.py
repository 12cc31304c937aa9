"""Alerts report: an alerts file or a range of the ``alerts`` topic as a table and a timeline.

Input is what the worker publishes (one ``connectors.schemas.Alert`` per message), from a
JSON-lines file
(``alerts.jsonl`` of ``replay backtest``, or a topic dump) or straight from the topic. The
report: a printed table, ``alerts.csv`` (one row per alert), ``summary.json`` (counts by
kind, severity, sensor, detector) and ``timeline.png`` (one row per sensor, a marker per
alert by kind and severity, the events the alerts named as grey ticks).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from itertools import zip_longest
from pathlib import Path
from typing import Any

from connectors.schemas import Alert, format_minute, to_json
from connectors.security import SecuritySettings

NO_SENSOR = "(whole region)"   # the timeline's row of alerts that name no sensor (model)
COLUMNS = ("time", "kind", "severity", "sensors", "detector", "statistic", "score", "events",
           "text", "id")


class AlertsReportError(ValueError):
    """An alerts source that cannot be read; the message names the place."""


def _alert(a: Any, where: str) -> Alert:
    try:
        return Alert.from_dict(a, where)
    except ValueError as exc:
        raise AlertsReportError(str(exc)) from None


def read_alerts_file(path: str | Path) -> list[Alert]:
    """Alerts of a JSON-lines file (blank lines skipped); a bad line raises naming it."""
    p = Path(path)
    if not p.exists():
        raise AlertsReportError(f"alerts file not found: {p}")
    out = []
    with p.open() as fh:
        for no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                a = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlertsReportError(f"{p} line {no}: not JSON ({exc.msg})") from None
            out.append(_alert(a, f"{p} line {no}"))
    return out


def read_alerts_topic(bootstrap_servers: str, topic: str = "alerts", *,
                      start_offset: int | None = None, end_offset: int | None = None,
                      start_ts: int | None = None, end_ts: int | None = None,
                      progress: bool = False, security: SecuritySettings | None = None
                      ) -> tuple[list[Alert], list[str]]:
    """Alerts of a topic range (offsets: same bounds on every partition; times: the alerts'
    own ``ts``, end exclusive) and the problems of the messages that were not alerts (each
    named by its position)."""
    from replay.record import consume_range

    values, _ = consume_range(bootstrap_servers, topic, start_offset=start_offset,
                              end_offset=end_offset, progress=progress, security=security)
    alerts, problems = [], []
    for i, v in enumerate(values):
        try:
            a = _alert(json.loads(v), f"{topic} message {i}")
            if (start_ts is None or a.ts >= start_ts) and (end_ts is None or a.ts < end_ts):
                alerts.append(a)
        except json.JSONDecodeError as exc:
            problems.append(f"{topic} message {i}: not JSON ({exc.msg})")
        except AlertsReportError as exc:
            problems.append(str(exc))
    return alerts, problems


def alert_row(a: Alert, tz: str = "UTC") -> dict[str, str]:
    """One table row: what fired where, on which statistic, with which values (times in
    the IANA zone ``tz``)."""
    events = "; ".join(f"{e.get('type')}@{format_minute(e['ts'], tz)}" for e in a.events
                       if isinstance(e, dict) and "ts" in e)
    sensors = ",".join(a.sensors)
    if a.region:
        sensors = f"{a.region} ({sensors})"
    score = a.score if a.score is not None else a.detail.get("z", "")
    return {"time": format_minute(a.ts, tz), "kind": a.kind, "severity": a.severity,
            "sensors": sensors, "detector": a.detector, "statistic": a.statistic,
            "score": str(score), "events": events, "text": a.text, "id": a.id}


def summarize(alerts: list[Alert], tz: str = "UTC") -> dict[str, Any]:
    rows = [alert_row(a, tz) for a in alerts]
    return {
        "alerts": len(alerts),
        "timezone": tz,
        "first": rows[0]["time"] if rows else None,
        "last": max(r["time"] for r in rows) if rows else None,
        "by_kind": dict(Counter(a.kind for a in alerts)),
        "by_severity": dict(Counter(a.severity for a in alerts)),
        "by_detector": dict(Counter(f"{r['detector']} on {r['statistic']}" for r in rows)),
        "by_sensor": dict(Counter(s for a in alerts for s in a.sensors).most_common()),
        "with_events": sum(bool(a.events) for a in alerts),
    }


def _wrap(text: str, width: int) -> list[str]:
    """``text`` as lines of at most ``width`` characters, broken after spaces, commas and
    semicolons, so that a table cell is wrapped between words, not cut inside one (a word
    longer than the column is split)."""
    if len(text) <= width:
        return [text]
    lines: list[str] = []
    cur = ""
    for tok in re.split(r"(?<=[\s,;])", text):
        while len(tok) > width:
            if cur.strip():
                lines.append(cur.rstrip())
            cur = ""
            lines.append(tok[:width])
            tok = tok[width:]
        if cur.strip() and len((cur + tok).rstrip()) > width:
            lines.append(cur.rstrip())
            cur = tok
        else:
            cur += tok
    if cur.strip():
        lines.append(cur.rstrip())
    return lines or [""]


def format_table(alerts: list[Alert], limit: int = 50, tz: str = "UTC",
                 max_width: int = 40) -> str:
    """The first ``limit`` alerts (time order) as a fixed-width text table; the time column
    names its zone. A cell longer than ``max_width`` wraps onto more lines between words."""
    rows = [alert_row(a, tz) for a in sorted(alerts, key=lambda a: a.ts)][:limit]
    cols = ("time", "kind", "severity", "sensors", "detector", "statistic", "score", "events")
    head = {c: c for c in cols} | {"time": f"time ({tz})"}
    width = {c: min(max([len(head[c])] + [len(r[c]) for r in rows]), max(max_width,
                                                                        len(head[c])))
             for c in cols}
    line = "  ".join(head[c].ljust(width[c]) for c in cols)
    out = [line, "-" * len(line)]
    for r in rows:
        cells = [_wrap(r[c], width[c]) for c in cols]
        for parts in zip_longest(*cells, fillvalue=""):
            out.append("  ".join(v.ljust(width[c]) for v, c in zip(parts, cols, strict=True))
                       .rstrip())
    if len(alerts) > limit:
        out.append(f"... {len(alerts) - limit} more (all in alerts.csv)")
    return "\n".join(out)


def plot_timeline(alerts: list[Alert], path: str | Path, max_sensors: int = 40,
                  title: str = "alerts", tz: str = "UTC", sensors: str | None = None) -> Path:
    """``timeline_figure`` written to ``path`` as a PNG."""
    from replay.plots import save_figure

    return save_figure(timeline_figure(alerts, max_sensors=max_sensors, title=title, tz=tz,
                                       sensors=sensors), path)


def timeline_figure(alerts: list[Alert], max_sensors: int = 40, title: str = "alerts",
                    tz: str = "UTC", sensors: str | None = None) -> Any:
    """One row per sensor (those ``sensors`` names, comma-separated ids or globs, else the
    ``max_sensors`` with most alerts), dates with the year on x in the IANA zone ``tz``; a
    colour and marker per alert kind (larger, black-edged: critical; hollow: info), the
    events the alerts named as grey ticks, the legend right of the data; the open figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from replay.plots import (
        ALERT_MARKERS,
        alert_colour,
        date_axis,
        legend_outside,
        select_sensors,
        to_num,
    )

    counts = Counter(s for a in alerts for s in a.sensors)
    if sensors:
        # an id without alerts gets an empty row; a glob has to match a sensor with alerts
        named = {p.strip() for p in sensors.split(",") if p.strip() and
                 not any(ch in p for ch in "*?[")}
        names = sorted(set(counts) | named)
        shown = [names[i] for i in select_sensors(names, sensors)]
        why = f"sensors chosen with --sensors {sensors!r}"
    else:
        shown = sorted(s for s, _ in counts.most_common(max_sensors))
        why = (f"the {len(shown)} sensors with the most alerts (choose: --sensors)"
               if len(counts) > len(shown) else f"all {len(shown)} sensors with alerts")
    if not sensors and any(not a.sensors for a in alerts):
        shown.append(NO_SENSOR)         # model alerts name no sensor: the top row
    y = {s: i for i, s in enumerate(shown)}
    fig, ax = plt.subplots(figsize=(12, max(3.0, 0.28 * len(shown) + 1.8)),
                           layout="constrained")
    groups: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    ev_x: list[int] = []
    ev_y: list[int] = []
    times: list[int] = []
    for a in alerts:
        for ev in a.events:
            if isinstance(ev, dict) and ev.get("sensor") in y and "ts" in ev:
                ev_x.append(int(ev["ts"]))
                ev_y.append(y[ev["sensor"]])
        rows = [y[s] for s in (a.sensors or [NO_SENSOR]) if s in y]
        if rows:
            xs, ys = groups.setdefault((a.kind, a.severity), ([], []))
            xs += [int(a.ts)] * len(rows)
            ys += rows
            times.append(int(a.ts))
    if ev_x:
        ax.vlines(to_num(ev_x), np.asarray(ev_y) - 0.4, np.asarray(ev_y) + 0.4, color="0.6",
                  lw=2, label="event named by an alert", zorder=1)
    extra: dict[str, str] = {}
    size = {"critical": 70, "warning": 36, "info": 22}
    order = {k: i for i, k in enumerate(("drift", "anomaly", "data-quality", "model"))}
    sev_order = {k: i for i, k in enumerate(("critical", "warning", "info"))}
    for (kind, sev), (xs, ys) in sorted(groups.items(), key=lambda kv: (
            order.get(kv[0][0], 9), kv[0][0], sev_order.get(kv[0][1], 9))):
        colour = alert_colour(kind, extra)
        marker = ALERT_MARKERS.get(kind, "s")
        filled = marker not in ("x", "+", "|", "_", "1", "2", "3", "4")
        style: dict[str, Any] = ({"facecolors": "none" if sev == "info" else colour,
                                  "edgecolors": "black" if sev == "critical" else colour}
                                 if filled else {"color": colour})
        ax.scatter(to_num(xs), ys, marker=marker, s=size.get(sev, 36), zorder=3,
                   linewidths=1.2, label=f"{kind} ({sev})", **style)
    ax.set_yticks(range(len(shown)), shown, fontsize=7)
    ax.set_ylim(-1, max(len(shown), 1))
    ax.set_title(f"{title}: {len(alerts)} alerts; rows: {why}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    all_t = times + ev_x
    if all_t:
        lo, hi = min(all_t), max(all_t)
        pad = max((hi - lo) // 40, 3_600_000)
        date_axis(ax, tz, lo - pad, hi + pad)
    else:
        ax.text(0.5, 0.5, "no alerts", transform=ax.transAxes, ha="center", va="center")
        ax.set_xticks([])
        ax.set_xlabel(f"time ({tz})")
    legend_outside(ax)
    return fig


def write_report(alerts: list[Alert], out_dir: str | Path,
                 title: str = "alerts", tz: str = "UTC",
                 sensors: str | None = None) -> dict[str, Any]:
    """``alerts.csv``, ``summary.json`` and ``timeline.png`` under ``out_dir`` (its rows:
    the sensors ``sensors`` names, ids or globs, else those with the most alerts)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    alerts = sorted(alerts, key=lambda a: a.ts)
    with (out / "alerts.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for a in alerts:
            w.writerow(alert_row(a, tz))
    summary = summarize(alerts, tz)
    (out / "summary.json").write_text(to_json(summary, indent=2))
    plot_timeline(alerts, out / "timeline.png", title=title, tz=tz, sensors=sensors)
    return summary
