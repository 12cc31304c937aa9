"""Message contracts and validation at the edge (see DESIGN.md, "Data contracts").

Decoding works on whole batches of raw Kafka values: valid readings come out as numpy arrays,
every invalid message comes out as a ``DeadLetter`` with the reason. Nothing is dropped
silently and nothing here raises on bad input.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import numpy as np
import orjson

from connectors.spacing import calendar_name

log = logging.getLogger(__name__)
TS_MAX_MS = 100_000_000_000_000  # year ~5138; anything beyond is a unit mistake
_MISSING = object()


DEAD_LETTER_KINDS = ("late", "future", "out_of_range", "unknown_sensor", "capacity", "invalid")


def reason_kind(reason: str) -> str:
    """The kind of a dead letter's reason (one of ``DEAD_LETTER_KINDS``), for counting:
    reasons start with their kind (``late: ...``) or say what failed validation."""
    head = reason.split(";", 1)[0].split(":", 1)[0].strip()
    if head in ("late", "future", "out_of_range", "capacity"):
        return head
    if head.startswith("unknown sensor"):
        return "unknown_sensor"
    return "invalid"


@dataclass
class DeadLetter:
    """An input message that could not be used, with the reason and where it came from."""

    raw: bytes
    reason: str
    topic: str = ""
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None

    def unique_key(self) -> bytes | None:
        """``topic:partition:offset`` of the original message: unique, so a consumer can
        deduplicate dead letters re-emitted after a crash (the original key is in the body)."""
        if self.partition is None or self.offset is None:
            return self.key
        return f"{self.topic}:{self.partition}:{self.offset}".encode()

    def handle(self) -> tuple[str, int | None, int | None, str, str | None]:
        """Plain data to rebuild this dead letter later (``from_handle``)."""
        return (self.topic, self.partition, self.offset,
                base64.b64encode(self.raw).decode("ascii"),
                None if self.key is None else base64.b64encode(self.key).decode("ascii"))

    @classmethod
    def from_handle(cls, handle: Any, reason: str) -> DeadLetter:
        topic, partition, offset, raw, key = handle
        return cls(base64.b64decode(raw), reason, topic, partition, offset,
                   None if key is None else base64.b64decode(key))

    def to_message(self) -> bytes:
        """The dead-letter record: the original bytes (text when UTF-8, else base64) + reason."""
        out: dict[str, Any] = {"reason": self.reason, "topic": self.topic,
                               "partition": self.partition, "offset": self.offset}
        try:
            out["original"] = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            out["original_b64"] = base64.b64encode(self.raw).decode("ascii")
        if self.key is not None:
            out["key"] = self.key.decode("utf-8", errors="replace")
        return orjson.dumps(out)


@dataclass
class ReadingBatch:
    """Valid readings of one input batch, in arrival order (one entry per series value)."""

    sensors: list[str] = field(default_factory=list)
    ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    partition: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    refs: Callable[[int], Any] | None = None
    # ^ reading index -> the driver's handle (plain data) for a dead letter decided later

    def __len__(self) -> int:
        return len(self.sensors)


@dataclass
class EventBatch:
    """Valid events of one input batch."""

    events: list[dict[str, Any]] = field(default_factory=list)
    source: list[int] = field(default_factory=list)   # index of each event in the input batch

    def __len__(self) -> int:
        return len(self.events)


def json_safe(obj: Any) -> Any:
    """``obj`` as strict JSON data: NaN and infinities become null, numpy scalars and
    arrays plain numbers and lists, anything else unknown its ``str``."""
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    return str(obj)


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text (never a bare ``NaN``) for reports, summaries and alerts files."""
    import json

    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def format_minute(ms: int, tz: str | None = None) -> str:
    """``YYYY-MM-DD HH:MM`` of an epoch-ms timestamp in ``tz`` (an IANA zone; default UTC),
    for tables and logs."""
    if tz is None or tz == "UTC":
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000))
    return datetime.fromtimestamp(ms / 1000, zone(tz)).strftime("%Y-%m-%d %H:%M")


