"""``make demo``: embedded broker → simulated network with drifts → live worker → summary + PNG."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from connectors.broker import EmbeddedBroker
from connectors.kafka_io import Topics, ensure_topics, read_topic
from connectors.recordings import Recording
from connectors.schemas import format_minute, to_json
from replay.publish import publish_recording
from replay.simulator import DriftTruth, SimConfig, simulate, write_simulation
from stfm.views import start_views
from streaming.config import StreamConfig
from streaming.pipeline.core import StreamCore
from streaming.pipeline.factory import build_model, resolve_checkpoint
from streaming.runtime.worker import LiveWorker


def run_demo(out_dir: Path, *, n_sensors: int = 30, days: float = 14.0, seed: int = 0,
             fresh: bool = False, ui_port: int = 0, keep_open: bool = False) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    rec, truths = simulate(SimConfig(n_sensors=n_sensors, n_days=days, seed=seed))
    data_path = out_dir / "network.npz"
    write_simulation(rec, truths, data_path)
    print(f"[demo] simulated {rec.n_sensors} sensors x {rec.n_steps} steps "
          f"({rec.values.size:,} readings, {len(rec.events)} events, {len(truths)} drifts) "
          f"→ {data_path}", flush=True)
    topics = Topics()
    with EmbeddedBroker() as broker:
        bs = broker.bootstrap_servers
        print(f"[demo] embedded broker on {bs}", flush=True)
        cfg = StreamConfig.from_dict({"kafka": {"bootstrap_servers": bs,
                                                "group_id": "stfm-demo"},
                                      "patching": {"interval_ms": rec.interval_ms or 300_000},
                                      "model": {"seed": seed}})
        ensure_topics(bs, topics.all())
        ckpt = resolve_checkpoint(cfg, None, fresh)
        print(f"[demo] model: {ckpt or 'fresh (randomly initialized)'}", flush=True)
        model = build_model(cfg, ckpt)
        model.set_graph(list(rec.sensors), rec.edge_index, rec.edge_weight)
        core = StreamCore(cfg, model, sensors=list(rec.sensors),
                          positions=np.stack([rec.lat, rec.lon], 1) if rec.lat is not None
                          else None)
        errors: list[BaseException] = []

        def _publish() -> None:
            try:
                publish_recording(rec, bs, speed=0.0, progress=True)
            except BaseException as exc:  # reported after the worker stops
                errors.append(exc)

        cfg.observe.ui_port = ui_port
        views = start_views(cfg, ui=True)
        assert views.feed is not None
        views.feed.set_network(rec.sensors, rec.lat, rec.lon, rec.edge_index)
        print(f"[demo] live page: {views.url('page')} (open it while the demo runs)",
              flush=True)
        pub = threading.Thread(target=_publish, name="publisher")
        pub.start()
        worker = LiveWorker(cfg, core, idle_exit_s=4.0, status_every_s=5.0,
                            observers=views.observers)
        try:
            stats = asyncio.run(worker.run())
        finally:
            pub.join()
            if not keep_open:
                views.close()
        if errors:
            raise errors[0]
        forecasts = _collect(bs, topics.forecasts)
        alerts = [json.loads(v) for _, v, _, _ in read_topic(bs, topics.alerts)]
        dead = [json.loads(v) for _, v, _, _ in read_topic(bs, topics.dead_letter)]
    summary = _summary(rec, truths, core, stats.as_dict(), alerts)
    summary["interval_coverage_p10_p90"] = _coverage(rec, forecasts)
    reasons: dict[str, int] = {}
    for d in dead:
        key = f"{d['topic']}: {d['reason']}"
        reasons[key] = reasons.get(key, 0) + 1
    summary["dead_letter_reasons"] = reasons
    (out_dir / "summary.json").write_text(to_json(summary, indent=2))
    png = _plot(rec, truths, forecasts, alerts, out_dir / "demo.png",
                tz=cfg.patching.timezone)
    _print_summary(summary, png, time.monotonic() - t0)
    if keep_open:
        print(f"[demo] live page still at {views.url('page')}; Ctrl-C to stop", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            views.close()
    return 0


def _collect(bs: str, topic: str) -> dict[str, list[dict[str, Any]]]:
    by_sensor: dict[str, list[dict[str, Any]]] = {}
    for _, v, _, _ in read_topic(bs, topic):
        f = json.loads(v)
        by_sensor.setdefault(f["sensor"], []).append(f)
    return by_sensor


def _coverage(rec: Recording, forecasts: dict[str, list[dict[str, Any]]]) -> float | None:
    """Share of the recorded values inside the forecasts' p10-p90 bounds."""
    row = {int(t): i for i, t in enumerate(rec.timestamps.tolist())}
    col = {s: j for j, s in enumerate(rec.sensors)}
    inside = total = 0
    for s, fs in forecasts.items():
        for f in fs:
            if "q" not in f:
                return None
            for t, lo, hi in zip(f["horizon_ts"], f["q"]["0.1"], f["q"]["0.9"], strict=True):
                r = row.get(int(t))
                if r is not None and s in col and not np.isnan(rec.values[r, col[s]]):
                    inside += lo <= rec.values[r, col[s]] <= hi
                    total += 1
    return inside / total if total else None


