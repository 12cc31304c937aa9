"""The ``stfm`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from connectors.kafka_io import Topics

TOPICS = Topics()
log = logging.getLogger("stfm")


def to_json(obj: Any, indent: int | None = None) -> str:
    from connectors.schemas import to_json as strict

    return strict(obj, indent)


SERVERS_HELP = "Kafka bootstrap servers (host:port,...)"


GRAPH_HELP = "sensor-graph recording (.npz) or adjacency; fixes sensors"
BACKTEST_GRAPH_HELP = ("the file's sensor graph: an adjacency CSV or edge list, a graph "
                       "recording (.npz), or 'comovement' (each sensor's 8 most correlated "
                       "sensors over the rows before --score-from-row); turns on "
                       "model.live_graph")


def _add_config_flags(p: argparse.ArgumentParser, kafka: bool = False,
                      graph_help: str = GRAPH_HELP) -> None:
    """The configuration's flags; ``kafka``: also the ones that say where and how the command
    talks to Kafka (a command without Kafka still reads ``[kafka]`` from ``--config`` and
    ``--set kafka.KEY=VALUE``)."""
    p.add_argument("--config", help="TOML configuration file (flags override it)")
    if kafka:
        p.add_argument("--bootstrap-servers",
                       help="Kafka bootstrap servers (host:port,...; kafka.bootstrap_servers)")
        p.add_argument("--group-id", help="consumer group of the workers (kafka.group_id)")
        p.add_argument("--topic", help="readings topic to read (kafka.readings_topic)")
        p.add_argument("--events-topic", help="events topic to read (kafka.events_topic)")
    p.add_argument("--interval-ms", type=int,
                   help="sampling grid interval (ms); also the interval of a file without "
                        "timestamps (default: the data's own, inferred)")
    p.add_argument("--patch-len", type=int, help="grid points per patch (= one step)")
    p.add_argument("--lateness-ms", type=int, help="out-of-order tolerance (ms)")
    p.add_argument("--horizon", type=int, help="grid points forecast per step")
    p.add_argument("--detector", choices=["bocpd", "page_hinkley", "adwin", "kswin"],
                   help="change detector (drift.detector; default bocpd)")
    p.add_argument("--lr", type=float, help="online learning rate (0 = frozen model)")
    p.add_argument("--seed", type=int,
                   help="seed of the model's initialization and sampling (model.seed)")
    p.add_argument("--graph", help=graph_help)
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                   help="override any configuration key, e.g. --set adapt.params=heads+norms")


def _set_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"--set expects KEY=VALUE (e.g. adapt.lr=0.001), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def print_config(cfg: Any, section: str | None = None) -> None:
    """The effective configuration at start, on stderr: one line with what differs from the
    defaults; with ``-v`` every key, one line per section."""
    from streaming.config import changed_from_defaults, summary_line

    if logging.getLogger().isEnabledFor(logging.DEBUG):
        lines = cfg.summary_lines() if section is None else [summary_line(section, cfg)]
        for line in lines:
            print(f"config {line}", file=sys.stderr)
        return
    changed = changed_from_defaults(cfg, section)
    print("config: " + (" ".join(changed) + " (others default" if changed else "defaults (")
          + "; every key with -v)", file=sys.stderr)


def interval_given(args: argparse.Namespace) -> bool:
    """Whether the grid interval was set (``--interval-ms``, ``--set patching.interval_ms``
    or ``[patching] interval_ms`` in the ``--config`` file) rather than left to the data."""
    from streaming.config import read_toml

    if getattr(args, "interval_ms", None) is not None:
        return True
    if "patching.interval_ms" in _set_overrides(getattr(args, "set_", [])):
        return True
    path = getattr(args, "config", None)
    return bool(path) and "interval_ms" in read_toml(path).get("patching", {})


def recording_cadence(rec: Any) -> tuple[int, str] | None:
    """A recording's sampling interval and how it was found: its own (regular timestamps),
    else the typical spacing of each sensor's readings (irregular ones)."""
    if rec.interval_ms:
        return int(rec.interval_ms), "its sampling interval"
    if rec.n_steps < 2:
        return None
    import numpy as np

    from streaming.ingest.cadence import CadenceEstimator, nice_interval

    est = CadenceEstimator(per_sensor=256)
    for j, s in enumerate(rec.sensors[:64]):
        ts = rec.timestamps[~np.isnan(rec.values[:, j])]
        est.learn_many([s] * len(ts), ts)
    found = est.estimate(force=True)
    if found is None:
        return None
    return nice_interval(found.interval_ms), f"irregular timestamps: {found.describe()}"


def load_config(args: argparse.Namespace) -> Any:
    from streaming.config import StreamConfig

    overrides = {
        "kafka.bootstrap_servers": getattr(args, "bootstrap_servers", None),
        "kafka.group_id": getattr(args, "group_id", None),
        "kafka.readings_topic": getattr(args, "topic", None),
        "kafka.events_topic": getattr(args, "events_topic", None),
        "patching.interval_ms": getattr(args, "interval_ms", None),
        "patching.patch_len": getattr(args, "patch_len", None),
        "patching.lateness_ms": getattr(args, "lateness_ms", None),
        "patching.timezone": getattr(args, "timezone", None),
        "model.horizon": getattr(args, "horizon", None),
        "model.lr": getattr(args, "lr", None),
        "model.seed": getattr(args, "seed", None),
        "drift.detector": getattr(args, "detector", None),
        "graph": getattr(args, "graph", None),
        "kafka.partition_map": getattr(args, "partition_map", None),
        **_set_overrides(getattr(args, "set_", [])),
    }
    return StreamConfig.load(getattr(args, "config", None), overrides)


def _add_security_flags(p: argparse.ArgumentParser, config: bool = True) -> None:
    """``--config`` (its ``[kafka]`` table) and ``--set kafka.KEY=VALUE``: the TLS/SASL
    settings of a tool's Kafka clients (README: Secured cluster)."""
    if config:
        p.add_argument("--config", help="TOML configuration file; its [kafka] table's "
                                        "security settings (flags override it)")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                   help="a [kafka] key, e.g. --set kafka.security_protocol=SSL "
                        "--set kafka.ssl_cafile=ca.pem")


def kafka_security(args: argparse.Namespace, config: bool = True) -> Any:
    """The ``[kafka]`` table of ``--config`` (when ``config``) with the ``--set kafka.*``
    overrides on top, validated: what a tool's clients need to reach a secured cluster."""
    from streaming.config import KafkaConfig, build_section, read_toml

    overrides = {k: v for k, v in _set_overrides(getattr(args, "set_", [])).items()
                 if k.startswith("kafka.")}
    path = getattr(args, "config", None) if config else None
    k = build_section(KafkaConfig, read_toml(path, overrides).get("kafka", {}), "kafka")
    k.validate()
    return k


# --- commands ---------------------------------------------------------------------------


BROKER_PROBE_S = 3.0      # how long a tool tries to reach its broker before it says so


def need_broker(servers: str, security: Any) -> None:
    """Fail fast, in words, when the broker a tool needs is not there: ``BrokerError`` ("broker
    at X not reachable after 3s", one line, exit 2) instead of kafka-python's 30 s bootstrap
    wait and its traceback."""
    from connectors.broker import wait_for_kafka

    wait_for_kafka(servers, timeout_s=BROKER_PROBE_S, max_backoff_s=0.5, security=security)


