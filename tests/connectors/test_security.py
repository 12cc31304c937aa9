"""Security settings of the Kafka clients (TLS, SASL): configuration, the keyword arguments of
each client library, redaction, and round trips through the embedded broker with TLS."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connectors.broker import EmbeddedBroker, broker_binary, free_port, wait_for_kafka
from connectors.kafka_io import ensure_topics, make_producer, read_topic, topic_partitions
from connectors.security import (
    Security,
    SecurityError,
    client_kwargs,
    redacted,
)
from connectors.tls_proxy import make_certificates
from streaming.config import ConfigError, KafkaConfig, StreamConfig

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-4f9c2e-not-in-any-log"


@pytest.fixture
def tls_files(tmp_path: Path):
    return make_certificates(tmp_path, ["127.0.0.1"])


def _kafka(**kw: object) -> KafkaConfig:
    return StreamConfig.from_dict({"kafka": kw}).kafka


# --- configuration ---------------------------------------------------------------------


def test_default_is_plaintext_and_gives_no_client_arguments():
    k = StreamConfig().kafka
    assert k.security_protocol == "PLAINTEXT" and k.sasl_password_env == "STFM_KAFKA_PASSWORD"
    for flavor in ("kafka-python", "aiokafka", "faust"):
        assert client_kwargs(k, flavor) == {}
        assert client_kwargs(None, flavor) == {}


def test_set_flags_reach_the_kafka_table(tls_files):
    cfg = StreamConfig.load(None, {"kafka.security_protocol": "SSL",
                                   "kafka.ssl_cafile": str(tls_files.ca_file),
                                   "kafka.ssl_check_hostname": "false"})
    assert cfg.kafka.security_protocol == "SSL" and cfg.kafka.ssl_check_hostname is False


@pytest.mark.parametrize(("settings", "key", "words"), [
    ({"security_protocol": "TLS"}, "kafka.security_protocol", "PLAINTEXT, SSL"),
    ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "kafka.sasl_mechanism",
     "SCRAM-SHA-512"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI",
      "sasl_username": "u"}, "kafka.sasl_mechanism", "got 'GSSAPI'"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
     "kafka.sasl_username", "must be set"),
    ({"security_protocol": "SSL", "ssl_cafile": "/no/such/ca.pem"}, "kafka.ssl_cafile",
     "file not found"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u",
      "sasl_password_file": "/no/such/pw"}, "kafka.sasl_password_file", "file not found"),
    ({"ssl_cafile": "CA"}, "kafka.ssl_cafile", "TLS files need SSL or SASL_SSL"),
    ({"sasl_username": "u"}, "kafka.sasl_username", "need SASL_PLAINTEXT or SASL_SSL"),
    ({"security_protocol": "SSL", "ssl_keyfile": "KEY"}, "kafka.ssl_keyfile",
     "ssl_certfile is not"),
    ({"sasl_password_env": "A=B"}, "kafka.sasl_password_env", "must name an environment"),
])
def test_impossible_combinations_are_refused_naming_the_key(settings, key, words, tls_files):
    settings = {k: str(tls_files.ca_file) if v == "CA" else str(tls_files.key_file)
                if v == "KEY" else v for k, v in settings.items()}
    with pytest.raises(ConfigError) as err:
        _kafka(**settings)
    assert str(err.value).startswith(key) and words in str(err.value), err.value


@pytest.mark.parametrize("key", ["sasl_password", "sasl_plain_password", "password"])
def test_a_password_value_is_refused_pointing_to_the_env_and_file_options(key):
    with pytest.raises(ConfigError) as err:
        StreamConfig.load(None, {f"kafka.{key}": PASSWORD})
    msg = str(err.value)
    assert msg.startswith(f"kafka.{key}:") and PASSWORD not in msg
    assert "kafka.sasl_password_env" in msg and "kafka.sasl_password_file" in msg


def test_cli_refuses_a_password_flag_without_echoing_it():
    r = subprocess.run([sys.executable, "-m", "stfm.cli", "run", "--fresh", "--set",
                        f"kafka.sasl_password={PASSWORD}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 2 and "kafka.sasl_password:" in r.stderr, r.stderr
    assert "STFM_KAFKA_PASSWORD" in r.stderr and PASSWORD not in r.stderr + r.stdout


def test_every_kafka_tool_takes_the_security_settings():
    from stfm.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    tools = [sub["run"]]
    for group, names in (("replay", ("publish", "record", "pretrain")),
                         ("topics", ("create", "list")), ("alerts", ("tail", "report"))):
        inner = next(a for a in sub[group]._actions if a.choices).choices
        tools += [inner[n] for n in names]
    for parser in tools:
        flags = {s for a in parser._actions for s in a.option_strings}
        assert "--set" in flags, parser.prog
    broker_flags = {s for a in sub["broker"]._actions for s in a.option_strings}
    assert "--tls" in broker_flags


# --- the password and its redaction -----------------------------------------------------


def test_password_from_env_or_file_and_never_in_the_printed_config(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_KAFKA_PW", PASSWORD)
    k = _kafka(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
               sasl_username="alice", sasl_password_env="MY_KAFKA_PW")
    assert client_kwargs(k, "kafka-python")["sasl_plain_password"] == PASSWORD
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file-0b7d\n")
    k2 = _kafka(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                sasl_username="alice", sasl_password_file=str(pw_file))
    assert client_kwargs(k2, "aiokafka")["sasl_plain_password"] == "from-file-0b7d"
    cfg = StreamConfig.from_dict({"kafka": {"security_protocol": "SASL_PLAINTEXT",
                                            "sasl_mechanism": "SCRAM-SHA-512",
                                            "sasl_username": "alice",
                                            "sasl_password_env": "MY_KAFKA_PW"}})
    line = next(ln for ln in cfg.summary_lines() if ln.startswith("kafka:"))
    assert "sasl_password_env=MY_KAFKA_PW" in line and "sasl_username=alice" in line
    assert PASSWORD not in line


def test_a_field_named_like_a_secret_is_masked_in_the_summary():
    from dataclasses import dataclass

    from streaming.config import summary_line

    @dataclass
    class Section:
        api_token: str = "tok-123"
        api_token_env: str = "TOKEN_VAR"
        client_secret: str | None = None

    line = summary_line("x", Section())
    assert "api_token=***" in line and "tok-123" not in line
    assert "api_token_env=TOKEN_VAR" in line and "client_secret=None" in line


def test_a_missing_password_names_the_variable(monkeypatch):
    monkeypatch.delenv("STFM_KAFKA_PASSWORD", raising=False)
    k = _kafka(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256",
               sasl_username="bob")
    with pytest.raises(SecurityError, match=r"kafka.sasl_password_env: the environment "
                                            r"variable STFM_KAFKA_PASSWORD is not set"):
        client_kwargs(k, "kafka-python")


def test_a_password_once_read_is_masked_in_every_log_record(monkeypatch, caplog):
    monkeypatch.setenv("STFM_KAFKA_PASSWORD", PASSWORD)
    k = _kafka(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
               sasl_username="carol")
    kwargs = client_kwargs(k, "kafka-python")
    # (its own level too: a CLI run in the same process quiets the "kafka" loggers)
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, "kafka.admin.client"):
        logging.getLogger("kafka.admin.client").debug(
            "Starting KafkaAdminClient with configuration: %s", kwargs)
        logging.getLogger("anything").warning(f"inline {PASSWORD} too")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD not in text and text.count("***") == 2, text
    assert redacted(f"x{PASSWORD}y") == "x***y"


# --- the keyword arguments of each library ------------------------------------------------


def test_kafka_python_arguments(tls_files, monkeypatch):
    monkeypatch.setenv("STFM_KAFKA_PASSWORD", PASSWORD)
    k = _kafka(security_protocol="SASL_SSL", ssl_cafile=str(tls_files.ca_file),
               ssl_certfile=str(tls_files.cert_file), ssl_keyfile=str(tls_files.key_file),
               ssl_check_hostname=False, sasl_mechanism="SCRAM-SHA-512", sasl_username="dave")
    assert client_kwargs(k, "kafka-python") == {
        "security_protocol": "SASL_SSL", "ssl_cafile": str(tls_files.ca_file),
        "ssl_certfile": str(tls_files.cert_file), "ssl_keyfile": str(tls_files.key_file),
        "ssl_check_hostname": False, "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "dave", "sasl_plain_password": PASSWORD}
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    for cls in (KafkaAdminClient, KafkaConsumer, KafkaProducer):   # names the clients know
        assert set(client_kwargs(k, "kafka-python")) <= set(cls.DEFAULT_CONFIG), cls
    ssl_only = Security(security_protocol="SSL", ssl_cafile=str(tls_files.ca_file))
    assert client_kwargs(ssl_only, "kafka-python") == {
        "security_protocol": "SSL", "ssl_cafile": str(tls_files.ca_file),
        "ssl_check_hostname": True}


def test_aiokafka_arguments_build_a_verifying_context(tls_files, monkeypatch):
    monkeypatch.setenv("STFM_KAFKA_PASSWORD", PASSWORD)
    k = _kafka(security_protocol="SASL_SSL", ssl_cafile=str(tls_files.ca_file),
               sasl_mechanism="SCRAM-SHA-256", sasl_username="erin")
    kw = client_kwargs(k, "aiokafka")
    ctx = kw.pop("ssl_context")
    assert kw == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                  "sasl_plain_username": "erin", "sasl_plain_password": PASSWORD}
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname and len(ctx.get_ca_certs()) == 1
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def construct() -> None:              # the arguments are accepted (no connection)
        for cls in (AIOKafkaProducer, AIOKafkaConsumer):
            cls(bootstrap_servers="127.0.0.1:1", **client_kwargs(k, "aiokafka"))
    asyncio.run(construct())
    no_check = Security(security_protocol="SSL", ssl_cafile=str(tls_files.ca_file),
                        ssl_check_hostname=False)
    assert client_kwargs(no_check, "aiokafka")["ssl_context"].check_hostname is False


def test_faust_gets_broker_credentials(tls_files, monkeypatch, tmp_path):
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    monkeypatch.setenv("STFM_KAFKA_PASSWORD", PASSWORD)
    tls = Security(security_protocol="SSL", ssl_cafile=str(tls_files.ca_file))
    creds = client_kwargs(tls, "faust")["broker_credentials"]
    assert isinstance(creds, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SSL"
    for protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        s = Security(security_protocol=protocol, sasl_mechanism="SCRAM-SHA-512",
                     sasl_username="frank",
                     ssl_cafile=str(tls_files.ca_file) if protocol == "SASL_SSL" else None)
        creds = client_kwargs(s, "faust")["broker_credentials"]
        auth = credentials_to_aiokafka_auth(creds)
        assert auth["security_protocol"] == protocol and auth["sasl_mechanism"] == "SCRAM-SHA-512"
        assert auth["sasl_plain_username"] == "frank" and auth["sasl_plain_password"] == PASSWORD
        assert (auth["ssl_context"] is not None) == (protocol == "SASL_SSL")
        assert PASSWORD not in repr(creds)
    # the engine's app carries them
    from streaming.runtime.faust_app import build_app

    cfg = StreamConfig.from_dict({"kafka": {"security_protocol": "SSL",
                                            "ssl_cafile": str(tls_files.ca_file)}})
    app = build_app(cfg, None, None, str(tmp_path))     # type: ignore[arg-type]
    assert isinstance(app.conf.broker_credentials, faust.SSLCredentials)


def test_unknown_flavor_is_an_error():
    with pytest.raises(ValueError, match="unknown Kafka client flavor 'confluent'"):
        client_kwargs(Security(security_protocol="SSL"), "confluent")


def test_certificates_chain_to_the_ca(tls_files):
    ctx = ssl.create_default_context(cafile=str(tls_files.ca_file))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls_files.cert_file, tls_files.key_file)
    assert oct(tls_files.key_file.stat().st_mode & 0o777) == "0o600"
    assert ctx.get_ca_certs()[0]["subject"][0][0][1] == "stfm embedded broker CA"


# --- end to end: the embedded broker with TLS ----------------------------------------------


@pytest.fixture(scope="module")
def tls_broker():
    with EmbeddedBroker(ready_timeout_s=120, tls=True) as b:
        yield b


@pytest.mark.broker
def test_kafka_python_round_trip_over_tls(tls_broker, unique):
    bs, sec = tls_broker.bootstrap_servers, tls_broker.security
    topic = f"tls-{unique}"
    ensure_topics(bs, [topic], partitions=2, security=sec)
    assert topic_partitions(bs, [topic], security=sec) == {topic: 2}
    producer = make_producer(bs, security=sec)
    for i in range(20):
        producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush()
    producer.close()
    got = sorted(v for _, v, _, _ in read_topic(bs, topic, security=sec, timeout_s=60))
    assert got == sorted(f"v{i}".encode() for i in range(20))
    assert tls_broker._proxy is not None and tls_broker._proxy.connections > 0


@pytest.mark.broker
def test_aiokafka_round_trip_over_tls(tls_broker, unique):
    from connectors.kafka_async import produce, start_consumer, start_producer

    topic = f"tls-aio-{unique}"
    k = _kafka(bootstrap_servers=tls_broker.bootstrap_servers, group_id=f"g-{unique}",
               security_protocol="SSL", ssl_cafile=tls_broker.security.ssl_cafile)
    ensure_topics(k.bootstrap_servers, [topic], security=k)

    async def round_trip() -> list[bytes]:
        producer = await start_producer(k.bootstrap_servers, security=k)
        try:
            await produce(producer, {topic: [(b"s1", b"one"), (b"s2", b"two")]})
        finally:
            await producer.stop()
        consumer = await start_consumer(k, [topic], listener=None)
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 60
            while len(got) < 2 and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                got += [m.value for msgs in batch.values() for m in msgs]
        finally:
            await consumer.stop()
        return got

    assert sorted(asyncio.run(round_trip())) == [b"one", b"two"]


@pytest.mark.broker
def test_a_plaintext_client_cannot_talk_to_the_tls_broker(tls_broker):
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    with pytest.raises(KafkaError):
        KafkaAdminClient(bootstrap_servers=tls_broker.bootstrap_servers,
                         request_timeout_ms=2000, bootstrap_timeout_ms=2000)

    async def start() -> None:
        p = AIOKafkaProducer(bootstrap_servers=tls_broker.bootstrap_servers,
                             request_timeout_ms=2000)
        try:
            await p.start()
        finally:
            await p.stop()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(start())


@pytest.mark.broker
def test_a_client_trusting_another_ca_is_refused(tls_broker, tmp_path, caplog):
    other = make_certificates(tmp_path, ["127.0.0.1"])
    wrong = Security(security_protocol="SSL", ssl_cafile=str(other.ca_file))

    async def start() -> None:
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=tls_broker.bootstrap_servers,
                             request_timeout_ms=2000, **client_kwargs(wrong, "aiokafka"))
        try:
            await p.start()
        finally:
            await p.stop()

    from aiokafka.errors import KafkaConnectionError

    with pytest.raises(KafkaConnectionError):
        asyncio.run(start())
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text        # the client's reason, logged
    wait_for_kafka(tls_broker.bootstrap_servers, 30, security=tls_broker.security)


@pytest.mark.heavy
@pytest.mark.broker
def test_stfm_broker_tls_says_how_clients_connect_and_the_worker_runs_over_tls(tmp_path, unique):
    """`stfm broker --tls` prints the CA path and the flags; publish, run (both engines),
    topics and record all connect with them."""
    from replay.simulator import SimConfig, simulate, write_simulation

    rec, truths = simulate(SimConfig(n_sensors=4, n_days=1, seed=3))
    data = tmp_path / "net.npz"
    write_simulation(rec, truths, data)
    port = free_port()
    broker = subprocess.Popen([sys.executable, "-m", "stfm.cli", "broker", "--port", str(port),
                               "--tls", "--partitions", "0"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = broker.stdout.readline()
        assert first.startswith(f"embedded broker on 127.0.0.1:{port} (in-memory, TLS)"), first
        said = broker.stdout.readline()
        assert said.startswith("TLS: clients verify the broker with the CA certificate"), said
        flags = said.split(": ", 2)[2].split()
        assert flags[0::2] == ["--set", "--set"] and flags[1] == "kafka.security_protocol=SSL"
        ca = flags[3].split("=", 1)[1]
        assert Path(ca).is_file()
        bs = f"127.0.0.1:{port}"
        names = {t: f"{t}-{unique}" for t in ("readings", "events", "forecasts", "alerts",
                                              "dead_letter")}

        def stfm(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "stfm.cli", *args], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300, check=False)

        pub = stfm("replay", "publish", str(data), "--bootstrap-servers", bs, "--topic",
                   names["readings"], "--events-topic", names["events"], "--quiet", *flags)
        assert pub.returncode == 0, pub.stderr[-2000:]
        cfg = tmp_path / "run.toml"
        cfg.write_text("[kafka]\n" + "".join(f'{t}_topic = "{n}"\n' for t, n in names.items())
                       + f'security_protocol = "SSL"\nssl_cafile = "{ca}"\n')
        summary = tmp_path / "summary.json"
        run = stfm("run", "--config", str(cfg), "--bootstrap-servers", bs, "--group-id",
                   f"g-{unique}", "--fresh", "--idle-exit", "1", "--summary", str(summary))
        assert run.returncode == 0, run.stderr[-3000:]
        assert "security_protocol=SSL" in run.stderr           # the printed configuration
        s = json.loads(summary.read_text())
        assert s["worker"]["readings_accepted"] == rec.values.size
        faust_run = stfm("run", "--config", str(cfg), "--bootstrap-servers", bs, "--group-id",
                         f"gf-{unique}", "--fresh", "--engine", "faust", "--idle-exit", "1",
                         "--summary", str(summary))
        assert faust_run.returncode == 0, faust_run.stderr[-3000:]
        assert json.loads(summary.read_text())["worker"]["readings_accepted"] == rec.values.size
        lst = stfm("topics", "list", names["forecasts"], "--bootstrap-servers", bs, *flags)
        assert lst.returncode == 0 and "partition(s)" in lst.stdout, lst.stderr
        got = stfm("replay", "record", "--bootstrap-servers", bs, "--topic", names["readings"],
                   "--out", str(tmp_path / "back.npz"), "--quiet", *flags)
        assert got.returncode == 0 and f"recorded {rec.values.size} readings" in got.stdout, \
            got.stderr[-2000:]
    finally:
        broker.terminate()
        broker.wait(60)
    assert not Path(ca).exists()                       # the certificates go with the broker


# --- SASL on the embedded broker -----------------------------------------------------------


@pytest.mark.broker
def test_sasl_scram_round_trip_on_tansu_if_users_can_be_provisioned(monkeypatch, tmp_path):
    """Tansu 0.6.0 has SCRAM-SHA-256/512 (``broker --authentication``) but keeps users only in
    its in-memory storage and refuses ``tansu user create`` (AlterUserScramCredentials) on a
    broker that requires authentication: no user can ever exist. This runs the round trip as
    soon as a binary allows the provisioning, and skips saying what the binary answered."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    binary = broker_binary()
    log_path = tmp_path / "tansu.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([binary, "broker", "--listener-url", url,
                                 "--advertised-listener-url", url, "--authentication"],
                                stdout=log_file, stderr=subprocess.STDOUT,
                                cwd=tmp_path, env={**os.environ, "RUST_LOG": "warn"})
    try:
        deadline = time.monotonic() + 60
        import socket

        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, "tansu --authentication never listened"
                time.sleep(0.05)
        made = subprocess.run([binary, "user", "create", "--broker", url, "--mechanism",
                               "scram512", "alice", PASSWORD], capture_output=True, text=True,
                              timeout=60, check=False)
        if made.returncode != 0:
            answer = (made.stdout + made.stderr).strip().splitlines()[-1:]
            pytest.skip(f"{Path(binary).name} cannot provision a SASL user: `user create` on a "
                        f"broker with --authentication answered {answer} (it needs an "
                        "authenticated connection, and the in-memory storage starts without "
                        "users); SCRAM round trips are covered by the client arguments only")
        monkeypatch.setenv("STFM_KAFKA_PASSWORD", PASSWORD)
        s = Security(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                     sasl_username="alice")
        bs = f"127.0.0.1:{port}"
        wait_for_kafka(bs, 30, security=s)
        ensure_topics(bs, ["sasl"], security=s)
        producer = make_producer(bs, security=s)
        producer.send("sasl", value=b"over sasl")
        producer.flush()
        producer.close()
        assert [v for _, v, _, _ in read_topic(bs, "sasl", security=s)] == [b"over sasl"]
    finally:
        proc.terminate()
        proc.wait(30)
