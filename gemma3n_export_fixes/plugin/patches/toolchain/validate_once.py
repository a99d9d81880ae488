"""validate-once: ExecuTorch validates the whole program after every constant it duplicates (shortcut).

ExecuTorch copies every constant that two partitions share and, after each copy, runs
``ExportedProgram._validate()`` on the whole program (``duplicate_constant_node``): one full EXIR verification per
copied constant per partition (on E2B, thousands of validations of a 10k-node graph: the lowering ran for hours).
``to_backend`` validates the tagged program again once every partition is lowered, so nothing goes unchecked.

The patch runs ``duplicate_constant_node`` with the program's ``_validate`` shadowed for the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.patch import Function, Kind, Patch, Scope, Target

MODULE = "executorch.exir.backend.utils"
PATH = "duplicate_constant_node"


def _no_validation() -> None:
    pass


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    original = originals[PATH]

    def duplicate_constant_node(exported_program: Any, candidate_node: str) -> Any:
        exported_program._validate = _no_validation  # the instance attribute shadows the method for this call
        try:
            return original(exported_program, candidate_node)
        finally:
            del exported_program._validate

    duplicate_constant_node.__doc__ = original.__doc__
    return {PATH: duplicate_constant_node}


PATCH = Patch(
    id="validate-once",
    title="duplicate_constant_node without a whole-program validation per copied constant",
    defect=(
        "duplicate_constant_node runs ExportedProgram._validate() on the whole program after each constant it "
        "copies between partitions: E2B's lowering ran for hours"
    ),
    needed_on=SpecifierSet(">=1.0"),
    verified_through="1.5.1",
    targets=(Target(PATH, {"497e8d07e290ef8b": "1.0.1", "d3ec5eb2eb5f7cb3": "1.4.1 - 1.5.1"}),),
    build=build,
    module=MODULE,
    distribution="executorch",
    scope=Scope.EXPORT,
    kind=Kind.SHORTCUT,
    evidence=(
        "benchmarks/lowering.py (seconds with and without); tests/test_lowering.py: the same program bytes, and "
        "the tagged program still validated once"
    ),
    upstream="open; record upstream_prs/executorch/validate-once.md",
)