def cmd_broker(args: argparse.Namespace) -> int:
    from connectors.broker import EmbeddedBroker

    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)      # before the broker starts: a stop request that
    signal.signal(signal.SIGINT, _stop)       # comes while it starts still stops it cleanly
    broker = EmbeddedBroker(port=args.port, host=args.host, tls=args.tls).start()
    print(f"embedded broker on {broker.bootstrap_servers} (in-memory"
          f"{', TLS' if args.tls else ''}); Ctrl-C stops it", flush=True)
    if broker.tls_files is not None:
        print(f"TLS: clients verify the broker with the CA certificate "
              f"{broker.tls_files.ca_file} (made now, removed at stop): "
              f"{' '.join(broker.security.set_flags())}", flush=True)
    if args.partitions:
        from connectors.kafka_io import Topics, create_topics

        made = create_topics(broker.bootstrap_servers, Topics().all(), args.partitions,
                             security=broker.security)
        print(f"topics {', '.join(made)} with {args.partitions} partition(s) each (a topic "
              "a plain producer creates on this broker gets 4)", flush=True)
    try:
        while not stop and broker.running:
            time.sleep(0.2)
    finally:
        broker.stop()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from replay.simulator import SimConfig, simulate, write_simulation

    if (args.out is None) == (args.out_flag is None):
        print("stfm simulate: give the output file once: `stfm simulate net.npz` or "
              "`--out net.npz`", file=sys.stderr)
        return 2
    args.out = args.out or args.out_flag
    cfg = SimConfig(n_sensors=args.n_sensors, n_days=args.days, interval_ms=args.interval_ms,
                    seed=args.seed)
    rec, truths = simulate(cfg)
    truth_path = write_simulation(rec, truths, args.out)
    print(f"wrote {args.out}: {rec.n_sensors} sensors x {rec.n_steps} steps "
          f"({rec.values.size} readings), {len(rec.events)} events; drifts in {truth_path}")
    for t in truths:
        print(f"  {t.kind:<20} onset {t.onset_index:>6} sensors {','.join(t.sensors)}")
    return 0


def cmd_replay_publish(args: argparse.Namespace) -> int:
    from replay.publish import publish_recording

    rec = read_file(args, args.file, interval_ms=args.interval_ms, timezone=args.timezone)
    pmap = None
    if args.partition_map:
        from connectors.partitioning import PartitionMap

        pmap = PartitionMap.load(args.partition_map)
    need_broker(args.bootstrap_servers, kafka_security(args))
    stats = publish_recording(rec, args.bootstrap_servers, topic=args.topic,
                              events_topic=args.events_topic, speed=args.speed,
                              skip_missing=args.skip_missing, partitions=args.partitions,
                              progress=not args.quiet, partition_map=pmap,
                              security=kafka_security(args))
    print(f"published {stats.readings} readings and {stats.events} events in "
          f"{stats.seconds:.1f}s ({stats.readings / max(stats.seconds, 1e-9):,.0f} readings/s)"
          f"{read_note(rec)}")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from connectors.partitioning import (
        edge_cut,
        hash_partition,
        partition_graph,
        read_sensor_graph,
    )

    sensors, ei, ew = read_sensor_graph(args.graph, args.sensors_from)
    pmap = partition_graph(sensors, ei, ew, args.partitions, seed=args.seed, graph=args.graph)
    hashed = hash_partition(sensors, args.partitions)
    cut, hcut = edge_cut(pmap, sensors, ei, ew), edge_cut(hashed, sensors, ei, ew)
    pmap.save(args.out)
    print(f"{len(pmap.sensors)} sensors into {args.partitions} partitions → {args.out}")
    print(f"  edge cut  metis: {cut}")
    print(f"            hash:  {hcut}")
    for name, m in (("metis", pmap), ("hash", hashed)):
        b = m.balance()
        print(f"  balance   {name + ':':<6} sensors per partition {b['sizes']}, max/mean "
              f"{b['max_over_mean']:.3f}")
    print(f"publish with `stfm replay publish FILE --partition-map {args.out}` (topics with "
          f"{args.partitions} partitions)")
    return 0


def cmd_replay_record(args: argparse.Namespace) -> int:
    from connectors.recordings import write_recording
    from replay.record import record_topic

    need_broker(args.bootstrap_servers, kafka_security(args))
    rec, stats = record_topic(args.bootstrap_servers, args.topic, events_topic=args.events_topic,
                              start_offset=args.from_offset, end_offset=args.to_offset,
                              start=args.from_ts, end=args.to_ts, progress=not args.quiet,
                              security=kafka_security(args))
    write_recording(rec, args.out)
    print(f"recorded {stats.readings} readings ({rec.n_sensors} sensors x {rec.n_steps} rows), "
          f"{stats.events} events, {stats.invalid} invalid messages left out → {args.out}")
    return 0


def _add_reading_flags(p: argparse.ArgumentParser) -> None:
    """``--columns`` and ``--na-values``: what of a recording file becomes sensor readings
    (README: Reading real sensor files)."""
    p.add_argument("--columns", metavar="NAMES",
                   help="comma-separated column names or globs that become sensors, e.g. "
                        "'OT,T *' (default: every numeric column; a column that is mostly "
                        "text is skipped with a warning)")
    p.add_argument("--na-values", metavar="CODES",
                   help="comma-separated cell values read as missing besides empty/NA/NaN, "
                        "e.g. -9999 (a list starting with '-' needs '=': "
                        "--na-values=-9999,ERR)")


def read_file(args: argparse.Namespace, path: str, *, interval_ms: int | None,
              timezone: str | None) -> Any:
    """A recording file read as the file flags say (``--start``, ``--columns``,
    ``--na-values``; ``timezone`` None: naive timestamps are UTC, with a warning). What the
    reader resolved (duplicates, skipped columns, ...) is in its ``read_report``."""
    from connectors.recordings import read_recording

    return read_recording(path, start=args.start, interval_ms=interval_ms, timezone=timezone,
                          columns=getattr(args, "columns", None),
                          na_values=getattr(args, "na_values", None))


def graph_for(path: str, sensors: list[str]) -> tuple[Any, Any]:
    """``(edge_index, edge_weight)`` over ``sensors`` from ``--graph``: an adjacency CSV or
    edge list (``connectors.recordings.load_graph``), or a graph recording (.npz/.h5) whose
    edges between sensors of the same ids are kept."""
    import numpy as np

    from connectors.recordings import load_graph, read_recording

    if Path(path).suffix.lower() not in (".npz", ".h5", ".hdf5"):
        return load_graph(path, sensors)
    g = read_recording(path)
    if g.edge_index is None:
        raise ValueError(f"--graph {path}: the recording holds no graph")
    pos = {s: i for i, s in enumerate(sensors)}
    ids = np.array([pos.get(s, -1) for s in g.sensors])
    ei = ids[np.asarray(g.edge_index)]
    keep = (ei >= 0).all(axis=0)
    if not keep.any():
        raise ValueError(f"--graph {path}: none of its edges joins sensors of the data")
    w = None if g.edge_weight is None else np.asarray(g.edge_weight)[keep]
    return ei[:, keep], w


def read_note(rec: Any) -> str:
    """``"; read: 1 duplicate timestamp merged, ..."`` for a command's summary line, or ``""``
    (each item was logged as a warning when read)."""
    r = getattr(rec, "read_report", None)
    if r is None:
        return ""
    def counted(n: int, what: str, rest: str) -> str:
        return f"{n} {what}{'s' if n > 1 else ''} {rest}"

    said = []
    if r.duplicates:
        said.append(counted(r.duplicates, "duplicate timestamp", "merged (last wins)"))
    if r.skipped_columns:
        said.append(f"text column{'s' if len(r.skipped_columns) > 1 else ''} skipped: "
                    f"{', '.join(r.skipped_columns)}")
    if r.separator != ",":
        said.append(f"fields separated by {r.separator!r}"
                    + (" with decimal commas" if r.decimal == "," else ""))
    if r.epoch_unit != "ms":
        said.append(f"times in epoch {r.epoch_unit}")
    if r.day_first is not None:
        said.append(f"dates read {'day' if r.day_first else 'month'} first")
    if r.date_and_time:
        said.append(f"date and time columns {r.date_and_time[0]!r} + {r.date_and_time[1]!r} "
                    f"read as one")
    if r.calendar_columns:
        said.append(f"time from columns {', '.join(r.calendar_columns)}")
    if r.row_numbers:
        said.append(f"row numbers {r.row_numbers!r} skipped")
    if r.comment_lines:
        said.append(counted(r.comment_lines, "comment line", "skipped"))
    if r.units:
        said.append("a units row kept as units")
    if r.sentinels:
        said.append(counted(len(r.sentinels), "column",
                            "with a suspected missing-value code (--na-values)"))
    return f"; read: {', '.join(said)}" if said else ""


