import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from connectors.broker import BrokerError, EmbeddedBroker, wait_for_kafka
from connectors.kafka_io import ensure_topics

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
# the Python API's way: a process that starts the broker, says where, and waits to be killed
API_SCRIPT = ("import signal; from connectors.broker import EmbeddedBroker; "
              "b = EmbeddedBroker().start(); "
              "print(f'embedded broker on {b.bootstrap_servers}', flush=True); signal.pause()")


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


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except FileNotFoundError:          # exited while we looked: not a child any more
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:    # field 4, after "(comm)"
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an unreaped dead process keeps no port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the broker dies with its parent through Linux's PR_SET_PDEATHSIG")
@pytest.mark.parametrize("started_by", ["stfm broker", "python api"])
def test_kill_9_of_the_parent_leaves_no_broker_listening(started_by, wait_for):
    """Issue 30: a ``kill -9`` of whatever started the broker takes the broker down too,
    so the port is free for the next ``stfm broker``."""
    cmd = ([sys.executable, "-m", "stfm.cli", "broker", "--port", "0", "--partitions", "0"]
           if started_by == "stfm broker" else [sys.executable, "-c", API_SCRIPT])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    tansu: list[int] = []
    try:
        first = proc.stdout.readline()          # said once the broker answers
        assert first.startswith("embedded broker on 127.0.0.1:"), first
        port = int(first.split()[3].rsplit(":", 1)[1])
        tansu = _children(proc.pid)
        assert len(tansu) == 1, f"expected one broker process under {proc.pid}, got {tansu}"
        assert _accepts(port)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        wait_for(lambda: not _alive(tansu[0]) and not _accepts(port),
                 f"the orphaned broker (pid {tansu[0]}) to die and free port {port}",
                 timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for pid in tansu:                        # a failed test leaves no broker behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
