"""The live page: its JSON endpoints (no browser, no broker), and the page itself loaded in
headless Chromium while a live worker processes a published recording.

The browser test drives Debian's ``chromium`` (installed by ``make test`` when missing, see
``.ci/ensure-chromium.sh``) with ``--dump-dom`` and ``--screenshot``; it reads the state the
page exposes in the DOM (``data-*`` attributes, ``#alerts`` items) and skips only when no
Chromium binary can be found.
"""

from __future__ import annotations

import asyncio
import http.client
import math
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import orjson
import pytest

from connectors.broker import free_port
from connectors.kafka_io import ensure_topics
from connectors.live_page import PAGE, ViewSecurityError, ViewServer, serve_live_page, serve_metrics
from replay.publish import publish_recording
from replay.simulator import DriftSpec, SimConfig, simulate
from stfm.views import start_views
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.ingest.patching import ReadingBatch
from streaming.pipeline.core import StreamCore
from streaming.runtime.livefeed import LiveFeed
from streaming.runtime.worker import LiveWorker

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ODD_SENSOR = 's 1/<b>"&ä'      # needs URL encoding and HTML escaping
HTML_SENSOR = '<b>s7&amp;'      # shown as these characters only when inserted as text


# --- helpers --------------------------------------------------------------------------------

def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def _sensor_url(base: str, sensor: str) -> str:
    return f"{base}api/sensor?id={urllib.parse.quote(sensor, safe='')}"


class _Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: _Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[_Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self, tag: str | None = None):
        for c in self.children:
            if isinstance(c, _Node):
                if tag is None or c.tag == tag:
                    yield c
                yield from c.iter(tag)


