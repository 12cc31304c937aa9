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
from collections import Counter
from pathlib import Path
from typing import Any

from connectors.schemas import Alert, format_minute, to_json, zone

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
                      progress: bool = False) -> tuple[list[Alert], list[str]]:
    """Alerts of a topic range (offsets: same bounds on every partition; times: the alerts'
    own ``ts``, end exclusive) and the problems of the messages that were not alerts (each
    named by its position)."""
    from replay.record import consume_range

    values, _ = consume_range(bootstrap_servers, topic, start_offset=start_offset,
                              end_offset=end_offset, progress=progress)
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


def format_table(alerts: list[Alert], limit: int = 50, tz: str = "UTC") -> str:
    """The first ``limit`` alerts (time order) as a fixed-width text table; the time column
    names its zone."""
    rows = [alert_row(a, tz) for a in sorted(alerts, key=lambda a: a.ts)][:limit]
    cols = ("time", "kind", "severity", "sensors", "detector", "statistic", "score", "events")
    head = {c: c for c in cols} | {"time": f"time ({tz})"}
    width = {c: min(max([len(head[c])] + [len(r[c]) for r in rows]), 36) for c in cols}
    line = "  ".join(head[c].ljust(width[c]) for c in cols)
    out = [line, "-" * len(line)]
    out += ["  ".join(r[c][:width[c]].ljust(width[c]) for c in cols) for r in rows]
    if len(alerts) > limit:
        out.append(f"... {len(alerts) - limit} more (all in alerts.csv)")
    return "\n".join(out)


def plot_timeline(alerts: list[Alert], path: str | Path, max_sensors: int = 40,
                  title: str = "alerts", tz: str = "UTC") -> Path:
    """One row per sensor (the ``max_sensors`` with most alerts), time on x (labelled in the
    IANA zone ``tz``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np

    counts = Counter(s for a in alerts for s in a.sensors)
    sensors = sorted(s for s, _ in counts.most_common(max_sensors))
    y = {s: i for i, s in enumerate(sensors)}
    fig, ax = plt.subplots(figsize=(12, max(3.0, 0.28 * len(sensors) + 1.5)))
    markers = {"drift": "v", "anomaly": "o", "data-quality": "x", "model": "s"}
    colours = {"critical": "tab:red", "warning": "tab:orange"}
    seen: set[tuple[str, str]] = set()
    for a in alerts:
        t = np.datetime64(int(a.ts), "ms")
        for ev in a.events:
            if isinstance(ev, dict) and ev.get("sensor") in y:
                ax.plot([np.datetime64(int(ev["ts"]), "ms")] * 2,
                        [y[ev["sensor"]] - 0.4, y[ev["sensor"]] + 0.4], color="0.6", lw=2)
        for s in a.sensors:
            if s not in y:
                continue
            key = (a.kind, a.severity)
            ax.scatter([t], [y[s]], marker=markers.get(a.kind, "s"),
                       color=colours.get(a.severity, "tab:blue"), s=36,
                       label=f"{key[0]} ({key[1]})" if key not in seen else None, zorder=3)
            seen.add(key)
    ax.set_yticks(range(len(sensors)), sensors, fontsize=7)
    ax.set_ylim(-1, max(len(sensors), 1))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=zone(tz)))
    ax.set_xlabel(f"time ({tz})")
    ax.set_title(f"{title}: {len(alerts)} alerts (grey: events named by alerts)")
    ax.grid(axis="x", alpha=0.3)
    if seen:
        ax.legend(loc="upper left", fontsize=8, ncol=3)
    fig.autofmt_xdate()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(alerts: list[Alert], out_dir: str | Path,
                 title: str = "alerts", tz: str = "UTC") -> dict[str, Any]:
    """``alerts.csv``, ``summary.json`` and ``timeline.png`` under ``out_dir``."""
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
    plot_timeline(alerts, out / "timeline.png", title=title, tz=tz)
    return summary
