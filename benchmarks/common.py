"""What the benchmark scripts share: their common flags, the Markdown they write, and recording
a run into ``benchmarks/RESULTS.md``.

Flags. ``parser(__doc__)`` gives every script the recording flags: ``--results PATH`` (default
``benchmarks/RESULTS.md``) and ``--no-record`` (print the section, write nothing).
``add_data_dir``, ``add_jobs`` and ``add_overrides`` add the flags several scripts share
(``--data-dir``, ``--jobs``, ``--set SECTION.KEY=VALUE``); ``int_list`` parses ``--seeds
1,2,3`` and other comma-separated whole numbers.

RESULTS.md holds the current state: a title and notes, the index, then parts (``# Alerts``)
of sections, one section per benchmark. A section starts at its marker line::

    <!-- bench:KEY {"name": "...", "what": "...", "headline": "...", "goal": "...", ...} -->

KEY is the benchmark's stable name (``throughput``, ``scaling``); the JSON object is the
section's one-line summary for the index (``Summary``: link text, what it measures, headline
figure, goal, met / not met, date of the run). The section runs to the next marker, part
heading (``# ``), rule (``---``) or index marker, or to the end of the file.
``publish(section, args)`` prints the section and, unless ``--no-record``, writes it in place
of the section with the same KEY (everything else stays byte for byte), or, for a KEY not
recorded yet, at the end of its part (a missing part is added at the end of the file); then
it regenerates the index table between ``<!-- index:start -->`` and ``<!-- index:end -->``
from every section's summary, grouped by part in file order. Sections no script writes
(``make soak``, a CLI timing) carry the same marker with a summary written by hand;
``publish`` leaves them alone.

Several sizes. A run replaces its benchmark's whole section, so a benchmark measured at
several sizes that one run may cover only part of (``scaling.py --sensors 50000``,
``drift_scale.py --sizes 200``) merges rows by key instead: its script reads the rows recorded
before with ``recorded_rows(args.results, KEY, n_key)`` (the section's first table, keyed by
its first ``n_key`` cells, e.g. the number of sensors), keeps those whose key this run did not
measure, with the ``run`` cell (date and commit) they had, and renders the whole table and
its goals from the merged rows. A row is replaced only by a run that measures its key again;
no row disappears silently. Every other benchmark replaces its section whole; its section
shows the command, so the parameters of the recorded run are in sight.

Detail. Secondary tables (profiles, per-stage timings, logs of a run) are passed as
``detail``: printed after the section and, when recording, appended to ``history/detail.md``
beside the results file under the section's title and run stamp, so RESULTS.md stays short.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SHARED_DATA = ROOT.parent / "shared" / "data"
PARTS = ("Live stream processing", "Forecasting accuracy", "Alerts")
INDEX_START, INDEX_END = "<!-- index:start -->", "<!-- index:end -->"
_MARKER = re.compile(r"^<!-- bench:(?P<key>[\w.-]+) (?P<summary>\{.*\}) -->$")
_NOT_RECORDED = ("benchmarks/RESULTS.md", "benchmarks/history/")


# --- flags ---------------------------------------------------------------------------------


def parser(doc: str | None, **kwargs: object) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` described by the first paragraph of ``doc`` (a script's
    docstring), with ``--results`` and ``--no-record``."""
    first = (doc or "").strip().split("\n\n")[0]
    ap = argparse.ArgumentParser(description=first, **kwargs)  # type: ignore[arg-type]
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="the results file whose section this run replaces "
                         "(default: benchmarks/RESULTS.md)")
    ap.add_argument("--no-record", action="store_true",
                    help="print the section only; write nothing")
    return ap


def add_data_dir(ap: argparse.ArgumentParser, default: Path | None = SHARED_DATA,
                 what: str = "the shared data folder") -> None:
    """``--data-dir``: ``what`` it is, by default ``default`` (``../shared/data`` beside the
    checkout; None: required)."""
    ap.add_argument("--data-dir", type=Path, default=default, required=default is None,
                    help=what if default is None else f"{what} (default: {default})")


def add_jobs(ap: argparse.ArgumentParser, default: int = 2) -> None:
    """``--jobs``: runs in parallel, one process (and one torch thread) each."""
    ap.add_argument("--jobs", type=int, default=default,
                    help=f"runs in parallel, one process each (default {default})")


