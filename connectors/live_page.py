"""HTTP edges of a live worker: the live page (``stfm run --ui PORT``) and Prometheus
``/metrics`` (``observe.metrics_port``), each a small server on a daemon thread.

The page is one static HTML file (``connectors/static/live.html``, no build step) that polls
two JSON endpoints of the same server:

* ``GET /api/state``: the network, counters, lag, throughput, models and recent alerts
  (``streaming.runtime.livefeed.LiveFeed.state``);
* ``GET /api/sensor?id=SENSOR``: one sensor's readings, the forecasts made for them and the
  latest forecast with its interval (404 for an unknown sensor).

Both servers answer only requests whose ``Host`` names them (loopback names, the address they
are bound to, ``allowed_hosts``): anything else, a DNS-rebinding page in a browser above all,
gets 403. When the environment variable named by ``token_env`` (``STFM_HTTP_TOKEN``) is set,
every request must carry ``Authorization: Bearer <token>`` (401 otherwise); the live page
also takes it once as ``/?token=<token>``, answered with an HttpOnly cookie (so the page's
own fetches carry it) and a redirect to the same URL without the token. A server bound
beyond loopback without a token refuses to start.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlparse

import orjson

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("static") / "live.html"
DEFAULT_TOKEN_ENV = "STFM_HTTP_TOKEN"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


class ViewSecurityError(ValueError):
    """A view server would answer beyond this machine without a token."""


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:                    # a name other than localhost
        return False


def _host_name(header: str | None) -> str | None:
    """The name in a ``Host`` header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``),
    lower-cased without brackets; None when it is missing or malformed."""
    h = (header or "").strip().lower()
    if h.startswith("["):
        name, close, rest = h[1:].partition("]")
        if not close:
            return None
    else:
        name, colon, port = h.partition(":")
        rest = colon + port
    if rest and not (rest[0] == ":" and rest[1:].isdigit()):
        return None
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:                    # a name, not an address
        return False
    return True


@dataclass(frozen=True)
class HttpGuard:
    """What a view server answers: requests whose ``Host`` is one of ``hosts`` (or any IP
    address when ``any_ip``: bound to every interface; an address is never a rebound name)
    and, when ``token`` is set, that carry it."""

    hosts: frozenset[str]
    any_ip: bool = False
    token: str | None = None
    token_env: str = DEFAULT_TOKEN_ENV

    @classmethod
    def for_bind(cls, host: str, *, token_env: str = DEFAULT_TOKEN_ENV,
                 allowed_hosts: Iterable[str] = (), what: str = "view server") -> HttpGuard:
        """The guard of a server bound to ``host``, its token read from ``$token_env``;
        raises ``ViewSecurityError`` for a bind beyond loopback without a token."""
        token = os.environ.get(token_env) or None
        bind = host.strip("[]").lower()
        if token is None and not is_loopback(bind):
            raise ViewSecurityError(
                f"{what}: refusing to serve on {host or '0.0.0.0'!r} (beyond loopback) without "
                f"a token: set the environment variable {token_env} (observe.http_token_env) to "
                f"a secret that clients send as 'Authorization: Bearer <token>', or bind to "
                f"127.0.0.1 (observe.host)")
        names = set(LOOPBACK_NAMES)
        names.update(n.strip().strip("[]").lower() for n in allowed_hosts if n.strip())
        any_ip = bind in WILDCARD_HOSTS
        names.add(socket.gethostname().lower() if any_ip else bind)
        return cls(frozenset(names), any_ip, token, token_env)

    def host_allowed(self, header: str | None) -> bool:
        name = _host_name(header)
        return name is not None and (name in self.hosts or (self.any_ip and _is_ip(name)))

    def token_matches(self, presented: str) -> bool:
        """``presented`` is the token (constant time)."""
        return self.token is not None and hmac.compare_digest(presented.encode(),
                                                              self.token.encode())

    def authorized(self, headers: Mapping[str, str], cookie_name: str) -> bool:
        """No token is needed, or the request carries it as a bearer token or the cookie."""
        if self.token is None:
            return True
        scheme, _, credentials = (headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return True
        cookie = _cookie(headers.get("Cookie"), cookie_name)
        return cookie is not None and self.token_matches(cookie)


def _cookie(header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header (URL-decoded), or None."""
    for part in (header or "").split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key == name:
            return unquote(value)
    return None


