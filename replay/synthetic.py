"""Synthetic pretraining series beyond the simulator: Gaussian-process kernel compositions,
mixtures of real series, and sensor networks with lagged cross-sensor effects.

* ``kernel_synth``: in the spirit of KernelSynth (Ansari et al., "Chronos", 2024): a draw
  from a Gaussian process whose kernel is a random composition (sums and products) of up to
  ``max_kernels`` kernels from a bank (constant, white noise, linear, RBF, rational
  quadratic, periodic with periods fitted to the interval: a day, a week, a random one).
  Shapes that real recordings of a few sets do not cover.
* ``ts_mixup``: in the spirit of TSMixup (same paper): a convex combination (Dirichlet
  weights) of 1-3 windows of real series, each standardized first. New series whose parts
  are real; only training rows are read, so evaluations on later rows stay out of sample.
* ``lagged_network``: sensors on a random plane with a k-nearest-neighbour graph; each
  sensor's value follows its own past and its upstream neighbours' values a few steps
  earlier (a sparse, stable vector autoregression), plus a daily cycle whose phase moves
  with the distance along the flow. The graph layer can learn only from such data that a
  neighbour's past says something about a sensor's future.

All draws come from the ``numpy`` generator passed in (seeded by the caller).
"""

from __future__ import annotations

import numpy as np

DAY_MS = 86_400_000
_GP_MAX_ROWS = 1024        # a GP draw is O(rows^3); longer series repeat a draw's pattern


def _kernel(rng: np.random.Generator, t: np.ndarray, d: np.ndarray, per_day: float,
            n_rows: int) -> np.ndarray:
    """One kernel matrix from the bank, on times ``t`` in [0, 1] with distances ``d``."""
    kind = rng.choice(["constant", "white", "linear", "rbf", "rq", "periodic", "periodic"])
    if kind == "constant":
        return np.full_like(d, rng.uniform(0.1, 1.0))
    if kind == "white":
        return np.eye(len(t)) * rng.uniform(0.01, 0.2)
    if kind == "linear":
        c = rng.uniform(0, 1)
        return np.outer(t - c, t - c) * rng.uniform(0.5, 3.0)
    ls = float(rng.choice([0.01, 0.03, 0.1, 0.3, 1.0]))
    if kind == "rbf":
        return np.exp(-0.5 * (d / ls) ** 2)
    if kind == "rq":
        a = float(rng.choice([0.1, 1.0, 10.0]))
        return (1 + d ** 2 / (2 * a * ls ** 2)) ** -a
    periods = [p for p in (per_day, 7 * per_day) if 4 <= p <= n_rows / 2]
    periods.append(float(rng.uniform(4, max(5.0, n_rows / 4))))
    p = float(rng.choice(periods)) / n_rows
    return np.exp(-2 * np.sin(np.pi * d / p) ** 2 / rng.uniform(0.5, 2.0) ** 2)


def kernel_synth(rng: np.random.Generator, n_rows: int, interval_ms: int,
                 max_kernels: int = 5) -> np.ndarray:
    """One series ``[n_rows]`` drawn from a GP with a random kernel composition (module
    docstring); series longer than ``_GP_MAX_ROWS`` tile one draw (a periodic extension
    with its seam smoothed by the noise of the other kernels)."""
    m = min(n_rows, _GP_MAX_ROWS)
    t = np.linspace(0, m / _GP_MAX_ROWS, m)
    d = np.abs(t[:, None] - t[None, :])
    per_day = DAY_MS / interval_ms
    k = _kernel(rng, t, d, per_day, m)
    for _ in range(int(rng.integers(1, max_kernels))):
        other = _kernel(rng, t, d, per_day, m)
        k = k + other if rng.random() < 0.5 else k * other
    jitter = 1e-6 * max(float(np.mean(np.diag(k))), 1e-6)
    for _ in range(6):
        try:
            chol = np.linalg.cholesky(k + jitter * np.eye(m))
            break
        except np.linalg.LinAlgError:
            jitter *= 10
    else:                        # not positive definite at any jitter: the white kernel alone
        chol = np.eye(m) * 0.3
    y = chol @ rng.normal(size=m)
    if n_rows > m:
        y = np.resize(y, n_rows)
    return y


