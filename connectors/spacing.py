"""The sampling interval of timestamped data: a calendar unit, or the median spacing.

Monthly, quarterly and yearly data are spaced by calendar units whose length in days varies
(month starts are 28-31 days apart). On a grid of their median spacing (31 days) two months
share a grid point and others stay empty, and after a few years the rows no longer line up
with the grid at all. Such data get a grid of the unit's mean Gregorian length instead
(365.2425 / 12 days for a month): every reading then lies within about 3 days of its own grid
point, well inside the half interval that readings are rounded over.
"""

from __future__ import annotations

import numpy as np

DAY_MS = 86_400_000
YEAR_MS = 31_556_952_000            # 365.2425 days, the mean Gregorian year
MONTH_MS = YEAR_MS // 12            # 2,629,746,000 ms = 30.436875 days
QUARTER_MS = YEAR_MS // 4

# unit, its mean length, and the shortest and longest it is in whole days
CALENDAR_UNITS: tuple[tuple[str, int, int, int], ...] = (
    ("month", MONTH_MS, 28, 31),
    ("quarter", QUARTER_MS, 89, 92),
    ("year", YEAR_MS, 365, 366),
)
_SLACK_DAYS = 0.05      # a clock-change hour on local timestamps still counts as whole days
_MIN_SHARE = 0.9        # of the spacings that must be whole units (the rest: gaps, glitches)


def calendar_interval(spacings: np.ndarray | list[int]) -> int | None:
    """The mean length in ms of the calendar unit that ``spacings`` (ms between consecutive
    readings) step by, or None when they do not: at least 90 % of them whole units (a missing
    month is two), mostly one unit, and single units of more than one length in days (a
    fixed 30-day cadence is not monthly)."""
    g = np.asarray(spacings, dtype=np.float64) / DAY_MS
    g = g[g > 0]
    if g.size < 2:
        return None
    for _name, unit, lo, hi in CALENDAR_UNITS:
        k = np.rint(g * DAY_MS / unit)
        whole = (k >= 1) & (g >= k * lo - _SLACK_DAYS) & (g <= k * hi + _SLACK_DAYS)
        single = g[whole & (k == 1)]
        if (whole.mean() >= _MIN_SHARE and np.median(k) == 1 and single.size >= 2
                and single.max() - single.min() >= 1 - 2 * _SLACK_DAYS):
            return int(unit)
    return None


def calendar_name(interval_ms: int) -> str | None:
    """``'month'``, ``'quarter'`` or ``'year'`` for a calendar grid interval, else None."""
    for name, unit, _lo, _hi in CALENDAR_UNITS:
        if int(interval_ms) == unit:
            return name
    return None


_ROUND_STEPS = (DAY_MS, 3_600_000, 60_000, 1000, 10)
_ROUND_REL = 0.005      # 18 s in an hour: a logger's jitter, not a different cadence


def round_interval(ms: float) -> int:
    """A measured interval as the whole days, hours, minutes, seconds (or 10 ms) it is within
    0.5 % of, so that jitter does not make an odd grid that slowly drifts off the data
    (3,602,000 ms from an hourly logger is 1 h); else whole ms. A calendar unit's mean
    length stays as it is."""
    if calendar_name(int(round(ms))) is not None:
        return int(round(ms))
    for step in _ROUND_STEPS:
        k = round(ms / step)
        if k >= 1 and abs(ms - k * step) <= _ROUND_REL * ms:
            return int(k * step)
    return max(1, int(round(ms)))


def _regular(units: np.ndarray) -> bool:
    """Spacings (in some unit) that are whole numbers of it, 90 % of them within 10 % (so
    gaps of whole units are allowed)."""
    m = np.rint(units)
    return bool(np.mean((m >= 1) & (np.abs(units - m) <= 0.1)) >= _MIN_SHARE)


def sampling_interval(ts: np.ndarray) -> int | None:
    """The grid interval of increasing timestamps ``ts`` (ms); None for fewer than 2.

    The calendar unit they step by (see ``calendar_interval``); else, for regular data (90 %
    of the spacings within 10 % of a whole number of median spacings, so gaps are allowed),
    the span over the number of grid steps, rounded (``round_interval``): the median of
    jittered spacings is off by seconds, which over a long file adds up to whole grid points;
    else (irregular data) the median spacing."""
    if ts.shape[0] < 2:
        return None
    t = np.asarray(ts, dtype=np.int64)
    d = np.diff(t)
    unit = calendar_interval(d)
    if unit is not None:
        return unit
    med = float(np.median(d))
    if med <= 0:
        return None
    if not _regular(d / med):
        return int(med)
    return round_interval((t[-1] - t[0]) / float(np.maximum(np.rint(d / med), 1).sum()))


_PHASE_MAX = 0.25       # of the interval: further off, a reading is not jitter around a point


def grid_phase(ts: np.ndarray, interval_ms: int) -> int:
    """Where regular readings sit between the points of a grid counted from 1970-01-01:
    their circular mean of ``ts`` modulo ``interval_ms`` (a whole minute or second where it is
    within 1 % of the interval of one), in ``[0, interval_ms)``. 0 on a calendar grid and for
    data that are not jitter around one grid (irregular spacings, a reading more than a
    quarter interval from its point, two on one point).

    A reading is rounded to the nearest grid point; readings jittering around a half point
    (a 10-minute logger at :05, an hourly one at :30) would fall alternately to either side,
    two on one point and none on the next. With the phase as ``patching.grid_phase_ms`` the
    grid points are where the readings are."""
    if ts.shape[0] < 2 or interval_ms <= 0 or calendar_name(interval_ms) is not None:
        return 0
    t = np.asarray(ts, dtype=np.int64)
    if not _regular(np.diff(t) / interval_ms):
        return 0                        # irregular data: no grid to sit on
    angle = 2 * np.pi * (t % interval_ms).astype(np.float64) / interval_ms
    phase = float(np.angle(np.exp(1j * angle).mean())) / (2 * np.pi) * interval_ms
    for step in (60_000, 1000, 10, 1):  # a whole minute or second where it is that close
        if abs(phase - round(phase / step) * step) <= 0.01 * interval_ms:
            phase = round(phase / step) * step
            break
    phase = int(round(phase)) % interval_ms
    k = np.floor_divide(t - phase + interval_ms // 2, interval_ms)
    if (np.abs(t - (k * interval_ms + phase)).max() > _PHASE_MAX * interval_ms
            or (np.diff(k) <= 0).any()):
        return 0
    return phase
