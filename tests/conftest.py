"""Shared fixtures: the embedded broker (started once per session on a free port)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connectors.broker import EmbeddedBroker

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _weight(item: pytest.Item) -> int:
    """How early a test should start: broker tests (worker processes, waits) and tests
    marked ``heavy`` (tens of seconds of CPU) first."""
    broker = "broker" in item.fixturenames or item.get_closest_marker("broker") is not None
    return 2 * broker + (item.get_closest_marker("heavy") is not None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests first, dealt out over the test processes of a parallel run.

    pytest-xdist's ``worksteal`` hands each process one contiguous slice of this list and
    later moves tests from the end of a busy process's queue to an idle one. Sorted by
    weight alone, one process would get every broker test and the run would end on a long
    test started last; dealt round-robin (test i into slice i mod n), each process starts
    on its share of the long tests and the stealable ends of the queues are short tests."""
    order = sorted(range(len(items)), key=lambda i: -_weight(items[i]))   # stable
    ranked = [items[i] for i in order]
    n = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if n > 1 and len(ranked) > n:
        # worksteal's slice sizes: what is left divided by the processes left
        sizes, left = [], len(ranked)
        for k in range(n):
            sizes.append(left // (n - k))
            left -= sizes[-1]
        slices: list[list[pytest.Item]] = [[] for _ in range(n)]
        k = 0
        for item in ranked:
            while len(slices[k]) >= sizes[k]:
                k = (k + 1) % n
            slices[k].append(item)
            k = (k + 1) % n
        ranked = [item for sl in slices for item in sl]
    items[:] = ranked


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One broker per test process (each pytest-xdist worker starts its own)."""
    with EmbeddedBroker(ready_timeout_s=120) as b:
        yield b


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_from_the_start() -> Iterator[None]:
    """One intra-op thread before any module-scoped fixture runs too (a module's control
    run, computed before the per-test fixture below, would otherwise use torch's default
    threads when its module is the first in its process, and differ in the last bits)."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Every test starts with torch on one intra-op thread, whatever a test before it in the
    same process set (the worker sets torch's threads from its configuration): results then
    do not depend on which tests shared a process, and parallel test processes do not
    oversubscribe the cores."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture
def unique() -> str:
    """A unique suffix for topic and group names so tests on one broker never collide."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 120.0,
              procs: tuple = ()) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` after ``timeout`` s, or with its
    log as soon as one of ``procs`` (``(Popen, log path)``) exits."""
    deadline = time.monotonic() + timeout
    while not cond():
        for p, log in procs:
            assert p.poll() is None, f"worker died: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(cond, what, timeout=120, procs=())`` for tests that run worker processes."""
    return _wait_for


@pytest.fixture
def stfm_process() -> Iterator[Callable[..., subprocess.Popen]]:
    """``stfm_process(*args, log=path)``: ``python -m stfm.cli *args`` started in the
    repository with its output appended to ``log``; any still running when the test ends is
    killed (a failed test leaves no worker behind to load the other test processes)."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            p = subprocess.Popen([sys.executable, "-m", "stfm.cli", *args], cwd=ROOT,
                                 stdout=out, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(60)


def _last_status(log: Path) -> dict:
    """The newest ``status {...}`` line a worker logged (``--status-every``), or {}."""
    lines = [ln for ln in log.read_text().splitlines() if " status {" in ln]
    return json.loads(lines[-1].split("status ", 1)[1]) if lines else {}


@pytest.fixture
def last_status() -> Callable[[Path], dict]:
    """``last_status(log)``: the newest status line of a worker's log as a dict ({} before
    the first). A status is logged after the batches before it were processed."""
    return _last_status
