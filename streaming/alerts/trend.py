"""A sensor's steady trend, taken out of what the change detector watches.

The change detector's runs are constant levels. On a series that trends (a population, a
price index, a slowly filling reservoir) every step is a new level, so the trend itself
looked like a run of changes while a real change on top of it (a shift, a bend) hid in a
scale inflated by the trend. ``TrendFrame`` learns each sensor's drift per step from the
step-to-step differences of its level since its last alerted level change, and takes it
out: the detector sees the readings less a *frame* that grows by the drift each reading.

* A drift is taken only when it is clear and large: the differences' mean is further from 0
  than chance allows at ``_T_P`` (Student-t, at least ``_T_MIN`` standard errors; a random
  walk's wander rarely gets there: its differences have mean 0), and it is at least
  ``_EFFECT_MIN`` of a step's own noise per step (a season's slow drift in a noisy sensor
  stays in the data, where it always was). The standard error is never below what the
  step's own noise (seen within the steps) implies, so a few differences that happen to
  agree do not make a trend. Its value is the least-squares slope of the regime's levels,
  refined every step while it stays clear and no level change is under way (a shift's jump
  would bend the slope).
* The frame is integrated: a new drift changes where the frame goes from now on, never
  where it was, so what the detector already saw stays in its frame.
* When the drift is first taken, or changes by at least a step's noise per step, the
  detector's level statistic restarts (``changed``): its scale and moves were learned from
  readings in the old frame.
* A slope that changes (a trend that turns, speeds up or stops) is a ramp in the new frame:
  the detector raises it as a level or trend change, and the drift is learned again from
  there (``restart``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import stdtrit

_MIN_DIFFS = 4        # differences of step levels before a drift may be taken
_T_MIN = 6.0          # the drift's mean / its standard error, at least ...
_T_P = 1e-3           # ... and at least the Student-t quantile of this two-sided tail at the
#                       differences' degrees of freedom (a standard error from 3 differences
#                       is itself a guess: t > 5 happens by chance in 4 % of them)
_T_DOF = 200
_T_TABLE = np.maximum(stdtrit(np.arange(1, _T_DOF + 1), 1 - _T_P / 2), _T_MIN)
_EFFECT_MIN = 0.5     # the drift per step / a step's noise (differences' sd / sqrt 2)
_FIELDS = ("drift", "base", "mean", "m2", "prev", "s0", "s1", "s2", "sy", "ssy")   # floats
_STEPS = ("m", "base_step", "prev_step", "start")                                  # integers


class TrendFrame:
    """Per-sensor drift (per reading) and the frame it builds, for readings in steps of
    ``patch_len``."""

    def __init__(self, patch_len: int) -> None:
        self.p = patch_len
        self.drift = np.zeros(0)          # per reading (0: none taken)
        self.base = np.zeros(0)           # the frame at the end of the last step seen
        self.base_step = np.zeros(0, np.int64)
        # step-to-step differences of the level since the regime began (Welford), per step
        self.m = np.zeros(0, np.int64)
        self.mean = np.zeros(0)
        self.m2 = np.zeros(0)
        self.prev = np.zeros(0)           # the last step's level (NaN: none in this regime)
        self.prev_step = np.zeros(0, np.int64)
        # the regime's levels against their step (least squares: the drift's value; the
        # differences above only say whether there is one, since a random walk's levels
        # fit a line as well as a trend's do)
        self.start = np.zeros(0, np.int64)
        self.s0, self.s1, self.s2 = np.zeros(0), np.zeros(0), np.zeros(0)
        self.sy, self.ssy = np.zeros(0), np.zeros(0)
        # per sensor, a step level's noise about the drift as of the last ``learn`` (NaN:
        # too few differences), for a detector that restarts in the new frame
        self.step_noise = np.zeros(0)

    def grow(self, n: int, step: int) -> None:
        add = n - len(self.drift)
        if add <= 0:
            return
        z = np.zeros(add)
        self.drift = np.concatenate([self.drift, z])
        self.base = np.concatenate([self.base, z])
        self.base_step = np.concatenate([self.base_step, np.full(add, step - 1, np.int64)])
        self.m = np.concatenate([self.m, np.zeros(add, np.int64)])
        self.mean = np.concatenate([self.mean, z])
        self.m2 = np.concatenate([self.m2, z])
        self.prev = np.concatenate([self.prev, np.full(add, np.nan)])
        self.prev_step = np.concatenate([self.prev_step, np.zeros(add, np.int64)])
        self.start = np.concatenate([self.start, np.full(add, step, np.int64)])
        for k in ("s0", "s1", "s2", "sy", "ssy"):
            setattr(self, k, np.concatenate([getattr(self, k), z]))
        self.step_noise = np.concatenate([self.step_noise, np.full(add, np.nan)])

    def framed(self, n: int) -> np.ndarray:
        """Indices of the first ``n`` sensors whose frame is not 0 (a drift, or one before)."""
        return np.flatnonzero((self.drift[:n] != 0) | (self.base[:n] != 0))

    def frame(self, step: int, n: int, idx: np.ndarray | None = None) -> np.ndarray:
        """``[n, patch_len]`` (or ``[len(idx), patch_len]``): the frame at each reading of
        ``step``."""
        rows = slice(0, n) if idx is None else idx
        k = (step - self.base_step[rows] - 1) * self.p
        j = np.arange(1, self.p + 1)
        return self.base[rows, None] + self.drift[rows, None] * (k[:, None] + j[None, :])

    def at(self, i: int, step: int) -> float:
        """The frame of sensor ``i`` at the start of ``step`` (the drift as it is now)."""
        k = (step - int(self.base_step[i]) - 1) * self.p
        return float(self.base[i] + self.drift[i] * k)

    def learn(self, level: np.ndarray, step: int, noise: np.ndarray | None = None,
              hold: np.ndarray | None = None) -> np.ndarray:
        """Close ``step`` with each sensor's level in the readings' own frame (NaN: none);
        ``noise``: a step level's noise judged within the steps (a floor under the one the
        differences show, NaN: none); ``hold``: sensors whose drift is not refined now (a
        change may be under way: its jump would bend the slope). Returns the sensors whose
        drift was first taken or changed by at least a step's noise per step (their detector
        statistics should restart)."""
        n = len(level)
        self.base[:n] += self.drift[:n] * ((step - self.base_step[:n]) * self.p)
        self.base_step[:n] = step
        ok = np.isfinite(level)
        gap = step - self.prev_step[:n]
        has = ok & np.isfinite(self.prev[:n]) & (gap > 0)
        with np.errstate(invalid="ignore"):
            d = (level - self.prev[:n]) / np.maximum(gap, 1)
        m = self.m[:n] + has
        delta = np.where(has, d - self.mean[:n], 0.0)
        mean = self.mean[:n] + np.where(has, delta / np.maximum(m, 1), 0.0)
        self.m2[:n] += np.where(has, delta * (d - mean), 0.0)
        self.mean[:n], self.m[:n] = mean, m
        self.prev[:n] = np.where(ok, level, self.prev[:n])
        x = (step - self.start[:n]).astype(np.float64)
        lv = np.where(ok, level, 0.0)
        self.s0[:n] += ok
        self.s1[:n] += ok * x
        self.s2[:n] += ok * x * x
        self.sy[:n] += lv
        self.ssy[:n] += lv * x
        self.prev_step[:n] = np.where(ok, step, self.prev_step[:n])
        sd = np.sqrt(self.m2[:n] / np.maximum(m - 1, 1))
        if noise is not None:
            sd = np.fmax(sd, np.sqrt(2.0) * noise[:n])
        noise = sd / np.sqrt(2.0)
        self.step_noise[:n] = np.where(m >= _MIN_DIFFS, noise, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            t_min = _T_TABLE[np.clip(m - 2, 0, _T_DOF - 1)]      # m - 1 degrees of freedom
            clear = ((m >= _MIN_DIFFS) & (np.abs(mean) * np.sqrt(m) >= t_min * sd)
                     & (np.abs(mean) >= _EFFECT_MIN * noise))
        s0, s1 = self.s0[:n], self.s1[:n]
        den = s0 * self.s2[:n] - s1 * s1
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(den > 0, (s0 * self.ssy[:n] - s1 * self.sy[:n]) / den, mean)
        new = slope / self.p
        # the drift follows the regime's estimate while there is a clear one (the frame is
        # integrated: a refined drift bends only where it goes from now on); the detector
        # starts over where it moved by a step's noise per step or more
        if hold is not None:
            clear &= ~hold[:n] | (self.drift[:n] == 0)
        changed = clear & (np.abs(new - self.drift[:n]) * self.p >= noise)
        self.drift[:n] = np.where(clear, new, self.drift[:n])
        return changed

    def restart(self, idx: np.ndarray | list[int], step: int, forget: bool = False) -> None:
        """A new regime for the sensors ``idx`` (a level change alerted): their drift is
        learned again from the next step's level (the frame keeps its drift until a new one
        is clear). ``forget``: the level changed meaning (a daily profile is now removed
        from it), so the drift and the frame start over from 0."""
        idx = np.asarray(idx, np.int64)
        if forget:
            self.drift[idx], self.base[idx] = 0.0, 0.0
        self.m[idx], self.mean[idx], self.m2[idx], self.prev[idx] = 0, 0.0, 0.0, np.nan
        for k in ("s0", "s1", "s2", "sy", "ssy"):
            getattr(self, k)[idx] = 0.0
        self.start[idx] = step

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).copy() for k in (*_FIELDS, *_STEPS)}

    def load_state_dict(self, state: dict[str, Any], n: int) -> None:
        """Restore (a state from before trends were taken out: none known for ``n``
        sensors)."""
        if not state:
            self.__init__(self.p)
            self.grow(n, 0)
            self.base_step[:] = -1
            return
        for k in _FIELDS:
            setattr(self, k, np.asarray(state[k], np.float64).copy())
        for k in _STEPS:
            setattr(self, k, np.asarray(state[k], np.int64).copy())
        self.step_noise = np.full(len(self.drift), np.nan)