def _raised(alert: dict[str, Any]) -> int:
    """When an alert message was raised (messages of earlier versions: its ``ts``)."""
    return int(alert.get("raised_ts", alert["ts"]))


def _summary(rec: Recording, truths: list[DriftTruth], core: StreamCore,
             stats: dict[str, Any], alerts: list[dict[str, Any]]) -> dict[str, Any]:
    step_ms = core.cfg.patching.interval_ms * core.cfg.patching.patch_len
    rows = []
    for t in truths:
        # raised after the onset (an alert's ``ts`` is its estimated onset; its delay is
        # when it was raised)
        hits = [a for a in alerts
                if set(a["sensors"]) & set(t.sensors) and _raised(a) >= t.onset_ts]
        first = min(hits, key=_raised) if hits else None
        rows.append({"kind": t.kind, "sensors": t.sensors, "onset": format_minute(t.onset_ts),
                     "first_alert": format_minute(_raised(first)) if first else None,
                     "delay_steps": (_raised(first) - t.onset_ts) / step_ms if first else None})
    onset = {s: t.onset_ts for t in truths for s in t.sensors}
    season = core.cfg.drift.season_ms
    interval = core.cfg.patching.interval_ms

    def _explained_by_event(a: dict[str, Any]) -> bool:
        # an incident disturbs its step, and one season later the seasonal reference too
        for ev in rec.events:
            dur = (ev.get("attrs", {}).get("duration_steps", 12) + 2) * interval + step_ms
            if ev.get("sensor") in a["sensors"] and any(
                    ev["ts"] <= _raised(a) - lag <= ev["ts"] + dur for lag in (0, season)):
                return True
        return False

    after_drift = [a for a in alerts if any(s in onset and _raised(a) >= onset[s]
                                            for s in a["sensors"])]
    by_event = [a for a in alerts if a not in after_drift and _explained_by_event(a)]
    unexplained = len(alerts) - len(after_drift) - len(by_event)
    return {"readings_consumed": stats["messages"], "readings_accepted":
            stats["readings_accepted"], "forecasts": stats["forecasts"], "alerts": len(alerts),
            "dead_letters": stats["dead_letters"], "alerts_after_injected_drift": len(after_drift),
            "alerts_during_incident_events": len(by_event), "alerts_unexplained": unexplained,
            "online_mae": core.metrics.mae, "online_mae_normalized": core.metrics.mae_norm,
            "experts_mae": {e: m.mae for e, m in core.forecaster.expert_metrics.items()},
            "model_version": core.model.version, "drifts": rows}


