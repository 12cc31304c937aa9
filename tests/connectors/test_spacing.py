"""Sampling intervals of timestamped data: calendar units (months 28-31 days apart) get a grid
of the unit's mean length, jittered regular data their exact cadence, irregular data the
median spacing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from connectors.schemas import format_when
from connectors.spacing import (
    DAY_MS,
    MONTH_MS,
    QUARTER_MS,
    YEAR_MS,
    calendar_interval,
    round_interval,
    sampling_interval,
)

HOUR = 3_600_000


def _dates(start: str, n: int, freq: str) -> np.ndarray:
    return pd.date_range(start, periods=n, freq=freq).values.astype("datetime64[ms]").astype(
        np.int64)


@pytest.mark.parametrize(("freq", "unit", "n"), [
    ("MS", MONTH_MS, 600), ("ME", MONTH_MS, 600), ("QS", QUARTER_MS, 200),
    ("YS", YEAR_MS, 60), ("YE", YEAR_MS, 5)])
def test_calendar_data_land_one_reading_per_grid_point(freq: str, unit: int, n: int) -> None:
    ts = _dates("1749-01-01", n, freq)
    assert sampling_interval(ts) == unit
    grid = (ts + unit // 2) // unit              # the patcher's rounding to a grid point
    assert (np.diff(grid) == 1).all()            # no two months share one, none skipped
    assert np.abs(ts - grid * unit).max() < 4 * DAY_MS


def test_a_missing_month_is_still_monthly_data() -> None:
    ts = np.delete(_dates("2000-01-01", 48, "MS"), [5, 17, 30])
    assert sampling_interval(ts) == MONTH_MS
    grid = (ts + MONTH_MS // 2) // MONTH_MS
    assert sorted(np.diff(grid).tolist()).count(2) == 3


def test_a_fixed_30_day_cadence_is_not_monthly() -> None:
    ts = np.arange(40, dtype=np.int64) * 30 * DAY_MS
    assert calendar_interval(np.diff(ts)) is None
    assert sampling_interval(ts) == 30 * DAY_MS


def test_jittered_regular_data_get_their_exact_cadence() -> None:
    rng = np.random.default_rng(0)
    ts = np.arange(5_000, dtype=np.int64) * HOUR + 1_800_000 + rng.integers(-60_000, 60_000,
                                                                            5_000)
    assert int(np.median(np.diff(ts))) != HOUR       # the median alone is off by seconds
    assert sampling_interval(ts) == HOUR
    gappy = np.delete(ts, np.arange(10, 5_000, 7))   # every 7th reading missing
    assert sampling_interval(gappy) == HOUR


def test_irregular_data_keep_the_median_spacing() -> None:
    assert sampling_interval(np.array([0, 1_000, 3_000], np.int64)) == 1_500
    assert sampling_interval(np.array([1, 250, 1_999], np.int64)) == 999
    assert sampling_interval(np.array([5], np.int64)) is None


def test_round_interval() -> None:
    assert round_interval(3_602_000) == HOUR
    assert round_interval(5_400_000) == 5_400_000        # 1.5 h stays 90 min
    assert round_interval(61_000) == 61_000              # 61 s is not a minute
    assert round_interval(299_980) == 300_000
    assert round_interval(1_500) == 1_500


def test_times_on_a_calendar_grid_name_the_unit() -> None:
    for start, unit, freq, want in [("2002-01-01", MONTH_MS, "MS", "2002-01"),
                                    ("2002-04-01", QUARTER_MS, "QS", "2002-Q2"),
                                    ("2002-01-01", YEAR_MS, "YS", "2002")]:
        ts = int(_dates(start, 1, freq)[0])
        grid_ts = (ts + unit // 2) // unit * unit     # a few days off the unit's start
        assert grid_ts != ts
        assert format_when(grid_ts, grid_ms=unit) == want
        assert format_when(grid_ts, "Europe/Berlin", unit) == want
    assert format_when(0, grid_ms=HOUR) == "1970-01-01 00:00 UTC"


def test_the_phase_of_readings_jittering_around_a_half_point() -> None:
    from connectors.spacing import grid_phase

    rng = np.random.default_rng(1)
    on = np.arange(500, dtype=np.int64) * HOUR + HOUR // 2      # hourly at :30
    ts = on + rng.integers(-60_000, 60_001, on.size)
    grid = (ts + HOUR // 2) // HOUR
    assert (np.diff(grid) != 1).sum() > 100                      # rounded as they are: a mess
    phase = grid_phase(ts, HOUR)
    assert phase == HOUR // 2                                    # a whole minute: :30
    shifted = (ts + HOUR // 2 - phase) // HOUR                   # the patcher's rounding
    assert (np.diff(shifted) == 1).all()
    assert grid_phase(on - HOUR // 2, HOUR) == 0                 # on the hour
    assert grid_phase(on + 7 * 60_000, HOUR) == 37 * 60_000      # at :37
    assert grid_phase(np.array([1, 250, 1_999], np.int64), 999) == 0   # irregular
    assert grid_phase(_dates("2000-01-01", 30, "MS"), MONTH_MS) == 0   # calendar
