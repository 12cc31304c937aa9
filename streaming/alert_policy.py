"""Alert policy: from per-sensor anomaly scores to few, explained, regional alerts.

Per sensor: a warm-up (no alert before ``warmup_steps`` scored steps), a threshold, a cooldown
(no second alert within ``cooldown_steps``) and hysteresis (after an alert the sensor re-arms
only once its score fell below ``clear_threshold``), so one incident gives one alert, not one
per step. Sensors that fire in the same step and are linked in the sensor graph (within
``merge_hops`` edges through other firing sensors) become one regional alert. Severity comes
from the highest score; ``detail`` carries the scores and whatever the detectors explained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class AlertPolicyConfig:
    threshold: float = 0.9           # score that fires an alert
    clear_threshold: float = 0.5     # score below which a fired sensor re-arms (hysteresis)
    critical: float = 0.99           # score from which an alert is "critical"
    warmup_steps: int = 48
    cooldown_steps: int = 24
    merge_hops: int = 1              # graph hops that join firing sensors into one region

    def validate(self) -> AlertPolicyConfig:
        if not 0 <= self.clear_threshold <= self.threshold <= 1:
            raise ValueError("alert policy needs 0 <= clear_threshold <= threshold <= 1")
        if self.warmup_steps < 0 or self.cooldown_steps < 0 or self.merge_hops < 0:
            raise ValueError("alert policy warmup_steps, cooldown_steps and merge_hops "
                             "must be >= 0")
        return self


class AlertPolicy:
    """Stateful per-sensor gating and graph-based merging of alerts."""

    def __init__(self, cfg: AlertPolicyConfig, kind: str = "anomaly",
                 edge_index: np.ndarray | None = None, sensors: list[str] | None = None
                 ) -> None:
        self.cfg = cfg.validate()
        self.kind = kind
        self.neighbours: dict[str, set[str]] = {}
        if edge_index is not None and sensors is not None:
            ei = np.asarray(edge_index).reshape(2, -1)
            for a, b in ei.T.tolist():
                if a != b:
                    self.neighbours.setdefault(sensors[a], set()).add(sensors[b])
                    self.neighbours.setdefault(sensors[b], set()).add(sensors[a])
        self.seen: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.disarmed: set[str] = set()

    def update(self, step: int, ts: int, sensors: list[str], scores: np.ndarray,
               detail: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Feed one step's scores (NaN = not scored); returns the alerts it raises."""
        c = self.cfg
        firing: dict[str, float] = {}
        for s, v in zip(sensors, np.asarray(scores, np.float64).tolist(), strict=True):
            if v != v:      # NaN
                continue
            self.seen[s] = self.seen.get(s, 0) + 1
            if s in self.disarmed:
                if v < c.clear_threshold:
                    self.disarmed.discard(s)
                continue
            if (v >= c.threshold and self.seen[s] > c.warmup_steps
                    and step - self.last.get(s, -(10**18)) >= c.cooldown_steps):
                firing[s] = v
        alerts = []
        for group in self._regions(list(firing)):
            top = max(group, key=lambda s: firing[s])
            for s in group:
                self.last[s] = step
                self.disarmed.add(s)
            score = firing[top]
            text = f"{self.kind} score {score:.3f} >= {c.threshold:g} on {top}"
            if len(group) > 1:
                text += f" and {len(group) - 1} graph neighbour(s)"
            why = (detail or {}).get(top, {}).get("text")
            if why:
                text += f": {why}"
            alert = {
                "id": f"{self.kind}:{top}:{step}", "kind": self.kind, "sensors": group,
                "ts": int(ts), "step": int(step), "score": round(score, 6),
                "severity": "critical" if score >= c.critical else "warning",
                "detail": {"scores": {s: round(firing[s], 6) for s in group},
                           "threshold": c.threshold, "text": text,
                           **({"explained": {s: detail[s] for s in group if s in detail}}
                              if detail else {})}}
            if len(group) > 1:
                alert["region"] = f"region:{top}"
            alerts.append(alert)
        return alerts

    def _regions(self, firing: list[str]) -> list[list[str]]:
        """Connected groups of firing sensors (linked within ``merge_hops`` graph hops)."""
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
                    for v in self._within(u):
                        if v in left:
                            left.discard(v)
                            group.append(v)
                            nxt.append(v)
                frontier = nxt
            out.append(sorted(group))
        return out

    def _within(self, s: str) -> set[str]:
        reach, frontier = set(), {s}
        for _ in range(self.cfg.merge_hops):
            frontier = {v for u in frontier for v in self.neighbours.get(u, ())} - reach - {s}
            reach |= frontier
        return reach

    def state_dict(self) -> dict[str, Any]:
        return {"seen": dict(self.seen), "last": dict(self.last),
                "disarmed": sorted(self.disarmed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = {str(k): int(v) for k, v in state["seen"].items()}
        self.last = {str(k): int(v) for k, v in state["last"].items()}
        self.disarmed = set(state["disarmed"])