def add_cli_sets(ap: argparse.ArgumentParser, sets: Sequence[str], root: Path) -> None:
    """The flags of a benchmark that runs ``stfm`` on named sets, optionally through another
    checkout: ``--sets``, ``--tree`` (default ``root``), ``--json-out``, ``--before`` (an
    earlier ``--json-out`` shown alongside) with ``--before-label``, and ``--label``."""
    ap.add_argument("--sets", default=",".join(sets), help="comma-separated, of: "
                    + ", ".join(sets))
    ap.add_argument("--tree", type=Path, default=root, help="the checkout whose CLI runs")
    ap.add_argument("--json-out", type=Path, help="write this run's rows here")
    ap.add_argument("--before", type=Path, help="an earlier run's --json-out, shown alongside")
    ap.add_argument("--before-label", default="before")
    ap.add_argument("--label", default="now")


def chosen_sets(args: argparse.Namespace, sets: Sequence[str]) -> list[str]:
    """``--sets`` as a list, every name one of ``sets`` (else exits naming the unknown)."""
    names = [s for s in args.sets.split(",") if s]
    bad = [s for s in names if s not in sets]
    if bad:
        raise SystemExit(f"unknown set(s) {bad}; known: {', '.join(sets)}")
    return names


def run_cli_sets(args: argparse.Namespace, names: list[str],
                 run_set: Callable[[str, Path, Path, Path], dict[str, Any]]
                 ) -> tuple[list[dict[str, Any]], float, dict[str, dict[str, Any]]]:
    """Each set through ``run_set(name, data dir, tree, scratch dir)``, ``--jobs`` at a time;
    the rows go to ``--json-out``. Returns (rows, seconds, ``--before``'s rows by set)."""
    import tempfile
    import time
    from concurrent.futures import ThreadPoolExecutor

    data, tree = args.data_dir.resolve(), args.tree.resolve()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda s: run_set(s, data, tree, Path(tmp)), names))
    seconds = time.perf_counter() - t0
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    before = {r["set"]: r for r in json.loads(args.before.read_text())} if args.before else {}
    return rows, seconds, before


def cli_sets_run(doc: str | None, sets: Sequence[str], root: Path,
                 run_set: Callable[[str, Path, Path, Path], dict[str, Any]]
                 ) -> tuple[argparse.Namespace, list[dict[str, Any]], float,
                            dict[str, dict[str, Any]]]:
    """The whole run of a benchmark over named sets through a checkout's ``stfm``: its flags
    (``--data-dir``, ``--jobs``, ``add_cli_sets``) parsed, then ``run_cli_sets``. Returns
    (args, rows, seconds, ``--before``'s rows by set)."""
    ap = parser(doc)
    add_data_dir(ap)
    add_jobs(ap)
    add_cli_sets(ap, sets, root)
    args = ap.parse_args()
    return args, *run_cli_sets(args, chosen_sets(args, sets), run_set)


def add_overrides(ap: argparse.ArgumentParser) -> None:
    """``--set SECTION.KEY=VALUE``, repeatable: configuration overrides (default: none)."""
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="configuration overrides (default: none, the defaults are measured)")


def int_list(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (an argparse ``type``; empty items are skipped)."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: "
                                         f"{text!r}") from e


def joined(values: Iterable[object]) -> str:
    """The inverse of ``int_list`` for the text: ``[1, 2]`` -> ``"1,2"``."""
    return ",".join(str(v) for v in values)


