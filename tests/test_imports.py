"""The shape of the package: no import circle between its files, no file over 450 lines, layers as
pyproject.toml declares them (import-linter), and a command line that answers `check` without the model stack.

The circles are found on a graph built from every import statement anywhere in a file — at the
top, inside functions, under `if TYPE_CHECKING:` — because a function-level import hides a
circle from Python's import machinery without removing it from the design.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, need

PACKAGE = REPO / "monitor"
MAX_LINES = 450


def module_files(root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted((root / "monitor").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` (module `name`) imports anywhere in its text.

    `from a.b import c` counts as importing `a.b`, and `a.b.c` as well where that is a module.
    """
    found: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target in known:
                found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known)
    found.discard(name)
    return found


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def test_the_circle_finder_sees_function_level_and_type_checking_imports(tmp_path):
    """The finder itself, on a package made for it: a circle hidden in a function and one under
    TYPE_CHECKING are found, a chain without a way back is not."""
    pkg = tmp_path / "monitor"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import monitor.b\n")
    (pkg / "b.py").write_text("def f():\n    from monitor import a\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n")
    (pkg / "sub" / "d.py").write_text("from .c import x\nfrom monitor.a import y\n")
    (pkg / "e.py").write_text("from monitor.sub import d\n")
    graph = import_graph(tmp_path)
    assert graph["monitor.e"] == {"monitor.sub", "monitor.sub.d"}
    assert circles(graph) == [["monitor.a", "monitor.b"], ["monitor.sub.c", "monitor.sub.d"]]


def test_no_import_circle_between_files_of_the_package():
    found = circles(import_graph())
    assert found == [], "import circles (move the shared piece down a floor):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_no_file_of_the_package_is_over_450_lines():
    long = {str(path.relative_to(REPO)): n for path in module_files().values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"files over {MAX_LINES} lines (each is two things: split it by purpose): {long}"


def _lint_imports() -> str:
    program = Path(sys.executable).parent / "lint-imports"
    need(program.exists(), "import-linter (`lint-imports`, in the [dev] extra)")
    return str(program)


def test_lint_imports_keeps_the_layers_and_fails_on_an_import_across_them(tmp_path):
    """The contracts of pyproject.toml hold for the package, and a copy of it with one import up
    across the layers (the ring buffer importing the daemon) breaks them, naming that import."""
    program = _lint_imports()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ok = subprocess.run([program], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                        timeout=240)
    assert ok.returncode == 0, ok.stdout[-4000:] + ok.stderr[-2000:]
    assert "0 broken" in ok.stdout
    shutil.copytree(PACKAGE, tmp_path / "monitor", ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    ring = tmp_path / "monitor" / "audio" / "ringbuffer.py"
    ring.write_text(ring.read_text() + "\nimport monitor.daemon  # noqa: E402,F401\n")
    broken = subprocess.run([program], cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path)}, capture_output=True,
                            text=True, timeout=240)
    assert broken.returncode == 1, broken.stdout[-4000:] + broken.stderr[-2000:]
    assert "Layers, from the command line down to the audio BROKEN" in broken.stdout
    assert "monitor.audio is not allowed to import monitor.daemon" in broken.stdout
    assert "monitor.audio.ringbuffer -> monitor.daemon" in broken.stdout


def test_check_and_devices_never_import_the_model_stack(tmp_path):
    """`check` and `devices` answer at once: the command line loads neither torch nor transformers for them."""
    code = ("import sys\nfrom monitor.cli import main\n"
            f"assert main(['check', '-c', {str(REPO / 'configs' / 'monitor.yaml')!r}]) == 0\n"
            "main(['devices'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
