"""Start-up time of the CLI: how long commands take before (and while) doing their work.

Runs each command ``--repeats`` times in fresh processes and reports the median wall time and
whether torch was imported, for this checkout and optionally another one (``--before DIR``, a
clone of an earlier commit) in the same run, since timings on a shared machine are noisy.

    python benchmarks/startup.py [--before /tmp/before] [--repeats 5]
"""

from __future__ import annotations

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

from benchmarks import common  # noqa: E402

NEEDS_MODEL = "backtest"            # the commands whose label says so import torch


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
    ap = common.parser(__doc__)
    ap.add_argument("--before", type=Path, help="another checkout to compare with")
    ap.add_argument("--repeats", type=int, default=5)
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

    def yes(b: bool) -> str:
        return "yes" if b else "no"

    if args.before:
        table = common.md_table(["command", "before: s", "before: torch", "now: s", "now: torch"],
                                [(label, f"{b[0]:.2f}", yes(b[1]), f"{n[0]:.2f}", yes(n[1]))
                                 for label, n, b in rows if b], align="lrlrl")
    else:
        table = common.md_table(["command", "seconds (median)", "imports torch"],
                                [(label, f"{n[0]:.2f}", yes(n[1])) for label, n, _ in rows],
                                align="lrl")
    ok = not any(n[1] for label, n, _ in rows if NEEDS_MODEL not in label)
    sim = next((n, b) for label, n, b in rows if label.startswith("stfm simulate"))
    body = [f"Median seconds of {args.repeats} fresh run(s) per command"
            + (f"; before = the checkout in `{args.before}`" if args.before else "") + ".",
            "", *table, "",
            "- Goal (issue 16) commands that need no model import no torch: "
            f"{common.verdict(ok)}. Backtests need torch and torch-geometric."]
    headline = (f"`stfm simulate` {sim[1][0]:.2f} -> {sim[0][0]:.2f} s" if sim[1] else
                f"`stfm simulate` {sim[0][0]:.2f} s")
    summary = common.Summary("startup.py", "CLI start-up seconds", headline,
                             "commands without a model import no torch", common.index_verdict(ok))
    common.publish(common.Section("startup", "Live stream processing",
                                  "CLI start-up (benchmarks/startup.py)", "\n".join(body), summary),
                   args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
