import math

import orjson
import pytest

from connectors.schemas import DeadLetter, decode_events, decode_readings, parse_ts

GOOD = [
    b'{"sensor": "a", "ts": 1000, "value": 1.5}',
    b'{"sensor": "b", "ts": "2026-01-05T00:05:00Z", "value": 2}',
    b'{"sensor": "c", "ts": 3000, "value": null}',
    b'{"sensor": "m", "ts": 4000, "values": {"speed": 1.0, "flow": null}}',
]

BAD = {
    b"not json": "not valid JSON",
    b'[1, 2]': "must be a JSON object",
    b'{"ts": 1, "value": 1}': "'sensor'",
    b'{"sensor": 5, "ts": 1, "value": 1}': "'sensor'",
    b'{"sensor": "a", "value": 1}': "missing field 'ts'",
    b'{"sensor": "a", "ts": 1}': "missing field 'value'",
    b'{"sensor": "a", "ts": 1, "value": "x"}': "'value' must be a number",
    b'{"sensor": "a", "ts": 1, "value": NaN}': "not valid JSON",
    b'{"sensor": "a", "ts": 1, "value": 1e999}': "infinity",
    b'{"sensor": "a", "ts": "yesterday", "value": 1}': "not ISO-8601",
    b'{"sensor": "a", "ts": -5, "value": 1}': "out of range",
    b'{"sensor": "a", "ts": 1.5, "value": 1}': "'ts' must be",
    b'{"sensor": "a", "ts": true, "value": 1}': "'ts' must be",
    b'{"sensor": "a", "ts": 1, "value": true}': "'value' must be a number",
    b'{"sensor": "a", "ts": 1, "values": {}}': "'values' must be a non-empty object",
    b'\xff\xfe': "not valid JSON",
}


def test_good_readings_decode_to_arrays():
    batch, dead = decode_readings(GOOD)
    assert dead == []
    assert batch.sensors == ["a", "b", "c", "m/speed", "m/flow"]
    assert batch.ts.tolist() == [1000, 1767571500000, 3000, 4000, 4000]
    assert batch.values[0] == 1.5 and batch.values[1] == 2.0
    assert math.isnan(batch.values[2]) and math.isnan(batch.values[4])
    assert batch.source.tolist() == [0, 1, 2, 3, 3]


@pytest.mark.parametrize("raw,reason", list(BAD.items()))
def test_each_bad_class_is_dead_lettered_with_reason(raw, reason):
    msgs = [GOOD[0], raw, GOOD[2]]
    batch, dead = decode_readings(msgs, offsets=[10, 11, 12], partitions=[0, 0, 0])
    assert batch.sensors == ["a", "c"], "valid messages around a bad one are still decoded"
    assert len(dead) == 1
    assert reason in dead[0].reason
    assert dead[0].offset == 11 and dead[0].raw == raw
    rec = orjson.loads(dead[0].to_message())
    assert rec["reason"] == dead[0].reason
    assert "original" in rec or "original_b64" in rec


def test_unknown_sensor_with_graph():
    batch, dead = decode_readings([GOOD[0], b'{"sensor": "zz", "ts": 1, "value": 1}'],
                                  known_sensors={"a"})
    assert batch.sensors == ["a"]
    assert "unknown sensor 'zz'" in dead[0].reason


def test_dead_letter_keeps_binary_payload():
    d = DeadLetter(b"\xff\x00", "bad", "readings", 0, 3)
    rec = orjson.loads(d.to_message())
    assert rec["original_b64"] == "/wA="


def test_events():
    evs, dead = decode_events([
        b'{"type": "incident", "ts": 5000, "sensor": "a", "attrs": {"lanes": 2}}',
        b'{"type": "closure", "ts": 6000, "lat": 34.0, "lon": -118.2}',
        b'{"ts": 6000}',
        b'{"type": "x", "ts": 1, "lat": 3.0}',
        b'{"type": "x", "ts": 1, "attrs": [1]}',
    ])
    assert [e["type"] for e in evs.events] == ["incident", "closure"]
    assert evs.source == [0, 1]
    assert [d.offset for d in dead] == [None, None, None]
    assert "'type'" in dead[0].reason and "'lat' and 'lon'" in dead[1].reason
    assert "'attrs'" in dead[2].reason


def test_parse_ts_naive_is_utc():
    assert parse_ts("1970-01-01T00:00:01") == 1000
    assert parse_ts("1970-01-01T01:00:01+01:00") == 1000


def test_naive_timestamps_are_local_times_of_the_configured_timezone() -> None:
    from connectors.schemas import decode_readings, parse_ts

    msg = b'{"sensor": "s1", "ts": "2026-07-01T12:00:00", "value": 1.0}'
    utc, _ = decode_readings([msg])
    berlin, _ = decode_readings([msg], timezone="Europe/Berlin")
    assert int(utc.ts[0]) == parse_ts("2026-07-01T12:00:00Z")
    assert int(utc.ts[0]) - int(berlin.ts[0]) == 2 * 3_600_000          # CEST = UTC+2
    aware = b'{"sensor": "s1", "ts": "2026-07-01T12:00:00+00:00", "value": 1.0}'
    assert decode_readings([aware], timezone="Europe/Berlin")[0].ts[0] == utc.ts[0]


def test_an_unknown_timezone_is_a_config_error_naming_the_key() -> None:
    import pytest

    from streaming.config import ConfigError, StreamConfig

    with pytest.raises(ConfigError, match="patching.timezone"):
        StreamConfig.from_dict({"patching": {"timezone": "Mars/Olympus"}})
