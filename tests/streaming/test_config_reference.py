"""The configuration reference: every key documented, and the README's table equal to it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from streaming.config import StreamConfig
from streaming.config_reference import markdown, reference

ROOT = Path(__file__).resolve().parents[2]


def test_every_key_has_its_default_and_a_meaning() -> None:
    entries = reference()
    cfg = StreamConfig()
    keys = {f"{f.name}.{g.name}" for f in dataclasses.fields(cfg)
            if dataclasses.is_dataclass(getattr(cfg, f.name))
            for g in dataclasses.fields(getattr(cfg, f.name))}
    keys |= {f.name for f in dataclasses.fields(cfg)
             if not dataclasses.is_dataclass(getattr(cfg, f.name))}
    assert {e.key for e in entries} == keys
    assert [e.key for e in entries if not e.meaning] == []
    by = {e.key: e for e in entries}
    assert by["patching.interval_ms"].default == 300_000
    assert "5 min" in by["patching.interval_ms"].meaning
    assert by["model.horizon"].default == 12 and by["model.horizon"].meaning


def test_the_readme_table_is_the_generated_one() -> None:
    text = (ROOT / "README.md").read_text()
    start, end = "<!-- defaults:start -->\n", "\n<!-- defaults:end -->"
    table = text[text.index(start) + len(start):text.index(end)]
    assert table == markdown(), ("README's defaults table is out of date: regenerate it with "
                                 "`python -m streaming.config_reference`")
