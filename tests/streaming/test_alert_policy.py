"""Alert policy: warm-up, cooldown, hysteresis, regional merge over the graph, state."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.alert_policy import AlertPolicy, AlertPolicyConfig

S = ["a", "b", "c", "d"]


def _run(policy: AlertPolicy, rows: list[list[float]], start: int = 0) -> list[list[dict]]:
    return [policy.update(start + i, 1000 * (start + i), S, np.array(r)) for i, r in
            enumerate(rows)]


def test_warmup_then_one_alert_per_incident_with_hysteresis() -> None:
    p = AlertPolicy(AlertPolicyConfig(threshold=0.9, clear_threshold=0.5, warmup_steps=3,
                                      cooldown_steps=0))
    hi, lo, mid = [0.95, 0, 0, 0], [0.1, 0, 0, 0], [0.7, 0, 0, 0]
    out = _run(p, [hi, hi, hi])                    # warm-up: nothing yet
    assert not any(out)
    out = _run(p, [hi, hi, mid, hi, lo, hi], start=3)
    fired = [i for i, a in enumerate(out) if a]
    # fires at once, stays silent while high or between the thresholds, re-arms after low
    assert fired == [0, 5]
    assert out[0][0]["sensors"] == ["a"] and out[0][0]["severity"] == "warning"


def test_cooldown_blocks_a_second_alert() -> None:
    p = AlertPolicy(AlertPolicyConfig(warmup_steps=0, cooldown_steps=5))
    hi, lo = [0.999, 0, 0, 0], [0.0, 0, 0, 0]
    out = _run(p, [hi, lo, hi, lo, hi, lo, hi])
    fired = [i for i, a in enumerate(out) if a]
    assert fired == [0, 6]                          # re-armed at 1 but cooling down until 5
    assert out[0][0]["severity"] == "critical"


def test_neighbours_merge_into_one_regional_alert() -> None:
    edges = np.array([[0, 1, 2], [1, 2, 3]])       # a-b-c-d chain
    p = AlertPolicy(AlertPolicyConfig(warmup_steps=0), edge_index=edges, sensors=S)
    out = p.update(10, 10_000, S, np.array([0.95, 0.97, 0.1, 0.92]))
    groups = sorted(tuple(a["sensors"]) for a in out)
    assert groups == [("a", "b"), ("d",)]          # c is quiet: d is not linked to a-b
    region = next(a for a in out if len(a["sensors"]) == 2)
    assert region["region"] == "region:b" and region["detail"]["scores"]["a"] == 0.95
    two_hops = AlertPolicy(AlertPolicyConfig(warmup_steps=0, merge_hops=2), edge_index=edges,
                           sensors=S)
    out = two_hops.update(10, 10_000, S, np.array([0.95, 0.97, 0.1, 0.92]))
    assert [a["sensors"] for a in out] == [["a", "b", "d"]]


def test_detail_nan_and_state_round_trip() -> None:
    p = AlertPolicy(AlertPolicyConfig(warmup_steps=1, cooldown_steps=3))
    p.update(0, 0, S, np.array([np.nan, 0.1, 0.1, 0.1]))
    out = p.update(1, 1, S, np.array([0.95, 0.1, 0.1, 0.1]),
                   detail={"a": {"detector": "adwin", "statistic": "abs_residual"}})
    assert out == []                               # a has no scored step before: warming up
    out = p.update(2, 2, S, np.array([0.95, 0.1, 0.1, 0.1]),
                   detail={"a": {"detector": "adwin", "statistic": "abs_residual"}})
    assert out[0]["detail"]["explained"]["a"]["detector"] == "adwin"
    q = AlertPolicy(AlertPolicyConfig(warmup_steps=1, cooldown_steps=3))
    q.load_state_dict(p.state_dict())
    rows = [[0.1, 0, 0, 0], [0.95, 0, 0, 0], [0.95, 0, 0, 0]]
    assert _run(p, rows, start=3) == _run(q, rows, start=3)
    with pytest.raises(ValueError):
        AlertPolicyConfig(threshold=0.4, clear_threshold=0.5).validate()
