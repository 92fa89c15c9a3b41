"""The house rules, checked on every run: typed (mypy --strict), linted and formatted (ruff), no import
circle in the package, few modules at its top, none too long to read at once (docs/design.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dispatcher"
BIN = Path(sys.executable).parent
MAX_TOP_MODULES = 12
MAX_LINES = 400
#: Modules allowed past MAX_LINES, each with its reason (docs/design.md says the same).
LONG_ON_PURPOSE = {
    "dispatcher/sending/delivery.py": "the one send sequence (checks, rate slot, claim, build, call, record), read top "
    "to bottom: the never-twice argument lives in its order",
}


def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"{name} is not installed in the test environment (it is in the test extra)")
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_package_is_clean_under_mypy_strict() -> None:
    result = tool("mypy", "--strict", "dispatcher")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_check_is_clean() -> None:
    result = tool("ruff", "check", "dispatcher", "tests", "bench", "deploy")
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_format_is_clean() -> None:
    result = tool("ruff", "format", "--check", "dispatcher", "tests", "bench", "deploy")
    assert result.returncode == 0, result.stdout[-4000:]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules this file imports, at any depth of the file (lazy imports count too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def import_circles() -> list[list[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imports_of(path, set(files)) for name, path in files.items()}
    # A package's __init__ importing its own submodules is how a package is made, not a circle.
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    circles, state = [], dict.fromkeys(graph, 0)

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                circles.append([*trail[trail.index(nxt) :], nxt])
            elif state[nxt] == 0:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(graph):
        if state[start] == 0:
            visit(start, [start])
    return circles


def test_no_import_circle_in_the_package() -> None:
    assert import_circles() == []


def test_the_circle_finder_finds_a_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a package where a imports b and b imports a (lazily), the check must see it
    pkg = tmp_path / "dispatcher"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert import_circles() == [["dispatcher.a", "dispatcher.b", "dispatcher.a"]]


def test_few_modules_at_the_top_and_none_too_long() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text("utf-8").splitlines())) > MAX_LINES
    }
    assert set(long) <= set(LONG_ON_PURPOSE), long
    assert all(n <= 450 for n in long.values()), long
