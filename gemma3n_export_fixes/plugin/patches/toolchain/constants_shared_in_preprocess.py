"""constants-shared-in-preprocess: ExecuTorch 1.5 holds every delegated weight twice while XNNPACK preprocesses
(shortcut, memory).

ExecuTorch 1.5.1 copies every partition's program (``BackendDetails.copy_exported_program_for_preprocess``: a plain
deep copy, weights included) before XNNPACK preprocesses the first (``lower_all_submodules_to_backend``), so for the
whole preprocessing the process holds every delegated weight twice: on E2B's KV program 8da4w + 4w, 6.2 -> 8.9 GB
at its start, 10.8 GB at its end (1 s RSS samples; 11.1 GB max RSS, the export's peak). While patched, XNNPACK's
copy shares the partition's parameters, buffers and constants (preprocess reads them and writes its own: the
serialized weights). ExecuTorch 1.4.1 and older deep-copy inline, one partition at a time: not needed there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.patch import Function, Kind, Patch, Scope, Target

XNNPACK = "executorch.backends.xnnpack.xnnpack_preprocess"
DETAILS = "executorch.exir.backend.backend_details"
PATH = "XnnpackBackend.copy_exported_program_for_preprocess"


def _copy_sharing_constants(cls: type, edge_program: Any, compile_specs: Any) -> Any:
    """The program's deep copy, with its parameters, buffers and constants shared instead of copied."""
    import copy

    import torch

    tensors = [*edge_program.state_dict.values(), *edge_program.constants.values()]
    return copy.deepcopy(edge_program, {id(t): t for t in tensors if isinstance(t, torch.Tensor)})


def build(originals: Mapping[str, Function]) -> dict[str, Any]:
    return {PATH: classmethod(_copy_sharing_constants)}


PATCH = Patch(
    id="constants-shared-in-preprocess",
    title="XNNPACK's per-partition copy for preprocessing shares the weights",
    defect=(
        "ExecuTorch 1.5 deep-copies every partition's program, weights included, before XNNPACK preprocesses the "
        "first: every delegated weight is held twice (E2B: +2.7 GB, the export's peak)"
    ),
    needed_on=SpecifierSet(">=1.5"),
    verified_through="1.5.1",
    targets=(
        Target(PATH, {}, adds=True),
        Target(
            "BackendDetails.copy_exported_program_for_preprocess",
            {"d094ea689f0d7e25": "1.5.1"},
            replaced=False,
            module=DETAILS,
        ),
    ),
    build=build,
    module=XNNPACK,
    distribution="executorch",
    scope=Scope.EXPORT,
    kind=Kind.SHORTCUT,
    evidence=(
        "the E2B export's peak RSS (benchmarks/real_size.py, benchmarks/phase_profile.py); tests/test_lowering.py: "
        "the same program bytes, the weights unchanged by lowering, shared only while patched"
    ),
    upstream="open; record upstream_prs/executorch/constants-shared-in-preprocess.md",
)
