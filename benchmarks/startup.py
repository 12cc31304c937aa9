"""Start-up time of the CLI: how long commands take before (and while) doing their work.

Runs each command ``--repeats`` times in fresh processes and reports the median wall time and
whether torch was imported, for this checkout and optionally another one (``--before DIR``, a
clone of an earlier commit) in the same run, since timings on a shared machine are noisy.

    python benchmarks/startup.py [--before /tmp/before] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import publish  # noqa: E402


def commands(tmp: Path) -> list[tuple[str, list[str]]]:
    tiny = tmp / "tiny.npz"
    return [
        ("stfm --help", ["--help"]),
        ("stfm replay publish --help", ["replay", "publish", "--help"]),
        ("stfm simulate (3 sensors, 1 day)", ["simulate", str(tiny), "--sensors", "3",
                                              "--days", "1"]),
        ("stfm alerts report (empty file)", ["alerts", "report", os.devnull, "--out",
                                            str(tmp / "ar")]),
        ("stfm replay backtest (tiny, fresh model)",
         ["replay", "backtest", str(tiny), "--fresh", "--out", str(tmp / "bt"), "--quiet"]),
        ("stfm replay backtest (tiny, default checkpoint)",
         ["replay", "backtest", str(tiny), "--out", str(tmp / "bt2"), "--quiet"]),
    ]


def run(checkout: Path, argv: list[str], repeats: int) -> tuple[float, bool]:
    """Median seconds of ``python -m stfm.cli ARGV`` run from ``checkout``, and whether it
    imported torch."""
    times = []
    torch = False
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    for i in range(repeats):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "stfm.cli", *argv],
                           cwd=checkout, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed in {checkout}:\n{p.stderr[-2000:]}")
        if i == 0:
            torch = any(re.search(r"\|\s+torch$", line.rstrip())
                        for line in p.stderr.splitlines())
    return statistics.median(times), torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--before", type=Path, help="another checkout to compare with")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(Path(tmp))
        rows = []
        for label, argv in cmds:
            now = run(ROOT, argv, args.repeats)
            before = run(args.before, argv, args.repeats) if args.before else None
            rows.append((label, now, before))
            print(f"{label}: {now[0]:.2f}s" + (f" (before {before[0]:.2f}s)" if before else ""),
                  flush=True)
    head = "| command | seconds (median) | imports torch |"
    sep = "|---|---:|---|"
    if args.before:
        head = "| command | before: seconds | before: torch | now: seconds | now: torch |"
        sep = "|---|---:|---|---:|---|"
    lines = [f"## CLI start-up ({dt.date.today()}, `python benchmarks/startup.py "
             f"{'--before ' + str(args.before) + ' ' if args.before else ''}"
             f"--repeats {args.repeats}`)", "", head, sep]
    for label, now, before in rows:
        if before:
            lines.append(f"| {label} | {before[0]:.2f} | {'yes' if before[1] else 'no'} | "
                         f"{now[0]:.2f} | {'yes' if now[1] else 'no'} |")
        else:
            lines.append(f"| {label} | {now[0]:.2f} | {'yes' if now[1] else 'no'} |")
    lines.append("")
    publish("\n".join(lines), args.results, not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
