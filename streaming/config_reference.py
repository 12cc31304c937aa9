"""The configuration reference: every key of ``StreamConfig`` with its default and meaning,
read from the dataclasses themselves (the default) and the comment beside each field (the
meaning), so the README's defaults table cannot drift from the code (``tests/test_readme.py``
compares them). ``python -m streaming.config_reference`` prints the Markdown table.

May import: streaming.config.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import tokenize
from dataclasses import dataclass
from functools import cache
from io import StringIO
from typing import Any

from streaming.config import StreamConfig


@dataclass
class Entry:
    key: str            # section.key
    default: Any
    meaning: str


def reference(cfg: Any = None) -> list[Entry]:
    """One entry per key, in the order of the dataclasses (``cfg``: defaults of another
    configuration object, e.g. a loaded one)."""
    cfg = StreamConfig() if cfg is None else cfg
    out: list[Entry] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            notes = _field_comments(type(value))
            for g in dataclasses.fields(value):
                out.append(Entry(f"{f.name}.{g.name}", getattr(value, g.name),
                                 notes.get(g.name, "")))
        else:
            out.append(Entry(f.name, value, _field_comments(type(cfg)).get(f.name, "")))
    return out


def markdown(entries: list[Entry] | None = None) -> str:
    """The Markdown table of ``entries`` (default: the defaults)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for e in entries if entries is not None else reference():
        rows.append(f"| `{e.key}` | `{_show(e.default)}` | {e.meaning.replace('|', '/')} |")
    return "\n".join(rows)


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, float) and v and (abs(v) < 1e-3 or abs(v) >= 1e6):
        return f"{v:g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
        return f"{v:_}"
    return repr(v)


@cache
def _field_comments(cls: type) -> dict[str, str]:
    """``field -> comment`` of a dataclass and its bases: the ``#`` comment on the field's
    line plus the comment-only lines right below it (a continued comment)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        src, first = inspect.getsourcelines(klass)
        text = "".join(src)
        comments: dict[int, str] = {}
        for tok in tokenize.generate_tokens(StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        lines = text.splitlines()
        body = ast.parse(text).body[0]
        assert isinstance(body, ast.ClassDef)
        for node in body.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                end = node.end_lineno or node.lineno
                parts = [comments[end]] if end in comments else []
                n = end + 1
                while n in comments and lines[n - 1].lstrip().startswith("#"):
                    parts.append(comments[n])
                    n += 1
                if parts:
                    note = " ".join(parts)
                    out[node.target.id] = note[2:] if note.startswith("^ ") else note
    return out


if __name__ == "__main__":
    sys.stdout.write(markdown() + "\n")
