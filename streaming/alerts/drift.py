"""Drift monitoring on forecast residuals and embeddings with array change detectors.

Three channels per sensor (``drift.channels``), the first two in units of the sensor's
running std:

- ``abs_residual``: the mean absolute error of the model's realized forecast of a step. It
  catches changes the model does not absorb (variance, shape).
- ``seasonal_residual``: the absolute difference between a step's mean and the same step one
  season earlier, i.e. the error of a seasonal-naive reference forecast. An online model with
  instance normalization absorbs a level shift within a step, so its own error spikes only
  briefly; the seasonal reference keeps seeing the shift for a whole season.
- ``embedding_distance``: the distance of the newest window's embedding to the sensor's
  running centroid (a change of shape the forecast head may not show).

Errors and distances are skewed (a few large values), so each channel is log-transformed
(``log(x + 0.1)``), standardized against its own recent level, clipped to ``drift.clip``; the
step's common mode across
sensors is removed (a disturbance of the shared model or a holiday hits every sensor), and
a detector watches the result: Page-Hinkley "up" by default, or ADWIN / KSWIN on the
log statistic itself (``streaming.alerts.detectors``: river's detectors as arrays over all sensors
of a channel, one vectorized update per step). Only
increases of an error count: a detection is evidence only when the statistic is above its
normal level now and on average since the estimated onset, and the evidence says since when.
``update`` returns, per sensor, the evidence of its strongest firing channel;
the alert gate (``streaming.alerts.alert_gate``) turns it into alerts (cooldown per sensor).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any

import numpy as np
from scipy.special import log_ndtr, ndtri

from connectors.schemas import format_when
from streaming.alerts.alert_gate import Evidence
from streaming.alerts.calibration import TailCalibrator
from streaming.alerts.detectors import ADWINArray, KSWINArray, PageHinkleyArray
from streaming.config import MIN_WARMUP_STEPS, DriftConfig
from streaming.ingest.cadence import format_interval

# the residual channels in an operator's words
CHANNEL_WORDS = {"abs_residual": "the forecast error",
                 "seasonal_residual": "the difference from a season ago",
                 "embedding_distance": "the distance from its usual patterns"}


def make_detector(cfg: DriftConfig, warmup: int = 4, seed: int = 0) -> Any:
    """The configured detector over all sensors of one channel (``streaming.alerts.detectors``;
    ``warmup``: ADWIN's grace period, in steps; ``seed``: KSWIN's sampling)."""
    if cfg.detector == "page_hinkley":
        return PageHinkleyArray(cfg.delta, cfg.threshold, alpha=1.0)
    if cfg.detector == "adwin":
        return ADWINArray(delta=cfg.adwin_delta, clock=1, grace_period=warmup)
    if cfg.detector != "kswin":
        raise ValueError(f"drift monitor: {cfg.detector!r} is not a residual detector "
                         "(page_hinkley, adwin or kswin)")
    return KSWINArray(alpha=cfg.kswin_alpha, window_size=cfg.kswin_window,
                      stat_size=cfg.kswin_stat_size, seed=seed)


class _Channel:
    """One channel's per-sensor normal level (log units) and detector (one array detector
    over all sensors)."""

    def __init__(self, cfg: DriftConfig, warmup: int, name: str = "") -> None:
        self.cfg = cfg
        self.warmup = warmup
        self.n = np.zeros(0, np.int64)
        self.mean = np.zeros(0)      # normal level of the statistic (running, then EWMA)
        self.var = np.zeros(0)
        # KSWIN's draws: one generator per channel, seeded by the channel's name
        self.det = make_detector(cfg, warmup, seed=zlib.crc32(name.encode()))
        # the sensor's own tail of z: heavy-tailed errors do not pass for drifts
        self.cal = TailCalibrator(probation=max(MIN_WARMUP_STEPS, warmup // 2),
                                  tail_mass=0.2, long_window=2000)

    def grow(self, n: int) -> None:
        pad = n - len(self.n)
        if pad > 0:
            self.n = np.concatenate([self.n, np.zeros(pad, np.int64)])
            self.mean = np.concatenate([self.mean, np.zeros(pad)])
            self.var = np.concatenate([self.var, np.zeros(pad)])

    def state_dict(self) -> dict[str, Any]:
        """Plain arrays; the detector's state under its kind ("ph", "adwin" or "kswin")."""
        return {"n": self.n.copy(), "mean": self.mean.copy(), "var": self.var.copy(),
                "cal": self.cal.state_dict(), _KEY[self.cfg.detector]: self.det.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        if isinstance(state, list):       # the per-sensor format of earlier checkpoints
            state = _from_per_sensor(state, self.cfg.detector == "page_hinkley")
        self.n = np.array(state["n"], np.int64)
        self.mean = np.array(state["mean"], np.float64)
        self.var = np.array(state["var"], np.float64)
        if "cal" in state:                # earlier checkpoints: calibration starts fresh
            self.cal.load_state_dict(state["cal"])
        key = _KEY[self.cfg.detector]
        if key in state:
            self.det.load_state_dict(state[key])
        elif "detectors" in state and self.cfg.detector != "page_hinkley":
            # before the array detectors: one river detector's state per sensor
            self.det.load_state_dict(_from_river(state["detectors"], self.cfg.detector,
                                                 self.det))
        else:
            if "detectors" in state:
                found = sorted({str(d.get("type")) for d in state["detectors"]})
            else:
                found = [k for k, v in _KEY.items() if v in state]
            if not found:
                raise ValueError("checkpointed drift channel has no detector state")
            raise ValueError(f"checkpointed drift detectors are {', '.join(found)}, configured "
                             f"{self.cfg.detector} (drift.detector changed? load the "
                             f"checkpoint with drift.detector = {found[0]})")


_KEY = {"page_hinkley": "ph", "adwin": "adwin", "kswin": "kswin"}


def _from_per_sensor(states: list[dict[str, Any]], ph: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"n": [int(s["n"]) for s in states],
                           "mean": [float(s["mean"]) for s in states],
                           "var": [float(s["var"]) for s in states]}
    dets = [s["detector"] for s in states]
    if not ph:
        out["detectors"] = dets
    elif all(d.get("type") == "page_hinkley" for d in dets):
        k = len(dets)
        out["ph"] = {"n": [int(d["mean_n"]) for d in dets],
                     "mean": [float(d["mean"]) for d in dets],
                     "sum": [float(d["_sum_increase"]) for d in dets],
                     "min": [float(d["_min_increase"]) for d in dets],
                     "min_at": [0] * k, "run_sum": [0.0] * k, "run_n": [0] * k}
    return out


def _from_river(states: list[dict[str, Any]], kind: str, det: Any) -> dict[str, Any]:
    """The array detector's state from the per-sensor river detector states of earlier
    checkpoints (``{"type": "adwin", "helper": <river's serialized ADWIN>}`` or
    ``{"type": "kswin", "window": [...], ...}``): the same windows, so detection continues
    where it was (KSWIN's draws come from the array's generator from now on)."""
    bad = sorted({str(d.get("type")) for d in states} - {kind})
    if bad:
        raise ValueError(f"checkpointed drift detectors are {', '.join(bad)}, configured "
                         f"{kind} (drift.detector changed? load the checkpoint with "
                         f"drift.detector = {bad[0]})")
    n = len(states)
    if kind == "kswin":
        w = det.window_size
        window, count = np.zeros((n, w)), np.zeros(n, np.int64)
        for i, d in enumerate(states):
            vals = np.asarray(d["window"], np.float64)[-w:]
            if len(vals) and not d.get("drift_detected"):   # one that fired starts afresh
                window[i, w - len(vals):] = vals
                count[i] = len(vals)
        return {"window": window, "n": count, "rng": None}
    slots = det.max_buckets + 1
    parsed = [_river_adwin(bytes(np.asarray(d["helper"], np.uint8)), det.max_buckets, i)
              for i, d in enumerate(states)]
    levels = max([len(p["counts"]) for p in parsed] + [1])
    out = {"width": np.zeros(n), "total": np.zeros(n), "variance": np.zeros(n),
           "tick": np.zeros(n, np.int64), "counts": np.zeros((levels, n), np.int64),
           "totals": np.zeros((levels, slots, n))}
    for i, (p, d) in enumerate(zip(parsed, states, strict=True)):
        if d.get("drift_detected"):
            continue
        for k in ("width", "total", "variance", "tick"):
            out[k][i] = p[k]
        out["counts"][:len(p["counts"]), i] = p["counts"]
        out["totals"][:len(p["counts"]), :, i] = p["totals"]
    return out


def _river_adwin(blob: bytes, max_buckets: int, i: int) -> dict[str, Any]:
    """Parse river's (0.22+, Rust) serialized ``AdaptiveWindowing`` (bincode: delta f64,
    clock i32, max_buckets u64, min_window_length f64, grace_period f64, total, variance,
    width, total_width f64, four i32 counters (the third is ``tick``), then the buckets:
    u64 count, each max_size u64, current_idx u64, totals and variances as u64 length +
    f64s). Checked: the buckets must add up to the width and the total."""
    import struct

    slots = max_buckets + 1
    try:
        mb, = struct.unpack_from("<Q", blob, 12)
        total, variance, width = struct.unpack_from("<3d", blob, 36)
        tick, = struct.unpack_from("<i", blob, 76)
        nb, = struct.unpack_from("<Q", blob, 84)
        off, counts, totals = 92, [], []
        for _ in range(nb):
            _, cur, nt = struct.unpack_from("<3Q", blob, off)
            t = np.frombuffer(blob, "<f8", nt, off + 24)
            nv, = struct.unpack_from("<Q", blob, off + 24 + 8 * nt)
            off += 32 + 8 * nt + 8 * nv
            counts.append(cur)
            totals.append(np.pad(t[:slots], (0, slots - min(nt, slots))))
        # (river's Python binding appends its constructor arguments after the struct)
        ok = (mb == max_buckets and off <= len(blob)
              and sum(c << lv for lv, c in enumerate(counts)) == width
              and math.isclose(sum(float(t.sum()) for t in totals), total, rel_tol=1e-9,
                               abs_tol=1e-9))
    except (struct.error, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"checkpointed river ADWIN state of sensor {i} cannot be read "
                         f"(not river's format for max_buckets={max_buckets}); to start drift "
                         "monitoring afresh, load the checkpoint without its 'drift' state")
    return {"width": width, "total": total, "variance": variance, "tick": tick,
            "counts": np.array(counts, np.int64), "totals": np.array(totals).reshape(-1, slots)}


class DriftMonitor:
    """Per-sensor drift detection on residual and embedding channels (module docstring).

    A detection becomes evidence only when the statistic is *above* its normal level at the
    firing step and on average since the estimated onset (the errors rose): a statistic that
    fell is never reported as a drift. ``step``/``ts`` of ``update`` date the onset.
    """

    def __init__(self, cfg: DriftConfig, ewma: float = 0.02, common_mode_min: int = 5,
                 step_ms: int = 0, patch_len: int = 12, tz: str = "UTC") -> None:
        if cfg.detector == "bocpd":     # changes come from streaming.alerts.changepoint; the
            cfg = dataclasses.replace(cfg, detector="page_hinkley")   # residual channels
            #                             keep their default detector should they be fed
        self.cfg = cfg
        self.warmup = cfg.warmup_steps(patch_len)
        self.ewma = ewma
        self.common_mode_min = common_mode_min
        self.step_ms = step_ms
        self.interval_ms = step_ms // max(patch_len, 1)
        self.tz = tz                  # the zone of the times in the alert texts
        self.channels: dict[str, _Channel] = {}
        self.t = 0                    # updates so far (the step label when none is given)

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "channels": {c: ch.state_dict() for c, ch in self.channels.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.channels = {}
        self.t = int(state.get("t", 0))
        for c, st in state["channels"].items():
            ch = _Channel(self.cfg, self.warmup, str(c))
            ch.load_state_dict(st)
            self.channels[str(c)] = ch

    def update(self, names: list[str], stats: dict[str, np.ndarray], step: int | None = None,
               ts: int | None = None) -> dict[str, Evidence]:
        """Feed one step's statistic per channel and sensor (NaN = nothing to score); returns
        the evidence of the sensors whose detector fired on a rise (the highest z per
        sensor)."""
        cfg = self.cfg
        self.t += 1
        at = self.t if step is None else int(step)
        best_z = np.full(len(names), -np.inf)
        fired: dict[int, dict[str, Any]] = {}
        for channel, stat in stats.items():
            stat = np.asarray(stat, np.float64)
            if stat.ndim != 1 or len(stat) > len(names):
                raise ValueError(f"drift monitor: {channel} must be one value per sensor "
                                 f"(at most {len(names)}), got shape {stat.shape}")
            m = len(stat)
            ch = self.channels.get(channel)
            if ch is None:
                ch = self.channels[channel] = _Channel(cfg, self.warmup, channel)
            ch.grow(m)
            with np.errstate(invalid="ignore"):
                x = np.log(stat + 0.1)
            ok = ~np.isnan(x)
            cnt = ch.n[:m] + ok
            warm = ok & (cnt <= self.warmup)
            mean, var = ch.mean[:m].copy(), ch.var[:m].copy()
            # warm-up: plain running mean/variance of the statistic
            safe = np.maximum(cnt, 1)
            d = np.where(warm, x - mean, 0.0)
            wmean = mean + d / safe
            wvar = var + (d * (np.where(warm, x, 0.0) - wmean) - var) / safe
            ch.mean[:m] = np.where(warm, wmean, mean)
            ch.var[:m] = np.where(warm, wvar, var)
            ch.n[:m] = cnt
            scored = ok & ~warm
            sd = np.maximum(np.sqrt(np.maximum(var, 0.0)), 0.05)   # log units: a 5 % floor
            z_abs = np.where(scored, (x - mean) / sd, np.nan)
            common = (float(np.median(z_abs[scored]))
                      if int(scored.sum()) >= self.common_mode_min else 0.0)
            z = np.clip(z_abs - common, -cfg.clip, cfg.clip)
            # calibrated: a z in the sensor's fitted tail counts only as far as its tail
            # probability under the sensor's own history says (never more than z itself)
            with np.errstate(invalid="ignore"):
                p = ch.cal.learn_many(np.where(scored, -log_ndtr(-z), np.nan))
                z = np.where(p < ch.cal.tail_mass, np.minimum(z, -ndtri(np.maximum(p, 1e-300))),
                             z)
            ph = isinstance(ch.det, PageHinkleyArray)
            # Page-Hinkley watches z; ADWIN / KSWIN watch the (log) statistic itself
            det = ch.det.update(np.where(scored, z if ph else x, np.nan), at)
            if ph:
                run, onset = ch.det.last_run_mean, ch.det.last_onset + 1
                rose = det & (z > 0) & (run > 0)
            else:
                run, onset = np.where(scored, z, 0.0), np.full(m, at, np.int64)
                rose = det & (z > 0)
            # "rose" in words needs the statistic itself above its normal level (z is net
            # of the common mode, which may be negative)
            rose &= x > mean
            # the normal level follows the data, but not while the error is high
            follow = scored & ~det & (z < 3.0)
            dd = np.where(follow, x - mean, 0.0)
            ch.mean[:m] = np.where(follow, mean + self.ewma * dd, ch.mean[:m])
            ch.var[:m] = np.where(follow, (1 - self.ewma) * (var + self.ewma * dd * dd),
                                  ch.var[:m])
            for i in np.flatnonzero(rose & (z > best_z[:m])).tolist():
                best_z[i] = z[i]
                fired[i] = {"channel": channel, "z": float(z[i]), "x": float(x[i]),
                            "common": common, "mean": float(mean[i]),
                            "sd": float(np.sqrt(max(var[i], 0.0))), "run": float(run[i]),
                            "onset": int(onset[i])}
        return {names[i]: self._evidence(names[i], f, at, ts) for i, f in sorted(fired.items())}

    def _evidence(self, name: str, f: dict[str, Any], at: int, ts: int | None) -> Evidence:
        cfg = self.cfg
        z, x, channel = f["z"], f["x"], f["channel"]
        value, normal = math.exp(x) - 0.1, math.exp(f["mean"]) - 0.1
        steps = max(at - f["onset"] + 1, 1)
        since_ts = (None if ts is None or not self.step_ms
                    else int(ts - (steps - 1) * self.step_ms))
        since = ("" if since_ts is None
                 else f" since {format_when(since_ts, self.tz, self.interval_ms)}")
        took = f" ({format_interval(steps * self.step_ms)})" if self.step_ms else ""
        return Evidence(
            score=z, detector=cfg.detector, statistic=channel,
            severity="critical" if z >= cfg.clip else "warning",
            text=f"{name}: {CHANNEL_WORDS.get(channel, channel)} rose{since}{took}: "
                 f"{value:.3g} vs normal {normal:.3g}",
            detail={"direction": "up", "value": round(value, 6), "baseline": round(normal, 6),
                    "since_step": int(f["onset"]), "since_ts": since_ts, "run_steps": steps,
                    "run_mean_z": round(f["run"], 3),
                    "log_value": round(x, 6), "log_baseline_mean": round(f["mean"], 6),
                    "log_baseline_std": round(f["sd"], 6),
                    "z": round(z, 3), "common_mode_z": round(f["common"], 3)})
