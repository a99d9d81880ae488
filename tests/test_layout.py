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
#: What the tool may read of the plugin besides its public API: the code fingerprint (stdlib only, no plugin
#: state), which the lowered-program cache's key reads as the matrix's inputs hash does.
PLUGIN_UTILITIES = (f"{NAME}.plugin.fingerprint",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, at module level or inside a function: ``import X`` counts X;
    ``from X import y`` counts X.y where that is a module, else X. (A parent package that Python imports first is
    not counted: it is always loaded before its submodules.)"""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
                found |= submodules
                if len(submodules) < len(node.names):  # some names are attributes of X itself
                    found.add(node.module)
        graph[name] = {m for m in found if m == NAME or m.startswith(NAME + ".")}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_start_up_code_is_stdlib_only_and_hands_over_to_the_plugin():
    graph = imports()
    assert graph[f"{NAME}._env"] == set()
    assert graph[f"{NAME}._startup"] == {f"{NAME}._env", f"{NAME}.plugin.hook"}
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
    for utility in PLUGIN_UTILITIES:  # the exception holds only while a utility is a leaf: no package import
        assert imports()[utility] == set(), utility
    for module, imported in imports().items():
        if module.split(".")[1:2] and module.split(".")[1] in TOOL:
            private = {m for m in imported if m.startswith(f"{NAME}.plugin.") and m not in PLUGIN_UTILITIES}
            assert not private, f"{module} imports {sorted(private)} (use gemma3n_export_fixes or .plugin)"


def test_no_import_cycles():
    """Anywhere in the package, package ``__init__`` files (lazy facades that import on attribute access) and
    function-level imports included: a circle there is one at run time as soon as the lazy path is taken."""
    cycle = import_cycle(imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_an_injected_import_circle_is_caught():
    """The check itself: the engine importing the registry back (the circle the package once had) is found."""
    graph = imports()
    graph[f"{NAME}.plugin.engine"] = graph[f"{NAME}.plugin.engine"] | {f"{NAME}.plugin.patches"}
    graph[f"{NAME}.plugin.patches.altup_clamp"] |= {f"{NAME}.plugin.engine"}
    cycle = import_cycle(graph)
    assert cycle is not None and f"{NAME}.plugin.engine" in cycle


#: What ``runtime`` may import from ``export``, and why (none of it is the ``.pte`` contract, which is ``pte``'s).
RUNTIME_FROM_EXPORT = {
    f"{NAME}.export.options": "the options a program was exported with, read back from its record",
    f"{NAME}.export.quant": "validation's reference is the eager model quantized the way the export quantizes",
    f"{NAME}.export.memory": "validation gives freed memory back between its reference and float models",
}
PENDING: dict[str, set[str]] = {}  #: contract names a module may still define (none)


def _contract() -> tuple[set[str], set[str | bytes]]:
    """The ``.pte`` contract: the names ``pte`` defines, and the values that must not be written anywhere else
    (method names, record format, kernel names, the tokenizer's file name, the extended header's tag)."""
    from types import ModuleType

    from gemma3n_export_fixes import pte

    names = {name for name, value in vars(pte).items()
             if not name.startswith("_") and not isinstance(value, ModuleType)
             and getattr(value, "__module__", pte.__name__) == pte.__name__}  # fmt: skip
    values = {value for name, value in vars(pte).items() if name.isupper() and isinstance(value, str)}
    values.discard(pte.FORWARD_METHOD)  # also every torch module's method name: not a contract value elsewhere
    return names, values | set(pte.EMBEDDING_KERNELS.values()) | {".tokenizer.json", "eh00", b"eh00"}


def test_runtime_takes_the_pte_contract_from_pte_not_from_export():
    names, _ = _contract()
    for path in (PACKAGE / "runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"{NAME}.export"):
                assert node.module in RUNTIME_FROM_EXPORT, f"{path.name} imports {node.module} (the contract: pte)"
                taken = {alias.name for alias in node.names} & names
                assert not taken, f"{path.name} imports {sorted(taken)} from {node.module}, not from pte"


def _defined(node: ast.AST) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    return node.id if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) else None


def test_the_pte_contract_is_written_only_in_pte():
    """Its names are defined, and its values (a method name, the record format, ...) written, in ``pte`` only:
    the other modules import them (docstrings aside). The sidecar is ``sidecar_path(pte)``, never
    ``pte.with_suffix(".json")`` (the lowered-program cache's own ``KEY.json`` is not a sidecar)."""
    names, values = _contract()
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if module == f"{NAME}.pte":
            continue
        allowed = PENDING.get(module, set())
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}  # fmt: skip
        for node in ast.walk(tree):
            name = _defined(node)
            assert name not in names - allowed, f"{module} defines {name} (import it from pte)"
            if isinstance(node, ast.Constant) and id(node) not in docstrings and node.value in values - allowed:
                raise AssertionError(f"{module}:{node.lineno} writes {node.value!r} (import it from pte)")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "with_suffix":
                suffix = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
                assert suffix != [".json"], f"{module}:{node.lineno}: the sidecar is pte.sidecar_path"
