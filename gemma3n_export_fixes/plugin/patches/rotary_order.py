"""rotary-order: the rotary embeddings in a fixed order, not a set's (transformers 5.6.0 - 5.25.0 at least).

Defect: since 5.6.0 ``Gemma3nTextModel.forward`` computes the rotary embeddings with
``for layer_type in set(self.config.layer_types)``. A set of strings iterates in the order of the strings'
hashes, which follow the process's hash seed (``PYTHONHASHSEED``, random per process by default): the traced
graph computes ``full_attention``'s cos/sin first in some processes and ``sliding_attention``'s first in others,
so the same model and options give different ``.pte`` bytes (the tiny fixed-window portable program:
``a1248d708242`` with seeds 0, 2, 3; ``f072f8a119ed`` with seed 1). The values are the same either way; a
program is just not a function of its inputs, which a cache, a reviewer and a reproducible build need.
Before 5.6.0 the loop ran over ``self.config.layer_types`` itself (a list: a fixed order, each type computed
once per layer).

Fix: ``sorted(set(self.config.layer_types))``, the order ``Gemma3nRotaryEmbedding`` itself keeps
(``self.layer_types = sorted(set(config.layer_types))``), and the order seed 0 happens to give, so programs
built with ``PYTHONHASHSEED=0`` (the matrix's cache) keep their bytes. Eager outputs are identical to
upstream's for every seed: each layer type's embeddings are computed from the same inputs, only the order of
the two computations changes.

How: the replacement is upstream's own forward with that one line changed, compiled from upstream's source
(the fingerprints pin which source) in the module's globals, under the same decorators, so it is upstream's
code in every other respect and stays so on each release it was checked on; a release whose source does not
have that exact line fails the build and is rolled back (never half-applied).
"""

from __future__ import annotations

import inspect
import linecache
import textwrap
from collections.abc import Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.patch import Function, Patch, Reproduction, Target

PATCH_ID = "rotary-order"
MODEL_FORWARD = "Gemma3nTextModel.forward"
UPSTREAM_LINE = "for layer_type in set(self.config.layer_types):"
FIXED_LINE = "for layer_type in sorted(set(self.config.layer_types)):"


def fixed_source(source: str) -> str:
    """``source`` (upstream's decorated ``forward``, dedented) with the set loop in sorted order;
    ``ValueError`` unless the loop occurs exactly once."""
    count = source.count(UPSTREAM_LINE)
    if count != 1:
        raise ValueError(f"{MODEL_FORWARD}: expected {UPSTREAM_LINE!r} once in the source, found it {count} times")
    return source.replace(UPSTREAM_LINE, FIXED_LINE)


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    upstream = originals[MODEL_FORWARD]
    inner = inspect.unwrap(upstream)
    module = inspect.getmodule(inner)
    if module is None:
        raise ValueError(f"{MODEL_FORWARD}: no module for {inner!r}")
    source = fixed_source(textwrap.dedent(inspect.getsource(inner)))  # the decorators included
    owner = MODEL_FORWARD.split(".")[0]
    # compiled in a class named like the owner, so ``__qualname__`` (and the decorators that read it) are upstream's
    text = f"class {owner}:\n" + textwrap.indent(source, "    ")
    filename = f"<gemma3n-export-fixes {PATCH_ID}: {inspect.getsourcefile(inner)}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)  # for tracebacks
    namespace: dict[str, Any] = {}
    exec(compile(text, filename, "exec"), vars(module), namespace)  # upstream's own source, one line edited
    forward = vars(namespace[owner])["forward"]
    forward.__doc__ = upstream.__doc__
    return {MODEL_FORWARD: forward}


