"""Shared fixtures: the embedded broker (started once per session on a free port)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connectors.broker import EmbeddedBroker

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


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
