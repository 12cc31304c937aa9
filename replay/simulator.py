"""The embedded default data set: a simulated road-sensor network with known drifts.

Each sensor reads a speed-like signal: a base level, a two-harmonic daily profile whose phase
varies smoothly with position, weaker seasonality on weekends, and AR(1) noise whose
innovations are spatially correlated over the sensor graph. On top come incidents (events that
lower one sensor's value for a while), missing readings (iid and outage blocks) and drifts
that start in the second half of the recording and hit a centre sensor and its 1-hop graph
neighbours. The drifts' ground truth is returned next to the recording.

Everything is vectorised numpy and deterministic under ``SimConfig.seed``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from connectors.recordings import Recording, gaussian_kernel_graph, write_recording

__all__ = [
    "DRIFT_KINDS",
    "DriftSpec",
    "DriftTruth",
    "SimConfig",
    "default_drifts",
    "read_truth",
    "simulate",
    "truth_path_for",
    "write_simulation",
]

DRIFT_KINDS = ("level_shift", "trend_change", "variance_change", "seasonality_change")
DAY_MS = 86_400_000
_CENTER_LAT, _CENTER_LON = 34.05, -118.25
_BOX_KM = 20.0
_KM_PER_DEG_LAT = 111.32
_AR_PHI = 0.6
_INCIDENT_DROP = 0.3


@dataclass
class DriftSpec:
    """A drift to inject.

    ``magnitude`` is, per kind: level_shift — shift in units of the sensor's daily amplitude;
    trend_change — slope in amplitudes per day; variance_change — noise multiplier;
    seasonality_change — daily-amplitude multiplier (the phase also shifts by pi/3).
    """

    kind: str
    sensor: int
    onset_frac: float
    magnitude: float


@dataclass
class DriftTruth:
    """Ground truth of an injected drift; ``sensors[0]`` is the centre sensor."""

    kind: str
    sensors: list[str]
    onset_ts: int
    onset_index: int
    magnitude: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftTruth:
        """Inverse of ``to_dict``."""
        return cls(kind=str(d["kind"]), sensors=[str(s) for s in d["sensors"]],
                   onset_ts=int(d["onset_ts"]), onset_index=int(d["onset_index"]),
                   magnitude=float(d["magnitude"]))


@dataclass
class SimConfig:
    """Parameters of ``simulate``; ``drifts=None`` uses ``default_drifts``."""

    n_sensors: int = 30
    n_days: float = 14.0
    interval_ms: int = 300_000
    start: str = "2026-01-05T00:00:00Z"
    seed: int = 0
    missing_rate: float = 0.01
    outage_rate: float = 0.0005
    noise_std: float = 0.15
    spatial_corr: float = 0.7
    n_events: int = 6
    drifts: list[DriftSpec] | None = field(default=None)


DRIFT_NEIGHBOURS = 2  # a drift hits its centre sensor and its strongest graph neighbours


def _neighbours(edge_index: np.ndarray, n: int, edge_weight: np.ndarray | None = None,
                limit: int = DRIFT_NEIGHBOURS) -> list[np.ndarray]:
    """Centre first, then its ``limit`` most strongly connected 1-hop neighbours."""
    out = []
    src, dst = edge_index
    w = np.ones(src.shape[0]) if edge_weight is None else edge_weight
    for i in range(n):
        nb = np.concatenate([dst[src == i], src[dst == i]])
        wt = np.concatenate([w[src == i], w[dst == i]])
        keep = nb != i
        nb, wt = nb[keep], wt[keep]
        best: dict[int, float] = {}
        for j, x in zip(nb.tolist(), wt.tolist(), strict=True):
            best[j] = max(best.get(j, 0.0), x)
        ranked = sorted(best, key=lambda j: (-best[j], j))[:limit]
        out.append(np.array([i, *sorted(ranked)], dtype=np.int64))
    return out


def default_drifts(n_sensors: int, edge_index: np.ndarray, seed: int,
                   edge_weight: np.ndarray | None = None) -> list[DriftSpec]:
    """The default drift set: one of each kind on centre sensors with disjoint neighbourhoods.

    level_shift 1.5 at 0.6, variance_change 3.0 at 0.7, trend_change 0.3/day at 0.75 and
    seasonality_change 0.3 at 0.8 of the recording. Centres are packed greedily (small
    neighbourhoods first, seed-determined ties, then random orders); if the graph is too small
    to keep all four neighbourhoods disjoint, the later kinds are left out.
    """
    plan = [("level_shift", 0.6, 1.5), ("variance_change", 0.7, 3.0),
            ("trend_change", 0.75, 0.3), ("seasonality_change", 0.8, 0.3)]
    nbrs = _neighbours(edge_index, n_sensors, edge_weight)
    sizes = np.array([len(nb) for nb in nbrs])
    rng = np.random.default_rng([seed, 1])
    best: list[int] = []
    for attempt in range(64):
        if attempt == 0:
            order = np.lexsort((rng.random(n_sensors), sizes))
        else:
            order = rng.permutation(n_sensors)
        used = np.zeros(n_sensors, dtype=bool)
        centres: list[int] = []
        for c in order.tolist():
            if not used[nbrs[c]].any():
                used[nbrs[c]] = True
                centres.append(int(c))
                if len(centres) == len(plan):
                    break
        if len(centres) > len(best):
            best = centres
        if len(best) == len(plan):
            break
    if len(best) < len(plan):
        best = _exact_packing(nbrs, rng.permutation(n_sensors), len(plan)) or best
    if len(best) < len(plan):
        # graph too dense for disjoint closed neighbourhoods: add centres anyway; ``simulate``
        # then gives a shared neighbour only to the earlier drift (affected sets stay disjoint)
        used = np.zeros(n_sensors, dtype=bool)
        for c in best:
            used[nbrs[c]] = True
        for c in rng.permutation(n_sensors).tolist():
            if len(best) == len(plan):
                break
            if not used[c]:
                used[nbrs[c]] = True
                best.append(int(c))
        for c in rng.permutation(n_sensors).tolist():  # tiny graphs: any distinct centre
            if len(best) == len(plan):
                break
            if c not in best:
                best.append(int(c))
    # the packing order is not the kind order: shuffle which centre gets which kind
    best = [best[i] for i in rng.permutation(len(best))]
    return [DriftSpec(kind=k, sensor=c, onset_frac=f, magnitude=m)
            for (k, f, m), c in zip(plan, best, strict=False)]


def _exact_packing(nbrs: list[np.ndarray], order: np.ndarray, want: int,
                   max_nodes: int = 200_000) -> list[int] | None:
    """Depth-first search for ``want`` centres with pairwise disjoint neighbourhoods."""
    masks = [sum(1 << int(j) for j in nb) for nb in nbrs]
    cand = order.tolist()
    budget = [max_nodes]

    def dfs(pos: int, used: int, chosen: list[int]) -> list[int] | None:
        if len(chosen) == want:
            return chosen
        for k in range(pos, len(cand)):
            budget[0] -= 1
            if budget[0] < 0:
                return None
            c = cand[k]
            if not masks[c] & used:
                found = dfs(k + 1, used | masks[c], chosen + [c])
                if found:
                    return found
        return None

    return dfs(0, 0, [])


def _start_ms(start: str) -> int:
    """Epoch ms of an ISO-8601 string (naive = UTC)."""
    dt = datetime.fromisoformat(start)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(round(dt.timestamp() * 1000))


def simulate(cfg: SimConfig) -> tuple[Recording, list[DriftTruth]]:
    """Simulate the sensor network described by ``cfg``; returns (recording, drift truths).

    Raises ``ValueError`` for a drift of unknown kind, a bad sensor index or an onset before
    half of the recording (the first half is always drift-free).
    """
    if cfg.n_sensors < 1:
        raise ValueError("--n-sensors must be >= 1")
    if cfg.interval_ms <= 0:
        raise ValueError("--interval-ms must be > 0")
    n = int(cfg.n_sensors)
    n_t = int(round(cfg.n_days * DAY_MS / cfg.interval_ms))
    if n_t < 2:
        raise ValueError("recording too short: --days x 1 day / --interval-ms < 2 steps")
    # independent streams per component, so e.g. changing n_events leaves the noise unchanged
    r_pos, r_par, r_noise, r_ev, r_miss = (
        np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(5))
    t0 = _start_ms(cfg.start)
    steps = np.arange(n_t, dtype=np.int64)
    timestamps = t0 + steps * cfg.interval_ms
    steps_per_day = DAY_MS / cfg.interval_ms

    # --- positions and graph
    half_lat = _BOX_KM / 2 / _KM_PER_DEG_LAT
    half_lon = half_lat / np.cos(np.radians(_CENTER_LAT))
    ux, uy = r_pos.random(n), r_pos.random(n)  # unit-square positions
    lat = _CENTER_LAT + (uy - 0.5) * 2 * half_lat
    lon = _CENTER_LON + (ux - 0.5) * 2 * half_lon
    edge_index, edge_weight = gaussian_kernel_graph(lat, lon, k=6)
    width = max(3, len(str(n - 1)))
    sensors = [f"s{i:0{width}d}" for i in range(n)]

    # --- per-sensor parameters
    level = r_par.uniform(40.0, 70.0, n)
    amp = r_par.uniform(6.0, 14.0, n)
    phase = 2 * np.pi * (0.10 * ux + 0.06 * uy) + r_par.normal(0.0, 0.05, n)
    phase2 = r_par.uniform(0.0, 2 * np.pi)  # shared shape of the second harmonic
    h2 = r_par.uniform(0.3, 0.5, n)

    # --- drifts (resolved before drawing noise so events can avoid onsets)
    specs = cfg.drifts
    if specs is None:
        specs = default_drifts(n, edge_index, cfg.seed, edge_weight)
    nbrs = _neighbours(edge_index, n, edge_weight)
    truths: list[DriftTruth] = []
    drift_rows: list[tuple[DriftSpec, np.ndarray, int]] = []
    for sp in specs:
        if sp.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {sp.kind!r}; expected one of {DRIFT_KINDS}")
        if not 0 <= sp.sensor < n:
            raise ValueError(f"drift sensor index {sp.sensor} outside [0, {n})")
        if not 0.5 <= sp.onset_frac < 1.0:
            raise ValueError(f"drift onset_frac {sp.onset_frac} must be in [0.5, 1)")
    centres = [sp.sensor for sp in specs]
    if len(set(centres)) != len(centres):
        raise ValueError(f"two drifts share a centre sensor: {centres}")
    # every sensor belongs to at most one drift: centres first, then earlier drifts win
    claimed = np.zeros(n, dtype=bool)
    claimed[centres] = True
    for sp in specs:
        idx = min(int(round(sp.onset_frac * n_t)), n_t - 1)
        nb = nbrs[sp.sensor][1:]
        nb = nb[~claimed[nb]]
        claimed[nb] = True
        affected = np.concatenate([[sp.sensor], nb]).astype(np.int64)
        drift_rows.append((sp, affected, idx))
        truths.append(DriftTruth(kind=sp.kind, sensors=[sensors[j] for j in affected.tolist()],
                                 onset_ts=int(timestamps[idx]), onset_index=idx,
                                 magnitude=float(sp.magnitude)))

    # --- seasonality: daily two-harmonic profile, weaker on weekends
    tod = ((timestamps % DAY_MS) / DAY_MS)[:, None]  # [T, 1] fraction of the (UTC) day
    weekday = ((timestamps // DAY_MS + 3) % 7)[:, None]  # 1970-01-01 was a Thursday; Mon = 0
    week_amp = np.where(weekday >= 5, 0.5, 1.0)
    season_amp = np.ones((n_t, n))
    season_phase = np.zeros((n_t, n))
    noise_mult = np.ones((n_t, n))
    drift_add = np.zeros((n_t, n))
    for sp, aff, idx in drift_rows:
        a = amp[aff][None, :]
        if sp.kind == "level_shift":
            drift_add[idx:, aff] += sp.magnitude * a
        elif sp.kind == "trend_change":
            days = (steps[idx:] - idx)[:, None] / steps_per_day
            drift_add[idx:, aff] += sp.magnitude * a * days
        elif sp.kind == "variance_change":
            noise_mult[idx:, aff] *= sp.magnitude
        else:
            season_amp[idx:, aff] *= sp.magnitude
            season_phase[idx:, aff] += np.pi / 3
    ang = 2 * np.pi * tod - phase[None, :] + season_phase
    daily = np.cos(ang) + h2[None, :] * np.cos(2 * ang + phase2)
    seasonal = amp[None, :] * week_amp * season_amp * daily

    # --- spatially correlated AR(1) noise
    z = r_noise.standard_normal((n_t, n))
    adj = np.zeros((n, n))
    if edge_index.shape[1]:
        adj[edge_index[0], edge_index[1]] = edge_weight
    deg = adj.sum(axis=1)
    a_norm = np.divide(adj, deg[:, None], out=np.zeros_like(adj), where=deg[:, None] > 0)
    c = float(np.clip(cfg.spatial_corr, 0.0, 1.0))
    mix = (1.0 - c) * np.eye(n) + c * a_norm
    mix /= np.sqrt((mix ** 2).sum(axis=1))[:, None]  # unit marginal variance per sensor
    innov = z @ mix.T
    ar = np.empty_like(innov)
    ar[0] = innov[0]
    scale = np.sqrt(1.0 - _AR_PHI ** 2)
    for t in range(1, n_t):  # cheap: one [N] vector op per step
        ar[t] = _AR_PHI * ar[t - 1] + scale * innov[t]
    noise = cfg.noise_std * amp[None, :] * noise_mult * ar

    values = level[None, :] + seasonal + drift_add + noise

    # --- incidents, away from drift onsets (+-1 day)
    events: list[dict] = []
    if cfg.n_events > 0:
        max_dur = 18
        hi = n_t - max_dur
        if hi > 0:
            cand_t = r_ev.integers(0, hi, size=max(64, 20 * cfg.n_events))
            cand_s = r_ev.integers(0, n, size=cand_t.shape[0])
            cand_d = r_ev.integers(6, max_dur + 1, size=cand_t.shape[0])
            cand_k = r_ev.uniform(0.8, 1.2, size=cand_t.shape[0]) * _INCIDENT_DROP
            ok = np.ones(cand_t.shape[0], dtype=bool)
            for _, _, idx in drift_rows:
                ok &= (cand_t + cand_d < idx - steps_per_day) | (cand_t > idx + steps_per_day)
            picked: list[int] = []
            for j in np.flatnonzero(ok).tolist():  # no two incidents overlap on one sensor
                if len(picked) == cfg.n_events:
                    break
                if all(cand_s[j] != cand_s[q] or cand_t[j] >= cand_t[q] + cand_d[q]
                       or cand_t[q] >= cand_t[j] + cand_d[j] for q in picked):
                    picked.append(j)
            chosen = np.array(picked, dtype=np.int64)
            chosen = chosen[np.argsort(cand_t[chosen], kind="stable")]
            for j in chosen.tolist():
                t, s, d = int(cand_t[j]), int(cand_s[j]), int(cand_d[j])
                k = round(float(cand_k[j]), 4)
                values[t:t + d, s] *= 1.0 - k
                events.append({"type": "incident", "ts": int(timestamps[t]),
                               "sensor": sensors[s],
                               "attrs": {"duration_steps": d, "drop_frac": k}})

    np.maximum(values, 0.0, out=values)

    # --- missing readings: iid + outage blocks
    missing = r_miss.random((n_t, n)) < cfg.missing_rate
    if cfg.outage_rate > 0:
        starts = np.argwhere(r_miss.random((n_t, n)) < cfg.outage_rate)
        if starts.size:
            lens = r_miss.integers(3, 25, size=starts.shape[0])
            marks = np.zeros((n_t + 25, n), dtype=np.int32)
            np.add.at(marks, (starts[:, 0], starts[:, 1]), 1)
            np.add.at(marks, (starts[:, 0] + lens, starts[:, 1]), -1)
            missing |= np.cumsum(marks, axis=0)[:n_t] > 0
    values[missing] = np.nan

    rec = Recording(timestamps=timestamps, sensors=sensors, values=values, lat=lat, lon=lon,
                    edge_index=edge_index, edge_weight=edge_weight, events=events,
                    interval_ms=int(cfg.interval_ms))
    return rec, truths


def truth_path_for(path: str | Path) -> Path:
    """``sim.npz`` -> ``sim.truth.json``."""
    p = Path(path)
    return p.with_name(p.stem + ".truth.json")


def write_simulation(rec: Recording, truths: list[DriftTruth], path: str | Path) -> Path:
    """Write the recording (format by extension) and its truth JSON; returns the truth path."""
    write_recording(rec, path)
    tp = truth_path_for(path)
    payload = {"version": 1, "drifts": [t.to_dict() for t in truths]}
    tp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return tp


def read_truth(path: str | Path) -> list[DriftTruth]:
    """Read a truth JSON (the file itself, or the recording path it sits beside)."""
    p = Path(path)
    if not p.name.endswith(".truth.json"):
        p = truth_path_for(p)
    data = json.loads(p.read_text(encoding="utf-8"))
    items = data["drifts"] if isinstance(data, dict) else data
    return [DriftTruth.from_dict(d) for d in items]