def _print_summary(s: dict[str, Any], png: Path, seconds: float) -> None:
    print("\n=== stfm demo summary ===")
    print(f"readings consumed   {s['readings_consumed']:,}  (accepted {s['readings_accepted']:,},"
          f" dead letters {s['dead_letters']})")
    for reason, n in s.get("dead_letter_reasons", {}).items():
        print(f"  dead letter x{n}: {reason}")
    print(f"forecasts produced  {s['forecasts']:,}   model {s['model_version']}")
    if s.get("interval_coverage_p10_p90") is not None:
        print(f"  p10-p90 interval  holds {100 * s['interval_coverage_p10_p90']:.1f} % of the "
              "readings (target 80 %)")
    ex = s.get("experts_mae", {})
    pers = ex.get("persistence")
    vs = f" = {s['online_mae'] / pers:.2f} x persistence's {pers:.3f}" if pers else ""
    print(f"online MAE          {s['online_mae']:.3f} served{vs}")
    others = ", ".join(f"{e} {v:.3f}" for e, v in ex.items() if v == v and e != "persistence")
    if others:
        print(f"  experts' MAE      {others}")
    print(f"alerts raised       {s['alerts']}: {s['alerts_after_injected_drift']} on drifted "
          f"sensors after the onset, {s['alerts_during_incident_events']} at incident events, "
          f"{s['alerts_unexplained']} unexplained")
    print(f"{'injected drift':<20} {'sensors':<16} {'onset':<17} {'first alert':<17} delay")
    for r in s["drifts"]:
        delay = f"{r['delay_steps']:.1f} steps" if r["delay_steps"] is not None else "missed"
        print(f"{r['kind']:<20} {','.join(r['sensors'])[:16]:<16} {r['onset']:<17} "
              f"{r['first_alert'] or '-':<17} {delay}")
    print(f"plot: {png}\nfinished in {seconds:.0f}s")


def _plot(rec: Recording, truths: list[DriftTruth], forecasts: dict[str, list[dict[str, Any]]],
          alerts: list[dict[str, Any]], path: Path, tz: str = "UTC") -> Path:
    """Readings, live forecasts with their p10-p90 band, injected drifts and alerts of up to
    four drifted sensors, on a date axis in ``tz`` with the legend right of the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from replay.plots import alert_colour, date_axis, legend_outside, to_num, value_label

    shown: list[str] = []
    for t in truths:
        if t.sensors[0] not in shown:
            shown.append(t.sensors[0])
    shown = shown[:4] or list(rec.sensors[:4])
    fig, axes = plt.subplots(len(shown), 1, figsize=(12, 1.2 + 2.4 * len(shown)),
                             sharex=True, layout="constrained")
    axes = np.atleast_1d(axes)
    x = to_num(rec.timestamps)
    handles: dict[str, Any] = {}
    for ax, s in zip(axes, shown, strict=True):
        j = rec.sensors.index(s)
        ax.plot(x, rec.values[:, j], lw=0.6, color="0.4", label="readings")
        fs = forecasts.get(s, [])
        if fs:
            hx = to_num(np.concatenate([f["horizon_ts"] for f in fs]))
            hy = np.concatenate([f["yhat"] for f in fs])
            ax.plot(hx, hy, lw=0.6, color="tab:blue", alpha=0.8, label="forecasts")
            if all("q" in f for f in fs):
                lo = np.concatenate([f["q"]["0.1"] for f in fs])
                hi = np.concatenate([f["q"]["0.9"] for f in fs])
                ax.fill_between(hx, lo, hi, color="tab:blue", alpha=0.15, lw=0,
                                label="p10-p90")
        kinds = [t.kind for t in truths if s in t.sensors]
        for t in truths:
            if s in t.sensors:
                ax.axvline(to_num([t.onset_ts])[0], color="black", ls="--", lw=1,
                           label="injected drift onset")
        for a in alerts:
            if s in a["sensors"]:
                kind = str(a.get("kind", "?"))
                ax.axvline(to_num([a["ts"]])[0], color=alert_colour(kind), lw=1.5,
                           label=f"{kind} alert")
        ax.set_title(f"{s}: injected {', '.join(kinds)}" if kinds else s, fontsize=9,
                     loc="left")
        ax.set_ylabel(value_label([s]), fontsize=8)
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    legend_outside(axes[0], list(handles.values()), list(handles))
    date_axis(axes[-1], tz, int(rec.timestamps[0]), int(rec.timestamps[-1]))
    fig.suptitle("stfm demo: live forecasts and drift alerts")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
