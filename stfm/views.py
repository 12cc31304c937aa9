"""Starting a worker's views: Prometheus ``/metrics`` and the live page, as configured in
``[observe]`` (``stfm run --metrics-port PORT --ui PORT``; the demo always has a page)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from connectors.live_page import ViewServer, serve_live_page, serve_metrics
from streaming.config import StreamConfig
from streaming.runtime.livefeed import LiveFeed
from streaming.runtime.observe import Observer
from streaming.runtime.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass
class Views:
    """The observers to hand the worker and the servers to close after it."""

    observers: list[Observer] = field(default_factory=list)
    servers: dict[str, ViewServer] = field(default_factory=dict)   # "page", "metrics"
    telemetry: Telemetry | None = None
    feed: LiveFeed | None = None

    def url(self, kind: str) -> str | None:
        """The address of the ``"page"`` or the ``"metrics"`` server, when started."""
        server = self.servers.get(kind)
        return None if server is None else server.url

    def close(self) -> None:
        for s in self.servers.values():
            s.close()
        self.servers.clear()


def start_views(cfg: StreamConfig, *, ui: bool | None = None) -> Views:
    """Start what ``cfg.observe`` asks for (``ui=True``: the page even on port 0, which then
    picks a free port). The page's network comes from the sensor graph when one is
    configured (positions, edges), else from the sensors as they appear."""
    o = cfg.observe
    guard = {"token_env": o.http_token_env,
             "allowed_hosts": [h for h in o.allowed_hosts.split(",") if h.strip()]}
    views = Views()
    try:
        if o.metrics_port:
            views.telemetry = Telemetry()
            views.servers["metrics"] = serve_metrics(views.telemetry.registry, o.host,
                                                     o.metrics_port, **guard)
            views.observers.append(views.telemetry)
        if o.ui_port or ui:
            views.feed = LiveFeed(o.history_steps, interval_ms=cfg.patching.interval_ms,
                                  patch_len=cfg.patching.patch_len)
            if cfg.graph:
                from connectors.recordings import read_recording

                g = read_recording(cfg.graph)
                views.feed.set_network(g.sensors, g.lat, g.lon, g.edge_index)
            views.servers["page"] = serve_live_page(views.feed, o.host, o.ui_port, **guard)
            views.observers.append(views.feed)
    except ValueError:                  # ViewSecurityError: beyond loopback without a token
        views.close()
        raise
    except OSError as exc:
        views.close()
        raise OSError(f"cannot serve on {o.host} (observe.metrics_port={o.metrics_port}, "
                      f"observe.ui_port={o.ui_port}): {exc}") from exc
    return views


def describe(views: Views) -> list[str]:
    """Lines saying where the views are, for the command to print."""
    out = []
    if views.url("page"):
        out.append(f"live page: {views.url('page')}")
    if views.url("metrics"):
        out.append(f"metrics:   {views.url('metrics')}")
    return out


__all__ = ["Views", "describe", "start_views"]
