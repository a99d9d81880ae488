"""Drift fingerprints: a short hash of a function's code that ignores what cannot change behaviour.

The fingerprint of a function is the sha256 (first 16 hex digits) of a canonical dump of its AST:
comments, formatting and the docstring do not count; names, constants, decorators and structure do.
The dump skips empty/None fields and expression contexts, so the same source hashes the same on
Python 3.10-3.13 (newer Pythons add fields such as ``type_params`` that are empty for this code).

Reproduce one by hand::

    python -c "import transformers.models.gemma3n.modeling_gemma3n as m, gemma3n_export_fixes.plugin.fingerprint as f;\
print(f.fingerprint(m.Gemma3nTextMLP._gaussian_topk))"
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

_SKIPPED_FIELDS = frozenset({"ctx", "kind", "type_comment"})


def _canon(node: Any) -> str:
    if isinstance(node, ast.AST):
        parts = [type(node).__name__]
        for name, value in ast.iter_fields(node):
            if name in _SKIPPED_FIELDS or value is None or value == []:
                continue
            parts.append(f"{name}={_canon(value)}")
        return "(" + " ".join(parts) + ")"
    if isinstance(node, list):
        return "[" + ",".join(_canon(item) for item in node) + "]"
    return repr(node)


def _strip_docstring(func: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
    body = func.body
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        func.body = body[1:] or [ast.Pass()]


def source_fingerprint(source: str) -> str:
    """Fingerprint of the first function definition in ``source`` (any indentation)."""
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            _strip_docstring(node)
            return hashlib.sha256(_canon(node).encode()).hexdigest()[:16]
    raise ValueError("no function definition in source")


def module_fingerprint(source: str) -> str:
    """sha256 (all 64 hex digits) of a whole module's canonical AST: every docstring (module, class,
    function), comment and formatting choice left out. What the matrix's inputs hash reads of a source file."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            _strip_docstring(node)
    return hashlib.sha256(_canon(tree).encode()).hexdigest()


def class_fingerprint(source: str) -> str:
    """Fingerprint of the first class definition in ``source`` (any indentation): its whole body, every
    docstring in it left out."""
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    _strip_docstring(inner)
            return hashlib.sha256(_canon(node).encode()).hexdigest()[:16]
    raise ValueError("no class definition in source")


def fingerprint(func: Callable[..., Any] | type) -> str:
    """Fingerprint of a function object (following ``__wrapped__`` to the decorated source, and a classmethod or
    staticmethod to its function), or of a whole class."""
    if isinstance(func, type):
        return class_fingerprint(inspect.getsource(func))
    return source_fingerprint(inspect.getsource(inspect.unwrap(func)))
