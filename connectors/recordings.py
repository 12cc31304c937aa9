"""Recorded data sets: the ``Recording`` container, readers/writers and graph helpers.

Formats (chosen by extension or ``fmt=``):

* ``.npz`` — native and lossless: timestamps, values, sensors, lat/lon, graph, events (as a JSON
  string) and ``interval_ms``. Also reads the PEMS / SZ-taxi layout (key ``data`` shaped
  ``[T, N]`` or ``[T, N, C]``; needs ``--start`` and ``--interval-ms`` unless the file has
  ``timestamps``).
* ``.h5`` / ``.hdf5`` — the pandas ``HDFStore`` "fixed" layout used by METR-LA / PEMS-BAY
  (group ``df``: ``axis0`` sensor labels, ``axis1`` int64 ns index, ``block0_values [T, N]``).
  Our writer adds a group ``stfm`` with lat/lon, graph, events and interval, so read(write(r))
  is lossless. A plain file with ``values``/``data`` ``[T, N]`` and optional ``timestamps`` (ms)
  and ``sensors`` is accepted too.
* ``.csv`` — auto-detected from the header: long (``sensor,ts,value``), wide with a first time
  column (``date``/``timestamp``/``ts``/``time``) or wide without time (needs ``--start`` and
  ``--interval-ms``). Empty cells are NaN. The writer produces the wide layout with ISO-8601
  UTC timestamps and shortest round-trip float text, so timestamps, sensors and values
  round-trip exactly. Events go to a sidecar ``<stem>.events.jsonl`` (read back automatically);
  lat/lon and the graph are NOT kept in CSV. ``fmt="csv-long"`` writes the long layout
  (``sensor,ts,value`` with epoch-ms ``ts``). A compressed CSV (``.csv.gz``, ``.csv.bz2``,
  ``.csv.xz``) is read as it is (not written). Real files are read without hand cleaning by
  these rules (each logged as a warning once and kept in ``Recording.read_report``):

  - encoding: UTF-8, else cp1252, else latin-1; U+FFFD replacement characters that a file
    itself stores in its header are repaired from their unit context (after ``m``: ``²``;
    before ``mol``/``g``/``m``/``s``...: ``µ``; before ``C``/``F``: ``°``; any other: ``?``);
  - repeated timestamps (a row with the time of the row before): merged, the last non-empty
    reading of each column wins (long layout: the later line of a sensor and time wins);
  - a column that is mostly text (more than half of its non-empty cells are not numbers) is
    skipped; a numeric column with a few non-number cells is an error naming line and column
    (``--na-values`` reads such cells as missing). ``columns`` (``--columns``) picks the sensor
    columns by name or glob;
  - ``na_values`` (``--na-values``) are read as missing. A value that looks like a missing-value
    code (it sits farther from the rest of its column than the rest's whole range and more
    than 10 of its standard deviations, is rare, and repeats or reads -9999/999...) is warned
    about, not removed: a value far from the rest may be real;
  - naive timestamps are local times of ``timezone`` (``--timezone``): the repeated hour when
    clocks go back is resolved by the order of the rows, a time that does not exist (the hour
    skipped when clocks go forward) is an error naming the line. Without a timezone they are
    read as UTC with a warning, and a file that then looks local (time going back, a repeated
    or a missing hour exactly at a summer-time switch of a common zone) names ``--timezone``;
  - the separator: ``,`` unless the header splits on ``;``, a tab or ``|`` into more columns
    (and the first data line agrees); with ``;`` or a tab, numbers written with a decimal
    comma (``1,5``) are read as such;
  - integer (or float) time columns are epoch milliseconds, unless every value is in the
    range of epoch seconds, microseconds or nanoseconds of the years 2001-2286 (``1.6e9``:
    seconds), which are read as those;
  - ``#`` comment lines before the header are skipped; a units row under the header (an
    empty first cell, text such as ``degC`` over numbers) is kept in ``read_report.units``;
    an empty last column (a separator ending every line) is dropped; a date column followed
    by a time-of-day column is one timestamp, as are ``year``/``month``/``day``/``hour``
    columns and a first column of years alone; a first column of row numbers (``No``,
    ``index``) is skipped; digit groups (``"1,234.5"``, ``1.234,5``) are numbers;
  - day/month/year dates (``13/01/2020``, ``13.01.2020``): the order is the one every row
    fits (a first field above 12: day first); when every row fits both, the one whose times
    increase, else day first with dots and month first otherwise (pandas' default), each
    choice logged.

``columns`` and ``na_values`` apply to .npz/.h5 files too (sensor selection, numeric codes).

Multichannel recordings: an array ``[T, N, C]`` (npz ``data`` or ``values``, plain HDF5
``data``/``values``) is N sensors with C channels each and becomes N*C series named
``"<sensor>/<channel>"`` (the readings contract's ``"values"`` naming, ``split_series``), a
sensor's channels side by side. Sensor names come from key ``sensors`` (else ``0..N-1``),
channel names from ``channels`` (else ``0..C-1``); ``[T, N, 1]`` without ``channels`` is a
plain ``[T, N]``. Positions (``lat``/``lon``) and the graph (``edge_index``/``edge_weight`` or a
dense ``adjacency``) of such a file are per sensor: ``expand_channels`` makes them per series
(channels share their sensor's graph position). A wide CSV with ``sensor/channel`` columns
gives the same series; ``load_graph`` expands a sensor-level graph for them.

Every problem with an input file raises ``RecordingError`` whose message starts with the file
path and says where (line/row/column/key) and what is wrong.
"""

from __future__ import annotations

import bz2
import csv
import fnmatch
import gzip
import io
import json
import logging
import lzma
import math
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from connectors.schemas import split_series
from connectors.spacing import sampling_interval

if TYPE_CHECKING:      # pandas and h5py are imported where a file needs them (~0.8 s)
    import h5py
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "RecordingError",
    "ReadReport",
    "expand_channels",
    "stations_of",
    "Recording",
    "read_recording",
    "write_recording",
    "load_graph",
    "gaussian_kernel_graph",
    "events_sidecar_path",
]

_TIME_NAMES = ("date", "timestamp", "ts", "time")
_LONG_TIME_NAMES = ("ts", "timestamp", "time", "date")
_LONG_SENSOR_NAMES = ("sensor", "sensor_id")
_FORMATS = {"csv": "csv", "csv-long": "csv-long", "npz": "npz", "h5": "h5", "hdf5": "h5"}


class RecordingError(ValueError):
    """Bad recording or recording file; the message names the file and the place."""


