"""The online core: one region's pipeline of small stages, plain synchronous Python/torch.

    readings → patcher → context window → baselines → forecaster (model + baselines, weighted)
             → signals → detectors → alert gate

The live worker, the Faust engine and ``replay backtest`` drive this same class, so the same
input order gives the same outputs. Every stage is its own module with ``state_dict`` /
``load_state_dict``; the core's state is ``{stage: stage.state_dict()}``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.schemas import Alert, EventBatch, ReadingBatch, format_when
from streaming.alerts.alert_gate import AlertGate, Evidence
from streaming.alerts.anomaly import AnomalyScorer, ScoreBlock
from streaming.alerts.changepoint import ChangeMonitor
from streaming.alerts.drift import DriftMonitor
from streaming.alerts.quality import DataQuality, QualityEvent
from streaming.alerts.signals import Signals
from streaming.alerts.wording import finish, usual_range
from streaming.config import StreamConfig
from streaming.forecast.baselines import Baselines
from streaming.forecast.forecaster import Forecaster
from streaming.forecast.metrics import OnlineMetrics
from streaming.forecast.online import OnlineModel
from streaming.ingest.cadence import format_interval
from streaming.ingest.clock import FutureFlag
from streaming.ingest.patching import ClosedStep, IncrementalPatcher
from streaming.ingest.registry import SensorRegistry
from streaming.ingest.window import ContextWindow, Pending

STAGES = ("patcher", "window", "baselines", "forecaster", "signals", "quality", "scorer", "drift",
          "changes", "gate")
NEW_STAGES = ("quality", "changes")   # a state of an earlier version may lack these: they
#                                       start fresh


@dataclass
class ForecastBlock:
    """Forecasts made when one step closed, for every sensor that existed at that step."""

    step: int
    ts: int                      # end of the step
    horizon_ts: np.ndarray       # int64 [H]: timestamps of the forecast grid points
    sensors: list[str]
    yhat: np.ndarray             # float64 [N, H] on the input scale
    model_version: str
    rows: np.ndarray | None = None  # int64 [N]: the sensors' indices in the core (None: 0..N-1)
    expert: list[str] = field(default_factory=list)   # each sensor's leading expert
    experts: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N, H] forecasts
    q: dict[str, np.ndarray] = field(default_factory=dict)  # "0.1"/"0.9" -> [N, H] bounds
    imputed: np.ndarray | None = None  # float64 [N, P]: the step's points filled by the
    #                                    model (NaN: observed or not filled)
    imputed_ts: np.ndarray | None = None  # int64 [P]: their timestamps


@dataclass
class CoreOutput:
    forecasts: list[ForecastBlock] = field(default_factory=list)
    scores: list[ScoreBlock] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    statistics: list[tuple[int, dict[str, np.ndarray]]] = field(default_factory=list)
    # ^ (step, channel -> [N]) the drift monitors were fed
    rejected_readings: list[tuple[int, str]] = field(default_factory=list)
    rejected_events: list[tuple[int, str]] = field(default_factory=list)
    rejected_held: list[tuple[Any, str]] = field(default_factory=list)
    # ^ readings held back in earlier batches (ahead of the clock) that turned out bad:
    #   (the handle their batch gave in ``ReadingBatch.refs``, reason)
    steps: list[ClosedStep] = field(default_factory=list)   # the steps closed, in order
    step_seconds: list[float] = field(default_factory=list, compare=False)
    # ^ wall-clock processing time of each (for the metrics; not part of the output)


class StreamCore:
    """One region's stages, driven one batch at a time (see module docstring)."""

    def __init__(self, cfg: StreamConfig, model: OnlineModel,
                 sensors: list[str] | None = None,
                 positions: np.ndarray | None = None) -> None:
        self.cfg = cfg
        self.positions = positions          # [N, 2] lat/lon, to place events without a sensor
        p, m = cfg.patching, cfg.model
        self.window = ContextWindow(m.context_patches, p.patch_len, m.horizon)
        self.patcher = IncrementalPatcher(p, SensorRegistry(sensors, fixed=sensors is not None))
        self.baselines = Baselines(cfg)
        self.forecaster = Forecaster(cfg, model, self.baselines.names)
        self.signals = Signals(cfg)
        self.quality = DataQuality(cfg)
        self.scorer = AnomalyScorer(cfg)
        self.drift = DriftMonitor(cfg.drift, step_ms=p.interval_ms * p.patch_len,
                                  patch_len=p.patch_len, tz=p.timezone)
        self.changes = ChangeMonitor(cfg.drift, cfg.alerts.max_per_10k, p.interval_ms,
                                     p.patch_len, p.timezone)
        extra = model.meta.get("extra", {})
        self.gate = AlertGate(cfg, extra.get("edge_index"), extra.get("sensors"))
        self._own: frozenset[str] | None = None     # None: every sensor is the region's own
        self._own_mask: np.ndarray | None = None

    @property
    def sensors(self) -> list[str]:
        return self.patcher.registry.ids

    @property
    def model(self) -> OnlineModel:
        return self.forecaster.model

    @model.setter
    def model(self, model: OnlineModel) -> None:
        self.forecaster.model = model

    @property
    def metrics(self) -> OnlineMetrics:
        return self.forecaster.metrics

    @property
    def forecasts_made(self) -> int:
        return self.forecaster.forecasts_made

    def known_sensors(self) -> frozenset[str] | None:
        """The fixed sensor set (a graph's nodes), or None when sensors join on first sight."""
        return frozenset(self.sensors) if self.patcher.registry.fixed else None

    def knows(self, sensor: str) -> bool:
        """Whether ``sensor`` is one of this region's sensors (so far)."""
        return sensor in self.patcher.registry.index

    def set_partitions(self, active: set[int]) -> None:
        """Input partitions with data still to come: the event-time clock waits for them."""
        self.patcher.set_partitions(active)

    def set_own(self, sensors: frozenset[str] | set[str] | None) -> None:
        """The sensors this region serves; the other sensors of its graph are *ghosts*
        (``streaming.ingest.halo``): their readings feed the model's graph layer, but they get no
        forecasts, alerts or metrics here. None: every sensor is the region's own."""
        self._own = None if sensors is None else frozenset(sensors)
        self._own_mask = None

    def own_mask(self, n: int) -> np.ndarray | None:
        """Which of the first ``n`` sensors are the region's own (None: all)."""
        if self._own is None:
            return None
        m = self._own_mask
        if m is None or len(m) != n:
            own = self._own
            m = self._own_mask = np.fromiter((s in own for s in self.sensors[:n]), bool, n)
        return m

    def own_count(self) -> int:
        """Sensors this region serves (its ghosts not counted)."""
        return len(self.sensors) if self._own is None else len(self._own)

    def is_ghost(self, sensor: str) -> bool:
        return self._own is not None and sensor not in self._own

    # --- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Every stage's state: plain data (arrays, numbers, strings, dicts)."""
        return {name: getattr(self, name).state_dict() for name in STAGES}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output into a core built with the same configuration."""
        missing = [name for name in STAGES if name not in state and name not in NEW_STAGES]
        if missing:
            raise ValueError(f"core state has no {', '.join(missing)} (not a state of this "
                             "version)")
        for name in STAGES:
            if name in state:
                getattr(self, name).load_state_dict(state[name])

    # --- driving ------------------------------------------------------------------------

    def process(self, readings: ReadingBatch, events: EventBatch | None = None, *,
                now_ms: int | None = None, arrival_ms: int | None = None) -> CoreOutput:
        """Consume one batch and return what it produced.

        Readings are judged and stored first, then the batch's events are counted (into the
        steps still open, which include every step this batch closes, so the order is that
        of a worker applying events before readings), then the steps the watermark passed
        are closed, each going through the stages. ``now_ms`` (processing time; live only)
        bounds how far ahead of it a reading may be stamped. ``arrival_ms`` is when the batch
        arrived, for the clock's quorum (default ``now_ms``; a replay passes its rows' time).
        """
        out = CoreOutput()
        full_before = self.patcher.stats.capacity > 0
        adm = self.patcher.admit(readings, now_ms, arrival_ms)
        out.rejected_readings, out.rejected_held = adm.rejected, adm.rejected_held
        if adm.full and not full_before:        # said once (the count is in the stats)
            out.alerts.append(self._capacity_alert(readings))
        out.alerts += [self._future_alert(f) for f in adm.flags if not self.is_ghost(f.sensor)]
        if events is not None and len(events):
            out.rejected_events = self._add_events(events, now_ms)
        for step in self.patcher.close_ready():
            self._step(step, out)
        return out

    def flush(self) -> CoreOutput:
        """End of input: close every open step, the last partial one included, so that its
        readings are realized, scored and checked (``patching.close_all``)."""
        out = CoreOutput()
        for step in self.patcher.close_all():
            self._step(step, out)
        return out

    def _step(self, step: ClosedStep, out: CoreOutput) -> None:
        """One closed step through the stages (timed for the metrics)."""
        t0 = time.perf_counter()
        self._stages(step, out)
        out.steps.append(step)
        out.step_seconds.append(time.perf_counter() - t0)

    def _stages(self, step: ClosedStep, out: CoreOutput) -> None:
        n = step.values.shape[0]
        names = self.sensors[:n]
        own = self.own_mask(n)
        self.forecaster.own = own
        self.window.push(step)
        _, scale = self.forecaster.scale(names)
        nowcast = self.signals.nowcast(step, self.window.pending.get(step.step - 1))
        realized = self.forecaster.realize(self.window.due(step.step), step.step, names)
        seasonal = self.signals.seasonal(step, scale)
        self.forecaster.observe(step.values)
        self.baselines.update(step)
        inputs = self.forecaster.inputs(self.window, names)
        exists = self.patcher.exists(n, step.step)
        yhat, emb, bad, pending, leader = self.forecaster.predict(
            inputs, names, exists, self.window.values[:n],
            self.baselines.forecast(n, step.end_ts))
        self.window.remember(step.step, pending)
        block = self._block(step, yhat, exists if own is None else exists & own, leader,
                            pending)
        filled = inputs.newest_imputed()
        if filled is not None:
            block.imputed = filled[block.rows]
            block.imputed_ts = step.start_ts + self.cfg.patching.interval_ms * np.arange(
                filled.shape[1], dtype=np.int64)
        out.forecasts.append(block)
        if own is not None:
            bad = [s for s in bad if not self.is_ghost(s)]
        alerts = [self._bad_forecast_alert(step, bad)] if bad else []
        alerts += [self._quality_alert(step, ev) for ev in self.quality.update(step)
                   if own is None or own[ev.sensor]]
        quiet = (set(np.flatnonzero(self.quality.suppressed[:n]).tolist())
                 if self.cfg.data_quality.suppress else set())
        if own is not None:
            quiet |= set(np.flatnonzero(~own).tolist())
        distance = self.signals.embedding_distance(emb, n)
        scores, evidence = self.scorer.update(step.step, step.end_ts, names, nowcast, distance,
                                              step.values,
                                              explain_at=self.cfg.alerts.anomaly_threshold)
        out.scores.append(scores)
        alerts += self.gate.update("anomaly", step.step, step.end_ts,
                                   _without(evidence, names, quiet), names, scores.score)
        stats = self.signals.drift_channels(realized, seasonal, distance)
        out.statistics.append((step.step, stats))
        if self.cfg.drift.detector == "bocpd":
            found = _without(self.changes.update(names, step.step, step.start_ts, step.values,
                                                 step.end_ts), names, quiet)
            for name, ev in found.items():
                self._name_trend(self.patcher.registry.index[name], step.step, ev)
        else:
            found = _without(self.drift.update(names, stats, step.step, step.end_ts), names,
                             quiet)
            for name, ev in found.items():
                self._describe_change(self.patcher.registry.index[name], step.step, ev)
        drift = self.gate.update("drift", step.step, step.end_ts, found)
        for a in drift:
            self.forecaster.boost(a.sensors, step.step)
        alerts += drift
        self.gate.name_events(alerts, step.end_ts)
        out.alerts += [_stamp(finish(a, self._usual(a, step.step)), step,
                              self.cfg.patching.interval_ms) for a in alerts]
        self.forecaster.after_step(inputs, step.step, names)
        events = self.forecaster.drain_events()
        if events and self.gate.due("model", "region", step.step,
                                    self.cfg.alerts.drift_cooldown_steps + 1):
            out.alerts.append(finish(self._rollback_alert(step, events, len(events))))

    def _block(self, step: ClosedStep, yhat: np.ndarray, exists: np.ndarray,
               leader: list[str], pending: Pending) -> ForecastBlock:
        interval = self.cfg.patching.interval_ms
        horizon_ts = step.end_ts + interval * np.arange(self.cfg.model.horizon, dtype=np.int64)
        rows = np.flatnonzero(exists)
        return ForecastBlock(step.step, step.end_ts, horizon_ts, [self.sensors[i] for i in rows],
                             yhat[rows], self.forecaster.version, rows,
                             [leader[i] for i in rows],
                             {e: pending.experts[rows, :, j]
                              for j, e in enumerate(self.forecaster.experts)},
                             {} if pending.lo is None or pending.hi is None else
                             {"0.1": pending.lo[rows], "0.9": pending.hi[rows]})

    def feedback(self, step: int, y: np.ndarray) -> bool:
        """Immediate feedback (the FSNet/OneNet protocol, for comparisons only): score and
        learn from the forecast made at ``step`` with its true values ``y`` ``[N, H]`` (input
        scale, NaN unknown) now, instead of when the stream delivers them. Returns whether a
        forecast of that step was pending."""
        pend = self.window.pending.pop(step, None)
        if pend is None:
            return False
        self.forecaster.feedback(pend, y, step, self.sensors)
        return True

    # --- events -------------------------------------------------------------------------

    def _add_events(self, events: EventBatch, now_ms: int | None) -> list[tuple[int, str]]:
        """Count events as side information of the steps they fall in. Events come on their
        own topic, so they may arrive after their step closed; such an event still enters
        the context of later forecasts while its step is in the window."""
        p = self.patcher
        sensor = [self._sensor_of(ev) for ev in events.events]
        rejected: list[tuple[int, str]] = []
        current: list[int] = []
        for i, ev in enumerate(events.events):
            step = int(p.step_of(ev["ts"]))
            if p.next_open is None or step >= p.next_open:
                current.append(i)
                continue
            s = sensor[i]
            why = (self.window.add_event(s, step) if s is not None else
                   "event names no known sensor and no position near one")
            if why:
                rejected.append((i, why))
            else:
                p.count_events(1)
                self.gate.log_event(ev, self.sensors[s])      # type: ignore[index]
        bad = dict(p.add_events([events.events[i] for i in current],
                                [sensor[i] for i in current], now_ms))
        for j, i in enumerate(current):
            if j in bad:
                rejected.append((i, bad[j]))
            elif sensor[i] is not None:
                self.gate.log_event(events.events[i], self.sensors[sensor[i]])
        return sorted(rejected)

    def _sensor_of(self, ev: dict[str, Any]) -> int | None:
        s = ev.get("sensor")
        if s is not None:
            return self.patcher.registry.index.get(s)
        if "lat" in ev and self.positions is not None and len(self.positions):
            d = (self.positions[:, 0] - ev["lat"]) ** 2 + (self.positions[:, 1] - ev["lon"]) ** 2
            return int(np.argmin(d))
        return None

    # --- data-quality alerts ------------------------------------------------------------

    def _capacity_alert(self, readings: ReadingBatch) -> Alert:
        """The region reached ``patching.max_sensors``: new sensors are refused."""
        cap = self.cfg.patching.max_sensors
        ts = int(readings.ts.max()) if len(readings.ts) else 0
        return self.gate.report("data-quality", self.patcher.next_open, ts, [], Evidence(
            score=1.0, detector="capacity", statistic="sensors per region",
            key="data-quality:capacity",
            text=f"this region serves its limit of {cap:,} sensors (patching.max_sensors): "
                 "readings of new sensor ids go to dead-letter as 'capacity' (counted in "
                 "stfm_dead_letters_total); the known sensors are still served. Raise the "
                 "limit or split the network over more partitions if the new ids are real",
            detail={"max_sensors": cap, "sensors": len(self.patcher.registry)}))

    def _future_alert(self, flag: FutureFlag) -> Alert:
        """A sensor whose readings arrive stamped far ahead."""
        ref = flag.clock_ts
        against = "the network's event-time clock" if ref is not None else "processing time"
        ahead = (f"{(flag.ts - ref) / 3_600_000:.1f} h ahead of {against}" if ref is not None
                 else f"ahead of {against}")
        return self.gate.report("data-quality", self.patcher.next_open,
                                ref if ref is not None else flag.ts, [flag.sensor], Evidence(
            score=1.0, detector="event-time-clock", statistic="reading timestamp",
            key=f"data-quality:future:{flag.sensor}:{flag.ts}",
            text=f"{flag.sensor} sends readings stamped {ahead} (reading at "
                 f"{format_when(flag.ts, self.cfg.patching.timezone)}); they go to "
                 "dead-letter as 'future' and do not "
                 "move the clock",
            detail={"reading_ts": int(flag.ts), "clock_ts": None if ref is None else int(ref),
                    "reason": flag.reason}))

    def _usual(self, alert: Alert, step: int) -> tuple[float, float] | None:
        """Where the alert's leading sensor usually sits (``wording.usual_range``): its
        readings in the context window before the drift's onset, or before this step for an
        anomaly; None when the window holds too few of them."""
        if alert.kind not in ("anomaly", "drift") or not alert.sensors:
            return None
        top = (alert.region[len("region:"):] if alert.region and
               alert.region.startswith("region:") else alert.sensors[0])
        i = self.patcher.registry.index.get(top)
        if i is None or i >= self.window.values.shape[0]:
            return None
        k = self.window.k
        if alert.kind == "anomaly":
            return usual_range(self.window.values[i, :k - 1])
        since = alert.detail.get("since_step")
        r = step - int(since) + 1 if since is not None else k
        return usual_range(self.window.values[i, :k - r]) if 0 < r < k else None

    def _describe_change(self, i: int, step: int, ev: Evidence) -> None:
        """Say what changed in the sensor's values since the drift's onset: a trend change
        (the slope changed by two pre-onset std over the stretch since the onset, with no
        jump at the onset and the new stretch close to a line), a level change (the mean
        moved by at least one pre-onset std) up or down, a variance change (std ratio beyond
        1.5), a season change (the drift is in the error against a season ago, level and
        spread kept), else a change of shape. Compares the context window's values after the
        onset with those before it; nothing is said when the window does not reach back past
        the onset."""
        sides = self._around_onset(i, step, ev.detail.get("since_step"), 1)
        if sides is None:
            return
        before, after = sides
        sd_b, sd_a = float(np.std(before)), float(np.std(after))
        delta = float(np.mean(after) - np.mean(before))
        ratio = sd_a / sd_b if sd_b > 0 else (1.0 if sd_a == 0 else math.nan)
        trend = _trend_change(before, after, sd_b)
        if trend is not None:
            kind, direction = "trend", "up" if trend[1] > trend[0] else "down"
            words = f"trend now {trend[1]:+.3g} per reading (was {trend[0]:+.3g})"
        elif sd_b > 0 and abs(delta) >= sd_b:
            kind, words = "level", (f"level {'rose' if delta > 0 else 'fell'} by "
                                    f"{abs(delta):.3g} ({abs(delta) / sd_b:.1f} std)")
            direction = "up" if delta > 0 else "down"
        elif math.isnan(ratio):
            kind, direction = "variance", "up"
            words = f"values vary (std {sd_a:.3g}) after a constant stretch"
        elif ratio >= 1.5 or ratio <= 1 / 1.5:
            kind, direction = "variance", "up" if ratio > 1 else "down"
            words = f"variability x{ratio:.2f}"
        elif ev.statistic == "seasonal_residual":
            kind, direction = "season", None
            words = "the seasonal pattern changed (level and spread kept)"
        else:
            kind, direction, words = "shape", None, "shape changed, level and spread kept"
        ev.detail.update({"change": kind, "value_direction": direction,
                          "level_change": round(delta, 6),
                          "std_ratio": None if math.isnan(ratio) else round(ratio, 4)})
        ev.text += f"; {words}"

    def _around_onset(self, i: int, step: int, since: int | None, min_steps: int
                      ) -> tuple[np.ndarray, np.ndarray] | None:
        """Sensor ``i``'s observed values in the context window before and since the step
        ``since`` (as many before as after, at least 4 steps): None when the stretch since
        has fewer than ``min_steps`` steps, the window does not reach back past it, or
        either side has fewer than 2 values."""
        k = self.window.k
        if since is None or i >= self.window.values.shape[0]:
            return None
        r = step - int(since) + 1
        if not min_steps <= r < k:
            return None
        vals = self.window.values[i]
        after, before = vals[k - r:].ravel(), vals[max(0, k - 2 * max(r, 4)):k - r].ravel()
        after, before = after[~np.isnan(after)], before[~np.isnan(before)]
        if len(after) < 2 or len(before) < 2:
            return None
        return before, after

    def _name_trend(self, i: int, step: int, ev: Evidence) -> None:
        """A level change whose values since the onset follow a new line rather than a new
        level is reported as a trend change (``_trend_change`` on the context window)."""
        sides = (self._around_onset(i, step, ev.detail.get("since_step"), 2)
                 if ev.detail.get("change") == "level" and not ev.detail.get("recovered")
                 else None)
        if sides is None:
            return
        before, after = sides
        trend = _trend_change(before, after, float(np.std(before)))
        if trend is None:
            return
        direction = "up" if trend[1] > trend[0] else "down"
        ev.detail.update({"change": "trend", "value_direction": direction,
                          "direction": direction, "slope_before": round(trend[0], 6),
                          "slope_after": round(trend[1], 6)})
        ev.text = (f"{ev.text}; the values since follow a new trend of {trend[1]:+.3g} per "
                   f"reading (was {trend[0]:+.3g})")

    def _quality_alert(self, step: ClosedStep, ev: QualityEvent) -> Alert:
        name = self.sensors[ev.sensor]
        p = self.cfg.patching
        since = format_when(ev.since_ts, p.timezone, p.interval_ms)
        if ev.condition == "silence":
            took = format_interval(int(ev.detail["silent_steps"]) * p.interval_ms * p.patch_len)
            text = (f"{name} silent since {since}: no reading for {took} while other sensors "
                    "report; check the sensor's power and its link" if ev.raised
                    else f"{name} reports again (silent since {since}, for {took})")
        else:
            took = format_interval(int(ev.detail["readings"]) * p.interval_ms)
            text = (f"{name} flat at {ev.detail['value']:g} since {since}: "
                    f"{ev.detail['readings']} identical readings ({took}); check whether the "
                    "sensor is stuck or its value is held upstream" if ev.raised
                    else f"{name} no longer flat (was {ev.detail['value']:g} since {since}, "
                         f"for {took})")
        state = "raised" if ev.raised else "cleared"
        return self.gate.report("data-quality", step.step, step.end_ts, [name], Evidence(
            score=1.0 if ev.raised else 0.0, detector="data-quality", statistic=ev.condition,
            text=text, severity="warning" if ev.raised else "info",
            detail={"condition": ev.condition, "state": state, "since_ts": ev.since_ts,
                    "since_step": ev.since_step, **ev.detail},
            key=f"data-quality:{name}:{ev.condition}:{ev.since_step}:{state}"))

    def _bad_forecast_alert(self, step: ClosedStep, names: list[str]) -> Alert:
        """One ``model`` alert for the region: the model gave non-finite forecasts."""
        return self.gate.report("model", step.step, step.end_ts, names, Evidence(
            score=1.0, detector="forecast-guard", statistic="forecast",
            key=f"model:forecast:{step.step}",
            text=f"non-finite forecast for {len(names)} sensor(s) ({', '.join(names[:5])}); "
                 "served the last observed value",
            detail={"model_version": self.forecaster.version}))

    def _rollback_alert(self, step: ClosedStep, events: list[dict[str, Any]], n: int
                        ) -> Alert:
        """Online updates that went bad and were rolled back (reported by the model): one
        ``model`` alert for the region, at most one per cooldown (``alerts.
        drift_cooldown_steps``), not a data-quality alert per sensor (the batch's sensors
        are counted in the detail, not listed as the alert's sensors)."""
        ev = events[0]
        d = dict(ev.get("detail") or {})
        batch = list(ev.get("sensors") or [])
        d.update({"batch_sensors": len(batch), "events": n})
        return self.gate.report("model", ev.get("step", step.step), step.end_ts, [], Evidence(
            score=1.0, detector=ev.get("detector", "online-update"),
            statistic=ev.get("statistic", ""), severity=ev.get("severity"),
            key=f"model:{step.step}",
            text=(f"model: online update rolled back ({d.get('reason', '')}) on a batch of "
                  f"{len(batch)} sensor(s); serving continues with the last good weights"),
            detail=d))


def _stamp(alert: Alert, step: ClosedStep, interval_ms: int) -> Alert:
    """Set when the alert was raised (the step's end) and, for a drift or anomaly alert,
    stamp it with when what it reports happened: the change's onset, or the most surprising
    reading its detector names (``Alert``)."""
    alert.raised_ts = int(alert.ts)                 # the gate builds it at the step's end
    if alert.kind == "drift" and alert.detail.get("since_ts") is not None:
        alert.ts = min(int(alert.detail["since_ts"]), alert.raised_ts)
    elif alert.kind == "anomaly" and alert.sensors:
        why = alert.detail.get("explained", {}).get(alert.sensors[0], {})
        j = why.get("reading") if isinstance(why, dict) else None
        if isinstance(j, int) and 0 <= j < step.values.shape[1]:
            alert.ts = min(int(step.start_ts) + j * interval_ms, alert.raised_ts)
    return alert


def _trend_change(before: np.ndarray, after: np.ndarray, sd: float
                  ) -> tuple[float, float] | None:
    """(slope before, slope after) per reading when the stretch after the onset follows a
    new line: its slope differs from the one before by two ``sd`` over its length, it
    starts where the old line would have been (within one ``sd``: else it is a level
    change), and stays within 1.5 ``sd`` of its own line."""
    if sd <= 0 or len(after) < 4 or len(before) < 4:
        return None
    tb, ta = np.arange(len(before)), np.arange(len(before), len(before) + len(after))
    kb, cb = np.polyfit(tb, before, 1)
    ka, ca = np.polyfit(ta, after, 1)
    jump = (ka * ta[0] + ca) - (kb * ta[0] + cb)
    fit = float(np.std(after - (ka * ta + ca)))
    if abs(ka - kb) * len(after) >= 2 * sd and abs(jump) < sd and fit <= 1.5 * sd:
        return float(kb), float(ka)
    return None


def _without(evidence: dict[str, Evidence], names: list[str], quiet: set[int]
             ) -> dict[str, Evidence]:
    """``evidence`` less the sensors (indices into ``names``) with a data-quality condition."""
    if not quiet:
        return evidence
    drop = {names[i] for i in quiet}
    return {s: e for s, e in evidence.items() if s not in drop}