def _add_range_flags(p: argparse.ArgumentParser, events: bool = True) -> None:
    p.add_argument("--bootstrap-servers", default="127.0.0.1:9092", help=SERVERS_HELP)
    p.add_argument("--topic", default=TOPICS.readings, help="readings topic to read")
    if events:
        p.add_argument("--events-topic", default=None,
                       help="events topic to read too (default: none)")
    p.add_argument("--from-offset", type=int, help="first offset (every partition)")
    p.add_argument("--to-offset", type=int, help="end offset, exclusive (every partition)")
    p.add_argument("--from-ts", help="first reading time, by the readings' own ts "
                                     "(ISO-8601 or epoch ms)")
    p.add_argument("--to-ts", help="end reading time, exclusive (ISO-8601 or epoch ms)")


def cmd_replay_pretrain(args: argparse.Namespace) -> int:

    from connectors.recordings import load_graph

    corpus_mode = bool(args.corpus or args.synthetic or args.inductive or len(args.files) > 1)
    recs = []
    for f in args.files:
        rec = read_file(args, f, interval_ms=args.interval_ms, timezone=args.timezone)
        recs.append((Path(f).stem, rec))
    ranged = any(getattr(args, k) is not None
                 for k in ("from_offset", "to_offset", "from_ts", "to_ts"))
    if ranged or (not recs and not args.corpus and not args.synthetic):
        from replay.record import record_topic

        need_broker(args.bootstrap_servers, kafka_security(args, config=False))
        rec, _ = record_topic(args.bootstrap_servers, args.topic, start_offset=args.from_offset,
                              end_offset=args.to_offset, start=args.from_ts, end=args.to_ts,
                              progress=not args.quiet,
                              security=kafka_security(args, config=False))
        recs.append((args.topic, rec))
    if args.graph:
        if len(recs) != 1:
            print("stfm replay pretrain: --graph applies to a single recording; give each "
                  "recording its graph inside the file (.npz/.h5)", file=sys.stderr)
            return 2
        recs[0][1].edge_index, recs[0][1].edge_weight = load_graph(args.graph,
                                                                   list(recs[0][1].sensors))
    if corpus_mode:
        return _pretrain_corpus(args, recs)
    from replay.pretrain import PretrainConfig, pretrain

    rec = recs[0][1]
    cfg = _training_config(args, PretrainConfig, "pretrain")
    print_config(cfg, "pretrain")
    result = pretrain(rec, args.out, cfg, resume=args.resume, progress=not args.quiet)
    print(to_json({"best_val": result.best_val, "epochs": result.epochs_run,
                      "samples_per_s": round(result.samples_per_s, 1),
                      "checkpoint": result.checkpoint}))
    return 0


