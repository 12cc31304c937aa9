"""Prometheus metrics of a live worker (``prometheus-client``), served on ``/metrics``.

Counters follow the worker's own counts (``WorkerStats``), so what ``/metrics`` says equals
what the worker produced. Names follow Prometheus conventions: ``stfm_`` prefix, ``_total``
for counters, base units (seconds, messages). One registry per ``Telemetry``, so several
workers in one process (tests) do not share series.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from streaming.runtime.observe import Observer

if TYPE_CHECKING:
    from streaming.pipeline.core import CoreOutput, StreamCore
    from streaming.runtime.microbatch import Outputs, WorkerStats

# one closed step of a region (all its sensors) takes ~1 ms (a few sensors) to ~1 s (10k)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0)

METRICS = {     # name -> what it counts (the README's list is this table)
    "stfm_messages_total": "input messages fetched (readings and events)",
    "stfm_readings_accepted_total": "readings accepted onto the sensors' grids",
    "stfm_events_accepted_total": "events accepted",
    "stfm_halo_readings_total{direction}": "halo exchange: readings messages forwarded to "
                                           "other regions, ghost readings received, ghost "
                                           "readings dropped (direction)",
    "stfm_dead_letters_total{reason}": "input messages dead-lettered, by reason (late, "
                                       "future, out_of_range, unknown_sensor, capacity, invalid)",
    "stfm_consumer_lag_messages{topic,partition}": "messages behind the end of each "
                                                   "assigned partition",
    "stfm_offset_out_of_range_total{topic}": "resume or fetch positions found outside their "
    "partition (topic recreated, broker restarted empty, retention), handled by "
    "kafka.offset_out_of_range",
    "stfm_steps_closed_total{region}": "time steps closed",
    "stfm_forecasts_total": "forecast messages produced",
    "stfm_alerts_total{kind}": "alerts produced, by kind (drift, anomaly, data-quality, model)",
    "stfm_step_processing_seconds": "histogram: time to process one closed step of a region",
    "stfm_batch_processing_seconds": "histogram: time to process one fetched batch",
    "stfm_online_mae{region,model}": "cumulative online MAE (input units) of the served "
                                     "forecast (model=served) and of persistence",
    "stfm_online_scored_points{region}": "forecast points scored against their truth",
    "stfm_sensors{region}": "series the region serves (its ghosts not counted)",
    "stfm_model_info{region,version}": "the model version each region serves",
    "stfm_last_checkpoint_timestamp_seconds": "when this worker last wrote a checkpoint",
    "stfm_checkpoint_age_seconds": "seconds since then (NaN before the first)",
}


class Telemetry(Observer):
    """The worker's metrics, updated through the observer hooks."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.messages = Counter("stfm_messages", "Input messages fetched (readings and "
                                "events)", registry=r)
        self.readings = Counter("stfm_readings_accepted", "Readings accepted onto the "
                                "sensors' grids", registry=r)
        self.events = Counter("stfm_events_accepted", "Events accepted", registry=r)
        self.halo = Counter("stfm_halo_readings", "Halo exchange readings, by direction "
                            "(forwarded, received, dropped)", ["direction"], registry=r)
        self.dead_letters = Counter("stfm_dead_letters", "Input messages dead-lettered, by "
                                    "reason", ["reason"], registry=r)
        self.lag = Gauge("stfm_consumer_lag_messages", "Messages behind the end of each "
                         "assigned partition", ["topic", "partition"], registry=r)
        self.out_of_range = Counter("stfm_offset_out_of_range", "Resume or fetch positions "
                                    "outside their partition, by topic", ["topic"], registry=r)
        self.steps = Counter("stfm_steps_closed", "Time steps closed", ["region"], registry=r)
        self.forecasts = Counter("stfm_forecasts", "Forecast messages produced", registry=r)
        self.alerts = Counter("stfm_alerts", "Alerts produced, by kind", ["kind"], registry=r)
        self.step_seconds = Histogram("stfm_step_processing_seconds", "Time to process one "
                                      "closed step of a region", buckets=STEP_BUCKETS,
                                      registry=r)
        self.batch_seconds = Histogram("stfm_batch_processing_seconds", "Time to process one "
                                       "fetched batch", buckets=STEP_BUCKETS, registry=r)
        self.mae = Gauge("stfm_online_mae", "Cumulative online MAE (input units) of the served "
                         "forecast and of persistence", ["region", "model"], registry=r)
        self.points = Gauge("stfm_online_scored_points", "Forecast points scored against "
                            "their truth", ["region"], registry=r)
        self.sensors = Gauge("stfm_sensors", "Series the region knows", ["region"], registry=r)
        self.model = Info("stfm_model", "The model version each region serves", ["region"],
                          registry=r)
        self.last_checkpoint = Gauge("stfm_last_checkpoint_timestamp_seconds", "When this "
                                     "worker last wrote a checkpoint (epoch seconds)",
                                     registry=r)
        self._checkpoint_at = math.nan
        age = Gauge("stfm_checkpoint_age_seconds", "Seconds since this worker last wrote a "
                    "checkpoint (NaN before the first)", registry=r)
        age.set_function(lambda: time.time() - self._checkpoint_at)
        self.last_checkpoint.set(math.nan)
        self._seen: dict[str, int] = {}     # WorkerStats counts already turned into counters
        self._lag_keys: set[tuple[str, str]] = set()

    def region_processed(self, region: int, core: StreamCore, out: CoreOutput) -> None:
        reg = str(region)
        if out.steps:
            self.steps.labels(reg).inc(len(out.steps))
        for s in out.step_seconds:
            self.step_seconds.observe(s)
        for a in out.alerts:
            self.alerts.labels(a.kind).inc()
        m = core.metrics
        self.mae.labels(reg, "served").set(m.mae)
        if "persistence" in core.forecaster.expert_metrics:
            self.mae.labels(reg, "persistence").set(core.forecaster.expert_mae("persistence"))
        self.points.labels(reg).set(m.n)
        self.sensors.labels(reg).set(core.own_count())
        self.model.labels(reg).info({"version": str(core.model.version)})

    def batch_processed(self, out: Outputs, stats: WorkerStats, seconds: float) -> None:
        self.batch_seconds.observe(seconds)
        for name, counter in (("messages", self.messages), ("readings_accepted", self.readings),
                              ("events_accepted", self.events), ("forecasts", self.forecasts)):
            now = getattr(stats, name)
            counter.inc(now - self._seen.get(name, 0))
            self._seen[name] = now
        for reason, n in out.dead_reasons.items():
            self.dead_letters.labels(reason).inc(n)
        for direction in ("forwarded", "received", "dropped"):
            name = f"halo_{direction}"
            now = getattr(stats, name)
            if now != self._seen.get(name, 0):
                self.halo.labels(direction).inc(now - self._seen.get(name, 0))
                self._seen[name] = now

    def lag_measured(self, lag: dict[str, int]) -> None:
        keys = set()
        for tp, n in lag.items():
            topic, _, part = tp.rpartition("-")
            keys.add((topic, part))
            self.lag.labels(topic, part).set(n)
        for gone in self._lag_keys - keys:          # partitions handed to another worker
            self.lag.remove(*gone)
        self._lag_keys = keys

    def offset_out_of_range(self, topic: str, partition: int) -> None:
        self.out_of_range.labels(topic).inc()

    def checkpointed(self, regions: list[int], at: float) -> None:
        self._checkpoint_at = at
        self.last_checkpoint.set(at)


__all__ = ["METRICS", "Telemetry"]