# --- Markdown ------------------------------------------------------------------------------


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]],
             align: str | None = None) -> list[str]:
    """The lines of a Markdown table. ``align``: one letter per column, ``l`` or ``r``
    (default: the first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} for {len(header)} columns")
    out = ["| " + " | ".join(header) + " |",
           "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells under {len(header)} columns: {row}")
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return out


def wrap(text: str, width: int = 96) -> str:
    """Markdown with its prose paragraphs and list items wrapped at ``width`` (tables, headings,
    indented and fenced blocks as they are)."""
    out: list[str] = []
    fenced = False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        if fenced or len(line) <= width or line.startswith(("|", "#", "    ", "<", "```")):
            out.append(line)
            continue
        lead = "  " if line.startswith(("- ", "* ")) else ""
        out += textwrap.wrap(line, width, subsequent_indent=lead, break_long_words=False,
                             break_on_hyphens=False)
    return "\n".join(out)


def verdict(ok: bool) -> str:
    """``**met**`` or ``**not met**``, as goal lines say it."""
    return "**met**" if ok else "**not met**"


def index_verdict(ok: bool) -> str:
    """``**met**`` or ``not met``, as the index says it."""
    return "**met**" if ok else "not met"


def number(cell: str) -> float | None:
    """The number in a recorded table cell (``"**78,090**"`` -> 78090.0), None for
    ``not run``, ``-`` and the like."""
    m = re.search(r"[-+]?\d[\d,]*(?:\.\d+)?", cell)
    return float(m.group(0).replace(",", "")) if m else None


# --- where and what was measured -----------------------------------------------------------


def command_line(argv: Sequence[str] | None = None, script: str | None = None) -> str:
    """``python benchmarks/X.py ARGS`` as this run was started."""
    argv = sys.argv[1:] if argv is None else argv
    path = Path(script or sys.argv[0]).resolve()
    try:
        shown = path.relative_to(ROOT).as_posix()
    except ValueError:
        shown = str(path)
    return shlex.join(["python", shown, *argv])


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, text=True, capture_output=True,
                          check=True).stdout


def code_version(short: bool = False) -> str:
    """The commit measured: ``3cc9491``, and ``+ uncommitted changes in a, b`` where tracked
    files differ from it (the results files themselves aside). ``short``: ``3cc9491+``."""
    try:
        rev = _git("rev-parse", "--short", "HEAD").strip()
        status = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = [line[3:].split(" -> ")[-1] for line in status.splitlines()]
    changed = [c for c in changed if not c.startswith(_NOT_RECORDED)]
    if not changed:
        return rev
    if short:
        return rev + "+"
    shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6
                                      else "")
    return f"{rev} + uncommitted changes in {shown}"


def machine() -> str:
    """``nproc 2 (CPU model), Python 3.11.7, numpy ..., torch ...`` (torch, aiokafka and
    kafka-python where this run imported them)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"nproc {nproc} ({cpu})", f"Python {platform.python_version()}"]
    for mod, label in (("numpy", "numpy"), ("torch", "torch"), ("aiokafka", "aiokafka"),
                       ("kafka", "kafka-python")):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            parts.append(f"{label} {m.__version__}")
    return ", ".join(parts)


def run_stamp(when: datetime, command: str) -> list[str]:
    """The two lines under a section's heading: date · code · command, and the machine."""
    return [f"{when:%Y-%m-%d %H:%M} UTC · {code_version()} · `{command}`",
            f"Machine: {machine()}."]


# --- sections ------------------------------------------------------------------------------


@dataclass
class Summary:
    """A section's row in the index."""

    name: str           # link text, e.g. "throughput.py"
    what: str           # what it measures, a few words
    headline: str       # the headline figure
    goal: str           # the goal(s), "none set" where there is none
    met: str            # "**met**", "not met", "–", or per goal "met; not met"
    date: str = ""      # the run's date; publish fills it in


@dataclass
class Section:
    """What one run records: its benchmark's section of RESULTS.md."""

    key: str            # the stable marker key, e.g. "throughput"
    part: str           # one of PARTS (where a first run puts it)
    title: str          # the heading, without "## "
    body: str           # Markdown under the run stamp: headline table, goals
    summary: Summary
    command: str | None = None                      # default: command_line()
    when: datetime = field(default_factory=lambda: datetime.now(UTC))

    def render(self) -> str:
        summary = asdict(self.summary)
        summary["date"] = summary["date"] or f"{self.when:%Y-%m-%d}"
        text = json.dumps(summary, ensure_ascii=False)
        if "-->" in text or "\n" in text:
            raise ValueError(f"a summary may not hold '-->' or a line break: {text}")
        return "\n".join([f"<!-- bench:{self.key} {text} -->", f"## {self.title}",
                          *run_stamp(self.when, self.command or command_line()), "",
                          wrap(self.body.strip("\n"))]) + "\n"


def publish(section: Section, args: argparse.Namespace, detail: str = "") -> str:
    """Print the section (and ``detail``); unless ``args.no_record``, write it into
    ``args.results`` in place of its previous section, regenerate the index, and append the
    detail to ``history/detail.md`` beside it. Returns the section's text."""
    text = section.render()
    print(text, flush=True)
    if detail:
        print(detail, flush=True)
    if getattr(args, "no_record", False):
        return text
    path = Path(args.results)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    new = replace_section(old, section.key, section.part, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rebuild_index(new), encoding="utf-8")
    print(f"[results] section {section.key!r} written to {path}", flush=True)
    if detail:
        hist = path.parent / "history" / "detail.md"
        hist.parent.mkdir(parents=True, exist_ok=True)
        head = "" if hist.exists() else (
            "# Detail of the runs recorded in RESULTS.md\n\nSecondary tables of the runs "
            "whose sections RESULTS.md holds, appended by `benchmarks/common.py` (newest "
            "last).\n")
        stamp = run_stamp(section.when, section.command or command_line())[0]
        with hist.open("a", encoding="utf-8") as fh:
            fh.write(f"{head}\n## {section.title}\n\n{stamp}\n\n{detail.strip()}\n")
    return text


