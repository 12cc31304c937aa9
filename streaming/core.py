"""The online core: readings/events → patcher → OnlineModel → forecasts, drift → alerts.

Plain synchronous Python/torch with no Kafka inside. The live worker and ``replay backtest``
drive this same class, so the same input order gives the same outputs.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.schemas import EventBatch, ReadingBatch, format_minute
from streaming.alert_policy import AlertPolicy, AlertPolicyConfig
from streaming.anomaly import AnomalyLikelihood
from streaming.config import StreamConfig
from streaming.drift import ResidualDriftMonitor
from streaming.normalization import OnlineNormalizer
from streaming.online import OnlineModel
from streaming.patching import ClosedStep, FutureFlag, IncrementalPatcher, SensorRegistry


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


@dataclass
class ScoreBlock:
    """Anomaly scores in [0, 1] of every known sensor for one closed step."""

    step: int
    ts: int
    sensors: list[str]
    score: np.ndarray            # float64 [N]: combined score (max of the components)
    components: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N] in [0, 1]
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N] statistic (NaN: none)


@dataclass
class CoreOutput:
    forecasts: list[ForecastBlock] = field(default_factory=list)
    scores: list[ScoreBlock] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    statistics: list[tuple[int, dict[str, np.ndarray]]] = field(default_factory=list)
    # ^ (step, channel -> [N]) the drift monitors were fed
    rejected_readings: list[tuple[int, str]] = field(default_factory=list)
    rejected_events: list[tuple[int, str]] = field(default_factory=list)
    rejected_held: list[tuple[Any, str]] = field(default_factory=list)
    # ^ readings held back in earlier batches (ahead of the clock) that turned out bad:
    #   (the handle their batch gave in ``ReadingBatch.refs``, reason)


@dataclass
class _Pending:
    x: np.ndarray
    mask: np.ndarray
    side: np.ndarray
    loc: np.ndarray
    scale: np.ndarray
    yhat: np.ndarray             # NaN for sensors that did not exist yet
    steps: np.ndarray


@dataclass
class OnlineMetrics:
    """Cumulative online errors of realized forecasts (input scale and normalized)."""

    n: int = 0
    abs_err: float = 0.0
    sq_err: float = 0.0
    abs_err_norm: float = 0.0
    sq_err_norm: float = 0.0
    realized_forecasts: int = 0

    def add(self, err: np.ndarray, err_norm: np.ndarray) -> None:
        ok = ~np.isnan(err)
        self.n += int(ok.sum())
        self.abs_err += float(np.abs(err[ok]).sum())
        self.sq_err += float((err[ok] ** 2).sum())
        self.abs_err_norm += float(np.abs(err_norm[ok]).sum())
        self.sq_err_norm += float((err_norm[ok] ** 2).sum())

    @property
    def mae(self) -> float:
        return self.abs_err / self.n if self.n else math.nan

    @property
    def mse(self) -> float:
        return self.sq_err / self.n if self.n else math.nan

    @property
    def mae_norm(self) -> float:
        return self.abs_err_norm / self.n if self.n else math.nan

    @property
    def mse_norm(self) -> float:
        return self.sq_err_norm / self.n if self.n else math.nan

    def as_dict(self) -> dict[str, float]:
        return {"points": self.n, "mae": self.mae, "mse": self.mse, "mae_norm": self.mae_norm,
                "mse_norm": self.mse_norm, "realized_forecasts": self.realized_forecasts}


class StreamCore:
    """Drive patching, forecasting, online learning and drift detection for one region."""

    def __init__(self, cfg: StreamConfig, model: OnlineModel,
                 sensors: list[str] | None = None,
                 positions: np.ndarray | None = None) -> None:
        self.cfg = cfg
        self.model = model
        registry = SensorRegistry(sensors, fixed=sensors is not None)
        self.patcher = IncrementalPatcher(cfg.patching, registry)
        self.normalizer = OnlineNormalizer()
        self.drift = ResidualDriftMonitor(cfg.drift)
        self._channels = set(cfg.drift.channels.split("+"))
        self._events_log: deque[dict[str, Any]] = deque()
        self.metrics = OnlineMetrics()
        self.positions = positions          # [N, 2] lat/lon, to place events without a sensor
        p, k = cfg.patching.patch_len, cfg.model.context_patches
        self._m = -(-cfg.model.horizon // p)  # steps a forecast reaches into
        if self._m > k:
            raise ValueError(f"model.context_patches={k} must cover the horizon "
                             f"({cfg.model.horizon} points = {self._m} steps)")
        self._ring = np.full((0, k, p), np.nan)
        self._ring_events = np.zeros((0, k), np.float32)
        self._last_step: int | None = None
        self._pending: dict[int, _Pending] = {}
        self.forecasts_made = 0
        self._rng = np.random.default_rng(cfg.model.seed)
        self._graph_model = model._graph is not None
        self._learned_at: int | None = None
        self._feedback_stat: np.ndarray | None = None
        self._newest: tuple = ()
        self._pinned: dict[str, tuple[float, float]] = {}
        self._pin_idx: tuple | None = None
        extra = model.meta.get("extra", {})
        a = cfg.anomaly
        self.anomaly = AnomalyLikelihood(a.long_window, a.short_window, warmup=a.warmup_steps)
        self.embedding_anomaly = AnomalyLikelihood(a.long_window, a.short_window,
                                                   warmup=a.warmup_steps)
        self._centroid = np.zeros((0, 0))       # [N, d] running mean embedding per sensor
        self._centroid_n = np.zeros(0, np.int64)
        self.policy = AlertPolicy(
            AlertPolicyConfig(threshold=a.threshold, clear_threshold=a.clear_threshold,
                              critical=a.critical, warmup_steps=0,
                              cooldown_steps=a.cooldown_steps, merge_hops=a.merge_hops),
            kind="anomaly", edge_index=extra.get("edge_index"), sensors=extra.get("sensors"))
        if cfg.adapt.normalization == "checkpoint":
            if not {"sensors", "loc", "scale"} <= set(extra):
                raise ValueError("adapt.normalization = 'checkpoint' needs a checkpoint with "
                                 "normalization statistics (from `stfm replay pretrain`)")
            self._pinned = {s: (float(m), float(sd)) for s, m, sd in
                            zip(extra["sensors"], extra["loc"], extra["scale"], strict=True)}
        step_ms = cfg.patching.interval_ms * p
        self._season = cfg.drift.season_ms // step_ms if cfg.drift.season_ms else 0
        self._season_mean = np.full((0, max(self._season, 1)), np.nan)
        self._season_step = np.full(max(self._season, 1), -1, np.int64)

    @property
    def sensors(self) -> list[str]:
        return self.patcher.registry.ids

    # --- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything the core has learned or buffered: patcher, normalizer, model (weights,
        optimizer, replay, ...), context ring, pending forecasts, drift monitors, anomaly
        likelihoods, alert policy, metrics. Plain data: arrays, numbers, strings, dicts."""
        return {
            "patcher": self.patcher.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "model": self.model.state_dict(),
            "drift": self.drift.state_dict(),
            "anomaly": self.anomaly.state_dict(),
            "embedding_anomaly": self.embedding_anomaly.state_dict(),
            "policy": self.policy.state_dict(),
            "metrics": dict(vars(self.metrics)),
            "ring": self._ring.copy(), "ring_events": self._ring_events.copy(),
            "last_step": self._last_step,
            "pending": {int(j): dict(vars(p)) for j, p in self._pending.items()},
            "forecasts_made": self.forecasts_made,
            "rng": self._rng.bit_generator.state,
            "learned_at": self._learned_at,
            "feedback_stat": self._feedback_stat,
            "newest": list(self._newest),
            "centroid": self._centroid.copy(), "centroid_n": self._centroid_n.copy(),
            "season_mean": self._season_mean.copy(), "season_step": self._season_step.copy(),
            "events_log": list(self._events_log),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output into a core built with the same configuration."""
        self.patcher.load_state_dict(state["patcher"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.model.load_state_dict(state["model"])
        self.drift.load_state_dict(state["drift"])
        self.anomaly.load_state_dict(state["anomaly"])
        self.embedding_anomaly.load_state_dict(state["embedding_anomaly"])
        self.policy.load_state_dict(state["policy"])
        self.metrics = OnlineMetrics(**state["metrics"])
        self._ring = np.array(state["ring"], np.float64)
        self._ring_events = np.array(state["ring_events"], np.float32)
        self._last_step = None if state["last_step"] is None else int(state["last_step"])
        self._pending = {int(j): _Pending(**{k: np.asarray(v) for k, v in p.items()})
                         for j, p in state["pending"].items()}
        self.forecasts_made = int(state["forecasts_made"])
        self._rng.bit_generator.state = state["rng"]
        self._learned_at = None if state["learned_at"] is None else int(state["learned_at"])
        fs = state["feedback_stat"]
        self._feedback_stat = None if fs is None else np.asarray(fs)
        self._newest = tuple(state["newest"])
        self._centroid = np.array(state["centroid"], np.float64)
        self._centroid_n = np.array(state["centroid_n"], np.int64)
        self._season_mean = np.array(state["season_mean"], np.float64)
        self._season_step = np.array(state["season_step"], np.int64)
        self._events_log = deque(state["events_log"])
        self._pin_idx = None

    # --- driving ------------------------------------------------------------------------

    def process(self, readings: ReadingBatch, events: EventBatch | None = None, *,
                now_ms: int | None = None) -> CoreOutput:
        """Consume one batch and return what it produced.

        Readings are judged and stored first, then the batch's events are counted (into
        the steps still open, which include every step this batch closes, so the order is
        that of a worker applying events before readings), then the steps the watermark
        passed are closed. ``now_ms`` (processing time; live only) bounds how far ahead of
        it a reading may be stamped.
        """
        out = CoreOutput()
        adm = self.patcher.admit(readings, now_ms)
        out.rejected_readings = adm.rejected
        out.rejected_held = adm.rejected_held
        for flag in adm.flags:
            out.alerts.append(self._future_alert(flag))
        if events is not None and len(events):
            out.rejected_events = self._add_events(events, now_ms)
        for step in self.patcher.close_ready():
            self._on_closed(step, out)
        return out

    def _future_alert(self, flag: FutureFlag) -> dict[str, Any]:
        """A data-quality alert for a sensor whose readings arrive stamped far ahead."""
        ref = flag.clock_ts
        against = "the network's event-time clock" if ref is not None else "processing time"
        ahead = (flag.ts - ref) / 3_600_000 if ref is not None else None
        text = (f"{flag.sensor} sends readings stamped "
                + (f"{ahead:.1f} h ahead of {against}" if ahead is not None
                   else f"ahead of {against}")
                + f" (reading at {format_minute(flag.ts)}); they go to dead-letter as "
                "'future' and do not move the clock")
        return {"id": f"data-quality:future:{flag.sensor}:{flag.ts}", "kind": "data-quality",
                "sensors": [flag.sensor], "ts": int(ref if ref is not None else flag.ts),
                "step": self.patcher.next_open, "detector": "event-time-clock",
                "statistic": "reading timestamp", "severity": "warning",
                "detail": {"text": text, "reading_ts": int(flag.ts),
                           "clock_ts": None if ref is None else int(ref),
                           "reason": flag.reason}}

    def _add_events(self, events: EventBatch, now_ms: int | None = None
                    ) -> list[tuple[int, str]]:
        """Count events as side information of the steps they fall in.

        Events come on their own topic, so they may arrive after their step closed; such an
        event still enters the context of later forecasts while its step is in the window.
        """
        p = self.patcher
        k = self.cfg.model.context_patches
        current: list[dict[str, Any]] = []
        where: list[int] = []
        rejected: list[tuple[int, str]] = []
        for i, ev in enumerate(events.events):
            step = int(p.step_of(ev["ts"]))
            if p.next_open is None or step >= p.next_open:
                current.append(ev)
                where.append(i)
                continue
            s = self._sensor_of(ev)
            age = -1 if self._last_step is None else self._last_step - step
            if s is None:
                rejected.append((i, "event names no known sensor and no position near one"))
            elif not 0 <= age < k or s >= self._ring_events.shape[0]:
                rejected.append((i, "late: its step is older than the model's context"))
            else:
                self._ring_events[s, k - 1 - age] += 1.0
                p.stats.events += 1
                self._log_event(ev, s)
        bad = p.add_events(current, self._sensor_of, now_ms)
        refused = {j for j, _ in bad}
        for j, ev in enumerate(current):
            if j not in refused:
                self._log_event(ev, self._sensor_of(ev))
        rejected += [(where[j], why) for j, why in bad]
        return sorted(rejected)

    def _log_event(self, ev: dict[str, Any], s: int | None) -> None:
        """Remember an accepted event so that alerts on its sensor can name it."""
        if s is None:
            return
        attrs = ev.get("attrs") or {}
        dur = attrs.get("duration_ms")
        if dur is None and "duration_steps" in attrs:
            dur = attrs["duration_steps"] * self.cfg.patching.interval_ms
        self._events_log.append({"type": ev.get("type"), "ts": int(ev["ts"]),
                                 "sensor": self.sensors[s], "duration_ms": int(dur or 0),
                                 **({"attrs": attrs} if attrs else {})})

    def _name_events(self, alerts: list[dict[str, Any]], now_ts: int) -> None:
        """Attach the events that coincide with each alert on the same sensors: an event
        whose span (plus ``anomaly.event_window_steps`` steps) covers the alert's step, or,
        for the seasonal reference, the step one season earlier."""
        step_ms = self.cfg.patching.interval_ms * self.cfg.patching.patch_len
        win = self.cfg.anomaly.event_window_steps * step_ms
        season = self.cfg.drift.season_ms
        keep_ms = win + max(season, step_ms * self.cfg.model.context_patches) + step_ms
        while self._events_log and self._events_log[0]["ts"] + \
                self._events_log[0]["duration_ms"] + keep_ms < now_ts:
            self._events_log.popleft()
        if not self._events_log:
            return
        for a in alerts:
            lags = (0, season) if a.get("statistic") == "seasonal_residual" and season else (0,)
            sensors = set(a.get("sensors", []))
            hits = [ev for ev in self._events_log if ev["sensor"] in sensors and any(
                ev["ts"] - step_ms <= a["ts"] - lag <= ev["ts"] + ev["duration_ms"] + win
                for lag in lags)]
            if hits:
                a["events"] = hits
                names = ", ".join(f"{ev['type']} on {ev['sensor']}" for ev in hits[:3])
                if isinstance(a.get("detail"), dict):
                    a["detail"]["text"] = (a["detail"].get("text", "") +
                                           f"; coincides with {names}").lstrip("; ")

    def _sensor_of(self, ev: dict[str, Any]) -> int | None:
        s = ev.get("sensor")
        reg = self.patcher.registry
        if s is not None:
            return reg.index.get(s)
        if "lat" in ev and self.positions is not None and len(self.positions):
            d = (self.positions[:, 0] - ev["lat"]) ** 2 + (self.positions[:, 1] - ev["lon"]) ** 2
            return int(np.argmin(d))
        return None

    # --- one closed step ----------------------------------------------------------------

    def _advance_ring(self, step: ClosedStep) -> None:
        n = step.values.shape[0]
        k = self.cfg.model.context_patches
        if self._ring.shape[0] < n:
            grow = n - self._ring.shape[0]
            self._ring = np.concatenate([self._ring, np.full((grow, *self._ring.shape[1:]),
                                                             np.nan)])
            self._ring_events = np.concatenate([self._ring_events, np.zeros((grow, k),
                                                                            np.float32)])
        shift = k if self._last_step is None else min(step.step - self._last_step, k)
        if shift > 0:
            self._ring = np.roll(self._ring, -shift, axis=1)
            self._ring[:, k - shift:] = np.nan
            self._ring_events = np.roll(self._ring_events, -shift, axis=1)
            self._ring_events[:, k - shift:] = 0.0
        self._ring[:, -1] = step.values
        self._ring_events[:, -1] = step.events
        self._last_step = step.step

    def _truth(self, j: int, n: int) -> np.ndarray:
        """Realized values of the forecast made at step ``j`` (NaN where unknown)."""
        p, h = self.cfg.patching.patch_len, self.cfg.model.horizon
        k = self.cfg.model.context_patches
        t = np.arange(h)
        slot = k - 1 - (self._last_step - (j + 1 + t // p))
        y = np.full((n, h), np.nan)
        ok = slot >= 0
        y[:, ok] = self._ring[:n, slot[ok], (t % p)[ok]]
        return y

    def _on_closed(self, step: ClosedStep, out: CoreOutput) -> None:
        first_alert = len(out.alerts)
        self._advance_ring(step)
        n = step.values.shape[0]
        loc, scale = self._loc_scale(n)
        residual = self._nowcast_residual(step)
        realized = self._realize(step)
        if realized is None and self._feedback_stat is not None:
            realized = self._feedback_stat
        self._feedback_stat = None
        seasonal = self._seasonal_residual(step, scale)
        self.normalizer.learn_many(step.values)
        loc, scale = self._loc_scale(n)
        raw = self._ring[:n]
        mask = ~np.isnan(raw)
        x = np.where(mask, (raw - loc[:, None, None]) / scale[:, None, None], 0.0)
        x = x.astype(np.float32)
        side = np.log1p(self._ring_events[:n])[..., None].astype(np.float32)
        steps = np.arange(step.step - x.shape[1] + 1, step.step + 1)
        z = self.model.predict_many(x, mask, side, steps=steps, sensors=self.sensors[:n])
        yhat = z.astype(np.float64) * scale[:, None] + loc[:, None]
        exists = self.patcher.exists(n, step.step)
        yhat = self._guard_finite(yhat, exists, raw, loc, step, out)
        self._pending[step.step] = _Pending(x, mask, side, loc, scale,
                                            np.where(exists[:, None], yhat, np.nan), steps)
        interval = self.cfg.patching.interval_ms
        horizon_ts = step.end_ts + interval * np.arange(self.cfg.model.horizon, dtype=np.int64)
        rows = np.flatnonzero(exists)
        names = self.sensors
        out.forecasts.append(ForecastBlock(step.step, step.end_ts, horizon_ts,
                                           [names[i] for i in rows], yhat[rows],
                                           self.model.version, rows))
        self.forecasts_made += len(rows)
        distance = self._embedding_distance(n)
        self._score(step, residual, distance, out)
        stats = {"abs_residual": realized, "seasonal_residual": seasonal,
                 "embedding_distance": distance}
        stats = {c: v for c, v in stats.items() if v is not None and c in self._channels}
        out.statistics.append((step.step, stats))
        alerts = self.drift.update(step.step, step.end_ts, self.sensors[:n], stats)
        for a in alerts:
            self.model.boost(a["sensors"], step.step)
        out.alerts.extend(alerts)
        self._name_events(out.alerts[first_alert:], step.end_ts)
        self._newest = (x, mask, side, steps)
        if self._learned_at == step.step:   # truth arrived: contrast the newest window too
            self.model.contrast_many(x, mask, side, steps=steps, sensors=self.sensors[:n],
                                     step=step.step)
        for i, a in enumerate(self.model.drain_alerts()):
            a.setdefault("ts", step.end_ts)
            a.setdefault("id", f"data-quality:{step.step}:{i}")
            out.alerts.append(a)

    def _guard_finite(self, yhat: np.ndarray, exists: np.ndarray, raw: np.ndarray,
                      loc: np.ndarray, step: ClosedStep, out: CoreOutput) -> np.ndarray:
        """Never serve a non-finite forecast: a sensor whose forecast is not finite gets its
        last observed value (its running mean if none is in the window) and a data-quality
        alert names it."""
        bad = exists & ~np.isfinite(yhat).all(axis=1)
        if not bad.any():
            return yhat
        yhat = yhat.copy()
        for i in np.flatnonzero(bad):
            seen = raw[i][~np.isnan(raw[i])]
            last = seen[-1] if len(seen) else loc[i]
            yhat[i] = last if np.isfinite(last) else 0.0
        names = [self.sensors[i] for i in np.flatnonzero(bad)]
        out.alerts.append({
            "id": f"data-quality:forecast:{step.step}", "kind": "data-quality",
            "sensors": names, "ts": step.end_ts, "step": step.step,
            "detector": "forecast-guard", "statistic": "forecast", "severity": "warning",
            "detail": {"text": f"non-finite forecast for {len(names)} sensor(s) "
                               f"({', '.join(names[:5])}); served the last observed value",
                       "model_version": self.model.version}})
        return yhat

    def _nowcast_residual(self, step: ClosedStep) -> np.ndarray:
        """Mean absolute normalized error of the previous step's forecast on the points of
        the step that just closed (its first ``patch_len`` horizon points), per sensor."""
        prev = self._pending.get(step.step - 1)
        n = step.values.shape[0]
        raw = np.full(n, np.nan)
        if prev is not None:
            m = prev.yhat.shape[0]
            pts = min(step.values.shape[1], prev.yhat.shape[1])
            err = np.abs(step.values[:m, :pts] - prev.yhat[:, :pts]) / prev.scale[:, None]
            ok = ~np.isnan(err)
            cnt = ok.sum(axis=1)
            np.divide(np.where(ok, err, 0.0).sum(axis=1), cnt, out=raw[:m], where=cnt > 0)
        return raw

    def _embedding_distance(self, n: int) -> np.ndarray | None:
        """Distance of each sensor's newest window embedding to its running centroid, in
        units of the centroid's typical distance scale (the likelihood standardizes it)."""
        if not self.cfg.anomaly.embedding:
            return None
        emb = self.model.last_embedding
        if emb is None or emb.shape[0] != n:
            return None
        emb = emb.astype(np.float64)
        grow = n - self._centroid.shape[0]
        if grow > 0:                                    # sensors only ever join
            self._centroid = np.concatenate([self._centroid.reshape(-1, emb.shape[1]),
                                             emb[n - grow:]])
            self._centroid_n = np.concatenate([self._centroid_n, np.zeros(grow, np.int64)])
        dist = np.sqrt(((emb - self._centroid) ** 2).mean(axis=1))
        dist[self._centroid_n == 0] = np.nan
        alpha = np.maximum(1.0 / (self._centroid_n + 1), 1.0 / self.cfg.anomaly.long_window)
        self._centroid += alpha[:, None] * (emb - self._centroid)
        self._centroid_n += 1
        return dist

    def _score(self, step: ClosedStep, residual: np.ndarray, distance: np.ndarray | None,
               out: CoreOutput) -> None:
        """Anomaly score of the step that just closed, in [0, 1] per sensor: the maximum of
        the likelihood of the nowcast residual and, when on, of the embedding's distance to
        its running centroid; the alert policy turns it into ``anomaly`` alerts."""
        n = step.values.shape[0]
        comps = {"residual": self.anomaly.learn_many(residual)}
        if distance is not None:
            comps["embedding"] = self.embedding_anomaly.learn_many(distance)
        score = np.max(np.stack(list(comps.values())), axis=0)
        names = self.sensors[:n]
        raw = {"residual": residual}
        if distance is not None:
            raw["embedding"] = distance
        out.scores.append(ScoreBlock(step.step, step.end_ts, list(names), score, comps, raw))
        detail = {}
        for i in np.flatnonzero(score >= self.cfg.anomaly.threshold):
            which = max(comps, key=lambda c: comps[c][i])
            d: dict[str, Any] = {"detector": "anomaly-likelihood", "component": which,
                                 "residual": round(float(residual[i]), 4),
                                 "residual_long_mean": round(float(self.anomaly.mean[i]), 4)}
            d["statistic"] = ("nowcast |residual|/std" if which == "residual"
                              else "embedding distance to running centroid")
            if distance is not None:
                d["embedding_distance"] = round(float(distance[i]), 4)
                d["embedding_long_mean"] = round(float(self.embedding_anomaly.mean[i]), 4)
            d["scores"] = {c: round(float(v[i]), 4) for c, v in comps.items()}
            if which == "residual":
                d["text"] = (f"nowcast |residual|/std {residual[i]:.2f} vs normal "
                             f"{self.anomaly.mean[i]:.2f}")
            else:
                d["text"] = (f"embedding distance {distance[i]:.3f} vs normal "
                             f"{self.embedding_anomaly.mean[i]:.3f}")
            detail[names[i]] = d
        # the likelihood scores 0 while a sensor warms up, so the policy needs no warm-up
        out.alerts.extend(self.policy.update(step.step, step.end_ts, list(names), score,
                                             detail))

    def _loc_scale(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalization statistics of the first ``n`` sensors: the running ones, or the
        checkpoint's frozen ones for the sensors it knows (``adapt.normalization``)."""
        loc, scale = self.normalizer.loc_scale(n)
        if self._pinned:
            if self._pin_idx is None or self._pin_idx[0] != n:   # sensors only ever grow
                names = self.sensors[:n]
                rows = [i for i, s in enumerate(names) if s in self._pinned]
                self._pin_idx = (n, np.array(rows, np.int64),
                                 np.array([self._pinned[names[i]] for i in rows]).reshape(-1, 2))
            _, rows, vals = self._pin_idx
            if len(rows):
                loc[rows], scale[rows] = vals[:, 0], vals[:, 1]
        return loc, scale

    def _learn_rows(self, y_mask: np.ndarray) -> np.ndarray:
        """Sensors of one online step: all with a target, or a seeded sample of them."""
        rows = np.flatnonzero(y_mask.any(axis=1))
        b = self.cfg.model.learn_batch
        if b and len(rows) > b:
            rows = np.sort(self._rng.choice(rows, size=b, replace=False))
        return rows

    def _seasonal_residual(self, step: ClosedStep, scale: np.ndarray) -> np.ndarray | None:
        """|step mean − the same step one season ago| / std: a seasonal-naive reference error."""
        if not self._season:
            return None
        n = step.values.shape[0]
        if self._season_mean.shape[0] < n:
            grow = np.full((n - self._season_mean.shape[0], self._season), np.nan)
            self._season_mean = np.concatenate([self._season_mean, grow])
        obs = ~np.isnan(step.values)
        cnt = obs.sum(axis=1)
        cur = np.full(n, np.nan)
        np.divide(np.where(obs, step.values, 0.0).sum(axis=1), cnt, out=cur, where=cnt > 0)
        slot = step.step % self._season
        res = None
        if self._season_step[slot] == step.step - self._season:
            res = np.abs(cur - self._season_mean[:n, slot]) / scale
        self._season_mean[:n, slot] = cur
        self._season_step[slot] = step.step
        return res

    def _realize(self, step: ClosedStep) -> np.ndarray | None:
        """Score, and learn from, the forecasts whose horizon this step completed.

        Returns the mean absolute normalized error per sensor of the newest one (or None).
        """
        k = self.cfg.model.context_patches
        stat = None
        for j in sorted(self._pending):
            if j + self._m > step.step:
                break
            pend = self._pending.pop(j)
            if step.step - j >= k:
                continue  # its truth fell out of the context after a long gap
            stat = self._score_and_learn(pend, self._truth(j, pend.yhat.shape[0]), step.step)
        return stat

    def _score_and_learn(self, pend: _Pending, y: np.ndarray, now: int) -> np.ndarray:
        """Score a realized forecast, learn from it; returns the mean absolute normalized
        error per sensor (the drift monitors' residual statistic)."""
        n = pend.yhat.shape[0]
        y = np.where(np.isnan(pend.yhat), np.nan, y)   # no target for a sensor not yet there
        err = y - pend.yhat
        err_norm = err / pend.scale[:, None]
        self.metrics.add(err, err_norm)
        self.metrics.realized_forecasts += n
        ok = ~np.isnan(err_norm)
        cnt = ok.sum(axis=1)
        stat = np.full(n, np.nan)
        np.divide(np.abs(np.where(ok, err_norm, 0.0)).sum(axis=1), cnt, out=stat, where=cnt > 0)
        self._learn(pend, y, now)
        self._learned_at = now
        return stat

    def _learn(self, pend: _Pending, y: np.ndarray, now: int) -> None:
        """The supervised update on a realized forecast (shared by both feedback modes)."""
        y_mask = ~np.isnan(y)
        y_norm = ((np.nan_to_num(y) - pend.loc[:, None]) / pend.scale[:, None])
        # the graph layer needs the whole region; a per-sensor model may take a sample
        rows = np.arange(len(y)) if self._graph_model else self._learn_rows(y_mask)
        self.model.learn_many(pend.x[rows], pend.mask[rows], pend.side[rows],
                              y_norm[rows].astype(np.float32), y_mask[rows],
                              steps=pend.steps, sensors=[self.sensors[i] for i in rows],
                              step=now)

    def feedback(self, step: int, y: np.ndarray) -> bool:
        """Immediate feedback (the FSNet/OneNet protocol, for comparisons only): score and
        learn from the forecast made at ``step`` with its true values ``y`` ``[N, H]`` (input
        scale, NaN unknown) now, instead of when the stream delivers them. Returns whether a
        forecast of that step was pending."""
        pend = self._pending.pop(step, None)
        if pend is None:
            return False
        y = np.asarray(y, np.float64)[:pend.yhat.shape[0]]
        self._feedback_stat = self._score_and_learn(pend, y, step)
        x, mask, side, steps = self._newest
        self.model.contrast_many(x, mask, side, steps=steps, sensors=self.sensors[:len(x)],
                                 step=step)
        return True