def _training_config(args: argparse.Namespace, cls: Any, section: str) -> Any:
    """``[section]`` of ``--config`` with the flags that name its keys and ``--set`` on top."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)} - {"graph"}
    overrides = {f"{section}.{k}": v for k, v in vars(args).items()
                 if k in fields and v is not None}
    if not args.graph_layer:
        overrides[f"{section}.graph"] = False
    sets = {k: v for k, v in _set_overrides(args.set_).items()
            if not k.startswith("kafka.")}      # the clients' settings (kafka_security)
    return cls.load(args.config, {**overrides, **sets})


def _pretrain_corpus(args: argparse.Namespace, recs: list[tuple[str, Any]]) -> int:
    """Corpus pretraining of the inductive backbone (``replay.foundation``)."""
    from replay.corpus import (
        SHARED,
        describe,
        recording_source,
        shared_source,
        synthetic_sources,
        training_pool,
    )
    from replay.foundation import FoundationConfig, pretrain_corpus

    cfg = _training_config(args, FoundationConfig, "foundation")
    print_config(cfg, "foundation")
    sources = [recording_source(r, name, lap_pe_dim=cfg.lap_pe_dim) for name, r in recs]
    if args.corpus:
        names = args.corpus_sets.split(",") if args.corpus_sets else list(SHARED)
        skip = set(args.exclude.split(",")) if args.exclude else set()
        bad = [n for n in [*names, *skip] if n not in SHARED]
        if bad:
            print(f"stfm replay pretrain: --corpus-sets/--exclude: unknown data set {bad[0]!r} "
                  f"(known: {', '.join(SHARED)})", file=sys.stderr)
            return 2
        sources += [shared_source(args.corpus, n, lap_pe_dim=cfg.lap_pe_dim)
                    for n in names if n not in skip]
    if args.synthetic:
        sources += synthetic_sources(cfg.seed, n_series=cfg.synthetic_series,
                                     n_networks=cfg.synthetic_networks,
                                     lap_pe_dim=cfg.lap_pe_dim,
                                     kernel_series=cfg.kernel_series,
                                     mixup_series=cfg.mixup_series,
                                     lagged_networks=cfg.lagged_networks,
                                     pool=training_pool(sources))
    log.info("corpus:\n%s", describe(sources))
    result = pretrain_corpus(sources, args.out, cfg, progress=not args.quiet,
                             resume=args.resume)
    print(to_json({"best_score": result.best_score, "steps": result.steps,
                   "minutes": round(result.seconds / 60, 1), "checkpoint": result.checkpoint,
                   "mixing": {n: round(p, 4) for n, _, p in result.mixing}}))
    return 0


def cmd_replay_backtest(args: argparse.Namespace) -> int:
    from replay.backtest import backtest, write_report
    from streaming.pipeline.core import StreamCore
    from streaming.pipeline.factory import build_model
    from streaming.runtime.microbatch import apply_torch_threads

    # --graph here is the file's graph, used by the model (model.live_graph on unless set)
    graph, args.graph = args.graph, None
    if graph and not any(s.startswith("model.live_graph=") for s in args.set_):
        args.set_.append("model.live_graph=true")
    tz = args.timezone or load_config(args).patching.timezone
    # a file with timestamps keeps its own interval (checked against --interval-ms below);
    # one without (given --start) is spaced by --interval-ms. The default zone (UTC, neither
    # --timezone nor patching.timezone) reads naive timestamps with a warning
    rec = read_file(args, args.file, interval_ms=args.interval_ms if args.start else None,
                    timezone=None if tz == "UTC" and not args.timezone else tz)
    if graph == "comovement":
        from models.cograph import comovement_graph

        # from the rows before the scored part only (the first fifth when none is set)
        lo, end = args.start_row, args.end_row or rec.n_steps
        hi = args.score_from_row if args.score_from_row > lo else lo + max(1, (end - lo) // 5)
        rec.edge_index, rec.edge_weight = comovement_graph(rec.values[lo:hi])
        print(f"stfm replay backtest: comovement graph of {rec.edge_index.shape[1]:,} edges "
              f"from rows {lo:,}-{hi:,}", file=sys.stderr)
    elif graph:
        rec.edge_index, rec.edge_weight = graph_for(graph, list(rec.sensors))
    if args.sensors:        # a pattern that matches no sensor is said before the run
        from replay.plots import select_sensors

        select_sensors(rec.sensors, args.sensors)
    cadence = recording_cadence(rec)
    given = interval_given(args)
    phase = 0
    if not given and cadence is not None:
        args.interval_ms = cadence[0]       # the recording's grid unless told otherwise
        if not any(s.startswith("patching.grid_phase_ms=") for s in args.set_):
            from connectors.spacing import grid_phase

            phase = grid_phase(rec.timestamps, cadence[0])
            args.set_.append(f"patching.grid_phase_ms={phase}")
    cfg = load_config(args)
    if not given and cadence is not None:
        from streaming.ingest.cadence import format_interval

        at = (f", points {format_interval(phase)} past the interval's multiples (as the "
              f"readings are)" if phase else "")
        print(f"stfm replay backtest: grid interval {cadence[0]} ms from {args.file} "
              f"({cadence[1]}){at}; pass --interval-ms to set another", file=sys.stderr)
    elif cadence is not None and cfg.patching.interval_ms != cadence[0]:
        from streaming.ingest.cadence import Cadence, mismatch, mismatch_message

        if mismatch(cfg.patching.interval_ms, cadence[0]):
            text = mismatch_message(cfg.patching.interval_ms, Cadence(
                cadence[0], rec.n_sensors, rec.n_steps), "stfm replay backtest")
            if not args.force:
                raise ValueError(f"{text}; or pass --force to run on this grid anyway")
            print("WARNING " + text, file=sys.stderr)
    apply_torch_threads(cfg)
    print_config(cfg)
    from streaming.pipeline.factory import resolve_checkpoint

    model = build_model(cfg, resolve_checkpoint(cfg, args.checkpoint, args.fresh))
    for d in model.checkpoint_differences(cfg.patching.interval_ms, list(rec.sensors)):
        log.warning("checkpoint %s does not match the data: %s", model.name, d)
    if rec.edge_index is not None and rec.edge_index.shape[1] > 0:
        model.set_graph(list(rec.sensors), rec.edge_index, rec.edge_weight)
    core = StreamCore(cfg, model, sensors=list(rec.sensors))
    res = backtest(rec, core, feedback=args.feedback, start_row=args.start_row,
                   end_row=args.end_row, progress=not args.quiet, holdout=args.holdout)
    summary = write_report(res, args.out, from_row=args.score_from_row or args.start_row,
                           title=Path(args.file).name, sensors=args.sensors)
    read = rec.read_report.as_dict() if rec.read_report is not None else {}
    if args.json:
        print(to_json({**summary, "read": read} if read else summary))
    else:
        print(backtest_words(summary, rec, args.out, read_note(rec),
                             rows=(args.start_row, args.end_row or rec.n_steps), tz=tz))
    return 0


def _num(x: Any) -> str:
    return "n/a" if x is None or x != x else f"{x:.4g}"


def backtest_words(summary: dict[str, Any], rec: Any, out: str, note: str,
                   rows: tuple[int, int] | None = None, tz: str = "UTC") -> str:
    """The few lines a person reads at the end of a backtest (the JSON is in
    ``OUT/report.json``, or on stdout with ``--json``); ``rows``: the rows run, when not the
    whole file; times in ``tz``."""
    from connectors.schemas import format_when

    lo, hi = rows if rows is not None else (0, rec.n_steps)
    lo, hi = max(0, lo), min(max(hi, lo + 1), rec.n_steps)
    span = (f"{rec.n_steps:,} rows" if (lo, hi) == (0, rec.n_steps) else
            f"rows {lo:,}-{hi:,} of {rec.n_steps:,}")

    experts = summary.get("experts", {})
    pers = (experts.get("persistence") or {}).get("mae")
    others = sorted(((v["mae"], k) for k, v in experts.items()
                     if k not in ("persistence", "model", "frozen") and v.get("mae") is not None))
    ratio = summary.get("mae_vs_persistence")
    kinds = summary.get("alerts_by_kind") or {}
    lines = [
        f"backtest of {summary.get('title')}: {span} x {rec.n_sensors} sensors, "
        f"{format_when(int(rec.timestamps[lo]), tz)} to "
        f"{format_when(int(rec.timestamps[hi - 1]), tz)}, "
        f"{summary.get('steps', 0):,} steps scored in {summary.get('seconds', 0):.0f} s",
        f"served forecast MAE {_num(summary.get('mae'))}"
        + (f" (persistence {_num(pers)}: {ratio:.3f}x" if ratio is not None else " (")
        + (f"; best other simple forecaster {others[0][1]} {_num(others[0][0])})" if others
           else ")"),
        "alerts: " + (", ".join(f"{n} {k}" for k, n in sorted(kinds.items(),
                                                             key=lambda kv: -kv[1]))
                      or "none"),
        f"report: {out}/report.json, per_sensor.csv, alerts.jsonl; plots: {out}/forecasts.png, "
        f"{out}/error_over_time.png" + (f"\n{note.strip('; ')}" if note else "")]
    if coll := summary.get("grid_collisions"):
        lines.insert(1, f"WARNING {coll:,} reading{'s' if coll > 1 else ''} fell on a grid "
                        f"point that an earlier reading of the same sensor already had (the "
                        f"later kept): the grid (--interval-ms) is coarser than the data's "
                        f"spacing there, or the timestamps jitter across its half points")
    return "\n".join(lines)


def cmd_topics(args: argparse.Namespace) -> int:
    from connectors.kafka_io import create_topics, topic_partitions

    cfg = load_config(args)
    k = cfg.kafka
    names = args.topics or [k.readings_topic, k.events_topic, k.forecasts_topic,
                            k.alerts_topic, k.dead_letter_topic]
    need_broker(k.bootstrap_servers, k)
    if args.topics_command == "list":
        have = topic_partitions(k.bootstrap_servers, names, security=k)
        for n in names:
            print(f"{n:<24} {have[n]} partition(s)" if n in have else f"{n:<24} (missing)")
        return 0
    made = create_topics(k.bootstrap_servers, names, args.partitions, security=k)
    differ = 0
    for n, (parts, created) in made.items():
        if created:
            print(f"{n:<24} created with {parts} partition(s)")
        elif parts == args.partitions:
            print(f"{n:<24} exists with {parts} partition(s)")
        else:
            differ += 1
            print(f"{n:<24} exists with {parts} partition(s), not {args.partitions}: Kafka "
                  "cannot change that in place; delete the topic (a new embedded broker "
                  "starts empty) or use other topic names")
    return 1 if differ else 0


def log_region_layout(cfg: Any, sensors: list[str] | None) -> dict[str, int]:
    """Say how the input topics are partitioned, i.e. which sensors share a model: every
    readings partition is a region with its own core (model, state, alerts)."""
    from connectors.kafka_io import partition_of, topic_partitions

    k = cfg.kafka
    parts = topic_partitions(k.bootstrap_servers, [k.readings_topic, k.events_topic],
                             security=k)
    n = parts.get(k.readings_topic, 0)
    pmap = None
    if k.partition_map:
        from connectors.partitioning import PartitionMap

        pmap = PartitionMap.load(k.partition_map)
        sensors = sensors or sorted(pmap.sensors)
        if n and pmap.partitions != n:
            log.warning("kafka.partition_map %s has %d partitions but readings topic %r has "
                        "%d: readings published with the map land on partitions this layout "
                        "does not expect", k.partition_map, pmap.partitions, k.readings_topic,
                        n)
        else:
            log.info("regions follow the partition map %s (%s, edge cut %s)", k.partition_map,
                     pmap.method, pmap.edge_cut)
    if n == 1:
        log.info("readings topic %r has 1 partition: one region, all sensors share one "
                 "model", k.readings_topic)
    elif n > 1:
        split = ""
        if sensors:
            by: dict[int, list[str]] = {}
            for s in sensors:
                p = pmap.partition_of(s) if pmap is not None and s in pmap else \
                    partition_of(s, n)
                by.setdefault(p, []).append(s)
            split = "; ".join(f"region {p}: {len(v)} sensors ({', '.join(v[:3])}"
                              f"{', ...' if len(v) > 3 else ''})" for p, v in sorted(by.items()))
            split = (f" By the partition map: {split}." if pmap is not None else
                     f" Keyed by sensor id: {split}.")
        log.warning("readings topic %r has %d partitions: each is its own region with its "
                    "own model, state and alerts, and sensors are split among them by "
                    "message key.%s For one model over all sensors, create the topics with "
                    "one partition before publishing (`stfm topics create --partitions 1`, "
                    "or `stfm broker --partitions 1`).", k.readings_topic, n, split)
        ev = parts.get(k.events_topic, 0)
        if ev not in (0, n):
            log.warning("events topic %r has %d partitions but readings %d: events are "
                        "routed to regions by sensor instead of by partition", k.events_topic,
                        ev, n)
    return parts


def cmd_run(args: argparse.Namespace) -> int:
    from connectors.kafka_io import ensure_topics
    from streaming.config import KafkaConfig

    cfg = load_config(args)
    infer = not interval_given(args) and args.engine == "aiokafka"
    print_config(cfg)
    if infer:
        print("config patching.interval_ms: not given; inferred from the first readings of "
              "each sensor (held until then; --interval-ms sets it)", file=sys.stderr)
    if args.engine == "faust" and cfg.kafka.group_id == KafkaConfig.group_id:
        # its consumers use Faust's own assignor: sharing a group with the aiokafka engine
        # fails with InconsistentGroupProtocolError
        cfg.kafka.group_id = f"{KafkaConfig.group_id}-faust"
        log.info("faust engine: consumer group %r", cfg.kafka.group_id)
    if args.engine == "faust" and cfg.checkpoint.dir:
        print("stfm run: checkpoint.dir (worker checkpoints) needs --engine aiokafka: the Faust "
              "engine keeps no checkpoints (README: what the Faust engine does not "
              "guarantee)", file=sys.stderr)
        return 2
    if args.engine == "faust" and cfg.kafka.processing_guarantee == "exactly_once":
        print("stfm run: kafka.processing_guarantee = exactly_once needs --engine aiokafka: "
              "the Faust engine produces and commits at least once (README: Delivery "
              "guarantees)", file=sys.stderr)
        return 2
    if args.ui is not None:
        cfg.observe.ui_port = args.ui
    if args.metrics_port is not None:
        cfg.observe.metrics_port = args.metrics_port
    cfg.observe.validate()
    want_ui = args.ui is not None or bool(cfg.observe.ui_port)
    if args.engine == "faust" and (want_ui or cfg.observe.metrics_port):
        print("stfm run: --ui and --metrics-port need --engine aiokafka", file=sys.stderr)
        return 2
    from streaming.pipeline.factory import build_core, resolve_checkpoint

    ckpt = resolve_checkpoint(cfg, args.checkpoint, args.fresh)
    core = build_core(cfg, ckpt)
    k = cfg.kafka
    from connectors.broker import BrokerError, wait_for_kafka
    from connectors.transactions import TransactionsUnsupported
    from streaming.runtime.worker import (
        BrokerUnavailable,
        LiveWorker,
        OffsetOutOfRange,
        TransactionFailed,
    )

    try:
        wait_for_kafka(k.bootstrap_servers, timeout_s=k.connect_timeout_s, security=k)
    except BrokerError as exc:
        print(f"stfm run: {exc} (kafka.connect_timeout_s = {k.connect_timeout_s:g})",
              file=sys.stderr)
        return 3
    ensure_topics(k.bootstrap_servers, [k.readings_topic, k.events_topic, k.forecasts_topic,
                                        k.alerts_topic, k.dead_letter_topic],
                  partitions=k.partitions, security=k)
    log_region_layout(cfg, list(core.sensors) if core.patcher.registry.fixed else None)
    from stfm.views import describe, start_views

    views = start_views(cfg, ui=want_ui)
    for line in describe(views):
        print(f"stfm run: {line}", file=sys.stderr, flush=True)
    worker = None
    if args.engine == "faust":
        from streaming.runtime.faust_app import FaustGroupError, run_faust_worker

        try:
            stats = run_faust_worker(cfg, core, idle_exit_s=args.idle_exit)
        except FaustGroupError as exc:
            print(f"stfm run: {exc}", file=sys.stderr)
            return 3
    else:
        worker = LiveWorker(cfg, core, core_factory=lambda keep=None: build_core(cfg, ckpt, keep),
                            idle_exit_s=args.idle_exit, status_every_s=args.status_every,
                            from_beginning=args.from_beginning, observers=views.observers,
                            infer_interval=infer)
        try:
            stats = asyncio.run(worker.run())
        except BrokerUnavailable as exc:
            print(f"stfm run: {exc}", file=sys.stderr)
            return 3
        except (OffsetOutOfRange, TransactionFailed) as exc:
            print(f"stfm run: {exc}", file=sys.stderr)
            return 1
        except TransactionsUnsupported as exc:
            print(f"stfm run: {exc}", file=sys.stderr)
            return 2
        finally:
            views.close()
    regions = worker.cores if worker is not None and worker.cores else {0: core}
    first = regions[min(regions)]
    summary = {"worker": stats.as_dict(), "metrics": first.metrics.as_dict(),
               "patcher": dict(vars(first.patcher.stats)), "model_version": first.model.version,
               "sensors": sum(c.own_count() for c in regions.values()),
               "regions": {str(p): {"metrics": c.metrics.as_dict(),
                                    "patcher": dict(vars(c.patcher.stats)),
                                    "model_version": c.model.version, "sensors": c.own_count()}
                           for p, c in sorted(regions.items())}}
    if worker is not None and worker.cadence_note:
        summary["cadence"] = worker.cadence_note
    if worker is not None and worker.nothing_to_read:
        summary["nothing_to_read"] = worker.nothing_to_read
        print(f"stfm run: {worker.nothing_to_read}", file=sys.stderr)
    if args.summary:
        Path(args.summary).write_text(to_json(summary, indent=2))
    print(to_json(summary) if args.json else run_words(summary, args.summary))
    return 0


def run_words(summary: dict[str, Any], path: str | None) -> str:
    """The few lines a person reads when ``stfm run`` ends (the JSON: ``--summary FILE`` or
    ``--json``)."""
    w, m = summary["worker"], summary["metrics"]
    lines = [f"stfm run: {w['messages']:,} messages read ({w['readings_accepted']:,} readings "
             f"accepted, {w['dead_letters']:,} dead letters), {w['forecasts']:,} forecasts "
             f"and {w['alerts']:,} alerts produced by {summary['sensors']:,} sensors in "
             f"{len(summary['regions'])} region(s), model {summary['model_version']}"]
    if m.get("points"):
        lines.append(f"online MAE {_num(m.get('mae'))} over {m['points']:,} scored points")
    if w.get("offsets_out_of_range"):
        lines.append(f"{w['offsets_out_of_range']} offset(s) found outside their partition "
                     "(see the log)")
    lines.append("summary: " + (path if path else "pass --summary FILE or --json for all of "
                                "it"))
    return "\n".join(lines)


def cmd_alerts_tail(args: argparse.Namespace) -> int:
    from connectors.kafka_io import make_consumer
    from connectors.schemas import ENGINE_HEADER, WORKER_HEADER, decode_alert, format_minute
    from connectors.transactions import CommittedFilter, install_committed_filter

    need_broker(args.bootstrap_servers, kafka_security(args))
    consumer = make_consumer(args.bootstrap_servers, args.topic, group_id=None,
                             from_beginning=args.from_beginning, security=kafka_security(args),
                             consumer_timeout_ms=int(args.timeout * 1000) if args.timeout else
                             float("inf"))
    install_committed_filter(consumer)      # alerts of aborted transactions left out
    keep = alert_filter(args)
    tz = args.timezone or "UTC"
    n = bad = shown = copies = 0
    seen = SeenIds()
    try:
        for msg in CommittedFilter().feed(consumer):
            n += 1
            try:
                a = decode_alert(msg.value, f"offset {msg.offset}")
            except ValueError as exc:
                bad += 1
                print(f"(unreadable alert at offset {msg.offset}: {exc}): {msg.value[:200]!r}")
            else:
                tags = dict(msg.headers or ())       # the live worker's provenance
                if ENGINE_HEADER in tags or WORKER_HEADER in tags:
                    a.engine = tags.get(ENGINE_HEADER, b"").decode(errors="replace") or None
                    a.worker = tags.get(WORKER_HEADER, b"").decode(errors="replace") or None
                if not keep(a):
                    continue
                if seen.again(a.id) and not args.all:
                    copies += 1             # the same alert from another worker or engine
                    continue
                shown += 1
                source = f"  [{a.engine or '?'} {a.worker or '?'}]" if a.engine or a.worker \
                    else ""
                print(f"{format_minute(a.ts, tz)} {_zone_label(a.ts, tz)}  {a.kind:<12} "
                      f"{a.severity:<8} {','.join(a.sensors):<20} {a.text}{source}",
                      flush=True)
            if args.max and shown + bad >= args.max:       # lines printed
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    # said on stderr, so that stdout stays one line per alert
    print(f"stfm alerts tail: read {n} message(s) from {args.topic}: {n - bad} alert(s)"
          + (f", {shown} shown (filtered)" if shown != n - bad - copies else "")
          + (f", {copies} repeated copies left out (--all prints them)" if copies else "")
          + (f", {bad} unreadable" if bad else "") + ("" if n - bad else " (no alerts)"),
          file=sys.stderr)
    return 0


SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


class SeenIds:
    """The alert ids printed lately (the newest ``size``): an alert that two workers or
    engines wrote to one topic has the same id (kind, sensor, step), so ``alerts tail``
    prints it once."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._ids: dict[str, None] = {}

    def again(self, alert_id: str) -> bool:
        """Whether ``alert_id`` was seen before (and remember it)."""
        if alert_id in self._ids:
            return True
        self._ids[alert_id] = None
        if len(self._ids) > self.size:
            del self._ids[next(iter(self._ids))]
        return False


