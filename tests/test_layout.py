"""The architecture, as imports: what runs at start-up, what runs on `import transformers`, what is the tool.

Read from the source (every import statement, function-level ones included), so a violation fails here
before it can show up as an import cost or a cycle at run time.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import gemma3n_export_fixes

PACKAGE = Path(gemma3n_export_fixes.__file__).parent
NAME = "gemma3n_export_fixes"
TOOL = ("models", "export", "runtime", "cli")
#: What the plugin's reproducers share with the export tool: the built-in tiny model and the recipe call.
SHARED = (f"{NAME}.models.tiny", f"{NAME}.models.recipe")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from X import y`` counts X, and X.y when that is a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
        graph[name] = {m for m in found if m == NAME or m.startswith(NAME + ".")}
    return graph


def test_start_up_code_is_stdlib_only_and_hands_over_to_the_plugin():
    graph = imports()
    assert graph[f"{NAME}._env"] == set()
    assert graph[f"{NAME}._startup"] == {f"{NAME}._env", f"{NAME}.plugin", f"{NAME}.plugin.hook"}
    for module in ("_env", "_startup"):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        third_party = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert third_party - {NAME, "__future__"} <= set(sys.stdlib_module_names), module


def test_the_plugin_never_imports_the_export_tool():
    for module, imported in imports().items():
        if module.startswith(f"{NAME}.plugin"):
            tool = {m for m in imported if m.split(".")[1:2] and m.split(".")[1] in TOOL and m not in SHARED}
            assert not tool, f"{module} imports {sorted(tool)}"


def test_the_export_tool_uses_the_plugin_only_through_its_public_api():
    for module, imported in imports().items():
        if module.split(".")[1:2] and module.split(".")[1] in TOOL:
            private = {m for m in imported if m.startswith(f"{NAME}.plugin.")}
            assert not private, f"{module} imports {sorted(private)} (use gemma3n_export_fixes or .plugin)"


def test_no_import_cycles():
    """Package __init__ files are lazy facades (they import on attribute access) and are left out."""
    graph = {m: {i for i in imported if not (PACKAGE / Path(*i.split(".")[1:]) / "__init__.py").exists()}
             for m, imported in imports().items()}  # fmt: skip
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state and not (PACKAGE / Path(*module.split(".")[1:]) / "__init__.py").exists():
            visit(module)
