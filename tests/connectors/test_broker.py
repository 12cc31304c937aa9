import signal
import subprocess
import sys

import pytest
from kafka import KafkaAdminClient

from connectors.broker import BrokerError, EmbeddedBroker, wait_for_kafka
from connectors.kafka_io import ensure_topics

pytestmark = pytest.mark.broker


def test_fixture_broker_serves_kafka(broker, unique):
    ensure_topics(broker.bootstrap_servers, [f"t-{unique}"], partitions=3)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        assert f"t-{unique}" in admin.list_topics()
    finally:
        admin.close()


def test_context_manager_stops_the_process():
    with EmbeddedBroker() as b:
        proc = b._proc
        assert b.running
    assert proc is not None and proc.poll() is not None


def test_port_in_use_is_a_clear_error(broker):
    with pytest.raises(BrokerError):
        EmbeddedBroker(port=broker.port, ready_timeout_s=3).start()


def test_stfm_broker_command_starts_and_stops():
    proc = subprocess.Popen([sys.executable, "-m", "stfm.cli", "broker", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()          # said once the broker answers
        assert first.startswith("embedded broker on 127.0.0.1:"), first
        port = int(first.split()[3].rsplit(":", 1)[1])
        wait_for_kafka(f"127.0.0.1:{port}", 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
