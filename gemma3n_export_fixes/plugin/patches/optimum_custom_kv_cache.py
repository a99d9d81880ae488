"""optimum-custom-kv-cache: ``--use_custom_kv_cache`` cannot export Gemma 3n; say so up front, in one line.

Defect (optimum-executorch, not transformers): ``replace_with_et_custom_kv_cache`` swaps the recipe's cache for
an ``ETCustomHybridCache``, which holds one ring/custom cache per layer *that has its own KV*: Gemma 3n's
KV-shared layers (the last ``num_kv_shared_layers``) have none, and optimum's ring-buffer attention asks for
``get_layer_cache(layer_idx)`` on them. The export dies deep inside Dynamo:
``ObservedIndexError: IndexError('index 4 is out of range')`` on the tiny model (optimum-executorch 1.1.0 with
its own transformers pin, 5.0.0rc1). On transformers >= 5.x without ``HybridCache`` (5.23.0: the default stack)
optimum's module does not even import (``ImportError: cannot import name 'HybridCache'``), so this patch never
applies there and that ImportError is the (loud) failure.

Why a refusal and not a fix: a correct cache would have to re-implement Gemma 3n's KV sharing (each shared layer
reads the ring or full cache of the last non-shared layer of its type, with that cache's positions and mask)
inside optimum's ring-buffer attention, and on the default stack the module it lives in does not import.

Fix: for a Gemma 3n config the function raises ``ValueError`` naming the cause and what to use instead, before
any cache is built or any tracing starts; other models run upstream's function unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.modules import OPTIMUM_KV_CACHE_MODULE
from gemma3n_export_fixes.plugin.patch import Function, Patch, Reproduction, Target

PATH = "replace_with_et_custom_kv_cache"
DISTRIBUTION = "optimum-executorch"
REFUSAL = (
    "gemma3n-export-fixes: --use_custom_kv_cache cannot export Gemma 3n: optimum-executorch's ETCustomHybridCache "
    "has no cache for Gemma 3n's KV-shared layers (the export would die with IndexError); drop "
    "--use_custom_kv_cache (--use_custom_sdpa alone works with this plugin)"
)


def _is_gemma3n(config: Any) -> bool:
    return str(getattr(config, "model_type", "")).startswith("gemma3n")


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    upstream = originals[PATH]

    def replace_with_et_custom_kv_cache(module: Any, config: Any, generation_config: Any, cache_dtype: Any) -> Any:
        if _is_gemma3n(config):
            raise ValueError(REFUSAL)
        return upstream(module, config, generation_config, cache_dtype)

    replace_with_et_custom_kv_cache.__doc__ = upstream.__doc__
    return {PATH: replace_with_et_custom_kv_cache}


def reproduce() -> Reproduction:
    """The tiny model's config through the installed ``replace_with_et_custom_kv_cache``.

    Fixed: refused up front with the reason. Upstream: it goes ahead, and the ``ETCustomHybridCache`` it builds
    has fewer layer caches than the model has layers (the KV-shared ones are missing).
    """
    from gemma3n_export_fixes.versions import installed_version

    if installed_version(DISTRIBUTION) is None:
        return Reproduction(False, f"{DISTRIBUTION} is not installed: nothing to reproduce")
    import importlib

    try:
        client = importlib.import_module(OPTIMUM_KV_CACHE_MODULE)
    except ImportError as exc:  # 5.x without HybridCache: optimum's own import fails, loudly, at export time
        return Reproduction(False, f"{OPTIMUM_KV_CACHE_MODULE} does not import here ({exc}): the flag fails loudly")
    from types import SimpleNamespace

    import torch

    from gemma3n_export_fixes.models.tiny import build_tiny_model

    config = build_tiny_model(seed=0).config
    generation = SimpleNamespace(cache_config={"batch_size": 1, "max_cache_len": 32, "device": "cpu"})
    recipe = torch.nn.Module()  # what it reads of the recipe's TorchExportableModuleWithHybridCache: .cache
    recipe.cache = None
    try:
        client.replace_with_et_custom_kv_cache(recipe, config, generation, torch.float32)
    except ValueError as exc:
        if "gemma3n-export-fixes" in str(exc):
            return Reproduction(False, f"refused up front: {exc}")
        raise
    cache = recipe.cache
    layers = int(config.num_hidden_layers)
    if len(cache.kv_cache) >= layers:
        return Reproduction(False, f"ETCustomHybridCache holds a cache for each of the {layers} layers")
    return Reproduction(True, f"accepted, but ETCustomHybridCache holds {len(cache.kv_cache)} layer caches for "
                              f"{layers} layers: KV-shared layer {len(cache.kv_cache)} has none (IndexError at "
                              "export)", "missing-shared-layers")  # fmt: skip


PATCH = Patch(
    id="optimum-custom-kv-cache",
    title="optimum-executorch --use_custom_kv_cache: refused for Gemma 3n in one line (no KV-shared layer caches)",
    defect=(
        "optimum's ETCustomHybridCache has no cache for Gemma 3n's KV-shared layers: the export dies in Dynamo "
        "with IndexError('index 4 is out of range')"
    ),
    needed_on=SpecifierSet(">=0.1.0"),
    verified_through="1.1.0",
    targets=(Target(PATH, {"29155971263068b2": "1.1.0"}),),
    build=build,
    reproduce=reproduce,
    upstream="open in optimum-executorch 1.1.0, the newest release (no upstream issue identified here)",
    module=OPTIMUM_KV_CACHE_MODULE,
    distribution=DISTRIBUTION,
)