@dataclass
class ReadReport:
    """What a reader resolved or noticed in a file (``Recording.read_report``): each item is
    also logged as a warning; kept so a command's summary can print the counts."""

    encoding: str = "utf-8"
    renamed: dict[str, str] = field(default_factory=dict)       # repaired header names
    duplicates: int = 0                  # rows merged into the row before (same timestamp)
    duplicate_lines: list[int] = field(default_factory=list)    # the first few such lines
    skipped_columns: list[str] = field(default_factory=list)    # mostly-text columns
    sentinels: list[tuple[str, float, int]] = field(default_factory=list)  # column, value, n
    naive_as_utc: bool = False           # naive timestamps read as UTC (no timezone given)
    timezone: str | None = None          # the zone naive timestamps were read in
    looks_local: str | None = None       # why a file read as UTC looks like local time
    separator: str = ","                 # the CSV's field separator
    decimal: str = "."                   # its decimal mark
    epoch_unit: str = "ms"               # the unit of integer (or float) time columns
    day_first: bool | None = None        # d/m/y dates read day first (None: no such dates)
    comment_lines: int = 0               # '#' lines before the header, skipped
    units: dict[str, str] = field(default_factory=dict)   # a units row under the header
    date_and_time: tuple[str, str] | None = None   # date and time columns read as one
    calendar_columns: list[str] = field(default_factory=list)  # year/month/... read as time
    row_numbers: str | None = None       # a first column of row numbers, skipped

    def as_dict(self) -> dict[str, Any]:
        """The items that say something (empty ones left out), JSON-ready."""
        out: dict[str, Any] = {}
        if self.encoding != "utf-8":
            out["encoding"] = self.encoding
        if self.renamed:
            out["renamed_columns"] = dict(self.renamed)
        if self.duplicates:
            out["duplicate_timestamps"] = self.duplicates
            out["duplicate_lines"] = list(self.duplicate_lines)
        if self.skipped_columns:
            out["skipped_text_columns"] = list(self.skipped_columns)
        if self.sentinels:
            out["suspected_missing_codes"] = [
                {"column": c, "value": _num_text(v), "count": n} for c, v, n in self.sentinels]
        if self.naive_as_utc:
            out["naive_timestamps_read_as"] = "UTC"
        if self.looks_local:
            out["looks_local"] = self.looks_local
        if self.separator != ",":
            out["separator"] = self.separator
        if self.decimal != ".":
            out["decimal"] = self.decimal
        if self.epoch_unit != "ms":
            out["epoch_unit"] = self.epoch_unit
        if self.day_first is not None:
            out["day_first"] = self.day_first
        if self.comment_lines:
            out["comment_lines"] = self.comment_lines
        if self.units:
            out["units"] = dict(self.units)
        if self.date_and_time:
            out["date_and_time_columns"] = list(self.date_and_time)
        if self.calendar_columns:
            out["calendar_columns"] = list(self.calendar_columns)
        if self.row_numbers:
            out["row_numbers_column"] = self.row_numbers
        return out


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Recording:
    """A multivariate sensor recording on a regular or irregular time grid.

    ``values[t, n]`` is the reading of ``sensors[n]`` at ``timestamps[t]`` (epoch ms, UTC);
    NaN means missing. ``edge_index`` follows torch-geometric (row 0 source, row 1 target).
    """

    timestamps: np.ndarray
    sensors: list[str]
    values: np.ndarray
    lat: np.ndarray | None = None
    lon: np.ndarray | None = None
    edge_index: np.ndarray | None = None
    edge_weight: np.ndarray | None = None
    events: list[dict] = field(default_factory=list)
    interval_ms: int | None = None
    read_report: ReadReport | None = None   # set by read_recording; not part of equality

    def __post_init__(self) -> None:
        ts = np.asarray(self.timestamps)
        if ts.ndim != 1:
            raise RecordingError(f"timestamps must be 1-D, got shape {ts.shape}")
        if ts.size and not np.issubdtype(ts.dtype, np.integer):
            raise RecordingError(f"timestamps must be integer epoch ms, got dtype {ts.dtype}")
        self.timestamps = ts.astype(np.int64, copy=False)

        sensors = list(self.sensors)
        for i, s in enumerate(sensors):
            if not isinstance(s, str):
                raise RecordingError(f"sensor id at position {i} is not a string: {s!r}")
            sensors[i] = str(s)  # np.str_ -> str
        if len(set(sensors)) != len(sensors):
            seen: set[str] = set()
            for i, s in enumerate(sensors):
                if s in seen:
                    raise RecordingError(f"duplicate sensor id {s!r} at position {i}")
                seen.add(s)
        self.sensors = sensors

        vals = np.asarray(self.values)
        if vals.ndim != 2:
            raise RecordingError(f"values must be 2-D [T, N], got shape {vals.shape}")
        if vals.size and not (np.issubdtype(vals.dtype, np.number) or vals.dtype == bool):
            raise RecordingError(f"values must be numeric, got dtype {vals.dtype}")
        self.values = vals.astype(np.float64, copy=False)
        n_t, n_s = self.values.shape
        if n_t != ts.shape[0]:
            raise RecordingError(f"values has {n_t} rows but there are {ts.shape[0]} timestamps")
        if n_s != len(sensors):
            raise RecordingError(f"values has {n_s} columns but there are {len(sensors)} sensors")
        if n_t > 1:
            bad = np.flatnonzero(np.diff(self.timestamps) <= 0)
            if bad.size:
                i = int(bad[0]) + 1
                what = "duplicate" if self.timestamps[i] == self.timestamps[i - 1] else "decreasing"
                raise RecordingError(
                    f"timestamps must be strictly increasing: row {i} has {what} timestamp "
                    f"{int(self.timestamps[i])} (row {i - 1}: {int(self.timestamps[i - 1])})")

        for name in ("lat", "lon"):
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.asarray(arr, dtype=np.float64)
            if arr.shape != (n_s,):
                raise RecordingError(f"{name} must have shape ({n_s},), got {arr.shape}")
            setattr(self, name, arr)

        if self.edge_index is not None:
            ei = np.asarray(self.edge_index)
            if ei.ndim != 2 or ei.shape[0] != 2:
                raise RecordingError(f"edge_index must have shape [2, E], got {ei.shape}")
            if ei.size and not np.issubdtype(ei.dtype, np.integer):
                raise RecordingError(f"edge_index must be integer, got dtype {ei.dtype}")
            ei = ei.astype(np.int64, copy=False)
            if ei.size and (ei.min() < 0 or ei.max() >= n_s):
                raise RecordingError(f"edge_index refers to nodes outside [0, {n_s})")
            self.edge_index = ei
        if self.edge_weight is not None:
            if self.edge_index is None:
                raise RecordingError("edge_weight given without edge_index")
            ew = np.asarray(self.edge_weight, dtype=np.float64)
            if ew.shape != (self.edge_index.shape[1],):
                raise RecordingError(
                    f"edge_weight must have shape ({self.edge_index.shape[1]},), got {ew.shape}")
            self.edge_weight = ew

        events = list(self.events)
        for i, ev in enumerate(events):
            if not isinstance(ev, dict):
                raise RecordingError(f"event {i} is not a dict: {ev!r}")
            if not isinstance(ev.get("type"), str):
                raise RecordingError(f"event {i} has no string 'type': {ev!r}")
            ts_ev = ev.get("ts")
            if isinstance(ts_ev, bool) or not isinstance(ts_ev, (int, np.integer)):
                raise RecordingError(f"event {i} has no integer 'ts' (epoch ms): {ev!r}")
            if "sensor" in ev and ev["sensor"] is not None and not isinstance(ev["sensor"], str):
                raise RecordingError(f"event {i} has a non-string 'sensor': {ev!r}")
            if "attrs" in ev and not isinstance(ev["attrs"], dict):
                raise RecordingError(f"event {i} has non-dict 'attrs': {ev!r}")
        self.events = events

        if self.interval_ms is not None:
            if isinstance(self.interval_ms, bool) or int(self.interval_ms) != self.interval_ms \
                    or self.interval_ms <= 0:
                raise RecordingError(
                    f"interval_ms must be a positive int, got {self.interval_ms!r}")
            self.interval_ms = int(self.interval_ms)

    @property
    def n_sensors(self) -> int:
        """Number of sensors (columns)."""
        return len(self.sensors)

    @property
    def n_steps(self) -> int:
        """Number of time steps (rows)."""
        return int(self.timestamps.shape[0])

    def slice_rows(self, start: int | None, stop: int | None) -> Recording:
        """Rows ``[start, stop)`` (Python slice rules) as a new recording (arrays copied).

        Events are kept when they fall in ``[ts[start], ts[stop])``; the first slice also keeps
        earlier events and the last slice later ones, so consecutive slices partition them.
        """
        start_i, stop_i, _ = slice(start, stop).indices(self.n_steps)
        stop_i = max(stop_i, start_i)
        if start_i == 0:
            lo: float = -math.inf
        elif start_i < self.n_steps:
            lo = int(self.timestamps[start_i])
        else:
            lo = math.inf
        hi = math.inf if stop_i >= self.n_steps else int(self.timestamps[stop_i])
        events = [dict(e) for e in self.events if lo <= e["ts"] < hi] if stop_i > start_i else []
        return Recording(
            timestamps=self.timestamps[start_i:stop_i].copy(),
            sensors=list(self.sensors),
            values=self.values[start_i:stop_i].copy(),
            lat=None if self.lat is None else self.lat.copy(),
            lon=None if self.lon is None else self.lon.copy(),
            edge_index=None if self.edge_index is None else self.edge_index.copy(),
            edge_weight=None if self.edge_weight is None else self.edge_weight.copy(),
            events=events,
            interval_ms=self.interval_ms,
        )

    def iter_readings(self, *, skip_missing: bool = False
                      ) -> Iterator[tuple[str, int, float | None]]:
        """``(sensor, ts, value)`` in timestamp order, then sensor order; NaN -> ``None``."""
        sensors = self.sensors
        for t, row in zip(self.timestamps.tolist(), self.values.tolist(), strict=True):
            for s, v in zip(sensors, row, strict=True):
                if v != v:  # NaN
                    if skip_missing:
                        continue
                    yield s, t, None
                else:
                    yield s, t, v

    def events_sorted(self) -> list[dict]:
        """Events sorted by ``ts`` (stable: equal times keep their order)."""
        return sorted(self.events, key=lambda e: e["ts"])

    def equals(self, other: Recording) -> bool:
        """Exact equality of every field (NaN equals NaN)."""
        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")

        return (
            isinstance(other, Recording)
            and self.sensors == other.sensors
            and same(self.timestamps, other.timestamps)
            and same(self.values, other.values)
            and same(self.lat, other.lat)
            and same(self.lon, other.lon)
            and same(self.edge_index, other.edge_index)
            and same(self.edge_weight, other.edge_weight)
            and self.events == other.events
            and self.interval_ms == other.interval_ms
        )


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _err(path: Path, msg: str) -> RecordingError:
    return RecordingError(f"{path}: {msg}")


def _build(path: Path, **kwargs: Any) -> Recording:
    """Construct a Recording, prefixing validation errors with the file path."""
    try:
        return Recording(**kwargs)
    except RecordingError as e:
        raise _err(path, str(e)) from None


def _parse_start(path: Path, start: str | int | None) -> int | None:
    import pandas as pd

    if start is None:
        return None
    if isinstance(start, (int, np.integer)) and not isinstance(start, bool):
        return int(start)
    try:
        ts = pd.Timestamp(start)
    except (ValueError, TypeError) as e:
        raise _err(path, f"cannot parse --start {start!r}: {e}") from None
    if ts is pd.NaT:
        raise _err(path, f"cannot parse --start {start!r}")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def _synthetic_times(path: Path, n: int, start: str | int | None, interval_ms: int | None,
                     what: str) -> np.ndarray:
    t0 = _parse_start(path, start)
    if t0 is None or interval_ms is None:
        raise _err(path, f"{what} has no timestamps; pass --start (ISO-8601 or epoch ms) and "
                         f"--interval-ms to read it")
    return t0 + np.arange(n, dtype=np.int64) * np.int64(interval_ms)


def _infer_interval(ts: np.ndarray, given: int | None) -> int | None:
    if given is not None:
        return int(given)
    return sampling_interval(ts)


