"""Change points in each sensor's values: online Bayesian change-point detection on what should
be stationary.

Per closed step and sensor:

1. **Deseasonalize.** Each reading minus the sensor's daily profile at its *local wall-clock*
   time of day (``patching.timezone``; a daylight-saving switch moves the clock, not the
   profile), where that slot has been seen. The profile is an exponential mean of the
   readings' deviation from the sensor's level, per slot (at most 288 slots a day). Then
   less the sensor's steady trend where it has a clear one (``trend.TrendFrame``, learned
   from the step levels since its last level change): on a trending series (a population,
   a price) the trend is then no change, while a shift on it or a turn of it is.
2. **Two statistics per step**, each watched by its own ``BOCPDArray`` over all sensors:
   ``level``, the mean of the step's deseasonalized readings, and ``spread``, the log of their
   robust within-step scale (from successive differences, so a level change inside the step
   does not inflate it).
3. **Priors from the sensor.** A new run's prior mean is the statistic's recent level and its
   prior variance the statistic's robust spread (from step-to-step differences, so one jump
   does not inflate it); observations are tempered by ``(1 - rho) / (1 + rho)`` with ``rho``
   the statistic's lag-1 autocorrelation (a slow wander is not a run of changes), as it was
   while calm: it rises by at most 1/48 a step, since a change raises the estimate itself and
   would otherwise discount its own evidence.
4. **Declare a change** when the posterior mass on runs that started after the sensor's last
   declared change exceeds ``threshold``, set from the false-alarm budget
   (``alerts.max_per_10k``, see ``threshold_for_budget``), and the most probable such run
   differs from the one before by at least ``drift.min_effect`` of the statistic's scale,
   times its wander (``1 / sqrt(1 - rho)``, rho its lowest recent autocorrelation: an air
   pressure that drifts slowly moves many step-to-step units without a change). Small changes
   that hold and run one way are added up: a trend, judged on the plain scale. The
   onset is that run's start, refined to the reading from the remembered readings: for a
   level, the bend of a line-plus-hinge fit where a line that bends fits them better than
   one that steps (a trend that began), else the step of a line-plus-step fit near the run's
   CUSUM split; for a spread, the likelihood split of the squared successive differences.
   The magnitude is the difference of the run means, in the sensor's own units (level) or as
   a ratio (spread).

An intermittent sensor (more than half its steps flat: a rain gauge, a valve) raises no
changes: its bursts are events, the anomaly score's business. A stuck sensor (one reading
repeated for ``_STILL_READINGS`` readings or more, and longer than it ever repeated one
before: a flat line, data quality's business) feeds its statistics nothing until it moves
again, so float rounding against a scale that faded to nothing is no change, and a real move
after it is judged against the scale from before.

A sensor may raise a change after ``drift.min_readings`` readings (30 by default): the
detector needs a few steps to know the statistic's scale. On a grid with a possible daily
cycle (an interval that divides the day into 2 or more slots) it also waits for its first
day: before the cycle is known, a morning rise looks like a change (one day is 24 readings at
1 hour, 288 at 5 minutes). A series without a wall clock (e.g. one read at a daily interval)
has no such wait.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np

from connectors.schemas import format_when, zone
from streaming.alerts.alert_gate import Evidence
from streaming.alerts.bocpd import BOCPDArray
from streaming.alerts.rowwise import row_max, row_sum
from streaming.alerts.trend import TrendFrame
from streaming.config import DriftConfig

DAY_MS = 86_400_000
MAX_SLOTS = 288                  # profile slots per day (coarser bins for faster grids)
CHANNELS = ("level", "spread")
_SQRT_PI_2 = math.sqrt(math.pi) / 2   # E|X - Y| = 2 sd / sqrt(pi) for iid normal X, Y
_SPREAD_EFFECT = 0.5             # the spread's smallest effect, as a share of min_effect (a
#                                  log scale ratio of 1.5-2 is a few noise units only)
_WANDER_STEPS = 48               # steps whose lowest autocorrelation says how a statistic
#                                  wanders (the change itself raises the estimate)
_FLAT = 1e-9                     # a step's spread below this share of its level is flat
_INTERMITTENT = 0.5              # a sensor with more flat steps than this has no changes
_HISTORY_STEPS = 16              # steps of deseasonalized readings kept (onset split, level,
#                                  a trend's bend): a change confirmed up to 15 steps after
#                                  its onset step is still placed to the reading (a trend is
#                                  confirmed late: with 8, 39 % of bends were placed within 5
#                                  readings, with 16, 64 %; with 4 instead of 8, 0.007 less F1
#                                  on the labelled and harder checks)
_SHIFT_FIT_STEPS = 4             # steps before a shift's run that place it (line plus step)
_MOVE_SCALES = 9                 # time scales of a statistic's own moves: 1, 2, 4, ... 256 steps
_MOVE_MEMORY = 16                # block moves kept per scale (their median is the typical move)
_MOVE_MIN = 6                    # block moves a scale needs before it is trusted
_STILL_READINGS = 12             # a sensor repeating one reading this long is stuck: its
#                                  statistics wait for it to move (a flat line is data quality)
_SCALE_PRIOR = 4.0               # a young statistic's scale: the within-step estimate
#                                  counts as this many step-to-step differences ...
_SCALE_YOUNG = 24                # ... until this many differences are known
_REL_FLOOR = 1e-12               # a statistic's scale is at least this share of its level
#                                  (plus 1e-15): below, float rounding would be a change


def threshold_for_budget(max_per_10k: float) -> float:
    """Posterior mass that declares a change, from the false-alarm budget: ``1 - b / 100``
    for a budget of ``b`` alerts per 10,000 readings (0.99 at the default of 1), within
    [0.9, 0.9999]. Checked on stationary noise (iid, AR(0.8), a daily cycle: 40 streams of
    6,000 readings each, ``tests/streaming/alerts/test_changepoint.py``): at 0.99 at most 2
    changes in 240,000 readings. Real series change more often than noise: see
    ``benchmarks/false_alarms.py`` in RESULTS.md."""
    return float(np.clip(1.0 - max_per_10k / 100, 0.9, 0.9999))


class _Stat:
    """One statistic's per-sensor scale, level and autocorrelation, and its detector."""

    def __init__(self, cfg: DriftConfig) -> None:
        self.det = BOCPDArray(hazard=1.0 / cfg.expected_run_steps, runs=cfg.runs,
                              kappa0=cfg.kappa0, alpha0=cfg.alpha0)
        self.level = np.zeros(0)      # EWMA of the statistic (the prior mean of a new run)
        self.scale = np.zeros(0)      # mean |step-to-step difference|
        self.prev = np.zeros(0)       # last value (NaN: none)
        self.c0 = np.zeros(0)         # EWMA of centred squares and lag-1 products (rho)
        self.c1 = np.zeros(0)
        self.n = np.zeros(0, np.int64)   # values seen (since the last reset)
        self.rho_seen = np.zeros((_WANDER_STEPS, 0))   # lag-1 autocorrelation per step (ring)
        self.rho_calm = np.zeros(0)   # the autocorrelation that tempers the detector (``update``)
        self.pairs = np.zeros(0, np.int64)   # consecutive pairs in c0/c1 (never reset)
        self.last_cp = np.zeros(0, np.int64)   # step of the last declared change (or arming)
        # small changes in one direction, added up (a trend is a run of them): the value
        # before the first, its onset step, their count signed by direction (0: none)
        self.acc_before = np.zeros(0)
        self.acc_onset = np.zeros(0, np.int64)
        self.acc_dir = np.zeros(0, np.int64)
        self.acc_moves = np.zeros((_MOVE_SCALES, 0))   # the moves before it (scale_moves)
        # the statistic's own moves per time scale (``move_at``): per scale, the running
        # block's sum and count, the previous block's mean, and a ring of the absolute
        # differences of consecutive block means with their count
        self.blk_sum = np.zeros((_MOVE_SCALES, 0))
        self.blk_cnt = np.zeros((_MOVE_SCALES, 0), np.int32)
        self.blk_prev = np.zeros((_MOVE_SCALES, 0))
        self.moves = np.zeros((_MOVE_SCALES, _MOVE_MEMORY, 0), np.float32)
        self.move_ends = np.full((_MOVE_SCALES, _MOVE_MEMORY), np.iinfo(np.int64).max)
        # the last change alerted per sensor: (value before, value after, step), so that a
        # return to where it was is told as a recovery, not as another change
        self.told: dict[int, tuple[float, float, int]] = {}

    def grow(self, n: int, t: int) -> None:
        add = n - len(self.level)
        if add <= 0:
            return
        self.det.grow(n, t)
        self.level = np.concatenate([self.level, np.full(add, np.nan)])
        self.scale = np.concatenate([self.scale, np.zeros(add)])
        self.prev = np.concatenate([self.prev, np.full(add, np.nan)])
        self.c0 = np.concatenate([self.c0, np.zeros(add)])
        self.c1 = np.concatenate([self.c1, np.zeros(add)])
        self.rho_seen = np.concatenate([self.rho_seen, np.zeros((_WANDER_STEPS, add))], axis=1)
        self.rho_calm = np.concatenate([self.rho_calm, np.zeros(add)])
        self.n = np.concatenate([self.n, np.zeros(add, np.int64)])
        self.pairs = np.concatenate([self.pairs, np.zeros(add, np.int64)])
        self.last_cp = np.concatenate([self.last_cp, np.full(add, t, np.int64)])
        self.acc_before = np.concatenate([self.acc_before, np.full(add, np.nan)])
        self.acc_onset = np.concatenate([self.acc_onset, np.zeros(add, np.int64)])
        self.acc_dir = np.concatenate([self.acc_dir, np.zeros(add, np.int64)])
        self.acc_moves = np.concatenate([self.acc_moves,
                                         np.full((_MOVE_SCALES, add), np.nan)], axis=1)
        col = np.zeros((_MOVE_SCALES, add))
        self.blk_sum = np.concatenate([self.blk_sum, col], axis=1)
        self.blk_cnt = np.concatenate([self.blk_cnt, col.astype(np.int32)], axis=1)
        self.blk_prev = np.concatenate([self.blk_prev, col + np.nan], axis=1)
        self.moves = np.concatenate([self.moves, np.full((_MOVE_SCALES, _MOVE_MEMORY, add),
                                                          np.nan, np.float32)], axis=2)

    def reset(self, mask: np.ndarray, t: int, start: np.ndarray | None = None,
              scale: np.ndarray | None = None, diffs: np.ndarray | None = None) -> None:
        """Start the sensors in ``mask`` over at step ``t`` (their statistic changed meaning:
        the daily profile is now removed, or a trend is taken out). ``start``: where the
        statistic is expected to be, if known; the new run starts from it (as two
        observations there), so a change right after the reset is judged against it.
        ``scale``: its noise where already known (NaN: not), as if learned from ``diffs``
        step-to-step differences."""
        m = np.asarray(mask)
        self.det.reset(m, t + 1)
        self.level[m], self.scale[m], self.prev[m], self.acc_dir[m] = np.nan, 0.0, np.nan, 0
        if start is not None:
            idx = np.flatnonzero(m[:len(start)] & np.isfinite(start[:len(m)]))
            self.level[idx] = start[idx]
            self.det.seed(idx, start[idx], 2.0)
        self.c0[m], self.c1[m], self.n[m], self.pairs[m] = 0.0, 0.0, 0, 0
        if scale is not None and diffs is not None:
            idx = np.flatnonzero(m[:len(scale)] & np.isfinite(scale[:len(m)]))
            self.scale[idx] = scale[idx] / _SQRT_PI_2      # as a mean |difference|
            self.n[idx] = diffs[idx] + 1
        self.rho_seen[:, m] = 0.0
        self.rho_calm[m] = 0.0
        self.last_cp[m] = t + 1
        self.blk_sum[:, m], self.blk_cnt[:, m], self.blk_prev[:, m] = 0.0, 0, np.nan
        self.moves[:, :, m] = np.nan
        for i in np.flatnonzero(m).tolist():
            self.told.pop(i, None)

    def wander(self, i: int) -> float:
        """How much further than its step-to-step variation sensor ``i``'s statistic moves
        without a change: ``1 / sqrt(1 - rho)`` with ``rho`` its lowest lag-1 autocorrelation
        over the last ``_WANDER_STEPS`` steps (an AR(1)'s stationary spread over its
        differences' spread; the lowest, since a change itself raises the estimate)."""
        return float(1.0 / math.sqrt(1.0 - min(float(self.rho_seen[:, i].min()), 0.95)))

    def move_at(self, i: int, steps: int, before: int) -> float:
        """Sensor ``i``'s typical move over ``steps`` steps before step ``before``: the median
        absolute difference of consecutive block means among the last ``_MOVE_MEMORY``
        blocks that ended by then, at the largest dyadic scale up to ``steps`` with at
        least ``_MOVE_MIN`` of them (0: none yet). Before the change, so that a trend does
        not make itself ordinary; the median, so that an earlier change does not make the
        next one look ordinary. A sensor whose level moves this much over such spans without
        a change (a load that follows the weather, a seasonal drift) has not changed when
        it moves this much again."""
        return move_from(self.scale_moves(i, before), steps)

    def scale_moves(self, i: int, before: int) -> np.ndarray:
        """``[_MOVE_SCALES]`` sensor ``i``'s median move per scale among the blocks that
        ended by step ``before`` (NaN: fewer than ``_MOVE_MIN`` of them). A trend's are
        kept from its first step (``acc_moves``): by the time it is judged, the rings of
        the small scales no longer reach back before it."""
        out = np.full(_MOVE_SCALES, np.nan)
        for s in range(_MOVE_SCALES):
            v = self.moves[s, :, i]
            v = v[np.isfinite(v) & (self.move_ends[s] <= before)]
            if len(v) >= _MOVE_MIN:
                out[s] = float(np.median(v))
        return out

    def _learn_moves(self, y: np.ndarray, ok: np.ndarray, t: int) -> None:
        """Fold one value per sensor into the block means of every scale; a scale whose block
        ends at step ``t`` records, per sensor, how far its mean moved from the block before
        (NaN: a block with fewer than half its values, or none before it)."""
        self.blk_sum[0] = np.where(ok, y, 0.0)
        self.blk_cnt[0] = ok
        for s in range(_MOVE_SCALES):
            size = 1 << s
            if (t + 1) % size:
                break                 # larger scales end on multiples of this one
            cnt = self.blk_cnt[s]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(2 * cnt >= size, self.blk_sum[s] / np.maximum(cnt, 1), np.nan)
            slot = (t + 1) // size % _MOVE_MEMORY
            self.moves[s, slot] = np.abs(mean - self.blk_prev[s])
            self.move_ends[s, slot] = t + 1
            self.blk_prev[s] = mean
            if s + 1 < _MOVE_SCALES:     # a block is half of the next scale's block
                self.blk_sum[s + 1] += self.blk_sum[s]
                self.blk_cnt[s + 1] += cnt
            self.blk_sum[s], self.blk_cnt[s] = 0.0, 0

    def sd(self, fallback: np.ndarray) -> np.ndarray:
        """The statistic's noise scale: from step-to-step differences, else ``fallback``.
        While the differences are few (fewer than ``_SCALE_YOUNG``), their estimate is
        raised to at least its pool with ``fallback`` (counted as ``_SCALE_PRIOR``
        differences): a mean of 4 absolute differences is below half its expectation for 1
        sensor in 20, so across a network a few sensors' calm steps looked like changes. Only
        raised: a wandering statistic moves more between steps than within one."""
        n = len(fallback)
        sd = self.scale[:n] * _SQRT_PI_2
        fb = np.isfinite(fallback) & (fallback > 0)
        k = np.maximum(self.n[:n] - 1, 0).astype(np.float64)
        with np.errstate(invalid="ignore"):
            pooled = np.sqrt((k * sd * sd + _SCALE_PRIOR * np.where(fb, fallback, 0.0) ** 2)
                             / (k + _SCALE_PRIOR))
        sd = np.where((self.n[:n] >= 5) & (sd > 0),
                      np.where(fb & (k < _SCALE_YOUNG), np.maximum(sd, pooled), sd),
                      np.where(fb, fallback, 1.0))
        # a scale that faded to nothing (a long flat stretch) would make float rounding a
        # change, and its square underflows the detector's single precision
        return np.maximum(sd, _REL_FLOOR * np.abs(np.nan_to_num(self.level[:n])) + 1e-15)

    def without_common(self, y: np.ndarray, scale: np.ndarray, min_sensors: int
                       ) -> tuple[np.ndarray, bool]:
        """``y`` less the step's common mode: the median over sensors of their deviation from
        their own level in units of ``scale``, times their ``scale`` (a weekend, a holiday or
        a storm moves the whole network; a change is what moves a sensor against the rest).
        ``scale`` must not depend on what this removes (else a sensor's removal feeds on
        itself). Unchanged below ``min_sensors`` sensors with a level (0: off)."""
        n = len(y)
        if not min_sensors:
            return y, False
        sd = scale[:n]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (y - self.level[:n]) / sd
        good = np.isfinite(z) & (self.n[:n] >= 3)
        if int(good.sum()) < min_sensors:
            return y, False
        return y - float(np.median(z[good])) * sd, True

    def update(self, y: np.ndarray, t: int, fallback: np.ndarray, alpha0: np.ndarray
               ) -> np.ndarray:
        """Feed one value per sensor (NaN: none) with the prior shape ``alpha0`` per sensor;
        returns the scale used."""
        ok = np.isfinite(y)
        first = ok & np.isnan(self.level)
        level = np.where(first, y, self.level)
        sd = self.sd(fallback)
        self.det.mu0 = np.where(np.isfinite(level), level, 0.0)
        self.det.alpha = alpha0
        self.det.beta0 = alpha0 * sd ** 2
        d0, dp = y - level, self.prev - level
        both = ok & np.isfinite(dp)
        a = 0.02
        with np.errstate(invalid="ignore"):
            self.c0 = np.where(both, (1 - a) * self.c0 + a * d0 * d0, self.c0)
            self.c1 = np.where(both, (1 - a) * self.c1 + a * d0 * dp, self.c1)
            self.pairs = self.pairs + both
            rho = np.where((self.pairs > 10) & (self.c0 > 0),
                           np.clip(self.c1 / np.maximum(self.c0, 1e-300), 0.0, 0.95), 0.0)
        self.rho_seen[t % _WANDER_STEPS, :len(rho)] = rho
        # the observations are tempered by the statistic's calm autocorrelation: it follows
        # the estimate down at once but up by at most 1 / _WANDER_STEPS a step, since a
        # change raises the estimate itself (the readings after it sit on one side of the
        # level) and tempering by that would discount the change's own evidence
        calm = self.rho_calm[:len(rho)]
        np.minimum(rho, calm + 1.0 / _WANDER_STEPS, out=calm)
        self.det.update(np.where(ok, y, np.nan), t, (1 - calm) / (1 + calm))
        # scale: mean |difference| (a plain mean while young, then an EWMA with jumps capped)
        diff = np.abs(y - self.prev)
        has = ok & np.isfinite(diff)
        k = np.maximum(self.n, 1).astype(np.float64)
        rate = np.maximum(1.0 / k, 0.05)
        capped = np.where(self.n >= 5, np.minimum(diff, 4 * np.maximum(self.scale, 1e-12)), diff)
        self.scale = np.where(has, self.scale + rate * (np.nan_to_num(capped) - self.scale),
                              self.scale)
        self.level = np.where(ok, np.where(first, y, level + 0.1 * (y - level)), self.level)
        self._learn_moves(y, ok, t)
        self.prev = np.where(ok, y, self.prev)
        self.n = self.n + ok
        return sd

    def state_dict(self) -> dict[str, Any]:
        return {"det": self.det.state_dict(), "level": self.level.copy(),
                "scale": self.scale.copy(), "prev": self.prev.copy(), "c0": self.c0.copy(),
                "c1": self.c1.copy(), "n": self.n.copy(), "pairs": self.pairs.copy(),
                "acc_before": self.acc_before.copy(), "acc_onset": self.acc_onset.copy(),
                "acc_dir": self.acc_dir.copy(), "acc_moves": self.acc_moves.copy(),
                "rho_seen": self.rho_seen.copy(), "rho_calm": self.rho_calm.copy(),
                "last_cp": self.last_cp.copy(), "blk_sum": self.blk_sum.copy(),
                "blk_cnt": self.blk_cnt.copy(), "blk_prev": self.blk_prev.copy(),
                "moves": self.moves.copy(), "move_ends": self.move_ends.copy(),
                "told": np.array([[i, *v] for i, v in sorted(self.told.items())],
                                 np.float64).reshape(-1, 4)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.det.load_state_dict(state["det"])
        for k in ("level", "scale", "prev", "c0", "c1", "acc_before"):
            setattr(self, k, np.asarray(state[k], np.float64).copy())
        self.n = np.asarray(state["n"], np.int64).copy()
        self.pairs = np.asarray(state["pairs"], np.int64).copy()
        self.acc_onset = np.asarray(state["acc_onset"], np.int64).copy()
        self.acc_dir = np.asarray(state["acc_dir"], np.int64).copy()
        # (a state from before the trend's moves were kept: none known)
        self.acc_moves = np.asarray(state.get("acc_moves", np.full(
            (_MOVE_SCALES, len(self.acc_dir)), np.nan)), np.float64).copy()
        self.last_cp = np.asarray(state["last_cp"], np.int64).copy()
        # (a checkpoint from before the wander estimate: no wander known yet)
        self.rho_seen = (np.asarray(state["rho_seen"], np.float64).copy() if "rho_seen" in state
                         else np.zeros((_WANDER_STEPS, len(self.level))))
        # (a checkpoint from before the calm autocorrelation: the lowest recent one)
        self.rho_calm = (np.asarray(state["rho_calm"], np.float64).copy() if "rho_calm" in state
                         else self.rho_seen.min(axis=0))
        # (a checkpoint from before the moves per time scale: none seen yet)
        n, none = len(self.level), np.zeros((_MOVE_SCALES, len(self.level)))
        self.blk_sum = np.asarray(state.get("blk_sum", none), np.float64).copy()
        self.blk_cnt = np.asarray(state.get("blk_cnt", none), np.int32).copy()
        self.blk_prev = np.asarray(state.get("blk_prev", none + np.nan), np.float64).copy()
        self.moves = np.asarray(state.get("moves", np.full((_MOVE_SCALES, _MOVE_MEMORY, n),
                                                            np.nan)), np.float32).copy()
        self.move_ends = np.asarray(state.get("move_ends", np.full(
            (_MOVE_SCALES, _MOVE_MEMORY), np.iinfo(np.int64).max)), np.int64).copy()
        self.told = {int(r[0]): (float(r[1]), float(r[2]), int(r[3]))
                     for r in np.asarray(state.get("told", np.zeros((0, 4))), np.float64)}
        if self.moves.shape != (_MOVE_SCALES, _MOVE_MEMORY, n):
            raise ValueError(f"change monitor: state has moves of shape {self.moves.shape}, "
                             f"expected {(_MOVE_SCALES, _MOVE_MEMORY, n)}")


class ChangeMonitor:
    """Per-sensor change points on deseasonalized values (module docstring).

    ``update`` takes one closed step's readings ``[N, P]`` and returns, per sensor that
    changed, the evidence: kind (level / variance), direction, magnitude, onset."""

    def __init__(self, cfg: DriftConfig, max_per_10k: float, interval_ms: int, patch_len: int,
                 tz: str = "UTC") -> None:
        self.cfg = cfg
        self.threshold = (cfg.bocpd_threshold if cfg.bocpd_threshold > 0
                          else threshold_for_budget(max_per_10k))
        self.interval_ms, self.patch_len, self.tz = interval_ms, patch_len, tz
        # a sensor's alert budget: each drift alert adds 1 to its strain, which fades over
        # the budget's readings (10,000 / max_per_10k); the bar of its next alert is
        # ``1 + repeat_factor * strain`` times the usual one
        self.fade_steps = 10_000 / max(max_per_10k, 1e-9) / patch_len
        self.strain = np.zeros(0)
        self.strain_step = np.zeros(0, np.int64)
        self.held_back = 0                 # changes found but not alerted (over the budget)
        self._zone = zone(tz)
        season = cfg.season_ms
        self.slot_ms = max(interval_ms, DAY_MS // MAX_SLOTS)
        self.slots = (season // self.slot_ms
                      if season and season % self.slot_ms == 0 and season // self.slot_ms >= 2
                      else 0)
        # [slot, sensor]: a step reads and writes a few whole rows
        # a daily season keeps weekend days apart: rows [slots, 2 slots) once one is seen
        self.week = self.slots and season == DAY_MS
        rows = max(self.slots, 1) * (2 if self.week else 1)
        self.profile = np.zeros((rows, 0), np.float32)
        self.profile_n = np.zeros((rows, 0), np.int32)
        self.level = np.zeros(0)          # the values' level (the profile is relative to it)
        self.seen = np.zeros(0, np.int64)   # readings per sensor
        self.anchor = np.zeros(0)          # first step mean: the first season's profile is
        #                                    relative to it (single precision stays exact)
        self.stats = {c: _Stat(cfg) for c in CHANNELS}
        self.trend = TrendFrame(patch_len)   # a steady drift, out of the level's readings
        self._pending = np.zeros(0, bool)
        self.history = np.zeros((0, _HISTORY_STEPS * patch_len))  # deseasonalized readings
        self.history_steps = np.full(_HISTORY_STEPS, -1, np.int64)  # their steps (ring)
        self.phi = np.zeros(0)            # readings' lag-1 autocorrelation within steps
        self.common = False               # whether this step's network-wide move was removed
        self.noise = np.zeros(0)          # within-step noise of a step mean (``_noise``)
        self.noise_n = np.zeros(0, np.int64)
        # share of steps that are flat (identical readings): an intermittent sensor (a rain
        # gauge, a valve) mostly sits at one value and its bursts are events, not changes
        self.flat_share = np.zeros(0)
        self.flat_n = np.zeros(0, np.int64)
        # a stuck sensor: its last reading and how many readings in a row repeated it
        self.last_raw = np.zeros(0)
        self.still = np.zeros(0, np.int64)
        self.usual_still = np.zeros(0, np.int64)   # its longest repeat that ended (a solar
        #                                            sensor's night at 0 is what it does)

    # --- per step ---------------------------------------------------------------------

    def _grow(self, n: int, t: int) -> None:
        add = n - len(self.level)
        if add <= 0:
            return
        s = self.profile.shape[0]
        self.profile = np.concatenate([self.profile, np.zeros((s, add), np.float32)], axis=1)
        self.profile_n = np.concatenate([self.profile_n, np.zeros((s, add), np.int32)], axis=1)
        self.level = np.concatenate([self.level, np.full(add, np.nan)])
        self.seen = np.concatenate([self.seen, np.zeros(add, np.int64)])
        self.flat_share = np.concatenate([self.flat_share, np.zeros(add)])
        self.flat_n = np.concatenate([self.flat_n, np.zeros(add, np.int64)])
        self.last_raw = np.concatenate([self.last_raw, np.full(add, np.nan)])
        self.still = np.concatenate([self.still, np.zeros(add, np.int64)])
        self.usual_still = np.concatenate([self.usual_still, np.zeros(add, np.int64)])
        self.strain = np.concatenate([self.strain, np.zeros(add)])
        self.strain_step = np.concatenate([self.strain_step, np.zeros(add, np.int64)])
        self.anchor = np.concatenate([self.anchor, np.full(add, np.nan)])
        self.history = np.concatenate([self.history,
                                       np.full((add, self.history.shape[1]), np.nan)])
        for st in self.stats.values():
            st.grow(n, t)
        self.trend.grow(n, t)

    def local_slots(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Profile slot of each timestamp, its local wall-clock time of day (``tz``) in slots,
        and its row with weekend days apart (local Saturday and Sunday: the slot plus
        ``slots``; the slot itself without a daily season)."""
        ts = np.asarray(ts, np.int64)
        if self.tz in ("UTC", "Etc/UTC"):
            local = ts
        else:
            ends = {int(ts[0]), int(ts[-1])}
            offs = {e: _offset_ms(e, self._zone) for e in ends}
            if len(set(offs.values())) == 1:
                local = ts + offs[int(ts[0])]
            else:                     # the step spans a switch: each reading's own offset
                local = ts + np.array([_offset_ms(int(x), self._zone) for x in ts], np.int64)
        slot = (local % self.cfg.season_ms) // self.slot_ms
        if not self.week:
            return slot, slot
        weekend = (local // DAY_MS + 3) % 7 >= 5        # 1970-01-01 was a Thursday
        return slot, slot + self.slots * weekend

    def update(self, names: list[str], step: int, start_ts: int, values: np.ndarray,
               end_ts: int | None = None) -> dict[str, Evidence]:
        """One closed step's readings ``[N, P]`` (NaN: missing) of ``names``; returns the
        evidence of the sensors with a change declared at this step."""
        values = np.asarray(values, np.float64)
        n, p = values.shape
        if len(names) < n:
            raise ValueError(f"change monitor: {n} rows of values for {len(names)} sensors")
        self._grow(n, step)
        ts = start_ts + self.interval_ms * np.arange(p, dtype=np.int64)
        level = self.level[:n]
        ok = np.isfinite(values)
        seasoned = self._seasoned(n)
        if self.slots:
            slots, rows = self.local_slots(ts)
            prof = self.profile[rows, :n]
            prof[self.profile_n[rows, :n] == 0] = np.nan
            # a weekend slot not seen yet has no expectation either: the first weekend is
            # learned, not judged against weekdays (a road without rush hours, an office
            # building at rest), and the detectors carry on after it as if it were missing
            # once the cycle is known, a reading in a slot never seen (an outage on the
            # first day) has no expectation: it waits for the profile, it is not raw
            resid = values - prof.T
            if not seasoned.all():
                resid = np.where(seasoned[:, None], resid, values)
        else:
            resid = values
        fin = np.isfinite(resid)
        cnt = row_sum(fin)
        have = cnt > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            y_raw = _row_mean(resid, fin, cnt)
            # the detector watches the readings less the sensor's steady trend (``trend``;
            # only the sensors that have a frame: most have none)
            y = y_raw
            framed = self.trend.framed(n)
            if len(framed):
                resid = resid.copy() if resid is values else resid
                resid[framed] -= self.trend.frame(step, n, framed)
                y = y_raw.copy()
                y[framed] = _row_mean(resid[framed], fin[framed], cnt[framed])
            spread = _robust_spread(resid)
            # the step mean's noise from within the step, for the level's scale until step
            # differences exist and pooled with theirs while they are few: the readings' std,
            # widened by their autocorrelation (only needed while some sensor is young)
            young = self.stats["level"].n[:n] <= _SCALE_YOUNG
            fallback = (self._mean_noise(resid, cnt, young) if young.any()
                        else np.full(n, np.nan))
            # a step of identical readings (or readings that differ by float rounding only)
            # says nothing of the spread (a quantized sensor, a rain gauge at 0): no spread
            # statistic for it
            flat = _flat(values, ok, spread)
            logs = np.where(np.isfinite(spread) & (spread > 0) & ~flat, np.log(spread), np.nan)
        # a stuck sensor says nothing new: its statistics would move only by the profile's
        # learning, against a scale that fades with every repeat; they wait until it moves
        stuck = self._stuck(values, ok)
        judged = np.isfinite(spread)
        k = self.flat_n[:n] + judged
        rate = np.maximum(1.0 / np.maximum(k, 1), 0.01)
        self.flat_share[:n] += np.where(judged, rate * (flat - self.flat_share[:n]), 0.0)
        self.flat_n[:n] = k
        # the scale prior is trusted (alpha0) once the statistic is deseasonalized; during a
        # sensor's first season its raw level may still carry the daily cycle: a weak prior
        alpha = np.where(seasoned | (self.slots == 0), self.cfg.alpha0,
                         min(self.cfg.alpha0, 2.0))
        lv, sp = self.stats["level"], self.stats["spread"]
        spread_fallback = np.full(n, 0.3)
        y0 = y
        y, common_l = lv.without_common(y, self._noise(spread, cnt), self.cfg.common_mode_min)
        # the readings in the detector's frame (network-wide move out), for onset and size
        self._remember(step, resid, np.nan_to_num(y0 - y) if common_l else None)
        logs, common_s = sp.without_common(logs, np.ones(n), self.cfg.common_mode_min)
        self.common = common_l or common_s
        # (a stuck sensor still counts in the network's common move: it is one that did not)
        y = np.where(stuck, np.nan, y)
        logs = np.where(stuck, np.nan, logs)
        sd_level = lv.update(y, step, fallback, alpha)
        sd_spread = sp.update(logs, step, spread_fallback, alpha)
        # the values' level and profile follow the data (after the detectors saw the step)
        first = have & np.isnan(level)
        new_level = np.where(first, y_raw, np.where(have, level + 0.1 * (y_raw - level),
                                                      level))
        self.level[:n] = new_level
        before = seasoned
        if self.slots:
            # during the first season the profile holds the readings less the sensor's first
            # step mean (``anchor``), centred when the season completes (a level that chased
            # the cycle would bend it)
            self.anchor[:n] = np.where(np.isnan(self.anchor[:n]), y, self.anchor[:n])
            # (the first season learns the daily rows whatever the day; weekend rows after)
            self._learn_profile(values, slots, rows, before,
                                np.where(before, new_level, self.anchor[:n]))
        self.seen[:n] += row_sum(ok).astype(np.int64)
        found = self._declare(names, n, step, end_ts if end_ts is not None else
                              int(ts[-1] + self.interval_ms), {"level": sd_level,
                                                               "spread": sd_spread})
        drift0 = self.trend.drift[:n].copy()
        # (a daily cycle not yet removed is no trend: learned once the profile is)
        changed = self.trend.learn(np.where(seasoned, y_raw, np.nan), step, self.noise[:n],
                                   self._pending[:n] if len(self._pending) >= n else None)
        if changed.any():
            delta = self.trend.drift[:n] - drift0
            self._rebase(step, np.flatnonzero(changed), delta)
            # the level's scale and moves were learned in the old frame: it starts over from
            # where it is now, in the new frame (the step's mean lies half a step before the
            # frame's new drift starts at its end)
            full = np.zeros(len(self.level), bool)
            full[:n] = changed
            # with its scale from the trend's own differences about the drift (the trend
            # out): known now, where the restarted statistic would have to learn it again
            start = np.pad(y0 + delta * (p / 2), (0, len(full) - n), constant_values=np.nan)
            lv.reset(full, step, start, self.trend.step_noise, self.trend.m)
        if self.slots:
            done = self._seasoned(n) & ~before
            if done.any():           # from the next step on the statistics are deseasonalized
                full = np.zeros(len(self.level), bool)
                full[:n] = done
                idx = np.flatnonzero(done)
                day = slice(0, self.slots)
                known = self.profile_n[day, idx] > 0
                prof = self.profile[day, idx].astype(np.float64)
                mean = (np.where(known, prof, 0.0).sum(axis=0)
                        / np.maximum(known.sum(axis=0), 1))
                self.profile[day, idx] = np.where(known, prof - mean[None], 0.0)
                self.level[idx] = mean + self.anchor[idx]
                self.stats["level"].reset(full, step, self.level)
                self.stats["spread"].reset(full, step)
                self.history[idx] = np.nan     # (raw readings: not in the detector's frame)
                self.trend.restart(idx, step, forget=True)
        return found

    def _stuck(self, values: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Per sensor, whether it is stuck: it had repeated one reading (to float rounding)
        for at least ``_STILL_READINGS`` readings before this step, longer than any repeat of
        it that ended before (a night at 0, a quantized reading that holds: what it does),
        and still does."""
        n, p = values.shape
        last = self.last_raw[:n]
        full = bool(ok.all())
        if full:
            prev = np.empty_like(values)
            prev[:, 0] = last
            prev[:, 1:] = values[:, :-1]
        else:
            # a missing reading neither moves nor breaks the repeat: compare with the last
            # reading before it
            filled = np.where(ok, values, np.nan)
            prev = np.concatenate([last[:, None], filled[:, :-1]], axis=1)
            for k in range(1, p):
                gap = np.isnan(prev[:, k])
                prev[gap, k] = prev[gap, k - 1]
        with np.errstate(invalid="ignore"):
            # (NaN, no reading or none before: not a move)
            move = np.abs(values - prev) > _FLAT * np.abs(values)
        moved = row_max(move)
        # stuck: it had repeated long enough before this step, and this step did not move
        # (the step of a jump and the one after it are seen, so a jump to a new flat line
        # is still judged)
        still = self.still[:n]
        usual = self.usual_still[:n]
        stuck = ~moved & (still >= np.maximum(_STILL_READINGS, usual + 1))
        np.maximum(usual, np.where(moved, still, 0), out=usual)
        # readings since the last move (the missing ones count too: a stuck sensor's gaps
        # do not make it move)
        after = p - 1 - np.argmax(move[:, ::-1], axis=1)
        self.still[:n] = np.where(moved, after, still + p)
        if full:
            last[:] = values[:, -1]
        else:
            has = ok.any(axis=1)
            at = p - 1 - np.argmax(ok[:, ::-1], axis=1)
            last[:] = np.where(has, values[np.arange(n), at], last)
        return stuck

    def _seasoned(self, n: int) -> np.ndarray:
        """Sensors whose first season is complete: the profile is removed from their
        readings (before, the detector watches the raw level, tempered by its
        autocorrelation)."""
        per_season = self.slots * self.slot_ms // self.interval_ms
        return self.seen[:n] >= per_season

    def _noise(self, spread: np.ndarray, cnt: np.ndarray) -> np.ndarray:
        """A step mean's noise from within the steps, ``spread / sqrt(readings)``, averaged
        over steps (a plain mean over the first 20, then an exponential one): the scale of
        the network-wide move, independent of what the detectors were fed."""
        n = len(spread)
        if len(self.noise) < n:
            add = n - len(self.noise)
            self.noise = np.concatenate([self.noise, np.full(add, np.nan)])
            self.noise_n = np.concatenate([self.noise_n, np.zeros(add, np.int64)])
        with np.errstate(invalid="ignore", divide="ignore"):
            x = spread / np.sqrt(np.maximum(cnt, 1))
        ok = np.isfinite(x) & (x > 0)
        old, k = self.noise[:n], self.noise_n[:n] + ok
        rate = np.maximum(1.0 / np.maximum(k, 1), 0.05)
        self.noise[:n] = np.where(ok, np.where(np.isnan(old), x, old + rate * (x - old)), old)
        self.noise_n[:n] = k
        return self.noise[:n]

    def _mean_noise(self, resid: np.ndarray, cnt: np.ndarray, rows: np.ndarray
                    ) -> np.ndarray:
        """Noise of a step mean judged from inside the step: the readings' std times
        ``sqrt((1 + phi) / ((1 - phi) P))`` with ``phi`` their lag-1 autocorrelation (an
        exponential mean over the steps where it was needed, clipped to [0, 0.9]); NaN
        outside ``rows``."""
        n = resid.shape[0]
        idx = np.flatnonzero(rows)
        r, k = resid[idx], cnt[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            fin = np.isfinite(r)
            mean = row_sum(np.where(fin, r, 0.0)) / np.maximum(k, 1)
            c = np.where(fin, r - mean[:, None], 0.0)
            v0 = row_sum(c * c)
            v1 = row_sum(c[:, 1:] * c[:, :-1])
            phi = np.where(v0 > 0, v1 / np.where(v0 > 0, v0, 1.0), np.nan)
        self._grow_phi(n)
        old = self.phi[idx]
        has = np.isfinite(phi) & (k >= 4)
        self.phi[idx] = np.where(has, np.where(np.isnan(old), phi, old + 0.1 * (phi - old)), old)
        f = np.clip(np.nan_to_num(self.phi[idx]), 0.0, 0.9)
        sd = np.sqrt(v0 / np.maximum(k - 1, 1))
        out = np.full(n, np.nan)
        out[idx] = np.where(k >= 3, sd * np.sqrt((1 + f) / ((1 - f) * np.maximum(k, 1))), np.nan)
        return out

    def _grow_phi(self, n: int) -> None:
        if len(self.phi) < n:
            self.phi = np.concatenate([self.phi, np.full(n - len(self.phi), np.nan)])

    def _learn_profile(self, values: np.ndarray, slots: np.ndarray, rows: np.ndarray,
                       seasoned: np.ndarray, level: np.ndarray) -> None:
        """Each reading's deviation from the level into its row (``rows`` once the sensor is
        ``seasoned``, its daily ``slots`` before): a plain mean over the first visits, then
        an exponential mean (``drift.season_rate``)."""
        n = values.shape[0]
        # (single precision, in place: the profile is float32 and this runs every step)
        dev = (values - np.where(np.isfinite(level), level, 0.0)[:, None]).T.astype(np.float32)
        for target, who in ((slots, ~seasoned), (rows, seasoned)):
            if not who.any():
                continue
            # one reading per row (more readings than slots in a step: the first of each)
            uniq, first = np.unique(target, return_index=True)
            d = dev[first]
            o = np.isfinite(d) & who[None]
            cur = self.profile[uniq, :n]
            cnt = self.profile_n[uniq, :n]
            rate = (cnt + 1).astype(np.float32)
            np.reciprocal(rate, out=rate)
            np.maximum(rate, np.float32(self.cfg.season_rate), out=rate)
            delta = np.where(o, d, cur)
            delta -= cur
            delta *= rate
            cur += delta                # (+0 where nothing was read)
            self.profile[uniq, :n] = cur
            self.profile_n[uniq, :n] = cnt + o

    def _rebase(self, step: int, idx: np.ndarray, delta: np.ndarray) -> None:
        """The remembered readings of sensors ``idx`` in the frame of their new drift (it
        grew by ``delta`` a reading): as if it had held all along up to the end of ``step``,
        so that where the drift was taken is no bend in them."""
        p = self.patch_len
        rel = ((self.history_steps[:, None] - step) * p
               + np.arange(p)[None, :] - (p - 1)).reshape(-1).astype(np.float64)
        self.history[idx] -= delta[idx, None] * rel[None, :]

    def _remember(self, step: int, resid: np.ndarray, common: np.ndarray | None) -> None:
        """Keep the step's deseasonalized readings, less the network-wide move ``common``
        where it was removed (the detector's frame: onset split and new level)."""
        n, p = resid.shape
        k = step % _HISTORY_STEPS
        if common is None:
            self.history[:n, k * p:(k + 1) * p] = resid
        else:
            np.subtract(resid, common[:, None], out=self.history[:n, k * p:(k + 1) * p])
        self.history[n:, k * p:(k + 1) * p] = np.nan
        self.history_steps[k] = step

    def _declare(self, names: list[str], n: int, step: int, end_ts: int,
                 sd: dict[str, np.ndarray]) -> dict[str, Evidence]:
        ready = self.seen[:n] >= max(self.cfg.min_readings, 2 * self.patch_len)
        ready &= self.flat_share[:n] <= _INTERMITTENT
        if self.slots:      # a daily cycle must be known before a change can be told from it
            ready &= self._seasoned(n)
        out: dict[str, Evidence] = {}
        for channel, st in self.stats.items():
            det = st.det
            # a change during the first warm-up is part of the baseline, not an alert
            st.last_cp[:n] = np.where(~ready, step, st.last_cp[:n])
            mass = det.mass_after(st.last_cp)[:n]
            if channel == "level":
                self._pending = mass > 0.5       # a change may be under way (``trend``)
            fire = ready & (st.n[:n] >= 2) & (mass > self.threshold)
            if not fire.any():
                continue
            onset = det.map_start(st.last_cp)[:n]
            for i in np.flatnonzero(fire).tolist():
                after, _, before, _ = det.run_summary(i, int(st.last_cp[i]))
                at = int(onset[i])
                split = self._split(i, int(onset[i]), channel)
                since = (self._since(i, int(onset[i]), split, step)
                         if channel == "level" and split is not None else None)
                if since is not None:
                    # a change inside the onset step dilutes the run's mean: the readings
                    # since the split say the new level when they are all remembered
                    after = float(since.mean())
                effect = abs(after - before) / sd[channel][i]
                # an abrupt change must beat the statistic's wander (a slowly wandering air
                # pressure moves many step-to-step units in a day); a trend's sum is judged
                # on the plain scale, since a trend is itself a wander that does not return
                need0 = self.cfg.min_effect * (_SPREAD_EFFECT if channel == "spread" else 1.0)
                need = need0 * st.wander(i)
                held = _held(after, before, float(st.prev[i]), since, self.patch_len) and (
                    channel == "level" or step > int(onset[i]))   # spread: two steps of it
                if (effect < need or not held) and step - int(onset[i]) < 3:
                    continue              # a young run: wait for more of it before judging
                st.last_cp[i] = at
                if not held:
                    continue              # a spike that came and went: an anomaly's business
                gradual = effect < need
                if gradual:
                    # a small change that held: added to the small ones before it in the
                    # same direction (a trend is a run of them), judged on their sum
                    d = int(np.sign(after - before))
                    if np.sign(st.acc_dir[i]) != d:
                        st.acc_before[i], st.acc_onset[i], st.acc_dir[i] = before, at, 0
                        st.acc_moves[:, i] = st.scale_moves(i, at)
                    st.acc_dir[i] += d
                    before, at = float(st.acc_before[i]), int(st.acc_onset[i])
                    effect = abs(after - before) / sd[channel][i]
                    if effect < need0 or abs(st.acc_dir[i]) < 2:
                        continue
                    split = None
                # a change no larger than the sensor's own moves over the same span is what
                # this sensor does (a load that follows the weather), not news (a trend
                # keeps adding up)
                back = None if gradual else self._recovery(st, i, step, before, after)
                move = (move_from(st.acc_moves[:, i], step - at + 1) if gradual
                        else st.move_at(i, step - at + 1, at))
                hist = self.cfg.history_factor * move
                if back is None and abs(after - before) < hist:
                    continue
                st.acc_dir[i] = 0
                calmer = channel == "spread" and after < before
                if names[i] in out or (calmer and not self.cfg.report_calmer):
                    continue
                if back is not None:
                    st.told.pop(i, None)
                    if channel == "level":
                        self.trend.restart([i], step)
                    out[names[i]] = self._recovered(names[i], i, channel, step, end_ts, at,
                                                    split, before, after, back)
                    continue
                # over the sensor's budget: a sensor that changed lately must change by more
                # to be news again (ETT loads switch regimes every few weeks)
                margin = min(effect / max(need0 if gradual else need, 1e-12),
                             abs(after - before) / hist if hist > 0 else math.inf)
                if margin < 1.0 + self.cfg.repeat_factor * self._strain(i, step):
                    self.held_back += 1
                    continue
                if channel == "level":
                    at, split = self._hinge(i, step, at, split, after > before, gradual)
                elif not gradual:
                    at, split = self._var_split(i, step, at, split)
                st.told[i] = (before, after, step)
                self.strain[i] = self._strain(i, step) + 1.0
                self.strain_step[i] = step
                if channel == "level":
                    # told in the readings' own units: the frame at the onset added back (and,
                    # for a gradual change, the frame now to the level now)
                    self.trend.restart([i], step)
                    before += self.trend.at(i, at)
                    after += self.trend.at(i, step + 1 if gradual else at)
                out[names[i]] = self._evidence(names[i], i, channel, step, end_ts, at, split,
                                               before, after, float(mass[i]), effect,
                                               gradual, move)
        return out

    def _strain(self, i: int, step: int) -> float:
        """Sensor ``i``'s recent drift alerts, each fading as ``exp(-steps since /
        fade_steps)``."""
        if not self.strain[i]:
            return 0.0
        return float(self.strain[i] * math.exp(-(step - int(self.strain_step[i]))
                                               / self.fade_steps))

    def _recovery(self, st: _Stat, i: int, step: int, before: float, after: float
                  ) -> tuple[float, float, int] | None:
        """The change alerted last on sensor ``i`` when this one takes the statistic back
        within half that change of where it was before it (within ``expected_run_steps``):
        a dip or a burst that ended, told once as a recovery."""
        told = st.told.get(i)
        if told is None:
            return None
        b0, a0, s0 = told
        if step - s0 > self.cfg.expected_run_steps:
            st.told.pop(i, None)
            return None
        went = a0 - b0
        if (after - before) * went >= 0 or abs(after - b0) > 0.5 * abs(went):
            return None
        return told

    def _onset_ts(self, step: int, end_ts: int, onset: int, split: int | None) -> int:
        """When a change began: the start of its onset step, or the reading ``split`` of the
        step before it."""
        p, iv = self.patch_len, self.interval_ms
        if split is None:
            return end_ts - (step - onset + 1) * p * iv
        return end_ts - (step - onset + 2) * p * iv + split * iv

    def _recovered(self, name: str, i: int, channel: str, step: int, end_ts: int,
                   onset: int,
                   split: int | None, before: float, after: float,
                   told: tuple[float, float, int]) -> Evidence:
        """An info alert: the statistic is back near where it was before the last change."""
        onset_ts = self._onset_ts(step, end_ts, onset, split)
        b0, a0, s0 = told
        tz = "" if self.tz == "UTC" else f" {self.tz}"
        when = format_when(onset_ts, self.tz, self.interval_ms)
        if channel == "level":
            # in the readings' own units at the onset (levels relative to a steady trend)
            f = self.trend.at(i, onset)
            before, after, b0, a0 = before + f, after + f, b0 + f, a0 + f
            words = (f"level back to about {after:.4g} since {when}"
                     f"{tz}, near its {b0:.4g} before the last change (to about {a0:.4g})")
            kind = "level"
        else:
            words = (f"variability back to a spread of about {math.exp(after):.4g} since "
                     f"{when}{tz}, near its {math.exp(b0):.4g} "
                     f"before the last change (to about {math.exp(a0):.4g})")
            kind = "variance"
        up = after > before
        return Evidence(
            score=0.0, detector="bocpd", statistic=channel, severity="info",
            text=f"{name}: {words}; no action needed unless the change is expected to recur",
            detail={"change": kind, "recovered": True, "direction": "up" if up else "down",
                    "value_direction": "up" if up else "down", "since_ts": int(onset_ts),
                    "since_step": int(onset), "run_steps": max(step - onset + 1, 1),
                    "before_change": round(b0, 6), "changed_to": round(a0, 6),
                    "now": round(after, 6), "change_step": int(s0)})

    def _since(self, i: int, onset: int, split: int, step: int) -> np.ndarray | None:
        """Sensor ``i``'s deseasonalized readings from ``split`` (an offset into the step
        before ``onset``) to now, when the history still holds all of them."""
        x = self._remembered(i, onset - 1, step)
        if x is None:
            return None
        x = x[split:]
        x = x[np.isfinite(x)]
        return x if len(x) else None

    def _remembered(self, i: int, lo: int, hi: int) -> np.ndarray | None:
        """Sensor ``i``'s deseasonalized readings of steps ``lo`` to ``hi``, one after the
        other (None when the history no longer holds one of those steps)."""
        p = self.patch_len
        parts = []
        for s in range(lo, hi + 1):
            k = s % _HISTORY_STEPS
            if self.history_steps[k] != s:
                return None
            parts.append(self.history[i, k * p:(k + 1) * p])
        return np.concatenate(parts)

    def _oldest_remembered(self, step: int) -> int:
        """The first step of the unbroken run of remembered steps that ends at ``step``."""
        first = step
        while (first > step - _HISTORY_STEPS + 1
               and self.history_steps[(first - 1) % _HISTORY_STEPS] == first - 1):
            first -= 1
        return first

    def _at_reading(self, first: int, r: int) -> tuple[int, int]:
        """Reading ``r`` counted from the start of step ``first`` as (onset step, split into
        the step before it), the form ``_onset_ts`` reads."""
        return first + r // self.patch_len + 1, r % self.patch_len

    def _evidence(self, name: str, i: int, channel: str, step: int, end_ts: int, onset: int,
                  split: int | None, before: float, after: float, mass: float,
                  effect: float, gradual: bool = False, move: float = 0.0) -> Evidence:
        onset_ts = self._onset_ts(step, end_ts, onset, split)
        up = after > before
        how = " gradually" if gradual else ""
        if channel == "level":
            kind, delta = ("trend" if gradual else "level"), after - before
            words = (f"level {'rose' if up else 'fell'}{how} by {abs(delta):.4g} "
                     f"(from about {before:.4g} to {after:.4g}"
                     + _removed(self.slots > 0 and self.seen[i] >=
                                self.slots * self.slot_ms // self.interval_ms, self.common))
            detail: dict[str, Any] = {"level_change": round(delta, 6),
                                      "level_before": round(before, 6),
                                      "level_after": round(after, 6)}
        else:
            kind, ratio = "variance", math.exp(after - before)
            words = (f"variability {'rose' if up else 'fell'}{how} x{ratio:.2f} "
                     f"(spread about {math.exp(before):.4g} before, {math.exp(after):.4g} "
                     "after)")
            detail = {"std_ratio": round(ratio, 4), "spread_before": round(math.exp(before), 6),
                      "spread_after": round(math.exp(after), 6)}
        tz = "" if self.tz == "UTC" else f" {self.tz}"
        since = format_when(onset_ts, self.tz, self.interval_ms)
        steps = max(step - onset + 1, 1)
        critical = mass >= 1 - 1e-9 and effect >= 3 * self.cfg.min_effect
        return Evidence(
            score=round(float(effect), 3), detector="bocpd", statistic=channel,
            severity="critical" if critical else "warning",
            text=f"{name}: {words} since {since}{tz} "
                 f"(change probability {_prob(mass)}, "
                 + (f"{effect:.1f}x the usual step-to-step variation)" if effect < 1000 else
                    "far beyond the usual step-to-step variation)"),
            detail={"change": kind, "value_direction": "up" if up else "down",
                    "direction": "up" if up else "down", "since_ts": int(onset_ts),
                    "since_step": int(onset), "run_steps": steps,
                    "probability": round(float(mass), 6), "effect": round(float(effect), 3),
                    "usual_move": round(float(move), 6), **detail})

    def _hinge(self, i: int, step: int, onset: int, split0: int | None, up: bool,
               gradual: bool) -> tuple[int, int | None]:
        """A level change's onset to the reading, as (onset step, split into the step
        before it), from the remembered readings (up to ``_HISTORY_STEPS`` steps): the hinge
        of the best line-plus-hinge fit (``a + b t + c max(0, t - tau)``, ``c`` in the
        change's direction) where that fits better than the best line-plus-step (a trend
        that began bends the line; a shift steps it), else that step. Unchanged where the
        run began in the oldest remembered step or before: the change may lie before the
        readings."""
        p = self.patch_len
        first = self._oldest_remembered(step)
        x = self._remembered(i, first, step) if step - first >= 2 else None
        if x is None or onset <= first:
            return onset, split0
        ok = np.isfinite(x)
        t = np.flatnonzero(ok).astype(np.float64)
        y = x[ok]
        if len(y) < 2 * p:
            return onset, split0
        # a candidate needs readings on both sides (a sensor's first-day readings left the
        # history, a gap of missing readings): a bend where nothing was read is no estimate
        edge = max(p // 2, 1)
        cand = np.arange(p, len(x) - p // 2, dtype=np.float64)
        cand = cand[(cand >= t[edge]) & (cand <= t[-edge])]
        if len(cand) == 0:
            return onset, split0
        bend, slope = _fit_sse(t, y, np.maximum(t[None] - cand[:, None], 0.0))
        bend = np.where((slope > 0) == up, bend, np.inf)
        j = int(np.argmin(bend))
        if not np.isfinite(bend[j]):
            return onset, split0
        if not gradual:
            shift, _ = _fit_sse(t, y, (t[None] >= cand[:, None]).astype(np.float64))
            if shift.min() <= bend[j]:
                # a shift: the step of a line-plus-step fit, which sees a background trend
                # and more readings than the run's split, over the readings from a few
                # steps before the run (further back, other changes would pull it), where
                # it agrees with that split to within a step
                here = ((onset - 1 - first) * p + split0 if split0 is not None
                        else (onset - first) * p)
                near = t >= here - _SHIFT_FIT_STEPS * p
                c = cand[(cand > here - p) & (cand < here + p)]
                if len(c) == 0:
                    return onset, split0
                shift, _ = _fit_sse(t[near], y[near],
                                    (t[near][None] >= c[:, None]).astype(np.float64))
                return self._at_reading(first, int(c[int(np.argmin(shift))]))
        return self._at_reading(first, int(cand[j]))

    def _var_split(self, i: int, step: int, onset: int, split0: int | None
                   ) -> tuple[int, int | None]:
        """A variance change's onset to the reading: the likelihood split of the squared
        successive differences of the remembered readings from two steps before the onset
        step to now, as (onset step, split into the step before it)."""
        lo = max(onset - 2, step - _HISTORY_STEPS + 1)
        # (unchanged when the readings before it are no longer remembered)
        x = self._remembered(i, lo, step) if lo < onset else None
        if x is None:
            return onset, split0
        idx = np.flatnonzero(np.isfinite(x))
        if len(idx) < 2 * self.patch_len:
            return onset, split0
        d2 = np.diff(x[idx]) ** 2 + 1e-300
        m = len(d2)
        c = np.cumsum(d2)
        k = np.arange(3, m - 2)
        cost = k * np.log(c[k - 1] / k) + (m - k) * np.log((c[-1] - c[k - 1]) / (m - k))
        return self._at_reading(lo, int(idx[int(k[int(np.argmin(cost))])]))

    def _split(self, i: int, onset: int, channel: str) -> int | None:
        """The reading where the change most likely began, as an offset into the step before
        the onset step: the CUSUM split of the deseasonalized readings of that step and the
        onset step (None when they are no longer remembered)."""
        x = self._remembered(i, onset - 1, onset)
        if x is None:
            return None
        idx = np.flatnonzero(np.isfinite(x))
        if len(idx) < 4:
            return None
        v = x[idx]
        if channel == "spread":
            v = np.abs(np.diff(v, prepend=v[0]))
        c = np.cumsum(v - v.mean())[:-1]
        return int(idx[int(np.argmax(np.abs(c))) + 1])

    # --- state ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.copy(), "profile_n": self.profile_n.copy(),
                "level": self.level.copy(), "seen": self.seen.copy(),
                "anchor": self.anchor.copy(),
                "history": self.history.copy(), "history_steps": self.history_steps.copy(),
                "phi": self.phi.copy(), "noise": self.noise.copy(),
                "noise_n": self.noise_n.copy(), "flat_share": self.flat_share.copy(),
                "flat_n": self.flat_n.copy(), "strain": self.strain.copy(),
                "strain_step": self.strain_step.copy(), "held_back": self.held_back,
                "last_raw": self.last_raw.copy(), "still": self.still.copy(),
                "usual_still": self.usual_still.copy(),
                "stats": {c: st.state_dict() for c, st in self.stats.items()},
                "trend": self.trend.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.profile = np.asarray(state["profile"], np.float32).copy()
        self.profile_n = np.asarray(state["profile_n"], np.int32).copy()
        want = max(self.slots, 1) * (2 if self.week else 1)
        if self.profile.shape[0] != want:
            raise ValueError(f"change monitor: state has {self.profile.shape[0]} profile "
                             f"rows, this configuration {want}")
        self.level = np.asarray(state["level"], np.float64).copy()
        self.seen = np.asarray(state["seen"], np.int64).copy()
        self.anchor = np.asarray(state["anchor"], np.float64).copy()
        history = np.asarray(state["history"], np.float64)
        steps = np.asarray(state["history_steps"], np.int64)
        p = self.patch_len
        self.history = np.zeros((history.shape[0], _HISTORY_STEPS * p))
        self.history_steps = np.full(_HISTORY_STEPS, -1, np.int64)
        for j, st in enumerate(steps.tolist()):    # a ring of another length: re-placed
            if st >= 0 and (self.history_steps[st % _HISTORY_STEPS] < st):
                k = st % _HISTORY_STEPS
                self.history_steps[k] = st
                self.history[:, k * p:(k + 1) * p] = history[:, j * p:(j + 1) * p]
        self.phi = np.asarray(state["phi"], np.float64).copy()
        self.noise = np.asarray(state["noise"], np.float64).copy()
        self.noise_n = np.asarray(state["noise_n"], np.int64).copy()
        # (a state from before the intermittency share: none known yet)
        self.flat_share = np.asarray(state.get("flat_share", np.zeros(len(self.level))),
                                     np.float64).copy()
        self.flat_n = np.asarray(state.get("flat_n", np.zeros(len(self.level))),
                                 np.int64).copy()
        # (a state from before the alert budget: no recent alerts)
        self.strain = np.asarray(state.get("strain", np.zeros(len(self.level))),
                                 np.float64).copy()
        self.strain_step = np.asarray(state.get("strain_step", np.zeros(len(self.level))),
                                      np.int64).copy()
        self.held_back = int(state.get("held_back", 0))
        # (a state from before the stuck-sensor hold: no repeats known yet)
        self.last_raw = np.asarray(state.get("last_raw", np.full(len(self.level), np.nan)),
                                   np.float64).copy()
        self.still = np.asarray(state.get("still", np.zeros(len(self.level))),
                                np.int64).copy()
        self.usual_still = np.asarray(state.get("usual_still", np.zeros(len(self.level))),
                                      np.int64).copy()
        for c, st in self.stats.items():
            st.load_state_dict(state["stats"][c])
        # (a state from before trends were taken out: no drift known)
        self.trend.load_state_dict(state.get("trend", {}), len(self.level))


def _row_mean(x: np.ndarray, fin: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """Per row, the mean of the finite entries of ``x`` (``fin``, ``cnt`` of them; NaN
    where none)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, row_sum(np.where(fin, x, 0.0)) / np.maximum(cnt, 1), np.nan)


def _flat(values: np.ndarray, ok: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Per row, whether the step's readings are identical (or differ by float rounding only:
    their span within ``_FLAT`` of their mean), or their deseasonalized ``spread`` is. The
    span is computed only for rows whose first two readings agree (or one is missing): no
    other row can be flat (a cost at 10,000 sensors per step)."""
    raw = np.abs(row_sum(np.where(ok, values, 0.0)) / np.maximum(row_sum(ok), 1))
    flat = spread <= _FLAT * raw
    v0, v1 = values[:, 0], values[:, min(1, values.shape[1] - 1)]
    with np.errstate(invalid="ignore"):
        idx = np.flatnonzero(~(np.abs(v1 - v0) > 2 * _FLAT * raw))     # (NaN: maybe)
    if len(idx):
        v, o = values[idx], ok[idx]
        span = row_max(np.where(o, v, -np.inf)) + row_max(np.where(o, -v, -np.inf))
        flat[idx] |= span <= _FLAT * raw[idx]
    return flat


def _robust_spread(resid: np.ndarray) -> np.ndarray:
    """Per row, the noise scale from successive differences of the finite readings: the root
    of their mean square over two, the largest one left out (a level step inside the row
    moves one difference only; the small bias of the trimming cancels in the ratios the
    detector watches)."""
    n, p = resid.shape
    if p < 4:
        return np.full(n, np.nan)
    d = np.diff(resid, axis=1)
    fin = np.isfinite(d)
    cnt = row_sum(fin)
    d2 = np.where(fin, d * d, 0.0)
    total = row_sum(d2) - row_max(d2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt >= 3, np.sqrt(total / (2 * np.maximum(cnt - 1, 1))), np.nan)


def _fit_sse(t: np.ndarray, y: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of ``y`` on ``[1, t, extra[c]]`` for each row ``c`` of ``extra``
    (``[C, len(t)]``): the residual sums of squares and the coefficients of ``extra``."""
    tc = t - t.mean()
    cols = np.stack(np.broadcast_arrays(np.ones_like(extra), tc[None], extra), axis=-1)
    xtx = np.einsum("cmi,cmj->cij", cols, cols)
    xty = np.einsum("cmi,m->ci", cols, y)
    ridge = 1e-9 * np.trace(xtx, axis1=1, axis2=2)[:, None, None] * np.eye(3)
    coef = np.linalg.solve(xtx + ridge, xty[..., None])[..., 0]
    resid = y[None] - np.einsum("cmi,ci->cm", cols, coef)
    return np.sum(resid * resid, axis=1), coef[:, 2]


def move_from(per_scale: np.ndarray, steps: int) -> float:
    """The typical move over ``steps`` steps from per-scale medians (``scale_moves``): at the
    largest dyadic scale up to ``steps`` that has one (0: none)."""
    top = min(int(math.log2(max(steps, 1))), _MOVE_SCALES - 1)
    for s in range(top, -1, -1):
        if np.isfinite(per_scale[s]):
            return float(per_scale[s])
    return 0.0


def _held(after: float, before: float, last: float, since: np.ndarray | None, p: int
          ) -> bool:
    """Whether a change has lasted: the newest step's statistic (``last``) is still at least
    half way from ``before`` to ``after``, and, where the readings since the onset are
    known (``since``), there are a step's worth of them and their newer half is too."""
    gap = after - before
    if not np.isfinite(last) or (last - before) * np.sign(gap) < 0.5 * abs(gap):
        return False
    if since is None:
        return True
    if len(since) < p:
        return False
    recent = float(since[len(since) // 2:].mean())
    return (recent - before) * np.sign(gap) >= 0.5 * abs(gap)


def _removed(cycle: bool, common: bool) -> str:
    """The end of a level's "(from ... to ...)": what was taken out of the values first."""
    what = [w for w, on in (("daily cycle", cycle), ("network-wide moves", common)) if on]
    return f", {' and '.join(what)} removed)" if what else ")"


def _offset_ms(ts: int, tz: Any) -> int:
    off = datetime.fromtimestamp(ts / 1000, UTC).astimezone(tz).utcoffset()
    return 0 if off is None else int(off.total_seconds() * 1000)


def _prob(mass: float) -> str:
    """A probability for text: 0.9999 stays readable, never "1.0000"."""
    if mass >= 0.99995:
        return "> 0.9999"
    return f"{mass:.4f}"
