"""A pretraining corpus: many recordings of different sizes, intervals and graphs, plus
synthetic series, cut into model windows and mixed by a stated rule.

Sources
  * recordings (any ``Recording``: files, topic ranges) and the data sets of the shared data
    folder by name (``SHARED``: ETT, Los-loop and SZ-taxi with their graphs, weather,
    exchange rate and the ``corpus/`` sets). Each contributes only the rows before its
    online/test part (``pretrain_rows``), so backtests on those parts stay out of sample;
  * synthetic: simulated sensor networks with randomized noise, spatial correlation,
    interval and drifts (``replay.simulator``), and univariate series with random seasonal
    periods and shapes, trends, AR(1) noise, level shifts and variance changes.

Every series is z-scored with its own training rows (the backbone then normalizes each
window by its own statistics). Rows ``[0, train)`` give training windows and
``[train - span + horizon, val)`` validation windows (targets after ``train``).

Mixing rule: a batch comes from one source; source ``i`` is drawn with probability
proportional to ``w_i * n_i ** temperature`` (``n_i`` its training (series, start) windows,
a network window counting once per sensor; ``temperature``
0.5: large sets count, small ones are not drowned), with the synthetic sources together
taking ``synthetic_share`` of the batches. A source with a graph gives whole windows of its
network (the graph layer sees every sensor); one without gives ``batch`` independent
(series, start) windows as a batch of one-sensor samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from connectors.recordings import Recording, load_graph, read_recording
from models.graph import laplacian_pe

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
MONTH_MS = 2_629_800_000     # 30.44 days: the nominal interval of monthly data

# name -> where and how to read it, and the share of rows before its online/test part
SHARED: dict[str, dict[str, Any]] = {
    "etth1": {"file": "ett/ETTh1.csv", "rows": (2880, 3600)},
    "etth2": {"file": "ett/ETTh2.csv", "rows": (2880, 3600)},
    "ettm1": {"file": "ett/ETTm1.csv", "rows": (2880, 3600)},
    "los_loop": {"file": "los_loop/los_speed.csv", "start": "2012-03-01T00:00",
                 "interval": 300_000, "graph": "los_loop/los_adj.csv", "split": (0.6, 0.8)},
    "sz_taxi": {"file": "sz_taxi/speeds.npz", "start": "2015-01-01T00:00",
                "interval": 900_000, "graph": "sz_taxi/adjacency.csv", "split": (0.6, 0.8)},
    "weather": {"file": "weather/weather.csv", "pandas": True, "split": (0.7, 0.8)},
    "exchange": {"file": "exchange_rate/exchange_rate.csv", "pandas": True,
                 "split": (0.7, 0.8)},
    "ili": {"file": "corpus/ili/national_illness.csv", "pandas": True, "split": (0.7, 0.8)},
    "m4_hourly": {"file": "corpus/m4_hourly/m4_hourly.csv.gz", "long": 3_600_000,
                  "split": (0.7, 0.8)},
    "m4_weekly": {"file": "corpus/m4_weekly/m4_weekly.csv.gz", "long": 7 * DAY_MS,
                  "split": (0.7, 0.8)},
    "hospital": {"file": "corpus/hospital/hospital.csv.gz", "pandas": True,
                 "split": (0.7, 0.8)},
    "bike_sharing": {"file": "corpus/bike_sharing/bike_sharing_hourly.csv.gz", "pandas": True,
                     "drop": ("season", "yr", "mnth", "holiday", "weekday", "workingday",
                              "weathersit"), "split": (0.7, 0.8)},
    "wind_turbine": {"file": "corpus/wind_turbine_scada/wind_turbine_T1_10min.csv.gz",
                     "pandas": True, "split": (0.7, 0.8)},
    "sunspots": {"file": "corpus/sunspots/monthly_sunspots.csv", "pandas": True,
                 "split": (0.7, 0.8)},
    "metro_traffic": {"file": "corpus/metro_traffic/metro_interstate_traffic_hourly.csv.gz",
                      "pandas": True, "split": (0.7, 0.8)},
}
# the sets with timestamps whose online part a zero-shot evaluation can use
EVALUATION_SETS = ("etth1", "etth2", "ettm1", "los_loop", "sz_taxi", "weather", "exchange",
                   "ili", "bike_sharing", "wind_turbine", "sunspots", "metro_traffic")


@dataclass
class Block:
    """One recording of a source: ``values [R, N]`` (z-scored, NaN missing) on a regular
    grid of ``interval_ms``; ``ts`` epoch ms per row (None: no timestamps)."""

    values: np.ndarray
    ts: np.ndarray | None
    interval_ms: int
    train: int                  # rows [0, train) train, [train, val) validate
    val: int
    graph: dict[str, torch.Tensor] | None = None


@dataclass
class Source:
    name: str
    blocks: list[Block]
    synthetic: bool = False
    weight: float = 1.0
    windows: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @property
    def has_graph(self) -> bool:
        return self.blocks[0].graph is not None

    def n_windows(self, split: str = "train") -> int:
        """(series, start) windows: a network window counts once per sensor."""
        w = self.windows.get(split, [])
        return sum(len(s) * b.values.shape[1] for s, b in zip(w, self.blocks, strict=True))


# --- reading -------------------------------------------------------------------------------


def _zscore(values: np.ndarray, train: int) -> np.ndarray:
    v = values.astype(np.float64)
    with np.errstate(all="ignore"):
        mu = np.nanmean(v[:train], axis=0)
        sd = np.nanstd(v[:train], axis=0)
    mu = np.where(np.isfinite(mu), mu, 0.0)
    sd = np.where(np.isfinite(sd) & (sd > 1e-8), sd, 1.0)
    return ((v - mu) / sd).astype(np.float32)


def _pandas_wide(path: Path, drop: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray, int]:
    """A wide CSV with a date column: duplicate times dropped, the gaps of a sub-monthly grid
    filled with NaN (monthly data keeps its rows), -9999 = missing."""
    import pandas as pd

    df = pd.read_csv(path, encoding_errors="replace")
    t = pd.to_datetime(df.iloc[:, 0], format="ISO8601")
    df = df.iloc[:, 1:].drop(columns=[c for c in drop if c in df.columns]).set_index(t)
    df = df[~df.index.duplicated(keep="last")].sort_index()
    step = df.index.to_series().diff().median()
    if step < pd.Timedelta(days=28):
        df = df.reindex(pd.date_range(df.index[0], df.index[-1], freq=step))
        interval = int(step.total_seconds() * 1000)
    else:
        interval = MONTH_MS
    vals = df.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64, copy=True)
    vals[vals <= -9999] = np.nan
    return vals, df.index.as_unit("ms").asi8.astype(np.int64), interval


def _split_rows(spec: dict[str, Any], n_rows: int) -> tuple[int, int]:
    if "rows" in spec:
        tr, va = spec["rows"]
        return min(tr, n_rows), min(va, n_rows)
    a, b = spec["split"]
    return int(n_rows * a), int(n_rows * b)


def _graph_inputs(edge_index: np.ndarray, edge_weight: np.ndarray | None, n: int,
                  lap_pe_dim: int) -> dict[str, torch.Tensor]:
    g = {"edge_index": torch.from_numpy(np.asarray(edge_index, np.int64))}
    if edge_weight is not None:
        g["edge_weight"] = torch.from_numpy(np.asarray(edge_weight, np.float32))
    if lap_pe_dim:
        g["lap_pe"] = laplacian_pe(edge_index, n, lap_pe_dim, edge_weight)
    return g


def shared_source(data_dir: str | Path, name: str, *, lap_pe_dim: int = 8,
                  online: bool = False) -> Source:
    """A data set of the shared data folder: its pretraining rows (or, with ``online``, the
    whole recording with ``train``/``val`` at its borders, for evaluation)."""
    if name not in SHARED:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(SHARED)}")
    spec = SHARED[name]
    path = Path(data_dir) / spec["file"]
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (pass the shared data folder)")
    blocks: list[Block] = []
    if "long" in spec:
        import pandas as pd

        df = pd.read_csv(path)
        for _, g in df.groupby("series", sort=True):
            v = g.sort_values("step")["value"].to_numpy(np.float64)[:, None]
            tr, va = _split_rows(spec, len(v))
            blocks.append(Block(_zscore(v, tr), None, spec["long"], tr, va))
    else:
        graph = None
        if spec.get("pandas"):
            vals, ts, interval = _pandas_wide(path, spec.get("drop", ()))
        else:
            rec = read_recording(path, start=spec.get("start"), interval_ms=spec.get("interval"),
                                 timezone="UTC")     # the shared sets' times, as published
            if spec.get("graph"):
                ei, ew = load_graph(Path(data_dir) / spec["graph"], list(rec.sensors))
                graph = _graph_inputs(ei, ew, rec.n_sensors, lap_pe_dim)
            vals, ts, interval = rec.values, rec.timestamps, int(rec.interval_ms or 0)
            if "rows" in spec:
                vals, ts = vals[:14_400], ts[:14_400]
        tr, va = _split_rows(spec, len(vals))
        blocks.append(Block(_zscore(vals, tr), ts, interval, tr, va, graph))
    if not online:
        for b in blocks:
            b.values, b.ts = b.values[:b.val], None if b.ts is None else b.ts[:b.val]
    return Source(name, blocks)


def recording_source(rec: Recording, name: str, *, train_frac: float = 0.9,
                     lap_pe_dim: int = 8) -> Source:
    """A user's recording: the first ``train_frac`` of its rows train, the rest validate."""
    interval = rec.interval_ms or int(np.median(np.diff(rec.timestamps)))
    tr = int(rec.n_steps * train_frac)
    graph = None
    if rec.edge_index is not None and rec.edge_index.shape[1] > 0:
        graph = _graph_inputs(rec.edge_index, rec.edge_weight, rec.n_sensors, lap_pe_dim)
    return Source(name, [Block(_zscore(rec.values, tr), rec.timestamps, interval, tr,
                               rec.n_steps, graph)])