def alert_filter(args: argparse.Namespace) -> Any:
    """The ``alerts tail`` filters as one predicate on an alert: ``--sensor`` (ids or globs,
    any of the alert's sensors), ``--kind`` (comma-separated) and ``--severity`` (that
    severity or worse)."""
    from fnmatch import fnmatchcase

    pats = [p.strip() for p in (args.sensor or "").split(",") if p.strip()]
    kinds = {k.strip() for k in (args.kind or "").split(",") if k.strip()}
    least = SEVERITY_RANK[args.severity] if args.severity else 0

    def keep(a: Any) -> bool:
        if kinds and a.kind not in kinds:
            return False
        if SEVERITY_RANK.get(a.severity, 1) < least:
            return False
        return not pats or any(fnmatchcase(s, p) for s in a.sensors for p in pats)

    return keep


def _zone_label(ms: int, tz: str) -> str:
    """The zone's abbreviation at ``ms`` (CET, CEST, UTC), so a time read says its zone."""
    from datetime import datetime

    from connectors.schemas import zone

    return datetime.fromtimestamp(ms / 1000, zone(tz)).tzname() or tz


def _time_arg(value: str | None) -> int | None:
    """``--from-ts``/``--to-ts``: epoch ms or ISO-8601."""
    from connectors.schemas import parse_ts

    if value is None:
        return None
    try:
        return parse_ts(int(value) if value.isdigit() else value)
    except ValueError as exc:
        raise SystemExit(f"bad time {value!r}: {exc}") from None


