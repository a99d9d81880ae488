"""xnnpack-forms: rewrite the edge graph into forms XNNPACK delegates, before it partitions (form).

XNNPACK lowering time grows with the number of delegate partitions, and the graph is split wherever an op stays
outside the delegate. In Gemma 3n most of those ops are value-preserving forms XNNPACK's partitioner refuses
(``pow(x, -0.5)``: its pow takes only the exponent 2; ``mean`` over the last dim: its mean is 4-D over dims (2, 3)
only; selects, unsqueezes, views with a symbolic size, slice_scatter, no-op expands/copies). The export adds the
pass :class:`gemma3n_export_fixes.export.xnnpack_forms.XnnpackForms` to ``to_edge_transform_and_lower`` while this
patch is applied; nothing upstream is replaced. Its targets are XNNPACK's constraints it works around: when they
change, ``status`` says so (drift), and the export lowers the graph as ``torch.export`` left it.

A numerics-changing form: ``rsqrt`` against ``pow(-0.5)`` and the pooled mean's reduction order change float
rounding (``validate`` judges the program against eager PyTorch as before). On by default because without it the
E2B graph lowers in many more, smaller partitions (slower lowering and decode); ``GEMMA3N_EXPORT_FIXES_DISABLE=
xnnpack-forms`` lowers without it.
"""

from __future__ import annotations

from collections.abc import Mapping

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.patch import Function, Kind, Patch, Scope, Target

MODULE = "executorch.backends.xnnpack.partition.config.generic_node_configs"


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    return {}  # the export adds the pass while this patch is applied


PATCH = Patch(
    id="xnnpack-forms",
    title="XNNPACK-friendly equivalent forms of RMSNorm's pow, mean, select, unsqueeze, views and slice_scatter",
    defect=(
        "XNNPACK refuses pow(x, -0.5), a last-dim mean, selects, symbolic-size views and slice_scatter: the "
        "Gemma 3n graph lowers in hundreds of small partitions with ops left on portable kernels between them"
    ),
    needed_on=SpecifierSet(">=1.0"),
    verified_through="1.5.1",
    targets=(
        Target("PowConfig.check_constraints", {"09d153c493cd85cb": "1.0.1 - 1.5.1"}, replaced=False),
        Target(
            "MeanDimConfig.check_constraints",
            {"43926dd68b626384": "1.0.1", "7ffb31802f6496b0": "1.4.1 - 1.5.1"},
            replaced=False,
        ),
    ),
    build=build,
    module=MODULE,
    distribution="executorch",
    scope=Scope.EXPORT,
    kind=Kind.FORM,
    changes_eager_numerics=False,
    evidence=(
        "benchmarks/lowering.py (partitions and seconds with and without); tests/test_lowering.py: the forms "
        "lower in one partition with the same values"
    ),
    upstream="not an upstream defect (XNNPACK's constraints); record upstream_prs/executorch/xnnpack-forms.md",
    notes=(
        "rounding: rsqrt vs pow(-0.5), the pooled mean's reduction order; on by default for fewer, larger "
        "partitions (lowering time, decode speed)",
    ),
)
