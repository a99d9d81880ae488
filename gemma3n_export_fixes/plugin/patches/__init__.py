"""The registry: every patch this package knows, in the order they are applied."""

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
)

REGISTRY: tuple[Patch, ...] = (
    altup_clamp.PATCH,
    gaussian_topk.PATCH,
    kv_share_nocache.PATCH,
    recipe_sliding_cache.PATCH,
    recipe_sliding_mask.PATCH,
    # a client's modules (optimum-executorch): pending while it is not installed
    optimum_custom_sdpa.PATCH,
    optimum_custom_kv_cache.PATCH,
)


def by_id(patch_id: str) -> Patch:
    """The registered patch called ``patch_id``; ``KeyError`` names the known ids otherwise."""
    for patch in REGISTRY:
        if patch.id == patch_id:
            return patch
    raise KeyError(f"unknown patch {patch_id!r}; known: {', '.join(p.id for p in REGISTRY)}")
