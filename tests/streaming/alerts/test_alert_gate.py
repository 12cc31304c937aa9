"""The alert gate: warm-up, cooldown, hysteresis, regional merge over the graph, event naming,
state (the anomaly rule's behaviour; moved here from the former alert policy's tests)."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.alerts.alert_gate import AlertGate, Evidence, GateRule
from streaming.config import StreamConfig

S = ["a", "b", "c", "d"]


def _gate(edges: np.ndarray | None = None, **rule: object) -> AlertGate:
    g = AlertGate(StreamConfig(), edge_index=edges, sensors=S if edges is not None else None)
    base = {"threshold": 0.9, "clear": 0.5, "critical": 0.99, "warmup_steps": 48,
            "min_gap_steps": 24, "merge_hops": 1, "names_sensors": True}
    g.rules["anomaly"] = GateRule(**{**base, **rule})
    return g


def _update(g: AlertGate, step: int, ts: int, scores: np.ndarray,
            detail: dict[str, dict] | None = None) -> list[dict]:
    ev = {s: Evidence(float(v), (detail or {}).get(s, {}).get("detector", "anomaly-likelihood"),
                      (detail or {}).get(s, {}).get("statistic", ""), "",
                      detail=(detail or {}).get(s, {}))
          for s, v in zip(S, scores.tolist(), strict=True) if v == v}
    return [a.to_dict() for a in g.update("anomaly", step, ts, ev, S, scores)]


def _run(g: AlertGate, rows: list[list[float]], start: int = 0) -> list[list[dict]]:
    return [_update(g, start + i, 1000 * (start + i), np.array(r)) for i, r in enumerate(rows)]


def test_warmup_then_one_alert_per_incident_with_hysteresis() -> None:
    p = _gate(warmup_steps=3, min_gap_steps=0)
    hi, lo, mid = [0.95, 0, 0, 0], [0.1, 0, 0, 0], [0.7, 0, 0, 0]
    out = _run(p, [hi, hi, hi])                    # warm-up: nothing yet
    assert not any(out)
    out = _run(p, [hi, hi, mid, hi, lo, hi], start=3)
    fired = [i for i, a in enumerate(out) if a]
    # fires at once, stays silent while high or between the thresholds, re-arms after low
    assert fired == [0, 5]
    assert out[0][0]["sensors"] == ["a"] and out[0][0]["severity"] == "warning"


def test_cooldown_blocks_a_second_alert() -> None:
    p = _gate(warmup_steps=0, min_gap_steps=5)
    hi, lo = [0.999, 0, 0, 0], [0.0, 0, 0, 0]
    out = _run(p, [hi, lo, hi, lo, hi, lo, hi])
    fired = [i for i, a in enumerate(out) if a]
    assert fired == [0, 6]                          # re-armed at 1 but cooling down until 5
    assert out[0][0]["severity"] == "critical"


def test_neighbours_merge_into_one_regional_alert() -> None:
    edges = np.array([[0, 1, 2], [1, 2, 3]])       # a-b-c-d chain
    p = _gate(edges, warmup_steps=0)
    out = _update(p, 10, 10_000, np.array([0.95, 0.97, 0.1, 0.92]))
    groups = sorted(tuple(a["sensors"]) for a in out)
    assert groups == [("a", "b"), ("d",)]          # c is quiet: d is not linked to a-b
    region = next(a for a in out if len(a["sensors"]) == 2)
    assert region["region"] == "region:b" and region["detail"]["scores"]["a"] == 0.95
    two_hops = _gate(edges, warmup_steps=0, merge_hops=2)
    out = _update(two_hops, 10, 10_000, np.array([0.95, 0.97, 0.1, 0.92]))
    assert [a["sensors"] for a in out] == [["a", "b", "d"]]


def test_sensors_firing_together_become_one_alert_without_a_graph() -> None:
    p = _gate(warmup_steps=0, common_mode_min=3)
    out = _update(p, 10, 10_000, np.array([0.95, 0.97, 0.1, 0.92]))
    assert [a["sensors"] for a in out] == [["a", "b", "d"]]
    assert "and 2 other sensor(s) at the same time" in out[0]["detail"]["text"]
    out = _update(p, 40, 40_000, np.array([0.0, 0.0, 0.95, 0.0]))
    assert [a["sensors"] for a in out] == [["c"]]        # alone: its own alert
    q = _gate(warmup_steps=0, common_mode_min=0)           # off: one alert per sensor
    assert len(_update(q, 10, 10_000, np.array([0.95, 0.97, 0.1, 0.92]))) == 3


def test_detail_nan_and_state_round_trip() -> None:
    p = _gate(warmup_steps=1, min_gap_steps=3)
    _update(p, 0, 0, np.array([np.nan, 0.1, 0.1, 0.1]))
    out = _update(p, 1, 1, np.array([0.95, 0.1, 0.1, 0.1]),
                  detail={"a": {"detector": "adwin", "statistic": "abs_residual"}})
    assert out == []                               # a has no scored step before: warming up
    out = _update(p, 2, 2, np.array([0.95, 0.1, 0.1, 0.1]),
                  detail={"a": {"detector": "adwin", "statistic": "abs_residual"}})
    assert out[0]["detail"]["explained"]["a"]["detector"] == "adwin"
    q = _gate(warmup_steps=1, min_gap_steps=3)
    q.load_state_dict(p.state_dict())
    rows = [[0.1, 0, 0, 0], [0.95, 0, 0, 0], [0.95, 0, 0, 0]]
    assert _run(p, rows, start=3) == _run(q, rows, start=3)
    with pytest.raises(ValueError):
        StreamConfig.from_dict({"alerts": {"anomaly_threshold": 0.4, "anomaly_clear": 0.5}})


def test_every_kind_goes_through_one_gate_and_comes_out_complete() -> None:
    g = AlertGate(StreamConfig())
    drift = g.update("drift", 7, 7000, {"b": Evidence(4.2, "page_hinkley", "abs_residual",
                                                      "page_hinkley fired on abs_residual",
                                                      severity="warning")})
    again = g.update("drift", 8, 8000, {"b": Evidence(5.0, "page_hinkley", "abs_residual", "")})
    dq = g.report("data-quality", 7, 7000, ["c", "d"],
                  Evidence(1.0, "forecast-guard", "forecast", "non-finite forecast"))
    assert again == []                              # cooling down
    for a in (drift[0], dq):
        d = a.to_dict()
        assert {"id", "kind", "sensors", "ts", "step", "severity", "detector", "statistic",
                "detail"} <= set(d) and d["detail"]["text"]
    assert dq.sensors == ["c", "d"] and drift[0].id == "drift:b:7"
    with pytest.raises(ValueError, match="unknown alert kind 'nope'"):
        g.update("nope", 1, 1, {})


def test_events_are_named_on_their_sensors_only() -> None:
    g = AlertGate(StreamConfig())
    g.log_event({"type": "roadworks", "ts": 10_000, "attrs": {"duration_steps": 2}}, "b")
    a = g.update("drift", 3, 11_000, {"b": Evidence(4.0, "adwin", "abs_residual", "fired"),
                                      "c": Evidence(4.0, "adwin", "abs_residual", "fired")})
    g.name_events(a, 11_000)
    named = {x.sensors[0]: x for x in a}
    assert named["b"].events and "coincides with roadworks on b" in named["b"].text
    assert not named["c"].events


def _drift(g: AlertGate, step: int, firing: dict[str, str]) -> list[dict]:
    """Drift evidence on ``firing`` (sensor -> "level:down" style change) at ``step``."""
    ev = {s: Evidence(5.0, "bocpd", "level", f"{s} changed",
                      detail={"change": c.split(":")[0], "value_direction": c.split(":")[1]})
          for s, c in firing.items()}
    return [a.to_dict() for a in g.update("drift", step, 1000 * step, ev)]


def test_a_change_spreading_to_linked_sensors_joins_its_incident() -> None:
    edges = np.array([[0, 1, 2], [1, 2, 3]])       # a-b-c-d chain
    g = AlertGate(StreamConfig(), edge_index=edges, sensors=S)
    assert g.rules["drift"].incident_steps == StreamConfig().alerts.drift_incident_steps > 0
    first = _drift(g, 10, {"a": "level:down"})
    assert first[0]["severity"] != "info" and "incident" not in first[0]["detail"]
    later = _drift(g, 12, {"b": "level:down"})      # a's neighbour, the same change
    assert later[0]["severity"] == "info"
    assert later[0]["detail"]["incident"] == first[0]["id"]
    assert later[0]["detail"]["incident_sensors"] == 2
    assert f"part of incident {first[0]['id']}" in later[0]["detail"]["text"]
    # c is b's neighbour: the incident grew to b, so c joins too
    assert _drift(g, 13, {"c": "level:down"})[0]["detail"]["incident_sensors"] == 3
    # another change on a linked sensor is a new incident
    other = _drift(g, 14, {"d": "level:up"})
    assert other[0]["severity"] != "info" and "incident" not in other[0]["detail"]


def test_an_unlinked_or_late_change_opens_a_new_incident() -> None:
    g = AlertGate(StreamConfig(), edge_index=np.array([[0], [1]]), sensors=S)   # a-b only
    steps = StreamConfig().alerts.drift_incident_steps
    _drift(g, 10, {"a": "level:down"})
    assert _drift(g, 11, {"c": "level:down"})[0]["severity"] != "info"          # not linked
    late = _drift(g, 11 + steps + 1, {"d": "level:down", "b": "level:down"})
    assert {a["severity"] for a in late} != {"info"}                             # closed
    # without a graph, network-wide changes (common mode) link to each other
    g = AlertGate(StreamConfig())
    wide = {s: "level:down" for s in S[:3]}
    assert _drift(g, 10, wide)[0]["severity"] != "info"
    joined = _drift(g, 11, {s: "level:down" for s in ("d", "e", "f")})
    assert joined[0]["severity"] == "info" and joined[0]["detail"]["incident_sensors"] == 6
    # and off when asked
    cfg = StreamConfig()
    cfg.alerts.drift_incident_steps = 0
    g = AlertGate(cfg)
    _drift(g, 10, wide)
    assert _drift(g, 11, {s: "level:down" for s in ("d", "e", "f")})[0]["severity"] != "info"


def test_open_incidents_survive_a_checkpoint() -> None:
    edges = np.array([[0, 1, 2], [1, 2, 3]])
    g = AlertGate(StreamConfig(), edge_index=edges, sensors=S)
    first = _drift(g, 10, {"a": "level:down"})
    restored = AlertGate(StreamConfig(), edge_index=edges, sensors=S)
    restored.load_state_dict(g.state_dict())
    for gate in (g, restored):
        out = _drift(gate, 12, {"b": "level:down"})
        assert out[0]["detail"]["incident"] == first[0]["id"]
    assert restored.state_dict() == g.state_dict()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gate_series_fires_where_the_gate_fires(seed: int) -> None:
    """The one-series form of the rule (benchmarks sweep thresholds with it) decides as the
    gate does step by step: threshold, hysteresis, cooldown, warm-up, unscored steps."""
    from streaming.alerts.alert_gate import gate_series

    rng = np.random.default_rng(seed)
    n = 600
    scores = rng.beta(0.6, 0.6, size=(n, len(S)))
    scores[rng.random((n, len(S))) < 0.05] = np.nan
    g = _gate(warmup_steps=7, min_gap_steps=5, merge_hops=0)
    fired: dict[str, list[int]] = {s: [] for s in S}
    for step in range(n):
        for a in _update(g, step, 1000 * step, scores[step]):
            for s in a["sensors"]:
                fired[s].append(a["step"])
    assert sum(map(len, fired.values())) > 20
    for j, s in enumerate(S):
        got = gate_series(scores[:, j], 0.9, clear=0.5, min_gap_steps=5, warmup_steps=7)
        assert got.tolist() == fired[s]
