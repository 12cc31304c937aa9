"""The packages form layers: connectors → models → streaming → replay → stfm (the app).
Nothing imports from a layer above it (checked on every import statement, lazy ones too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["connectors", "models", "streaming", "replay", "stfm"]


def test_no_package_imports_a_layer_above_it() -> None:
    bad = []
    for rank, pkg in enumerate(LAYERS):
        above = set(LAYERS[rank + 1:])
        for path in sorted((ROOT / pkg).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                for n in names:
                    if n.split(".")[0] in above:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {n}")
    assert not bad, "imports from a layer above:\n" + "\n".join(bad)
