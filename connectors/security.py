"""Security settings of every Kafka client (TLS, SASL): one vocabulary, three libraries.

The settings are the ``[kafka]`` table's (``streaming.config.KafkaConfig``) or a
``Security`` (the embedded broker's, tests'); ``client_kwargs(settings, flavor)`` turns them
into the keyword arguments of kafka-python, aiokafka or Faust, so every client the project
makes reaches a secured cluster the same way.

The SASL password is never a configuration value (a TOML file or ``--set`` would put it in
shell histories, process lists and printed configurations): it is read when a client is
made, from the file ``sasl_password_file`` names or else from the environment variable
``sasl_password_env`` names, and from then on masked in every log record (``redact``).

No Kafka client library is imported at module level: the configuration imports this module
and the online core must load none of them.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
FLAVORS = ("kafka-python", "aiokafka", "faust")
DEFAULT_PASSWORD_ENV = "STFM_KAFKA_PASSWORD"
TLS_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
# keys that would hold the password itself: refused, pointing to the two ways that do not
PASSWORD_KEYS = ("sasl_password", "sasl_plain_password", "password")
REDACTED = "***"


class SecurityError(ValueError):
    """Security settings that cannot work; the message names the key (``kafka.ssl_cafile``)."""


class SecuritySettings(Protocol):
    """What ``client_kwargs`` reads: ``KafkaConfig`` and ``Security`` both have it."""

    security_protocol: str
    ssl_cafile: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_check_hostname: bool
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password_env: str
    sasl_password_file: str | None


@dataclass(frozen=True)
class Security:
    """Security settings outside a ``[kafka]`` table (same names and meaning as there)."""

    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password_env: str = DEFAULT_PASSWORD_ENV
    sasl_password_file: str | None = None

    def set_flags(self) -> list[str]:
        """The ``--set kafka.KEY=VALUE`` flags that give a client these settings."""
        out = []
        for key, default in vars(Security()).items():
            value = getattr(self, key)
            if value != default:
                shown = str(value).lower() if isinstance(value, bool) else value
                out.append(f"--set kafka.{key}={shown}")
        return out


def uses_tls(s: SecuritySettings) -> bool:
    return s.security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(s: SecuritySettings) -> bool:
    return s.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def refused_key_message(key: str) -> str:
    """Why ``key`` (e.g. ``kafka.sasl_password``) is not a configuration key, and what to use."""
    section = key.rsplit(".", 1)[0] if "." in key else "kafka"
    return (f"{key}: the SASL password is not a configuration value (it would show in shell "
            f"history, process lists and printed configurations); put it in the environment "
            f"variable {section}.sasl_password_env names (default {DEFAULT_PASSWORD_ENV}) or "
            f"in a file named by {section}.sasl_password_file")


def check(s: SecuritySettings, where: str = "kafka") -> None:
    """Raise ``SecurityError`` naming the key when the settings cannot work: an unknown
    protocol or mechanism, SASL without a mechanism or user name, a file that does not exist,
    TLS files or SASL settings that the protocol would ignore (a forgotten protocol would
    otherwise silently connect in the clear)."""
    p = s.security_protocol
    if p not in PROTOCOLS:
        raise SecurityError(f"{where}.security_protocol must be one of {', '.join(PROTOCOLS)}, "
                            f"got {p!r}")
    for key in (*TLS_FILES, "sasl_password_file"):
        path = getattr(s, key)
        if path is not None and not Path(path).is_file():
            raise SecurityError(f"{where}.{key}: file not found: {path}")
    env = s.sasl_password_env
    if not env or "=" in env or "\0" in env or env.strip() != env:
        raise SecurityError(f"{where}.sasl_password_env must name an environment variable, "
                            f"got {env!r}")
    if uses_tls(s):
        if s.ssl_keyfile and not s.ssl_certfile:
            raise SecurityError(f"{where}.ssl_keyfile is set but {where}.ssl_certfile is not: "
                                "a client key goes with its certificate")
    else:
        given = [k for k in TLS_FILES if getattr(s, k)]
        if given:
            raise SecurityError(f"{where}.{given[0]} is set but {where}.security_protocol is "
                                f"{p}: TLS files need SSL or SASL_SSL")
    if uses_sasl(s):
        if s.sasl_mechanism not in MECHANISMS:
            raise SecurityError(f"{where}.sasl_mechanism must be one of {', '.join(MECHANISMS)} "
                                f"with security_protocol {p}, got {s.sasl_mechanism!r}")
        if not s.sasl_username:
            raise SecurityError(f"{where}.sasl_username must be set with security_protocol {p}")
    else:
        given = [k for k in ("sasl_mechanism", "sasl_username", "sasl_password_file")
                 if getattr(s, k)]
        if given:
            raise SecurityError(f"{where}.{given[0]} is set but {where}.security_protocol is "
                                f"{p}: SASL settings need SASL_PLAINTEXT or SASL_SSL")


def sasl_password(s: SecuritySettings, where: str = "kafka") -> str:
    """The SASL password: the content of ``sasl_password_file`` (its trailing newline
    dropped) when that is set, else the value of the environment variable
    ``sasl_password_env``; masked in every log record from now on."""
    if s.sasl_password_file:
        try:
            pw = Path(s.sasl_password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise SecurityError(f"{where}.sasl_password_file: cannot read "
                                f"{s.sasl_password_file}: {exc.strerror or exc}") from None
        if not pw:
            raise SecurityError(f"{where}.sasl_password_file: {s.sasl_password_file} is empty")
    else:
        pw = os.environ.get(s.sasl_password_env, "")
        if not pw:
            raise SecurityError(
                f"{where}.sasl_password_env: the environment variable {s.sasl_password_env} "
                f"is not set (or empty); set it to the password of {where}.sasl_username "
                f"{s.sasl_username!r}, or give {where}.sasl_password_file")
    redact(pw)
    return pw


def ssl_context(s: SecuritySettings, where: str = "kafka") -> ssl.SSLContext:
    """A client TLS context: the broker verified with ``ssl_cafile`` (else the system's CA
    certificates), its host name checked unless ``ssl_check_hostname`` is false, and the
    client certificate ``ssl_certfile``/``ssl_keyfile`` presented when given."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=s.ssl_cafile)
    except (ssl.SSLError, OSError) as exc:
        raise SecurityError(f"{where}.ssl_cafile: cannot load CA certificates from "
                            f"{s.ssl_cafile}: {exc}") from None
    ctx.check_hostname = s.ssl_check_hostname
    if s.ssl_certfile:
        try:
            ctx.load_cert_chain(s.ssl_certfile, s.ssl_keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise SecurityError(f"{where}.ssl_certfile/ssl_keyfile: cannot load the client "
                                f"certificate {s.ssl_certfile}: {exc}") from None
    return ctx


def client_kwargs(s: SecuritySettings | None, flavor: str, where: str = "kafka"
                  ) -> dict[str, Any]:
    """Keyword arguments that give a client of ``flavor`` these security settings:

    * ``kafka-python`` (``KafkaProducer``, ``KafkaConsumer``, ``KafkaAdminClient``):
      ``security_protocol``, ``ssl_cafile``/``ssl_certfile``/``ssl_keyfile``,
      ``ssl_check_hostname``, ``sasl_mechanism``, ``sasl_plain_username``/``_password``;
    * ``aiokafka`` (``AIOKafkaProducer``/``Consumer``): ``security_protocol``, an
      ``ssl_context`` and the same ``sasl_*`` arguments;
    * ``faust`` (``faust.App``): ``broker_credentials``, an ``SSLCredentials`` or a
      ``SASLCredentials`` (with the TLS context for SASL_SSL).

    None or PLAINTEXT gives ``{}``: the libraries' defaults are plaintext. The password is
    read here (``sasl_password``), so a missing one fails when the first client is made.
    """
    if flavor not in FLAVORS:
        raise ValueError(f"unknown Kafka client flavor {flavor!r} (known: {', '.join(FLAVORS)})")
    if s is None or s.security_protocol == "PLAINTEXT":
        return {}
    check(s, where)
    tls, sasl = uses_tls(s), uses_sasl(s)
    password = sasl_password(s, where) if sasl else None
    if flavor == "faust":
        import faust

        ctx = ssl_context(s, where) if tls else None
        if sasl:
            return {"broker_credentials": faust.SASLCredentials(
                username=s.sasl_username, password=password, ssl_context=ctx,
                mechanism=s.sasl_mechanism)}
        return {"broker_credentials": faust.SSLCredentials(ctx)}
    out: dict[str, Any] = {"security_protocol": s.security_protocol}
    if tls and flavor == "kafka-python":
        out["ssl_check_hostname"] = s.ssl_check_hostname
        out.update({k: getattr(s, k) for k in TLS_FILES if getattr(s, k)})
    elif tls:
        out["ssl_context"] = ssl_context(s, where)
    if sasl:
        out.update(sasl_mechanism=s.sasl_mechanism, sasl_plain_username=s.sasl_username,
                   sasl_plain_password=password)
    return out


# --- secrets out of the logs -------------------------------------------------------------

_SECRETS: set[str] = set()
_factory_installed = False


def redact(secret: str) -> None:
    """Mask ``secret`` in every log record created from now on (any logger, any handler)."""
    global _factory_installed
    if not secret:
        return
    _SECRETS.add(secret)
    if not _factory_installed:
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return _redact_record(previous(*args, **kwargs))

        logging.setLogRecordFactory(factory)
        _factory_installed = True


def redacted(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _SECRETS:
        text = text.replace(secret, REDACTED)
    return text


def _redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record's message with the secrets masked (formatted now, then fixed)."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):     # a bad format string: logging reports it when emitted
        return record
    clean = redacted(message)
    if clean != message:
        record.msg, record.args = clean, None
    return record
