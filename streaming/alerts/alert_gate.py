"""The alert gate: every alert of every kind is decided and built here.

Detectors say what they see, per sensor and step (``Evidence``); the gate decides what
becomes an ``Alert``, per kind (``GateRule``): a threshold on the evidence's score, a warm-up
(scored steps before a sensor may fire), hysteresis (after an alert a sensor re-arms only once
its score fell below ``clear``), a cooldown (the earliest next alert on a sensor is
``min_gap_steps`` after the last, unless the evidence says something else changed: a level
fall after a level rise, a variance rise after a level change), and a graph merge (sensors
that fire in the same step and are linked within ``merge_hops`` edges through other firing
sensors become one regional alert; ``common_mode_min`` or more sensors firing in one step
are one alert, graph or not). It then names the events that coincide with an alert on its
sensors ("coincides with roadworks on s012"). One incident gives one alert, not one per step.

A change also spreads over steps: congestion moves along a road, a front crosses a network.
With ``incident_steps``, a group that fires within that many steps of an open incident's
first alert, with the same change (kind and direction), and linked to it (a shared sensor, a
graph neighbour within ``merge_hops``, or both network-wide) joins the incident: its alert
is raised as ``info`` (it names its sensors and the incident; it pages nobody again) instead
of as a new incident.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.schemas import Alert
from streaming.config import StreamConfig


@dataclass
class Evidence:
    """What a detector saw on one sensor at one step."""

    score: float                  # in the kind's units (anomaly: [0, 1]; drift: z)
    detector: str
    statistic: str
    text: str                     # why, in words
    severity: str | None = None   # None: from the rule's ``critical`` score
    detail: dict[str, Any] = field(default_factory=dict)
    key: str | None = None        # alert id (default ``kind:sensor:step``)


@dataclass
class GateRule:
    """When evidence of one kind becomes an alert."""

    threshold: float = -math.inf  # evidence score that fires
    clear: float | None = None    # hysteresis: re-arm below this (None: no hysteresis)
    critical: float = math.inf    # score of a "critical" alert
    min_gap_steps: int = 0        # earliest next alert on a sensor: this many steps later
    merge_hops: int = 0           # firing graph neighbours join one regional alert
    common_mode_min: int = 0      # this many sensors firing at once: one alert (0: off)
    warmup_steps: int = 0         # scored steps per sensor before it may fire
    names_sensors: bool = False   # the text starts "unusual readings on s (and n others)"
    incident_steps: int = 0       # linked groups this soon after an incident join it (0: off)


def rules(cfg: StreamConfig) -> dict[str, GateRule]:
    """The gate's rule per alert kind, from ``[alerts]``."""
    a = cfg.alerts
    return {
        "anomaly": GateRule(threshold=a.anomaly_threshold, clear=a.anomaly_clear,
                            critical=a.anomaly_critical, min_gap_steps=a.anomaly_cooldown_steps,
                            merge_hops=a.merge_hops, common_mode_min=a.common_mode_min,
                            names_sensors=True),
        # a drift alert blocks its sensor for the next drift_cooldown_steps steps; sensors
        # changing in the same step merge like anomalies (graph neighbours, common mode)
        "drift": GateRule(min_gap_steps=a.drift_cooldown_steps + 1, merge_hops=a.merge_hops,
                          common_mode_min=a.common_mode_min,
                          incident_steps=a.drift_incident_steps),
        "data-quality": GateRule(),
        "model": GateRule(),        # the model's own events (rollback, non-finite forecast)
    }


