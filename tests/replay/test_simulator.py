"""The simulated sensor network: determinism, missingness, drifts, events and truth files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connectors.recordings import read_recording
from replay.simulator import (
    DriftSpec,
    DriftTruth,
    SimConfig,
    read_truth,
    simulate,
    write_simulation,
)

DAY = 288  # steps per day at 5 min


@pytest.fixture(scope="module")
def default_sim():
    return simulate(SimConfig())


def test_shape_time_axis_and_graph(default_sim) -> None:
    rec, truths = default_sim
    assert rec.values.shape == (14 * DAY, 30)
    assert rec.interval_ms == 300_000
    assert rec.timestamps[0] == 1_767_571_200_000  # 2026-01-05T00:00:00Z
    assert np.all(np.diff(rec.timestamps) == 300_000)
    assert len(set(rec.sensors)) == 30
    assert rec.lat is not None and rec.lon is not None
    assert np.all(np.abs(rec.lat - 34.05) < 0.1) and np.all(np.abs(rec.lon + 118.25) < 0.12)
    ei = rec.edge_index
    assert ei is not None and ei.shape[1] > 30 and not np.any(ei[0] == ei[1])
    w = np.zeros((30, 30))
    w[ei[0], ei[1]] = rec.edge_weight
    np.testing.assert_array_equal(w, w.T)
    # speed-like values with a daily cycle
    assert 20 < np.nanmean(rec.values) < 80 and np.nanmin(rec.values) >= 0


def test_deterministic_under_seed(default_sim) -> None:
    rec, truths = default_sim
    rec2, truths2 = simulate(SimConfig())
    assert rec2.equals(rec)
    assert [t.to_dict() for t in truths2] == [t.to_dict() for t in truths]
    rec3, _ = simulate(SimConfig(seed=1))
    assert not np.array_equal(rec3.values, rec.values, equal_nan=True)


def test_missing_rate_as_configured() -> None:
    rec, _ = simulate(SimConfig(missing_rate=0.05, outage_rate=0.0, n_days=7))
    assert 0.045 < np.isnan(rec.values).mean() < 0.055
    rec, _ = simulate(SimConfig(missing_rate=0.0, outage_rate=0.0, n_days=7))
    assert not np.isnan(rec.values).any()
    # outages come as blocks of 3-24 consecutive steps
    rec, _ = simulate(SimConfig(missing_rate=0.0, outage_rate=0.002, n_days=7))
    col = np.isnan(rec.values).T.reshape(-1)
    assert col.any()
    edges = np.diff(np.concatenate([[0], col.astype(np.int8), [0]]))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    assert runs.min() >= 3


def test_default_config_missing_rate(default_sim) -> None:
    rec, _ = default_sim
    frac = np.isnan(rec.values).mean()
    # 1 % iid + ~0.05 % x ~13.5 steps of outages
    assert 0.01 < frac < 0.03


def test_default_drifts(default_sim) -> None:
    rec, truths = default_sim
    assert sorted(t.kind for t in truths) == sorted(
        ["level_shift", "variance_change", "trend_change", "seasonality_change"])
    by_kind = {t.kind: t for t in truths}
    assert by_kind["level_shift"].magnitude == 1.5
    assert by_kind["level_shift"].onset_index == round(0.6 * rec.n_steps)
    assert by_kind["variance_change"].magnitude == 3.0
    assert by_kind["trend_change"].magnitude == 0.3
    assert by_kind["seasonality_change"].onset_index == round(0.8 * rec.n_steps)
    seen: set[str] = set()
    for t in truths:
        assert len(t.sensors) >= 1 and not seen & set(t.sensors)  # disjoint
        seen |= set(t.sensors)
        assert rec.timestamps[t.onset_index] == t.onset_ts
        # affected = centre + its most strongly connected 1-hop neighbours
        c = rec.sensors.index(t.sensors[0])
        out = rec.edge_index[0] == c
        nbrs = rec.edge_index[1][out]
        strongest = set(nbrs[np.argsort(-rec.edge_weight[out], kind="stable")][:2].tolist())
        assert {rec.sensors.index(s) for s in t.sensors[1:]} == strongest


@pytest.mark.parametrize(("seed", "n_sensors"), [(0, 40), (1, 30), (27, 30), (29, 30), (3, 8)])
def test_no_drift_onset_before_half(seed: int, n_sensors: int) -> None:
    rec, truths = simulate(SimConfig(seed=seed, n_days=4, n_sensors=n_sensors))
    assert len(truths) == 4  # all four default kinds even on small / dense graphs
    assert all(t.onset_index >= rec.n_steps / 2 for t in truths)
    assert all(t.onset_ts >= rec.timestamps[rec.n_steps // 2] for t in truths)
    affected = [s for t in truths for s in t.sensors]
    assert len(affected) == len(set(affected))  # no sensor in two drifts
    assert len({t.sensors[0] for t in truths}) == 4


def test_early_or_bad_drift_rejected() -> None:
    with pytest.raises(ValueError, match="onset_frac"):
        simulate(SimConfig(n_days=2, drifts=[DriftSpec("level_shift", 0, 0.3, 1.0)]))
    with pytest.raises(ValueError, match="unknown drift kind"):
        simulate(SimConfig(n_days=2, drifts=[DriftSpec("teleport", 0, 0.6, 1.0)]))
    with pytest.raises(ValueError, match="sensor index"):
        simulate(SimConfig(n_days=2, drifts=[DriftSpec("level_shift", 99, 0.6, 1.0)]))


def test_level_shift_shifts_mean_after_onset(default_sim) -> None:
    rec, truths = default_sim
    t = next(t for t in truths if t.kind == "level_shift")
    i = t.onset_index
    aff = [rec.sensors.index(s) for s in t.sensors]
    other = [j for j in range(rec.n_sensors)
             if rec.sensors[j] not in {s for tt in truths for s in tt.sensors}]
    before = np.nanmean(rec.values[i - DAY:i], axis=0)  # one full day each side
    after = np.nanmean(rec.values[i:i + DAY], axis=0)
    shift = after - before
    # 1.5 daily amplitudes, amplitudes are >= 6: every affected sensor moves up by > 6
    assert np.all(shift[aff] > 6.0), shift[aff]
    assert np.all(np.abs(shift[other]) < 2.5), shift[other]
    assert shift[aff].mean() > 5 * np.abs(shift[other]).mean()


def test_drifts_exactly_as_specified_against_a_drift_free_twin() -> None:
    base_cfg = dict(n_days=6, n_events=0, missing_rate=0.0, outage_rate=0.0, seed=5)
    clean, none = simulate(SimConfig(drifts=[], **base_cfg))
    assert none == []
    spec = DriftSpec("level_shift", sensor=3, onset_frac=0.5, magnitude=2.0)
    shifted, (truth,) = simulate(SimConfig(drifts=[spec], **base_cfg))
    i = truth.onset_index
    aff = [shifted.sensors.index(s) for s in truth.sensors]
    assert aff[0] == 3
    diff = shifted.values - clean.values
    assert np.all(diff[:i] == 0)  # nothing before onset
    unaffected = np.setdiff1d(np.arange(shifted.n_sensors), aff)
    assert np.all(diff[:, unaffected] == 0)
    # a constant shift of 2 amplitudes per affected sensor
    per_sensor = diff[i:, aff]
    np.testing.assert_allclose(per_sensor - per_sensor[0], 0.0, rtol=0, atol=1e-9)
    assert np.all(per_sensor[0] >= 2 * 6.0 - 1e-9)

    # variance_change multiplies the noise: x3 adds twice the noise that x2 adds
    noisy3, _ = simulate(SimConfig(drifts=[DriftSpec("variance_change", 3, 0.5, 3.0)],
                                   **base_cfg))
    noisy2, _ = simulate(SimConfig(drifts=[DriftSpec("variance_change", 3, 0.5, 2.0)],
                                   **base_cfg))
    assert np.all(noisy3.values[:i] == clean.values[:i])
    extra3 = noisy3.values[i:, 3] - clean.values[i:, 3]
    extra2 = noisy2.values[i:, 3] - clean.values[i:, 3]
    np.testing.assert_allclose(extra3, 2 * extra2, rtol=1e-7, atol=1e-9)
    assert np.std(extra2) > 0.15 * 6.0 * 0.5  # noise_std x min amplitude, AR(1) unit variance

    trend_spec = DriftSpec("trend_change", sensor=3, onset_frac=0.5, magnitude=0.5)
    trended, (tt,) = simulate(SimConfig(drifts=[trend_spec], **base_cfg))
    dt = trended.values[:, 3] - clean.values[:, 3]
    assert dt[i] == 0 and dt[i + DAY] > 0
    np.testing.assert_allclose(dt[i + 2 * DAY], 2 * dt[i + DAY], rtol=1e-9)


def test_incidents(default_sim) -> None:
    rec, truths = default_sim
    assert len(rec.events) == 6
    quiet, _ = simulate(SimConfig(n_events=0))
    col = {s: j for j, s in enumerate(rec.sensors)}
    onsets = [t.onset_index for t in truths]
    for ev in rec.events:
        assert ev["type"] == "incident" and ev["sensor"] in col
        d = ev["attrs"]["duration_steps"]
        assert 6 <= d <= 18
        i = int((ev["ts"] - rec.timestamps[0]) // rec.interval_ms)
        assert rec.timestamps[i] == ev["ts"]
        assert all(i + d < o - DAY or i > o + DAY for o in onsets)
        j = col[ev["sensor"]]
        ratio = rec.values[i:i + d, j] / quiet.values[i:i + d, j]
        ratio = ratio[np.isfinite(ratio)]
        assert ratio.size and np.all(np.abs(ratio - 1 + ev["attrs"]["drop_frac"]) < 1e-9)
        assert 0.2 < ev["attrs"]["drop_frac"] < 0.4
    # outside the incidents nothing changes
    mask = np.ones(rec.values.shape, dtype=bool)
    for ev in rec.events:
        i = int((ev["ts"] - rec.timestamps[0]) // rec.interval_ms)
        mask[i:i + ev["attrs"]["duration_steps"], col[ev["sensor"]]] = False
    assert np.array_equal(rec.values[mask], quiet.values[mask], equal_nan=True)
    assert [e["ts"] for e in rec.events] == sorted(e["ts"] for e in rec.events)


def test_write_simulation_and_truth_round_trip(default_sim, tmp_path: Path) -> None:
    rec, truths = default_sim
    tp = write_simulation(rec, truths, tmp_path / "sim.npz")
    assert tp == tmp_path / "sim.truth.json" and tp.exists()
    back = read_truth(tp)
    assert all(isinstance(t, DriftTruth) for t in back)
    assert [t.to_dict() for t in back] == [t.to_dict() for t in truths]
    assert [t.to_dict() for t in read_truth(tmp_path / "sim.npz")] == [
        t.to_dict() for t in truths]
    assert read_recording(tmp_path / "sim.npz").equals(rec)
    assert DriftTruth.from_dict(truths[0].to_dict()) == truths[0]


def test_a_large_network_simulates_whole() -> None:
    rec, truths = simulate(SimConfig(n_sensors=300, n_days=30))
    assert rec.values.shape == (30 * DAY, 300)
    seen = rec.values[~np.isnan(rec.values)]
    assert seen.size > 0.9 * rec.values.size and np.isfinite(seen).all() and truths
