"""Prometheus metrics: scraped from ``/metrics`` of a running worker and checked against what
it produced (the topics' contents and the worker's own counts)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections import Counter

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.kafka_io import ensure_topics, make_producer, read_topic
from connectors.live_page import serve_metrics
from connectors.schemas import reason_kind
from replay.publish import publish_recording
from replay.simulator import SimConfig, simulate
from streaming.config import ObserveConfig, StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore
from streaming.runtime.telemetry import METRICS, Telemetry
from streaming.runtime.worker import LiveWorker


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a ``/metrics`` page."""
    text = urllib.request.urlopen(url, timeout=60).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_documented_metric_is_registered() -> None:
    names = {f.name for f in Telemetry().registry.collect()}
    for documented in METRICS:
        base = documented.split("{")[0]
        family = base.removesuffix("_total").removesuffix("_info")
        assert family in names, documented
    assert all(n.startswith("stfm_") for n in names)


def test_observe_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="observe.ui_port"):
        StreamConfig.from_dict({"observe": {"ui_port": 70000}})
    with pytest.raises(ValueError, match="must differ"):
        StreamConfig.from_dict({"observe": {"ui_port": 9100, "metrics_port": 9100}})
    assert ObserveConfig().metrics_port == 0            # off unless asked for


@pytest.mark.broker
def test_metrics_scraped_from_a_running_worker_match_what_it_produced(broker, unique, tmp_path,
                                                                    wait_for):
    bs = broker.bootstrap_servers
    topics = {f"{t}_topic": f"{t.replace('_', '-')}-{unique}"
              for t in ("readings", "events", "forecasts", "alerts", "dead_letter")}
    cfg = StreamConfig.from_dict({
        "kafka": {"bootstrap_servers": bs, "group_id": f"g-{unique}", **topics},
        "checkpoint": {"dir": str(tmp_path / "ck"), "every_steps": 4}})
    k = cfg.kafka
    ensure_topics(bs, list(topics.values()))
    rec, _ = simulate(SimConfig(n_sensors=5, n_days=3, seed=2))
    publish_recording(rec, bs, topic=k.readings_topic, events_topic=k.events_topic,
                      progress=False)
    bad = [b"not json", orjson.dumps({"sensor": "s0", "ts": 0, "value": 1e13}),
           orjson.dumps({"ts": 5}), orjson.dumps({"sensor": "s1", "ts": 1, "value": 1.0})]
    prod = make_producer(bs)
    for raw in bad:
        prod.send(k.readings_topic, raw)
    prod.flush()
    prod.close()

    telemetry = Telemetry()
    server = serve_metrics(telemetry.registry, "127.0.0.1", 0)
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model))
    worker = LiveWorker(cfg, core, observers=[telemetry])     # runs until stopped
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(stats=asyncio.run(worker.run())))
    thread.start()
    n_in = rec.values.size + len(rec.events) + len(bad)
    lag_key = ("stfm_consumer_lag_messages", (("partition", "0"), ("topic", k.readings_topic)))
    try:
        scraped: dict = {}

        def all_read() -> bool:
            assert thread.is_alive(), "the worker stopped early"
            scraped.update(m=scrape(server.url))
            return value(scraped["m"], "stfm_messages_total") >= n_in and lag_key in scraped["m"]

        wait_for(all_read, "the scraped counters to reach the input")
        m = scraped["m"]                        # scraped while running
        assert value(m, "stfm_messages_total") == n_in
        assert value(m, "stfm_readings_accepted_total") == rec.values.size
        assert value(m, "stfm_step_processing_seconds_count") > 0
        assert value(m, "stfm_batch_processing_seconds_count") > 0
        worker.stop()
        thread.join(timeout=300)
        assert not thread.is_alive()
        m = scrape(server.url)
    finally:
        if thread.is_alive():
            worker.stop()
            thread.join(timeout=60)
        server.close()
    stats = done["stats"]
    forecasts = sum(1 for _ in read_topic(bs, k.forecasts_topic))
    alerts = Counter(orjson.loads(v)["kind"] for _, v, _, _ in read_topic(bs, k.alerts_topic))
    dead = Counter(reason_kind(orjson.loads(v)["reason"])
                   for _, v, _, _ in read_topic(bs, k.dead_letter_topic))
    assert value(m, "stfm_forecasts_total") == stats.forecasts == forecasts > 0
    for kind in ("drift", "anomaly", "data-quality"):
        assert value(m, "stfm_alerts_total", kind=kind) == alerts.get(kind, 0)
    assert sum(alerts.values()) == stats.alerts
    # the four bad messages; an event taken before the readings that introduce its sensor
    # (a group that re-forms right after joining, a known race) adds "invalid" ones: the
    # metrics must count whatever was dead-lettered
    assert dead["out_of_range"] == 1 and dead["late"] == 1 and dead["invalid"] >= 2, dead
    for reason, n in dead.items():
        assert value(m, "stfm_dead_letters_total", reason=reason) == n
    assert value(m, "stfm_steps_closed_total", region="0") == core.patcher.stats.closed_steps
    assert value(m, "stfm_online_mae", region="0", model="served") == pytest.approx(
        core.metrics.mae)
    assert value(m, "stfm_online_mae", region="0", model="persistence") == pytest.approx(
        core.forecaster.expert_metrics["persistence"].mae)
    assert value(m, "stfm_model_info", region="0", version=core.model.version) == 1
    assert value(m, "stfm_sensors", region="0") == rec.n_sensors
    assert lag_key in m
    assert stats.checkpoints > 0
    assert time.time() - 300 < value(m, "stfm_last_checkpoint_timestamp_seconds") <= time.time()
    assert 0 <= value(m, "stfm_checkpoint_age_seconds") < 300


def test_the_readme_lists_every_metric() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    missing = [name for name in METRICS if f"`{name}`" not in readme]
    assert missing == [], f"README's metrics table lacks {missing}"
