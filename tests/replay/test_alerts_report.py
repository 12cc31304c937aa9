"""`stfm alerts report`: table, CSV, summary and PNG timeline from a file or a topic range."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from replay.alerts_report import AlertsReportError, read_alerts_file, summarize
from stfm.cli import main

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z

ALERTS = [
    {"id": "drift:s01:10", "kind": "drift", "sensors": ["s01"], "ts": T0 + 10 * 3_600_000,
     "step": 10, "detector": "page_hinkley", "statistic": "seasonal_residual",
     "severity": "warning", "detail": {"z": 3.2, "text": "page_hinkley fired on ..."}},
    {"id": "anomaly:s02:12", "kind": "anomaly", "sensors": ["s02", "s03"], "region": "region:s02",
     "ts": T0 + 12 * 3_600_000, "step": 12, "score": 0.97, "severity": "warning",
     "detail": {"text": "anomaly score 0.970 >= 0.9 on s02",
                "explained": {"s02": {"detector": "anomaly-likelihood",
                                      "statistic": "nowcast |residual|/std"}}},
     "events": [{"type": "roadworks", "ts": T0 + 11 * 3_600_000, "sensor": "s02"}]},
    {"id": "anomaly:s01:30", "kind": "anomaly", "sensors": ["s01"], "ts": T0 + 30 * 3_600_000,
     "step": 30, "score": 0.999, "severity": "critical", "detail": {}},
]


def _check_report(out: Path, n: int) -> None:
    rows = list(csv.DictReader((out / "alerts.csv").open()))
    assert len(rows) == n
    assert rows[0]["kind"] == "drift" and rows[0]["statistic"] == "seasonal_residual"
    assert rows[1]["detector"] == "anomaly-likelihood"
    assert rows[1]["events"].startswith("roadworks@")
    assert rows[1]["sensors"] == "region:s02 (s02,s03)"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["by_kind"] == {"drift": 1, "anomaly": 2}
    assert summary["by_sensor"]["s01"] == 2 and summary["with_events"] == 1
    png = (out / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_report_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "alerts.jsonl"
    f.write_text("\n".join(json.dumps(a) for a in reversed(ALERTS)) + "\n\n")
    assert main(["alerts", "report", str(f), "--out", str(tmp_path / "r")]) == 0
    _check_report(tmp_path / "r", 3)
    printed = capsys.readouterr().out
    assert "3 alerts" in printed and "page_hinkley" in printed


def test_times_are_shown_in_the_zone_asked_for(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "alerts.jsonl"
    f.write_text("\n".join(json.dumps(a) for a in ALERTS) + "\n")
    assert main(["alerts", "report", str(f), "--out", str(tmp_path / "u")]) == 0
    utc = capsys.readouterr().out
    assert "time (UTC)" in utc and "2026-01-01 10:00" in utc
    assert main(["alerts", "report", str(f), "--out", str(tmp_path / "b"),
                 "--timezone", "Europe/Berlin"]) == 0
    berlin = capsys.readouterr().out
    assert "time (Europe/Berlin)" in berlin and "2026-01-01 11:00" in berlin   # UTC+1
    rows = list(csv.DictReader((tmp_path / "b" / "alerts.csv").open()))
    assert rows[0]["time"] == "2026-01-01 11:00"
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["timezone"] \
        == "Europe/Berlin"
    with pytest.raises(SystemExit, match="--timezone"):
        main(["alerts", "report", str(f), "--out", str(tmp_path / "x"), "--timezone", "Mars"])


def test_bad_lines_are_named(tmp_path: Path) -> None:
    f = tmp_path / "alerts.jsonl"
    f.write_text(json.dumps(ALERTS[0]) + "\n{not json\n")
    with pytest.raises(AlertsReportError, match="line 2: not JSON"):
        read_alerts_file(f)
    f.write_text(json.dumps({"kind": "drift", "ts": "yesterday", "sensors": []}) + "\n")
    with pytest.raises(AlertsReportError, match="line 1: alert field 'ts'"):
        read_alerts_file(f)
    with pytest.raises(SystemExit, match="not found"):
        main(["alerts", "report", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)])
    assert summarize([])["alerts"] == 0


def test_report_from_a_topic_range(broker, unique: str, tmp_path: Path) -> None:
    from connectors.kafka_io import ensure_topics, make_producer

    topic = f"alerts-{unique}"
    ensure_topics(broker.bootstrap_servers, [topic])
    prod = make_producer(broker.bootstrap_servers)
    for a in ALERTS:
        prod.send(topic, json.dumps(a).encode())
    prod.send(topic, b"garbage")                       # left out with a warning
    prod.flush()
    prod.close()
    out = tmp_path / "r"
    assert main(["alerts", "report", "--bootstrap-servers", broker.bootstrap_servers,
                 "--topic", topic, "--out", str(out)]) == 0
    _check_report(out, 3)
    assert main(["alerts", "report", "--bootstrap-servers", broker.bootstrap_servers,
                 "--topic", topic, "--to-offset", "1", "--out", str(tmp_path / "one")]) == 0
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["alerts"] == 1
