"""The array alert gate against the dict-based gate it replaced (kept here as the reference):
the same alerts and the same state, step for step, on random scores, evidence, rules,
graphs and sensor lists; checkpoints of either load in the other."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
import pytest

from connectors.schemas import Alert
from streaming.alerts.alert_gate import AlertGate, Evidence, GateRule
from streaming.config import StreamConfig


class _DictGate(AlertGate):
    """The gate before vectorization: per kind, dicts keyed by sensor name, one Python
    iteration per scored sensor (its ``update`` and state, verbatim)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.seen: dict[str, dict[str, int]] = {k: {} for k in self.rules}
        self.last: dict[str, dict[str, int]] = {k: {} for k in self.rules}
        self.disarmed: dict[str, set[str]] = {k: set() for k in self.rules}

    def update(self, kind: str, step: int | None, ts: int, evidence: dict[str, Evidence],
               sensors: list[str] | None = None, scores: np.ndarray | None = None
               ) -> list[Alert]:
        if kind not in self.rules:
            raise ValueError(f"alert gate: unknown alert kind {kind!r} "
                             f"(known: {', '.join(self.rules)})")
        rule = self.rules[kind]
        seen, last, disarmed = self.seen[kind], self.last[kind], self.disarmed[kind]
        if scores is None:
            pairs = [(s, e.score) for s, e in evidence.items()]
        else:
            if sensors is None or len(sensors) != len(scores):
                raise ValueError(f"alert gate: {kind} scores must align with its sensors")
            pairs = list(zip(sensors, np.asarray(scores, np.float64).tolist(), strict=True))
        firing: dict[str, float] = {}
        for s, v in pairs:
            if v != v:      # NaN: not scored
                continue
            seen[s] = seen.get(s, 0) + 1
            if s in disarmed:
                if rule.clear is not None and v < rule.clear:
                    disarmed.discard(s)
                continue
            if (v >= rule.threshold and seen[s] > rule.warmup_steps
                    and (step is None or s not in last
                         or step - last[s] >= rule.min_gap_steps)
                    and s in evidence):
                firing[s] = v
        alerts = []
        if rule.common_mode_min and len(firing) >= rule.common_mode_min:
            groups = [sorted(firing)]
        else:
            groups = self._regions(list(firing), rule.merge_hops)
        for group in groups:
            top = max(group, key=lambda s: firing[s])
            for s in group:
                if step is not None:
                    last[s] = step
                if rule.clear is not None:
                    disarmed.add(s)
            alerts.append(self._build(kind, rule, step, ts, group, top, firing, evidence))
        return alerts

    def state_dict(self) -> dict[str, Any]:
        return {"seen": {k: dict(v) for k, v in self.seen.items()},
                "last": {k: dict(v) for k, v in self.last.items()},
                "disarmed": {k: sorted(v) for k, v in self.disarmed.items()},
                "events": list(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = {k: {str(s): int(n) for s, n in v.items()} for k, v in state["seen"].items()}
        self.last = {k: {str(s): int(n) for s, n in v.items()} for k, v in state["last"].items()}
        self.disarmed = {k: set(v) for k, v in state["disarmed"].items()}
        self.events = deque(state["events"])


S = [f"s{i:02d}" for i in range(40)]


def _pair(seed: int) -> tuple[AlertGate, _DictGate, np.random.Generator]:
    rng = np.random.default_rng(seed)
    edges = rng.integers(0, len(S), size=(2, 50))
    rule = GateRule(threshold=float(rng.choice([0.8, 0.9])),
                    clear=None if seed % 3 == 0 else float(rng.choice([0.3, 0.5])),
                    critical=0.97, min_gap_steps=int(rng.integers(0, 6)),
                    merge_hops=int(rng.integers(0, 3)),
                    common_mode_min=int(rng.choice([0, 3, 5])),
                    warmup_steps=int(rng.integers(0, 5)), names_sensors=True)
    gates = []
    for cls in (AlertGate, _DictGate):
        g = cls(StreamConfig(), edge_index=edges, sensors=S)
        g.rules["anomaly"] = rule
        gates.append(g)
    return gates[0], gates[1], rng


def _step(rng: np.random.Generator, k: int, level: np.ndarray
          ) -> tuple[list[str], np.ndarray, dict[str, Evidence], dict[str, Evidence]]:
    """The sensors of step ``k`` (a growing, sometimes reordered list), their anomaly scores
    (persistent highs, NaN gaps), the anomaly evidence and some drift evidence."""
    n = min(len(S), 10 + k // 2)
    names = S[:n] if k % 7 else list(np.array(S[:n])[rng.permutation(n)])
    level[:] = np.where(rng.random(len(S)) < 0.1, rng.random(len(S)), level)
    scores = np.clip(level[[S.index(s) for s in names]] + 0.1 * rng.standard_normal(n), 0, 1)
    scores[rng.random(n) < 0.05] = np.nan
    ev = {s: Evidence(float(v), "anomaly-likelihood", "residual", f"x{k}",
                      detail={"k": k}) for s, v in zip(names, scores.tolist(), strict=True)
          if v == v and (v >= 0.7 or rng.random() < 0.05)}
    drift = {s: Evidence(float(rng.normal(4, 1)), "page_hinkley", "abs_residual", "rose")
             for s in rng.choice(S, size=int(rng.integers(0, 3)), replace=False).tolist()}
    return names, scores, ev, drift


@pytest.mark.parametrize("seed", range(12))
def test_array_gate_gives_the_dict_gates_alerts_and_state(seed: int) -> None:
    new, old, rng = _pair(seed)
    level = rng.random(len(S)) * 0.5
    n_alerts = 0
    for k in range(160):
        names, scores, ev, drift = _step(rng, k, level)
        step = None if k % 37 == 5 else k
        a_new = new.update("anomaly", step, 1000 * k, ev, names, scores)
        a_old = old.update("anomaly", step, 1000 * k, ev, names, scores)
        d_new = new.update("drift", step, 1000 * k, drift)
        d_old = old.update("drift", step, 1000 * k, drift)
        assert [a.to_dict() for a in a_new + d_new] == [a.to_dict() for a in a_old + d_old], k
        n_alerts += len(a_new) + len(d_new)
        if k % 40 == 20:
            assert _norm(new.state_dict()) == _norm(old.state_dict())
        if k == 80:              # checkpoints cross over: the dict format both ways
            new_state, old_state = new.state_dict(), old.state_dict()
            new, old = _pair(seed)[:2]
            new.load_state_dict(old_state)
            old.load_state_dict(new_state)
    assert n_alerts > 10


def _norm(state: dict[str, Any]) -> dict[str, Any]:
    return {k: ({kind: dict(sorted(v.items())) if isinstance(v, dict) else sorted(v)
                 for kind, v in state[k].items()} if k != "events" else state[k])
            for k in state}


def test_array_gate_rejects_misaligned_or_repeated_sensors() -> None:
    g = AlertGate(StreamConfig())
    with pytest.raises(ValueError, match="must align"):
        g.update("anomaly", 1, 1, {}, ["a", "b"], np.zeros(3))
    with pytest.raises(ValueError, match="must align"):
        g.update("anomaly", 1, 1, {}, ["a", "b"], np.zeros((2, 1)))
    with pytest.raises(ValueError, match="'a' twice"):
        g.update("anomaly", 1, 1, {}, ["a", "b", "a"], np.zeros(3))
    assert math.isinf(g.rules["drift"].threshold)
