"""Shared by the benchmarks: print a result table and append it to RESULTS.md."""

from __future__ import annotations

from pathlib import Path


def publish(text: str, results: Path, record: bool = True) -> None:
    """Print ``text`` and, unless ``record`` is false, append it to ``results``."""
    print(text)
    if record:
        with open(results, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