def _check_monotonic(path: Path, ts: np.ndarray, place: Any) -> None:
    """Raise naming the first non-increasing row; ``place(i)`` describes row ``i``."""
    if ts.shape[0] < 2:
        return
    bad = np.flatnonzero(np.diff(ts) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        if ts[i] == ts[i - 1]:
            raise _err(path, f"{place(i)}: duplicate timestamp {_fmt_ms(int(ts[i]))} "
                             f"(same as {place(i - 1)})")
        raise _err(path, f"{place(i)}: timestamp {_fmt_ms(int(ts[i]))} is earlier than "
                         f"{place(i - 1)} ({_fmt_ms(int(ts[i - 1]))}); timestamps must "
                         f"strictly increase")


def _fmt_ms(ms: int) -> str:
    return str(np.datetime64(ms, "ms")) + "Z"


def _ms_to_iso(ts: np.ndarray) -> np.ndarray:
    unit = "s" if ts.size == 0 or not np.any(ts % 1000) else "ms"
    return np.char.add(np.datetime_as_string(ts.astype("datetime64[ms]"), unit=unit), "Z")


def _datetimes_to_ms(dt: pd.Series) -> np.ndarray:
    naive = dt.dt.tz_convert(None)
    return naive.to_numpy().astype("datetime64[ms]").astype(np.int64)


def _parse_time_column(path: Path, col: pd.Series, name: str, line_of: np.ndarray,
                       tz: str | None, report: ReadReport,
                       groups: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Epoch-ms int64 from an int (epoch ms) or date-string column, and whether the dates were
    naive (no UTC offset); errors name the line. Naive dates are local times of ``tz``
    (``--timezone``); without one they are read as UTC, with a warning. ``groups`` (one code per
    row, long layout) are series whose times each run in order: a repeated local hour is
    inferred per series."""
    import pandas as pd

    nulls = col.isna().to_numpy()
    if nulls.any():
        i = int(np.flatnonzero(nulls)[0])
        raise _err(path, f"line {line_of[i]}: column '{name}' has an empty timestamp")
    if pd.api.types.is_integer_dtype(col.dtype) or pd.api.types.is_float_dtype(col.dtype):
        arr = col.to_numpy(dtype=np.float64)
        unit = _epoch_unit(arr)
        if unit is not None:
            report.epoch_unit = unit[0]
            ms = np.round(arr * unit[1]).astype(np.int64)
            log.warning("%s: column '%s' holds epoch %s (e.g. %s = %s), not milliseconds: read "
                        "as such", path, name, unit[2], col.iloc[0], _fmt_ms(int(ms[0])))
            return ms, False
        frac = np.flatnonzero(arr != np.round(arr))
        if frac.size:
            i = int(frac[0])
            raise _err(path, f"line {line_of[i]}: column '{name}' is not an integer epoch-ms "
                             f"timestamp: {arr[i]!r}")
        return (col.to_numpy(dtype=np.int64) if pd.api.types.is_integer_dtype(col.dtype)
                else arr.astype(np.int64)), False
    col = col.astype(str).str.strip()
    day_first = _day_first(path, col, name, report)    # None: not d/m/y, try ISO first
    dt = None
    if day_first is None:
        try:
            dt = pd.to_datetime(col, utc=True, format="ISO8601")
        except (ValueError, TypeError, OverflowError):
            pass
    if dt is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)    # "could not infer format"
                dt = pd.to_datetime(col, utc=True, dayfirst=bool(day_first))
        except (ValueError, TypeError, OverflowError):
            dt = pd.to_datetime(col, utc=True, format="mixed", errors="coerce",
                                dayfirst=bool(day_first))
            bad = dt.isna().to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise _err(path, f"line {line_of[i]}: column '{name}' is not a timestamp: "
                                 f"{col.iloc[i]!r}") from None
    naive = _naive(col.iloc[0])
    if not naive:
        return _datetimes_to_ms(dt), False
    if tz is None:
        report.naive_as_utc = True
        log.warning("%s: timestamps in column '%s' have no UTC offset (e.g. %r): read as UTC; "
                    "pass --timezone ZONE if they are local times", path, name, col.iloc[0])
        return _datetimes_to_ms(dt), True
    report.timezone = tz
    log.info("%s: column '%s' has timestamps without a UTC offset (e.g. %r); read as local "
             "times of %s (--timezone, patching.timezone)", path, name, col.iloc[0], tz)
    if tz == "UTC":
        return _datetimes_to_ms(dt), True
    return _localize(path, dt.dt.tz_localize(None), name, line_of, tz, groups), True


_CALENDAR_PARTS = ("year", "month", "day", "hour", "minute", "second")
_ROW_NUMBER_NAMES = ("no", "no.", "index", "id", "row", "unnamed: 0", "#")


def _drop_row_numbers(path: Path, df: pd.DataFrame, cols: list[str], report: ReadReport
                      ) -> tuple[pd.DataFrame, list[str]]:
    """Without a first column of row numbers (``No``, ``index``, ``Unnamed: 0``: 0 or 1 up by
    one a row), which would otherwise be read as a sensor that counts."""
    import pandas as pd

    c = cols[0]
    if c.strip().lower() not in _ROW_NUMBER_NAMES or len(cols) < 2:
        return df, cols
    v = pd.to_numeric(df[c], errors="coerce")
    if v.isna().any() or len(v) < 2 or not (np.diff(v.to_numpy()) == 1).all() \
            or float(v.iloc[0]) not in (0.0, 1.0):
        return df, cols
    report.row_numbers = c
    log.warning("%s: first column '%s' numbers the rows: not a sensor, skipped", path, c)
    return df.drop(columns=[c]), cols[1:]


def _calendar_columns(path: Path, df: pd.DataFrame, cols: list[str], line_of: np.ndarray,
                      report: ReadReport) -> tuple[pd.DataFrame, list[str]]:
    """A time spread over ``year``, ``month``, ``day`` (and ``hour``, ``minute``,
    ``second``) columns, or a first column of years alone (yearly data: 1 January), as one
    ``time`` column in front (the parts are not sensors)."""
    import pandas as pd

    by = {c.strip().lower(): c for c in cols}
    yearly = cols[0].strip().lower() == "year" and "month" not in by   # year,gdp,...
    if not ({"year", "month"} <= set(by) or yearly) or cols[0].lower() in _TIME_NAMES:
        return df, cols
    parts = [p for p in _CALENDAR_PARTS if p in by]
    nums = {p: pd.to_numeric(df[by[p]], errors="coerce") for p in parts}
    for p, v in nums.items():
        bad = np.flatnonzero(v.isna().to_numpy() | (v != v.round()).to_numpy())
        if bad.size:
            i = int(bad[0])
            raise _err(path, f"line {line_of[i]}: column '{by[p]}' is not a whole number: "
                             f"{df[by[p]].iloc[i]!r}")
    frame = pd.DataFrame({p: nums[p].astype(np.int64) for p in parts})
    if yearly and not frame["year"].between(1000, 2999).all():
        return df, cols             # a column named year that does not hold years
    for p in ("month", "day"):
        if p not in frame:
            frame[p] = 1
    try:
        when = pd.to_datetime(frame[[p for p in _CALENDAR_PARTS if p in frame]])
    except (ValueError, OverflowError) as e:
        raise _err(path, f"columns {', '.join(by[p] for p in parts)}: not a date: {e}") from None
    used = [by[p] for p in parts]
    report.calendar_columns = used
    log.warning("%s: columns %s read as the time", path, ", ".join(f"'{c}'" for c in used))
    rest = [c for c in cols if c not in used]
    out = pd.concat([when.dt.strftime("%Y-%m-%d %H:%M:%S").rename("time").reset_index(drop=True),
                     df[rest].reset_index(drop=True)], axis=1)
    return out, ["time", *rest]


_CLOCK = r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?(\s*[AaPp]\.?[Mm]\.?)?"


def _time_of_day_column(df: pd.DataFrame, cols: list[str]) -> bool:
    """The first column holds dates without a time and the second only times of day
    (``2020-01-01`` and ``13:00``): one timestamp split over two columns."""
    if len(cols) < 3:
        return False
    first = df[cols[0]].dropna().astype(str).str.strip()
    second = df[cols[1]].dropna().astype(str).str.strip()
    return (len(second) == len(df) and not first.str.contains(":").any()
            and bool(second.str.fullmatch(_CLOCK).all()))


def _skip_units_row(path: Path, df: pd.DataFrame, line_of: np.ndarray, report: ReadReport
                    ) -> tuple[pd.DataFrame, np.ndarray]:
    """Without the first data row when it holds units under the header (an empty first cell,
    text such as ``degC`` or ``%`` elsewhere, and numbers in the rows below)."""
    import pandas as pd

    if len(df) < 2 or df.shape[1] < 2:
        return df, line_of
    first = df.iloc[0]
    rest = [str(v).strip() for v in first.iloc[1:] if pd.notna(v)]
    if pd.notna(first.iloc[0]) and str(first.iloc[0]).strip() or not rest:
        return df, line_of
    if any(pd.notna(pd.to_numeric(v, errors="coerce")) for v in rest):
        return df, line_of
    texts = [c for c, v in first.iloc[1:].items() if pd.notna(v)]
    numeric = 0
    for c in texts:                 # the cells below a unit are numbers
        cells = df[c].iloc[1:].dropna()
        conv = pd.to_numeric(cells, errors="coerce").fillna(_grouped_numbers(cells))
        numeric += bool(len(cells)) and conv.notna().mean() > 0.5
    if 2 * numeric < len(texts):
        return df, line_of
    report.units = {str(c): str(v).strip() for c, v in first.iloc[1:].items() if pd.notna(v)}
    log.warning("%s: line %d holds units, not readings (%s): skipped", path, line_of[0],
                ", ".join(f"{c} {u}" for c, u in report.units.items()))
    out = df.iloc[1:].reset_index(drop=True)
    for c in out.columns[1:]:               # the units made them text: numbers again
        conv = pd.to_numeric(out[c], errors="coerce")
        if (conv.notna() | out[c].isna()).all():
            out[c] = conv
    return out, line_of[1:]


def _looks_like_dates(col: pd.Series) -> bool:
    """A text column whose first values all parse as dates (a time column whatever its
    name: ``Datum``, ``datetime``, ``Date Time``)."""
    import pandas as pd

    if not (pd.api.types.is_object_dtype(col.dtype) or pd.api.types.is_string_dtype(col.dtype)):
        return False
    head = col.dropna().astype(str).str.strip().head(20)
    if head.empty or head.str.fullmatch(r"[-+]?(\d+([.,]\d*)?|[.,]\d+)([eE][-+]?\d+)?").any():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # pandas' "could not infer format" note
        parsed = pd.to_datetime(head, errors="coerce", utc=True, format="mixed",
                                dayfirst=bool(head.str.match(_DMY).all()))
    return bool(parsed.notna().all())


# epoch units other than ms, told apart by magnitude over the years 2001-2286: unit, its
# factor to ms, its name
_EPOCH_UNITS = ((1e9, 1e10, ("s", 1e3, "seconds")), (1e15, 1e16, ("us", 1e-3, "microseconds")),
                (1e18, 1e19, ("ns", 1e-6, "nanoseconds")))


def _epoch_unit(arr: np.ndarray) -> tuple[str, float, str] | None:
    """The unit of epoch times ``arr`` when every value is in the 2001-2286 range of seconds,
    microseconds or nanoseconds (as milliseconds those would be 1970 or absurdly far off);
    None: milliseconds."""
    if arr.size == 0 or not np.isfinite(arr).all():
        return None
    lo, hi = float(arr.min()), float(arr.max())
    for a, b, unit in _EPOCH_UNITS:
        if a <= lo and hi < b:
            return unit
    return None


_DMY = re.compile(r"^\s*(\d{1,2})([/.-])(\d{1,2})\2(\d{2}|\d{4})\b")


def _day_first(path: Path, col: pd.Series, name: str, report: ReadReport) -> bool | None:
    """For ``dd/mm/yyyy``-like dates (``/``, ``.`` or ``-``): whether they are day first; the
    order every row fits, else (every row fits both) the one whose times increase, else day
    first with dots (``13.01.2020``), month first otherwise. None for other date formats."""
    import pandas as pd

    parts = col.str.extract(_DMY)
    if parts[0].isna().any():
        return None
    a, b = parts[0].astype(int), parts[2].astype(int)
    if (a > 12).any() and (b <= 12).all():
        choice, why = True, "a first field above 12"
    elif (b > 12).any() and (a <= 12).all():
        choice, why = False, "a second field above 12"
    else:
        def rising(day_first: bool) -> bool:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)    # "could not infer format"
                t = pd.to_datetime(col, utc=True, dayfirst=day_first, errors="coerce")
            return bool(t.notna().all() and (t.diff().dropna() > pd.Timedelta(0)).all())
        up_d, up_m = rising(True), rising(False)
        if up_d != up_m:
            choice, why = up_d, "only then do the times increase"
        elif (parts[1] == ".").all():
            choice, why = True, "either order fits every row; dots: the European order"
        else:
            choice, why = False, "either order fits every row; pandas' default"
    report.day_first = choice
    log.warning("%s: dates in column '%s' (e.g. %r) read %s first: %s", path, name,
                col.iloc[0], "day" if choice else "month", why)
    return choice


def _localize(path: Path, wall: pd.Series, name: str, line_of: np.ndarray, tz: str,
              groups: np.ndarray | None) -> np.ndarray:
    """Epoch ms of the wall-clock times ``wall`` in zone ``tz``. The hour that repeats when
    clocks go back is told apart by the order of the rows (pandas ``ambiguous="infer"``); a
    time that does not exist there (the hour skipped when clocks go forward) is an error."""
    import pandas as pd

    try:
        pd.Timestamp(0).tz_localize(tz)
    except (KeyError, ValueError, TypeError) as exc:     # zoneinfo's not-found is a KeyError
        raise _err(path, f"--timezone: unknown time zone {tz!r} (an IANA name such as "
                         f"Europe/Berlin): {exc}") from None
    rows = [np.arange(len(wall))]
    if groups is not None and wall.dt.tz_localize(tz, ambiguous="NaT",
                                                  nonexistent="shift_forward").isna().any():
        rows = [np.flatnonzero(groups == g) for g in np.unique(groups)]   # infer per series
    out = np.empty(len(wall), dtype=np.int64)
    for idx in rows:
        part = wall.iloc[idx]
        try:
            loc = part.dt.tz_localize(tz, ambiguous="infer", nonexistent="NaT")
        except ValueError as exc:      # an ambiguous time whose twin is not in the file
            amb = np.flatnonzero(part.dt.tz_localize(tz, ambiguous="NaT",
                                                     nonexistent="shift_forward").isna())
            if not amb.size:
                raise _err(path, f"column '{name}': local times of {tz} cannot be placed: "
                                 f"{exc}") from None
            i = int(idx[int(amb[0])])
            raise _err(path, f"line {line_of[i]}: column '{name}': {wall.iloc[i]} occurs twice "
                             f"in {tz} (clocks set back an hour) and the order of the rows does "
                             f"not tell which one is meant (the file does not repeat that "
                             f"hour)") from None
        gone = loc.isna().to_numpy()
        if gone.any():
            i = int(idx[int(np.flatnonzero(gone)[0])])
            raise _err(path, f"line {line_of[i]}: column '{name}': {wall.iloc[i]} does not "
                             f"exist in {tz} (the clocks skipped that hour); is the file in "
                             f"{tz} local time? (--timezone)")
        out[idx] = _datetimes_to_ms(loc.dt.tz_convert("UTC"))
    return out


def _naive(text: str) -> bool:
    """Whether a date string carries no UTC offset."""
    import pandas as pd

    try:
        return pd.Timestamp(text).tzinfo is None
    except (ValueError, TypeError):
        return False


# common zones with summer time, each for the zones that switch with it at the same wall-clock
# hour (Europe/Berlin for CET, America/New_York for the US zones, ...)
_COMMON_ZONES = ("Europe/London", "Europe/Berlin", "Europe/Helsinki", "America/New_York",
                 "America/Chicago", "America/Denver", "America/Los_Angeles",
                 "Australia/Sydney", "Pacific/Auckland")
_HOUR_MS = 3_600_000


def _switch_zones(wall_ms: np.ndarray, kind: str) -> list[list[str]]:
    """For each wall-clock time (epoch ms read as UTC): the common zones where it is
    ``"ambiguous"`` (in the hour that repeats when clocks go back) or ``"nonexistent"``."""
    import pandas as pd

    idx = pd.DatetimeIndex(wall_ms.astype("datetime64[ms]"))
    out: list[list[str]] = [[] for _ in range(len(idx))]
    for z in _COMMON_ZONES:
        if kind == "ambiguous":
            hit = idx.tz_localize(z, ambiguous="NaT", nonexistent="shift_forward").isna()
        else:
            hit = idx.tz_localize(z, ambiguous=np.ones(len(idx), bool), nonexistent="NaT").isna()
        for i in np.flatnonzero(hit):
            out[i].append(z)
    return out


def _zones_text(zones: list[str]) -> str:
    return f"--timezone {zones[0]}" + (f" (or {', '.join(zones[1:])})" if zones[1:] else "")


def _local_back_hint(ts: np.ndarray, i: int) -> str:
    """For a naive file read as UTC whose time at row ``i`` is not after row ``i - 1``: a hint
    naming ``--timezone`` when that is the repeated hour of a common zone, else ``""``."""
    d = int(ts[i] - ts[i - 1])
    if not -_HOUR_MS <= d <= 0:
        return ""
    zones = _switch_zones(ts[i:i + 1], "ambiguous")[0]
    if not zones:
        return ("; the timestamps have no UTC offset and were read as UTC: if they are local "
                "times (back one hour as clocks are set back), pass --timezone ZONE"
                if d == -_HOUR_MS else "")
    return (f"; the timestamps have no UTC offset and were read as UTC, but this is the hour "
            f"that repeats when {zones[0]} sets its clocks back: they look like local times, "
            f"pass {_zones_text(zones)}")


def _local_gap_hint(ts: np.ndarray, place: Any) -> str | None:
    """For a naive file read as UTC: a note when a gap of exactly one hour more than the
    usual step skips the hour that does not exist in a common zone (clocks forward)."""
    if ts.shape[0] < 3:
        return None
    d = np.diff(ts)
    step = int(np.median(d[d > 0])) if np.any(d > 0) else 0
    if step <= 0:
        return None
    at = np.flatnonzero(d == step + _HOUR_MS) + 1
    if not at.size:
        return None
    for i, zones in zip(at.tolist(), _switch_zones(ts[at] - _HOUR_MS, "nonexistent"),
                        strict=True):
        if zones:
            return (f"{place(i)}: the hour before {_fmt_ms(int(ts[i]))} is missing, exactly "
                    f"the hour {zones[0]} skips when it sets its clocks forward: the timestamps "
                    f"(no UTC offset, read as UTC) look like local times; pass "
                    f"{_zones_text(zones)}")
    return None


def _local_dup_hint(ts: np.ndarray, dup_rows: np.ndarray, place: Any) -> str | None:
    """For a naive file read as UTC: a note when a repeated timestamp lies in the hour that
    repeats when a common zone sets its clocks back, or right after the hour it skips when it
    sets them forward (where a tool may have moved that hour's local times)."""
    if not dup_rows.size:
        return None
    back = _switch_zones(ts[dup_rows], "ambiguous")
    fwd = _switch_zones(ts[dup_rows] - 1, "nonexistent")
    for i, za, zf in zip(dup_rows.tolist(), back, fwd, strict=True):
        if za or zf:
            when = (f"in the hour that repeats when {za[0]} sets its clocks back" if za else
                    f"right after the hour {zf[0]} skips when it sets its clocks forward")
            return (f"{place(i)}: the timestamp {_fmt_ms(int(ts[i]))} repeats {when}: the "
                    f"timestamps (no UTC offset, read as UTC) look like local times; pass "
                    f"{_zones_text(za or zf)}")
    return None


def _note_local(path: Path, report: ReadReport, hint: str | None) -> None:
    if hint and report.looks_local is None:
        report.looks_local = hint
        log.warning("%s: %s", path, hint)


def _merge_repeated_rows(path: Path, ts: np.ndarray, values: np.ndarray, line_of: np.ndarray,
                         report: ReadReport, naive_utc: bool
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Rows in time order: time going back is an error naming the line (and ``--timezone``
    where it looks like local time); a row with the timestamp of the row before is merged into
    it, the last non-empty reading of each column winning, counted in ``report``."""
    import pandas as pd

    def place(i: int) -> str:
        return f"line {line_of[i]}"

    if ts.shape[0] < 2:
        return ts, values
    d = np.diff(ts)
    back = np.flatnonzero(d < 0)
    if back.size:
        i = int(back[0]) + 1
        hint = _local_back_hint(ts, i) if naive_utc else ""
        raise _err(path, f"{place(i)}: timestamp {_fmt_ms(int(ts[i]))} is earlier than "
                         f"{place(i - 1)} ({_fmt_ms(int(ts[i - 1]))}); timestamps must "
                         f"strictly increase{hint}")
    dup_rows = np.flatnonzero(d == 0) + 1
    if naive_utc:
        _note_local(path, report, _local_dup_hint(ts, dup_rows, place)
                    or _local_gap_hint(ts, place))
    if not dup_rows.size:
        return ts, values
    _note_duplicates(path, report, line_of[dup_rows], ts[dup_rows],
                     "a row with the time of the row before",
                     "the last non-empty reading of each column wins")
    group = np.concatenate([[0], np.cumsum(d != 0)])
    merged = pd.DataFrame(values).groupby(group, sort=False).last().to_numpy(np.float64)
    return ts[np.concatenate([[True], d != 0])], merged


def _note_duplicates(path: Path, report: ReadReport, lines: np.ndarray, ts: np.ndarray,
                     what: str, rule: str) -> None:
    n = int(lines.shape[0])
    report.duplicates += n
    report.duplicate_lines = [int(x) for x in lines[:5]]
    first = ", ".join(f"line {int(k)} at {_fmt_ms(int(t))}" for k, t in zip(lines[:5], ts[:5],
                                                                           strict=True))
    log.warning("%s: %d duplicate timestamp%s (%s): %s%s; merged, %s", path, n,
                "" if n == 1 else "s", what, first, ", ..." if n > 5 else "", rule)


def _num_text(v: float) -> str:
    """A number as a user would type it (``-9999``, not ``-9999.0``)."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def _nines(v: float) -> bool:
    """Whether ``v`` reads like a classic missing-value code: -99, 999, -9999, ..."""
    return float(v).is_integer() and abs(v) >= 99 and set(str(int(abs(v)))) == {"9"}


def _find_sentinels(values: np.ndarray) -> list[tuple[int, float, int]]:
    """``(column, value, count)`` for values that look like missing-value codes: an extreme of
    its column (its min or max), farther from the rest than the rest's whole range and more
    than 10 standard deviations of the rest, at most 5 % of the readings, and repeated (or
    reading like -9999)."""
    found: list[tuple[int, float, int]] = []
    for j in range(values.shape[1]):
        col = values[:, j]
        col = col[np.isfinite(col)]
        for side in ("min", "max"):
            if col.size < 10:
                break
            v = float(col.min() if side == "min" else col.max())
            hit = col == v
            n = int(hit.sum())
            rest = col[~hit]
            if rest.size < 2 or n > 0.05 * col.size or not (n >= 2 or _nines(v)):
                continue
            sd, lo, hi = float(rest.std()), float(rest.min()), float(rest.max())
            gap = lo - v if side == "min" else v - hi
            if sd > 0 and gap > 10 * sd and gap > hi - lo:
                found.append((j, v, n))
                col = rest
    return found


def _note_sentinels(path: Path, report: ReadReport, sensors: Sequence[str],
                    values: np.ndarray) -> None:
    """Warn (once per value) about values that look like missing-value codes; kept as read."""
    found = _find_sentinels(values)
    if not found:
        return
    report.sentinels = [(sensors[j], v, n) for j, v, n in found]
    by_value: dict[str, list[str]] = {}
    for j, v, n in found:
        by_value.setdefault(_num_text(v), []).append(
            f"'{sensors[j]}' ({'once' if n == 1 else f'{n} times'})")
    for v, where in by_value.items():
        log.warning("%s: %s looks like a missing-value code (far outside the rest of its "
                    "column) in %s; read as a number: pass --na-values %s to read it as "
                    "missing", path, v, ", ".join(where), v)


def _numeric_block(path: Path, df: pd.DataFrame, cols: Sequence[str], line_of: np.ndarray,
                   strict: Sequence[str] = ()) -> tuple[np.ndarray, list[str], list[str]]:
    """Columns ``cols`` as float64 [T, k], the k columns kept, and the columns skipped as mostly
    text (more than half of their non-empty cells are not numbers; a column in ``strict`` is
    never skipped). Other non-number cells raise naming line and column."""
    import pandas as pd

    out: list[np.ndarray] = []
    kept: list[str] = []
    skipped: list[str] = []
    for c in cols:
        s = df[c]
        if pd.api.types.is_numeric_dtype(s.dtype):
            out.append(s.to_numpy(dtype=np.float64, na_value=np.nan))
            kept.append(c)
            continue
        conv = pd.to_numeric(s, errors="coerce")
        bad = (conv.isna() & s.notna()).to_numpy()
        if bad.any():                   # "1,234.5" / "1.234,5": digit groups
            conv = conv.where(~bad, _grouped_numbers(s))
            bad = (conv.isna() & s.notna()).to_numpy()
        if bad.any():
            if c not in strict and 2 * int(bad.sum()) > int(s.notna().sum()):
                skipped.append(c)
                continue
            i = int(np.flatnonzero(bad)[0])
            cell = str(s.iloc[i]).strip()
            raise _err(path, f"line {line_of[i]}: column '{c}' is not a number: "
                             f"{str(s.iloc[i])!r} (--na-values {cell} reads such cells as "
                             f"missing)")
        out.append(conv.to_numpy(dtype=np.float64, na_value=np.nan))
        kept.append(c)
    block = np.stack(out, axis=1) if out else np.empty((len(df), 0), dtype=np.float64)
    return block, kept, skipped


def _grouped_numbers(s: pd.Series) -> pd.Series:
    """Cells written with digit groups as numbers (``1,234.5``, ``1.234,5``, ``12 345``),
    NaN where a cell is not one."""
    import pandas as pd

    t = s.astype(str).str.strip()
    comma = t.str.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?")
    dot = t.str.fullmatch(r"[-+]?\d{1,3}(\.\d{3})+(,\d+)?")
    space = t.str.fullmatch(r"[-+]?\d{1,3}([ \u00a0\u202f]\d{3})+([.,]\d+)?")
    out = t.where(~comma, t.str.replace(",", "", regex=False))
    out = out.where(~dot, t.str.replace(".", "", regex=False).str.replace(",", ".",
                                                                        regex=False))
    out = out.where(~space, t.str.replace(r"[ \u00a0\u202f]", "", regex=True)
                    .str.replace(",", ".", regex=False))
    return pd.to_numeric(out.where(comma | dot | space), errors="coerce")


def _choose_columns(path: Path, names: Sequence[str], patterns: Sequence[str] | None,
                    what: str) -> tuple[list[str], set[str]]:
    """The ``names`` that ``patterns`` (names or globs, ``--columns``) pick, in file order, and
    the names given exactly; a pattern that picks nothing is an error listing the names."""
    if not patterns:
        return list(names), set()
    picked: set[str] = set()
    exact: set[str] = set()
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            shown = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
            raise _err(path, f"--columns: {pat!r} matches no {what} (there are: {shown})")
        picked.update(hits)
        if pat in names:
            exact.add(pat)
    return [n for n in names if n in picked], exact


def events_sidecar_path(path: str | Path) -> Path:
    """``data.csv`` -> ``data.events.jsonl`` (where CSV recordings keep their events)."""
    p = Path(path)
    return p.with_name(p.stem + ".events.jsonl")


def _read_events_sidecar(path: Path) -> list[dict]:
    side = events_sidecar_path(path)
    if not side.exists():
        return []
    events = []
    with side.open(encoding="utf-8") as fh:
        for k, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError as e:
                raise _err(side, f"line {k}: invalid JSON: {e}") from None
            if not isinstance(ev, dict):
                raise _err(side, f"line {k}: event is not a JSON object")
            events.append(ev)
    return events


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def _decode(path: Path, raw: bytes, report: ReadReport) -> str:
    """The file's text: by its byte-order mark, else UTF-8, else cp1252 (Windows' Western
    European: ``W/m²``, ``µmol``), else latin-1 (which decodes any bytes)."""
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            try:
                text = raw.decode(enc)
            except UnicodeDecodeError as e:
                line = raw.count(b"\n", 0, e.start) + 1
                raise _err(path, f"line {line}: not valid {enc} although the file starts with "
                                 f"its byte-order mark: {e.reason}") from None
            report.encoding = enc
            return text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        bad = raw[e.start]
    try:
        text, enc = raw.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:          # bytes cp1252 leaves undefined (0x81, 0x8d, ...)
        text, enc = raw.decode("latin-1"), "latin-1"
    report.encoding = enc
    log.info("%s: not UTF-8 (byte 0x%02x on line %d); read as %s", path, bad, line, enc)
    return text


# U+FFFD that a file itself stores (its bytes lost before it was written), by unit context
_FFFD_RULES = ((re.compile("(?<=m)\ufffd(?![0-9A-Za-z])"), "²"),                 # W/m²
               (re.compile("\ufffd(?=(?:mol|g|m|s|S|V|A|W|l|L|Pa)(?![A-Za-z]))"), "µ"),
               (re.compile("\ufffd(?=[CF](?![A-Za-z]))"), "°"))                   # °C


def _repair_names(path: Path, names: Sequence[str], report: ReadReport) -> list[str]:
    """``names`` without U+FFFD replacement characters: repaired from their unit context
    (``_FFFD_RULES``), any other becomes ``?``; one warning lists what changed."""
    out: list[str] = []
    changed: dict[str, str] = {}
    for n in names:
        if "\ufffd" in n:
            r = n
            for rx, rep in _FFFD_RULES:
                r = rx.sub(rep, r)
            changed[n] = r = r.replace("\ufffd", "?")
            n = r
        out.append(n)
    if changed:
        report.renamed.update(changed)
        log.warning("%s: names in the file hold U+FFFD replacement characters (the original "
                    "bytes were lost before the file was written); repaired from their unit "
                    "context: %s", path, "; ".join(f"{a!r} -> {b!r}" for a, b in changed.items()))
    return out


def _read_csv(path: Path, start: str | int | None, interval_ms: int | None, tz: str | None,
              columns: Sequence[str] | None, na_values: Sequence[str] | None,
              report: ReadReport) -> Recording:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _err(path, f"cannot read: {e}") from None
    raw = _decompress(path, raw)
    text = _decode(path, raw, report)
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise _err(path, "empty file")
    lines = text.split("\n")
    # comment lines before the header (``# station 12``) are blanked: pandas skips blank lines
    head = 0
    while head < len(lines) - 1 and (lines[head].lstrip().startswith("#")
                                     or not lines[head].strip()):
        head += 1
    if head:
        report.comment_lines = sum(ln.lstrip().startswith("#") for ln in lines[:head])
        log.warning("%s: %d comment line(s) before the header skipped", path,
                    report.comment_lines)
        lines[:head] = [""] * head
        text = "\n".join(lines)
    hl = head + 1                   # the header's line number
    sep, dec = _separator(path, lines[head:], report)
    header_fields = next(csv.reader([lines[head]], delimiter=sep))
    cols = [c.strip() for c in header_fields]
    if not any(cols):
        raise _err(path, f"line {hl}: empty header")
    tail = None                     # an empty last column (a trailing separator on every line)
    if len(cols) > 1 and cols[-1] == "" and all(
            ln.rstrip().endswith(sep) for ln in lines[head + 1:] if ln.strip()):
        tail = cols[-1] = "\x00empty"
        log.warning("%s: every line ends with %r: the empty last column is skipped", path, sep)
    for j, c in enumerate(cols):
        if c == "":
            raise _err(path, f"line {hl}: header column {j + 1} is empty")
    cols = _repair_names(path, cols, report)
    if len(set(cols)) != len(cols):
        seen: set[str] = set()
        for c in cols:
            if c in seen:
                raise _err(path, f"line {hl}: duplicate column '{c}' in header")
            seen.add(c)

    # file line number (1-based) of every non-blank data line, in pandas row order
    line_of = np.array([k + 1 for k in range(head + 1, len(lines)) if lines[k] != ""],
                       dtype=np.int64)
    if line_of.size == 0:
        raise _err(path, "no data rows after the header")
    if '"' not in text:
        expected = len(cols) - 1
        counts = np.fromiter((lines[k - 1].count(sep) for k in line_of), dtype=np.int64,
                             count=line_of.size)
        bad = np.flatnonzero(counts != expected)
        if bad.size:
            i = int(bad[0])
            got = int(counts[i]) + 1
            hint = " (truncated row?)" if got < len(cols) else ""
            raise _err(path, f"line {line_of[i]}: expected {len(cols)} fields as in the header, "
                             f"got {got}{hint}")

    lower = [c.lower() for c in cols]
    nas = list(na_values or ())
    sensor_col = next((cols[j] for j, c in enumerate(lower) if c in _LONG_SENSOR_NAMES), None)
    if sensor_col is not None:
        time_col = next((cols[lower.index(n)] for n in _LONG_TIME_NAMES if n in lower), None)
        value_col = cols[lower.index("value")] if "value" in lower else None
        missing = [n for n, c in (("ts", time_col), ("value", value_col)) if c is None]
        if missing:
            raise _err(path, f"line {hl}: long-format CSV (has column '{sensor_col}') is missing "
                             f"column(s) {missing}; expected sensor,ts,value; got {cols}")
        df = _pandas_csv(path, text, cols, {sensor_col: str}, {value_col: nas} if nas else None,
                         sep=sep, decimal=dec)
        return _pivot_long(path, df, sensor_col, time_col, value_col, line_of, interval_ms,
                           tz, columns, report)

    df = _pandas_csv(path, text, cols, {}, {c: nas for c in cols[1:]} if nas else None,
                     sep=sep, decimal=dec)
    if tail is not None:
        df = df.drop(columns=[tail])
        cols, lower = cols[:-1], lower[:-1]
    df, line_of = _skip_units_row(path, df, line_of, report)
    df, cols = _drop_row_numbers(path, df, cols, report)
    df, cols = _calendar_columns(path, df, cols, line_of, report)
    lower = [c.lower() for c in cols]
    has_time = lower[0] in _TIME_NAMES or _looks_like_dates(df[cols[0]])
    if has_time and lower[0] not in _TIME_NAMES:
        log.info("%s: first column '%s' holds dates (e.g. %r): read as the time column", path,
                 cols[0], str(df[cols[0]].iloc[0]))
    if has_time and _time_of_day_column(df, cols):
        df[cols[0]] = df[cols[0]].astype(str).str.strip() + " " + \
            df[cols[1]].astype(str).str.strip()
        log.warning("%s: date column '%s' and time column '%s' read as one timestamp (e.g. "
                    "%r)", path, cols[0], cols[1], df[cols[0]].iloc[0])
        report.date_and_time = (cols[0], cols[1])
        df = df.drop(columns=[cols[1]])
        cols, lower = [cols[0], *cols[2:]], [lower[0], *lower[2:]]
    chosen, exact = _choose_columns(path, cols[1:] if has_time else cols, columns, "column")
    if nas and not has_time and cols[0] in chosen:   # a sensor: its codes count too
        import pandas as pd

        first = df[cols[0]]
        codes = first.astype(str).str.strip().isin([str(x).strip() for x in nas])
        if pd.api.types.is_numeric_dtype(first.dtype):
            codes |= first.isin(pd.to_numeric(pd.Series(nas), errors="coerce").dropna())
        df[cols[0]] = first.mask(codes)
    if has_time:
        ts, naive = _parse_time_column(path, df[cols[0]], cols[0], line_of, tz, report)
    values, sensors, skipped = _numeric_block(path, df, chosen, line_of, strict=sorted(exact))
    if skipped:
        report.skipped_columns = skipped
        log.warning("%s: column%s %s skipped: mostly text, not numbers (--columns chooses the "
                    "sensor columns)", path, "" if len(skipped) == 1 else "s",
                    ", ".join(f"'{c}'" for c in skipped))
    if not sensors:
        raise _err(path, f"no numeric sensor columns (skipped as text: {skipped})")
    if has_time:
        ts, values = _merge_repeated_rows(path, ts, values, line_of, report,
                                          naive and tz is None)
    else:
        ts = _synthetic_times(path, len(df), start, interval_ms,
                              f"wide CSV without a time column (first column '{cols[0]}' is "
                              f"not one of {'/'.join(_TIME_NAMES)})")
    _note_sentinels(path, report, sensors, values)
    return _build(path, timestamps=ts, sensors=sensors, values=values,
                  events=_read_events_sidecar(path),
                  interval_ms=_infer_interval(ts, interval_ms))


def _float_kw(pd: Any) -> dict[str, Any]:
    """pandas >= 3 parses floats exactly by default (and deprecates the option); older pandas
    needs it."""
    return {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


_SEPARATORS = (";", "\t", "|")


def _separator(path: Path, lines: list[str], report: ReadReport) -> tuple[str, str]:
    """The field separator and decimal mark: ``,`` and ``.`` unless the header splits into
    more fields on ``;``, a tab or ``|`` and the first data line splits alike; then numbers
    with a decimal comma (``1,5``) are read as such when no cell has a ``.`` decimal."""
    head = lines[0]
    data = next((ln for ln in lines[1:] if ln.strip()), "")
    best = max(_SEPARATORS, key=head.count)
    if head.count(best) <= head.count(",") or data.count(best) != head.count(best):
        return ",", "."
    cells = [c.strip().strip('"') for ln in lines[1:50] for c in ln.split(best)[1:]]
    comma = sum(bool(re.fullmatch(r"[-+]?\d+,\d+", c)) for c in cells)
    point = sum(bool(re.fullmatch(r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?", c)) for c in cells)
    dec = "," if comma and not point else "."
    report.separator, report.decimal = best, dec
    log.warning("%s: fields separated by %r%s", path, best,
                ", numbers with a decimal comma" if dec == "," else "")
    return best, dec


def _pandas_csv(path: Path, text: str, cols: list[str], dtype: dict[str, Any],
                na_values: dict[str, list[str]] | None = None, sep: str = ",",
                decimal: str = ".") -> pd.DataFrame:
    """The CSV text as a frame (header replaced by ``cols``); ``na_values`` per column are
    read as missing on top of pandas' defaults (empty, NA, NaN, null, ...)."""
    import pandas as pd

    try:
        df = pd.read_csv(io.StringIO(text), header=0, names=cols, dtype=dtype or None,
                         skip_blank_lines=True, skipinitialspace=True, na_values=na_values,
                         sep=sep, decimal=decimal, **_float_kw(pd))
    except (pd.errors.ParserError, ValueError) as e:
        raise _err(path, f"cannot parse CSV: {e}") from None
    return df


def _pivot_long(path: Path, df: pd.DataFrame, sensor_col: str, time_col: str, value_col: str,
                line_of: np.ndarray, interval_ms: int | None, tz: str | None,
                columns: Sequence[str] | None, report: ReadReport) -> Recording:
    """The long layout (one reading a line) as a wide recording. A sensor's reading repeated at
    one time: the later line wins (its last non-empty value), counted in ``report``."""
    import pandas as pd

    s = df[sensor_col]
    nulls = s.isna().to_numpy()
    if nulls.any():
        i = int(np.flatnonzero(nulls)[0])
        raise _err(path, f"line {line_of[i]}: column '{sensor_col}' is empty")
    scodes, uniq = pd.factorize(s.astype(str).str.strip(), sort=False)
    sensors = _repair_names(path, [str(x) for x in uniq], report)
    chosen, _ = _choose_columns(path, sensors, columns, "sensor")
    if len(chosen) != len(sensors):
        remap = np.full(len(sensors), -1, dtype=np.int64)
        remap[[sensors.index(c) for c in chosen]] = np.arange(len(chosen))
        rows = remap[scodes] >= 0
        df, line_of, scodes, sensors = df[rows], line_of[rows], remap[scodes[rows]], chosen
    ts_rows, naive = _parse_time_column(path, df[time_col], time_col, line_of, tz, report,
                                        groups=scodes)
    vals = _numeric_block(path, df, [value_col], line_of, strict=[value_col])[0][:, 0]
    uts, tcodes = np.unique(ts_rows, return_inverse=True)
    n_s = len(sensors)
    key = tcodes.astype(np.int64) * n_s + scodes
    dup = np.flatnonzero(pd.Series(key).duplicated().to_numpy())
    if naive and tz is None:
        _, first_row = np.unique(tcodes, return_index=True)
        _note_local(path, report,
                    _local_dup_hint(ts_rows, dup, lambda i: f"line {line_of[i]}")
                    or _local_gap_hint(uts, lambda i: f"line {line_of[first_row[i]]}"))
    values = np.full((uts.shape[0], n_s), np.nan)
    if dup.size:
        _note_duplicates(path, report, line_of[dup], ts_rows[dup],
                         "a sensor's reading at a time it already has",
                         "the later line of a sensor wins (its last non-empty value)")
        last = pd.Series(vals).groupby(key, sort=False).last()
        k = last.index.to_numpy(np.int64)
        values[k // n_s, k % n_s] = last.to_numpy(np.float64)
    else:
        values[tcodes, scodes] = vals
    _note_sentinels(path, report, sensors, values)
    return _build(path, timestamps=uts, sensors=list(sensors), values=values,
                  events=_read_events_sidecar(path), interval_ms=_infer_interval(uts, interval_ms))


def _write_events_sidecar(rec: Recording, path: Path) -> None:
    side = events_sidecar_path(path)
    if rec.events:
        with side.open("w", encoding="utf-8") as fh:
            for ev in rec.events:
                fh.write(json.dumps(ev, default=_json_default) + "\n")
    elif side.exists():
        side.unlink()


def _write_csv(rec: Recording, path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame(rec.values, columns=pd.Index(rec.sensors, dtype=object))
    df.insert(0, "timestamp", _ms_to_iso(rec.timestamps))
    df.to_csv(path, index=False, na_rep="", lineterminator="\n")
    _write_events_sidecar(rec, path)


def _write_csv_long(rec: Recording, path: Path) -> None:
    import pandas as pd

    n_t, n_s = rec.values.shape
    df = pd.DataFrame({
        "sensor": np.tile(np.array(rec.sensors, dtype=object), n_t),
        "ts": np.repeat(rec.timestamps, n_s),
        "value": rec.values.reshape(-1),
    })
    df.to_csv(path, index=False, na_rep="", lineterminator="\n")
    _write_events_sidecar(rec, path)


# --------------------------------------------------------------------------------------------
# NPZ
# --------------------------------------------------------------------------------------------


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _read_npz(path: Path, start: str | int | None, interval_ms: int | None) -> Recording:
    try:
        with path.open("rb") as fh:  # our own handle: np.load leaks it when parsing fails
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise _err(path, "not an .npz archive (a single .npy array?)")
            with z:
                arrays = {k: z[k] for k in z.files}
    except RecordingError:
        raise
    except FileNotFoundError:
        raise _err(path, "no such file") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise _err(path, f"not a readable .npz archive (truncated or corrupt?): {e}") from None
    if not isinstance(arrays, dict) or not arrays:
        raise _err(path, "empty .npz archive")

    if "timestamps" in arrays and "values" in arrays:
        def opt(k: str) -> np.ndarray | None:
            return arrays[k] if k in arrays else None

        events: list[dict] = []
        if "events_json" in arrays:
            try:
                events = json.loads(str(arrays["events_json"][()]))
            except json.JSONDecodeError as e:
                raise _err(path, f"key 'events_json': invalid JSON: {e}") from None
        iv = interval_ms
        if iv is None and "interval_ms" in arrays:
            iv = int(arrays["interval_ms"][()])
            iv = None if iv <= 0 else iv
        if arrays["values"].ndim == 3:
            return _sensor_channels(path, "values", arrays["values"], arrays,
                                    timestamps=arrays["timestamps"], events=events,
                                    interval_ms=iv)
        if "sensors" in arrays:
            sensors = [str(s) for s in arrays["sensors"].tolist()]
        else:
            sensors = [str(i) for i in range(arrays["values"].shape[-1])]
        return _build(path, timestamps=arrays["timestamps"], sensors=sensors,
                      values=arrays["values"], lat=opt("lat"), lon=opt("lon"),
                      edge_index=opt("edge_index"), edge_weight=opt("edge_weight"),
                      events=events, interval_ms=iv)

    if "data" in arrays:
        data = arrays["data"]
        if data.ndim not in (2, 3):
            raise _err(path, f"key 'data' must be [T, N] or [T, N, C], got shape {data.shape}")
        if "timestamps" in arrays:
            ts = arrays["timestamps"]
            if ts.shape != data.shape[:1]:
                raise _err(path, f"key 'timestamps' has shape {ts.shape}, expected "
                                 f"({data.shape[0]},) as key 'data'")
            _check_monotonic(path, ts, lambda i: f"key 'timestamps' row {i}")
        else:
            ts = _synthetic_times(path, data.shape[0], start, interval_ms,
                                  "npz key 'data' layout")
        return _sensor_channels(path, "data", data, arrays, timestamps=ts,
                                interval_ms=_infer_interval(ts, interval_ms))

    raise _err(path, f"unrecognised .npz layout: keys {sorted(arrays)}; expected "
                     f"'timestamps'+'values' (native) or 'data' (PEMS / SZ-taxi)")


_SENSOR_KEYS = ("sensors", "channels", "lat", "lon", "edge_index", "edge_weight", "adjacency")


def _sensor_channels(path: Path, key: str, data: np.ndarray, extra: dict[str, np.ndarray],
                     **kw: Any) -> Recording:
    """A recording from sensor arrays: ``data`` [T, N] or [T, N, C] and, in ``extra``, the
    optional ``sensors`` [N], ``channels`` [C], ``lat``/``lon`` [N] and a graph over the N
    sensors (``edge_index``/``edge_weight`` or a dense ``adjacency`` [N, N]). C channels
    become N*C series ``"<sensor>/<channel>"`` with positions repeated and the graph expanded
    (``expand_channels``); ``[T, N, 1]`` without ``channels`` is ``[T, N]``."""
    item = "dataset" if key.startswith("dataset") else "key"
    where = key if item == "dataset" else f"key '{key}'"
    if data.ndim not in (2, 3):
        raise _err(path, f"{where} must be [T, N] or [T, N, C], got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise _err(path, f"{where} is not numeric (dtype {data.dtype})")
    n = data.shape[1]

    def names(k: str, count: int, what: str) -> list[str] | None:
        if k not in extra:
            return None
        out = _labels(np.asarray(extra[k]).reshape(-1))
        if len(out) != count:
            raise _err(path, f"{item} '{k}' names {len(out)} {what} but {where} has {count} "
                             f"(shape {data.shape})")
        return out

    sensors = names("sensors", n, "sensors") or [str(i) for i in range(n)]
    channels = names("channels", data.shape[2], "channels") if data.ndim == 3 else None
    if data.ndim == 3 and channels is None:
        channels = [str(c) for c in range(data.shape[2])] if data.shape[2] > 1 else None
        data = data[:, :, 0] if channels is None else data
    pos = {k: np.asarray(extra[k], np.float64) for k in ("lat", "lon") if k in extra}
    for k, v in pos.items():
        if v.shape != (n,):
            raise _err(path, f"{item} '{k}' must have shape ({n},) (one per sensor), got {v.shape}")
    ei, ew = extra.get("edge_index"), extra.get("edge_weight")
    if ei is None and "adjacency" in extra:
        adj = np.asarray(extra["adjacency"], np.float64)
        if adj.shape != (n, n):
            raise _err(path, f"{item} 'adjacency' must be [{n}, {n}] (sensors), got {adj.shape}")
        src, dst = np.nonzero(adj)
        ei, ew = np.stack([src, dst]).astype(np.int64), adj[src, dst]
    if channels is None:
        return _build(path, sensors=sensors, values=data, lat=pos.get("lat"),
                      lon=pos.get("lon"), edge_index=ei, edge_weight=ew, **kw)

    bad = next((c for c in channels if "/" in c or not c), None)
    if bad is not None:
        raise _err(path, f"{item} 'channels': channel name {bad!r} is empty or contains '/'")
    series = [f"{s}/{c}" for s in sensors for c in channels]
    of = np.repeat(np.arange(n), len(channels))
    if ei is not None:
        ei = np.asarray(ei)
        if ei.ndim != 2 or ei.shape[0] != 2 or (ei.size and (
                not np.issubdtype(ei.dtype, np.integer) or ei.min() < 0 or ei.max() >= n)):
            raise _err(path, f"{item} 'edge_index' must be [2, E] integer indices of the {n} "
                             f"sensors, got shape {ei.shape} (dtype {ei.dtype})")
        if ew is not None and np.shape(ew) != (ei.shape[1],):
            raise _err(path, f"{item} 'edge_weight' must have shape ({ei.shape[1]},), got "
                             f"{np.shape(ew)}")
        ei, ew = expand_channels(series, ei, ew, stations=sensors)
    log.info("%s: %d sensors x %d channels read as %d series 'sensor/channel'", path, n,
             len(channels), len(series))
    return _build(path, sensors=series, values=data.reshape(data.shape[0], -1),
                  lat=pos["lat"][of] if "lat" in pos else None,
                  lon=pos["lon"][of] if "lon" in pos else None,
                  edge_index=ei, edge_weight=ew, **kw)


def _write_npz(rec: Recording, path: Path) -> None:
    arrays: dict[str, np.ndarray] = {
        "timestamps": rec.timestamps,
        "values": rec.values,
        "sensors": np.array(rec.sensors, dtype=str) if rec.sensors else np.zeros(0, dtype="U1"),
        "events_json": np.array(json.dumps(rec.events, default=_json_default)),
        "interval_ms": np.array(-1 if rec.interval_ms is None else rec.interval_ms, np.int64),
    }
    for k in ("lat", "lon", "edge_index", "edge_weight"):
        v = getattr(rec, k)
        if v is not None:
            arrays[k] = v
    with path.open("wb") as fh:  # a file object keeps numpy from appending ".npz"
        np.savez_compressed(fh, **arrays)


# --------------------------------------------------------------------------------------------
# HDF5
# --------------------------------------------------------------------------------------------


def _labels(arr: np.ndarray) -> list[str]:
    out = []
    for x in arr.tolist():
        if isinstance(x, bytes):
            out.append(x.decode("utf-8", errors="replace"))
        elif isinstance(x, float) and x.is_integer():
            out.append(str(int(x)))
        else:
            out.append(str(x))
    return out


def _read_h5(path: Path, start: str | int | None, interval_ms: int | None) -> Recording:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except FileNotFoundError:
        raise _err(path, "no such file") from None
    except OSError as e:
        raise _err(path, f"not a readable HDF5 file (truncated or corrupt?): {e}") from None
    try:
        with fh:
            if "df" in fh and isinstance(fh["df"], h5py.Group) and "axis0" in fh["df"]:
                return _read_h5_pandas(path, fh, interval_ms)
            key = "values" if "values" in fh else "data" if "data" in fh else None
            if key is None:
                raise _err(path, f"unrecognised HDF5 layout: top-level keys {sorted(fh.keys())}; "
                                 f"expected group 'df' (pandas fixed) or dataset 'values'/'data'")
            data = np.asarray(fh[key][()])
            if data.ndim not in (2, 3):
                raise _err(path, f"dataset '{key}' must be [T, N] or [T, N, C], got shape "
                                 f"{data.shape}")
            if "timestamps" in fh:
                ts = np.asarray(fh["timestamps"][()])
                if ts.shape != (data.shape[0],):
                    raise _err(path, f"dataset 'timestamps' has shape {ts.shape}, expected "
                                     f"({data.shape[0]},)")
                _check_monotonic(path, ts, lambda i: f"dataset 'timestamps' row {i}")
            else:
                ts = _synthetic_times(path, data.shape[0], start, interval_ms,
                                      f"HDF5 dataset '{key}'")
            extra = {k: np.asarray(fh[k][()]) for k in _SENSOR_KEYS if k in fh}
            return _sensor_channels(path, f"dataset '{key}'", data, extra, timestamps=ts,
                                    interval_ms=_infer_interval(ts, interval_ms))
    except (OSError, KeyError) as e:
        raise _err(path, f"cannot read HDF5 content (truncated or corrupt?): {e}") from None


def _read_h5_pandas(path: Path, fh: h5py.File, interval_ms: int | None) -> Recording:
    g = fh["df"]
    sensors = _labels(np.asarray(g["axis0"][()]))
    if "axis1" not in g:
        raise _err(path, "group 'df' has no 'axis1' (time index)")
    idx = np.asarray(g["axis1"][()])
    if not np.issubdtype(idx.dtype, np.integer) and idx.dtype.kind != "M":
        raise _err(path, f"'df/axis1' must be int64 nanoseconds, got dtype {idx.dtype}")
    ns = idx.astype(np.int64)
    ts = ns // 1_000_000
    n_t, n_s = ns.shape[0], len(sensors)
    block_names = sorted((k for k in g if k.startswith("block") and k.endswith("_values")),
                         key=lambda k: int(k[5:-7]) if k[5:-7].isdigit() else 0)
    if not block_names:
        raise _err(path, "group 'df' has no 'block0_values'")
    values = np.full((n_t, n_s), np.nan)
    col_of = {s: j for j, s in enumerate(sensors)}
    for name in block_names:
        blk = np.asarray(g[name][()])
        items_key = name.replace("_values", "_items")
        items = _labels(np.asarray(g[items_key][()])) if items_key in g else sensors
        if blk.ndim != 2:
            raise _err(path, f"'df/{name}' must be 2-D, got shape {blk.shape}")
        if blk.shape != (n_t, len(items)) and blk.shape == (len(items), n_t):
            blk = blk.T
        if blk.shape != (n_t, len(items)):
            raise _err(path, f"'df/{name}' has shape {blk.shape}, expected ({n_t}, {len(items)})"
                             f" from axis1/items")
        if not (np.issubdtype(blk.dtype, np.number) or blk.dtype == bool):
            raise _err(path, f"'df/{name}' is not numeric (dtype {blk.dtype})")
        try:
            cols = [col_of[s] for s in items]
        except KeyError as e:
            raise _err(path, f"'df/{items_key}' names column {e} not in 'df/axis0'") from None
        values[:, cols] = blk
    _check_monotonic(path, ts, lambda i: f"'df/axis1' row {i}")

    kw: dict[str, Any] = {}
    iv = interval_ms
    if "stfm" in fh:
        extra = fh["stfm"]
        for k in ("lat", "lon", "edge_index", "edge_weight"):
            if k in extra:
                kw[k] = np.asarray(extra[k][()])
        if "events_json" in extra.attrs:
            raw = extra.attrs["events_json"]
            raw = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                kw["events"] = json.loads(raw)
            except json.JSONDecodeError as e:
                raise _err(path, f"'stfm' attribute events_json: invalid JSON: {e}") from None
        if iv is None and "interval_ms" in extra.attrs:
            v = int(extra.attrs["interval_ms"])  # written by us: -1 = irregular (None)
            return _build(path, timestamps=ts, sensors=sensors, values=values,
                          interval_ms=v if v > 0 else None, **kw)
    return _build(path, timestamps=ts, sensors=sensors, values=values,
                  interval_ms=_infer_interval(ts, iv), **kw)


def _write_h5(rec: Recording, path: Path) -> None:
    import h5py

    enc = [s.encode("utf-8") for s in rec.sensors]
    width = max([len(b) for b in enc] + [1])
    labels = np.array(enc, dtype=f"S{width}")
    with h5py.File(path, "w") as fh:
        g = fh.create_group("df")
        for k, v in (("pandas_type", b"frame"), ("pandas_version", b"0.15.2"),
                     ("encoding", b"UTF-8"), ("errors", b"strict"),
                     ("axis0_variety", b"regular"), ("axis1_variety", b"regular"),
                     ("block0_items_variety", b"regular")):
            g.attrs[k] = np.bytes_(v)
        g.attrs["ndim"] = np.int64(2)
        g.attrs["nblocks"] = np.int64(1)
        a0 = g.create_dataset("axis0", data=labels)
        a0.attrs["kind"] = np.bytes_(b"string")
        a1 = g.create_dataset("axis1", data=rec.timestamps.astype(np.int64) * 1_000_000)
        a1.attrs["kind"] = np.bytes_(b"datetime64")
        g.create_dataset("block0_items", data=labels).attrs["kind"] = np.bytes_(b"string")
        bv = g.create_dataset("block0_values", data=rec.values)
        bv.attrs["transposed"] = True
        extra = fh.create_group("stfm")
        for k in ("lat", "lon", "edge_index", "edge_weight"):
            v = getattr(rec, k)
            if v is not None:
                extra.create_dataset(k, data=v)
        extra.attrs["events_json"] = json.dumps(rec.events, default=_json_default)
        extra.attrs["interval_ms"] = np.int64(-1 if rec.interval_ms is None else rec.interval_ms)


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


_COMPRESSED = {"gz": (gzip.decompress, "gzip"), "bz2": (bz2.decompress, "bzip2"),
               "xz": (lzma.decompress, "xz")}


def _decompress(path: Path, raw: bytes) -> bytes:
    """The bytes of a ``.csv.gz`` / ``.bz2`` / ``.xz`` file uncompressed (others as they are);
    a damaged archive is an error that names the file."""
    codec = _COMPRESSED.get(path.suffix.lower().lstrip("."))
    if codec is None:
        return raw
    try:
        return codec[0](raw)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as e:   # BadGzipFile: OSError
        raise _err(path, f"cannot decompress ({codec[1]}): {e}") from None


def _resolve_fmt(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        key = fmt.lower().lstrip(".")
        if key not in _FORMATS:
            raise _err(path, f"unknown format {fmt!r} (expected one of {sorted(_FORMATS)})")
        return _FORMATS[key]
    ext = path.suffix.lower().lstrip(".")
    if ext in ("csv", "npz", "h5", "hdf5"):
        return _FORMATS[ext]
    if ext in _COMPRESSED and Path(path.stem).suffix.lower() == ".csv":
        return "csv"
    raise _err(path, f"unknown extension '{path.suffix}' (expected .csv, .npz, .h5 or .hdf5, "
                     f"or a CSV compressed as .csv.gz, .csv.bz2 or .csv.xz)")


def read_recording(path: str | Path, *, fmt: str | None = None, start: str | int | None = None,
                   interval_ms: int | None = None, timezone: str | None = None,
                   columns: str | Sequence[str] | None = None,
                   na_values: str | Sequence[str] | None = None) -> Recording:
    """Read a recording; format from ``fmt`` or the extension (.csv, .npz, .h5/.hdf5).

    ``start`` (ISO string, naive = UTC, or epoch ms) and ``interval_ms`` give the time axis of
    layouts without timestamps (``start`` is ignored where the file has them); ``interval_ms``
    also overrides the inferred (median) interval. Integer time columns are epoch ms; date
    strings without a UTC offset are local times of ``timezone`` (an IANA name; None: read as
    UTC with a warning). ``columns`` (names or globs, a list or comma-separated) picks the
    sensors; ``na_values`` (likewise) are read as missing. CSV header names are stripped of
    surrounding whitespace. What the reader resolved (duplicates, skipped columns, suspected
    missing-value codes) is in the result's ``read_report`` (module docstring: the rules).
    """
    p = Path(path)
    kind = _resolve_fmt(p, fmt)
    if interval_ms is not None and interval_ms <= 0:
        raise _err(p, f"--interval-ms must be positive, got {interval_ms}")
    if not p.exists():
        raise _err(p, "no such file")
    if p.is_dir():
        raise _err(p, "is a directory")
    if p.stat().st_size == 0:
        raise _err(p, "empty file")
    cols, nas = _split_list(columns), _split_list(na_values)
    report = ReadReport()
    if kind in ("csv", "csv-long"):
        rec = _read_csv(p, start, interval_ms, timezone, cols, nas, report)
    else:
        rec = _read_npz(p, start, interval_ms) if kind == "npz" else _read_h5(p, start,
                                                                              interval_ms)
        rec = _binary_options(p, rec, cols, nas)
    rec.read_report = report
    return rec


def _split_list(items: str | Sequence[str] | None) -> list[str] | None:
    """``"a, b*"`` or ``["a", "b*"]`` -> ``["a", "b*"]`` (blanks dropped); None stays None."""
    if items is None:
        return None
    parts = items.split(",") if isinstance(items, str) else list(items)
    return [t.strip() for t in parts if t.strip()] or None


def _number(text: str) -> float | None:
    """``text`` as a float, or None where it is not a number (a text code)."""
    try:
        return float(text)
    except ValueError:
        return None


def _binary_options(path: Path, rec: Recording, columns: list[str] | None,
                    na_values: list[str] | None) -> Recording:
    """``na_values`` (the numeric ones) and ``columns`` for an .npz/.h5 recording: the chosen
    sensors keep their positions, the graph edges between them and their events."""
    codes = [v for v in (_number(t) for t in na_values or ()) if v is not None]
    if codes:
        rec.values = np.where(np.isin(rec.values, codes), np.nan, rec.values)
    chosen, _ = _choose_columns(path, rec.sensors, columns, "sensor")
    if len(chosen) == rec.n_sensors:
        return rec
    pos = {s: j for j, s in enumerate(rec.sensors)}
    keep = np.array([pos[c] for c in chosen], dtype=np.int64)
    remap = np.full(rec.n_sensors, -1, dtype=np.int64)
    remap[keep] = np.arange(keep.size)
    ei, ew = rec.edge_index, rec.edge_weight
    if ei is not None:
        inside = (remap[ei[0]] >= 0) & (remap[ei[1]] >= 0)
        ei = remap[ei[:, inside]]
        ew = None if ew is None else ew[inside]
    picked = set(chosen)
    return _build(path, timestamps=rec.timestamps, sensors=chosen, values=rec.values[:, keep],
                  lat=None if rec.lat is None else rec.lat[keep],
                  lon=None if rec.lon is None else rec.lon[keep], edge_index=ei,
                  edge_weight=ew, interval_ms=rec.interval_ms,
                  events=[e for e in rec.events if e.get("sensor") in (None, *picked)])


def write_recording(rec: Recording, path: str | Path, *, fmt: str | None = None) -> Path:
    """Write ``rec``; npz and h5 are lossless, csv keeps time/sensors/values (+ events sidecar).

    ``fmt`` is one of ``csv``, ``csv-long``, ``npz``, ``h5``/``hdf5`` (default: extension).
    Returns the path written.
    """
    p = Path(path)
    kind = _resolve_fmt(p, fmt)
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        _write_csv(rec, p)
    elif kind == "csv-long":
        _write_csv_long(rec, p)
    elif kind == "npz":
        _write_npz(rec, p)
    else:
        _write_h5(rec, p)
    return p


# --------------------------------------------------------------------------------------------
# graphs
# --------------------------------------------------------------------------------------------


def stations_of(series: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The sensors behind series ids, in order of first appearance, and each series' index
    among them: ``"s/c"`` is a channel of sensor ``s``; an id without ``/`` is its own."""
    index: dict[str, int] = {}
    of = np.fromiter((index.setdefault(split_series(x)[0], len(index)) for x in series),
                     np.int64, len(series))
    return list(index), of


def expand_channels(series: Sequence[str], edge_index: np.ndarray,
                    edge_weight: np.ndarray | None = None, *,
                    stations: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A graph over sensors (stations) as a graph over their channel series.

    ``edge_index`` [2, E] indexes ``stations`` (default: ``stations_of(series)``, the sensors
    in order of first appearance). An edge ``a -> b`` (weight w, default 1) becomes
    ``a/c -> b/c`` for every channel c of both (a single-channel sensor, an id without ``/``,
    meets every channel of the other end), and the channels of one sensor are linked to each
    other (weight 1.0, both directions) so that they inform each other. A sensor's self-loop
    stays a self-loop per channel. Without any ``/`` in ``series`` the graph is unchanged.
    Returns ``(edge_index [2, E'] int64, edge_weight [E'] float64)`` over ``series``.
    """
    names, of = stations_of(series)
    if stations is not None:
        pos = {s: i for i, s in enumerate(stations)}
        missing = [s for s in names if s not in pos]
        if missing:
            raise ValueError(f"sensor {missing[0]!r} of the series is not a node of the graph")
        of = np.array([pos[n] for n in names], np.int64)[of] if len(of) else of
    ei = np.asarray(edge_index, np.int64).reshape(2, -1)
    ew = (np.ones(ei.shape[1]) if edge_weight is None
          else np.asarray(edge_weight, np.float64).reshape(-1))
    members: dict[int, list[tuple[int, str | None]]] = {}
    for i, (st, x) in enumerate(zip(of.tolist(), series, strict=True)):
        members.setdefault(st, []).append((i, split_series(x)[1]))
    src: list[int] = []
    dst: list[int] = []
    w: list[float] = []
    for a, b, wt in zip(ei[0].tolist(), ei[1].tolist(), ew.tolist(), strict=True):
        for i, ci in members.get(a, ()):
            for j, cj in members.get(b, ()):
                if (i == j) if a == b else (ci == cj or ci is None or cj is None):
                    src.append(i)
                    dst.append(j)
                    w.append(wt)
    for group in members.values():
        for i, _ in group:
            for j, _ in group:
                if i != j:
                    src.append(i)
                    dst.append(j)
                    w.append(1.0)
    return np.array([src, dst], np.int64).reshape(2, -1), np.array(w, np.float64)


def load_graph(path: str | Path, sensors: list[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(edge_index [2, E] int64, edge_weight [E] float64)`` from a graph CSV.

    Either a dense N x N adjacency without header (nonzero = edge from row to column, kept as
    in the file, self-loops included) or an edge list with header ``src,dst[,weight]`` whose
    ids are mapped through ``sensors`` (or are 0-based indices when ``sensors`` is None).

    When ``sensors`` are channel series ``"s/c"`` and the file's nodes are their sensors (an
    N x N adjacency in order of the sensors' first appearance in ``sensors``, or an edge list
    naming sensors), the graph is expanded to the series (``expand_channels``).
    """
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise _err(p, f"cannot read: {e}") from None
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise _err(p, "empty file")
    first = next(csv.reader([text.split("\n", 1)[0]]))
    try:
        [float(x) for x in first]
        has_header = False
    except ValueError:
        has_header = True
    if has_header:
        return _load_edge_list(p, text, [c.strip().lower() for c in first], sensors)

    lines = [ln for ln in text.split("\n") if ln.strip()]
    rows = []
    for k, ln in enumerate(lines, start=1):
        parts = ln.split(",")
        if len(parts) != len(lines):
            raise _err(p, f"line {k}: dense adjacency must be square ({len(lines)} rows), "
                          f"got {len(parts)} columns")
        rows.append(parts)
    try:
        adj = np.array(rows, dtype=np.float64)
    except ValueError:
        for k, parts in enumerate(rows, start=1):
            for j, x in enumerate(parts, start=1):
                try:
                    float(x)
                except ValueError:
                    raise _err(p, f"line {k}: column {j} is not a number: {x!r}") from None
        raise
    if np.isnan(adj).any():
        k, j = np.argwhere(np.isnan(adj))[0]
        raise _err(p, f"line {k + 1}: column {j + 1} is NaN")
    src, dst = np.nonzero(adj)
    ei, ew = np.stack([src, dst]).astype(np.int64), adj[src, dst].astype(np.float64)
    if sensors is None or adj.shape[0] == len(sensors):
        return ei, ew
    stations = stations_of(sensors)[0]
    if adj.shape[0] != len(stations):
        also = (f" ({len(stations)} sensors with channels)"
                if len(stations) != len(sensors) else "")
        raise _err(p, f"adjacency is {adj.shape[0]} x {adj.shape[0]} but {len(sensors)} sensors "
                      f"were given{also}")
    return _expanded(p, sensors, ei, ew, stations)


def _load_edge_list(p: Path, text: str, header: list[str], sensors: list[str] | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    if "src" not in header or "dst" not in header:
        raise _err(p, f"line 1: edge list needs columns src,dst[,weight]; got {header}")
    df = pd.read_csv(io.StringIO(text), dtype=str, skipinitialspace=True, keep_default_na=False)
    df.columns = header
    n = len(df)
    ids = {col: [raw.strip() for raw in df[col].tolist()] for col in ("src", "dst")}
    index = {s: i for i, s in enumerate(sensors)} if sensors is not None else None
    stations: list[str] | None = None
    if sensors is not None:
        names = stations_of(sensors)[0]
        named = {k for col in ids.values() for k in col}
        if not named <= index.keys() and names != list(sensors) and named & set(names):
            stations = names                     # the file's nodes are the series' sensors
            index = {s: i for i, s in enumerate(names)}
    ends = np.empty((2, n), dtype=np.int64)
    for r, col in enumerate(("src", "dst")):
        for i, key in enumerate(ids[col]):
            if index is not None:
                if key not in index:
                    raise _err(p, f"line {i + 2}: {col} id {key!r} is not a known sensor")
                ends[r, i] = index[key]
            else:
                try:
                    ends[r, i] = int(key)
                except ValueError:
                    raise _err(p, f"line {i + 2}: {col} {key!r} is not an integer node index "
                                  f"(ids are mapped only to a recording's sensors)") from None
                if ends[r, i] < 0:
                    raise _err(p, f"line {i + 2}: {col} {key!r} is negative")
    if "weight" in header:
        w = pd.to_numeric(df["weight"], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(np.isnan(w))
        if bad.size:
            i = int(bad[0])
            raise _err(p, f"line {i + 2}: weight is not a number: {df['weight'].iloc[i]!r}")
    else:
        w = np.ones(n)
    if stations is not None and sensors is not None:
        return _expanded(p, sensors, ends, w, stations)
    return ends, w


def _expanded(p: Path, series: Sequence[str], ei: np.ndarray, ew: np.ndarray,
              stations: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``expand_channels`` for a graph file, said in the log."""
    out = expand_channels(series, ei, ew, stations=stations)
    log.info("%s: graph over %d sensors (%d edges) expanded to their %d channel series "
             "(%d edges)", p, len(stations), ei.shape[1], len(series), out[0].shape[1])
    return out


def _haversine_km(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    dla = la[:, None] - la[None, :]
    dlo = lo[:, None] - lo[None, :]
    h = np.sin(dla / 2) ** 2 + np.cos(la)[:, None] * np.cos(la)[None, :] * np.sin(dlo / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def gaussian_kernel_graph(lat: np.ndarray, lon: np.ndarray, *, k: int = 8,
                          sigma: float | None = None, threshold: float = 0.1
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric kNN graph with weights ``exp(-d^2 / sigma^2)`` (d = great-circle km).

    ``sigma`` defaults to the std of all pairwise distances (as in DCRNN). An edge exists when
    either end is among the other's ``k`` nearest; weights below ``threshold`` are dropped; no
    self-loops. Returns ``(edge_index [2, E] int64, edge_weight [E] float64)``.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if lat.shape != lon.shape or lat.ndim != 1:
        raise ValueError(f"lat and lon must be 1-D of equal length, got {lat.shape}, {lon.shape}")
    n = lat.shape[0]
    k = min(int(k), n - 1)
    if n < 2 or k < 1:
        return np.zeros((2, 0), dtype=np.int64), np.zeros(0, dtype=np.float64)
    d = _haversine_km(lat, lon)
    if sigma is None:
        off = d[~np.eye(n, dtype=bool)]
        sigma = float(off.std())
        if not sigma > 0:
            sigma = 1.0
    dd = d.copy()
    np.fill_diagonal(dd, np.inf)
    nn = np.argpartition(dd, k - 1, axis=1)[:, :k]
    mask = np.zeros((n, n), dtype=bool)
    mask[np.repeat(np.arange(n), k), nn.reshape(-1)] = True
    mask |= mask.T
    np.fill_diagonal(mask, False)
    w = np.where(mask, np.exp(-(d ** 2) / sigma ** 2), 0.0)
    w[w < threshold] = 0.0
    src, dst = np.nonzero(w)
    return np.stack([src, dst]).astype(np.int64), w[src, dst]