def format_when(ms: int, tz: str | None = None, grid_ms: int | None = None) -> str:
    """``YYYY-MM-DD HH:MM ZONE`` in ``tz`` (default UTC), the zone's abbreviation at that
    time (CET, CEST, +08): the time a person reads says which clock it is on.

    On a calendar grid (``grid_ms`` a mean month, quarter or year: ``connectors.spacing``) a
    grid point lies a few days from the unit's start, so the unit is named instead:
    ``2002-01``, ``2002-Q1``, ``2002``."""
    when = datetime.fromtimestamp(ms / 1000, zone(tz))
    unit = calendar_name(grid_ms) if grid_ms else None
    if unit is not None:
        mid = when + timedelta(milliseconds=int(grid_ms) // 2)   # inside the nearest unit
        if unit == "month":
            return f"{mid.year}-{mid.month:02d}"
        if unit == "quarter":
            return f"{mid.year}-Q{(mid.month - 1) // 3 + 1}"
        return f"{mid.year}"
    return f"{when.strftime('%Y-%m-%d %H:%M')} {when.tzname() or tz or 'UTC'}"


_NAIVE_SEEN: set[str] = set()        # timezones already announced for naive timestamps


def zone(name: str | None) -> tzinfo:
    """The ``tzinfo`` of an IANA timezone name (None or "UTC": UTC)."""
    if name is None or name == "UTC":
        return UTC
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def parse_ts(ts: object, tz: tzinfo | None = None) -> int:
    """Epoch milliseconds from an int (epoch-ms) or an ISO-8601 string; a string without a
    UTC offset is a local time of ``tz`` (default UTC; ``patching.timezone``), announced
    once per process. A local time the zone skips (spring forward) is refused; a repeated
    one (fall back) is read as its first occurrence (a live reading carries no order to
    tell them apart: producers in local time should send offsets)."""
    if type(ts) is int:
        if not 0 <= ts <= TS_MAX_MS:
            raise ValueError(f"'ts' out of range: {ts}")
        return ts
    if isinstance(ts, str):
        try:
            dt = datetime.fromisoformat(ts)
        except ValueError:
            raise ValueError(f"'ts' is not ISO-8601: {ts[:40]!r}") from None
        if dt.tzinfo is None:
            zone_ = tz or UTC
            if str(zone_) not in _NAIVE_SEEN:
                _NAIVE_SEEN.add(str(zone_))
                log.info("timestamps without a UTC offset (e.g. %r) are read as local times "
                         "of %s (patching.timezone)", ts[:40], zone_)
            dt = dt.replace(tzinfo=zone_)
            if zone_ is not UTC and dt.utcoffset() != dt.replace(fold=1).utcoffset():
                back = dt.astimezone(UTC).astimezone(zone_)
                if back.replace(tzinfo=None) != dt.replace(tzinfo=None):
                    raise ValueError(f"'ts' {ts[:40]!r} is a local time that does not exist "
                                     f"in {zone_} (skipped at a daylight-saving switch); "
                                     "send timestamps with a UTC offset")
        ms = int(round(dt.timestamp() * 1000))
        if not 0 <= ms <= TS_MAX_MS:
            raise ValueError(f"'ts' out of range: {ts!r}")
        return ms
    raise ValueError(f"'ts' must be epoch-ms int or ISO-8601 string, got {type(ts).__name__}")


CHANNEL_SEP = "/"


def split_series(series: str) -> tuple[str, str | None]:
    """``(sensor, channel)`` of a series id: ``"s/c"`` is channel ``c`` of sensor ``s`` (split
    at the last ``/``, as a ``"values"`` reading names its channels); an id without ``/`` is a
    single-channel sensor, channel ``None``."""
    station, sep, channel = series.rpartition(CHANNEL_SEP)
    return (station, channel) if sep and station else (series, None)


def _value(v: object, name: str) -> float:
    tv = type(v)
    if tv is float:
        if math.isfinite(v):  # type: ignore[arg-type]
            return v  # type: ignore[return-value]
        raise ValueError(f"'{name}' is not finite: {v}")
    if v is None:
        return math.nan
    if tv is int:
        if abs(v) > 1e300:  # type: ignore[operator]
            raise ValueError(f"'{name}' is out of range")
        return float(v)  # type: ignore[arg-type]
    raise ValueError(f"'{name}' must be a number or null, got {tv.__name__}")


def _decode(raw: object) -> Any:
    if not isinstance(raw, bytes | bytearray | memoryview | str):
        raise ValueError(f"message value is {type(raw).__name__}, not bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


def _dead_letter(raw: object, reason: str, i: int, topic: str,
                 partitions: Sequence[int] | None, offsets: Sequence[int] | None,
                 keys: Sequence[bytes | None] | None) -> DeadLetter:
    data = (bytes(raw) if isinstance(raw, bytes | bytearray | memoryview)
            else str(raw).encode("utf-8", errors="replace"))
    return DeadLetter(raw=data, reason=reason, topic=topic,
                      partition=partitions[i] if partitions is not None else None,
                      offset=offsets[i] if offsets is not None else None,
                      key=keys[i] if keys is not None else None)


def decode_readings(
    raws: Sequence[bytes], *, known_sensors: set[str] | frozenset[str] | None = None,
    topic: str = "readings", partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None, keys: Sequence[bytes | None] | None = None,
    timezone: str | None = None,
) -> tuple[ReadingBatch, list[DeadLetter]]:
    """Validate a batch of raw ``readings`` messages.

    A message is ``{"sensor": str, "ts": int|str, "value": float|null}`` or carries
    ``"values": {channel: float|null}``; a channel becomes the series ``"<sensor>/<channel>"``.
    ``known_sensors`` (e.g. the nodes of a sensor graph) rejects sensors outside it (for a
    ``"values"`` message: the channel series outside it, in one dead letter naming them, while
    its known channels are kept); ISO timestamps without an offset are local times of
    ``timezone`` (default UTC).
    """
    tz = zone(timezone)
    sensors: list[str] = []
    tss: list[int] = []
    vals: list[float] = []
    src: list[int] = []
    dead: list[DeadLetter] = []
    loads = orjson.loads
    for i, raw in enumerate(raws):
        # fast path for the common, valid message; anything unusual takes the checked path
        if type(raw) is bytes:
            try:
                o = loads(raw)
            except orjson.JSONDecodeError:
                o = None
            if type(o) is dict:
                s = o.get("sensor")
                t = o.get("ts")
                v = o.get("value")
                if (type(s) is str and s and type(t) is int and 0 <= t <= TS_MAX_MS
                        and type(v) is float and v - v == 0.0
                        and (known_sensors is None or s in known_sensors)):
                    sensors.append(s)
                    tss.append(t)
                    vals.append(v)
                    src.append(i)
                    continue
        try:
            o = _decode(raw)
            if type(o) is not dict:
                raise ValueError(f"message must be a JSON object, got {type(o).__name__}")
            s = o.get("sensor")
            if type(s) is not str or not s:
                raise ValueError("missing or empty 'sensor' (must be a string)")
            if known_sensors is not None and s not in known_sensors and "values" not in o:
                raise ValueError(f"unknown sensor {s[:80]!r} (not in the sensor graph)")
            ts = o.get("ts", _MISSING)
            if ts is _MISSING:
                raise ValueError("missing field 'ts'")
            t = parse_ts(ts, tz)
            v = o.get("value", _MISSING)
            if v is not _MISSING:
                if known_sensors is not None and s not in known_sensors:
                    raise ValueError(f"unknown sensor {s[:80]!r} (not in the sensor graph)")
                fv = _value(v, "value")
                sensors.append(s)
                tss.append(t)
                vals.append(fv)
                src.append(i)
                continue
            chans = o.get("values", _MISSING)
            if chans is _MISSING:
                raise ValueError("missing field 'value' (or 'values')")
            if type(chans) is not dict or not chans:
                raise ValueError("'values' must be a non-empty object {channel: number}")
            parsed = [(f"{s}{CHANNEL_SEP}{c}", _value(cv, f"values.{c}"))
                      for c, cv in chans.items()]
            unknown = ([] if known_sensors is None
                       else [name for name, _ in parsed if name not in known_sensors])
            if len(unknown) == len(parsed):
                raise ValueError(f"unknown sensor {unknown[0][:80]!r} (not in the sensor graph)")
            for name, fv in parsed:
                if unknown and name in unknown:
                    continue
                sensors.append(name)
                tss.append(t)
                vals.append(fv)
                src.append(i)
            if unknown:
                names = ", ".join(repr(n[:80]) for n in unknown[:5])
                dead.append(_dead_letter(raw, f"unknown sensor {names} (not in the sensor "
                                              f"graph)", i, topic, partitions, offsets, keys))
        except ValueError as exc:
            dead.append(_dead_letter(raw, str(exc), i, topic, partitions, offsets, keys))
    source = np.asarray(src, dtype=np.int64)
    part = (np.asarray(partitions, dtype=np.int64)[source] if partitions is not None
            else np.zeros(len(source), np.int64))
    batch = ReadingBatch(sensors, np.asarray(tss, dtype=np.int64),
                         np.asarray(vals, dtype=np.float64), source, part)
    return batch, dead


def decode_events(
    raws: Sequence[bytes], *, known_sensors: set[str] | frozenset[str] | None = None,
    topic: str = "events", partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None, keys: Sequence[bytes | None] | None = None,
    timezone: str | None = None,
) -> tuple[EventBatch, list[DeadLetter]]:
    """Validate ``events``: ``{"type": str, "ts", "sensor"?, "lat"?, "lon"?, "attrs"?}``."""
    tz = zone(timezone)
    out: list[dict[str, Any]] = []
    src: list[int] = []
    dead: list[DeadLetter] = []
    for i, raw in enumerate(raws):
        try:
            o = _decode(raw)
            if type(o) is not dict:
                raise ValueError(f"event must be a JSON object, got {type(o).__name__}")
            typ = o.get("type")
            if type(typ) is not str or not typ:
                raise ValueError("missing or empty 'type' (must be a string)")
            if "ts" not in o:
                raise ValueError("missing field 'ts'")
            ev: dict[str, Any] = {"type": typ, "ts": parse_ts(o["ts"], tz)}
            s = o.get("sensor")
            if s is not None:
                if type(s) is not str or not s:
                    raise ValueError("'sensor' must be a non-empty string")
                if known_sensors is not None and s not in known_sensors:
                    raise ValueError(f"unknown sensor {s[:80]!r} (not in the sensor graph)")
                ev["sensor"] = s
            for k in ("lat", "lon"):
                if o.get(k) is not None:
                    ev[k] = _value(o[k], k)
            if ("lat" in ev) != ("lon" in ev):
                raise ValueError("'lat' and 'lon' must come together")
            attrs = o.get("attrs")
            if attrs is not None:
                if type(attrs) is not dict:
                    raise ValueError("'attrs' must be an object")
                ev["attrs"] = attrs
            out.append(ev)
            src.append(i)
        except ValueError as exc:
            dead.append(_dead_letter(raw, str(exc), i, topic, partitions, offsets, keys))
    return EventBatch(out, src), dead


ALERT_KINDS = ("drift", "anomaly", "data-quality", "model")
# Kafka headers of an alert message: the live engine and the worker (host:pid) that raised it
ENGINE_HEADER, WORKER_HEADER = "stfm-engine", "stfm-worker"
SEVERITIES = ("info", "warning", "critical")


@dataclass
class Alert:
    """One alert, complete when built (the gate builds every one): what fired, where, when,
    how sure, and why in words. ``detail`` holds the detector's numbers; ``events`` the
    events that coincide with it on its sensors.

    ``sensors`` are series ids; the message adds ``channels`` (``{series: channel}``) when
    any of them is a channel ``"s/c"`` of a multichannel sensor (``split_series``).

    Two times: ``ts`` is when what the alert reports happened (a drift alert's change onset,
    split to the reading; an anomaly alert's most surprising reading where its detector
    names one; otherwise, as for data-quality and model alerts, when it was raised), so an
    alert sits on a chart where its change is; ``raised_ts`` is the end of the step that
    raised it, when the stream had shown it (the detection delay is ``raised_ts`` minus the
    true onset). Messages without ``raised_ts`` (earlier versions) read it as ``ts``."""

    id: str
    kind: str                    # drift | anomaly | data-quality | model
    sensors: list[str]
    ts: int                      # event time (epoch ms) of what it reports
    step: int | None
    severity: str                # info | warning | critical
    detector: str
    statistic: str
    text: str
    score: float | None = None
    region: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    # who raised it (the live engine, aiokafka or faust, and its worker's host:pid): read
    # from the alert message's Kafka headers (``streaming.runtime.microbatch.origin_headers``)
    engine: str | None = None
    worker: str | None = None
    raised_ts: int | None = None  # end of the step that raised it (None: ``ts``)

    def __post_init__(self) -> None:
        if self.raised_ts is None:
            self.raised_ts = self.ts

    @property
    def channels(self) -> dict[str, str]:
        """``{series: channel}`` of the named series that are channels of a sensor."""
        pairs = ((s, split_series(s)[1]) for s in self.sensors)
        return {s: c for s, c in pairs if c is not None}

    def to_dict(self) -> dict[str, Any]:
        """The ``alerts`` message (``detail.text`` carries the text; ``channels`` maps each
        named channel series ``"s/c"`` to ``c``, present only when there is one)."""
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "sensors": list(self.sensors),
                               "ts": int(self.ts),
                               "raised_ts": int(self.raised_ts or self.ts),
                               "step": self.step,
                               "severity": self.severity, "detector": self.detector,
                               "statistic": self.statistic}
        channels = self.channels
        if channels:
            out["channels"] = channels
        if self.score is not None:
            out["score"] = self.score
        if self.region is not None:
            out["region"] = self.region
        if self.engine is not None:
            out["engine"] = self.engine
        if self.worker is not None:
            out["worker"] = self.worker
        out["detail"] = {**self.detail, "text": self.text}
        if self.events:
            out["events"] = list(self.events)
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "alert") -> Alert:
        """Validate an ``alerts`` message; a ``ValueError`` names the field and ``where``.

        Messages of earlier versions (anomaly alerts without a top-level ``detector`` and
        ``statistic``) take them from their top sensor's explanation. ``channels`` is derived
        from ``sensors`` and not read back (messages without it are fine).
        """
        if not isinstance(d, dict):
            raise ValueError(f"{where}: an alert must be a JSON object, got {type(d).__name__}")
        for key, typ in (("kind", str), ("ts", int), ("sensors", list)):
            if not isinstance(d.get(key), typ) or isinstance(d.get(key), bool):
                raise ValueError(f"{where}: alert field {key!r} missing or not "
                                 f"{typ.__name__}: {d.get(key)!r}")
        detail = d.get("detail") if isinstance(d.get("detail"), dict) else {}
        explained = detail.get("explained") if isinstance(detail.get("explained"), dict) else {}
        first = next(iter(explained.values()), {}) if explained else {}
        first = first if isinstance(first, dict) else {}
        score = d.get("score")
        raised = d.get("raised_ts")
        if raised is not None and (not isinstance(raised, int) or isinstance(raised, bool)):
            raise ValueError(f"{where}: alert field 'raised_ts' not int: {raised!r}")
        sensors = [str(s) for s in d["sensors"]]
        return cls(id=str(d.get("id") or f"{d['kind']}:{','.join(sensors)}:{d['ts']}"),
                   kind=d["kind"], sensors=sensors, ts=d["ts"], step=d.get("step"),
                   severity=str(d.get("severity", "")),
                   detector=str(d.get("detector") or first.get("detector", "")),
                   statistic=str(d.get("statistic") or first.get("statistic", "")),
                   text=str(detail.get("text", "")),
                   score=float(score) if isinstance(score, int | float) else None,
                   region=d.get("region"), events=list(d.get("events") or []),
                   detail={k: v for k, v in detail.items() if k != "text"},
                   engine=_opt_str(d.get("engine")), worker=_opt_str(d.get("worker")),
                   raised_ts=raised)


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def encode_alert(alert: Alert) -> bytes:
    """One ``alerts`` message (NaN written as null)."""
    return orjson.dumps(json_safe(alert.to_dict()))


def decode_alert(raw: bytes | str, where: str = "alert") -> Alert:
    """An ``alerts`` message back into an ``Alert``; a ``ValueError`` names ``where``."""
    try:
        return Alert.from_dict(orjson.loads(raw), where)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{where}: not JSON ({exc})") from None
