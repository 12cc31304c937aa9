import math

import orjson
import pytest

from connectors.schemas import (
    Alert,
    DeadLetter,
    decode_alert,
    decode_events,
    decode_readings,
    encode_alert,
    parse_ts,
    split_series,
)

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


def test_split_series_names_the_channel_of_a_multichannel_sensor() -> None:
    assert split_series("m/speed") == ("m", "speed")
    assert split_series("site/3/flow") == ("site/3", "flow")      # the last '/' splits
    assert split_series("a") == ("a", None) and split_series("/x") == ("/x", None)


def test_alerts_name_the_channels_of_their_series_and_round_trip() -> None:
    alert = Alert(id="drift:m/speed:7", kind="drift", sensors=["m/speed", "plain", "n/flow"],
                  ts=4000, step=7, severity="warning", detector="adwin", statistic="error",
                  text="error rose", score=0.9, detail={"p": 0.01})
    msg = orjson.loads(encode_alert(alert))
    assert msg["sensors"] == ["m/speed", "plain", "n/flow"]
    assert msg["channels"] == {"m/speed": "speed", "n/flow": "flow"}
    assert decode_alert(encode_alert(alert)) == alert
    plain = Alert(id="x", kind="anomaly", sensors=["a", "b"], ts=1, step=None,
                  severity="info", detector="d", statistic="s", text="t")
    assert "channels" not in plain.to_dict()                    # unchanged for plain sensors
    old = plain.to_dict()
    assert Alert.from_dict(old) == plain


def test_an_alert_carries_when_it_was_raised_beside_what_it_reports() -> None:
    alert = Alert(id="drift:s:9", kind="drift", sensors=["s"], ts=1000, step=9,
                  severity="warning", detector="bocpd", statistic="level", text="rose",
                  raised_ts=4000)
    msg = alert.to_dict()
    assert (msg["ts"], msg["raised_ts"]) == (1000, 4000)
    assert decode_alert(encode_alert(alert)) == alert
    old = {k: v for k, v in msg.items() if k != "raised_ts"}       # an earlier version's
    assert Alert.from_dict(old).raised_ts == 1000
    with pytest.raises(ValueError, match="raised_ts"):
        Alert.from_dict({**msg, "raised_ts": "soon"}, "alerts@3")


def test_a_sensor_graph_is_checked_per_channel_series() -> None:
    msgs = [b'{"sensor": "m", "ts": 1, "values": {"speed": 1.0, "flow": 2.0}}',
            b'{"sensor": "m", "ts": 2, "values": {"occ": 1.0}}']
    batch, dead = decode_readings(msgs, known_sensors={"m/speed", "m/flow"}, offsets=[0, 1],
                                  partitions=[0, 0])
    assert batch.sensors == ["m/speed", "m/flow"]
    assert [d.offset for d in dead] == [1] and "unknown sensor 'm/occ'" in dead[0].reason
    batch, dead = decode_readings(msgs[:1], known_sensors={"m/speed"})   # flow is not a node
    assert batch.sensors == ["m/speed"] and batch.values.tolist() == [1.0]
    assert len(dead) == 1 and "unknown sensor 'm/flow'" in dead[0].reason
    _, dead = decode_readings(msgs[:1], known_sensors={"m"})
    assert "unknown sensor 'm/speed'" in dead[0].reason


def test_a_naive_local_time_the_zone_skips_is_refused_by_name() -> None:
    """Live readings without an offset are local times of ``patching.timezone``: the hour a
    spring-forward switch skips does not exist and is refused (it would land on the hour
    after it), the repeated autumn hour is read as its first occurrence."""
    from connectors.schemas import zone

    berlin = zone("Europe/Berlin")
    with pytest.raises(ValueError, match="does not exist in Europe/Berlin"):
        parse_ts("2025-03-30T02:30:00", berlin)
    assert parse_ts("2025-03-30T03:00:00", berlin) - parse_ts("2025-03-30T01:59:00", berlin) \
        == 60_000
    assert parse_ts("2025-10-26T02:30:00", berlin) == parse_ts("2025-10-26T02:30:00+02:00")
    assert parse_ts("2025-03-30T02:30:00") == parse_ts("2025-03-30T02:30:00Z")    # UTC
