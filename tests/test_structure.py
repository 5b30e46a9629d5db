"""The package's shape: no import circle, one owner of llama-cpp-python internals, the CLI on top,
runnable docstring examples, one source for the llama-cpp-python pin."""

from __future__ import annotations

import ast
import doctest
import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import sadi_cpp
from sadi_cpp.llama.runtime import pinned_llama_cpp_python

PACKAGE = Path(sadi_cpp.__file__).parent  # the installed package (tests never import the source tree)
ROOT = Path(__file__).resolve().parents[1]


def modules() -> Dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: Path) -> Set[str]:
    """The sadi_cpp modules ``name`` imports anywhere in its file (top level or inside functions)."""
    known = modules()
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from sadi_cpp import x` imports the submodule x when there is one
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> Dict[str, Set[str]]:
    return {name: imports_of(name, path) for name, path in modules().items()}


def find_cycle(g: Dict[str, Set[str]]) -> List[str]:
    """One import circle as a list of modules, or [] when the graph has none."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(n: str) -> List[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    g = graph()
    assert len(g) > 20 and "sadi_cpp.cli.common" in g  # the graph is really read
    # the package __init__ is imported by every submodule first; edges into it are not circles
    # of ours, so leave them out, and check the rest
    g = {n: {m for m in deps if m != "sadi_cpp"} for n, deps in g.items()}
    assert find_cycle(g) == []


def test_layers_point_one_way():
    g = graph()
    for name, deps in g.items():
        # __main__ is `python -m sadi_cpp`, an entry point like the console script: above the CLI
        if not name.startswith("sadi_cpp.cli") and name != "sadi_cpp.__main__":
            assert not {d for d in deps if d.startswith("sadi_cpp.cli")}, f"{name} imports the CLI"
    assert not {n for n, deps in g.items() if "sadi_cpp.__main__" in deps}, "nothing imports __main__"
    for name in ("sadi_cpp.cli.masks", "sadi_cpp.cli.evaluation", "sadi_cpp.cli.data", "sadi_cpp.cli.serve"):
        assert "sadi_cpp.cli.common" in g[name]
        assert not {d for d in g[name] if d.startswith("sadi_cpp.cli.") and d != "sadi_cpp.cli.common"}


def test_only_hook_touches_llama_cpp_python_internals():
    pattern = re.compile(r"_internals|\._ctx\b|_chat_handlers|\.n_tokens\s*=|get_logits_ith|llama_cpp\.llama_")
    users = {name for name, path in modules().items() if pattern.search(path.read_text())}
    assert users == {"sadi_cpp.llama.hook"}
    importers = {name for name, path in modules().items() if re.search(r"^\s*(from|import) llama_cpp", path.read_text(), re.M)}
    assert importers == {"sadi_cpp.llama.hook", "sadi_cpp.llama.runtime", "sadi_cpp.server.protocol"}
    # the server reuses llama-cpp-python's public OpenAI request types, nothing else of it
    protocol = modules()["sadi_cpp.server.protocol"].read_text()
    assert re.findall(r"^\s*(?:from|import) (llama_cpp[\w.]*)", protocol, re.M) == ["llama_cpp.server.types"]


def test_every_module_imports_alone():
    procs = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"], stderr=subprocess.PIPE, text=True, cwd=PACKAGE.parent.parent)
             for name in modules()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"import {name} alone failed:\n{err[-2000:]}"


def test_docstring_examples_run():
    attempted = 0
    for name in modules():
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name
        attempted += result.attempted
    assert attempted > 0  # the runnable examples (e.g. sadi_cpp.data.tasks) were found and run


def test_one_source_for_the_llama_cpp_python_pin():
    text = (ROOT / "pyproject.toml").read_text()
    pins = set(re.findall(r"llama-cpp-python==([0-9][0-9.]*)", text))
    assert len(pins) == 1, pins  # build requirement and dependency agree
    installed = importlib.metadata.version("llama-cpp-python")
    assert pinned_llama_cpp_python() == pins.pop() == installed
    for path in list(PACKAGE.rglob("*.py")) + [ROOT / "CMakeLists.txt"]:
        assert not re.search(r"\b0\.3\.\d+\b", path.read_text()), f"{path} repeats a version"
