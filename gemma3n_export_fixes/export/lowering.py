"""XNNPACK lowering for the export tool: the graph rewrites, then ExecuTorch's partitioner, validated once.

ExecuTorch (1.5.1 and earlier) copies every constant that two partitions share and, after each copy, runs
``ExportedProgram._validate()`` on the whole program (``duplicate_constant_node``): one full EXIR verification,
which interprets every node with fake tensors, per copied constant per partition. On the tiny KV-cache program
that is 18 validations and ~40 s of a ~200 s lowering; on E2B it is thousands of validations of a 10k-node graph
(the lowering ran for hours). ``to_backend`` validates the tagged program again once every partition is lowered,
so :func:`validate_once` skips the per-copy validations during the lowering and nothing goes unchecked. It
patches only while the lowering runs, only where ExecuTorch's source still has both calls (fingerprints), and
restores the exact original object afterwards. Upstream record: ``upstream_prs/executorch/validate-once.md``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _no_validation() -> None:
    pass


def validate_once_applies() -> bool:
    """True when ExecuTorch validates after each duplicated constant and again after lowering (so skipping the
    first kind loses no check)."""
    try:
        from executorch.exir.backend import backend_api
        from executorch.exir.backend import utils as backend_utils
        from executorch.exir.backend.canonical_partitioners import duplicate_constant_node_pass as dup
    except ImportError:
        return False
    return (
        getattr(backend_utils, "duplicate_constant_node", None) is dup.duplicate_constant_node
        and "exported_program._validate()" in inspect.getsource(dup.duplicate_constant_node)
        and "tagged_exported_program._validate()" in inspect.getsource(backend_api)
    )


@contextmanager
def validate_once() -> Iterator[bool]:
    """While active, ``duplicate_constant_node`` does not re-validate the program; yields whether it patched."""
    if not validate_once_applies():
        yield False
        return
    from executorch.exir.backend import utils as backend_utils

    original = backend_utils.duplicate_constant_node

    def duplicate_constant_node(exported_program: Any, candidate_node: str) -> Any:
        exported_program._validate = _no_validation  # the instance attribute shadows the method for this call
        try:
            return original(exported_program, candidate_node)
        finally:
            del exported_program._validate

    backend_utils.duplicate_constant_node = duplicate_constant_node
    try:
        yield True
    finally:
        backend_utils.duplicate_constant_node = original


def delegate_count(edge: Any) -> int:
    """How many XNNPACK partitions the lowered program holds, over all its methods."""
    from executorch.exir.delegate import executorch_call_delegate

    return sum(
        1
        for name in edge.methods
        for node in edge.exported_program(name).graph.nodes
        if node.target is executorch_call_delegate
    )


def lower_to_xnnpack(
    exported: Any, constant_methods: dict[str, Any] | None = None, forms: bool = True
) -> tuple[Any, dict[str, Any]]:
    """``to_edge_transform_and_lower`` with ``XnnpackPartitioner`` after :class:`XnnpackForms` (``forms``),
    validated once; returns the edge program manager and what the lowering did (for the export record)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from gemma3n_export_fixes.export.xnnpack_forms import XnnpackForms

    with validate_once() as validated_once:
        edge = to_edge_transform_and_lower(
            exported,
            transform_passes=[XnnpackForms()] if forms else None,
            partitioner=[XnnpackPartitioner()],
            constant_methods=constant_methods or None,
        )
    return edge, {"xnnpack_forms": forms, "validate_once": validated_once, "partitions": delegate_count(edge)}
