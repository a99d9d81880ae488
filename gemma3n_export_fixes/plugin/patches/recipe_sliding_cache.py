"""recipe-sliding-cache: the ExecuTorch recipe's sliding-window layers hold the whole cache (4.53.0 - 5.5.0).

Defect (transformers' generic cache code, used by ``TorchExportableModuleWithHybridCache``, i.e. by
``TorchExportableModuleForDecoderOnlyLM``, optimum-cli's ``export executorch`` and ``export --kv-cache``): the
sliding-attention layers get a cache only ``sliding_window`` long, and a decode step cannot run past it:

- 4.56 - 5.3 (``SlidingWindowLayer`` in 4.56, ``StaticSlidingWindowLayer`` from 4.57): the fill level is a
  Python int, frozen into the trace at 0, so the program keeps ``index_copy_(2, cache_position, ...)`` into a
  buffer ``sliding_window`` long: out of bounds at position ``sliding_window`` (the ``.pte`` dies there:
  ``index_put.out: Index 8 is out of bounds``; on E2B that is token 512);
- 4.53 - 5.3: a token dimension longer than the window does not export (guard ``seq <= sliding_window``);
- 5.4.0 - 5.5.0: the recipe swaps in ``StaticLayer(layer.max_cache_len)``, still window-sized: the export
  fails (a mask of the window against keys of the cache length) or the write overruns.

transformers 5.5.1 fixed it in the recipe (``StaticLayer(max_cache_len)``). Fix: the same, on older releases:
after the recipe's own ``__init__``, every sliding layer of a Gemma 3n model's cache is replaced by a static
layer of the full cache length (write position from the ``cache_position`` tensor, mask sizes
``(max_cache_len, 0)``); the window itself is kept by the sliding mask function, in absolute positions (on
4.53 - 4.57 that needs ``recipe-sliding-mask`` too). The cost is what 5.5.1 pays: ``max_cache_len`` slots per
sliding layer instead of ``sliding_window``. Only Gemma 3n models are touched; eager caches are not.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.errors import first_line
from gemma3n_export_fixes.plugin.modules import RECIPE_MODULE
from gemma3n_export_fixes.plugin.patch import Function, Patch, Reproduction, Target

PATH = "TorchExportableModuleWithHybridCache.__init__"
GEMMA3N_MODEL_TYPES = ("gemma3n", "gemma3n_text")
#: The tiny reproducer's cache: three sliding windows of the tiny model (``sliding_window`` 8).
REPRO_CACHE = 24


def _is_gemma3n(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in GEMMA3N_MODEL_TYPES


def widen_sliding_layers(hybrid: Any) -> int:
    """Give every sliding layer of ``hybrid.cache`` the full cache length (what 5.5.1's recipe does).

    Returns how many layers were replaced. Three layouts: 4.53 (``HybridCache`` with ``key_cache`` /
    ``value_cache`` lists and ``is_sliding``), 4.54 - 4.55 (eagerly allocated layers), 4.56+ (lazily allocated
    ``StaticLayer``; 5.4+ also registers a ``cumulative_length_i`` buffer per layer).
    """
    import torch
    from transformers import cache_utils as cu

    cache = hybrid.cache
    replaced = 0
    if not hasattr(cache, "layers"):  # 4.53: HybridCache(key_cache, value_cache, is_sliding)
        length = cache.max_cache_len
        for i, sliding in enumerate(cache.is_sliding):
            old = cache.key_cache[i]
            if not sliding and old.shape[2] == length:
                continue
            shape = (*old.shape[:2], length, old.shape[3])
            cache.key_cache[i] = torch.zeros(shape, dtype=old.dtype, device=old.device)
            cache.value_cache[i] = torch.zeros(shape, dtype=old.dtype, device=old.device)
            cache.is_sliding[i] = False  # the static update: index_copy_ at cache_position, full mask sizes
            hybrid.register_buffer(f"key_cache_{i}", cache.key_cache[i], persistent=False)
            hybrid.register_buffer(f"value_cache_{i}", cache.value_cache[i], persistent=False)
            replaced += 1
        cache.sliding_window = length  # 4.53's KV-shared sliding layers clamp their read index to it
        return replaced

    length = max(layer.max_cache_len for layer in cache.layers if not getattr(layer, "is_sliding", False))
    sliding = tuple(getattr(cu, n) for n in ("StaticSlidingWindowLayer", "SlidingWindowLayer") if hasattr(cu, n))
    lazy = getattr(cu.StaticLayer, "lazy_initialization", None)  # absent on 4.54 - 4.55 (eager allocation)
    for i, layer in enumerate(cache.layers):
        short = isinstance(layer, cu.StaticLayer) and layer.max_cache_len < length
        if not (isinstance(layer, sliding) or short):
            continue
        k0, v0 = layer.keys[:, :, :0, :], layer.values[:, :, :0, :]  # batch, heads, head_dim, dtype, device
        if lazy is None:
            new = cu.StaticLayer(
                max_cache_len=length, batch_size=k0.shape[0], num_heads=k0.shape[1], head_dim=k0.shape[3],
                dtype=k0.dtype, device=k0.device,
            )  # fmt: skip
        else:
            new = cu.StaticLayer(max_cache_len=length)
            if len(inspect.signature(lazy).parameters) == 3:  # 5.0.0rc2+: (self, key_states, value_states)
                new.lazy_initialization(k0, v0)
            else:  # 4.56 - 5.0.0rc1: (self, key_states)
                new.lazy_initialization(k0)
        cache.layers[i] = new
        hybrid.register_buffer(f"key_cache_{i}", new.keys, persistent=False)
        hybrid.register_buffer(f"value_cache_{i}", new.values, persistent=False)
        if f"cumulative_length_{i}" in hybrid._buffers:  # 5.4.0+: the tensor fill level is a buffer too
            hybrid.register_buffer(f"cumulative_length_{i}", new.cumulative_length, persistent=False)
        replaced += 1
    return replaced


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    original = originals[PATH]

    def __init__(self: Any, model: Any, *args: Any, **kwargs: Any) -> None:
        original(self, model, *args, **kwargs)
        if _is_gemma3n(model):
            widen_sliding_layers(self)

    __init__.__doc__ = original.__doc__
    return {PATH: __init__}


def reproduce() -> Reproduction:
    """Export the tiny model through the recipe (dynamic tokens 1..24, strict) and decode past twice its window,
    with the model patches applied for the call (``reproduce_with``: so only the recipe's defects can show).

    Upstream: the export fails (``seq <= sliding_window``, or the 5.4-5.5.0 mask mismatch) or the decode writes
    out of bounds at the window. Fixed: prefill 5 + 12 decode steps match eager within 1e-3.
    """
    from gemma3n_export_fixes.models.recipe import decode_error_past_the_window, export_recipe
    from gemma3n_export_fixes.models.tiny import TINY_DEFAULTS, build_tiny_model

    model = build_tiny_model()
    window = int(TINY_DEFAULTS["sliding_window"])
    try:
        exported = export_recipe(model, REPRO_CACHE)
        worst = decode_error_past_the_window(exported, model, prompt=5, steps=2 * window - 4)
    except Exception as exc:
        return Reproduction(True, first_line(exc), type(exc).__name__)
    if worst > 1e-3:
        return Reproduction(True, f"decodes past the window but {worst:.3g} max abs from eager", "wrong-logits")
    return Reproduction(False, f"prefill 5 + {2 * window - 4} decode steps past the window of {window}: "
                               f"{worst:.1e} max abs from eager")  # fmt: skip


PATCH = Patch(
    id="recipe-sliding-cache",
    title="ExecuTorch recipe: full-length static caches for the sliding-window layers",
    defect=(
        "TorchExportableModuleWithHybridCache gives sliding layers a cache sliding_window long whose fill "
        "level is frozen into the trace: the exported decode writes out of bounds at the window (4.56 - 5.3), "
        "a longer prefill does not export (4.53 - 5.3), or the export fails (5.4.0 - 5.5.0)"
    ),
    needed_on=SpecifierSet(">=4.53.0,<5.5.1"),
    verified_through="5.5.0",
    targets=(
        Target(
            PATH,
            {
                "972e4849000880db": "4.53.0",
                "8ac0c5ce9bbd88c8": "4.54.0 - 4.55.4",
                "e9435d8fee33ce16": "4.56.0 - 4.57.6",
                "aab0aa542fa11b27": "5.0.0rc0 - 5.3.0",
                "d9e02225170dd8d8": "5.4.0 - 5.5.0",
            },
        ),
    ),
    build=build,
    reproduce=reproduce,
    reproduce_with=("altup-clamp", "gaussian-topk", "kv-share-nocache"),
    upstream=(
        "fixed in 5.5.1: the recipe builds StaticLayer(max_cache_len) (upstream PR not identified here; the same "
        "cap reported for Gemma 3 as optimum-executorch#218)"
    ),
    module=RECIPE_MODULE,
)
