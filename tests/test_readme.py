"""The README's command lines run as written (issue 11): the block under "## Command line".

Each line runs in a temporary directory with this checkout's ``stfm`` on the PATH, a free
port instead of 9092 and ``../shared`` made absolute; a line ending in ``&`` (the broker) runs
in the background until the end. The Los-loop line is skipped when ``../shared/data`` is
absent (said in the test's output).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connectors.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

pytestmark = pytest.mark.broker


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Command line"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "no bash block under '## Command line'"
    lines = []
    for line in block.group(1).splitlines():
        line = line.split("  #")[0].strip()          # trailing comments
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _wait_port(port: int, timeout_s: float = 30.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


def test_readme_command_lines_run(tmp_path: Path) -> None:
    lines = readme_commands()
    assert len(lines) >= 10 and lines[0].startswith("stfm broker")
    port = free_port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    background: list[subprocess.Popen] = []
    ran, skipped = [], []
    try:
        for line in lines:
            line = line.replace("9092", str(port)).replace("../shared", str(SHARED))
            if str(SHARED) in line and not SHARED.is_dir():
                skipped.append(line)
                continue
            if line.endswith("&"):
                background.append(subprocess.Popen(
                    shlex.split(line[:-1]), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True))
                _wait_port(port)
                time.sleep(1.0)                      # the broker creates its topics
                continue
            t0 = time.monotonic()
            r = subprocess.run(shlex.split(line), cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=120, check=False)
            assert r.returncode == 0, f"{line}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
            assert "Traceback" not in r.stderr, line
            ran.append((line, time.monotonic() - t0, r))
    finally:
        for p in background:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(20)
    print(f"ran {len(ran)} README lines; skipped (no ../shared/data): {skipped}")
    for line, secs, _ in ran:
        print(f"{secs:6.1f}s  {line[:110]}")
    runs = [r for line, _, r in ran if line.startswith("stfm run") and "--checkpoint" not in line]
    # the same group a second time: said out loud
    assert "nothing to read" in runs[1].stderr and "nothing to read" not in runs[0].stderr
    assert '"readings_accepted": 17280' in runs[0].stdout
    assert '"model_version": "stfm-tiny+' in runs[0].stdout          # the packaged model
    assert '"readings_accepted": 17280' in runs[2].stdout           # faust: its own group
    assert (tmp_path / "rec.npz").exists() and (tmp_path / "ckpt" / "best").is_dir()
    assert (tmp_path / "report" / "report.json").exists()
    assert "NaN" not in (tmp_path / "report" / "report.json").read_text()
