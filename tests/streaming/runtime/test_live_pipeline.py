"""End to end on a real (embedded) broker: publish → live worker → forecasts/alerts/dead-letter."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from connectors.kafka_io import ensure_topics, make_producer, read_topic
from connectors.recordings import Recording
from replay.publish import publish_recording
from replay.simulator import DriftSpec, SimConfig, simulate, write_simulation
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.worker import LiveWorker

pytestmark = pytest.mark.broker

MAX_DELAY_STEPS = 6  # alert within half a day of 5-min x 12 steps after a level shift


def _cfg(bs: str, unique: str, **extra: object) -> StreamConfig:
    topics = {f"{t}_topic": f"{t.replace('_', '-')}-{unique}"
              for t in ("readings", "events", "forecasts", "alerts", "dead_letter")}
    return StreamConfig.from_dict({"kafka": {"bootstrap_servers": bs, "group_id": f"g-{unique}",
                                             **topics}, **extra})


def _run_worker(cfg: StreamConfig, core: StreamCore) -> dict:
    return asyncio.run(LiveWorker(cfg, core, idle_exit_s=0.5).run()).as_dict()


@pytest.fixture(scope="module")
def level_shift_recording() -> tuple[Recording, list]:
    rec, truths = simulate(SimConfig(
        n_sensors=12, n_days=6, seed=7, n_events=0,
        drifts=[DriftSpec("level_shift", sensor=3, onset_frac=0.6, magnitude=2.0)]))
    return rec, truths


def test_end_to_end_forecasts_and_level_shift_alert(broker, unique, level_shift_recording):
    rec, truths = level_shift_recording
    bs = broker.bootstrap_servers
    cfg = _cfg(bs, unique)
    k = cfg.kafka
    ensure_topics(bs, [k.readings_topic, k.events_topic, k.forecasts_topic, k.alerts_topic,
                       k.dead_letter_topic])
    publish_recording(rec, bs, topic=k.readings_topic, events_topic=k.events_topic,
                      progress=False)
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model), sensors=list(rec.sensors))
    stats = _run_worker(cfg, core)
    assert stats["messages"] == rec.values.size
    assert stats["readings_accepted"] == rec.values.size
    assert stats["dead_letters"] == 0

    # every (sensor, step) that closed got exactly one forecast
    forecasts = [orjson.loads(v) for _, v, _, _ in read_topic(bs, k.forecasts_topic)]
    keys = [(f["sensor"], f["step"]) for f in forecasts]
    step_ms = cfg.patching.interval_ms * cfg.patching.patch_len
    first = int((rec.timestamps[0] + cfg.patching.interval_ms // 2) // step_ms)
    closed = range(first, core.patcher.next_open)
    assert len(closed) > 100
    assert len(keys) == len(set(keys)), "a (sensor, step) got more than one forecast"
    assert set(keys) == {(s, st) for s in rec.sensors for st in closed}

    # finite and on the input scale (not normalized units)
    yhat = np.array([f["yhat"] for f in forecasts])
    assert yhat.shape[1] == cfg.model.horizon and np.isfinite(yhat).all()
    lo, hi = np.nanmin(rec.values), np.nanmax(rec.values)
    span = hi - lo
    assert np.median(yhat) > lo and (yhat > lo - span).all() and (yhat < hi + span).all()
    truth = dict(zip(rec.timestamps.tolist(), range(rec.n_steps), strict=True))
    errs = []
    for f in forecasts[len(forecasts) // 2:]:
        j = rec.sensors.index(f["sensor"])
        for t, y in zip(f["horizon_ts"], f["yhat"], strict=True):
            if t in truth and not np.isnan(rec.values[truth[t], j]):
                errs.append(abs(rec.values[truth[t], j] - y))
    assert np.mean(errs) < 0.25 * np.nanstd(rec.values), "forecasts are not on the input scale"
    assert all(f["model_version"].startswith("fresh-s0+") for f in forecasts)

    # an alert on the shifted sensors soon after the onset, and none before it
    alerts = [orjson.loads(v) for _, v, _, _ in read_topic(bs, k.alerts_topic)]
    onset = truths[0].onset_ts
    # who raised them rides in the Kafka headers (the messages stay reproducible)
    from kafka import KafkaConsumer

    c = KafkaConsumer(k.alerts_topic, bootstrap_servers=bs, auto_offset_reset="earliest",
                      consumer_timeout_ms=3000)
    tags = [dict(m.headers) for m in c]
    c.close()
    assert tags and all(t["stfm-engine"] == b"aiokafka" and
                        t["stfm-worker"].endswith(f":{os.getpid()}".encode()) for t in tags)
    assert not [a for a in alerts if a["raised_ts"] < onset], "alert before any injected drift"
    hits = [a for a in alerts if set(a["sensors"]) & set(truths[0].sensors)]
    assert hits, f"no alert for the level shift on {truths[0].sensors}"
    delay_steps = (min(a["raised_ts"] for a in hits) - onset) / step_ms
    assert 0 <= delay_steps <= MAX_DELAY_STEPS
    assert {"id", "kind", "sensors", "ts", "detector", "statistic", "severity",
            "detail"} <= set(hits[0])


def test_bad_messages_go_to_dead_letter_and_valid_ones_are_processed(broker, unique):
    bs = broker.bootstrap_servers
    cfg = _cfg(bs, unique)
    k = cfg.kafka
    ensure_topics(bs, [k.readings_topic, k.events_topic, k.forecasts_topic, k.alerts_topic,
                       k.dead_letter_topic])
    t0 = 1_767_571_200_000
    iv = cfg.patching.interval_ms
    bad = {
        b"{not json": "not valid JSON",
        b'{"sensor": "a", "ts": 1767571200000}': "missing field 'value'",
        b'{"sensor": 3, "ts": 1767571200000, "value": 1.0}': "'sensor'",
        b'{"sensor": "a", "ts": "soon", "value": 1.0}': "not ISO-8601",
        b'{"sensor": "a", "ts": 1767571200000, "value": "high"}': "must be a number",
        b'{"sensor": "a", "ts": 1767571200000, "value": NaN}': "not valid JSON",
        b'{"sensor": "a", "ts": 1767571200000, "value": Infinity}': "not valid JSON",
        b'{"sensor": "nope", "ts": 1767571200000, "value": 1.0}': "unknown sensor",
    }
    producer = make_producer(bs)
    valid = 0
    for i in range(400):
        for s in ("a", "b"):
            producer.send(k.readings_topic, orjson.dumps(
                {"sensor": s, "ts": t0 + i * iv, "value": 10.0 + float(np.sin(i / 20))}),
                key=s.encode())
            valid += 1
        if i % 40 == 20:
            for raw in bad:
                producer.send(k.readings_topic, raw, key=b"x")
    late = orjson.dumps({"sensor": "a", "ts": t0, "value": 1.0})
    producer.send(k.readings_topic, late, key=b"a")
    producer.send(k.events_topic, b'{"ts": 1}', key=b"e")
    producer.flush()
    producer.close()

    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model), sensors=["a", "b"])
    stats = _run_worker(cfg, core)
    assert stats["readings_accepted"] == valid
    dead = [orjson.loads(v) for _, v, _, _ in read_topic(bs, k.dead_letter_topic)]
    n_rounds = len([i for i in range(400) if i % 40 == 20])
    assert len(dead) == n_rounds * len(bad) + 2
    by_original = {}
    for d in dead:
        by_original.setdefault(d.get("original", d.get("original_b64")), []).append(d)
    for raw, reason in bad.items():
        got = by_original[raw.decode()]
        assert len(got) == n_rounds and all(reason in d["reason"] for d in got), (raw, got[0])
        assert all(d["topic"] == k.readings_topic and d["offset"] is not None for d in got)
    assert by_original[late.decode()][0]["reason"].startswith("late")
    assert "'type'" in by_original['{"ts": 1}'][0]["reason"]
    n_forecasts = sum(1 for _ in read_topic(bs, k.forecasts_topic))
    assert n_forecasts == 2 * len(range(core.patcher.next_open - (t0 // (iv * 12))))


def _stfm(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stfm.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(("engine", "model"), [("aiokafka", "fresh"), ("faust", "fresh"),
                                               ("aiokafka", "checkpoint")])
@pytest.mark.heavy
def test_cli_publish_and_run(broker, unique, tmp_path: Path, engine: str, model: str):
    rec, truths = simulate(SimConfig(n_sensors=6, n_days=2, seed=1))
    data = tmp_path / "net.npz"
    write_simulation(rec, truths, data)
    model_flags = ["--fresh"]
    if model == "checkpoint":
        pt = _stfm("replay", "pretrain", str(data), "--out", str(tmp_path / "pt"), "--epochs",
                   "1", "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--quiet")
        assert pt.returncode == 0, pt.stderr[-2000:]
        model_flags = ["--checkpoint", str(tmp_path / "pt" / "best")]
    bs = broker.bootstrap_servers
    topic = f"readings-{unique}"
    pub = _stfm("replay", "publish", str(data), "--bootstrap-servers", bs, "--topic", topic,
                "--events-topic", f"events-{unique}", "--quiet")
    assert pub.returncode == 0, pub.stderr
    assert f"published {rec.values.size} readings" in pub.stdout
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(
        f'[kafka]\nreadings_topic = "{topic}"\nevents_topic = "events-{unique}"\n'
        f'forecasts_topic = "forecasts-{unique}"\nalerts_topic = "alerts-{unique}"\n'
        f'dead_letter_topic = "dead-letter-{unique}"\n')
    summary = tmp_path / "summary.json"
    run = _stfm("run", "--config", str(cfg_file), "--bootstrap-servers", bs, "--group-id",
                f"g-{unique}", *model_flags, "--engine", engine, "--idle-exit", "1",
                "--summary", str(summary))
    assert run.returncode == 0, run.stderr[-3000:]
    # a few lines for a person, no terminal escapes (Faust's spinner) on a non-terminal
    assert run.stdout.startswith("stfm run: ") and "\x1b" not in run.stdout, run.stdout
    s = json.loads(summary.read_text())
    assert s["worker"]["readings_accepted"] == rec.values.size
    dead = [orjson.loads(v) for _, v, _, _ in read_topic(bs, f"dead-letter-{unique}")]
    assert len(dead) == s["worker"]["dead_letters"]
    if engine == "aiokafka":
        # events are fetched before readings, so none arrives after its step left the context
        assert dead == []
    else:
        # Faust merges the two topics as it fetches them: an event can come after its step
        # left the context, or before any reading of its sensor (no graph fixes the sensors)
        assert all(d["topic"] == f"events-{unique}" and (
            d["reason"].startswith("late") or "no known sensor" in d["reason"])
            for d in dead), dead
    assert s["worker"]["events_accepted"] + len(dead) == len(rec.events)
    n_steps = s["patcher"]["closed_steps"]
    assert s["worker"]["forecasts"] == n_steps * rec.n_sensors > 0
    assert sum(1 for _ in read_topic(bs, f"forecasts-{unique}")) == s["worker"]["forecasts"]
    assert np.isfinite(s["metrics"]["mae"])
    assert s["model_version"].startswith("best+" if model == "checkpoint" else "fresh-s0+")


def test_cli_rejects_bad_config(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[patching]\npatch_len = 0\n")
    r = _stfm("run", "--config", str(bad), "--fresh")
    assert r.returncode == 2 and "patching.patch_len must be > 0" in r.stderr
    bad.write_text("[model]\nhidden = 3\n")
    r = _stfm("run", "--config", str(bad), "--fresh")
    assert r.returncode == 2 and "unknown key model.hidden" in r.stderr
    assert "Traceback" not in r.stderr


def test_alerts_tail_prints_alerts(broker, unique):
    topic = f"alerts-{unique}"
    ensure_topics(broker.bootstrap_servers, [topic])
    producer = make_producer(broker.bootstrap_servers)
    producer.send(topic, orjson.dumps({
        "id": "drift:s7:1", "kind": "drift", "sensors": ["s7"], "ts": 1767571200000,
        "severity": "warning", "detail": {"text": "page_hinkley fired on abs_residual"}}))
    producer.send(topic, b"garbage")
    producer.flush()
    producer.close()
    r = _stfm("alerts", "tail", "--bootstrap-servers", broker.bootstrap_servers, "--topic",
              topic, "--from-beginning", "--max", "2", "--timeout", "120")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert "s7" in lines[0] and "page_hinkley fired" in lines[0] and "2026-01-05" in lines[0]
    assert "unreadable alert" in lines[1]
    assert "read 2 message(s)" in r.stderr and "1 alert(s), 1 unreadable" in r.stderr


def test_alerts_tail_says_when_there_are_no_alerts(broker, unique):
    topic = f"alerts-{unique}"
    ensure_topics(broker.bootstrap_servers, [topic])
    r = _stfm("alerts", "tail", "--bootstrap-servers", broker.bootstrap_servers, "--topic",
              topic, "--from-beginning", "--timeout", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert f"read 0 message(s) from {topic}: 0 alert(s) (no alerts)" in r.stderr


def test_cli_bad_checkpoint_is_one_clear_line(tmp_path: Path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text('{"format_version": 0, "architecture": "st_backbone"}')
    r = _stfm("run", "--checkpoint", str(ck), "--bootstrap-servers", "127.0.0.1:1")
    assert r.returncode == 2
    assert "format version 0 is not supported" in r.stderr and "Traceback" not in r.stderr


def test_alerts_tail_filters_and_says_its_zone(broker, unique):
    topic = f"alerts-{unique}"
    ensure_topics(broker.bootstrap_servers, [topic])
    producer = make_producer(broker.bootstrap_servers)
    for i, (kind, sev, sensor) in enumerate([("drift", "warning", "s1"),
                                             ("anomaly", "critical", "s12"),
                                             ("drift", "info", "s13"),
                                             ("drift", "critical", "t9")]):
        producer.send(topic, orjson.dumps({
            "id": f"{kind}:{sensor}:{i}", "kind": kind, "sensors": [sensor],
            "ts": 1751371200000, "severity": sev, "detail": {"text": f"alert {i}"}}))
    producer.flush()
    producer.close()
    r = _stfm("alerts", "tail", "--bootstrap-servers", broker.bootstrap_servers, "--topic",
              topic, "--from-beginning", "--timeout", "3", "--kind", "drift", "--sensor",
              "s1*", "--severity", "warning", "--timezone", "Europe/Berlin")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "alert 0" in lines[0], lines
    assert lines[0].startswith("2025-07-01 14:00 CEST"), lines      # 12:00 UTC in summer
    assert "4 alert(s), 1 shown (filtered)" in r.stderr


def test_alerts_tail_prints_an_alert_two_engines_wrote_once_with_its_source(broker, unique):
    topic = f"alerts-{unique}"
    ensure_topics(broker.bootstrap_servers, [topic])
    producer = make_producer(broker.bootstrap_servers)
    for engine, worker in (("aiokafka", "host-a:11"), ("faust", "host-b:22")):
        producer.send(topic, orjson.dumps({
            "id": "drift:s1:40", "kind": "drift", "sensors": ["s1"], "ts": 1751371200000,
            "severity": "warning", "detail": {"text": "s1: level rose"}}),
            headers=[("stfm-engine", engine.encode()), ("stfm-worker", worker.encode())])
    producer.flush()
    producer.close()
    args = ("alerts", "tail", "--bootstrap-servers", broker.bootstrap_servers, "--topic", topic,
            "--from-beginning", "--timeout", "3")
    r = _stfm(*args)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("s1: level rose  [aiokafka host-a:11]"), lines
    assert "1 repeated copies left out (--all prints them)" in r.stderr
    r = _stfm(*args, "--all")
    lines = r.stdout.strip().splitlines()
    assert [ln.rsplit("[", 1)[1] for ln in lines] == ["aiokafka host-a:11]", "faust host-b:22]"]
