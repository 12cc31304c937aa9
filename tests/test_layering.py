"""The packages form layers: connectors → models → streaming → replay → stfm (the app), and
inside ``streaming`` its subpackages follow the data (config → ingest → forecast, alerts →
pipeline → runtime). Checked on every import statement, lazy ones too."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["connectors", "models", "streaming", "replay", "stfm"]
# the order of streaming's parts, as streaming/__init__.py tells it
STREAMING = ["config", "config_reference", "ingest", "forecast", "alerts", "pipeline", "runtime"]
KAFKA_CLIENTS = {"kafka", "aiokafka", "faust"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module in LAYERS:       # ``from streaming import x``: x is the module
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def _unit(path: Path) -> str:
    """The part of ``streaming`` a file belongs to: its subpackage, or its own module name."""
    parts = path.relative_to(ROOT / "streaming").parts
    return parts[0] if len(parts) > 1 else path.stem


def _declared(unit: str) -> list[str]:
    """The ``May import:`` line of a part's docstring (the subpackage's ``__init__``)."""
    src = ROOT / "streaming" / unit
    path = src / "__init__.py" if src.is_dir() else src.with_suffix(".py")
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    m = re.search(r"^May import:(.*?)\.$", doc, re.M | re.S)
    assert m, f"{path.relative_to(ROOT)}: its docstring does not say what it may import"
    return [s.strip() for s in m.group(1).replace("\n", " ").split(",") if s.strip()]


def _allowed(module: str, declared: list[str]) -> bool:
    return any(module == d or module.startswith(d + ".") for d in declared)


def test_no_package_imports_a_layer_above_it() -> None:
    bad = []
    for rank, pkg in enumerate(LAYERS):
        above = set(LAYERS[rank + 1:])
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for line, name in _imports(path):
                if name.split(".")[0] in above:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "imports from a layer above:\n" + "\n".join(bad)


def test_streaming_parts_import_only_what_they_declare_and_only_earlier_parts() -> None:
    units = {p.name for p in (ROOT / "streaming").iterdir()
             if p.is_dir() and (p / "__init__.py").exists()}
    units |= {p.stem for p in (ROOT / "streaming").glob("*.py") if p.stem != "__init__"}
    assert units == set(STREAMING), f"streaming's parts changed: {sorted(units)}"
    declared = {u: _declared(u) for u in STREAMING}
    for rank, unit in enumerate(STREAMING):     # the declarations themselves point backwards
        later = {f"streaming.{u}" for u in STREAMING[rank:]}
        assert not later & set(declared[unit]), f"streaming.{unit} may import a later part"
    bad = []
    for path in sorted((ROOT / "streaming").rglob("*.py")):
        if path == ROOT / "streaming" / "__init__.py":
            continue
        unit = _unit(path)
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top not in set(LAYERS) | KAFKA_CLIENTS:
                continue                        # the standard library and numerical packages
            if top == "streaming" and name.split(".")[1] == unit:
                continue
            if not _allowed(name, declared[unit]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}, which "
                           f"streaming.{unit} does not declare")
    assert not bad, "\n".join(bad)


def test_the_online_core_loads_no_kafka_client() -> None:
    """What ``replay backtest`` runs is plain Python/torch: importing the pipeline and its
    stages loads none of the Kafka clients, so the same core runs anywhere."""
    code = ("import sys, streaming.pipeline.core, streaming.pipeline.factory; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted(KAFKA_CLIENTS)!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]", f"the online core imports Kafka clients: {out}"
