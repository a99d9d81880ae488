"""Strict ``torch.export`` without a second copy of the weights (reversible, source-checked).

Dynamo, when it exports (``tx.export``), keeps a *real* value of every tensor it meets in the traced module: it
clones each parameter and buffer into ``real_value_cache`` (``variables/builder.py``:
``cache_real_value_when_export`` and the ``if tx.export:`` block after it, each ``_clone_input``), so that a
data-dependent branch could later be evaluated on real data. For the duration of the trace the process holds
every weight twice: E2B 8da8w + 8w went from 7.9 to 12.1 GB inside Dynamo on 2026-12-06 (py-spy: the samples
at the peak are in ``clone_input``), more than any later stage needed before.

:func:`weights_not_cloned` lets that cache hold the model's own weight tensors instead of clones. A weight is
never written by the forward pass (the tensors written, the KV cache, belong to the recipe's cache and are
still cloned), so a real value computed from it is the same. The traced graph does not change (the test
compares the exported programs with and without, and counts the clones). Only where ``_clone_input`` still reads
the way this was written for (torch 2.9.1 and 2.13.0 checked); elsewhere it does nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_CLONE_SOURCE = "value = clone_input(value)"
_CACHE_SOURCE = "real_value_cache[proxy.node] = _clone_input("


def weights_not_cloned_applies() -> bool:
    """True where Dynamo's builder clones real values through ``_clone_input`` the way the patch expects."""
    try:
        from torch._dynamo.variables import builder
    except ImportError:
        return False
    clone = getattr(builder, "_clone_input", None)
    return (
        clone is not None and _CLONE_SOURCE in inspect.getsource(clone) and _CACHE_SOURCE in inspect.getsource(builder)
    )


@contextmanager
def weights_not_cloned(module: torch.nn.Module) -> Iterator[bool]:
    """While active, Dynamo keeps ``module``'s parameters and buffers themselves as their real values instead of
    cloning them; yields whether it patched."""
    if not weights_not_cloned_applies():
        yield False
        return
    from torch._dynamo.variables import builder

    weights = {id(t): t for t in (*module.parameters(), *module.buffers())}
    original = builder._clone_input

    def _clone_input(value: Any, fake_mode: Any) -> Any:
        if weights.get(id(value)) is value:
            return value
        return original(value, fake_mode)

    builder._clone_input = _clone_input
    try:
        yield True
    finally:
        builder._clone_input = original
