"""HTTP edges of a live worker: the live page (``stfm run --ui PORT``) and Prometheus
``/metrics`` (``observe.metrics_port``), each a small server on a daemon thread.

The page is one static HTML file (``connectors/static/live.html``, no build step) that polls
two JSON endpoints of the same server:

* ``GET /api/state``: the network, counters, lag, throughput, models and recent alerts
  (``streaming.runtime.livefeed.LiveFeed.state``);
* ``GET /api/sensor?id=SENSOR``: one sensor's readings, the forecasts made for them and the
  latest forecast with its interval (404 for an unknown sensor).
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("static") / "live.html"


class ViewServer:
    """A started HTTP server on a daemon thread; ``url`` says where, ``close()`` stops it."""

    def __init__(self, server: Any, thread: threading.Thread, url: str) -> None:
        self.server, self.thread, self.url = server, thread, url

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_live_page(feed: Any, host: str = "127.0.0.1", port: int = 0) -> ViewServer:
    """Serve the live page for ``feed`` (a ``LiveFeed``); port 0 picks a free one."""
    page = PAGE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:           # noqa: N802 (http.server's name)
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

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("live page: " + fmt, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="stfm-live-page", daemon=True)
    thread.start()
    url = f"http://{_display(host)}:{server.server_address[1]}/"
    log.info("live page at %s", url)
    return ViewServer(server, thread, url)


def serve_metrics(registry: Any, host: str = "127.0.0.1", port: int = 0) -> ViewServer:
    """Serve ``registry`` (a prometheus-client ``CollectorRegistry``) on ``/metrics``."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry)
    url = f"http://{_display(host)}:{server.server_address[1]}/metrics"
    log.info("Prometheus metrics at %s", url)
    return ViewServer(server, thread, url)


def _display(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host
