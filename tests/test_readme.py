"""The README's command lines run as written (issue 11): the block under "## Command line".

Each line runs in a temporary directory with this checkout's ``stfm`` on the PATH, a free
port instead of 9092 and the data folder made absolute (``${STFM_DATA:-../shared/data}``: as
the shell reads it, ``../shared/data`` beside this clone unless ``STFM_DATA`` is set); a line
ending in ``&`` (the broker) runs in the background until the end. The Los-loop line is
skipped when the data folder is absent (said in the test's output).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_VAR = re.compile(r"\$\{STFM_DATA:-([^}]+)\}")

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


def test_readme_data_paths_say_how_to_point_elsewhere() -> None:
    """A command line that reads the shared data names it through ``STFM_DATA`` (a bare
    ``../shared/data`` only works with ``shared/`` beside the clone), and the README says so."""
    for line in readme_commands():
        assert "../shared" not in DATA_VAR.sub("", line), line
    assert any(DATA_VAR.search(line) for line in readme_commands())
    text = (ROOT / "README.md").read_text()
    assert "set `STFM_DATA=/path/to/data`" in text


def _broker_port(proc: subprocess.Popen, out: Path, wait_for: Callable[..., None]) -> int:
    """The port the README's broker line bound (started with ``--port 0``: no other process
    can take it between choosing and binding), once it also made its topics."""
    wait_for(lambda: "partition(s) each" in out.read_text(), "the broker and its topics",
             procs=((proc, out),))
    m = re.search(r"embedded broker on [\d.]+:(\d+)", out.read_text())
    assert m, out.read_text()
    return int(m.group(1))


@pytest.mark.heavy
def test_readme_command_lines_run(tmp_path: Path, wait_for) -> None:
    lines = readme_commands()
    assert len(lines) >= 10 and lines[0].startswith("stfm broker --port 9092")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    background: list[subprocess.Popen] = []
    ran, skipped = [], []
    port = None
    try:
        for line in lines:
            m = DATA_VAR.search(line)
            if m:
                data = Path(os.environ.get("STFM_DATA") or ROOT / m.group(1)).resolve()
                if not data.is_dir():
                    skipped.append(line)
                    continue
                line = line.replace(m.group(0), str(data))
            if line.endswith("&"):
                out = tmp_path / "broker.out"
                with open(out, "wb") as fh:
                    background.append(subprocess.Popen(
                        shlex.split(line[:-1].replace("9092", "0")), cwd=tmp_path, env=env,
                        stdout=fh, stderr=subprocess.STDOUT, start_new_session=True))
                port = _broker_port(background[-1], out, wait_for)
                continue
            assert port is not None, "a line ran before the broker's"
            line = line.replace("9092", str(port))
            t0 = time.monotonic()
            r = subprocess.run(shlex.split(line), cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=600, check=False)
            assert r.returncode == 0, f"{line}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
            assert "Traceback" not in r.stderr, line
            ran.append((line, time.monotonic() - t0, r))
    finally:
        for p in background:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(60)
    print(f"ran {len(ran)} README lines; skipped (no data folder): {skipped}")
    for line, secs, _ in ran:
        print(f"{secs:6.1f}s  {line[:110]}")
    runs = [r for line, _, r in ran if line.startswith("stfm run") and "--checkpoint" not in line]
    # the same group a second time: said out loud
    assert "nothing to read" in runs[1].stderr and "nothing to read" not in runs[0].stderr
    assert "(17,280 readings accepted" in runs[0].stdout
    assert "model stfm-tiny+" in runs[0].stdout                      # the packaged model
    assert "(17,280 readings accepted" in runs[2].stdout             # faust: its own group
    assert (tmp_path / "rec.npz").exists() and (tmp_path / "ckpt" / "best").is_dir()
    assert (tmp_path / "report" / "report.json").exists()
    assert "NaN" not in (tmp_path / "report" / "report.json").read_text()
