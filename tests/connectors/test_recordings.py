"""Recording container, readers/writers, bad-input errors and graph helpers."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from connectors.recordings import (
    Recording,
    RecordingError,
    events_sidecar_path,
    expand_channels,
    gaussian_kernel_graph,
    load_graph,
    read_recording,
    write_recording,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z


def _need_data(*parts: str) -> Path:
    p = DATA.joinpath(*parts)
    if not DATA.is_dir():
        pytest.skip(f"shared data folder {DATA} is absent")
    if not p.exists():
        pytest.skip(f"{p} is absent from the shared data folder")
    return p


@pytest.fixture()
def rec() -> Recording:
    rng = np.random.default_rng(42)
    t, n = 50, 4
    values = rng.normal(50, 10, (t, n)) * 10.0 ** rng.integers(-8, 8, (t, n))
    values[3, 1] = np.nan
    values[10:14, 2] = np.nan
    values[7, 0] = 0.1  # classic non-representable decimal
    values[8, 0] = -0.0
    return Recording(
        timestamps=T0 + np.arange(t, dtype=np.int64) * 300_000,
        sensors=["a", "b 2", "773869", "ü-x"],
        values=values,
        lat=np.array([34.0, 34.1, 34.2, 34.3]),
        lon=np.array([-118.0, -118.1, -118.2, -118.3]),
        edge_index=np.array([[0, 1, 2], [1, 2, 3]], dtype=np.int64),
        edge_weight=np.array([0.5, 0.25, 1.0]),
        events=[{"type": "incident", "ts": T0 + 600_000, "sensor": "b 2",
                 "attrs": {"duration_steps": 7}},
                {"type": "maintenance", "ts": T0}],
        interval_ms=300_000,
    )


# ---------------------------------------------------------------------------- container


def test_recording_validation_errors() -> None:
    ts = np.array([0, 1, 2], dtype=np.int64)
    with pytest.raises(RecordingError, match="duplicate sensor id 'x'"):
        Recording(ts, ["x", "x"], np.zeros((3, 2)))
    with pytest.raises(RecordingError, match="3 rows but there are 2 timestamps"):
        Recording(ts[:2], ["x"], np.zeros((3, 1)))
    with pytest.raises(RecordingError, match="row 2 has duplicate timestamp"):
        Recording(np.array([0, 5, 5]), ["x"], np.zeros((3, 1)))
    with pytest.raises(RecordingError, match="row 1 has decreasing"):
        Recording(np.array([0, -5, 7]), ["x"], np.zeros((3, 1)))
    with pytest.raises(RecordingError, match="integer epoch ms"):
        Recording(np.array([0.0, 1.0, 2.0]), ["x"], np.zeros((3, 1)))
    with pytest.raises(RecordingError, match="outside"):
        Recording(ts, ["x"], np.zeros((3, 1)), edge_index=np.array([[0], [1]]))
    with pytest.raises(RecordingError, match="event 0 has no integer 'ts'"):
        Recording(ts, ["x"], np.zeros((3, 1)), events=[{"type": "a", "ts": "soon"}])


def test_recording_accessors(rec: Recording) -> None:
    assert rec.n_sensors == 4 and rec.n_steps == 50
    assert rec.values.dtype == np.float64 and rec.timestamps.dtype == np.int64

    readings = list(rec.iter_readings())
    assert len(readings) == 200
    assert readings[0] == ("a", T0, rec.values[0, 0])
    assert readings[4][:2] == ("a", T0 + 300_000)  # timestamp order, then sensor order
    assert readings[3 * 4 + 1] == ("b 2", T0 + 3 * 300_000, None)
    present = list(rec.iter_readings(skip_missing=True))
    assert len(present) == 200 - 5 and all(v is not None for _, _, v in present)

    assert [e["ts"] for e in rec.events_sorted()] == [T0, T0 + 600_000]

    head, tail = rec.slice_rows(0, 2), rec.slice_rows(2, None)
    assert head.n_steps == 2 and tail.n_steps == 48
    np.testing.assert_array_equal(tail.values, rec.values[2:])
    assert [e["type"] for e in head.events] == ["maintenance"]
    assert [e["type"] for e in tail.events] == ["incident"]
    assert rec.slice_rows(-3, None).timestamps[0] == rec.timestamps[47]
    assert rec.slice_rows(5, 5).n_steps == 0
    tail.values[0, 0] = 1e9  # copies, not views
    assert rec.values[2, 0] != 1e9


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", [".npz", ".h5", ".hdf5"])
def test_lossless_round_trip(rec: Recording, tmp_path: Path, ext: str) -> None:
    path = write_recording(rec, tmp_path / f"r{ext}")
    back = read_recording(path)
    assert back.equals(rec)
    assert back.events == rec.events and back.interval_ms == 300_000


def test_npz_round_trip_irregular_and_no_graph(tmp_path: Path) -> None:
    r = Recording(np.array([0, 10, 35]), ["x"], np.array([[1.0], [np.nan], [3.0]]))
    for name in ("a.npz", "a.h5"):
        back = read_recording(write_recording(r, tmp_path / name))
        assert back.equals(r) and back.interval_ms is None and back.edge_index is None


def test_fmt_override_writes_exact_path(rec: Recording, tmp_path: Path) -> None:
    p = write_recording(rec, tmp_path / "blob.bin", fmt="npz")
    assert p.exists() and not (tmp_path / "blob.bin.npz").exists()
    assert read_recording(p, fmt="npz").equals(rec)


def test_csv_wide_round_trip(rec: Recording, tmp_path: Path) -> None:
    path = write_recording(rec, tmp_path / "wide.csv")
    header = path.read_text().splitlines()[0]
    assert header == "timestamp,a,b 2,773869,ü-x"
    assert path.read_text().splitlines()[1].startswith("2026-01-05T00:00:00Z,")
    back = read_recording(path)
    np.testing.assert_array_equal(back.timestamps, rec.timestamps)
    assert back.sensors == rec.sensors
    # exact, bit for bit (NaN positions too)
    assert np.array_equal(back.values, rec.values, equal_nan=True)
    assert back.values[7, 0] == 0.1
    assert back.events == rec.events  # via the sidecar
    assert events_sidecar_path(path).name == "wide.events.jsonl"
    assert back.interval_ms == 300_000
    assert back.lat is None and back.edge_index is None  # not kept in CSV (documented)


def test_csv_ms_timestamps_round_trip(tmp_path: Path) -> None:
    r = Recording(np.array([T0 + 1, T0 + 250, T0 + 1999]), ["s"], np.array([[1.5], [2.5], [3]]))
    back = read_recording(write_recording(r, tmp_path / "ms.csv"))
    np.testing.assert_array_equal(back.timestamps, r.timestamps)
    assert back.interval_ms == 999  # median diff


def test_csv_sidecar_removed_when_no_events(rec: Recording, tmp_path: Path) -> None:
    path = write_recording(rec, tmp_path / "w.csv")
    rec.events = []
    write_recording(rec, path)
    assert not events_sidecar_path(path).exists()
    assert read_recording(path).events == []


def test_csv_long_round_trip(rec: Recording, tmp_path: Path) -> None:
    path = write_recording(rec, tmp_path / "long.csv", fmt="csv-long")
    assert path.read_text().splitlines()[0] == "sensor,ts,value"
    back = read_recording(path)
    np.testing.assert_array_equal(back.timestamps, rec.timestamps)
    assert back.sensors == rec.sensors
    assert np.array_equal(back.values, rec.values, equal_nan=True)


def test_csv_long_hand_written_iso_unsorted(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    p.write_text(
        "Sensor,timestamp,value\n"
        "b,2026-01-05T00:05:00Z,2.5\n"
        "a,2026-01-05T00:00:00Z,1\n"
        "a,2026-01-05T01:05:00+01:00,3\n"  # same instant as 00:05Z
        "007,2026-01-05 00:00:00,\n"  # naive = UTC, empty value = NaN
    )
    r = read_recording(p)
    assert r.sensors == ["b", "a", "007"]  # first appearance, ids kept as strings
    np.testing.assert_array_equal(r.timestamps, [T0, T0 + 300_000])
    expected = np.array([[np.nan, 1.0, np.nan], [2.5, 3.0, np.nan]])
    assert np.array_equal(r.values, expected, equal_nan=True)
    assert r.interval_ms == 300_000


def test_csv_wide_epoch_ms_crlf_and_cp1252_header(tmp_path: Path) -> None:
    p = tmp_path / "w.csv"
    p.write_bytes(b"TS,SWDR (W/m\xb2),x\r\n1000,1.5,\r\n2000,2,3\r\n4000,,4\r\n")
    r = read_recording(p)
    assert r.sensors == ["SWDR (W/m\u00b2)", "x"]     # not UTF-8: read as cp1252
    np.testing.assert_array_equal(r.timestamps, [1000, 2000, 4000])
    assert np.array_equal(r.values, [[1.5, np.nan], [2, 3], [np.nan, 4]], equal_nan=True)
    assert r.interval_ms == 1500  # median of 1000, 2000
    assert read_recording(p, interval_ms=1000).interval_ms == 1000


def test_csv_without_time_needs_start_and_interval(tmp_path: Path) -> None:
    p = tmp_path / "speed.csv"
    p.write_text("773869,767541\n64.375,67.625\n62.5,68.5\n,1\n")
    with pytest.raises(RecordingError) as ei:
        read_recording(p)
    msg = str(ei.value)
    assert str(p) in msg and "pass --start" in msg and "--interval-ms" in msg  # CLI flags
    assert "start=" not in msg and "interval_ms=" not in msg
    with pytest.raises(RecordingError, match="--interval-ms"):
        read_recording(p, start="2012-03-01")
    with pytest.raises(RecordingError, match="--interval-ms must be positive, got 0"):
        read_recording(p, start="2012-03-01", interval_ms=0)
    with pytest.raises(RecordingError, match="cannot parse --start 'yesterday'"):
        read_recording(p, start="yesterday", interval_ms=300_000)
    r = read_recording(p, start="2012-03-01T00:00:00", interval_ms=300_000)
    assert r.sensors == ["773869", "767541"]
    np.testing.assert_array_equal(r.timestamps, 1_330_560_000_000 + np.arange(3) * 300_000)
    assert r.values[0, 0] == 64.375 and np.isnan(r.values[2, 0])
    r2 = read_recording(p, start=1_330_560_000_000, interval_ms=300_000)
    np.testing.assert_array_equal(r2.timestamps, r.timestamps)


# ---------------------------------------------------------------------------- foreign layouts


def _write_pandas_fixed(path: Path, labels: np.ndarray, ns: np.ndarray, block: np.ndarray
                        ) -> None:
    """What pandas ``DataFrame.to_hdf(format='fixed')`` leaves on disk (METR-LA style)."""
    with h5py.File(path, "w") as f:
        g = f.create_group("df")
        g.attrs["pandas_type"] = np.bytes_(b"frame")
        g.attrs["nblocks"] = 1
        g.create_dataset("axis0", data=labels)
        g.create_dataset("axis1", data=ns)
        g.create_dataset("block0_items", data=labels)
        g.create_dataset("block0_values", data=block).attrs["transposed"] = True


def test_pandas_fixed_h5_metr_la_layout(tmp_path: Path) -> None:
    p = tmp_path / "metr-la.h5"
    ns = (1_330_560_000_000 + np.arange(6, dtype=np.int64) * 300_000) * 1_000_000
    block = np.arange(18, dtype=np.float64).reshape(6, 3)
    block[2, 1] = 0.0
    _write_pandas_fixed(p, np.array([b"773869", b"767541", b"767542"]), ns, block)
    r = read_recording(p)
    assert r.sensors == ["773869", "767541", "767542"]
    np.testing.assert_array_equal(r.timestamps, ns // 1_000_000)
    np.testing.assert_array_equal(r.values, block)
    assert r.interval_ms == 300_000


def test_pandas_fixed_h5_int_labels_pems_bay(tmp_path: Path) -> None:
    p = tmp_path / "pems-bay.h5"
    ns = np.arange(4, dtype=np.int64) * 300_000 * 1_000_000
    _write_pandas_fixed(p, np.array([400001, 400017]), ns, np.ones((4, 2)))
    r = read_recording(p)
    assert r.sensors == ["400001", "400017"] and r.values.shape == (4, 2)


def test_plain_h5_values_with_and_without_timestamps(tmp_path: Path) -> None:
    p = tmp_path / "plain.h5"
    with h5py.File(p, "w") as f:
        f["values"] = np.eye(3)
        f["timestamps"] = np.array([10, 20, 30], dtype=np.int64)
    r = read_recording(p)
    np.testing.assert_array_equal(r.timestamps, [10, 20, 30])
    assert r.sensors == ["0", "1", "2"] and r.interval_ms == 10
    q = tmp_path / "plain2.hdf5"
    with h5py.File(q, "w") as f:
        f["data"] = np.ones((5, 2, 3))
    with pytest.raises(RecordingError, match="pass --start"):
        read_recording(q)
    r = read_recording(q, start=0, interval_ms=60_000)   # 2 sensors x 3 channels
    assert r.values.shape == (5, 6) and r.timestamps[-1] == 240_000
    assert r.sensors == ["0/0", "0/1", "0/2", "1/0", "1/1", "1/2"]


def test_pems_style_npz_reads_every_channel(tmp_path: Path) -> None:
    p = tmp_path / "pems04.npz"
    data = np.stack([np.full((7, 3), 1.0), np.full((7, 3), 2.0)], axis=-1)
    np.savez(p, data=data)
    with pytest.raises(RecordingError) as ei:
        read_recording(p)
    assert str(p) in str(ei.value) and "--start" in str(ei.value)
    r = read_recording(p, start="2018-01-01", interval_ms=300_000)
    assert r.values.shape == (7, 6) and r.interval_ms == 300_000
    assert r.sensors == ["0/0", "0/1", "1/0", "1/1", "2/0", "2/1"]
    np.testing.assert_array_equal(r.values[0], [1.0, 2.0] * 3)
    one = tmp_path / "one-channel.npz"          # [T, N, 1] is a plain [T, N] (SZ-taxi)
    np.savez(one, data=data[:, :, :1])
    assert read_recording(one, start=0, interval_ms=1).sensors == ["0", "1", "2"]


def _station_npz(path: Path, **extra: np.ndarray) -> np.ndarray:
    """3 stations x 2 channels over 6 rows (channel 1 = 10 x channel 0 + station), NaN holes."""
    t, n = 6, 3
    base = np.arange(t * n, dtype=np.float64).reshape(t, n)
    data = np.stack([base, 10 * base + np.arange(n)], axis=-1)
    data[1, 0, 1] = np.nan
    data[4, 2, :] = np.nan
    np.savez(path, data=data, timestamps=T0 + np.arange(t, dtype=np.int64) * 60_000, **extra)
    return data


def test_npz_sensor_channels_become_named_series_sharing_the_graph(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "multi.npz"
    data = _station_npz(p, sensors=np.array(["north", "mid", "south"]),
                        channels=np.array(["flow", "speed"]),
                        lat=np.array([34.0, 34.1, 34.2]), lon=np.array([-118.0, -118.1, -118.2]),
                        edge_index=np.array([[0, 1], [1, 2]]), edge_weight=np.array([0.5, 0.25]))
    with caplog.at_level("INFO", logger="connectors.recordings"):
        r = read_recording(p)
    assert "3 sensors x 2 channels read as 6 series" in caplog.text
    assert r.sensors == ["north/flow", "north/speed", "mid/flow", "mid/speed", "south/flow",
                         "south/speed"]
    np.testing.assert_array_equal(r.values, data.reshape(6, 6))      # NaN where missing
    assert r.interval_ms == 60_000 and r.timestamps[0] == T0
    np.testing.assert_array_equal(r.lat, [34.0, 34.0, 34.1, 34.1, 34.2, 34.2])
    np.testing.assert_array_equal(r.lon, [-118.0, -118.0, -118.1, -118.1, -118.2, -118.2])
    # 2 station edges x 2 channels + 3 stations x 2 ordered channel pairs
    assert r.edge_index is not None and r.edge_weight is not None
    assert r.edge_index.shape == (2, 2 * 2 + 3 * 2)
    edges = {(r.sensors[a], r.sensors[b]): w for a, b, w in
             zip(*r.edge_index.tolist(), r.edge_weight.tolist(), strict=True)}
    assert edges[("north/flow", "mid/flow")] == edges[("north/speed", "mid/speed")] == 0.5
    assert edges[("mid/speed", "south/speed")] == 0.25
    assert edges[("north/flow", "north/speed")] == edges[("south/speed", "south/flow")] == 1.0
    assert ("north/flow", "mid/speed") not in edges and ("mid/flow", "north/flow") not in edges


def test_npz_default_names_dense_adjacency_and_native_3d_values(tmp_path: Path) -> None:
    p = tmp_path / "adj.npz"
    _station_npz(p, adjacency=np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    r = read_recording(p)
    assert r.sensors == ["0/0", "0/1", "1/0", "1/1", "2/0", "2/1"] and r.lat is None
    # the self-loop and the edge 0 -> 1 per channel, plus the 3 x 2 channel links
    assert r.edge_index is not None and r.edge_index.shape == (2, 2 + 2 + 6)
    assert [r.edge_weight[k] for k in range(4)] == [1.0, 1.0, 2.0, 2.0]
    np.testing.assert_array_equal(r.edge_index[:, :4], [[0, 1, 0, 1], [0, 1, 2, 3]])

    native = tmp_path / "native.npz"
    values = np.arange(24, dtype=np.float64).reshape(4, 3, 2)
    np.savez(native, timestamps=np.arange(4, dtype=np.int64) * 1000, values=values,
             sensors=np.array(["a", "b", "c"]), channels=np.array(["x", "y"]))
    n = read_recording(native)
    assert n.sensors == ["a/x", "a/y", "b/x", "b/y", "c/x", "c/y"] and n.edge_index is None
    np.testing.assert_array_equal(n.values, values.reshape(4, 6))
    out = tmp_path / "again.npz"      # the flat series written back read the same
    assert read_recording(write_recording(n, out)).equals(n)

    bad = tmp_path / "bad.npz"
    _station_npz(bad, channels=np.array(["x", "y", "z"]))
    with pytest.raises(RecordingError, match=r"key 'channels' names 3 channels but key 'data' "
                                             r"has 2"):
        read_recording(bad)
    slash = tmp_path / "slash.npz"
    _station_npz(slash, channels=np.array(["x", "y/z"]))
    with pytest.raises(RecordingError, match="channel name 'y/z' is empty or contains '/'"):
        read_recording(slash)
    far = tmp_path / "far.npz"
    _station_npz(far, edge_index=np.array([[0], [3]]))
    with pytest.raises(RecordingError, match="'edge_index' must be .* indices of the 3 sensors"):
        read_recording(far)


def test_wide_csv_with_sensor_channel_columns(tmp_path: Path) -> None:
    p = tmp_path / "wide.csv"
    p.write_text("timestamp,a/flow,a/speed,b\n2026-01-05T00:00:00Z,1,2,3\n"
                 "2026-01-05T00:05:00Z,4,,6\n")
    r = read_recording(p)
    assert r.sensors == ["a/flow", "a/speed", "b"] and np.isnan(r.values[1, 1])
    graph = tmp_path / "stations.csv"
    graph.write_text("src,dst\na,b\n")
    ei, ew = load_graph(graph, r.sensors)     # the single-channel b meets both of a's
    assert {(r.sensors[s], r.sensors[d]) for s, d in ei.T.tolist()} == {
        ("a/flow", "b"), ("a/speed", "b"), ("a/flow", "a/speed"),
        ("a/speed", "a/flow")}
    np.testing.assert_array_equal(ew, 1.0)


# ---------------------------------------------------------------------------- bad input


def _good_csv() -> str:
    return "date,a,b\n2020-01-01 00:00:00,1,2\n2020-01-01 01:00:00,3,4\n2020-01-01 02:00:00,5,6\n"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.csv", "", "empty file"),
        ("blank.csv", "\n\n", "empty file"),
        ("header_only.csv", "date,a,b\n", "no data rows"),
        ("truncated.csv", _good_csv()[:-4], "line 4: expected 3 fields as in the header, got 2"),
        ("extra.csv", _good_csv() + "2020-01-01 03:00:00,1,2,3\n", "line 5: expected 3 fields"),
        ("nonnum.csv", _good_csv().replace(",4\n", ",abc\n"),
         "line 3: column 'b' is not a number: 'abc'"),
        ("backwards.csv", _good_csv().replace("02:00:00", "00:30:00"),
         "line 4: timestamp 2020-01-01T00:30:00.000Z is earlier than line 3"),
        ("badtime.csv", _good_csv().replace("2020-01-01 01:00:00", "yesterday"),
         "line 3: column 'date' is not a timestamp: 'yesterday'"),
        ("emptytime.csv", _good_csv().replace("2020-01-01 01:00:00", ""),
         "line 3: column 'date' has an empty timestamp"),
        ("long_novalue.csv", "sensor,ts\na,1\n", "missing column(s) ['value']"),
        ("long_nonnum.csv", "sensor,ts,value\na,1,x\n", "line 2: column 'value' is not a number"),
        ("dupcol.csv", "date,a,a\n2020-01-01,1,2\n", "line 1: duplicate column 'a'"),
    ],
)
def test_bad_csv_raises_with_file_and_place(tmp_path: Path, name: str, content: str,
                                            expected: str) -> None:
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(RecordingError) as ei:
        read_recording(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: "), msg
    assert expected in msg, msg


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "data.parquet"
    p.write_text("x")
    with pytest.raises(RecordingError, match=r"data\.parquet: unknown extension '\.parquet'"):
        read_recording(p)
    with pytest.raises(RecordingError, match="unknown format 'xlsx'"):
        read_recording(p, fmt="xlsx")
    with pytest.raises(RecordingError, match=r"nope\.csv: no such file"):
        read_recording(tmp_path / "nope.csv")


@pytest.mark.parametrize("ext", [".npz", ".h5"])
def test_truncated_binary_files(rec: Recording, tmp_path: Path, ext: str) -> None:
    full = write_recording(rec, tmp_path / f"full{ext}").read_bytes()
    p = tmp_path / f"cut{ext}"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(RecordingError) as ei:
        read_recording(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: ") and "truncated or corrupt" in msg, msg


def test_unrecognised_binary_layouts(tmp_path: Path) -> None:
    p = tmp_path / "odd.npz"
    np.savez(p, foo=np.ones(3))
    with pytest.raises(RecordingError, match=r"odd\.npz: unrecognised \.npz layout: keys"):
        read_recording(p)
    single = tmp_path / "single.npz"
    with single.open("wb") as fh:
        np.save(fh, np.ones(3))
    with pytest.raises(RecordingError, match=r"single\.npz: not an \.npz archive"):
        read_recording(single)
    q = tmp_path / "odd.h5"
    with h5py.File(q, "w") as f:
        f["foo"] = np.ones(3)
    with pytest.raises(RecordingError, match=r"odd\.h5: unrecognised HDF5 layout"):
        read_recording(q)
    s = tmp_path / "stamps.h5"
    with h5py.File(s, "w") as f:
        f["values"] = np.ones((3, 1))
        f["timestamps"] = np.array([1, 2, 2])
    with pytest.raises(RecordingError, match=r"stamps\.h5: dataset 'timestamps' row 2: duplicate"):
        read_recording(s)


# ---------------------------------------------------------------------------- graphs


def test_load_graph_dense_and_edge_list(tmp_path: Path) -> None:
    dense = tmp_path / "adj.csv"
    dense.write_text("1,0.5,0\n0,1,0\n0.25,0,0\n")
    ei, ew = load_graph(dense)
    np.testing.assert_array_equal(ei, [[0, 0, 1, 2], [0, 1, 1, 0]])
    np.testing.assert_array_equal(ew, [1, 0.5, 1, 0.25])
    with pytest.raises(RecordingError, match="3 x 3 but 2 sensors"):
        load_graph(dense, ["a", "b"])

    el = tmp_path / "edges.csv"
    el.write_text("src,dst,weight\nb,c,0.5\nc,a,2\n")
    ei, ew = load_graph(el, ["a", "b", "c"])
    np.testing.assert_array_equal(ei, [[1, 2], [2, 0]])
    np.testing.assert_array_equal(ew, [0.5, 2.0])
    with pytest.raises(RecordingError, match=r"edges\.csv: line 3: dst id 'a' is not a known"):
        load_graph(el, ["b", "c"])
    with pytest.raises(RecordingError, match="not an integer node index"):
        load_graph(el)

    bad = tmp_path / "bad.csv"
    bad.write_text("1,0\n0,x\n")
    with pytest.raises(RecordingError, match=r"bad\.csv: line 2: column 2 is not a number"):
        load_graph(bad)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,0\n0\n")
    with pytest.raises(RecordingError, match=r"ragged\.csv: line 2: .*square"):
        load_graph(ragged)


def test_load_graph_expands_a_sensor_graph_to_channel_series(tmp_path: Path) -> None:
    series = ["a/x", "a/y", "b/x", "b/y", "c/x"]           # c has channel x only
    dense = tmp_path / "adj.csv"
    dense.write_text("0,0.5,0\n0,0,2\n0,0,0\n")          # a -> b (0.5), b -> c (2)
    ei, ew = load_graph(dense, series)
    got = sorted(zip(ei[0].tolist(), ei[1].tolist(), ew.tolist(), strict=True))
    assert got == sorted([(0, 2, 0.5), (1, 3, 0.5), (2, 4, 2.0),     # same channel only
                          (0, 1, 1.0), (1, 0, 1.0), (2, 3, 1.0), (3, 2, 1.0)])
    el = tmp_path / "edges.csv"
    el.write_text("src,dst,weight\na,b,0.5\nb,c,2\n")
    ei2, ew2 = load_graph(el, series)
    assert sorted(zip(ei2[0].tolist(), ei2[1].tolist(), ew2.tolist(), strict=True)) == got
    # an edge list over the series themselves, and plain sensors, are taken as they are
    flat = tmp_path / "series.csv"
    flat.write_text("src,dst\na/x,c/x\n")
    np.testing.assert_array_equal(load_graph(flat, series)[0], [[0], [4]])
    np.testing.assert_array_equal(load_graph(el, ["a", "b", "c"])[0], [[0, 1], [1, 2]])
    with pytest.raises(RecordingError, match=r"3 x 3 but 4 sensors were given \(2 sensors"):
        load_graph(dense, ["a/x", "a/y", "b/x", "b/y"])
    with pytest.raises(RecordingError, match="dst id 'c' is not a known sensor"):
        load_graph(el, ["a/x", "b/x"])
    ei3, ew3 = expand_channels(["s"], np.zeros((2, 0), np.int64))   # nothing to expand
    assert ei3.shape == (2, 0) and ew3.shape == (0,)


def test_gaussian_kernel_graph_properties() -> None:
    rng = np.random.default_rng(1)
    lat = 34.05 + rng.uniform(-0.09, 0.09, 40)
    lon = -118.25 + rng.uniform(-0.1, 0.1, 40)
    ei, ew = gaussian_kernel_graph(lat, lon, k=5)
    assert ei.dtype == np.int64 and ew.dtype == np.float64 and ei.shape == (2, ew.shape[0])
    assert not np.any(ei[0] == ei[1])  # no self-loops
    assert np.all(ew >= 0.1) and np.all(ew <= 1.0)
    w = np.zeros((40, 40))
    w[ei[0], ei[1]] = ew
    np.testing.assert_array_equal(w, w.T)  # symmetric
    # without a threshold every node keeps at least its k nearest neighbours
    ei0, _ = gaussian_kernel_graph(lat, lon, k=5, threshold=0.0)
    assert np.bincount(ei0[0], minlength=40).min() >= 5
    # the nearest neighbour of node 0 is connected with the largest weight of its row
    d = (lat - lat[0]) ** 2 + ((lon - lon[0]) * np.cos(np.radians(34.05))) ** 2
    d[0] = np.inf
    assert w[0].argmax() == d.argmin()
    # explicit sigma: tiny sigma kills all edges through the threshold
    assert gaussian_kernel_graph(lat, lon, k=5, sigma=1e-3)[0].shape == (2, 0)
    assert gaussian_kernel_graph(lat[:1], lon[:1])[0].shape == (2, 0)


# ---------------------------------------------------------------------------- shared data


def test_ett_files_load() -> None:
    p = _need_data("ett", "ETTh1.csv")
    r = read_recording(p)
    assert r.values.shape == (17420, 7)
    assert r.sensors == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert r.interval_ms == 3_600_000
    assert r.timestamps[0] == 1_467_331_200_000  # 2016-07-01 00:00 UTC
    assert np.all(np.diff(r.timestamps) == 3_600_000)
    assert r.values[0, 0] == 5.827000141143799 and not np.isnan(r.values).any()


def test_ettm1_loads() -> None:
    r = read_recording(_need_data("ett", "ETTm1.csv"))
    assert r.values.shape == (69680, 7) and r.interval_ms == 900_000


def test_exchange_rate_crlf_slash_dates() -> None:
    r = read_recording(_need_data("exchange_rate", "exchange_rate.csv"))
    assert r.values.shape == (7588, 8) and r.interval_ms == 86_400_000
    assert r.sensors[0] == "0" and r.sensors[-1] == "OT"


def test_weather_duplicate_timestamp_is_merged_and_counted() -> None:
    p = _need_data("weather", "weather.csv")
    r = read_recording(p)           # test_messy_files: the other rules on this file
    assert r.read_report is not None and r.read_report.duplicate_lines == [19046]


def test_los_loop_speed_and_graph() -> None:
    p = _need_data("los_loop", "los_speed.csv")
    with pytest.raises(RecordingError, match="--start"):
        read_recording(p)
    r = read_recording(p, start="2012-03-01T00:00:00", interval_ms=300_000)
    assert r.values.shape == (2016, 207) and r.sensors[0] == "773869"
    assert r.timestamps[-1] == 1_330_560_000_000 + 2015 * 300_000
    assert np.nanmin(r.values) >= 1 and np.nanmax(r.values) <= 70
    ei, ew = load_graph(_need_data("los_loop", "los_adj.csv"), r.sensors)
    assert ei.shape == (2, 2833) and ew.max() == 1.0
    w = np.zeros((207, 207))
    w[ei[0], ei[1]] = ew
    np.testing.assert_array_equal(w, w.T)


def test_sz_taxi_npz_and_directed_graph() -> None:
    p = _need_data("sz_taxi", "speeds.npz")
    r = read_recording(p, start="2015-01-01", interval_ms=900_000)
    assert r.values.shape == (2976, 156)
    ei, ew = load_graph(_need_data("sz_taxi", "adjacency.csv"), r.sensors)
    assert ei.shape == (2, 532) and np.all(ew == 1.0)


def test_csv_naive_times_follow_the_timezone(tmp_path) -> None:
    p = tmp_path / "local.csv"
    p.write_text("time,a\n2026-01-10 08:00,1.0\n2026-01-10 09:00,2.0\n")
    utc = read_recording(p)
    ny = read_recording(p, timezone="America/New_York")
    assert int(ny.timestamps[0]) - int(utc.timestamps[0]) == 5 * 3_600_000   # EST = UTC-5
    assert ny.interval_ms == 3_600_000


@pytest.mark.parametrize("ext", ["gz", "bz2", "xz"])
def test_a_compressed_csv_reads_as_the_csv(rec: Recording, tmp_path: Path, ext: str) -> None:
    import bz2
    import gzip
    import lzma

    plain = write_recording(rec, tmp_path / "w.csv")
    packed = tmp_path / f"w.csv.{ext}"
    packed.write_bytes({"gz": gzip, "bz2": bz2, "xz": lzma}[ext].compress(plain.read_bytes()))
    back = read_recording(packed)
    np.testing.assert_array_equal(back.timestamps, rec.timestamps)
    assert back.sensors == rec.sensors and back.interval_ms == rec.interval_ms
    assert np.array_equal(back.values, rec.values, equal_nan=True)
    broken = tmp_path / f"b.csv.{ext}"
    broken.write_bytes(b"not compressed at all")
    with pytest.raises(ValueError, match=rf"b\.csv\.{ext}: cannot decompress"):
        read_recording(broken)
    with pytest.raises(ValueError, match=r"unknown extension '\.gz'"):
        read_recording(tmp_path / "w.npz.gz")


def test_monthly_dates_get_a_calendar_month_grid(tmp_path: Path) -> None:
    from connectors.spacing import MONTH_MS

    p = tmp_path / "m.csv"
    months = np.arange("2000-01", "2007-01", dtype="datetime64[M]").astype("datetime64[D]")
    p.write_text("date,T1\n" + "".join(f"{d},{i}\n" for i, d in enumerate(months)))
    assert read_recording(p).interval_ms == MONTH_MS



def test_semicolons_and_decimal_commas(tmp_path: Path) -> None:
    p = tmp_path / "de.csv"
    p.write_text("Datum;Temperatur;Druck\n" + "".join(
        f"{d:02d}.03.2021;{d},25;-1{d},5\n" for d in range(1, 20)))
    r = read_recording(p)
    assert r.sensors == ["Temperatur", "Druck"]          # 'Datum' is the time column
    assert str(r.timestamps[0].astype("datetime64[ms]")) == "2021-03-01T00:00:00.000"
    assert r.interval_ms == 86_400_000
    np.testing.assert_array_equal(r.values[:2], [[1.25, -11.5], [2.25, -12.5]])
    said = r.read_report.as_dict()
    assert said["separator"] == ";" and said["decimal"] == "," and said["day_first"] is True
    tab = tmp_path / "t.csv"
    tab.write_text("time\ta\n2020-01-01T00:00Z\t1.5\n2020-01-01T01:00Z\t2.5\n")
    r = read_recording(tab)
    assert r.sensors == ["a"] and r.values.ravel().tolist() == [1.5, 2.5]
    assert r.read_report.as_dict() == {"separator": "\t"}


@pytest.mark.parametrize(("scale", "unit"), [(1, "s"), (1_000_000, "us"),
                                             (1_000_000_000, "ns")])
def test_epoch_seconds_micro_and_nanoseconds_are_told_apart(tmp_path: Path, scale: int,
                                                              unit: str) -> None:
    p = tmp_path / "e.csv"
    secs = 1_577_836_800 + 3_600 * np.arange(6)
    p.write_text("ts,a\n" + "".join(f"{t * scale},{i}\n" for i, t in enumerate(secs)))
    r = read_recording(p)
    np.testing.assert_array_equal(r.timestamps, secs * 1000)
    assert r.interval_ms == 3_600_000 and r.read_report.epoch_unit == unit
    f = tmp_path / "f.csv"                                  # fractional seconds
    f.write_text("ts,a\n1577836800.25,1\n1577836801.75,2\n")
    np.testing.assert_array_equal(read_recording(f).timestamps,
                                  [1_577_836_800_250, 1_577_836_801_750])


def test_day_first_dates_are_told_apart_from_month_first(tmp_path: Path) -> None:
    def read(rows: str):
        p = tmp_path / "d.csv"
        p.write_text("date,a\n" + rows)
        r = read_recording(p)
        return (r.timestamps.astype("datetime64[ms]").astype("datetime64[D]").astype(str).tolist(),
                r.read_report)

    days, rep = read("".join(f"{d:02d}/01/2020,{d}\n" for d in range(1, 20)))
    assert days[:2] == ["2020-01-01", "2020-01-02"] and days[12] == "2020-01-13"
    assert rep.day_first is True
    days, rep = read("".join(f"01/{d:02d}/2020,{d}\n" for d in range(1, 20)))
    assert days[12] == "2020-01-13" and rep.day_first is False
    # every row fits both orders: only day first makes the times increase
    days, rep = read("05/01/2020,1\n12/01/2020,2\n03/02/2020,3\n")
    assert days == ["2020-01-05", "2020-01-12", "2020-02-03"] and rep.day_first is True


def test_what_spreadsheets_and_loggers_add_around_the_data(tmp_path: Path) -> None:
    """Comment lines before the header, a units row under it, a trailing separator on every
    line, date and time in two columns, digit groups: read, each said in the report; errors
    still name the file's own line numbers."""
    p = tmp_path / "logger.csv"
    p.write_text("# station 12\n# exported 2020-01-05\ndate,time,temp,count,\n,,degC,n,\n"
                 + "".join(f"2020-01-0{d},{h:02d}:00,{d + h / 10},\"1,2{h}0\",\n"
                           for d in (1, 2) for h in range(3)))
    r = read_recording(p)
    assert r.sensors == ["temp", "count"] and r.interval_ms == 3_600_000
    assert str(r.timestamps[4].astype("datetime64[ms]")) == "2020-01-02T01:00:00.000"
    np.testing.assert_allclose(r.values[:2], [[1.0, 1200.0], [1.1, 1210.0]])
    said = r.read_report.as_dict()
    assert said["comment_lines"] == 2 and said["units"] == {"temp": "degC", "count": "n"}
    assert said["date_and_time_columns"] == ["date", "time"]
    bad = tmp_path / "bad.csv"
    bad.write_text("# c\ndate,temp\n2020-01-01 00:00,1.5\n2020-01-01 01:00,x\n")
    with pytest.raises(ValueError, match=r"line 4: column 'temp' is not a number: 'x'"):
        read_recording(bad)


