"""Real sensor files without hand cleaning (issue 31): repeated timestamps, text columns,
missing-value codes, non-UTF-8 headers and local time across summer-time switches."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from connectors.recordings import RecordingError, read_recording, write_recording

LOGGER = "connectors.recordings"
H = 3_600_000


def _ms(iso: str) -> int:
    return int(pd.Timestamp(iso).value // 1_000_000)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---------------------------------------------------------------------------- duplicates


def test_repeated_timestamps_merge_last_non_empty_wins_and_are_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "dup.csv"
    p.write_text("date,a,b\n"
                 "2020-01-01 00:00:00,1,10\n"
                 "2020-01-01 01:00:00,2,20\n"
                 "2020-01-01 01:00:00,3,\n"      # line 4: a -> 3, b keeps 20 (empty cell)
                 "2020-01-01 02:00:00,4,40\n"
                 "2020-01-01 02:00:00,5,50\n"    # line 6
                 "2020-01-01 02:00:00,6,60\n")   # line 7: last wins
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = read_recording(p, timezone="UTC")
    np.testing.assert_array_equal(r.timestamps, _ms("2020-01-01") + np.arange(3) * H)
    np.testing.assert_array_equal(r.values, [[1, 10], [3, 20], [6, 60]])
    assert r.read_report is not None
    assert r.read_report.duplicates == 3 and r.read_report.duplicate_lines == [4, 6, 7]
    assert r.read_report.as_dict()["duplicate_timestamps"] == 3
    said = [w for w in _warnings(caplog) if "duplicate timestamp" in w]
    assert len(said) == 1 and "3 duplicate timestamps" in said[0] and "line 4" in said[0]
    assert "last non-empty reading of each column wins" in said[0]


def test_long_layout_repeated_reading_later_line_wins(tmp_path: Path) -> None:
    p = tmp_path / "long.csv"
    p.write_text("sensor,ts,value\na,1000,1\nb,1000,2\na,1000,3\na,2000,4\n")
    r = read_recording(p)
    np.testing.assert_array_equal(r.values, [[3, 2], [4, np.nan]])
    assert r.read_report is not None and r.read_report.duplicates == 1
    assert r.read_report.duplicate_lines == [4]


def test_time_going_back_is_still_an_error(tmp_path: Path) -> None:
    p = tmp_path / "back.csv"
    p.write_text("date,a\n2020-01-01 00:00:00,1\n2020-01-01 05:00:00,2\n"
                 "2020-01-01 03:00:00,3\n")
    with pytest.raises(RecordingError, match=r"back\.csv: line 4: timestamp .* is earlier "
                                             r"than line 3") as ei:
        read_recording(p)
    assert "--timezone" not in str(ei.value)     # not a summer-time switch
    p.write_text("date,a\n2020-06-01 03:00,1\n2020-06-01 04:00,2\n2020-06-01 03:00,3\n")
    with pytest.raises(RecordingError, match=r"line 4: .* is earlier than line 3.*pass "
                                             r"--timezone ZONE"):
        read_recording(p)                        # back exactly one hour: local time?


# ---------------------------------------------------------------------------- columns


def _status_csv(tmp_path: Path) -> Path:
    p = tmp_path / "status.csv"
    p.write_text("date,temp,status,flow\n"
                 "2020-01-01 00:00:00,1.5,OK,10\n"
                 "2020-01-01 00:10:00,1.6,OK,11\n"
                 "2020-01-01 00:20:00,1.7,FAIL,12\n")
    return p


def test_a_text_column_is_skipped_with_one_warning(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = read_recording(_status_csv(tmp_path), timezone="UTC")
    assert r.sensors == ["temp", "flow"]
    np.testing.assert_array_equal(r.values, [[1.5, 10], [1.6, 11], [1.7, 12]])
    assert r.read_report is not None and r.read_report.skipped_columns == ["status"]
    said = [w for w in _warnings(caplog) if "skipped" in w]
    assert len(said) == 1 and "'status'" in said[0] and "--columns" in said[0]


def test_columns_choose_the_sensors_by_name_or_glob(tmp_path: Path) -> None:
    p = _status_csv(tmp_path)
    assert read_recording(p, timezone="UTC", columns="flow").sensors == ["flow"]
    assert read_recording(p, timezone="UTC", columns=["t*", "fl?w"]).sensors == ["temp", "flow"]
    with pytest.raises(RecordingError, match=r"--columns: 'nope' matches no column \(there "
                                             r"are: 'temp', 'status', 'flow'\)"):
        read_recording(p, timezone="UTC", columns="temp,nope")
    with pytest.raises(RecordingError, match=r"line 2: column 'status' is not a number: 'OK'"):
        read_recording(p, timezone="UTC", columns="status")    # named exactly: no skipping


def test_a_numeric_column_with_a_bad_cell_is_an_error_that_names_na_values(
        tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("date,a\n2020-01-01 00:00,1\n2020-01-01 00:10,ERR\n2020-01-01 00:20,3\n")
    with pytest.raises(RecordingError, match=r"bad\.csv: line 3: column 'a' is not a number: "
                                             r"'ERR' \(--na-values ERR reads"):
        read_recording(p, timezone="UTC")
    r = read_recording(p, timezone="UTC", na_values="ERR")
    assert np.array_equal(r.values[:, 0], [1, np.nan, 3], equal_nan=True)


def test_columns_pick_sensors_of_long_and_binary_files(tmp_path: Path) -> None:
    p = tmp_path / "long.csv"
    p.write_text("sensor,ts,value\na,1000,1\nb,1000,2\nc,1000,3\n")
    assert read_recording(p, columns="a,c").sensors == ["a", "c"]
    r = read_recording(p, columns="b")
    np.testing.assert_array_equal(r.values, [[2]])
    npz = write_recording(read_recording(p), tmp_path / "x.npz")
    assert read_recording(npz, columns="?").sensors == ["a", "b", "c"]
    assert read_recording(npz, columns="c").sensors == ["c"]


# ---------------------------------------------------------------------------- missing codes


def _sentinel_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    v = 400 + rng.normal(0, 5, 60).round(2)
    v[[7, 30, 41]] = -9999
    rows = [f"2020-01-01 {i // 6:02d}:{i % 6 * 10:02d}:00,{x},{i}" for i, x in enumerate(v)]
    p = tmp_path / "co2.csv"
    p.write_text("date,OT,n\n" + "\n".join(rows) + "\n")
    return p


def test_a_repeated_far_value_is_warned_about_not_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = read_recording(_sentinel_csv(tmp_path), timezone="UTC")
    assert (r.values[:, 0] == -9999).sum() == 3           # read as a number
    assert r.read_report is not None and r.read_report.sentinels == [("OT", -9999.0, 3)]
    said = [w for w in _warnings(caplog) if "missing-value code" in w]
    assert len(said) == 1, said
    assert "-9999" in said[0] and "'OT' (3 times)" in said[0]
    assert "--na-values -9999" in said[0]


def test_na_values_read_the_code_as_missing(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = read_recording(_sentinel_csv(tmp_path), timezone="UTC", na_values="-9999,NA")
    assert np.isnan(r.values[:, 0]).sum() == 3 and not np.isnan(r.values[:, 1]).any()
    assert r.read_report is not None and r.read_report.sentinels == []
    assert not _warnings(caplog)


def test_ordinary_extremes_are_not_taken_for_codes(tmp_path: Path) -> None:
    p = tmp_path / "rain.csv"
    vals = [0.0] * 40 + [0.1, 0.2, 0.3, 11.2, 0.5, 0.0, 1.0, 2.0, 0.0, 0.4]
    p.write_text("ts,rain\n" + "".join(f"{i * 1000},{v}\n" for i, v in enumerate(vals)))
    r = read_recording(p)
    assert r.read_report is not None and r.read_report.sentinels == []


# ---------------------------------------------------------------------------- encoding


def test_cp1252_header_is_decoded(tmp_path: Path) -> None:
    p = tmp_path / "w.csv"
    p.write_bytes("date,SWDR (W/m²),PAR (µmol/m²/s),T (°C)\r\n"
                  "2020-01-01 00:00:00,1,2,3\r\n".encode("cp1252"))
    r = read_recording(p, timezone="UTC")
    assert r.sensors == ["SWDR (W/m²)", "PAR (µmol/m²/s)", "T (°C)"]
    assert r.read_report is not None and r.read_report.encoding == "cp1252"


def test_replacement_characters_stored_in_the_header_are_repaired(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "w.csv"
    p.write_text("date,SWDR (W/m\ufffd),PAR (\ufffdmol/m\ufffd/s),T (\ufffdC),x\ufffdy\n"
                 "2020-01-01 00:00:00,1,2,3,4\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = read_recording(p, timezone="UTC")
    assert r.sensors == ["SWDR (W/m²)", "PAR (µmol/m²/s)", "T (°C)", "x?y"]
    assert not any("\ufffd" in s for s in r.sensors)
    assert any("U+FFFD" in w for w in _warnings(caplog))


# ---------------------------------------------------------------------------- local time


def _local_csv(tmp_path: Path, start: str, periods: int, skip: str | None = None,
               repeat: str | None = None) -> Path:
    """10-min wall-clock times from ``start`` (as a local logger writes them): the hour from
    ``skip`` left out (March), or the hour from ``repeat`` written twice (October)."""
    wall = list(pd.date_range(start, periods=periods, freq="10min"))
    one_hour = pd.Timedelta(hours=1)
    if skip:
        wall = [w for w in wall if not pd.Timestamp(skip) <= w < pd.Timestamp(skip) + one_hour]
    if repeat:
        r0 = pd.Timestamp(repeat)
        hour = [w for w in wall if r0 <= w < r0 + one_hour]
        k = wall.index(hour[-1]) + 1
        wall = wall[:k] + hour + wall[k:]
    p = tmp_path / "local.csv"
    p.write_text("date,a\n" + "".join(f"{w:%Y-%m-%d %H:%M:%S},{i}\n"
                                      for i, w in enumerate(wall)))
    return p


def test_october_repeated_hour_in_berlin_becomes_strictly_increasing_utc(
        tmp_path: Path) -> None:
    p = _local_csv(tmp_path, "2025-10-26 00:00", 24, repeat="2025-10-26 02:00")
    r = read_recording(p, timezone="Europe/Berlin")
    assert r.n_steps == 30
    assert np.all(np.diff(r.timestamps) == 600_000)         # 10 min everywhere, no gap
    assert r.timestamps[0] == _ms("2025-10-25T22:00Z")      # 00:00 CEST = UTC+2
    assert r.timestamps[-1] == _ms("2025-10-26T02:50Z")     # 03:50 CET = UTC+1
    np.testing.assert_array_equal(r.values[:, 0], np.arange(30))   # file order kept


def test_october_read_without_timezone_names_it(tmp_path: Path) -> None:
    p = _local_csv(tmp_path, "2025-10-26 00:00", 24, repeat="2025-10-26 02:00")
    with pytest.raises(RecordingError) as ei:
        read_recording(p)
    msg = str(ei.value)
    assert "line 20: timestamp 2025-10-26T02:00:00.000Z is earlier than line 19" in msg
    assert "--timezone Europe/Berlin" in msg


def test_october_hourly_repeat_without_timezone_is_warned(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "hourly.csv"
    p.write_text("date,a\n2025-10-26 01:00,1\n2025-10-26 02:00,2\n2025-10-26 02:00,3\n"
                 "2025-10-26 03:00,4\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = read_recording(p)
    assert r.read_report is not None and r.read_report.looks_local is not None
    assert "--timezone Europe/Berlin" in r.read_report.looks_local
    assert any("--timezone Europe/Berlin" in w for w in _warnings(caplog))
    berlin = read_recording(p, timezone="Europe/Berlin")
    np.testing.assert_array_equal(np.diff(berlin.timestamps), [H, H, H])
    assert berlin.read_report is not None and berlin.read_report.duplicates == 0


def test_march_missing_hour_in_berlin_has_the_right_offsets(tmp_path: Path) -> None:
    p = _local_csv(tmp_path, "2025-03-30 00:00", 30, skip="2025-03-30 02:00")
    r = read_recording(p, timezone="Europe/Berlin")
    assert r.n_steps == 24
    assert np.all(np.diff(r.timestamps) == 600_000)         # the skipped hour never existed
    assert r.timestamps[0] == _ms("2025-03-29T23:00Z")      # 00:00 CET = UTC+1
    assert r.timestamps[-1] == _ms("2025-03-30T02:50Z")     # 04:50 CEST = UTC+2


def test_march_read_without_timezone_warns_naming_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _local_csv(tmp_path, "2025-03-30 00:00", 30, skip="2025-03-30 02:00")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = read_recording(p)
    said = _warnings(caplog)
    assert sum("no UTC offset" in w and "read as UTC" in w for w in said) == 2, said
    assert r.read_report is not None and r.read_report.naive_as_utc
    assert r.read_report.looks_local is not None
    assert "line 14" in r.read_report.looks_local                  # 03:00 after 01:50
    assert "--timezone Europe/Berlin" in r.read_report.looks_local


def test_a_time_that_does_not_exist_in_the_zone_is_an_error(tmp_path: Path) -> None:
    p = _local_csv(tmp_path, "2025-03-30 01:00", 18)          # 02:00..02:50 never happened
    with pytest.raises(RecordingError, match=r"local\.csv: line 8: column 'date': "
                                             r"2025-03-30 02:00:00 does not exist in "
                                             r"Europe/Berlin"):
        read_recording(p, timezone="Europe/Berlin")
    with pytest.raises(RecordingError, match=r"--timezone: unknown time zone 'Mars/Base'"):
        read_recording(p, timezone="Mars/Base")
    once = tmp_path / "once.csv"                  # 02:00 of the October switch, written once
    once.write_text("date,a\n2025-10-26 01:00,1\n2025-10-26 02:00,2\n2025-10-26 03:00,3\n")
    with pytest.raises(RecordingError, match=r"once\.csv: line 3: column 'date': 2025-10-26 "
                                             r"02:00:00 occurs twice in Europe/Berlin"):
        read_recording(once, timezone="Europe/Berlin")


def test_naive_as_utc_warns_once_and_explicit_utc_is_quiet(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "n.csv"
    p.write_text("date,a\n2020-01-01 00:00,1\n2020-01-01 01:00,2\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        read_recording(p)
    assert len(_warnings(caplog)) == 1 and "--timezone" in _warnings(caplog)[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        read_recording(p, timezone="UTC")
        read_recording(tmp_path / "n.csv", timezone="Europe/Berlin")
        offset = tmp_path / "o.csv"
        offset.write_text("date,a\n2020-01-01T00:00:00Z,1\n")
        read_recording(offset)
    assert not _warnings(caplog)


def test_long_layout_local_time_is_inferred_per_sensor(tmp_path: Path) -> None:
    wall = ["2025-10-26 01:00", "2025-10-26 02:00", "2025-10-26 02:00", "2025-10-26 03:00"]
    rows = [f"{s},{w},{k}" for k, w in enumerate(wall) for s in ("a", "b")]
    p = tmp_path / "long.csv"
    p.write_text("sensor,ts,value\n" + "\n".join(rows) + "\n")
    r = read_recording(p, timezone="Europe/Berlin")
    assert r.sensors == ["a", "b"] and r.n_steps == 4
    np.testing.assert_array_equal(np.diff(r.timestamps), [H, H, H])
    np.testing.assert_array_equal(r.values, [[0, 0], [1, 1], [2, 2], [3, 3]])


# ---------------------------------------------------------------------------- shared data


def test_weather_csv_reads_with_the_defaults(shared_data: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    p = shared_data / "weather" / "weather.csv"
    if not p.exists():
        pytest.skip(f"{p} is absent from the shared data folder")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = read_recording(p)
    rep = r.read_report
    assert rep is not None
    assert rep.duplicates == 1 and rep.duplicate_lines == [19046]
    assert r.n_steps == 52_695 and r.n_sensors == 21
    assert "SWDR (W/m²)" in r.sensors and "PAR (µmol/m²/s)" in r.sensors
    assert not any("\ufffd" in s for s in r.sensors)
    assert {(c, v) for c, v, _ in rep.sentinels} == {
        ("OT", -9999.0), ("max. PAR (µmol/m²/s)", -9999.0), ("wv (m/s)", -9999.0)}
    assert any("--na-values -9999" in w for w in _warnings(caplog))
    clean = read_recording(p, na_values="-9999", timezone="UTC")
    assert np.nanmin(clean.values[:, clean.sensors.index("OT")]) > 0
    assert clean.read_report is not None and clean.read_report.sentinels == []
