"""The registry: every change this package makes to code it does not own, in the order they are applied.

Import scope first (transformers' Gemma 3n code and ExecuTorch recipe, then a client's modules), then the export
scope (the toolchain: ExecuTorch and torch, in place only while an export traces and lowers; :mod:`.toolchain`).
"""

from __future__ import annotations

from gemma3n_export_fixes.plugin.patch import Patch
from gemma3n_export_fixes.plugin.patches import (
    altup_clamp,
    gaussian_topk,
    kv_share_nocache,
    optimum_custom_kv_cache,
    optimum_custom_sdpa,
    recipe_sliding_cache,
    recipe_sliding_mask,
    rotary_order,
)
from gemma3n_export_fixes.plugin.patches.toolchain import (
    constants_shared_in_preprocess,
    idle_passes,
    legalize_in_place,
    merge_check_by_sets,
    preserved_ops_in_config,
    validate_once,
    weights_not_cloned,
    xnnpack_forms,
)

REGISTRY: tuple[Patch, ...] = (
    altup_clamp.PATCH,
    gaussian_topk.PATCH,
    kv_share_nocache.PATCH,
    rotary_order.PATCH,
    recipe_sliding_cache.PATCH,
    recipe_sliding_mask.PATCH,
    # a client's modules (optimum-executorch): pending while it is not installed
    optimum_custom_sdpa.PATCH,
    optimum_custom_kv_cache.PATCH,
    # the toolchain (export scope): torch's trace, then ExecuTorch's lowering
    weights_not_cloned.PATCH,
    preserved_ops_in_config.PATCH,
    xnnpack_forms.PATCH,
    validate_once.PATCH,
    idle_passes.PATCH,
    legalize_in_place.PATCH,
    merge_check_by_sets.PATCH,
    constants_shared_in_preprocess.PATCH,
)


def by_id(patch_id: str) -> Patch:
    """The registered patch called ``patch_id``; ``KeyError`` names the known ids otherwise."""
    for patch in REGISTRY:
        if patch.id == patch_id:
            return patch
    raise KeyError(f"unknown patch {patch_id!r}; known: {', '.join(p.id for p in REGISTRY)}")