class GuardedHandler(BaseHTTPRequestHandler):
    """A request handler that answers only what its ``guard`` lets through; ``do_GET`` of a
    subclass starts with ``if self.refused(): return``."""

    guard: HttpGuard
    login_paths: frozenset[str] = frozenset()    # where ``?token=`` sets the cookie (the page)

    def cookie_name(self) -> str:
        # per port: cookies are shared by every port of a host
        return f"stfm_token_{self.server.server_address[1]}"

    def refused(self) -> bool:
        """Answer a request the guard refuses (403: Host, 401: token) or a ``?token=`` login
        (303 to the URL without it); True when it answered."""
        g = self.guard
        host = self.headers.get("Host")
        if not g.host_allowed(host):
            which = "a request without a Host header" if host is None else f"Host {host!r}"
            self._plain(403, f"Forbidden: this server does not answer {which} (it answers "
                             f"localhost, 127.0.0.1, [::1] and the address it is bound to; "
                             f"more names: observe.allowed_hosts)\n")
            return True
        url = urlparse(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path in self.login_paths and g.token is not None and "token" in query:
            if not g.token_matches(query["token"][-1]):
                self._unauthorized("the ?token= given is wrong")
                return True
            rest = urlencode({k: v for k, v in query.items() if k != "token"}, doseq=True)
            self._plain(303, "See Other\n", [
                ("Location", url.path + (f"?{rest}" if rest else "")),
                ("Set-Cookie", f"{self.cookie_name()}={quote(g.token, safe='')}; Path=/; "
                               "HttpOnly; SameSite=Lax")])
            return True
        if not g.authorized(self.headers, self.cookie_name()):
            self._unauthorized("no token or a wrong one")
            return True
        return False

    def _unauthorized(self, why: str) -> None:
        how = "send 'Authorization: Bearer <token>'"
        if self.login_paths:
            how += " or open the page once as /?token=<token>"
        self._plain(401, f"Unauthorized ({why}): {how}, the token being the value of "
                         f"{self.guard.token_env} where the server runs\n",
                    [("WWW-Authenticate", 'Bearer realm="stfm"')])

    def _plain(self, code: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug(f"{type(self).__name__}: " + fmt, *args)


def _start(handler: type[GuardedHandler], host: str, port: int,
           name: str) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``handler`` on ``host:port`` from a daemon thread (IPv6 for an IPv6 address)."""

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host.strip("[]"), port), handler)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return server, thread


class ViewServer:
    """A started HTTP server on a daemon thread; ``url`` says where, ``close()`` stops it."""

    def __init__(self, server: Any, thread: threading.Thread, url: str) -> None:
        self.server, self.thread, self.url = server, thread, url

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_live_page(feed: Any, host: str = "127.0.0.1", port: int = 0, *,
                    token_env: str = DEFAULT_TOKEN_ENV,
                    allowed_hosts: Iterable[str] = ()) -> ViewServer:
    """Serve the live page for ``feed`` (a ``LiveFeed``); port 0 picks a free one. Requests
    pass the ``HttpGuard`` of ``host`` (a token from ``$token_env``)."""
    page = PAGE.read_bytes()
    page_guard = HttpGuard.for_bind(host, token_env=token_env, allowed_hosts=allowed_hosts,
                                    what="live page")

    class Handler(GuardedHandler):
        guard = page_guard
        login_paths = frozenset({"/", "/index.html"})

        def do_GET(self) -> None:           # noqa: N802 (http.server's name)
            if self.refused():
                return
            url = urlparse(self.path)
            if url.path in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            elif url.path == "/api/state":
                self._json(feed.state())
            elif url.path == "/api/sensor":
                sensor = parse_qs(url.query).get("id", [""])[0]
                data = feed.sensor(sensor)
                if data is None:
                    self._json({"error": f"unknown sensor {sensor!r}"}, 404)
                else:
                    self._json(data)
            else:
                self._json({"error": f"no such page {url.path!r} (try / or /api/state)"}, 404)

        def _json(self, obj: Any, code: int = 200) -> None:
            self._send(code, orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY),
                       "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

    server, thread = _start(Handler, host, port, "stfm-live-page")
    url = f"http://{_display(host)}:{server.server_address[1]}/"
    log.info("live page at %s", url)
    return ViewServer(server, thread, url)


def serve_metrics(registry: Any, host: str = "127.0.0.1", port: int = 0, *,
                  token_env: str = DEFAULT_TOKEN_ENV,
                  allowed_hosts: Iterable[str] = ()) -> ViewServer:
    """Serve ``registry`` (a prometheus-client ``CollectorRegistry``) on ``/metrics`` with
    prometheus-client's own handler (content negotiation, gzip) behind the ``HttpGuard``."""
    from prometheus_client.exposition import MetricsHandler

    metrics_guard = HttpGuard.for_bind(host, token_env=token_env, allowed_hosts=allowed_hosts,
                                       what="metrics server")

    class Handler(GuardedHandler, MetricsHandler):
        guard = metrics_guard

        def do_GET(self) -> None:           # noqa: N802 (http.server's name)
            if not self.refused():
                super().do_GET()            # MetricsHandler's

    Handler.registry = registry
    server, thread = _start(Handler, host, port, "stfm-metrics")
    url = f"http://{_display(host)}:{server.server_address[1]}/metrics"
    log.info("Prometheus metrics at %s", url)
    return ViewServer(server, thread, url)


def _display(host: str) -> str:
    if host in WILDCARD_HOSTS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
