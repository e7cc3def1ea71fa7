"""The package's structure as docs/ARCHITECTURE.md states it: every module in the table with its
length, imports only downwards through the listed layers, no import cycles, no module too long."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scan_cli"
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
LONG_ALLOWED = {"calibration/search.py"}  # the threshold search: one job, its kernels belong together
MAX_LINES = 450


def modules() -> dict:
    """'calibration/run.py' -> path, for every module of the package."""
    return {p.relative_to(PACKAGE).as_posix(): p for p in sorted(PACKAGE.rglob("*.py"))}


def dotted(rel: str) -> str:
    parts = ["scan_cli"] + rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges() -> set:
    """(importer, imported) pairs of the package's own modules, dotted, wherever the import sits
    (top level or inside a function: both are arrows of the graph)."""
    by_name = {dotted(rel): rel for rel in modules()}
    edges = set()
    for rel, path in modules().items():
        name = dotted(rel)
        package = name.split(".") if rel.endswith("__init__.py") else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from . import files` imports the module files
                    full = f"{target}.{alias.name}"
                    targets.append(full if full in by_name else target)
            elif isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            for target in targets:
                while target not in by_name and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in by_name and target != name:
                    edges.add((name, target))
    return edges


def room(name: str) -> str:
    """A top-level module or subpackage of scan_cli ('calibration', 'policy'); '' for the package itself."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def layers() -> dict:
    """room -> layer number, from the numbered list under '## Layers'."""
    section = DOC.split("## Layers", 1)[1].split("\n## ", 1)[0]
    out = {}
    for number, line in re.findall(r"^(\d+)\. (.+)$", section, flags=re.M):
        for item in re.findall(r"`([^`]+)`", line):
            out[item.rstrip("/")] = int(number)
        if "package's own `__init__`" in line:
            out[""] = int(number)
    return out


def test_every_room_has_a_layer_and_imports_only_downwards():
    layer = layers()
    rooms = {room(dotted(rel)) for rel in modules()}
    assert rooms - set(layer) == set(), "add these to the layers in docs/ARCHITECTURE.md"
    upward = sorted(f"{a} -> {b}" for a, b in import_edges()
                    if room(a) != room(b) and layer[room(a)] < layer[room(b)])
    assert upward == [], "imports that climb to a higher layer"


def test_no_import_cycles():
    graph: dict = {}
    for a, b in import_edges():
        graph.setdefault(a, set()).add(b)
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_module_table_names_every_module_with_its_length():
    table = dict(re.findall(r"^\| `([\w/]+\.py)` \| (\d+) \|", DOC, flags=re.M))
    assert sorted(set(modules()) - set(table)) == [], "modules missing from the table in docs/ARCHITECTURE.md"
    assert sorted(set(table) - set(modules())) == [], "the table names modules that do not exist"
    off = {}
    for rel, path in modules().items():
        actual, stated = len(path.read_text().splitlines()), int(table[rel])
        if abs(actual - stated) > max(3, 0.1 * actual):
            off[rel] = (stated, actual)
    assert off == {}, "line counts in docs/ARCHITECTURE.md more than 10 % off: (stated, actual)"


def test_no_module_is_too_long():
    long = {rel: n for rel, p in modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES and rel not in LONG_ALLOWED}
    assert long == {}


def test_few_loose_modules_at_the_root():
    loose = [rel for rel in modules() if "/" not in rel and rel not in ("__init__.py", "__main__.py")]
    assert len(loose) <= 12, loose


@pytest.mark.parametrize("decision, pattern, home", [
    ("the manifest format", r"^FORMAT\s*=\s*\"scan-onnx-cascade\"", "inference/manifest.py"),
    ("the words that mean 'never fires'", r"^NEVER_WORDS\s*=", "policy.py"),
    ("the stored calibration record", r"^class Calibration\b", "policy.py"),
    ("the early-exit loop", r"^def run_cascade\b", "scoring.py"),
])
def test_one_home_per_decision(decision, pattern, home):
    homes = [rel for rel, p in modules().items() if re.search(pattern, p.read_text(), flags=re.M)]
    assert homes == [home], decision