class _Dom(HTMLParser):
    """Just enough of a DOM to read what Chromium's --dump-dom printed."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.cur = _Node("#document", {}, None)
        self.ids: dict[str, _Node] = {}
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = _Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if "id" in node.attrs:
            self.ids[node.attrs["id"]] = node
        if tag not in self.VOID:
            self.cur = node

    def handle_endtag(self, tag: str) -> None:
        n: _Node | None = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data: str) -> None:
        self.cur.children.append(data)

    def body(self) -> _Node:
        return next(self.root.iter("body"))

    def __getitem__(self, id_: str) -> _Node:
        return self.ids[id_]


def _chromium() -> str | None:
    for name in (os.environ.get("STFM_CHROMIUM", ""), *BROWSERS):
        if name and (path := shutil.which(name)):
            return path
    return None


def _run_chromium(exe: str, profile: Path, url: str, *extra: str,
                  budget_ms: int = 3000) -> str:
    """Load ``url`` headless for ``budget_ms`` of virtual time (the page polls once a second;
    virtual time waits for its fetches) and return stdout (the DOM with ``--dump-dom``)."""
    args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-dev-shm-usage", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url]
    r = subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 0, f"chromium failed ({r.returncode}): {r.stderr[-2000:]}"
    return r.stdout


def _png_pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


# --- the JSON endpoints (fast: no browser, no broker) -------------------------------------------

@pytest.fixture(scope="module")
def fed_page():
    """A LiveFeed fed by a StreamCore over a small recording (one sensor renamed to need
    escaping), served on a free port."""
    rec, _ = simulate(SimConfig(n_sensors=4, n_days=1, seed=3, n_events=0, drifts=[]))
    sensors = [ODD_SENSOR if i == 1 else s for i, s in enumerate(rec.sensors)]
    cfg = StreamConfig()
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model), sensors=sensors)
    feed = LiveFeed(interval_ms=cfg.patching.interval_ms, patch_len=cfg.patching.patch_len)
    empty = orjson.loads(orjson.dumps(feed.state()))
    n, rows = rec.n_sensors, rec.n_steps
    out = core.process(ReadingBatch(sensors * rows, np.repeat(rec.timestamps, n),
                                    rec.values.reshape(-1), np.arange(rows * n)))
    feed.region_processed(0, core, out)
    feed.lag_measured({"readings-0": 3})
    server = serve_live_page(feed)
    try:
        yield server.url, rec, sensors, empty
    finally:
        server.close()


def test_page_is_served_and_self_contained(fed_page):
    base = fed_page[0]
    code, ctype, body = _get(base)
    assert code == 200 and ctype.startswith("text/html")
    assert body == PAGE.read_bytes()
    text = body.decode()
    # nothing fetched from elsewhere: the only absolute URL is the SVG namespace
    assert set(re.findall(r"[a-z]+://[^\s'\"<>)]+", text)) == {"http://www.w3.org/2000/svg"}
    assert not re.search(r"\b(src|href)\s*=", text), "the page must not load anything"
    assert "@import" not in text and "innerHTML" not in text
    assert _get(base + "nope")[0] == 404


def test_state_endpoint_shape(fed_page):
    base, rec, sensors, empty = fed_page
    code, ctype, body = _get(base + "api/state")
    assert code == 200 and ctype == "application/json"
    s = orjson.loads(body)
    assert {"now", "interval_ms", "patch_len", "history_steps", "network", "stats", "lag",
            "lag_total", "readings_per_s", "regions", "alerts"} <= set(s)
    assert s["network"]["sensors"] == sensors
    assert s["lag"] == {"readings-0": 3} and s["lag_total"] == 3
    region = s["regions"]["0"]
    assert region["sensors"] == rec.n_sensors and region["model_version"].startswith("fresh")
    assert math.isfinite(region["mae"]) and isinstance(region["last_step_ts"], int)
    # before any data: the empty state the page shows a message for
    assert empty["network"]["sensors"] == [] and empty["regions"] == {}
    assert empty["alerts"] == [] and empty["lag_total"] == 0


def test_sensor_endpoint_series_and_nan_as_null(fed_page):
    base, rec, sensors, _ = fed_page
    for j, sensor in enumerate(sensors):
        code, _, body = _get(_sensor_url(base, sensor))
        assert code == 200, body
        d = orjson.loads(body)
        assert d["sensor"] == sensor and d["region"] == 0
        readings = d["readings"]
        assert len(readings) > 200 and all(len(p) == 2 for p in readings)
        ts = [t for t, _ in readings]
        assert ts == sorted(ts) and ts[0] == int(rec.timestamps[0])
        row = {int(t): i for i, t in enumerate(rec.timestamps.tolist())}
        for t, v in readings:
            want = rec.values[row[t], j]
            if np.isnan(want):
                assert v is None            # missing: null, never NaN (not JSON)
            else:
                assert v == pytest.approx(want, abs=1e-3)
        assert any(v is None for _, v in readings) or not np.isnan(rec.values[:, j]).any()
        assert len(d["forecasts"]) > 100
        assert all(v is None or math.isfinite(v) for _, v in d["forecasts"])
        latest = d["latest"]
        assert len(latest["horizon_ts"]) == len(latest["yhat"]) > 0
        assert latest["horizon_ts"][0] > readings[-1][0]
        assert set(latest["q"]) == {"0.1", "0.9"}
        assert all(lo <= hi for lo, hi in zip(latest["q"]["0.1"], latest["q"]["0.9"],
                                              strict=True))
    assert b"NaN" not in _get(_sensor_url(base, sensors[0]))[2]


def test_hand_fed_feed_network_throughput_and_empty_values():
    class _Stats:
        def __init__(self, n: int) -> None:
            self.readings_accepted = n

        def as_dict(self) -> dict[str, int]:
            return {"readings_accepted": self.readings_accepted, "messages": self.readings_accepted}

    feed = LiveFeed()
    feed.set_network(["a", "b", "c"], np.array([52.5, 52.6, np.nan]), np.array([13.4, 13.5, 13.6]),
                     np.array([[0, 1, 2, 1], [1, 1, 0, 2]]))
    s = feed.state()
    assert s["network"]["edges"] == [[0, 1], [2, 0], [1, 2]]      # self-loops dropped
    assert s["readings_per_s"] == 0.0 and s["regions"] == {} and s["alerts"] == []
    feed.batch_processed(None, _Stats(5000), 0.25)           # type: ignore[arg-type]
    rate = feed.state()["readings_per_s"]
    assert 0 < rate <= 5000 / 0.25 * 1.01                      # one batch is enough for a rate
    body = orjson.dumps(feed.state())                          # NaN position: JSON null
    assert orjson.loads(body)["network"]["lat"][2] is None or b"NaN" not in body
    assert feed.sensor("a") is None                            # no region has it yet


def test_sensor_endpoint_unknown_is_404(fed_page):
    base = fed_page[0]
    for bad in ("nope", "", "s000 "):
        code, ctype, body = _get(_sensor_url(base, bad))
        assert code == 404 and ctype == "application/json"
        assert "unknown sensor" in orjson.loads(body)["error"]
    code, _, _ = _get(base + "api/sensor")
    assert code == 404


# --- who the views answer: Host check and bearer token ------------------------------------------

TOKEN_ENV = "STFM_TEST_HTTP_TOKEN"       # the tests' own variable: the caller's env is moot
TOKEN = "s3cret; token=with,odd chars"   # needs quoting in a cookie


def _request(server: ViewServer, path: str, headers: dict[str, str] | None = None,
             host: str | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """GET ``path`` from ``server`` with ``Host: host`` (None: no Host header at all) and
    ``headers``; redirects are not followed."""
    u = urllib.parse.urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


@pytest.fixture
def views(monkeypatch):
    """``start(host="127.0.0.1", token=None)``: the live page and the metrics server on free
    ports, with ``token`` in their token variable (unset when None); all closed at the end."""
    started: list[ViewServer] = []

    def start(host: str = "127.0.0.1", token: str | None = None) -> tuple[ViewServer, ...]:
        if token is None:
            monkeypatch.delenv(TOKEN_ENV, raising=False)
        else:
            monkeypatch.setenv(TOKEN_ENV, token)
        from prometheus_client import CollectorRegistry, Counter

        registry = CollectorRegistry()
        Counter("stfm_test_things", "things", registry=registry).inc(3)
        started.append(serve_live_page(LiveFeed(), host, token_env=TOKEN_ENV))
        started.append(serve_metrics(registry, host, token_env=TOKEN_ENV))
        return started[-2], started[-1]

    yield start
    for server in started:
        server.close()


PAGE_PATHS = ("/", "/index.html", "/api/state", "/api/sensor?id=x", "/nope", "/?token=x")


def test_views_answer_only_loopback_and_their_own_host_names(views):
    page, metrics = views()
    p_port, m_port = page.server.server_address[1], metrics.server.server_address[1]
    for server, port, paths in ((page, p_port, PAGE_PATHS), (metrics, m_port, ("/metrics", "/"))):
        for path in paths:
            for host in ("evil.example.com", f"evil.example.com:{port}", None, "",
                         "localhost.evil.example.com", "127.0.0.1.evil.example.com",
                         f"localhost:{port}x", "[::1", "::1", "10.1.2.3"):
                code, headers, body = _request(server, path, host=host)
                assert code == 403, (path, host, code, body)
                assert headers["Content-Type"].startswith("text/plain")
                assert b"Forbidden" in body and b"Host" in body
        for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}",
                     "[::1]", f"[::1]:{port}", "LocalHost"):
            code, _, body = _request(server, paths[0] if server is metrics else "/api/state",
                                     host=host)
            assert code == 200, (host, body)
    assert b"stfm_test_things_total 3.0" in _request(metrics, "/metrics", host="localhost")[2]
    # a browser's own requests (urllib sends Host like one) get the page and its data
    assert _get(page.url)[0] == _get(page.url + "api/state")[0] == 200
    assert urllib.request.urlopen(metrics.url, timeout=60).status == 200


def test_token_is_required_when_set(views):
    page, metrics = views(token=TOKEN)
    host = "127.0.0.1"
    good = {"Authorization": f"Bearer {TOKEN}"}
    for server, path in ((page, "/api/state"), (page, "/"), (metrics, "/metrics")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Cookie": f"stfm_token={TOKEN}"}):
            code, h, body = _request(server, path, headers, host=host)
            assert code == 401, (path, headers, code)
            assert h["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN_ENV.encode() in body and TOKEN.encode() not in body
        code, _, body = _request(server, path, good, host=host)
        assert code == 200, body
        assert _request(server, path, {"authorization": f"bearer {TOKEN}"}, host=host)[0] == 200
        # the Host check holds with the token too: a rebound page cannot have it anyway
        assert _request(server, path, good, host="evil.example.com")[0] == 403
    assert _get(page.url + "api/state")[0] == 401


def test_page_takes_the_token_once_and_its_fetches_carry_the_cookie(views):
    page, metrics = views(token=TOKEN)
    host = f"localhost:{page.server.server_address[1]}"
    q = urllib.parse.quote(TOKEN, safe="")
    code, headers, body = _request(page, f"/?sensor=a%20b&token={q}", host=host)
    assert code == 303, body
    assert headers["Location"] == "/?sensor=a+b"                  # the token left the URL
    name, _, value = headers["Set-Cookie"].partition(";")[0].partition("=")
    assert name == f"stfm_token_{page.server.server_address[1]}"
    attrs = headers["Set-Cookie"].lower()
    assert "httponly" in attrs and "samesite=lax" in attrs and "path=/" in attrs
    cookie = {"Cookie": f"other=1; {name}={value}"}
    for path in ("/", "/api/state", "/api/sensor?id=x"):
        code, _, body = _request(page, path, cookie, host=host)
        assert code in (200, 404) and b"Unauthorized" not in body, (path, code, body)
    # a wrong token is no login, and only the page logs in (the metrics want the header)
    assert _request(page, "/?token=wrong", host=host)[0] == 401
    assert _request(page, "/api/state?token=" + q, host=host)[0] == 401
    assert _request(metrics, "/metrics?token=" + q, host=host)[0] == 401
    code, _, body = _request(page, "/api/state", {"Cookie": f"{name}=wrong"}, host=host)
    assert code == 401 and b"?token=" in body


def test_page_with_a_token_works_in_headless_chromium(views, tmp_path: Path):
    """The page opened once with ``?token=`` gets its data: its fetches carry the cookie."""
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary on PATH (chromium, chromium-browser, google-chrome)")
    page, _ = views(token=TOKEN)
    dom = _Dom(_run_chromium(exe, tmp_path / "profile", page.url + "?token="
                             + urllib.parse.quote(TOKEN, safe=""), "--dump-dom", budget_ms=1500))
    body = dom.body()
    assert body.attrs.get("data-ready") == "1", body.attrs       # /api/state answered it
    assert "No data yet" in dom["empty-state"].text()
    # another browser profile, no token: the server's refusal, not the page
    text = _run_chromium(exe, tmp_path / "other", page.url, "--dump-dom", budget_ms=500)
    assert "Unauthorized" in text and "data-ready" not in text


def test_views_beyond_loopback_need_a_token(views, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    for host in ("0.0.0.0", "", "::", "192.0.2.1", "stfm.example.com"):
        for serve in (lambda h: serve_live_page(LiveFeed(), h, token_env=TOKEN_ENV),
                      lambda h: serve_metrics(None, h, token_env=TOKEN_ENV)):
            with pytest.raises(ViewSecurityError, match=TOKEN_ENV):
                serve(host)
    # through the configuration: the variable it names is the one asked for
    monkeypatch.delenv("STFM_HTTP_TOKEN", raising=False)
    cfg = StreamConfig.from_dict({"observe": {"host": "0.0.0.0", "metrics_port": free_port()}})
    with pytest.raises(ViewSecurityError, match="STFM_HTTP_TOKEN"):
        start_views(cfg, ui=True)
    # with a token every interface is served: loopback names, this host's name, addresses
    page, metrics = views("0.0.0.0", token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}
    for server, path in ((page, "/api/state"), (metrics, "/metrics")):
        for host in ("localhost", "127.0.0.1", "192.0.2.7:8080", "[2001:db8::1]"):
            assert _request(server, path, good, host=host)[0] == 200, host
        assert _request(server, path, good, host="evil.example.com")[0] == 403


def test_views_from_the_configuration_use_its_names(monkeypatch):
    monkeypatch.setenv("STFM_OTHER_TOKEN", TOKEN)
    cfg = StreamConfig.from_dict({"observe": {
        "metrics_port": free_port(), "http_token_env": "STFM_OTHER_TOKEN",
        "allowed_hosts": "stfm.example.com, [2001:db8::2]"}})
    v = start_views(cfg, ui=True)
    try:
        good = {"Authorization": f"Bearer {TOKEN}"}
        for kind, path in (("page", "/api/state"), ("metrics", "/metrics")):
            server = v.servers[kind]
            for host in ("stfm.example.com", "STFM.example.com:443", "[2001:db8::2]:80"):
                assert _request(server, path, good, host=host)[0] == 200, (kind, host)
            assert _request(server, path, host="stfm.example.com")[0] == 401
            assert _request(server, path, good, host="other.example.com")[0] == 403
    finally:
        v.close()
    for bad in ({"http_token_env": ""}, {"http_token_env": "A=B"},
                {"allowed_hosts": "stfm.example.com:8080"}, {"allowed_hosts": "http://x"}):
        with pytest.raises(ValueError, match="observe."):
            StreamConfig.from_dict({"observe": bad})


# --- the page in headless Chromium against a live worker ------------------------------------------

@pytest.mark.broker
def test_live_page_in_headless_chromium(broker, unique, tmp_path: Path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary on PATH (chromium, chromium-browser, google-chrome); "
                    "`make test` installs Debian's chromium package when it can")
    rec, truths = simulate(SimConfig(
        n_sensors=8, n_days=2, seed=5, n_events=2,
        drifts=[DriftSpec("level_shift", sensor=2, onset_frac=0.55, magnitude=3.0)]))
    old = rec.sensors[7]                 # a name the page must show as text, not as HTML
    rec.sensors[7] = HTML_SENSOR
    for ev in rec.events:
        if ev.get("sensor") == old:
            ev["sensor"] = HTML_SENSOR
    bs = broker.bootstrap_servers
    topics = {f"{t}_topic": f"{t.replace('_', '-')}-{unique}"
              for t in ("readings", "events", "forecasts", "alerts", "dead_letter")}
    cfg = StreamConfig.from_dict({"kafka": {"bootstrap_servers": bs, "group_id": f"g-{unique}",
                                            **topics}})
    ensure_topics(bs, list(topics.values()))
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model), sensors=list(rec.sensors))
    views = start_views(cfg, ui=True)
    assert views.feed is not None and views.url("page")
    views.feed.set_network(rec.sensors, rec.lat, rec.lon, rec.edge_index)
    url = views.url("page")
    errors: list[BaseException] = []
    worker = LiveWorker(cfg, core, idle_exit_s=0.5, observers=views.observers)

    def _publish_then_run() -> None:
        try:
            publish_recording(rec, bs, topic=cfg.kafka.readings_topic,
                              events_topic=cfg.kafka.events_topic, progress=False)
            asyncio.run(worker.run())
        except BaseException as exc:       # re-raised by the test below
            errors.append(exc)

    thread = threading.Thread(target=_publish_then_run, name="publish-and-run", daemon=True)
    try:
        # a worker with nothing yet: the page says so
        empty = serve_live_page(LiveFeed())
        try:
            dom = _Dom(_run_chromium(exe, tmp_path / "profile", empty.url, "--dump-dom",
                                     budget_ms=1500))
        finally:
            empty.close()
        assert dom.body().attrs["data-ready"] == "1" and dom.body().attrs["data-empty"] == "1"
        assert "No data yet" in dom["empty-state"].text()
        assert dom["sensor-count"].text() == "no sensors yet"
        assert dom["network"].attrs["data-sensors"] == "0"

        # the page before the first batch: the network is known, no readings yet
        dom = _Dom(_run_chromium(exe, tmp_path / "profile", url, "--dump-dom", budget_ms=1500))
        assert dom.body().attrs["data-ready"] == "1"
        assert dom["stat-messages"].attrs["data-value"] == ""
        assert dom["chart"].attrs["data-readings"] == "0"
        thread.start()

        # poll the page until it shows the whole recording processed, with forecasts drawn
        deadline = time.monotonic() + 300     # a failure's limit, not a speed bound
        total = rec.values.size
        while True:
            dom = _Dom(_run_chromium(exe, tmp_path / "profile", url, "--dump-dom"))
            chart, net = dom["chart"], dom["network"]
            done = (dom.body().attrs.get("data-ready") == "1"
                    and dom["stat-readings_accepted"].attrs["data-value"] == str(total)
                    and int(chart.attrs["data-forecast-points"]) > 0
                    and net.attrs["data-sensors"] == str(rec.n_sensors))
            if done or errors or time.monotonic() > deadline:
                break
        assert not errors, errors
        assert done, ("the page never showed the processed recording: "
                      f"body={dom.body().attrs} chart={chart.attrs} network={net.attrs}")
        thread.join(timeout=300)
        assert not thread.is_alive() and not errors, errors
        # the worker's last flush (the partial step at the end) came after that dump: load
        # the page once more so that it and the feed describe the same, final state
        dom = _Dom(_run_chromium(exe, tmp_path / "profile", url, "--dump-dom"))
        chart, net = dom["chart"], dom["network"]

        state = views.feed.state()
        # the network: every sensor at its position, the graph's edges, alerting ones marked
        assert dom["sensor-count"].text() == f"{rec.n_sensors} sensors"
        assert net.attrs["data-layout"] == "geo"
        assert int(net.attrs["data-edges"]) == len(state["network"]["edges"]) > 0
        options = [o.text() for o in dom["sensor-select"].iter("option")]
        assert options == list(rec.sensors)
        # the chart of the first sensor: readings, one-step forecasts, the latest + interval
        assert chart.attrs["data-sensor"] == rec.sensors[0]
        assert int(chart.attrs["data-readings"]) > 100
        assert int(chart.attrs["data-horizon-points"]) == cfg.model.horizon
        assert chart.attrs["data-band"] == "1"
        assert int(dom.body().attrs["data-updates"]) >= 2, "the page did not keep polling"
        assert "local time (UTC" in dom["tz"].text()
        # counters, straight from the worker's stats
        stats = state["stats"]
        for key in ("messages", "readings_accepted", "forecasts", "alerts", "dead_letters"):
            assert dom[f"stat-{key}"].attrs["data-value"] == str(stats[key]), key
        assert stats["forecasts"] > 0 and stats["dead_letters"] == 0
        assert dom["stat-lag_total"].attrs["data-value"] == str(state["lag_total"])
        assert "stfm" in dom["regions"].text() or "fresh" in dom["regions"].text()
        # the alert timeline, newest first, with its text escaped as text
        items = list(dom["alerts"].iter("li"))
        alerts = state["alerts"]
        assert len(items) == len(alerts)
        assert dom["alert-strip"].attrs["data-markers"] == str(len(alerts))
        if alerts:
            newest = alerts[-1]
            assert items[0].attrs["data-id"] == newest["id"]
            assert newest["detail"]["text"] in items[0].text()
            assert "display: none" in dom["alerts-empty"].attrs.get("style", "")
        else:
            assert "display: none" not in dom["alerts-empty"].attrs.get("style", "")
            assert dom["alerts-empty"].text() == "No alerts yet."
        # highlighted: the sensors with an alert in the chart's default window (24 h)
        step_ms = cfg.patching.interval_ms * cfg.patching.patch_len
        end = max([r["last_step_ts"] + step_ms for r in state["regions"].values()]
                  + [a["ts"] for a in alerts])
        recent = {s for a in alerts if a["ts"] >= end - 86_400_000 for s in a["sensors"]}
        assert net.attrs["data-alerting"] == str(len(recent & set(rec.sensors)))

        # an alerted sensor selected through ?sensor=: its chart and its alert markers
        hit = next((a["sensors"][0] for a in reversed(alerts) if a["sensors"]), None)
        if hit is not None:
            dom = _Dom(_run_chromium(exe, tmp_path / "profile",
                                     url + "?sensor=" + urllib.parse.quote(hit), "--dump-dom"))
            assert dom["chart"].attrs["data-sensor"] == hit
            assert dom["chart-title"].text() == hit

        # a screenshot at 1280x900 that is not blank
        png = tmp_path / "live.png"
        _run_chromium(exe, tmp_path / "profile", url, f"--screenshot={png}",
                      "--window-size=1280,900", "--force-device-scale-factor=1")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        px = _png_pixels(png)
        assert px.shape[:2] == (900, 1280)
        rgb = (px[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
        colours = np.unique(rgb, axis=0)
        assert len(colours) > 50, f"only {len(colours)} colours: a blank page?"
        assert rgb.std(axis=0).max() > 20
        # the readings' line (#1d4ed8) and the interval band are drawn
        blue = np.abs(rgb.astype(int) - [0x1D, 0x4E, 0xD8]).max(axis=1) < 40
        assert blue.sum() > 300, f"{blue.sum()} pixels of the readings' colour"
        if out := os.environ.get("STFM_LIVE_SCREENSHOT"):
            shutil.copy(png, out)
    finally:
        if thread.is_alive():
            worker.stop()
            thread.join(timeout=10)
        views.close()
