#!/usr/bin/env python
"""Cost of the served mix's expert weights (``streaming.forecast.experts.ExpertWeights``) per
closed step: ``combine`` (the served forecast) and ``update`` (one realized forecast), at
defaults (``combine = auto``, AdaHedge rates, the network's weights), for the default seven
experts and 12 horizon points.

The forecasts and truths are Gaussian noise (the cost does not depend on the values); a third
of the sensors miss one expert (a weekly season not seen yet there) and one expert has no
forecast on any sensor (a season not configured), so the sleeping-expert paths are timed too.
After 5 warm-up steps, ``--steps`` steps are timed per size.

``--tree DIR`` times another checkout too (e.g. a ``git worktree`` of an earlier commit): each
round runs both in fresh processes, alternated, ``--rounds`` times, and the table gives each
one's median and their ratio, since this machine's speed moves between runs.

    python benchmarks/experts_cost.py [--sensors 200,2000,10000] [--steps 30]
        [--tree DIR --rounds 3] [--no-record]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

EXPERTS = ["model", "frozen", "persistence", "moving_average", "seasonal_day",
           "seasonal_week", "holt_winters"]
H = 12

# run in a fresh process with the checkout under test first on sys.path (an older checkout
# has no copy of this file): prints {sensors: [combine ms, update ms]}
MEASURE = """
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from streaming.forecast.experts import ExpertWeights
names, h, steps = json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {}
for n in json.loads(sys.argv[5]):
    rng = np.random.default_rng(0)
    ew = ExpertWeights(names, h, eta=0.0, share=0.001, loss_clip=9.0)
    f = rng.normal(size=(steps + 5, n, h, len(names)))
    f[:, : n // 3, :, names.index("seasonal_week")] = np.nan
    f[..., names.index("holt_winters")] = np.nan
    y = rng.normal(size=(steps + 5, n, h))
    scale = np.ones(n)
    tc = tu = 0.0
    for t in range(steps + 5):
        a = time.perf_counter()
        ew.combine(f[t])
        b = time.perf_counter()
        ew.update(f[t], y[t], scale)
        c = time.perf_counter()
        if t >= 5:
            tc, tu = tc + b - a, tu + c - b
    out[n] = [1e3 * tc / steps, 1e3 * tu / steps]
print(json.dumps(out))
"""


def measure(tree: Path, sensors: list[int], steps: int) -> dict[int, tuple[float, float]]:
    """Per size, ms per step of ``combine`` and of ``update`` in ``tree``'s code."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tree), json.dumps(EXPERTS), str(H), str(steps),
         json.dumps(sensors)], capture_output=True, text=True, cwd=tree)
    if done.returncode:
        raise RuntimeError(f"experts_cost: the run in {tree} failed:\n{done.stderr[-2000:]}")
    return {int(k): (v[0], v[1]) for k, v in json.loads(done.stdout).items()}


def git_rev(tree: Path) -> str:
    """``tree``'s short commit."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, text=True,
                          capture_output=True, check=True).stdout.strip()


def main() -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--sensors", type=common.int_list, default=[200, 2000, 10000])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--tree", type=Path, default=None, help="another checkout to time too")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    trees = [("this", ROOT)] + ([("other", args.tree.resolve())] if args.tree else [])
    runs: dict[str, list[dict[int, tuple[float, float]]]] = {k: [] for k, _ in trees}
    for _ in range(args.rounds if args.tree else 1):
        for label, tree in reversed(trees):
            runs[label].append(measure(tree, args.sensors, args.steps))

    def med(label: str, n: int) -> tuple[float, float, float]:
        c = float(np.median([r[n][0] for r in runs[label]]))
        u = float(np.median([r[n][1] for r in runs[label]]))
        return c, u, c + u

    head = ["sensors", "combine ms", "update ms", "ms per step"]
    if args.tree:
        head += ["other: ms per step", "this / other"]
    rows = []
    for n in args.sensors:
        c, u, t = med("this", n)
        row = [f"{n:,}", f"{c:.1f}", f"{u:.1f}", f"{t:.1f}"]
        if args.tree:
            o = med("other", n)[2]
            row += [f"{o:.1f}", f"{t / o:.2f}"]
        rows.append(row)
        print(f"[experts_cost] {n:,} sensors: {' | '.join(row[1:])}", flush=True)
    other = (f"; other = `{git_rev(args.tree)}`"
             f" ({args.tree}), {args.rounds} rounds alternated, medians" if args.tree else "")
    body = [f"`ExpertWeights` at defaults, {len(EXPERTS)} experts x {H} horizon points; a third "
            "of the sensors miss one expert, one expert has no forecast anywhere; "
            f"{args.steps} timed steps after 5{other}.", "",
            *common.md_table(head, rows)]
    last = rows[-1]
    summary = common.Summary("experts_cost.py", "the served mix's weights per step",
                             f"{last[3]} ms per step at {last[0]} sensors"
                             + (f" ({last[-1]}x the other checkout)" if args.tree else ""),
                             "none set (part of the step cost, issue 32)", "–")
    common.publish(common.Section("experts_cost", "Live stream processing",
                                  "Served-mix weights per step (benchmarks/experts_cost.py)",
                                  "\n".join(body), summary), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
