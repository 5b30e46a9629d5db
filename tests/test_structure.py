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
from typing import Dict, List, Set, Tuple

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


def _runtime_nodes(tree: ast.AST):
    """Every node, less the bodies of ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports_of(name: str, path: Path) -> Set[str]:
    """The sadi_cpp modules ``name`` imports when it runs, anywhere in its file (top level or
    inside functions); imports for annotations only (under ``if TYPE_CHECKING:``) do not count."""
    known = modules()
    found: Set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
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


# The parts, bottom up: a module may import its own part and the parts listed for it. "base" is the
# package's vocabulary (errors, files, sites, positions, steering, models, plot); the package
# __init__ is the public API and may use any part below the CLI.
PARTS = {
    "base": set(),
    "llama": {"base"},
    "data": {"base"},
    "masks": {"base", "llama", "data"},
    "scoring": {"base", "llama", "data"},
    "evaluation": {"base", "llama", "data", "masks", "scoring"},
    "generation": {"base", "llama", "data", "masks", "scoring", "evaluation"},
    "server": {"base", "llama", "masks", "scoring"},
    "api": {"base", "llama"},
    "cli": {"base", "llama", "data", "masks", "scoring", "evaluation", "generation", "server", "api"},
    "entry": {"cli"},
}


def part_of(module: str) -> str:
    if module == "sadi_cpp":
        return "api"
    if module == "sadi_cpp.__main__":
        return "entry"
    sub = module.split(".")[1]
    return sub if sub in PARTS else "base"


def wrong_imports(g: Dict[str, Set[str]]) -> List[str]:
    # edges into the package itself do not count: Python runs sadi_cpp/__init__ before any submodule
    return [f"{name} ({part_of(name)}) imports {dep} ({part_of(dep)})" for name, deps in sorted(g.items())
            for dep in sorted(deps) if dep != "sadi_cpp" and part_of(dep) not in PARTS[part_of(name)] | {part_of(name)}]


def test_parts_import_only_the_parts_below_them():
    g = graph()
    assert {part_of(n) for n in g} == set(PARTS), {part_of(n) for n in g}  # every part is really there
    assert wrong_imports(g) == []


def test_the_part_checker_catches_a_wrong_import():
    planted = {"sadi_cpp.masks.build": {"sadi_cpp.server.batcher", "sadi_cpp.llama.hook"}, "sadi_cpp.steering": {"sadi_cpp.llama.hook"}}
    assert wrong_imports(planted) == ["sadi_cpp.masks.build (masks) imports sadi_cpp.server.batcher (server)",
                                      "sadi_cpp.steering (base) imports sadi_cpp.llama.hook (llama)"]


def test_cli_commands_use_only_the_common_module_of_the_cli():
    g = graph()
    for name in ("sadi_cpp.cli.masks", "sadi_cpp.cli.evaluation", "sadi_cpp.cli.data", "sadi_cpp.cli.serve", "sadi_cpp.cli.gates",
                 "sadi_cpp.cli.generation"):
        assert "sadi_cpp.cli.common" in g[name]
        assert not {d for d in g[name] if d.startswith("sadi_cpp.cli.") and d != "sadi_cpp.cli.common"}


def _llama_cpp_imports(path: Path) -> Set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "llama_cpp"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "llama_cpp":
            found.add(node.module)
    return found


def test_only_the_llama_part_touches_llama_cpp_python():
    users = {name: _llama_cpp_imports(path) for name, path in modules().items()}
    users = {name: found for name, found in users.items() if found}
    assert {n for n in users if part_of(n) == "llama"} >= {"sadi_cpp.llama.hook", "sadi_cpp.llama.context"}
    # outside llama/, only the server's reuse of llama-cpp-python's public OpenAI request types
    assert {n: f for n, f in users.items() if part_of(n) != "llama"} == {"sadi_cpp.server.protocol": {"llama_cpp.server.types"}}
    # and nobody outside llama/ reaches through a hook into its Llama, its context or its engine
    for name, path in modules().items():
        if part_of(name) == "llama":
            continue
        reached = {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)
                   and n.attr in ("llm", "_ctx", "engine", "_model")}
        assert not reached, f"{name} reaches into {reached}"


def _spans(kind: type) -> List[Tuple[int, str]]:
    out = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, kind):
                out.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    return sorted(out, reverse=True)


def test_sizes_stay_readable():
    """No module over 450 lines, no class over 300, no function over 80."""
    big = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert max(big.values()) <= 450, max(big.items(), key=lambda kv: kv[1])
    assert _spans(ast.ClassDef)[0][0] <= 300, _spans(ast.ClassDef)[0]
    functions = _spans(ast.FunctionDef) + _spans(ast.AsyncFunctionDef)
    assert max(functions)[0] <= 80, max(functions)


def longest_chain(g: Dict[str, Set[str]]) -> List[str]:
    """The longest import chain inside the package (the graph has no circle)."""
    memo: Dict[str, List[str]] = {}

    def chain(n: str) -> List[str]:
        if n not in memo:
            memo[n] = [n] + max((chain(m) for m in g[n]), key=len, default=[])
        return memo[n]

    return max((chain(n) for n in g), key=len)


def test_import_chains_stay_short():
    g = {n: {m for m in deps if m != "sadi_cpp"} for n, deps in graph().items()}
    assert longest_chain({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"c"}}) == ["a", "b", "c"]
    chain = longest_chain(g)
    # 15 modules before the second structure step (python -m sadi_cpp -> ... -> errors)
    assert len(chain) <= 10, " -> ".join(chain)


def test_the_stub_matches_the_compiled_engine():
    from sadi_cpp import _core

    stub = ast.parse((PACKAGE / "_core.pyi").read_text())
    engine = next(n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == "Engine")
    stubbed = {n.target.id if isinstance(n, ast.AnnAssign) else n.name for n in engine.body
               if isinstance(n, (ast.FunctionDef, ast.AnnAssign))} - {"__init__"}
    bound = {n for n in dir(_core.Engine) if not n.startswith("_")}
    assert stubbed == bound, f"only in the stub: {stubbed - bound}; only bound: {bound - stubbed}"
    rpc = next(n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == "_Rpc")
    stubbed = {n.name for n in rpc.body if isinstance(n, ast.FunctionDef)}
    bound = {n for n in dir(_core.rpc) if not n.startswith("_")}
    assert stubbed == bound, f"rpc: only in the stub: {stubbed - bound}; only bound: {bound - stubbed}"


def documented_modules(text: str) -> Set[str]:
    """The module paths of architecture.md's tree: `  part/` lines open a folder, `    x.py` lines
    name a module in it, `  x.py` lines a module at the top."""
    block = text.split("```\nsadi_cpp/\n", 1)[1].split("```", 1)[0]
    found, folder = set(), ""
    for line in block.splitlines():
        if line.startswith(("src/", "cpp/")):
            break
        m = re.match(r"^( {2,4})(\w+/|\w+\.py)(?=\s|$)", line)
        if not m:
            continue
        indent, name = len(m.group(1)), m.group(2)
        if name.endswith("/"):
            folder = name
        else:
            found.add(name if indent == 2 else folder + name)
    return found


def test_architecture_md_names_every_module():
    named = documented_modules((ROOT / "docs" / "architecture.md").read_text())
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    # a part's __init__ holds only its docstring (checked below); the page says so once
    parts = {f for f in files if f.endswith("/__init__.py") and f != "cli/__init__.py"}
    assert files - parts == named, f"undocumented: {sorted(files - parts - named)}; documented but absent: {sorted(named - files)}"
    for f in parts:
        body = ast.parse((PACKAGE / f).read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), f"{f} holds more than its docstring"
        assert "\n" not in body[0].value.value.strip(), f"{f}: one line of docs"


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
