"""Resume offsets outside their partition (issue 30): a checkpoint's or the group's committed
offset past the end (topic recreated, broker restarted empty, retention) is detected at
assignment, logged, counted and handled by ``kafka.offset_out_of_range``: never a silent
skip of everything below it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from connectors.kafka_async import TP
from connectors.kafka_io import ensure_topics
from replay.publish import publish_recording
from replay.simulator import SimConfig, simulate
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.checkpoint import CheckpointStore
from streaming.runtime.worker import LiveWorker, OffsetOutOfRange

pytestmark = pytest.mark.broker

PAST = 50_000          # far past the end of the small topic


def _cfg(bs: str, unique: str, **over: object) -> StreamConfig:
    topics = {f"{t}_topic": f"{t.replace('_', '-')}-{unique}"
              for t in ("readings", "events", "forecasts", "alerts", "dead_letter")}
    cfg = StreamConfig.from_dict({"kafka": {"bootstrap_servers": bs, "group_id": f"g-{unique}",
                                            **topics}})
    return StreamConfig.load(None, {**{f"kafka.{k}": v for k, v in
                                       {"bootstrap_servers": bs, "group_id": f"g-{unique}",
                                        **topics}.items()}, **over}) if over else cfg


def _core(cfg: StreamConfig, sensors: list[str]) -> StreamCore:
    return StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model), sensors=sensors)


def _published(bs: str, unique: str):
    rec, _ = simulate(SimConfig(n_sensors=4, n_days=1, seed=3, n_events=0, drifts=[]))
    cfg = _cfg(bs, unique)
    k = cfg.kafka
    ensure_topics(bs, [k.readings_topic, k.events_topic])
    publish_recording(rec, bs, topic=k.readings_topic, events_topic=k.events_topic,
                      progress=False)
    return rec


def _commit_past_the_end(cfg: StreamConfig) -> None:
    """The group's committed offset of readings-0 set past the end (as after a broker that
    lost the topic but not the group, or retention)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    k = cfg.kafka
    c = KafkaConsumer(bootstrap_servers=k.bootstrap_servers, group_id=k.group_id,
                      enable_auto_commit=False)
    try:
        tp = TopicPartition(k.readings_topic, 0)
        c.assign([tp])
        c.commit({tp: OffsetAndMetadata(PAST, "", -1)})
    finally:
        c.close()


@pytest.mark.parametrize("source", ["checkpoint", "committed"])
def test_a_resume_offset_past_the_end_reads_the_partition_from_its_start(
        broker, unique, tmp_path, caplog, source: str) -> None:
    bs = broker.bootstrap_servers
    rec = _published(bs, unique)
    over = {"checkpoint.dir": str(tmp_path)} if source == "checkpoint" else {}
    cfg = _cfg(bs, unique, **over)
    k = cfg.kafka
    if source == "checkpoint":
        state = _core(cfg, list(rec.sensors)).state_dict()
        CheckpointStore(tmp_path, f"{k.group_id}/{k.readings_topic}-0").save(
            state, {TP(k.readings_topic, 0): PAST})
    else:
        _commit_past_the_end(cfg)
    with caplog.at_level(logging.ERROR, logger="streaming.runtime.worker"):
        w = LiveWorker(cfg, _core(cfg, list(rec.sensors)), idle_exit_s=0.5)
        asyncio.run(w.run())
    assert w.stats.offsets_out_of_range == 1
    assert w.stats.messages == rec.values.size            # nothing skipped
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"offset {PAST} is outside the partition (offsets 0 to {rec.values.size})" in m
               and "reading it from its start" in m for m in errors), errors


def test_fail_policy_stops_the_worker_with_the_reason(broker, unique, tmp_path) -> None:
    bs = broker.bootstrap_servers
    rec = _published(bs, unique)
    cfg = _cfg(bs, unique, **{"checkpoint.dir": str(tmp_path),
                              "kafka.offset_out_of_range": "fail"})
    k = cfg.kafka
    CheckpointStore(tmp_path, f"{k.group_id}/{k.readings_topic}-0").save(
        _core(cfg, list(rec.sensors)).state_dict(), {TP(k.readings_topic, 0): PAST})
    w = LiveWorker(cfg, _core(cfg, list(rec.sensors)), idle_exit_s=0.5)
    with pytest.raises(OffsetOutOfRange, match=f"offset {PAST} is outside the partition"):
        asyncio.run(w.run())
    assert w.stats.messages == 0 and w.stats.offsets_out_of_range == 1


def test_the_policy_is_validated() -> None:
    from streaming.config import ConfigError

    with pytest.raises(ConfigError, match="kafka.offset_out_of_range"):
        StreamConfig.load(None, {"kafka.offset_out_of_range": "skip"})
