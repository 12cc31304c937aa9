"""The command line's vocabulary: one flag name per thing across commands, and errors that
name CLI flags, not Python parameters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stfm.cli import build_parser


def _stfm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stfm.cli", *args], capture_output=True,
                          text=True, timeout=300)


def _flags(*command: str) -> set[str]:
    parser = build_parser()
    for name in command:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def test_the_same_things_have_the_same_flags_everywhere() -> None:
    file_commands = [("replay", "publish"), ("replay", "pretrain"), ("replay", "backtest")]
    for cmd in file_commands:               # a file without timestamps: the same three flags
        assert {"--start", "--interval-ms", "--timezone"} <= _flags(*cmd), cmd
        assert {"--columns", "--na-values"} <= _flags(*cmd), cmd     # which cells are readings
    for cmd in [("replay", "record"), ("replay", "pretrain"), ("alerts", "report")]:
        assert {"--from-offset", "--to-offset", "--from-ts", "--to-ts"} <= _flags(*cmd), cmd
    for cmd in [("replay", "publish"), ("replay", "record"), ("replay", "pretrain"), ("run",),
                ("alerts", "tail"), ("alerts", "report")]:
        assert "--bootstrap-servers" in _flags(*cmd), cmd
    for cmd in [("replay", "record"), ("replay", "pretrain"), ("replay", "backtest"),
                ("simulate",), ("alerts", "report")]:
        assert "--out" in _flags(*cmd), cmd
    assert "--rec-interval-ms" not in _flags("replay", "backtest")
    assert {"--interval-ms", "--timezone", "--ui", "--metrics-port"} <= _flags("run")
    # Kafka's flags only where the command talks to Kafka
    assert not {"--bootstrap-servers", "--group-id"} & _flags("replay", "backtest")
    assert "--events-topic" not in _flags("replay", "pretrain")      # it reads no events
    assert {"--group-id", "--topic", "--events-topic"} <= _flags("run")
    # a count of sensors is --n-sensors; --sensors is a selection of ids
    for cmd in [("simulate",), ("demo",)]:
        assert "--n-sensors" in _flags(*cmd), cmd
    for cmd in [("replay", "backtest"), ("alerts", "report")]:
        assert "--sensors" in _flags(*cmd) and "--n-sensors" not in _flags(*cmd), cmd


def test_sensors_as_a_count_still_works_but_is_hidden(capsys) -> None:
    for argv in (["simulate", "x.npz"], ["demo"]):
        assert build_parser().parse_args([*argv, "--n-sensors", "3"]).n_sensors == 3
        assert build_parser().parse_args(argv).n_sensors == 30
        assert build_parser().parse_args([*argv, "--sensors", "4"]).n_sensors == 4
        assert "--sensors is now --n-sensors" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            build_parser().parse_args([*argv, "--help"])
        out = capsys.readouterr().out
        assert "--n-sensors N" in out and "--sensors" not in out.replace("--n-sensors", "")


def test_run_reads_the_topics_its_flags_name() -> None:
    from stfm.cli import load_config

    args = build_parser().parse_args(["run", "--topic", "my-readings", "--events-topic",
                                      "my-events", "--bootstrap-servers", "h:1"])
    k = load_config(args).kafka
    assert (k.readings_topic, k.events_topic, k.bootstrap_servers) == ("my-readings",
                                                                       "my-events", "h:1")
    k = load_config(build_parser().parse_args(["run"])).kafka
    assert (k.readings_topic, k.events_topic) == ("readings", "events")
    # a command without Kafka flags still takes the [kafka] keys from --set (and --config)
    args = build_parser().parse_args(["replay", "backtest", "f.npz", "--out", "o", "--set",
                                      "kafka.bootstrap_servers=h:2"])
    assert load_config(args).kafka.bootstrap_servers == "h:2"


@pytest.fixture
def no_timestamps(tmp_path: Path) -> Path:
    path = tmp_path / "plain.npz"
    np.savez(path, data=np.random.default_rng(0).normal(size=(300, 3)))
    return path


@pytest.mark.parametrize("command", [["replay", "publish", "--bootstrap-servers", "127.0.0.1:1"],
                                     ["replay", "backtest", "--fresh", "--out", "OUT"],
                                     ["replay", "pretrain", "--out", "OUT", "--epochs", "1"]])
def test_errors_name_cli_flags(no_timestamps: Path, command: list[str]) -> None:
    argv = [str(no_timestamps.parent / "o") if a == "OUT" else a for a in command]
    r = _stfm(*argv[:2], str(no_timestamps), *argv[2:])
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert "--start" in err and "--interval-ms" in err, err
    assert "start=" not in err and "interval_ms=" not in err, err


def test_a_file_without_timestamps_runs_with_the_flags_named(no_timestamps: Path,
                                                             tmp_path: Path) -> None:
    r = _stfm("replay", "backtest", str(no_timestamps), "--fresh", "--out", str(tmp_path / "r"),
              "--start", "2026-01-01T00:00", "--interval-ms", "600000", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "patching.interval_ms=600000" in r.stderr


def test_backtest_reads_a_messy_file_and_says_what_it_resolved(tmp_path: Path) -> None:
    rows = [f"2026-01-01 {i // 6:02d}:{i % 6 * 10:02d}:00,{20 + (i % 7) * 0.5},OK,"
            f"{-9999 if i in (5, 50) else 400 + i % 5}" for i in range(144)]
    rows.insert(30, rows[29])                               # a repeated timestamp
    p = tmp_path / "messy.csv"
    p.write_text("date,T (degC),status,OT\n" + "\n".join(rows) + "\n")
    r = _stfm("replay", "backtest", str(p), "--fresh", "--out", str(tmp_path / "r"),
              "--columns", "T*,OT,status*", "--na-values", "-9999", "--quiet", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    read = json.loads(r.stdout[r.stdout.index("{"):])["read"]
    assert read["duplicate_timestamps"] == 1 and read["skipped_text_columns"] == ["status"]
    assert "suspected_missing_codes" not in read                  # --na-values took it
    assert "naive_timestamps_read_as" in read and "--timezone" in r.stderr


def test_simulate_takes_the_output_as_a_flag_too(tmp_path: Path) -> None:
    r = _stfm("simulate", "--out", str(tmp_path / "n.npz"), "--n-sensors", "2", "--days", "0.2")
    assert r.returncode == 0 and (tmp_path / "n.npz").exists(), r.stderr
    r = _stfm("simulate", str(tmp_path / "a.npz"), "--out", str(tmp_path / "b.npz"))
    assert r.returncode == 2 and "give the output file once" in r.stderr


@pytest.mark.parametrize(("flags", "said"), [
    (["--set", "checkpoint.dir={tmp}/ck"], "Faust engine keeps no checkpoints"),
    (["--set", "kafka.processing_guarantee=exactly_once"], "exactly_once needs --engine aiokafka"),
    (["--ui", "0"], "--ui and --metrics-port need --engine aiokafka"),
    (["--metrics-port", "9"], "--ui and --metrics-port need --engine aiokafka")])
def test_the_faust_engine_refuses_what_it_does_not_guarantee(tmp_path: Path, flags: list[str],
                                                             said: str) -> None:
    flags = [f.format(tmp=tmp_path) for f in flags]
    r = _stfm("run", "--engine", "faust", "--fresh", "--bootstrap-servers", "127.0.0.1:1",
              *flags)
    assert r.returncode == 2 and said in r.stderr, r.stderr[-1500:]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "What the Faust engine (`--engine faust`) does not guarantee" in readme


def test_the_region_layout_follows_a_partition_map(tmp_path: Path, monkeypatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import connectors.kafka_io as kio
    from connectors.partitioning import PartitionMap
    from stfm.cli import log_region_layout
    from streaming.config import StreamConfig

    sensors = {"a": 1, "b": 1, "c": 0, "d": 0}     # not what key hashing would give
    PartitionMap(partitions=2, sensors=sensors, method="metis").save(tmp_path / "m.json")
    cfg = StreamConfig.from_dict({"kafka": {"partition_map": str(tmp_path / "m.json")}})
    monkeypatch.setattr(kio, "topic_partitions", lambda bs, topics, **_: {t: 2 for t in topics})
    with caplog.at_level(logging.INFO):
        log_region_layout(cfg, None)
    said = caplog.text
    assert "By the partition map: region 0: 2 sensors (c, d); region 1: 2 sensors (a, b)" \
        in said
    monkeypatch.setattr(kio, "topic_partitions", lambda bs, topics, **_: {t: 3 for t in topics})
    caplog.clear()
    with caplog.at_level(logging.INFO):
        log_region_layout(cfg, None)
    assert "has 2 partitions but readings topic" in caplog.text


@pytest.mark.parametrize("command", [
    ["replay", "publish", "{csv}"], ["replay", "record", "--out", "{tmp}/r.npz"],
    ["alerts", "tail"], ["alerts", "report"], ["topics", "list"],
])
def test_a_missing_broker_is_said_in_words_within_seconds(tmp_path: Path,
                                                          command: list[str]) -> None:
    """Every tool that needs a broker: one line naming it, exit 2, no traceback, and well
    before kafka-python's 30 s bootstrap wait (the limit below is generous for a loaded
    machine; the probe itself gives up after 3 s)."""
    import socket
    import time

    csv = tmp_path / "x.csv"
    csv.write_text("ts,a\n2026-01-01T00:00:00Z,1\n2026-01-01T00:05:00Z,2\n")
    with socket.socket() as held:           # bound, not listening: connections are refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        args = [a.format(csv=csv, tmp=tmp_path) for a in command]
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "stfm.cli", *args, "--bootstrap-servers",
                            f"127.0.0.1:{port}"], capture_output=True, text=True,
                           timeout=120, check=False)
        took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"stfm: error: broker at 127.0.0.1:{port} not reachable after 3s" in r.stderr
    assert "Traceback" not in r.stderr
    assert took < 25, took


def test_a_grid_far_off_the_data_stops_the_backtest_unless_forced(tmp_path: Path) -> None:
    csv = tmp_path / "tenmin.csv"
    csv.write_text("ts,a\n" + "".join(f"2026-01-01T{h:02d}:{m:02d}:00Z,{h + m / 60:.3f}\n"
                                      for h in range(4) for m in range(0, 60, 10)))
    r = _stfm("replay", "backtest", str(csv), "--out", str(tmp_path / "o"), "--fresh",
              "--interval-ms", "60000", "--quiet")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "stfm: error:" in r.stderr and "10x finer" in r.stderr and "--force" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
    r = _stfm("replay", "backtest", str(csv), "--out", str(tmp_path / "o"), "--fresh",
              "--interval-ms", "60000", "--quiet", "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "WARNING" in r.stderr and "10x finer" in r.stderr


@pytest.mark.heavy
def test_backtest_ends_with_a_few_lines_a_person_reads(tmp_path: Path) -> None:
    csv = tmp_path / "small.csv"
    csv.write_text("ts,a,b\n" + "".join(
        f"2026-01-01T{h:02d}:{m:02d}:00Z,{h + m / 60:.3f},{(h * 7 + m) % 5}\n"
        for h in range(24) for m in range(0, 60, 5)))
    r = _stfm("replay", "backtest", str(csv), "--out", str(tmp_path / "o"), "--fresh",
              "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert 4 <= len(lines) <= 6 and "{" not in r.stdout, r.stdout
    assert lines[0].startswith("backtest of small.csv: 288 rows x 2 sensors, 2026-01-01 00:00 "
                               "UTC to 2026-01-01 23:55 UTC"), lines[0]
    assert "served forecast MAE" in lines[1] and "persistence" in lines[1]
    assert (tmp_path / "o" / "report.json").exists() and "report.json" in lines[3]
    r = _stfm("replay", "backtest", str(csv), "--out", str(tmp_path / "p"), "--fresh",
              "--quiet", "--end-row", "144", "--timezone", "Europe/Berlin")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("backtest of small.csv: rows 0-144 of 288 x 2 sensors, "
                               "2026-01-01 01:00 CET to 2026-01-01 12:55 CET"), r.stdout


def test_a_gzipped_monthly_file_is_backtested_on_a_month_grid(tmp_path: Path) -> None:
    import gzip

    months = np.arange("1995-01", "2007-01", dtype="datetime64[M]").astype("datetime64[D]")
    rng = np.random.default_rng(0)
    rows = "".join(f"{d},{100 + 10 * np.sin(i * np.pi / 6) + rng.normal():.2f},"
                   f"{50 + 5 * np.cos(i * np.pi / 6) + rng.normal():.2f}\n"
                   for i, d in enumerate(months))
    path = tmp_path / "monthly.csv.gz"
    path.write_bytes(gzip.compress(("date,a,b\n" + rows).encode()))
    r = _stfm("replay", "backtest", str(path), "--out", str(tmp_path / "o"), "--fresh",
              "--quiet", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "grid interval 2629746000 ms" in r.stderr
    summary = json.loads(r.stdout)
    assert summary["steps"] >= 10 and summary["grid_collisions"] == 0
    assert summary["experts"]["seasonal_year"]["points"] > 0
    # a yearly cycle: last year's month beats the last value
    assert (summary["experts"]["seasonal_year"]["mae"]
            < summary["experts"]["persistence"]["mae"])


def test_the_backtest_says_when_readings_share_grid_points(tmp_path: Path) -> None:
    from stfm.cli import backtest_words

    class Rec:
        n_steps, n_sensors = 48, 1
        timestamps = np.arange(48, dtype=np.int64) * 1_800_000

    words = backtest_words({"title": "x.csv", "steps": 3, "grid_collisions": 23}, Rec(), "o",
                           "")
    assert words.splitlines()[1].startswith("WARNING 23 readings fell on a grid point")
    assert "WARNING" not in backtest_words({"title": "x.csv", "steps": 3}, Rec(), "o", "")


def test_help_says_the_defaults() -> None:
    r = _stfm("replay", "backtest", "--help")
    assert r.returncode == 0 and "(default: delayed)" in r.stdout
    assert "(default: None)" not in r.stdout and "(default: False)" not in r.stdout
    assert "bocpd" in _stfm("run", "--help").stdout           # the default detector choosable


def test_backtest_uses_the_graph_it_is_given_or_infers(tmp_path: Path, capsys) -> None:
    """``replay backtest --graph``: an edge list over the file's sensors, or ``comovement``
    (from the rows before the scored part); either turns on ``model.live_graph``."""
    from stfm.cli import main

    rng = np.random.default_rng(0)
    common = rng.standard_normal(288).cumsum()
    rows = [f"2026-01-01T{h:02d}:{m:02d}:00Z," + ",".join(
        f"{common[h * 12 + m // 5] + 0.1 * rng.standard_normal():.3f}" for _ in range(3))
        for h in range(24) for m in range(0, 60, 5)]
    csv = tmp_path / "net.csv"
    csv.write_text("ts,a,b,c\n" + "\n".join(rows) + "\n")
    edges = tmp_path / "edges.csv"
    edges.write_text("src,dst\na,b\nb,c\n")
    base = ["replay", "backtest", str(csv), "--out", str(tmp_path / "o"), "--quiet",
            "--score-from-row", "100"]
    for graph, said in ((str(edges), None),
                        ("comovement", "comovement graph of 6 edges from rows 0-100")):
        assert main([*base, "--graph", graph]) == 0
        err = capsys.readouterr().err
        assert "model.live_graph=True" in err
        assert said is None or said in err, err[-2000:]
    assert main([*base, "--graph", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
