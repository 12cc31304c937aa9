"""The command line's vocabulary: one flag name per thing across commands, and errors that
name CLI flags, not Python parameters."""

from __future__ import annotations

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
    assert "config patching: interval_ms=600000" in r.stderr


def test_simulate_takes_the_output_as_a_flag_too(tmp_path: Path) -> None:
    r = _stfm("simulate", "--out", str(tmp_path / "n.npz"), "--sensors", "2", "--days", "0.2")
    assert r.returncode == 0 and (tmp_path / "n.npz").exists(), r.stderr
    r = _stfm("simulate", str(tmp_path / "a.npz"), "--out", str(tmp_path / "b.npz"))
    assert r.returncode == 2 and "give the output file once" in r.stderr


@pytest.mark.parametrize(("flags", "said"), [
    (["--set", "checkpoint.dir={tmp}/ck"], "Faust engine keeps no checkpoints"),
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
    monkeypatch.setattr(kio, "topic_partitions", lambda bs, topics: {t: 2 for t in topics})
    with caplog.at_level(logging.INFO):
        log_region_layout(cfg, None)
    said = caplog.text
    assert "By the partition map: region 0: 2 sensors (c, d); region 1: 2 sensors (a, b)" \
        in said
    monkeypatch.setattr(kio, "topic_partitions", lambda bs, topics: {t: 3 for t in topics})
    caplog.clear()
    with caplog.at_level(logging.INFO):
        log_region_layout(cfg, None)
    assert "has 2 partitions but readings topic" in caplog.text