def cmd_alerts_report(args: argparse.Namespace) -> int:
    from replay.alerts_report import (
        AlertsReportError,
        format_table,
        read_alerts_file,
        read_alerts_topic,
        write_report,
    )

    try:
        if args.file:
            alerts = read_alerts_file(args.file)
            source = args.file
        else:
            need_broker(args.bootstrap_servers, kafka_security(args))
            alerts, problems = read_alerts_topic(
                args.bootstrap_servers, args.topic, start_offset=args.from_offset,
                end_offset=args.to_offset,
                start_ts=_time_arg(args.from_ts), end_ts=_time_arg(args.to_ts),
                security=kafka_security(args))
            for p in problems:
                log.warning("left out: %s", p)
            source = f"{args.topic} on {args.bootstrap_servers}"
    except AlertsReportError as exc:
        raise SystemExit(f"alerts report: {exc}") from None
    from connectors.schemas import zone

    try:
        zone(args.timezone)
    except (ValueError, KeyError, OSError):
        raise SystemExit(f"alerts report: --timezone: unknown zone {args.timezone!r} (an IANA "
                         "name such as UTC or Europe/Berlin)") from None
    summary = write_report(alerts, args.out, title=source, tz=args.timezone,
                           sensors=args.sensors)
    print(format_table(alerts, limit=args.limit, tz=args.timezone))
    print(f"\n{summary['alerts']} alerts from {source}: by kind {summary['by_kind']}, "
          f"by severity {summary['by_severity']}, {summary['with_events']} naming events "
          f"→ {args.out}/alerts.csv, summary.json, timeline.png")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stfm.demo import run_demo

    return run_demo(Path(args.out), n_sensors=args.n_sensors, days=args.days, seed=args.seed,
                    fresh=args.fresh, ui_port=args.ui, keep_open=args.keep_open)


# `replay pretrain`'s training flags: each sets the key of its name in [pretrain] (one
# recording) or [foundation] (a corpus). Their help is the comment beside the key's field in
# the dataclass (read as streaming.config_reference reads the online keys for the README);
# the text here is for the fields without one
TRAINING_FLAGS: dict[str, tuple[type, str]] = {
    "epochs": (int, "passes over the training split"),
    "batch_size": (int, ""),
    "lr": (float, "AdamW learning rate (a corpus: the peak of its cosine schedule)"),
    "d_model": (int, ""),
    "n_layers": (int, ""),
    "n_heads": (int, ""),
    "patch_len": (int, "grid points per patch (one token)"),
    "context_patches": (int, ""),
    "horizon": (int, ""),
    "train_rows": (int, ""),
    "val_rows": (int, ""),
    "test_rows": (int, ""),
    "stride": (int, ""),
    "patience": (int, "epochs without a better validation loss before stopping early"),
    "seed": (int, "seed of the initialization, window order and masks (same seed, same "
                  "model)"),
    "w_forecast": (float, "weight of the forecasting objective"),
    "w_masked": (float, "weight of masked patch modeling"),
    "w_contrastive": (float, "weight of the contrastive objective (InfoNCE between augmented "
                             "views)"),
    "mask_ratio": (float, "share of the patches hidden for masked patch modeling"),
    "device": (str, "torch device: auto (a GPU when there is one, else the CPU), cpu, cuda, "
                    "cuda:1, ..."),
    "init_checkpoint": (str, ""),
    "trainable": (str, ""),
    "select_on": (str, ""),
    "max_steps": (int, ""),
    "max_minutes": (float, ""),
    "session_steps": (int, ""),
    "threads": (int, ""),
    "graph_from": (str, ""),
    "graph_k": (int, ""),
}


class _TrainingHelp(str):
    """The help of a training flag: says its key; ``--help`` prints :meth:`text` instead, the
    key's meaning and default in each table that has it (which imports the training code,
    torch included: only when help is printed, not on every start)."""

    key: str

    def __new__(cls, key: str) -> _TrainingHelp:
        self = super().__new__(cls, TRAINING_FLAGS[key][1]
                               or f"the training key {key} ([pretrain]/[foundation])")
        self.key = key
        return self

    def text(self) -> str:
        import dataclasses

        from replay.foundation import FoundationConfig
        from replay.pretrain import PretrainConfig
        from streaming.config_reference import _field_comments, _show

        said = [(f"{cls.SECTION}.{self.key} = {_show(f.default)}",
                 _field_comments(cls).get(self.key) or TRAINING_FLAGS[self.key][1])
                for cls in (PretrainConfig, FoundationConfig)
                for f in dataclasses.fields(cls) if f.name == self.key]
        if len({meaning for _, meaning in said}) == 1:
            text = f"{said[0][1]} [{', '.join(key for key, _ in said)}]"
        else:
            text = "; ".join(f"{key}: {meaning}" for key, meaning in said)
        return text.replace("%", "%%")