def ts_mixup(rng: np.random.Generator, pool: list[np.ndarray], n_rows: int,
             max_parts: int = 3, alpha: float = 1.5) -> np.ndarray | None:
    """A Dirichlet(``alpha``) mix of 1-``max_parts`` windows of ``n_rows`` from the series
    in ``pool`` (1-d training rows of real series, NaN missing), each standardized first;
    None when no series of the pool is that long."""
    long = [s for s in pool if len(s) >= n_rows]
    if not long:
        return None
    k = int(rng.integers(1, max_parts + 1))
    w = rng.dirichlet(np.full(k, alpha))
    out = np.zeros(n_rows)
    for wi in w:
        s = long[int(rng.integers(len(long)))]
        a = int(rng.integers(0, len(s) - n_rows + 1))
        x = s[a:a + n_rows].astype(np.float64)
        fin = np.isfinite(x)
        if fin.sum() < 2:
            continue
        x = np.where(fin, x, np.nanmean(x))
        sd = float(x.std())
        out += wi * (x - x.mean()) / (sd if sd > 0 else 1.0)
    return out


def lagged_network(rng: np.random.Generator, n_sensors: int, n_rows: int, interval_ms: int,
                   k: int = 3, max_lag: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values [n_rows, n_sensors], edge_index [2, E], edge_weight [E])``: sensors on the
    unit square, each linked to its ``k`` nearest neighbours; the upstream one of each pair
    (smaller coordinate along a random flow direction) drives the downstream one
    ``lag`` steps later (1-``max_lag``, growing with the distance). Stable: each sensor's
    own and neighbours' coefficients sum to at most 0.95 in absolute value."""
    pos = rng.uniform(0, 1, (n_sensors, 2))
    flow = rng.normal(size=2)
    flow /= np.linalg.norm(flow)
    along = pos @ flow
    dist = np.linalg.norm(pos[:, None] - pos[None, :], axis=2)
    np.fill_diagonal(dist, np.inf)
    nbr = np.argsort(dist, axis=1)[:, :k]
    src = np.repeat(np.arange(n_sensors), k)
    dst = nbr.ravel()
    pairs = {(int(min(a, b)), int(max(a, b))) for a, b in zip(src, dst, strict=True)}
    edges = np.array(sorted(pairs), np.int64).T                          # undirected
    d = dist[edges[0], edges[1]]
    weight = np.exp(-(d / np.median(d)) ** 2).astype(np.float32)
    edge_index = np.concatenate([edges, edges[::-1]], axis=1)
    edge_weight = np.concatenate([weight, weight])
    # drivers: for every link, the upstream sensor drives the downstream one
    up = np.where(along[edges[0]] <= along[edges[1]], edges[0], edges[1])
    down = np.where(up == edges[0], edges[1], edges[0])
    lag = np.clip(np.ceil(d / np.median(d) * max_lag / 2), 1, max_lag).astype(np.int64)
    own = rng.uniform(0.2, 0.8, n_sensors)
    coef = rng.uniform(0.2, 1.0, len(up)) * rng.choice([-1.0, 1.0], len(up), p=[0.2, 0.8])
    total = own.copy()
    np.add.at(total, down, np.abs(coef))
    shrink = np.minimum(1.0, 0.95 / total)
    own *= shrink
    coef *= shrink[down]
    per_day = DAY_MS / interval_ms
    t = np.arange(n_rows + max_lag)
    phase = 2 * np.pi * (along - along.min()) * rng.uniform(0, 0.3)
    season = (np.sin(2 * np.pi * t[:, None] / per_day - phase[None]) * rng.uniform(0, 1.5)
              if per_day >= 4 else np.zeros((len(t), n_sensors)))
    noise = rng.normal(0, rng.uniform(0.1, 0.5), (len(t), n_sensors))
    x = np.zeros((len(t), n_sensors))
    for i in range(max_lag, len(t)):
        drive = np.zeros(n_sensors)
        np.add.at(drive, down, coef * x[i - lag, up])
        x[i] = own * x[i - 1] + drive + noise[i]
    values = x[max_lag:] + season[max_lag:]
    return values, edge_index, edge_weight
