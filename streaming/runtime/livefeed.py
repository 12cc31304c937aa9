"""What the live page shows, kept as the worker runs: the network, each sensor's recent
readings with the forecasts made for them and the latest forecast (with its interval), the
alert timeline, lag and throughput.

It is an ``Observer``: the worker hands it the same core outputs it encodes into the
``forecasts`` and ``alerts`` topics, so the page shows exactly what consumers receive. The
worker writes on its event loop; the HTTP server's threads read snapshots under a lock.
Memory: per region, the last ``history_steps`` closed steps (float32 ``[N, patch_len]``) and
the served forecast's first step of each (``[N, patch_len]``): 96 steps x 12 points x 8 bytes
= 9 KB per sensor at the defaults.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from streaming.runtime.observe import Observer

if TYPE_CHECKING:
    from streaming.pipeline.core import CoreOutput, ForecastBlock, StreamCore
    from streaming.runtime.microbatch import Outputs, WorkerStats


@dataclass
class _Region:
    sensors: list[str] = field(default_factory=list)
    steps: deque = field(default_factory=deque)     # (start_ts, values f32 [N, P])
    past: deque = field(default_factory=deque)      # (first ts, yhat f32 [N, P]) per forecast
    latest: ForecastBlock | None = None
    model_version: str = ""
    mae: float = math.nan
    mae_persistence: float = math.nan


class LiveFeed(Observer):
    """The live page's data, updated per batch; ``state()`` and ``sensor()`` are what the
    page's JSON endpoints return."""

    def __init__(self, history_steps: int = 96, max_alerts: int = 200, interval_ms: int = 0,
                 patch_len: int = 1) -> None:
        self.history_steps = history_steps
        self.interval_ms = interval_ms
        self.patch_len = patch_len
        self._lock = threading.Lock()
        self._regions: dict[int, _Region] = {}
        self._alerts: deque[dict[str, Any]] = deque(maxlen=max_alerts)
        self._network: dict[str, Any] = {"sensors": [], "lat": None, "lon": None, "edges": []}
        self._stats: dict[str, Any] = {}
        self._lag: dict[str, int] = {}
        self._rate: deque[tuple[float, int]] = deque(maxlen=600)   # (time, readings)
        self.started = time.time()

    # --- fed by the worker -------------------------------------------------------------------

    def set_network(self, sensors: list[str], lat: np.ndarray | None = None,
                    lon: np.ndarray | None = None, edge_index: np.ndarray | None = None) -> None:
        """The sensor graph when one is configured: positions (lat/lon) and edges."""
        with self._lock:
            self._network = {
                "sensors": list(sensors),
                "lat": None if lat is None else [float(v) for v in lat],
                "lon": None if lon is None else [float(v) for v in lon],
                "edges": [] if edge_index is None else
                [[int(a), int(b)] for a, b in np.asarray(edge_index).T if a != b]}

    def region_processed(self, region: int, core: StreamCore, out: CoreOutput) -> None:
        if not (out.steps or out.forecasts or out.alerts):
            return
        p = core.cfg.patching
        with self._lock:
            self.interval_ms, self.patch_len = p.interval_ms, p.patch_len
            r = self._regions.setdefault(region, _Region())
            r.sensors = list(core.sensors)
            for step in out.steps:
                r.steps.append((step.start_ts, step.values.astype(np.float32)))
            for block in out.forecasts:
                r.latest = block
                n = min(block.yhat.shape[1], p.patch_len)
                vals = np.full((len(r.sensors), n), np.nan, np.float32)
                rows = block.rows if block.rows is not None else np.arange(len(block.sensors))
                vals[rows[rows < len(r.sensors)]] = block.yhat[rows < len(r.sensors), :n]
                r.past.append((int(block.horizon_ts[0]), vals))
            while len(r.steps) > self.history_steps:
                r.steps.popleft()
            while len(r.past) > self.history_steps:
                r.past.popleft()
            r.model_version = str(core.model.version)
            r.mae = core.metrics.mae
            r.mae_persistence = core.forecaster.expert_mae("persistence")
            for a in out.alerts:
                d = a.to_dict()
                d["region"] = d.get("region") or str(region)
                self._alerts.append(d)

    def batch_processed(self, out: Outputs, stats: WorkerStats, seconds: float) -> None:
        with self._lock:
            self._stats = stats.as_dict()
            self._stats["batch_seconds"] = round(seconds, 6)
            now = time.monotonic()
            # the batch's readings spread over its processing time: a start and an end sample
            before = self._rate[-1][1] if self._rate else 0
            self._rate.append((max(now - seconds, self._rate[-1][0] if self._rate else -math.inf),
                               before))
            self._rate.append((now, stats.readings_accepted))

    def lag_measured(self, lag: dict[str, int]) -> None:
        with self._lock:
            self._lag = dict(lag)

    # --- read by the page ---------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The network, the counters, lag, throughput, each region's model and errors, and
        the latest alerts (newest last)."""
        with self._lock:
            sensors = [s for r in self._regions.values() for s in r.sensors]
            net = dict(self._network)
            if not net["sensors"]:
                net["sensors"] = sensors
            elif len(set(sensors) - set(net["sensors"])):
                known = set(net["sensors"])
                net["sensors"] = net["sensors"] + [s for s in sensors if s not in known]
            return {
                "now": time.time(), "started": self.started,
                "interval_ms": self.interval_ms, "patch_len": self.patch_len,
                "history_steps": self.history_steps,
                "network": net,
                "stats": dict(self._stats), "lag": dict(self._lag),
                "lag_total": int(sum(self._lag.values())),
                "readings_per_s": self._throughput(),
                "regions": {str(p): {"sensors": len(r.sensors), "model_version": r.model_version,
                                     "mae": _num(r.mae), "mae_persistence": _num(r.mae_persistence),
                                     "last_step_ts": int(r.steps[-1][0]) if r.steps else None}
                            for p, r in sorted(self._regions.items())},
                "alerts": list(self._alerts)}

    def sensor(self, sensor: str) -> dict[str, Any] | None:
        """One sensor's recent readings (grid points), the served forecasts that were made
        for them (each step's first ``patch_len`` points: one step ahead), and the latest
        forecast over the whole horizon with its p10/p90 interval; None when unknown."""
        with self._lock:
            for region, r in self._regions.items():
                if sensor in r.sensors:
                    return self._series(region, r, r.sensors.index(sensor))
        return None

    def _series(self, region: int, r: _Region, i: int) -> dict[str, Any]:
        dt = self.interval_ms
        readings = [[ts + k * dt, _num(v)] for ts, vals in r.steps if i < len(vals)
                    for k, v in enumerate(vals[i])]
        past = [[ts + k * dt, _num(v)] for ts, vals in r.past if i < len(vals)
                for k, v in enumerate(vals[i])]
        out: dict[str, Any] = {"sensor": r.sensors[i], "region": region,
                               "readings": readings, "forecasts": past, "latest": None}
        b = r.latest
        if b is not None and r.sensors[i] in b.sensors:
            j = b.sensors.index(r.sensors[i])
            latest: dict[str, Any] = {"ts": int(b.ts), "model_version": b.model_version,
                                      "horizon_ts": [int(t) for t in b.horizon_ts],
                                      "yhat": [_num(v) for v in b.yhat[j]]}
            if b.q:
                latest["q"] = {k: [_num(v) for v in q[j]] for k, q in b.q.items()}
            out["latest"] = latest
        return out

    def _throughput(self, window_s: float = 30.0) -> float:
        """Readings accepted per second over the last ``window_s`` seconds up to now (or
        since the first batch began, when that is more recent): 0 once the worker idles."""
        if not self._rate:
            return 0.0
        now = time.monotonic()
        ts = np.array([t for t, _ in self._rate])
        ns = np.array([n for _, n in self._rate], dtype=np.float64)
        start = max(now - window_s, float(ts[0]))
        span = now - start
        return float(ns[-1] - np.interp(start, ts, ns)) / span if span > 0 else 0.0


def _num(v: float) -> float | None:
    """JSON has no NaN: missing values are null."""
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else round(v, 6)