# --- synthetic -----------------------------------------------------------------------------


SYNTH_INTERVALS = (60_000, 300_000, 600_000, 900_000, 3_600_000, DAY_MS)


def synthetic_series(rng: np.random.Generator, n_rows: int, interval_ms: int) -> np.ndarray:
    """One univariate series: a random mix of daily / weekly / random-period seasonality of
    random shape, a trend with a possible change, AR(1) noise, level shifts, a variance
    change and spikes."""
    t = np.arange(n_rows, dtype=np.float64)
    per_day = DAY_MS / interval_ms
    periods = [p for p in (per_day, 7 * per_day) if 4 <= p <= n_rows / 2]
    if rng.random() < 0.5 or not periods:
        periods.append(float(rng.uniform(4, max(5.0, n_rows / 6))))
    y = np.zeros(n_rows)
    for p in periods:
        if rng.random() < 0.75:
            for k in range(1, int(rng.integers(1, 4)) + 1):
                y += rng.normal(0, 1.0 / k) * np.sin(2 * np.pi * k * t / p
                                                    + rng.uniform(0, 2 * np.pi))
    slope = rng.normal(0, 1.0) / n_rows * rng.choice([0, 1, 3])
    y += slope * t
    if rng.random() < 0.3:
        at = int(rng.integers(n_rows // 4, n_rows))
        y[at:] += rng.normal(0, 3.0) / n_rows * (t[at:] - at)
    phi = rng.uniform(0, 0.95)
    e = rng.normal(0, rng.uniform(0.05, 0.8), n_rows)
    noise = np.empty(n_rows)
    acc = 0.0
    for i in range(n_rows):
        acc = phi * acc + e[i]
        noise[i] = acc
    if rng.random() < 0.3:
        noise[int(rng.integers(n_rows // 4, n_rows)):] *= rng.uniform(1.5, 3.0)
    y += noise
    for _ in range(int(rng.poisson(0.7))):
        y[int(rng.integers(0, n_rows)):] += rng.normal(0, 1.5)
    spikes = rng.random(n_rows) < rng.choice([0.0, 0.002])
    y[spikes] += rng.normal(0, 4.0, int(spikes.sum()))
    if rng.random() < 0.3:                        # counts and speeds are never negative
        y = np.maximum(y - y.min() * rng.uniform(0, 1), 0.0)
    return y


def _series_block(rng: np.random.Generator, y: np.ndarray, interval: int,
                  timed: bool = True, graph: dict[str, torch.Tensor] | None = None) -> Block:
    """A synthetic block of ``y`` (``[rows]`` or ``[rows, sensors]``): 90 % train rows, a
    random start (``timed`` False: no clock), the network's ``graph`` inputs if any."""
    y = y[:, None] if y.ndim == 1 else y
    n_rows = len(y)
    start = int(rng.integers(1_300_000_000, 1_800_000_000)) * 1000 // interval * interval
    tr = int(0.9 * n_rows)
    return Block(_zscore(y, tr), start + np.arange(n_rows) * interval if timed else None,
                 interval, tr, n_rows, graph)


def training_pool(sources: list[Source], per_source: int = 50) -> list[np.ndarray]:
    """Training rows of real series (at most ``per_source`` per source): what
    ``ts_mixup`` mixes."""
    pool = []
    for src in sources:
        if src.synthetic:
            continue
        cols = [(b, j) for b in src.blocks for j in range(b.values.shape[1])]
        for b, j in cols[:per_source]:
            pool.append(b.values[:b.train, j])
    return pool


def synthetic_sources(seed: int, *, n_series: int = 400, n_networks: int = 3,
                      lap_pe_dim: int = 8, kernel_series: int = 0, mixup_series: int = 0,
                      lagged_networks: int = 0, pool: list[np.ndarray] | None = None
                      ) -> list[Source]:
    """Univariate synthetic series (one source), simulated networks (one source each), and
    (``replay.synthetic``) GP kernel compositions, mixtures of the real series in ``pool``
    and networks with lagged cross-sensor effects (one source each kind / network)."""
    from replay.simulator import SimConfig, simulate
    from replay.synthetic import kernel_synth, lagged_network, ts_mixup

    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(n_series):
        interval = int(rng.choice(SYNTH_INTERVALS))
        n_rows = int(rng.integers(600, 3000))
        blocks.append(_series_block(rng, synthetic_series(rng, n_rows, interval), interval))
    out = [Source("synthetic", blocks, synthetic=True)] if blocks else []
    kernel = []
    for _ in range(kernel_series):
        interval = int(rng.choice(SYNTH_INTERVALS))
        n_rows = int(rng.integers(600, 2048))
        kernel.append(_series_block(rng, kernel_synth(rng, n_rows, interval), interval))
    if kernel:
        out.append(Source("kernel_synth", kernel, synthetic=True))
    mixed = []
    longest = max((len(p) for p in pool or []), default=0)
    for _ in range(mixup_series if pool else 0):
        n_rows = int(rng.integers(min(300, longest), min(2048, longest) + 1))
        y = ts_mixup(rng, pool or [], n_rows)
        if y is not None:
            mixed.append(_series_block(rng, y, int(rng.choice(SYNTH_INTERVALS)), timed=False))
    if mixed:
        out.append(Source("ts_mixup", mixed, synthetic=True))
    for k in range(lagged_networks):
        interval = int(rng.choice((300_000, 900_000, 3_600_000)))
        n_rows, n = int(rng.integers(1500, 4000)), int(rng.integers(8, 30))
        values, ei, ew = lagged_network(rng, n, n_rows, interval)
        out.append(Source(f"lagged{k}", [_series_block(
            rng, values, interval, graph=_graph_inputs(ei, ew, n, lap_pe_dim))], synthetic=True))
    for k in range(n_networks):
        cfg = SimConfig(n_sensors=int(rng.integers(10, 40)), n_days=float(rng.uniform(10, 21)),
                        interval_ms=int(rng.choice((300_000, 600_000, 900_000))),
                        seed=int(rng.integers(0, 2**31)),
                        noise_std=float(rng.uniform(0.05, 0.4)),
                        spatial_corr=float(rng.uniform(0.3, 0.9)),
                        missing_rate=float(rng.uniform(0.0, 0.05)))
        rec, _ = simulate(cfg)
        src = recording_source(rec, f"sim{k}", lap_pe_dim=lap_pe_dim)
        src.synthetic = True
        out.append(src)
    return out


# --- windows and the mixing sampler --------------------------------------------------------


def index_windows(sources: list[Source], span: int, horizon: int, stride: int) -> list[Source]:
    """List every source's train and validation window starts; drops a source (logged)
    without one training window."""
    kept = []
    for src in sources:
        tr_w, va_w = [], []
        for b in src.blocks:
            tr_w.append(np.arange(0, b.train - span + 1, stride, dtype=np.int64))
            lo = max(0, b.train - span + horizon)
            va_w.append(np.arange(lo, b.val - span + 1, stride, dtype=np.int64))
        src.windows = {"train": tr_w, "val": va_w}
        if src.n_windows("train") == 0:
            log.warning("corpus: %s has no window of %d rows (too short); left out", src.name,
                        span)
            continue
        kept.append(src)
    return kept


class MixingSampler:
    """Draws batches across sources by the module's mixing rule; seeded."""

    def __init__(self, sources: list[Source], *, patch_len: int, context_patches: int,
                 horizon: int, batch: int, temperature: float = 0.5,
                 synthetic_share: float = 0.2, seed: int = 0) -> None:
        self.sources = sources
        self.p, self.k, self.h = patch_len, context_patches, horizon
        self.span = context_patches * patch_len + horizon
        self.batch = batch
        w = np.array([s.weight * s.n_windows("train") ** temperature for s in sources])
        syn = np.array([s.synthetic for s in sources])
        if syn.any() and (~syn).any():
            w[syn] *= synthetic_share / w[syn].sum()
            w[~syn] *= (1 - synthetic_share) / w[~syn].sum()
        self.probs = w / w.sum()
        self.rng = np.random.default_rng(seed)

    def mixing_table(self) -> list[tuple[str, int, float]]:
        """(source, training windows, share of batches) per source."""
        return [(s.name, s.n_windows("train"), float(p))
                for s, p in zip(self.sources, self.probs, strict=True)]

    def draw(self, split: str = "train", rng: np.random.Generator | None = None
             ) -> tuple[Source, dict[str, Any]]:
        rng = rng or self.rng
        i = int(rng.choice(len(self.sources), p=self.probs))
        return self.sources[i], self.batch_of(self.sources[i], split, rng)

    def batch_of(self, src: Source, split: str, rng: np.random.Generator) -> dict[str, Any]:
        """Windows of ``src``: ``x``/``mask`` ``[S, N, K, P]``, targets ``[S, N, H]`` after the
        last token, ``steps`` ``[S, K]`` (-1 without timestamps), ``step_ms`` ``[S]`` and the
        graph inputs."""
        starts = src.windows[split]
        sizes = np.array([len(s) for s in starts])
        if src.has_graph:
            n_nodes = src.blocks[0].values.shape[1]
            s_count = max(1, self.batch // max(1, n_nodes // 8))
            picks = [(0, int(st), None) for st in
                     rng.choice(starts[0], size=min(s_count, len(starts[0])), replace=False)]
        else:
            per = sizes * np.array([b.values.shape[1] for b in src.blocks])
            bi = rng.choice(len(src.blocks), size=self.batch, p=per / per.sum())
            picks = []
            for b in bi:
                blk = src.blocks[b]
                picks.append((int(b), int(rng.choice(starts[b])),
                              int(rng.integers(blk.values.shape[1]))))
        xs, steps, step_ms = [], [], []
        for b, st, col in picks:
            blk = src.blocks[b]
            v = blk.values[st:st + self.span]
            v = v if col is None else v[:, col:col + 1]
            xs.append(v.T)                                                  # [N, span]
            sm = blk.interval_ms * self.p
            step_ms.append(sm)
            if blk.ts is None:
                steps.append(np.full(self.k, -1, np.int64))
            else:
                steps.append(blk.ts[st:st + self.k * self.p:self.p] // sm)
        arr = np.stack(xs)                                                  # [S, N, span]
        obs = np.isfinite(arr)
        arr = np.where(obs, arr, 0.0).astype(np.float32)
        kp = self.k * self.p
        out: dict[str, Any] = {
            "x": torch.from_numpy(arr[..., :kp].reshape(*arr.shape[:2], self.k, self.p)),
            "mask": torch.from_numpy(obs[..., :kp].reshape(*arr.shape[:2], self.k, self.p)),
            "y": torch.from_numpy(arr[..., kp:kp + self.h]),
            "y_mask": torch.from_numpy(obs[..., kp:kp + self.h]),
            "steps": torch.from_numpy(np.stack(steps)),
            "step_ms": torch.tensor(step_ms, dtype=torch.long)}
        if src.has_graph:
            out.update(src.blocks[0].graph or {})
        return out


def describe(sources: list[Source]) -> str:
    """One line per source: blocks, series, rows, interval, graph."""
    lines = []
    for s in sources:
        b0 = s.blocks[0]
        series = sum(b.values.shape[1] for b in s.blocks)
        rows = sum(b.values.shape[0] for b in s.blocks)
        lines.append(f"{s.name}: {len(s.blocks)} recording(s), {series} series, {rows} rows, "
                     f"interval {b0.interval_ms / 60000:g} min"
                     f"{', graph' if s.has_graph else ''}{', synthetic' if s.synthetic else ''}")
    return "\n".join(lines)