# --- the file ------------------------------------------------------------------------------


def _boundaries(lines: list[str]) -> list[bool]:
    """Per line: does a section end before it (a marker, a part heading, a rule, an index
    marker; never inside a fenced code block)?"""
    out, fenced = [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        out.append(not fenced and (line.startswith("# ") or line == "---"
                                   or line in (INDEX_START, INDEX_END)
                                   or _MARKER.match(line) is not None))
    return out


def sections(doc: str) -> list[dict[str, object]]:
    """Every section of ``doc`` in order: key, summary, part, heading, and its line span
    ``start`` (the marker) to ``end`` (exclusive; trailing blank lines included)."""
    lines = doc.split("\n")
    bound = _boundaries(lines)
    out: list[dict[str, object]] = []
    part = ""
    for i, line in enumerate(lines):
        if bound[i] and line.startswith("# "):
            part = line[2:].strip()
        m = _MARKER.match(line) if bound[i] else None
        if not m:
            continue
        end = next((j for j in range(i + 1, len(lines)) if bound[j]), len(lines))
        heading = next((x[3:].strip() for x in lines[i + 1:end] if x.startswith("## ")), "")
        out.append({"key": m["key"], "summary": json.loads(m["summary"]), "part": part,
                    "heading": heading, "start": i, "end": end})
    return out


def replace_section(doc: str, key: str, part: str, text: str) -> str:
    """``doc`` with the section ``key`` replaced by ``text`` (a rendered section), or with
    ``text`` added at the end of ``part`` when ``key`` has no section yet."""
    lines = doc.split("\n")
    new = text.rstrip("\n").split("\n")
    found = [s for s in sections(doc) if s["key"] == key]
    if len(found) > 1:
        raise ValueError(f"{len(found)} sections are marked bench:{key}")
    if found:
        s, e = int(found[0]["start"]), int(found[0]["end"])
        return "\n".join(lines[:s] + new + [""] + lines[e:])
    head = next((i for i, x in enumerate(lines) if x == f"# {part}"), None)
    if head is None:                    # a new part at the end of the file
        body = "\n".join(lines).rstrip("\n")
        return (body + "\n\n---\n\n" if body else "") + f"# {part}\n\n" + "\n".join(new) + "\n"
    bound = _boundaries(lines)
    at = next((j for j in range(head + 1, len(lines)) if bound[j]
               and (lines[j].startswith("# ") or lines[j] == "---")), len(lines))
    while at > head + 1 and lines[at - 1] == "":
        at -= 1                         # after the part's last section, before its blanks
    return "\n".join(lines[:at] + [""] + new + lines[at:]) + ("\n" if at == len(lines) else "")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def index_lines(doc: str) -> list[str]:
    """The index table of ``doc``: one row per section, grouped by part in file order."""
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|")

    rows: list[list[str]] = []
    part = None
    for s in sections(doc):
        if s["part"] != part:
            part = s["part"]
            if part:
                rows.append([f"**{part}**", "", "", "", "", ""])
        sm = s["summary"]
        assert isinstance(sm, dict)
        rows.append([f"[{cell(sm.get('name', s['key']))}](#{anchor(str(s['heading']))})",
                     *(cell(sm.get(k, "")) for k in ("what", "headline", "goal", "met",
                                                     "date"))])
    return md_table(["benchmark", "what it measures", "headline figure", "goal", "met?",
                     "date"], rows, align="llllll")


def rebuild_index(doc: str) -> str:
    """``doc`` with the table between the index markers regenerated (unchanged when it has
    no index markers)."""
    lines = doc.split("\n")
    if INDEX_START not in lines or INDEX_END not in lines:
        return doc
    s, e = lines.index(INDEX_START), lines.index(INDEX_END)
    return "\n".join(lines[:s + 1] + index_lines(doc) + lines[e:])


def recorded_rows(results: Path, key: str, n_key: int = 1) -> dict[tuple[str, ...], list[str]]:
    """The rows of the first table of section ``key`` in ``results``, by their first
    ``n_key`` cells (empty when there is no such section or table)."""
    if not Path(results).exists():
        return {}
    doc = Path(results).read_text(encoding="utf-8")
    lines = doc.split("\n")
    for s in sections(doc):
        if s["key"] != key:
            continue
        out: dict[tuple[str, ...], list[str]] = {}
        in_table = False
        for line in lines[int(s["start"]):int(s["end"])]:
            if line.startswith("|"):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if in_table and not all(set(c) <= set("-: ") for c in cells):
                    out[tuple(cells[:n_key])] = cells
                in_table = True
            elif in_table:
                break
        return out
    return {}