def test_a_time_spread_over_year_month_day_hour_columns(tmp_path: Path) -> None:
    """The layout of many station files (the Beijing multi-site air-quality set): a row
    number, then year, month, day, hour, then readings and text columns."""
    from connectors.spacing import YEAR_MS

    p = tmp_path / "station.csv"
    p.write_text("No,year,month,day,hour,PM2.5,TEMP,wd,station\n" + "".join(
        f"{i + 1},2013,3,{1 + i // 24},{i % 24},{10 + i},{-1.5 + i / 10},NE,Aotizhongxin\n"
        for i in range(48)))
    r = read_recording(p)
    assert r.sensors == ["PM2.5", "TEMP"]            # not No, year, month, day or hour
    assert r.interval_ms == 3_600_000 and r.n_steps == 48
    assert str(r.timestamps[25].astype("datetime64[ms]")) == "2013-03-02T01:00:00.000"
    said = r.read_report.as_dict()
    assert said["calendar_columns"] == ["year", "month", "day", "hour"]
    assert said["row_numbers_column"] == "No"
    yearly = tmp_path / "gdp.csv"                    # year,value: yearly data
    yearly.write_text("year,gdp\n" + "".join(f"{y},{y - 1989}\n" for y in range(1990, 2000)))
    r = read_recording(yearly)
    assert r.sensors == ["gdp"] and r.interval_ms == YEAR_MS
    assert str(r.timestamps[2].astype("datetime64[ms]")) == "1992-01-01T00:00:00.000"
    bad = tmp_path / "bad.csv"
    bad.write_text("year,month,v\n2013,1,1\n2013,x,2\n")
    with pytest.raises(ValueError, match=r"line 3: column 'month' is not a whole number"):
        read_recording(bad)
