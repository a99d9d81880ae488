"""preserved-ops-in-config: backport of pytorch/executorch#17404 to ExecuTorch releases without it (fix).

``to_edge_transform_and_lower`` keeps the ops a partitioner asks for (``ops_to_not_decompose``: XNNPACK keeps
``aten.linear``) and hands them to ``EdgeProgramManager`` as ``core_aten_ops_exception_list``, which verifies with
them once and forgets them; the verifier that ``transform()`` runs after ``transform_passes`` then rejects every kept
op ("Operator aten.linear.default is not in Core ATen opset"). On ExecuTorch 1.0.1 (the seed's stack) every XNNPACK
export with our XNNPACK forms failed that way. While patched, ``EdgeProgramManager(programs, methods, config,
exception_list, ...)`` adds ``exception_list`` to ``config._core_aten_ops_exception_list`` before it verifies, as
#17404 does (only the verifiers read that list). ExecuTorch 1.4.1 and 1.5.1 have the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.patch import Function, Kind, Patch, Scope, Target

MODULE = "executorch.exir.program._program"
PATH = "EdgeProgramManager.__init__"


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    original = originals[PATH]

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

    __init__.__doc__ = original.__doc__
    return {PATH: __init__}


PATCH = Patch(
    id="preserved-ops-in-config",
    title="EdgeProgramManager keeps the partitioner's preserved ops for the later verifier (executorch#17404)",
    defect=(
        "the ops a partitioner keeps (aten.linear) are verified once and forgotten: transform() then fails with "
        "'Operator aten.linear.default is not in Core ATen opset' on every XNNPACK export with transform passes"
    ),
    needed_on=SpecifierSet("<1.4"),
    verified_through="1.0.1",
    targets=(
        Target(PATH, {"10766857fa08298b": "1.0.1 - 1.5.1"}),
        Target("_gen_edge_manager_for_partitioners", {"618f2c72f88a9f21": "1.0.1"}, replaced=False),
    ),
    build=build,
    module=MODULE,
    distribution="executorch",
    scope=Scope.EXPORT,
    kind=Kind.FIX,
    evidence=(
        "the matrix's seed row (executorch 1.0.1: both XNNPACK exports fail without it); "
        "tests/test_executorch_backports.py: the kept ops reach the config, the same program bytes"
    ),
    upstream="fixed: pytorch/executorch#17404 (1.4.1 and 1.5.1 have it); record "
    "upstream_prs/executorch/preserved-ops-in-config.md",
)
