"""recipe-sliding-mask: the ExecuTorch recipe's mask windows the full-attention layers too (4.53.0 - 4.57.x).

Defect: on 4.53 - 4.57 the recipe (``TorchExportableModuleWithHybridCache`` and the other exportable wrappers)
switches the model to the ``"sdpa_without_vmap"`` attention, whose mask function
``transformers.integrations.executorch.sdpa_mask_without_vmap`` ignores the ``mask_function`` it is given and
applies ``config.sliding_window`` to every call: the **full**-attention layers see only the last
``sliding_window`` tokens too, so a KV-cache program's logits are silently wrong from that position on (0.35 max
abs on the tiny model; the program does not fail). Removed with the function in 5.0.0rc0 (the recipe keeps
``"sdpa"``, whose non-vmap expansion evaluates the mask function).

Fix: the same function evaluating the caller's ``mask_function`` on broadcast index tensors (what 5.x's
``_non_vmap_expansion_sdpa`` does): causal for the full layers, causal and windowed for the sliding ones; no
vmap, so it exports. Each recipe ``__init__`` registers the module's function under ``"sdpa_without_vmap"``,
so recipes built after ``apply`` use this one (and, after ``revert``, upstream's again).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.modules import RECIPE_MODULE
from gemma3n_export_fixes.plugin.patch import Function, Patch, Reproduction, Target

PATH = "sdpa_mask_without_vmap"


def sdpa_mask_without_vmap(
    batch_size: int,
    cache_position: Any,
    kv_length: int,
    kv_offset: Any = 0,
    mask_function: Any = None,
    attention_mask: Any = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    allow_torch_fix: bool = True,
    **kwargs: Any,
) -> Any:
    """The recipe's ``"sdpa_without_vmap"`` mask, honouring ``mask_function`` (``(batch, 1, q, kv)``, bool).

    ``allow_is_causal_skip`` is not used: the recipe's static cache never lets a caller skip the mask.
    """
    import torch
    from transformers.masking_utils import causal_mask_function, prepare_padding_mask

    mask_function = mask_function or causal_mask_function
    device = cache_position.device
    padding_mask = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    kv_arange = torch.arange(kv_length, device=device) + kv_offset
    mask = mask_function(
        torch.arange(batch_size, device=device)[:, None, None, None],
        torch.arange(1, device=device)[None, :, None, None],
        cache_position[None, None, :, None],
        kv_arange[None, None, None, :],
    )
    mask = mask.expand(batch_size, 1, cache_position.shape[0], kv_length)
    if padding_mask is not None:
        mask = mask * padding_mask[:, None, None, :]
    return mask


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    return {PATH: sdpa_mask_without_vmap}


def reproduce() -> Reproduction:
    """Ask the installed recipe mask for a full-attention (causal) mask of 12 tokens with a window of 4.

    Upstream (4.53 - 4.57): the mask is windowed anyway. Fixed, or a release without the function: causal.
    """
    from types import SimpleNamespace

    import torch
    from transformers.integrations import executorch as recipe
    from transformers.masking_utils import causal_mask_function

    mask_of = getattr(recipe, PATH, None)
    if mask_of is None:
        return Reproduction(False, f"{RECIPE_MODULE} has no {PATH} in this release (the recipe keeps sdpa)")
    length, window = 12, 4
    config = SimpleNamespace(sliding_window=window, attention_chunk_size=None)  # what the mask reads
    mask = mask_of(1, torch.arange(length), length, mask_function=causal_mask_function, config=config,
                   allow_is_causal_skip=False)  # fmt: skip
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    got = mask[0, 0].bool()
    if torch.equal(got, causal):
        return Reproduction(False, f"the full-attention mask is causal ({length} tokens, window {window})")
    dropped = int((causal & ~got).sum())
    return Reproduction(True, f"the full-attention mask drops {dropped} causal positions (window {window} applied)",
                        "windowed-full-attention")  # fmt: skip


PATCH = Patch(
    id="recipe-sliding-mask",
    title="ExecuTorch recipe: the sdpa_without_vmap mask honours the mask function (full layers unwindowed)",
    defect=(
        "sdpa_mask_without_vmap applies config.sliding_window to every layer's mask: the full-attention layers "
        "of an exported KV-cache program see only the last sliding_window tokens (silently wrong logits)"
    ),
    needed_on=SpecifierSet(">=4.53.0,<5.0.0rc0"),
    verified_through="4.57.6",
    targets=(Target(PATH, {"0ab05ae3c7eb1713": "4.53.0 - 4.57.6"}),),
    build=build,
    reproduce=reproduce,
    upstream=(
        "fixed in 5.0.0rc0: the function is gone, the recipe keeps sdpa, whose non-vmap expansion evaluates the "
        "mask function (upstream PR not identified here)"
    ),
    module=RECIPE_MODULE,
)