def trace() -> dict[str, Any]:
    """The order the tiny ``Gemma3nTextModel`` computes its rotary embeddings in when traced (``torch.export``,
    non-strict, the code installed now), and a digest of the traced graph."""
    import hashlib

    import torch
    from transformers.models.gemma3n import modeling_gemma3n

    from gemma3n_export_fixes.models.tiny import tiny_text_config

    torch.manual_seed(0)
    model = modeling_gemma3n.Gemma3nTextModel(tiny_text_config()).eval()
    order: list[str] = []

    def record(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # 5.x passes the layer type; before 5.6.0 one rotary module per kind is called without one
        order.append(args[2] if len(args) > 2 else kwargs.get("layer_type", "default"))

    hook = model.rotary_emb.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            ids = torch.zeros(1, 4, dtype=torch.long)
            exported = torch.export.export(model, (ids,), {"use_cache": False}, strict=False)
    finally:
        hook.remove()
    return {"order": order, "graph": hashlib.sha256(exported.graph_module.code.encode()).hexdigest()[:12]}


#: The other process: the patches this one has applied (``argv[1]``, JSON), then :func:`trace`.
PROBE = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import gemma3n_export_fixes as gx
ids = json.loads(sys.argv[1])
if ids:
    assert all(s.applied for s in gx.apply(ids)), gx.status(ids)
from gemma3n_export_fixes.plugin.patches.rotary_order import trace
print(json.dumps(trace()))
"""


def other_seed(python: str, layer_types: list[str]) -> str:
    """A ``PYTHONHASHSEED`` under which ``python`` iterates ``set(layer_types)`` in another order than this process
    (the string hash is the interpreter's: asked of it, not assumed)."""
    import subprocess

    here = str(list(set(layer_types)))
    code = f"print(list(set({layer_types!r})))"
    for seed in range(32):  # ``-S``, not ``-I``: isolated mode would ignore PYTHONHASHSEED
        env = {"PYTHONHASHSEED": str(seed)}
        there = subprocess.run([python, "-S", "-c", code], capture_output=True, text=True, env=env, check=True)
        if there.stdout.strip() != here:
            return str(seed)
    raise RuntimeError(f"32 hash seeds iterated set({layer_types}) in this process's order")


def reproduce() -> Reproduction:
    """Trace the tiny ``Gemma3nTextModel`` here and in a fresh process whose hash seed iterates a set of its layer
    types in another order (with the patches this process has applied: upstream's code, or the fix); the defect
    shows when the rotary embeddings come in another order."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    from transformers.models.gemma3n import modeling_gemma3n

    from gemma3n_export_fixes.models.tiny import tiny_text_config
    from gemma3n_export_fixes.plugin.engine import MARKER

    # the patches in place here, by the marks the engine leaves on what it installed (the registry is not
    # imported from a patch: that would be an import circle)
    ids = {
        mark
        for cls in vars(modeling_gemma3n).values()
        if isinstance(cls, type)
        for value in vars(cls).values()
        if isinstance(mark := getattr(value, MARKER, None), str)
    }
    seed = other_seed(sys.executable, list(tiny_text_config().layer_types))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"GEMMA3N_EXPORT_FIXES": "0"}
    other = subprocess.Popen(
        [sys.executable, "-c", PROBE, json.dumps(sorted(ids))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env | {"PYTHONHASHSEED": seed},
        cwd=tempfile.gettempdir(),
    )
    try:
        here = trace()
    finally:
        out, err = other.communicate(timeout=600)
    if other.returncode != 0:
        raise RuntimeError(f"the probe failed with PYTHONHASHSEED={seed}:\n{err[-2000:]}")
    there = json.loads(out.strip().splitlines()[-1])
    # judged on the order of the rotary embeddings (what this patch fixes); the graph digests are shown beside it:
    # some releases (5.0.0rc0 - 5.10.4 in the matrix) trace other hash-seed-dependent graphs too, from code this
    # patch does not touch. Said the same way whichever seed this process has (the upstream draft quotes it).
    seen = sorted({f"{' then '.join(r['order'])} (graph {r['graph']})" for r in (here, there)})
    if here["order"] != there["order"]:
        return Reproduction(
            True,
            "the rotary embeddings' order depends on the hash seed: two processes whose seeds iterate "
            f"set(layer_types) in different orders compute them {' vs '.join(seen)}",
            "hash-seed-dependent",
        )
    also = "" if here["graph"] == there["graph"] else " (the graphs still differ elsewhere: not this defect)"
    return Reproduction(
        False,
        "the same rotary order in two processes whose seeds iterate set(layer_types) in different orders: "
        f"{'; '.join(seen)}{also}",
    )


PATCH = Patch(
    id=PATCH_ID,
    title="Gemma3nTextModel.forward computes the rotary embeddings in a fixed order, not a set's",
    defect=(
        "the rotary embeddings are computed in the iteration order of set(config.layer_types), which follows the "
        "process's hash seed: the same model and options trace different graphs and write different .pte bytes"
    ),
    needed_on=SpecifierSet(">=5.6.0"),
    verified_through="5.25.0",
    targets=(
        Target(
            MODEL_FORWARD,
            {
                "ef572a900d9b7b5b": "5.6.0 - 5.8.1",
                "61d973ba26cef2ee": "5.9.0 - 5.22.2",
                "08fe05329843d83c": "5.23.0",
                "ff932ffd770a95b6": "5.24.0 - 5.25.0",
            },
        ),
    ),
    build=build,
    reproduce=reproduce,
    reproduce_with=("altup-clamp", "gaussian-topk"),  # a trace of the model needs them where they apply
    upstream="not fixed through 5.25.0 (PR not identified: 5.6.0 turned the loop over config.layer_types into a set)",
)
