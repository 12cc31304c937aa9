"""Baseline forecasters: what a user tries first, per sensor and horizon point, O(1) a step.

- ``persistence``: the last observed value, for every horizon point;
- ``moving_average``: the mean of the last ``baselines.ma_points`` observed values (default
  ``max(patch_len, 12)``);
- ``seasonal_day`` / ``seasonal_week`` / ``seasonal_year``: the value one season before each
  horizon point (the latest full season back that is already observed), when the season is
  a whole number of grid points, at least 2 and at most ``baselines.max_season_points``
  (``baselines.seasons`` picks them); the year (365.2425 days) is whole only on a calendar
  grid (months, quarters: ``connectors.spacing``);
- ``holt_winters``: additive exponential smoothing of level, trend and the season
  (``baselines.hw_alpha/hw_beta/hw_gamma``): the day, or on a calendar grid the year; no
  season below 2 points), vectorized over sensors: what a user of river's ``HoltWinters``
  gets, one model per sensor.

They read the same gridded steps as the model (NaN = missing) and forecast the same horizon
grid; a baseline with nothing to go on forecasts NaN (the experts then skip it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from connectors.spacing import YEAR_MS
from streaming.config import StreamConfig
from streaming.ingest.patching import ClosedStep

DAY_MS = 86_400_000
SEASONS = {"seasonal_day": DAY_MS, "seasonal_week": 7 * DAY_MS, "seasonal_year": YEAR_MS}
_INIT_BLOCK = 4096       # Holt-Winters sensors initialized per block (bounds temporaries)


class Baselines:
    """Per-sensor state of the baseline forecasters (see module docstring)."""

    def __init__(self, cfg: StreamConfig) -> None:
        b, p = cfg.baselines, cfg.patching
        self.iv, self.p, self.h = p.interval_ms, p.patch_len, cfg.model.horizon
        self.ma_points = b.ma_points or max(p.patch_len, 12)
        wanted = set(SEASONS) if b.seasons == "auto" else set(b.seasons.split("+")) - {""}
        self.seasons = {name: ms // p.interval_ms for name, ms in SEASONS.items()
                        if name in wanted and 2 <= ms // p.interval_ms <= b.max_season_points
                        and ms % p.interval_ms == 0}
        self.names = ["persistence", "moving_average", *sorted(self.seasons), "holt_winters"]
        season = 0
        for ms in (DAY_MS, YEAR_MS):
            n = ms // p.interval_ms if ms % p.interval_ms == 0 else 0
            if 2 <= n <= b.max_season_points:
                season = n
                break
        self.hw = HoltWinters(b.hw_alpha, b.hw_beta, b.hw_gamma, season)
        self.last = np.full(0, np.nan)                       # [N] last observed value
        self.ma = np.full((0, self.ma_points), np.nan)        # [N, m] last m observed values
        self.ma_pos = np.zeros(0, np.int64)                   # next write position per sensor
        # One ring of the last ``S`` grid points (S = the longest season) serves every
        # season: a seasonal forecast reads a point less than one season back.
        self.ring = max(self.seasons.values(), default=0)
        self.buf = np.full((0, self.ring), np.nan, np.float32)   # [N, S] by grid % S
        self.buf_grid = np.full(self.ring, -1, np.int64)         # grid index in each slot
        self.now = -1                                         # newest grid index seen

    def _grow(self, n: int) -> None:
        pad = n - len(self.last)
        if pad <= 0:
            return
        self.last = np.concatenate([self.last, np.full(pad, np.nan)])
        self.ma = np.concatenate([self.ma, np.full((pad, self.ma_points), np.nan)])
        self.ma_pos = np.concatenate([self.ma_pos, np.zeros(pad, np.int64)])
        if self.ring:
            self.buf = np.concatenate([self.buf, np.full((pad, self.ring), np.nan, np.float32)])
        self.hw.grow(n)

    def update(self, step: ClosedStep) -> None:
        """Fold a closed step's ``[N, P]`` values in."""
        v = step.values
        if v.ndim != 2 or v.shape[1] != self.p:
            raise ValueError(f"baselines: a closed step must be [N, {self.p}] values, "
                             f"got {v.shape}")
        n = v.shape[0]
        self._grow(n)
        g0 = step.start_ts // self.iv
        obs = ~np.isnan(v)
        for j in range(self.p):                  # patch_len columns, vectorized over sensors
            col, ok = v[:, j], obs[:, j]
            if ok.any():
                rows = np.flatnonzero(ok)
                self.last[rows] = col[rows]
                self.ma[rows, self.ma_pos[rows]] = col[rows]
                self.ma_pos[rows] = (self.ma_pos[rows] + 1) % self.ma_points
        if self.ring:
            slots = (g0 + np.arange(self.p)) % self.ring
            self.buf[:n, slots] = v
            self.buf_grid[slots] = g0 + np.arange(self.p)
        self.hw.update(v, g0)
        self.now = max(self.now, int(g0 + self.p - 1))

    def forecast(self, n: int, end_ts: int) -> dict[str, np.ndarray]:
        """Each baseline's forecast ``[N, H]`` of the horizon starting at ``end_ts``."""
        self._grow(n)
        out = {"persistence": np.repeat(self.last[:n, None], self.h, axis=1)}
        seen = ~np.isnan(self.ma[:n])
        count = seen.sum(axis=1)
        ma = np.where(count > 0, np.nansum(self.ma[:n], axis=1) / np.maximum(count, 1), np.nan)
        out["moving_average"] = np.repeat(ma[:, None], self.h, axis=1)
        target = end_ts // self.iv + np.arange(self.h)
        for k, s in self.seasons.items():
            back = np.maximum(1, -(-(target - self.now) // s))   # whole seasons back, >= 1
            src = target - back * s
            slots = src % self.ring
            y = self.buf[:n, slots].astype(np.float64)
            y[:, self.buf_grid[slots] != src] = np.nan
            out[k] = y
        out["holt_winters"] = self.hw.forecast(n, end_ts // self.iv, self.h)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"last": self.last.copy(), "ma": self.ma.copy(), "ma_pos": self.ma_pos.copy(),
                "seasons": sorted(self.seasons), "buf": self.buf.copy(),
                "buf_grid": self.buf_grid.copy(), "now": self.now,
                "hw": self.hw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        buf, grid = state["buf"], state["buf_grid"]
        if isinstance(buf, dict):          # checkpoints before the shared ring: one per season
            seasons = sorted(buf)
            longest = max(buf, key=lambda k: np.shape(buf[k])[1]) if buf else None
            buf = buf[longest] if longest else np.full((0, 0), np.nan, np.float32)
            grid = state["buf_grid"][longest] if longest else np.full(0, -1, np.int64)
        else:
            seasons = list(state["seasons"])
        if sorted(seasons) != sorted(self.seasons):
            raise ValueError(f"baselines: the state has seasons {sorted(seasons)} but "
                             f"the configuration {sorted(self.seasons)}")
        self.last = np.array(state["last"], np.float64)
        self.ma = np.array(state["ma"], np.float64)
        self.ma_pos = np.array(state["ma_pos"], np.int64)
        self.buf = np.array(buf, np.float32).reshape(len(self.last), self.ring)
        self.buf_grid = np.array(grid, np.int64).reshape(self.ring)
        self.now = int(state["now"])
        self.hw.load_state_dict(state["hw"])


class HoltWinters:
    """Additive Holt-Winters per sensor, vectorized: level ``l``, trend ``b``, season ``s``
    of ``m`` grid points (``m = 0``: level and trend only). Initialized from the first
    season of data (level its mean, the season its deviations); a missing point advances
    the level by the trend and leaves the rest. Until a sensor is initialized its season
    row holds the raw first-season values (NaN where not seen), so warming up costs no
    second ``[N, m]`` array."""

    def __init__(self, alpha: float, beta: float, gamma: float, m: int) -> None:
        self.alpha, self.beta, self.gamma, self.m = alpha, beta, gamma, m
        k = max(m, 1)
        self.level = np.full(0, np.nan)
        self.trend = np.zeros(0)
        self.season = np.full((0, k), np.nan)         # raw first season until initialized
        self.seen = np.zeros(0, np.int64)             # grid points folded in per sensor
        self.t = np.full(0, -1, np.int64)             # last grid index folded in

    def grow(self, n: int) -> None:
        pad = n - len(self.level)
        if pad > 0:
            k = max(self.m, 1)
            self.level = np.concatenate([self.level, np.full(pad, np.nan)])
            self.trend = np.concatenate([self.trend, np.zeros(pad)])
            self.season = np.concatenate([self.season, np.full((pad, k), np.nan)])
            self.seen = np.concatenate([self.seen, np.zeros(pad, np.int64)])
            self.t = np.concatenate([self.t, np.full(pad, -1, np.int64)])

    def update(self, values: np.ndarray, g0: int) -> None:
        """Fold in ``[N, P]`` values of grid points ``g0 .. g0 + P - 1``."""
        n = values.shape[0]
        self.grow(n)
        m = max(self.m, 1)
        for j in range(values.shape[1]):
            g = g0 + j
            y = values[:, j]
            k = g % m
            ready = ~np.isnan(self.level[:n])
            warm = ~ready & ~np.isnan(y)
            if warm.any():                                  # collecting the first season
                self.season[:n][warm, k] = y[warm]
                self.seen[:n][warm] += 1
                done = warm & (self.seen[:n] >= m)
                done_rows = np.flatnonzero(done)
                # in blocks: a whole network often completes its first season at once,
                # and [N, m] float64 temporaries would double the peak memory at scale
                for i in range(0, len(done_rows), _INIT_BLOCK):
                    rows = done_rows[i:i + _INIT_BLOCK]
                    f = self.season[rows]
                    lvl = np.nanmean(f, axis=1)
                    self.level[rows] = lvl
                    if self.m:
                        f -= lvl[:, None]
                        self.season[rows] = np.nan_to_num(f, copy=False)
                    else:
                        self.season[rows] = 0.0
            obs = ready & ~np.isnan(y)
            miss = ready & np.isnan(y)
            if obs.any():
                r = np.flatnonzero(obs)
                s_k = self.season[r, k] if self.m else 0.0
                l_old = self.level[r]
                l_new = self.alpha * (y[r] - s_k) + (1 - self.alpha) * (l_old + self.trend[r])
                self.trend[r] = self.beta * (l_new - l_old) + (1 - self.beta) * self.trend[r]
                if self.m:
                    self.season[r, k] = self.gamma * (y[r] - l_new) + (1 - self.gamma) * s_k
                self.level[r] = l_new
            if miss.any():
                r = np.flatnonzero(miss)
                self.level[r] = self.level[r] + self.trend[r]
            self.t[:n] = g

    def forecast(self, n: int, g_start: int, h: int) -> np.ndarray:
        """``[N, h]`` forecasts of grid points ``g_start ..`` (NaN until initialized)."""
        self.grow(n)
        steps = (g_start + np.arange(h))[None] - self.t[:n, None]          # 1, 2, ...
        y = self.level[:n, None] + steps * self.trend[:n, None]
        if self.m:
            y = y + self.season[:n][:, (g_start + np.arange(h)) % self.m]
        return y

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level.copy(), "trend": self.trend.copy(),
                "season": self.season.copy(), "seen": self.seen.copy(), "t": self.t.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.level = np.array(state["level"], np.float64)
        self.trend = np.array(state["trend"], np.float64)
        self.season = np.array(state["season"], np.float64)
        if "first" in state:               # checkpoints that kept the first season apart
            warming = np.isnan(self.level)
            self.season[warming] = np.array(state["first"], np.float64)[warming]
        self.seen = np.array(state["seen"], np.int64)
        self.t = np.array(state["t"], np.int64)
