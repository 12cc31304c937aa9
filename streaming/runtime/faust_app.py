"""The Faust engine of the live worker (``stfm run --engine faust``).

A Faust agent takes micro-batches of raw events (``stream.take_events``) and hands them to the
same ``process_records`` function the aiokafka engine uses; outputs go out through Faust's
producer. Faust acknowledges offsets after each event has been processed. Faust's per-event
stream machinery costs ~17k messages/s on these machines, which is why the default engine
drives aiokafka's ``getmany`` directly (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Any

from streaming.config import StreamConfig
from streaming.pipeline.core import StreamCore
from streaming.runtime.microbatch import (
    WorkerStats,
    apply_torch_threads,
    origin_headers,
    process_records,
)

log = logging.getLogger(__name__)


def build_app(cfg: StreamConfig, core: StreamCore, stats: WorkerStats, datadir: str) -> Any:
    """A Faust app whose agent drives ``core``; ``datadir``: the folder Faust keeps its own
    files in (it would make ``<group>-data`` in the working directory)."""
    import faust

    from connectors.security import client_kwargs

    k = cfg.kafka
    app = faust.App(
        k.group_id, broker=f"kafka://{k.bootstrap_servers}", datadir=datadir,
        value_serializer="raw",
        key_serializer="raw", store="memory://", web_enabled=False, topic_disable_leader=True,
        broker_session_timeout=k.session_timeout_ms / 1000,
        broker_heartbeat_interval=k.heartbeat_interval_ms / 1000,
        broker_max_poll_interval=k.max_poll_interval_ms / 1000,
        consumer_auto_offset_reset="earliest", topic_allow_declare=False,
        stream_buffer_maxsize=max(k.max_batch, 4096),
        **client_kwargs(k, "faust"),            # broker_credentials: TLS / SASL
    )
    source = app.topic(k.readings_topic, k.events_topic, value_type=bytes, key_type=bytes,
                       value_serializer="raw", key_serializer="raw")
    outputs = {name: app.topic(name, value_serializer="raw", key_serializer="raw")
               for name in (k.forecasts_topic, k.alerts_topic, k.dead_letter_topic)}

    headers = {k.alerts_topic: origin_headers("faust")}      # who raised the alerts

    @app.agent(source)
    async def drive(stream: Any) -> None:
        within = k.fetch_timeout_ms / 1000
        async for events in stream.take_events(k.max_batch, within=within):
            records = [e.message for e in events]     # faust's Message is an InputRecord
            out, _ = process_records(core, records, cfg, stats,
                                     now_ms=int(time.time() * 1000))
            futs = []
            for topic, msgs in ((k.forecasts_topic, out.forecasts),
                                (k.alerts_topic, out.alerts),
                                (k.dead_letter_topic, out.dead_letters)):
                t = outputs[topic]
                for key, value in msgs:
                    futs.append(await t.send(key=key, value=value,
                                             headers=headers.get(topic)))
            if futs:
                await asyncio.gather(*futs)

    return app


def run_faust_worker(cfg: StreamConfig, core: StreamCore, *,
                     idle_exit_s: float | None = None) -> WorkerStats:
    """Run the Faust worker in this process until stopped (or idle for ``idle_exit_s``)."""
    from faust.worker import Worker

    apply_torch_threads(cfg)
    stats = WorkerStats()
    datadir = tempfile.TemporaryDirectory(prefix="stfm-faust-")
    app = build_app(cfg, core, stats, datadir.name)
    worker = Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.spinner = None       # its cursor escapes would land in the command's stdout
    k = cfg.kafka
    assigned = {"ever": False}
    limit = max(k.connect_timeout_s, 4 * k.session_timeout_ms / 1000)

    @app.on_partitions_assigned.connect
    async def _assigned(_app: Any, assigned_tps: Any, **_kw: Any) -> None:
        if assigned_tps:
            assigned["ever"] = True

    def _refused(msg: str) -> None:
        # Faust logs a refused join and retries forever, and it cannot be stopped cleanly
        # before it joined, so the process ends here with the reason.
        if not assigned["ever"]:
            log.error("%s", msg)
            sys.stderr.write(f"stfm run: {msg}\n")
            sys.stderr.flush()
            os._exit(3)

    # the group's refusal, as soon as the Kafka client reports it; the timer is the fallback
    # for a join that never completes for any other reason
    refusal = _GroupRefusal(lambda: _refused(_group_refused(cfg)))
    logging.getLogger("aiokafka.consumer.group_coordinator").addHandler(refusal)
    watchdog = threading.Timer(limit, lambda: _refused(_never_assigned(cfg, limit)))
    watchdog.daemon = True
    watchdog.start()

    if idle_exit_s is not None:
        @app.timer(0.5)
        async def _idle_check() -> None:
            if not assigned["ever"] or not stats.messages:
                return              # still joining (or refused: the watchdog says so), or
                #                     waiting for the first input
            last = stats.last_processed
            if time.time() - last < idle_exit_s:
                return
            lag = 0
            consumer = app.consumer
            for tp in consumer.assignment():
                hw = consumer.highwater(tp)
                if hw is None:
                    return          # not fetched yet (a slow first fetch): lag unknown
                pos = await consumer.position(tp)
                lag += max(0, hw - (pos or 0))
            if lag == 0:
                log.info("idle for %.1fs with no lag: stopping", idle_exit_s)
                await worker.stop()
                if worker._starting_fut is not None:
                    worker._starting_fut.cancel()

    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        datadir.cleanup()
    watchdog.cancel()
    logging.getLogger("aiokafka.consumer.group_coordinator").removeHandler(refusal)
    if not assigned["ever"]:
        raise FaustGroupError(_never_assigned(cfg, limit))
    return stats


class _GroupRefusal(logging.Handler):
    """Calls ``refused()`` when the Kafka client logs that the group refused this member's
    protocol: a group that workers of the default engine formed keeps their protocol."""

    def __init__(self, refused: Any) -> None:
        super().__init__(logging.ERROR)
        self.refused = refused

    def emit(self, record: logging.LogRecord) -> None:
        if "InconsistentGroupProtocol" in record.getMessage():
            self.refused()


def _group_refused(cfg: StreamConfig) -> str:
    k = cfg.kafka
    return (f"consumer group {k.group_id!r} refused the Faust worker "
            "(InconsistentGroupProtocolError): workers of the default engine formed it, and "
            "a group keeps the protocol it was formed with. Use another --group-id for the "
            "Faust engine.")


def _never_assigned(cfg: StreamConfig, limit: float) -> str:
    k = cfg.kafka
    return (f"the Faust worker was not assigned a partition of {k.readings_topic!r} in "
            f"consumer group {k.group_id!r} within {limit:.0f}s: workers of the default "
            "engine in that group refuse Faust's consumers (InconsistentGroupProtocolError), "
            "or the topics are missing. Use another --group-id for the Faust engine.")


class FaustGroupError(RuntimeError):
    """The Faust worker never got a partition (its group is held by another protocol)."""
