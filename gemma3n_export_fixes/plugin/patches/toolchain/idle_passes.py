"""idle-passes-skipped: XNNPACK retraces every partition in passes that find nothing to do in it (shortcut).

Seven of the 17 passes XNNPACK runs on every partition look for ops or op patterns Gemma 3n's decoder does not
have (batch norm, PReLU, convolution, dim-order copies, the decomposed SDPA and bilinear-upsample patterns) and then
retrace the whole partition anyway (``ExportPass.call``, with fake tensors and symbolic shapes). While patched, each
returns the partition unchanged (``modified=False``) when the partition holds none of the ops it looks for; the pass
manager still checks the program before and after each pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.patch import Function, Kind, Patch, Scope, Target

PASSES = "executorch.backends.xnnpack._passes"
MEMORY_FORMAT = "executorch.exir.passes.memory_format_ops_pass"
#: pass (module, class) -> how to tell whether a partition gives it work (see :func:`_has_work`).
GUARDED = {
    f"{PASSES}.decompose_batch_norm": ("DecomposeBatchNorm", "batch_norm"),
    f"{PASSES}.fuse_batch_norm": ("FuseBatchNormPass", "batch_norm"),
    f"{PASSES}.prelu_reshape_pass": ("PReLUReshapePass", "prelu"),
    f"{PASSES}.conv1d_unsqueeze_pass": ("Conv1dUnsqueezePass", "convolution"),
    f"{PASSES}.convert_to_sdpa": ("ConvertToSDPAPass", "sdpa"),
    f"{PASSES}.convert_to_upsample_bilinear2d": ("ConvertToUpsampleBilinear2d", "bilinear_2d"),
    MEMORY_FORMAT: ("DimOrderOpsRevertPass", "memory_format"),  # inherits ``call``: the patch adds one
}

#: The ``call`` each guarded pass defines, by release (1.0.1 has no DecomposeBatchNorm: the patch is drift there).
CALL_FINGERPRINTS = {
    "DecomposeBatchNorm": {"5261d71407c2b7bd": "1.4.1 - 1.5.1"},
    "FuseBatchNormPass": {"c62065709871c907": "1.0.1 - 1.5.1"},
    "PReLUReshapePass": {"81eeba20dc3dbd9f": "1.0.1 - 1.5.1"},
    "Conv1dUnsqueezePass": {"ed2dff104e5b408a": "1.0.1 - 1.4.1", "eb8966b1d9fca918": "1.5.1"},
    "ConvertToSDPAPass": {"ca382fb27a365d6d": "1.0.1 - 1.5.1"},
    "ConvertToUpsampleBilinear2d": {"4429093465c7fa19": "1.0.1 - 1.5.1"},
}

HasWork = Callable[[frozenset[Any]], bool]


def targets_of(graph: Any) -> frozenset[Any]:
    """The call targets of ``graph``."""
    return frozenset(node.target for node in graph.nodes if node.op == "call_function")


def _any_pattern(patterns: Callable[[], Any]) -> HasWork:
    """A pattern can match (``SubgraphMatcher`` compares call targets one to one) only where every op it is made
    of is present: the patterns' op sets, computed on first use."""
    sets: list[frozenset[Any]] = []

    def has_work(present: frozenset[Any]) -> bool:
        if not sets:
            sets.extend(targets_of(pattern.graph) for pattern in patterns())
        return any(needed <= present for needed in sets)

    return has_work


def _has_work(what: str) -> HasWork:
    """Whether a partition (its set of call targets) gives work to a pass that looks for ``what``."""
    from executorch.exir.dialects._ops import ops as exir_ops

    edge = exir_ops.edge.aten
    if what == "sdpa":
        from executorch.backends.xnnpack.partition.graphs import sdpa

        return _any_pattern(sdpa.get_graphs)
    if what == "bilinear_2d":
        from executorch.backends.xnnpack.partition.graphs import bilinear_2d

        return _any_pattern(bilinear_2d.get_graphs)
    if what == "memory_format":
        from executorch.exir.passes.memory_format_ops_pass import MemoryFormatOpsMap

        ops = frozenset(MemoryFormatOpsMap)  # DimOrderOpsRevertPass rewrites those ops only
    else:
        ops = {
            "batch_norm": frozenset(
                {edge.native_batch_norm.default, edge._native_batch_norm_legit_no_training.default}
            ),
            "prelu": frozenset({edge._prelu_kernel.default}),
            "convolution": frozenset({edge.convolution.default}),
        }[what]
    return lambda present: bool(ops & present)


def _guard(call: Callable[..., Any], has_work: HasWork) -> Callable[..., Any]:
    from torch.fx.passes.infra.pass_base import PassResult

    def idle_or_call(self: Any, graph_module: Any) -> Any:
        if not has_work(targets_of(graph_module.graph)):
            return PassResult(graph_module, False)
        return call(self, graph_module)

    idle_or_call.__doc__ = call.__doc__
    return idle_or_call


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    import importlib

    replacements = {}
    for module, (cls, what) in GUARDED.items():
        path = f"{cls}.call"
        call = originals.get(path) or getattr(importlib.import_module(module), cls).call  # added: the inherited one
        replacements[path] = _guard(call, _has_work(what))
    return replacements


PATCH = Patch(
    id="idle-passes-skipped",
    title="XNNPACK passes with nothing to do return the partition instead of retracing it",
    defect=(
        "seven XNNPACK passes (batch norm, PReLU, conv1d, SDPA and bilinear patterns, dim-order revert) retrace "
        "every partition even when it holds none of the ops they rewrite"
    ),
    needed_on=SpecifierSet(">=1.4"),
    verified_through="1.5.1",
    targets=(
        *(
            Target(f"{cls}.call", CALL_FINGERPRINTS[cls], module=module)
            for module, (cls, _) in GUARDED.items()
            if module != MEMORY_FORMAT
        ),
        Target("DimOrderOpsRevertPass.call", {}, module=MEMORY_FORMAT, adds=True),
        Target(
            "DimOrderOpsRevertPass.call_operator",
            {"dbacaeb130edada4": "1.0.1 - 1.5.1"},
            replaced=False,
            module=MEMORY_FORMAT,
        ),
    ),
    build=build,
    module=f"{PASSES}.decompose_batch_norm",
    distribution="executorch",
    scope=Scope.EXPORT,
    kind=Kind.SHORTCUT,
    evidence=(
        "benchmarks/lowering.py (seconds with and without); tests/test_lowering.py: the same program bytes on graphs "
        "with and without those ops, and the guards see work where there is some"
    ),
    upstream="open; record upstream_prs/executorch/idle-passes-skipped.md",
)
