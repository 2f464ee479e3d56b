"""The shape of the code: no import cycle inside dpnn (function-level imports count too), and
no file over 400 lines. ``Model.fit``, ``Model.save`` and ``Model.load`` are the deliberate
exceptions: the network calls up into the training loop and the file formats there."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dpnn"
ALLOWED_UPWARD = {("dpnn.model", "Model.fit"), ("dpnn.model", "Model.save"), ("dpnn.model", "Model.load")}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(current: str, is_package: bool, node: ast.ImportFrom | ast.Import, known) -> list[str]:
    """The dpnn modules an import statement loads (``from . import x`` may name a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "dpnn"]
    if node.level:
        base = current.split(".") if is_package else current.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("dpnn"):
        return []
    found = [target] if target in known else []
    found += [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
    return found or [target]


def imports_of(name: str, path: Path, known) -> set[str]:
    """The dpnn modules ``name`` imports anywhere, minus TYPE_CHECKING blocks and the exceptions."""
    found: set[str] = set()

    def visit(node, where: str) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)) and (name, where) not in ALLOWED_UPWARD:
            found.update(t for t in resolve(name, path.name == "__init__.py", node, known) if t != name)
        for child in ast.iter_child_nodes(node):
            inner = where
            if isinstance(child, ast.ClassDef):
                inner = child.name
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = f"{where}.{child.name}" if where else child.name
            visit(child, inner)
    visit(ast.parse(path.read_text()), "")
    return found


def import_edges() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle_in_dpnn():
    # a package imports its own submodules by design (``dpnn/__init__`` re-exports them): count
    # the edges from a package to what it contains only one way
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in import_edges().items()}
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("folder", ["dpnn", "launch", "benchmarks"])
def test_no_file_over_400_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_one_step_reads_in_at_most_8_files_and_1800_lines():
    """docs/engine.md lists the files a reader follows for one data-parallel step, in order."""
    import re
    text = (ROOT / "docs" / "engine.md").read_text()
    section = text.split("**Read one data-parallel step in this order**", 1)[1].split("\n\n", 2)[1]
    files = re.findall(r"^\| \d+ \| `([^`]+)` \|", section, flags=re.M)
    lines = sum(len((ROOT / f).read_text().splitlines()) for f in files)
    assert 0 < len(files) <= 8 and lines <= 1800, (files, lines)
