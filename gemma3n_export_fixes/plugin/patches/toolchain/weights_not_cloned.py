"""weights-not-cloned: strict ``torch.export`` clones every weight of the traced model (shortcut, memory).

Dynamo, when it exports (``tx.export``), keeps a *real* value of every tensor it meets in the traced module: it
clones each parameter and buffer into ``real_value_cache`` (``variables/builder.py``: ``cache_real_value_when_export``
and ``_wrap_fx_preexisting_tensor``, each through ``_clone_input``), so that a data-dependent branch could later be
evaluated on real data. For the duration of the trace the process holds every weight twice: E2B 8da8w + 8w went from
7.9 to 12.1 GB inside Dynamo (py-spy: the samples at the peak are in ``clone_input``).

While patched (inside ``gemma3n_export_fixes.plugin.exporting(model)``), that cache holds the exported model's own
weight tensors instead of clones. A weight is never written by the forward pass (the tensors written, the KV cache,
belong to the recipe's cache and are still cloned), so a real value computed from it is the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.patch import EXPORTED_MODEL, Function, Kind, Patch, Scope, Target

MODULE = "torch._dynamo.variables.builder"
PATH = "_clone_input"


def _weights(model: Any) -> dict[int, Any]:
    return {id(t): t for t in (*model.parameters(), *model.buffers())}


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    original = originals[PATH]
    seen: dict[int, tuple[Any, dict[int, Any]]] = {}  # id(model) -> (model, its weights): built once per export

    def _clone_input(value: Any, fake_mode: Any) -> Any:
        model = EXPORTED_MODEL.get()
        if model is not None:
            if id(model) not in seen or seen[id(model)][0] is not model:
                seen.clear()
                seen[id(model)] = (model, _weights(model))
            if seen[id(model)][1].get(id(value)) is value:
                return value
        return original(value, fake_mode)

    _clone_input.__doc__ = original.__doc__
    return {PATH: _clone_input}


PATCH = Patch(
    id="weights-not-cloned",
    title="strict torch.export keeps the exported model's weights as their real values instead of clones",
    defect=(
        "Dynamo's export clones every parameter and buffer into real_value_cache: the process holds every weight "
        "twice while it traces (E2B 8da8w: 7.9 -> 12.1 GB)"
    ),
    needed_on=SpecifierSet(">=2.13"),
    verified_through="2.13.0",
    targets=(
        Target(PATH, {"9a561f1bf918c92f": "2.13.0"}),
        Target("cache_real_value_when_export", {"9e6c401e9ed69db3": "2.13.0"}, replaced=False),
        Target("_wrap_fx_preexisting_tensor", {"82fb70b4db3cddd0": "2.13.0"}, replaced=False),
    ),
    build=build,
    module=MODULE,
    distribution="torch",
    scope=Scope.EXPORT,
    kind=Kind.SHORTCUT,
    evidence=(
        "the E2B 8da8w export's peak RSS (benchmarks/real_size.py); tests/test_strict_export.py: the same exported "
        "program with and without, and without it at least half the weights are cloned"
    ),
    upstream="open; record upstream_prs/torch/weights-not-cloned.md",
)
