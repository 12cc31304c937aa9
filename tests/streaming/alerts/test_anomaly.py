"""Anomaly likelihood: quiet on stationary noise, high on a burst, state round trip."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from streaming.alerts.anomaly import AnomalyLikelihood


def test_quiet_on_noise_high_on_burst() -> None:
    rng = np.random.default_rng(0)
    al = AnomalyLikelihood(long_window=500, short_window=5, warmup=100)
    raw = np.abs(rng.normal(size=(3000, 3)))
    raw[2500:2510, 1] += 6.0                      # a burst on sensor 1 only
    scores = np.stack([al.learn_many(r) for r in raw])
    assert (scores[:100] == 0).all()              # warm-up
    calm = scores[200:2500]
    assert np.quantile(calm, 0.999) < 0.7            # tail > 1e-5
    assert scores[2500:2515, 1].max() > 0.8
    assert scores[2500:2515, [0, 2]].max() < 0.7
    assert ((scores >= 0) & (scores <= 1)).all()


def test_nan_is_skipped_and_state_round_trips() -> None:
    al = AnomalyLikelihood(long_window=50, short_window=3, warmup=5)
    rng = np.random.default_rng(1)
    for _ in range(60):
        al.learn_many(np.abs(rng.normal(size=2)))
    before = copy.deepcopy(al.state_dict())
    out = al.learn_many(np.array([np.nan, np.nan]))
    assert (out == 0).all()
    for k in ("count", "mean", "var", "short"):
        np.testing.assert_array_equal(al.state_dict()[k], before[k])
    other = AnomalyLikelihood()
    other.load_state_dict(before)
    x = np.array([0.3, 4.0])
    np.testing.assert_array_equal(other.learn_many(x), al.learn_many(x))
    with pytest.raises(ValueError):
        AnomalyLikelihood(long_window=5, short_window=10)


def _core_run(rec):
    from replay.backtest import backtest
    from streaming.config import StreamConfig
    from streaming.forecast.online import OnlineModel
    from streaming.pipeline.core import StreamCore

    cfg = StreamConfig.from_dict({"patching": {"interval_ms": rec.interval_ms}})
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=list(rec.sensors))
    return core, backtest(rec, core, progress=False)


@pytest.mark.heavy
def test_a_stationary_recording_of_50k_readings_stays_within_the_alert_budget() -> None:
    # default settings: no drift or data-quality alert, anomaly alerts within
    # alerts.max_per_10k per 10,000 readings
    from replay.simulator import SimConfig, simulate

    rec, truths = simulate(SimConfig(n_sensors=10, n_days=17.5, seed=11, n_events=0,
                                     drifts=[]))
    assert truths == [] and rec.values.size >= 50_000
    core, res = _core_run(rec)
    assert [a["id"] for a in res.alerts if a["kind"] != "anomaly"] == []
    budget = core.cfg.alerts.max_per_10k * rec.values.size / 10_000
    assert len(res.alerts) <= budget
    assert core.scorer.residual.count.min() > 300          # every sensor was scored


def test_a_300_point_series_with_a_level_shift_alerts_near_it_at_defaults() -> None:
    from connectors.recordings import Recording

    rng = np.random.default_rng(4)
    t = np.arange(300)
    x = 20 + 3 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 0.5, 300)
    shifted = x.copy()
    shifted[150:] += 5.0                                  # ~3 std of the series' spread
    ts = np.datetime64("2026-03-02", "ms").astype(np.int64) + 300_000 * t
    found = {}
    for name, v in (("stationary", x), ("shift", shifted)):
        rec = Recording(timestamps=ts, sensors=["s0"], values=v[:, None], interval_ms=300_000)
        _, res = _core_run(rec)
        found[name] = [(a["kind"], a["raised_ts"]) for a in res.alerts]
    assert found["stationary"] == []
    near = [(k, at) for k, at in found["shift"] if ts[150] <= at <= ts[150] + 24 * 300_000]
    assert near, found["shift"]


def test_a_spike_raises_one_explained_anomaly_alert() -> None:
    from replay.simulator import SimConfig, simulate

    rec, _ = simulate(SimConfig(n_sensors=6, n_days=8, seed=12, n_events=0, drifts=[]))
    row = 6 * 288 + 100
    rec.values[row:row + 6, 2] += 8 * np.nanstd(rec.values[:, 2])
    _, res = _core_run(rec)
    anomalies = [a for a in res.alerts if a["kind"] == "anomaly"]
    assert len(anomalies) == 1, anomalies
    a = anomalies[0]
    assert a["sensors"] == [rec.sensors[2]]
    assert abs(a["raised_ts"] - rec.timestamps[row]) <= 2 * 3_600_000
    if "reading" in a["detail"]["explained"][rec.sensors[2]]:   # stamped at that reading
        assert rec.timestamps[row] <= a["ts"] <= rec.timestamps[row + 5] < a["raised_ts"]
    expl = a["detail"]["explained"][rec.sensors[2]]
    assert expl["detector"] == "fused" and expl["component"] in expl["p"]
    share = expl["weights"]                # the leading component: least p over its share
    assert (expl["p"][expl["component"]] / share[expl["component"]]
            == min(v / share[c] for c, v in expl["p"].items()))


def test_an_alert_names_the_events_on_its_sensor_and_only_those() -> None:
    from replay.simulator import SimConfig, simulate

    rec, _ = simulate(SimConfig(n_sensors=6, n_days=8, seed=12, n_events=0, drifts=[]))
    row = 6 * 288 + 100
    rec.values[row:row + 6, 2] += 8 * np.nanstd(rec.values[:, 2])
    t = int(rec.timestamps[row])
    rec.events = [
        {"type": "roadworks", "ts": t - 300_000, "sensor": rec.sensors[2],
         "attrs": {"duration_steps": 6}},
        {"type": "concert", "ts": t, "sensor": rec.sensors[4]},          # other sensor
        {"type": "old-incident", "ts": t - 2 * 86_400_000, "sensor": rec.sensors[2]},
    ]
    _, res = _core_run(rec)
    anomalies = [a for a in res.alerts if a["kind"] == "anomaly"]
    assert len(anomalies) == 1
    a = anomalies[0]
    assert [ev["type"] for ev in a["events"]] == ["roadworks"]
    assert a["events"][0]["sensor"] == rec.sensors[2]
    assert "coincides with roadworks" in a["detail"]["text"]
    assert all("events" not in b for b in res.alerts if b is not a)


def test_score_blocks_carry_components_and_raw_statistics() -> None:
    from replay.simulator import SimConfig, simulate
    from streaming.alerts.calibration import exponent

    rec, _ = simulate(SimConfig(n_sensors=4, n_days=3, seed=3, n_events=0, drifts=[]))
    core, res = _core_run(rec)
    names = {"residual", "level", "jump", "distribution", "range"}       # the defaults
    assert set(res.score_components) == names and set(res.score_raw) == names
    comb = res.scores
    assert ((comb >= 0) & (comb <= 1)).all()
    # the fused rule from the components' calibrated scores: p_k = (1 - s_k) ** m,
    # p = min(1, min_k p_k / w_k) with the shares w_k of anomaly.weights (equal shares:
    # K min_k p_k), score = 1 - p ** (1/m)
    m = exponent(core.cfg.alerts.max_per_10k, core.cfg.alerts.anomaly_threshold)
    w = core.cfg.anomaly.weights_for(sorted(names)) or {c: 1 / len(names) for c in names}
    assert sum(w.values()) == pytest.approx(1.0)
    p = np.stack([(1 - np.nan_to_num(res.score_components[c])) ** m / w[c]
                  for c in sorted(names)])
    fused = 1 - np.minimum(1.0, p.min(axis=0)) ** (1 / m)
    ok = ~np.isnan(comb)
    np.testing.assert_allclose(comb[ok], fused[ok], atol=1e-6)
    assert np.isfinite(res.score_raw["level"][50:]).all()
    assert core.model.last_embedding.shape == (4, core.cfg.model.d_model)