class _Renamed(argparse.Action):
    """A flag's former name, hidden from ``--help``: still works, and says the new one."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"stfm: {option_string} is now {self.new} (the old name still works for now)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


class _DefaultsFormatter(argparse.HelpFormatter):
    """argparse's help plus ``(default: X)`` where a flag has a default worth saying (not
    None, not an off switch) and its help does not already say one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (d is None or isinstance(d, bool) or d is argparse.SUPPRESS or d == [] or d == ""
                or "default" in text or action.option_strings == []):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class _Parser(argparse.ArgumentParser):
    """Every command's parser (subcommands inherit the class): ``--help`` shows each flag's
    default, and the training flags' meanings (:class:`_TrainingHelp`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        for action in self._actions:
            if isinstance(action.help, _TrainingHelp):
                action.help = action.help.text()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="stfm", description="streaming spatio-temporal learning")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="debug logging, and every configuration key at start (not only the "
                         "ones that differ from the defaults)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker")
    p.add_argument("--port", type=int, default=9092,
                   help="port to listen on (0 = a free one; the address is printed)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--partitions", type=int, default=1,
                   help="create the worker's five topics with this many partitions at start "
                        "(0 = create none; a topic a producer auto-creates gets 4)")
    p.add_argument("--tls", action="store_true",
                   help="clients must use TLS: a CA and server certificate are made at start "
                        "and the CA file's path is printed (README: Secured cluster)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("simulate", help="write a simulated sensor network with injected drifts")
    p.add_argument("out", nargs="?", help="output file (.npz, .csv or .h5)")
    p.add_argument("--out", dest="out_flag", metavar="FILE",
                   help="the output file, as a flag (like `stfm replay record --out`)")
    p.add_argument("--n-sensors", type=int, default=30, metavar="N",
                   help="sensors in the simulated network")
    p.add_argument("--sensors", type=int, dest="n_sensors", action=_Renamed, new="--n-sensors")
    p.add_argument("--days", type=float, default=14.0, help="length of the recording in days")
    p.add_argument("--interval-ms", type=int, default=300_000,
                   help="sampling interval of the recording (ms)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the network, its readings and drifts (same seed, same file)")
    p.set_defaults(func=cmd_simulate)

    rp = sub.add_parser("replay", help="recorded data: publish, record, pretrain, backtest"
                        ).add_subparsers(dest="replay_command", required=True)
    p = rp.add_parser("publish", help="publish a recording to Kafka in timestamp order")
    p.add_argument("file", help="recording file (.npz, .csv or .h5)")
    p.add_argument("--bootstrap-servers", default="127.0.0.1:9092", help=SERVERS_HELP)
    p.add_argument("--topic", default=TOPICS.readings, help="readings topic to write")
    p.add_argument("--events-topic", default=TOPICS.events,
                   help="events topic to write (the recording's events)")
    p.add_argument("--speed", type=float, default=0.0,
                   help="replay factor (1 = real time); 0 = as fast as possible")
    p.add_argument("--start", help="start time for files without timestamps (ISO-8601)")
    p.add_argument("--timezone",
                   help="IANA zone of timestamps written without a UTC offset (default: "
                        "patching.timezone, UTC)")
    _add_reading_flags(p)
    p.add_argument("--interval-ms", type=int, help="interval for files without timestamps")
    p.add_argument("--skip-missing", action="store_true", help="do not publish nulls")
    p.add_argument("--partitions", type=int, default=None,
                   help="partitions if topics are created (default: the map's, else 1)")
    p.add_argument("--partition-map", metavar="MAP_JSON",
                   help="send each reading to its sensor's partition from this map (`stfm "
                        "partition`) instead of by key hash")
    _add_security_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay_publish)

    p = sub.add_parser("partition", help="sensor -> partition (region) map that keeps graph "
                                         "neighbours together (METIS)")
    p.add_argument("--graph", required=True,
                   help="graph recording (.npz/.h5 with a graph) or adjacency / edge-list CSV")
    p.add_argument("--sensors-from", metavar="FILE",
                   help="for a graph CSV: the sensor ids, from a recording or a text file of "
                        "ids in the adjacency's order")
    p.add_argument("--partitions", type=int, required=True,
                   help="partitions (regions) to split the sensors into")
    p.add_argument("--out", required=True, help="partition map JSON")
    p.add_argument("--seed", type=int, default=0, help="METIS seed (same input, same map)")
    p.set_defaults(func=cmd_partition)

    p = rp.add_parser("record", help="record a topic range into a file")
    p.add_argument("--out", required=True, help="output file (.npz, .csv or .h5)")
    _add_range_flags(p)
    _add_security_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay_record)

    p = rp.add_parser("pretrain", help="pretrain the backbone on recordings, topic ranges, "
                                       "the shared data corpus and synthetic series",
                      description="The training flags (--epochs ... --threads) set the key of "
                                  "their name in [pretrain] (one recording) or [foundation] "
                                  "(a corpus: several recordings, --corpus, --synthetic or "
                                  "--inductive); each says the tables that have it and their "
                                  "defaults.")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="recording files (or give --topic and a range); more than one, or "
                        "--corpus/--synthetic/--inductive, pretrains the inductive backbone "
                        "of the [foundation] table")
    p.add_argument("--corpus", metavar="DATA_DIR",
                   help="add the data sets of this shared data folder (their rows before "
                        "the online/test part)")
    p.add_argument("--corpus-sets", help="comma-separated subset of the folder's data sets")
    p.add_argument("--exclude", help="comma-separated data sets to leave out (held out)")
    p.add_argument("--synthetic", action="store_true",
                   help="add synthetic series and simulated networks")
    p.add_argument("--inductive", action="store_true",
                   help="one recording, but the inductive backbone (no per-sensor weights)")
    _add_range_flags(p, events=False)
    p.add_argument("--out", required=True, help="output directory (best/ and last/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument("--start", help="start time for files without timestamps (ISO-8601)")
    p.add_argument("--timezone",
                   help="IANA zone of timestamps written without a UTC offset (default: "
                        "patching.timezone, UTC)")
    _add_reading_flags(p)
    p.add_argument("--interval-ms", type=int, help="interval for files without timestamps")
    p.add_argument("--graph", help="adjacency CSV (N x N) or edge list for the sensors")
    p.add_argument("--no-graph", dest="graph_layer", action="store_false",
                   help="train without the graph layer")
    p.add_argument("--config", help="TOML file; its [pretrain] table (flags override it)")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                   help="override any pretrain key, e.g. --set pretrain.mask_ratio=0.4; "
                        "kafka.* keys: the security of the topic reader (--set "
                        "kafka.security_protocol=SSL)")
    for name, (typ, _) in TRAINING_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ,
                       help=_TrainingHelp(name))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_replay_pretrain)

    p = rp.add_parser("backtest", help="run the online core over a recording (no Kafka) "
                                       "and write a report with plots")
    p.add_argument("file", help="recording file (.npz, .csv or .h5)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="model checkpoint directory (default: the package's "
                                        "pretrained stfm-tiny)")
    g.add_argument("--fresh", action="store_true",
                   help="start from a randomly initialized model instead of the default "
                        "pretrained one")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--feedback", choices=["delayed", "immediate"], default="delayed",
                   help="delayed: learn when the stream delivers the truth (live behaviour); "
                        "immediate: the FSNet/OneNet protocol, for comparisons only")
    p.add_argument("--start-row", type=int, default=0,
                   help="first row of the recording that is run")
    p.add_argument("--end-row", type=int, default=None,
                   help="row to stop at, exclusive (default: the end of the recording)")
    p.add_argument("--holdout", type=float, default=0.0,
                   help="hide this share of the readings from the model and score how it "
                        "fills them (imputation error in the report)")
    p.add_argument("--score-from-row", type=int, default=0,
                   help="count only forecasts whose horizon starts here (warm-up before)")
    p.add_argument("--sensors", metavar="IDS",
                   help="sensors forecasts.png draws: comma-separated ids or globs "
                        "('T (degC),s01*'; default: the 3 with the most alerts, then the "
                        "highest MAE relative to persistence)")
    p.add_argument("--start", help="start time for files without timestamps (ISO-8601)")
    p.add_argument("--timezone",
                   help="IANA zone of timestamps written without a UTC offset (default: "
                        "patching.timezone, UTC)")
    p.add_argument("--force", action="store_true",
                   help="run even when --interval-ms is more than 2x off the data's spacing")
    p.add_argument("--json", action="store_true",
                   help="print the whole summary as JSON (it is in OUT/report.json too) "
                        "instead of a few lines")
    _add_reading_flags(p)
    _add_config_flags(p, graph_help=BACKTEST_GRAPH_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay_backtest)

    p = sub.add_parser("run", help="run the live worker")
    _add_config_flags(p, kafka=True)
    p.add_argument("--timezone", help="IANA zone of reading timestamps written without a UTC "
                                      "offset (patching.timezone; default UTC)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="model checkpoint directory (default: the package's "
                                        "pretrained stfm-tiny)")
    g.add_argument("--fresh", action="store_true",
                   help="start from a randomly initialized model instead of the default "
                        "pretrained one")
    p.add_argument("--engine", choices=["aiokafka", "faust"], default="aiokafka",
                   help="aiokafka: the worker with regions, checkpoints, exactly-once and the "
                        "live page; faust: a Faust agent (README: what the Faust engine does "
                        "not guarantee)")
    p.add_argument("--idle-exit", type=float, default=None,
                   help="stop once the input was read to its end and nothing new came for "
                        "this many seconds (the last partial step is then closed); a worker "
                        "that has read nothing yet waits for its first input")
    p.add_argument("--summary", help="write a JSON summary here on exit")
    p.add_argument("--json", action="store_true",
                   help="print the JSON summary on stdout instead of a few lines")
    p.add_argument("--status-every", type=float, default=10.0,
                   help="seconds between status log lines (lag per partition, counts)")
    p.add_argument("--partition-map", metavar="FILE",
                   help="sensor -> partition map of `stfm partition` that the readings were "
                        "published with (kafka.partition_map): the regions' layout follows it")
    p.add_argument("--ui", type=int, metavar="PORT",
                   help="serve the live page on this port (observe.ui_port; 0: a free one)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus /metrics on this port (observe.metrics_port)")
    p.add_argument("--from-beginning", action="store_true",
                   help="read the input topics from their start with a fresh state, ignoring "
                        "the group's committed offsets and checkpoints")
    p.set_defaults(func=cmd_run)

    tp = sub.add_parser("topics", help="create or list the topics (and their partitions)"
                        ).add_subparsers(dest="topics_command", required=True)
    p = tp.add_parser("create", help="create the topics with a partition layout; one "
                                     "readings partition = one region with its own model")
    p.add_argument("topics", nargs="*", help="topic names (default: the five the worker uses)")
    p.add_argument("--partitions", type=int, default=1,
                   help="partitions of each topic created (readings: one region each)")
    p.add_argument("--config", help="TOML configuration file (its [kafka] topic names)")
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (host:port,...)")
    _add_security_flags(p, config=False)
    p.set_defaults(func=cmd_topics)
    p = tp.add_parser("list", help="the topics' partition counts")
    p.add_argument("topics", nargs="*", help="topic names (default: the five the worker uses)")
    p.add_argument("--config", help="TOML configuration file (its [kafka] topic names)")
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (host:port,...)")
    _add_security_flags(p, config=False)
    p.set_defaults(func=cmd_topics)

    ap_alerts = sub.add_parser("alerts", help="alerts: tail, report").add_subparsers(
        dest="alerts_command", required=True)
    p = ap_alerts.add_parser("tail", help="print alerts as they arrive")
    p.add_argument("--bootstrap-servers", default="127.0.0.1:9092", help=SERVERS_HELP)
    p.add_argument("--topic", default=TOPICS.alerts, help="alerts topic to read")
    p.add_argument("--from-beginning", action="store_true",
                   help="print the topic's alerts from its start (default: only new ones)")
    p.add_argument("--max", type=int, default=0,
                   help="stop after printing this many alerts (0 = never)")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="stop after this many seconds without alerts (0 = never)")
    p.add_argument("--sensor", metavar="IDS",
                   help="only alerts on these sensors: comma-separated ids or globs")
    p.add_argument("--kind", help="only these kinds, comma-separated (drift, anomaly, "
                                  "data-quality, model)")
    p.add_argument("--severity", choices=list(SEVERITY_RANK),
                   help="only alerts of this severity or worse")
    p.add_argument("--timezone", help="IANA zone the times are printed in (default UTC; "
                                      "each time says its zone)")
    p.add_argument("--all", action="store_true",
                   help="print every copy of an alert that several workers or engines wrote "
                        "(default: once, by its id)")
    _add_security_flags(p)
    p.set_defaults(func=cmd_alerts_tail)
    p = ap_alerts.add_parser("report", help="table + PNG timeline of an alerts file or topic "
                                            "range")
    p.add_argument("file", nargs="?", help="alerts JSON-lines file (else: read the topic)")
    p.add_argument("--bootstrap-servers", default="127.0.0.1:9092",
                   help=f"{SERVERS_HELP}, without a file")
    p.add_argument("--topic", default=TOPICS.alerts, help="alerts topic to read, without a file")
    p.add_argument("--from-offset", type=int, help="first offset (every partition)")
    p.add_argument("--to-offset", type=int, help="end offset, exclusive (every partition)")
    p.add_argument("--from-ts", help="first alert time, by the alerts' own ts (ISO-8601 "
                                     "or epoch ms)")
    p.add_argument("--to-ts", help="end alert time, exclusive (ISO-8601 or epoch ms)")
    p.add_argument("--out", default="alerts-report",
                   help="report directory (alerts.csv, summary.json, timeline.png)")
    p.add_argument("--limit", type=int, default=50, help="rows of the printed table")
    p.add_argument("--sensors", metavar="IDS",
                   help="rows of timeline.png: comma-separated sensor ids or globs (default: "
                        "the 40 with the most alerts)")
    p.add_argument("--timezone", default="UTC",
                   help="IANA zone of the times in the table, CSV and timeline (default UTC)")
    _add_security_flags(p)
    p.set_defaults(func=cmd_alerts_report)

    p = sub.add_parser("demo", help="broker + simulated network + live worker, end to end")
    p.add_argument("--out", default="demo-output",
                   help="output directory (the simulated network, summary, demo.png)")
    p.add_argument("--n-sensors", type=int, default=30, metavar="N",
                   help="sensors in the simulated network")
    p.add_argument("--sensors", type=int, dest="n_sensors", action=_Renamed, new="--n-sensors")
    p.add_argument("--days", type=float, default=14.0, help="days simulated")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    p.add_argument("--fresh", action="store_true",
                   help="serve a randomly initialized model instead of the default pretrained "
                        "checkpoint")
    p.add_argument("--ui", type=int, default=0, metavar="PORT",
                   help="port of the live page (default: a free one; the address is printed)")
    p.add_argument("--keep-open", action="store_true",
                   help="keep serving the live page after the summary (Ctrl-C stops)")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its event-loop timing warnings
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"stfm: error: {exc}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the input's fault (printed as one line, exit 2): bad values, files,
    configuration (``ValueError`` and subclasses), checkpoints and an unreachable broker.
    Looked up among the modules a command imported, so a command that needs no torch does
    not import it just to name an exception it cannot raise."""
    out: list[type[BaseException]] = [ValueError]
    for module, name in (("models.checkpoint", "CheckpointError"),
                         ("connectors.broker", "BrokerError")):
        mod = sys.modules.get(module)
        if mod is not None:
            out.append(getattr(mod, name))
    return tuple(out)


if __name__ == "__main__":
    sys.exit(main())
