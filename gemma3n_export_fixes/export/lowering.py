"""XNNPACK lowering for the export tool: ``to_edge_transform_and_lower`` with ExecuTorch's ``XnnpackPartitioner``.

What the toolchain needs changed while it lowers (fixes, shortcuts, the XNNPACK forms) are export-scope patches of
the one registry (:mod:`gemma3n_export_fixes.plugin.patches.toolchain`), applied around the trace and the lowering
by :func:`gemma3n_export_fixes.plugin.exporting`; this module only reads which of them are in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: The registry's id of the XNNPACK forms (the export adds the pass while that patch is applied).
FORMS_PATCH = "xnnpack-forms"


def delegate_count(edge: Any) -> int:
    """How many XNNPACK partitions the lowered program holds, over all its methods."""
    from executorch.exir.delegate import executorch_call_delegate

    return sum(
        1
        for name in edge.methods
        for node in edge.exported_program(name).graph.nodes
        if node.target is executorch_call_delegate
    )


def lower_to_xnnpack(exported: Any, constant_methods: dict[str, Any] | None, applied: Iterable[str]) -> Any:
    """``to_edge_transform_and_lower`` with ``XnnpackPartitioner``, after
    :class:`~gemma3n_export_fixes.export.xnnpack_forms.XnnpackForms` where ``applied`` (the ids of the patches in
    place) holds :data:`FORMS_PATCH`; returns the edge program manager."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from gemma3n_export_fixes.export.xnnpack_forms import XnnpackForms

    return to_edge_transform_and_lower(
        exported,
        transform_passes=[XnnpackForms()] if FORMS_PATCH in set(applied) else None,
        partitioner=[XnnpackPartitioner()],
        constant_methods=constant_methods or None,
    )