class AlertGate:
    """Per kind and sensor gating, graph merging, event naming (see module docstring)."""

    def __init__(self, cfg: StreamConfig, edge_index: np.ndarray | None = None,
                 sensors: list[str] | None = None) -> None:
        self.cfg = cfg
        self.rules = rules(cfg)
        self.neighbours: dict[str, set[str]] = {}
        if edge_index is not None and sensors is not None:
            ei = np.asarray(edge_index).reshape(2, -1)
            for a, b in ei.T.tolist():
                if a != b:
                    self.neighbours.setdefault(sensors[a], set()).add(sensors[b])
                    self.neighbours.setdefault(sensors[b], set()).add(sensors[a])
        # per kind, arrays over sensor slots (``_slot``): scored steps, last alert step,
        # disarmed (hysteresis); sensors get a slot when first met, shared by the kinds
        self._index: dict[str, int] = {}
        self._names: list[str] = []
        self._kinds = {k: _KindState() for k in self.rules}
        self._lists: dict[str, tuple[list[str], np.ndarray, dict[str, int]]] = {}
        self.incidents: dict[str, list[_Incident]] = {k: [] for k in self.rules}
        self.events: deque[dict[str, Any]] = deque()   # accepted events, for naming
        p = cfg.patching
        self._step_ms = p.interval_ms * p.patch_len

    # --- deciding -----------------------------------------------------------------------

    def update(self, kind: str, step: int | None, ts: int, evidence: dict[str, Evidence],
               sensors: list[str] | None = None, scores: np.ndarray | None = None
               ) -> list[Alert]:
        """The alerts of one kind at one step. ``evidence`` holds what the detectors saw on
        the sensors that may fire; ``scores`` (aligned with ``sensors``; NaN = not scored)
        the kind's score of every sensor, when warm-up or hysteresis need all of them.

        The decision is array arithmetic over the sensors; only the firing ones are looked
        at one by one (merged into regions, built into alerts)."""
        if kind not in self.rules:
            raise ValueError(f"alert gate: unknown alert kind {kind!r} "
                             f"(known: {', '.join(self.rules)})")
        rule, st = self.rules[kind], self._kinds[kind]
        if scores is None:
            names = list(evidence)
            vals = np.array([e.score for e in evidence.values()], np.float64)
        else:
            vals = np.asarray(scores, np.float64)
            if sensors is None or vals.ndim != 1 or len(sensors) != len(vals):
                raise ValueError(f"alert gate: {kind} scores must align with its sensors")
            names = sensors if isinstance(sensors, list) else list(sensors)
        ix, pos = self._slots(kind, names)
        st.grow(len(self._names))
        ok = ~np.isnan(vals)
        seen = st.seen[ix] + ok
        st.seen[ix] = seen
        armed = ~st.disarmed[ix]
        with np.errstate(invalid="ignore"):
            if rule.clear is not None:          # re-armed now, may fire from the next step
                st.disarmed[ix[ok & ~armed & (vals < rule.clear)]] = False
            fire = ok & armed & (vals >= rule.threshold) & (seen > rule.warmup_steps)
        if step is not None:
            cool = fire & st.has_last[ix] & (step - st.last[ix] < rule.min_gap_steps)
            for p in np.flatnonzero(cool).tolist():
                # in cooldown only a change of another kind or direction gets through
                sig = _signature(evidence.get(names[p]))
                cool[p] = sig is None or sig == st.signature.get(names[p])
            fire &= ~cool
        if scores is not None:                  # only sensors with evidence fire
            has = np.zeros(len(names), bool)
            has[[pos[s] for s in evidence if s in pos]] = True
            fire &= has
        firing: dict[str, float] = {}
        for p in np.flatnonzero(fire).tolist():
            s = names[p]
            firing[s] = evidence[s].score if scores is None else float(vals[p])
        if not firing:
            return []
        alerts = []
        common = bool(rule.common_mode_min) and len(firing) >= rule.common_mode_min
        if common:
            groups = [sorted(firing)]          # a change across the region: one incident
        else:
            groups = self._regions(list(firing), rule.merge_hops)
        if rule.incident_steps and step is not None:
            self.incidents[kind] = [inc for inc in self.incidents[kind]
                                    if step - inc.step <= rule.incident_steps]
        for group in groups:
            top = max(group, key=lambda s: firing[s])
            at = [self._index[s] for s in group]
            if step is not None:
                st.last[at], st.has_last[at] = step, True
            for s in group:
                sig = _signature(evidence.get(s))
                if sig is not None:
                    st.signature[s] = sig
            if rule.clear is not None:
                st.disarmed[at] = True
            alert = self._build(kind, rule, step, ts, group, top, firing, evidence)
            if rule.incident_steps and step is not None:
                self._join_or_open(kind, rule, alert, _signature(evidence.get(top)), common)
            alerts.append(alert)
        return alerts

    def _join_or_open(self, kind: str, rule: GateRule, alert: Alert, sig: str | None,
                      common: bool) -> None:
        """Join ``alert`` to an open incident it continues (made ``info``, naming the
        incident), or open a new incident with it. Only a change that says what changed
        (a signature) takes part."""
        if sig is None:
            return
        group = set(alert.sensors)
        near = group | {v for s in group for v in self._within(s, rule.merge_hops)}
        for inc in self.incidents[kind]:
            if inc.signature == sig and (near & inc.sensors or (common and inc.common)):
                inc.sensors |= group
                alert.severity = "info"
                alert.detail = {**alert.detail, "incident": inc.id,
                                "incident_sensors": len(inc.sensors)}
                alert.text = (f"{alert.text}; part of incident {inc.id} (the same change, "
                              f"{alert.step - inc.step} step(s) later; {len(inc.sensors)} "
                              f"sensor(s) so far)")
                return
        self.incidents[kind].append(_Incident(alert.id, sig, int(alert.step), group, common))

    def _slot(self, s: str) -> int:
        i = self._index.get(s)
        if i is None:
            i = self._index[s] = len(self._names)
            self._names.append(s)
        return i

    def _slots(self, kind: str, names: list[str]) -> tuple[np.ndarray, dict[str, int]]:
        """Slots of ``names`` and their positions, cached per kind while the list stays the
        same (the scored sensors of a kind rarely change between steps)."""
        hit = self._lists.get(kind)
        if hit is not None and hit[0] == names:
            return hit[1], hit[2]
        ix = np.fromiter((self._slot(s) for s in names), np.int64, len(names))
        pos = {s: p for p, s in enumerate(names)}
        if len(pos) != len(names):
            dup = next(s for s in names if names.count(s) > 1)
            raise ValueError(f"alert gate: {kind} sensors must be unique ({dup!r} twice)")
        self._lists[kind] = (list(names), ix, pos)
        return ix, pos

    def due(self, kind: str, key: str, step: int, gap: int) -> bool:
        """Whether an alert of ``kind`` about ``key`` (a sensor, or a name for the region) may
        be raised at ``step``: none was in the last ``gap`` steps. Records it if so (the
        gate's state, so a restored core decides the same)."""
        st = self._kinds[kind]
        i = self._slot(key)
        st.grow(len(self._names))
        if st.has_last[i] and step - st.last[i] < gap:
            return False
        st.last[i], st.has_last[i] = step, True
        return True

    def report(self, kind: str, step: int | None, ts: int, sensors: list[str],
               evidence: Evidence) -> Alert:
        """One alert for a group its producer already decided on (data quality: a rolled
        back update, a sensor stamping readings ahead, a non-finite forecast)."""
        if kind not in self.rules:
            raise ValueError(f"alert gate: unknown alert kind {kind!r}")
        top = sensors[0] if sensors else ""
        return Alert(id=evidence.key or f"{kind}:{top}:{step}", kind=kind,
                     sensors=list(sensors), ts=int(ts),
                     step=None if step is None else int(step),
                     severity=evidence.severity or "warning", detector=evidence.detector,
                     statistic=evidence.statistic, text=evidence.text,
                     detail=dict(evidence.detail))

    def _build(self, kind: str, rule: GateRule, step: int | None, ts: int, group: list[str],
               top: str, firing: dict[str, float], evidence: dict[str, Evidence]) -> Alert:
        ev = evidence[top]
        score = firing[top]
        if rule.names_sensors:
            # the score and threshold are the detector's business: ``score`` and ``detail``
            text = f"unusual readings on {top}"
            if len(group) > 1:
                common = bool(rule.common_mode_min) and len(group) >= rule.common_mode_min
                linked = "other sensor(s) at the same time" if common else "graph neighbour(s)"
                text += f" and {len(group) - 1} {linked}"
            if ev.text:
                text += f": {ev.text}"
            detail: dict[str, Any] = {
                "scores": {s: round(firing[s], 6) for s in group}, "threshold": rule.threshold,
                "explained": {s: {**evidence[s].detail, "text": evidence[s].text}
                              for s in group}}
            severity = ev.severity or ("critical" if score >= rule.critical else "warning")
            out_score: float | None = round(score, 6)
        else:
            text, detail = ev.text, dict(ev.detail)
            severity = ev.severity or ("critical" if score >= rule.critical else "warning")
            out_score = None
        return Alert(id=ev.key or f"{kind}:{top}:{step}", kind=kind, sensors=group, ts=int(ts),
                     step=None if step is None else int(step), severity=severity,
                     detector=ev.detector, statistic=ev.statistic, text=text, score=out_score,
                     region=f"region:{top}" if len(group) > 1 else None, detail=detail)

    def _regions(self, firing: list[str], hops: int) -> list[list[str]]:
        """Connected groups of firing sensors (linked within ``hops`` graph hops)."""
        if hops == 0:
            return [[s] for s in firing]
        left = set(firing)
        out = []
        for s in firing:
            if s not in left:
                continue
            group, frontier = [s], [s]
            left.discard(s)
            while frontier:
                nxt = []
                for u in frontier:
                    for v in self._within(u, hops):
                        if v in left:
                            left.discard(v)
                            group.append(v)
                            nxt.append(v)
                frontier = nxt
            out.append(sorted(group))
        return out

    def _within(self, s: str, hops: int) -> set[str]:
        reach, frontier = set(), {s}
        for _ in range(hops):
            frontier = {v for u in frontier for v in self.neighbours.get(u, ())} - reach - {s}
            reach |= frontier
        return reach

    # --- events -------------------------------------------------------------------------

    def log_event(self, ev: dict[str, Any], sensor: str) -> None:
        """Remember an accepted event on ``sensor`` so that alerts there can name it."""
        attrs = ev.get("attrs") or {}
        dur = attrs.get("duration_ms")
        if dur is None and "duration_steps" in attrs:
            dur = attrs["duration_steps"] * self.cfg.patching.interval_ms
        self.events.append({"type": ev.get("type"), "ts": int(ev["ts"]), "sensor": sensor,
                            "duration_ms": int(dur or 0), **({"attrs": attrs} if attrs else {})})

    def name_events(self, alerts: list[Alert], now_ts: int) -> None:
        """Attach the events that coincide with each alert on the same sensors: an event
        whose span (plus ``alerts.event_window_steps`` steps) covers the alert's time, or,
        for the seasonal reference, the time one season earlier. Events too old to matter
        are forgotten."""
        step_ms = self._step_ms
        win = self.cfg.alerts.event_window_steps * step_ms
        season = self.cfg.drift.season_ms
        keep_ms = win + max(season, step_ms * self.cfg.model.context_patches) + step_ms
        log = self.events
        while log and log[0]["ts"] + log[0]["duration_ms"] + keep_ms < now_ts:
            log.popleft()
        if not log:
            return
        for a in alerts:
            lags = (0, season) if a.statistic == "seasonal_residual" and season else (0,)
            sensors = set(a.sensors)
            hits = [ev for ev in log if ev["sensor"] in sensors and any(
                ev["ts"] - step_ms <= a.ts - lag <= ev["ts"] + ev["duration_ms"] + win
                for lag in lags)]
            if hits:
                a.events = hits
                names = ", ".join(f"{ev['type']} on {ev['sensor']}" for ev in hits[:3])
                a.text = f"{a.text}; coincides with {names}".lstrip("; ")

    # --- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Per kind: scored steps and last alert step by sensor, the disarmed sensors; the
        remembered events. (The format of the dict-based gate, so checkpoints of either
        load in the other.)"""
        names = self._names
        out: dict[str, Any] = {"seen": {}, "last": {}, "disarmed": {}}
        for k, st in self._kinds.items():
            n = min(len(st.seen), len(names))
            out["seen"][k] = {names[i]: int(st.seen[i])
                              for i in np.flatnonzero(st.seen[:n] > 0).tolist()}
            out["last"][k] = {names[i]: int(st.last[i])
                              for i in np.flatnonzero(st.has_last[:n]).tolist()}
            out["disarmed"][k] = sorted(names[i]
                                        for i in np.flatnonzero(st.disarmed[:n]).tolist())
        sigs = {k: dict(st.signature) for k, st in self._kinds.items() if st.signature}
        if sigs:
            out["signature"] = sigs
        incidents = {k: [inc.state() for inc in v] for k, v in self.incidents.items() if v}
        if incidents:
            out["incidents"] = incidents
        out["events"] = list(self.events)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._index, self._names, self._lists = {}, [], {}
        self._kinds = {k: _KindState() for k in self.rules}
        loaded = {k: ({str(s): int(n) for s, n in state["seen"].get(k, {}).items()},
                      {str(s): int(n) for s, n in state["last"].get(k, {}).items()},
                      [str(s) for s in state["disarmed"].get(k, ())])
                  for k in self.rules}
        for seen, last, disarmed in loaded.values():
            for s in (*seen, *last, *disarmed):
                self._slot(s)
        for k, (seen, last, disarmed) in loaded.items():
            st = self._kinds[k]
            st.grow(len(self._names))
            for s, n in seen.items():
                st.seen[self._index[s]] = n
            for s, n in last.items():
                st.last[self._index[s]], st.has_last[self._index[s]] = n, True
            st.disarmed[[self._index[s] for s in disarmed]] = True
        for k, sigs in state.get("signature", {}).items():
            if k in self._kinds:
                self._kinds[k].signature = {str(s): str(v) for s, v in sigs.items()}
        self.incidents = {k: [] for k in self.rules}
        for k, incs in state.get("incidents", {}).items():
            if k in self.incidents:
                self.incidents[k] = [_Incident.from_state(d) for d in incs]
        self.events = deque(state["events"])


def gate_series(score: np.ndarray, threshold: float, clear: float | None = None,
                min_gap_steps: int = 0, warmup_steps: int = 0) -> np.ndarray:
    """The steps at which one sensor's score series fires under a ``GateRule``'s threshold,
    hysteresis (``clear``), cooldown (``min_gap_steps``) and warm-up, as ``AlertGate.update``
    decides them step by step (one value per step; NaN: not scored).

    It lets a benchmark score the alerts a user would get at *every* threshold from one
    recorded score series (NAB optimizes the threshold), without replaying the gate per
    threshold. Merging across sensors and the cooldown's exceptions for a change of another
    kind (drift only) are not part of it."""
    s = np.asarray(score, np.float64)
    if s.ndim != 1:
        raise ValueError(f"gate_series: one score per step, got shape {s.shape}")
    seen = np.cumsum(~np.isnan(s))
    with np.errstate(invalid="ignore"):
        hot = np.flatnonzero((s >= threshold) & (seen > warmup_steps))
        below = np.cumsum(s < clear) if clear is not None else None
    fired: list[int] = []
    for r in hot.tolist():
        if fired:
            last = fired[-1]
            if r - last < min_gap_steps:
                continue
            if below is not None and below[r - 1] == below[last]:
                continue                    # still disarmed: never below ``clear`` since
        fired.append(r)
    return np.asarray(fired, np.int64)


def _signature(ev: Evidence | None) -> str | None:
    """What a drift says changed ("level:up", "variance:down"), when it says so."""
    if ev is None or not ev.detail.get("change"):
        return None
    return f"{ev.detail['change']}:{ev.detail.get('value_direction') or ''}"


@dataclass
class _Incident:
    """An open incident: its first alert's id, what changed, when, and its sensors so far."""

    id: str
    signature: str
    step: int
    sensors: set[str]
    common: bool                    # network-wide (``common_mode_min`` sensors at once)

    def state(self) -> dict[str, Any]:
        return {"id": self.id, "signature": self.signature, "step": self.step,
                "sensors": sorted(self.sensors), "common": self.common}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> _Incident:
        return cls(str(d["id"]), str(d["signature"]), int(d["step"]),
                   {str(s) for s in d["sensors"]}, bool(d["common"]))


class _KindState:
    """One alert kind's per-sensor gate state, indexed by the gate's sensor slots."""

    def __init__(self) -> None:
        self.seen = np.zeros(0, np.int64)      # scored steps
        self.last = np.zeros(0, np.int64)      # step of the last alert (if has_last)
        self.has_last = np.zeros(0, bool)
        self.disarmed = np.zeros(0, bool)      # fired, not yet below ``clear``
        self.signature: dict[str, str] = {}    # sensor -> what its last alert said changed

    def grow(self, n: int) -> None:
        if n > len(self.seen):
            size = max(n, 2 * len(self.seen))
            pad = size - len(self.seen)
            self.seen = np.concatenate([self.seen, np.zeros(pad, np.int64)])
            self.last = np.concatenate([self.last, np.zeros(pad, np.int64)])
            self.has_last = np.concatenate([self.has_last, np.zeros(pad, bool)])
            self.disarmed = np.concatenate([self.disarmed, np.zeros(pad, bool)])
