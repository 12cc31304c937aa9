"""Topics and groups said out loud (issue 11): partition layout, a group already at the end,
starting over, and topics created with an explicit layout."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest

from connectors.kafka_io import ensure_topics, topic_partitions
from replay.publish import publish_recording
from replay.simulator import SimConfig, simulate
from stfm.cli import log_region_layout
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.worker import LiveWorker

pytestmark = pytest.mark.broker


def _cfg(bs: str, unique: str) -> StreamConfig:
    topics = {f"{t}_topic": f"{t.replace('_', '-')}-{unique}"
              for t in ("readings", "events", "forecasts", "alerts", "dead_letter")}
    return StreamConfig.from_dict({"kafka": {"bootstrap_servers": bs, "group_id": f"g-{unique}",
                                             **topics}})


def _run(cfg: StreamConfig, sensors: list[str], **kw) -> LiveWorker:
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model), sensors=sensors)
    w = LiveWorker(cfg, core, idle_exit_s=0.5, **kw)
    asyncio.run(w.run())
    return w


def _published(bs: str, unique: str, sensors: int, days: float):
    """A small simulated recording published to this test's topics."""
    rec, _ = simulate(SimConfig(n_sensors=sensors, n_days=days, seed=2, n_events=0, drifts=[]))
    cfg = _cfg(bs, unique)
    k = cfg.kafka
    ensure_topics(bs, [k.readings_topic, k.events_topic])
    publish_recording(rec, bs, topic=k.readings_topic, events_topic=k.events_topic,
                      progress=False)
    return rec, cfg


def test_a_second_run_in_the_same_group_says_there_is_nothing_to_read(broker, unique, caplog):
    rec, cfg = _published(broker.bootstrap_servers, unique, 4, 1)
    first = _run(cfg, list(rec.sensors))
    assert first.stats.messages == rec.values.size and first.nothing_to_read is None
    with caplog.at_level(logging.WARNING, logger="streaming.runtime.worker"):
        second = _run(cfg, list(rec.sensors))
    assert second.stats.messages == 0
    assert second.nothing_to_read and "--from-beginning" in second.nothing_to_read
    assert f"offset {rec.values.size} of {rec.values.size}" in second.nothing_to_read
    assert any("nothing to read" in r.getMessage() for r in caplog.records)
    again = _run(cfg, list(rec.sensors), from_beginning=True)
    assert again.stats.readings_accepted == rec.values.size and again.nothing_to_read is None


def test_the_region_layout_is_logged(broker, unique, caplog):
    cfg = _cfg(broker.bootstrap_servers, unique)
    k = cfg.kafka
    ensure_topics(k.bootstrap_servers, [k.readings_topic], partitions=4)
    ensure_topics(k.bootstrap_servers, [k.events_topic], partitions=1)
    sensors = [f"s{i}" for i in range(20)]
    with caplog.at_level(logging.INFO, logger="stfm"):
        parts = log_region_layout(cfg, sensors)
    assert parts == {k.readings_topic: 4, k.events_topic: 1}
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "has 4 partitions: each is its own region" in text
    assert sum(int(n) for n in __import__("re").findall(r"region \d: (\d+) sensors", text)) == 20
    assert "routed to regions by sensor" in text and "stfm topics create" in text


def test_topics_create_makes_the_layout_explicit(broker, unique):
    bs = broker.bootstrap_servers
    names = [f"a-{unique}", f"b-{unique}"]

    def stfm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stfm.cli", "topics", *args,
                               "--bootstrap-servers", bs], capture_output=True, text=True,
                              timeout=120, check=False)

    r = stfm("create", *names, "--partitions", "2")
    assert r.returncode == 0 and r.stdout.count("created with 2 partition(s)") == 2, r.stderr
    assert topic_partitions(bs, names) == {names[0]: 2, names[1]: 2}
    r = stfm("create", names[0], "--partitions", "1")
    assert r.returncode == 1 and "exists with 2 partition(s), not 1" in r.stdout
    r = stfm("list", *names, f"missing-{unique}")
    assert r.returncode == 0 and "(missing)" in r.stdout and r.stdout.count("2 partition(s)") == 2


def test_faust_in_a_group_of_the_default_engine_exits_with_the_reason(broker, unique, tmp_path):
    """Tansu keeps a group's protocol after its members left; Faust's consumers are refused
    (InconsistentGroupProtocolError) and would wait forever: the run exits 3 and says why."""
    rec, cfg = _published(broker.bootstrap_servers, unique, 3, 0.5)
    k = cfg.kafka
    _run(cfg, list(rec.sensors))                      # the default engine forms the group
    toml = tmp_path / "c.toml"
    toml.write_text("[kafka]\n" + "".join(f'{t}_topic = "{getattr(k, f"{t}_topic")}"\n' for t in
                                          ("readings", "events", "forecasts", "alerts",
                                           "dead_letter")))
    r = subprocess.run([sys.executable, "-m", "stfm.cli", "run", "--fresh", "--engine",
                        "faust", "--config", str(toml), "--bootstrap-servers",
                        k.bootstrap_servers, "--group-id", k.group_id, "--idle-exit", "1"],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 3, r.stderr[-2000:]
    # the refusal itself is the reason given (not a time limit on joining)
    assert f"consumer group {k.group_id!r} refused the Faust worker" in r.stderr, r.stderr
    assert "Use another --group-id" in r.stderr and "Traceback" not in r.stderr
