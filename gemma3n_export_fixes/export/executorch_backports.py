"""Fixes from newer ExecuTorch releases, applied to older ones while ``export`` lowers (reversible, source-checked).

- :func:`preserved_ops_in_config`: pytorch/executorch#17404 (1.4.1 and 1.5.1 have it; 1.0.1 does not).
  ``to_edge_transform_and_lower`` keeps the ops a partitioner asks for (``ops_to_not_decompose``: XNNPACK
  keeps ``aten.linear``) and hands them to ``EdgeProgramManager`` as ``core_aten_ops_exception_list``, which
  verifies with them once and forgets them; the verifier that ``transform()`` runs after ``transform_passes``
  then rejects every kept op ("Operator aten.linear.default is not in Core ATen opset"). On ExecuTorch 1.0.1
  (the seed's stack) every XNNPACK export with :class:`~gemma3n_export_fixes.export.xnnpack_forms.XnnpackForms`
  failed that way. The backport does what #17404 does: those ops join the compile config's
  ``_core_aten_ops_exception_list``, which only the verifiers read. Evidence: the matrix's seed row
  (``matrix/results/seed-*.json``); record: ``upstream_prs/executorch/preserved-ops-in-config.md``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_FIXED_SOURCE = "config._core_aten_ops_exception_list = list("
_PASSED_SOURCE = "list(set().union(*ops_set_to_not_decompose_by_program.values()))"
_TRANSFORM_SOURCE = "EXIREdgeDialectVerifier(edge_compile_config=compile_config)"


def preserved_ops_in_config_applies() -> bool:
    """True on an ExecuTorch without #17404 whose code still reads the way the backport was written for."""
    try:
        from executorch.exir.program import _program
    except ImportError:
        return False
    generate = getattr(_program, "_gen_edge_manager_for_partitioners", None)
    manager = getattr(_program, "EdgeProgramManager", None)
    if generate is None or manager is None:
        return False
    source = inspect.getsource(generate)
    parameters = list(inspect.signature(manager.__init__).parameters)
    return (
        _FIXED_SOURCE not in source
        and _PASSED_SOURCE in source
        and parameters[:5]
        == ["self", "edge_programs", "constant_methods", "compile_config", "core_aten_ops_exception_list"]
        and _TRANSFORM_SOURCE in " ".join(inspect.getsource(manager).split())  # ``transform`` is wrapped
    )


@contextmanager
def preserved_ops_in_config(force: bool = False) -> Iterator[bool]:
    """While active, ``EdgeProgramManager(programs, methods, config, exception_list, ...)`` adds
    ``exception_list`` to ``config._core_aten_ops_exception_list`` before it verifies (as #17404 does); yields
    whether it patched (``force``: patch even where ExecuTorch has the fix, for the test that the backport
    changes no program)."""
    if not (force or preserved_ops_in_config_applies()):
        yield False
        return
    from executorch.exir.program._program import EdgeProgramManager

    original = vars(EdgeProgramManager)["__init__"]

    def __init__(  # the method it stands in for
        self: Any,
        edge_programs: Any,
        constant_methods: Any = None,
        compile_config: Any = None,
        core_aten_ops_exception_list: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        if compile_config is not None and core_aten_ops_exception_list:
            merged = set(compile_config._core_aten_ops_exception_list) | set(core_aten_ops_exception_list)
            compile_config._core_aten_ops_exception_list = sorted(merged, key=str)
        original(self, edge_programs, constant_methods, compile_config, core_aten_ops_exception_list, *args, **kwargs)

    EdgeProgramManager.__init__ = __init__
    try:
        yield True
    finally:
        EdgeProgramManager.__init__ = original
