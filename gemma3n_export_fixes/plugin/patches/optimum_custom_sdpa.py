"""optimum-custom-sdpa: ``optimum-cli export executorch --use_custom_sdpa`` drops Gemma 3n's sliding window.

Defect (optimum-executorch, not transformers): with ``--use_custom_sdpa`` and without ``--use_custom_kv_cache``,
optimum registers ``custom_sdpa_with_start_pos_forward`` as the attention and transformers' ``sdpa`` mask. The
function throws the mask away (``attn_mask=None``) and calls ExecuTorch's ``llama::custom_sdpa`` in causal
mode from ``position_ids``: every layer attends to the whole past, so Gemma 3n's sliding-window layers see
more than their window and the program's logits are silently wrong from the first position past the window
(0.84 max abs on the tiny model; 8 of 40 greedy tokens right). Only the ring-buffer path
(``--use_custom_kv_cache``) passes a mask, and that path cannot export Gemma 3n (its cache has no entries for
the KV-shared layers).

Fix: for a Gemma 3n sliding-window layer that was handed a mask, call upstream's own mask branch (the one its
ring-buffer path uses: ``is_sliding``, the mask as additive float, non-causal) with the mask transformers built
(causal and windowed, over the whole static cache). Full-attention layers, other models and mask-less calls
run upstream's code unchanged.

optimum registers the function by value when ``optimum.exporters.executorch.convert`` is imported, which
imports this module first: the import hook installs the fix before that registration. The fix is one
module-level function; while it is not installed in optimum's module (reverted), a call that still reaches it
through the registration runs upstream's function, so ``revert`` restores upstream behaviour too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.modules import OPTIMUM_SDPA_MODULE
from gemma3n_export_fixes.plugin.patch import Function, Patch, Reproduction, Target

PATH = "custom_sdpa_with_start_pos_forward"
DISTRIBUTION = "optimum-executorch"
_UPSTREAM: dict[str, Function] = {}


def _installed() -> tuple[bool, Function]:
    """(whether the fix is installed in optimum's module, the function to delegate to): while it is, upstream's
    function we replaced; after ``revert`` (or a foreign replacement), whatever the module holds now."""
    import sys

    current = vars(sys.modules[OPTIMUM_SDPA_MODULE])[PATH]
    if current is custom_sdpa_with_start_pos_forward:
        return True, _UPSTREAM[PATH]
    return False, current


def custom_sdpa_with_start_pos_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    position_ids: Any = None,
    scaling: float | None = None,
    softcap: float | None = None,
    head_mask: Any = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """optimum's ``custom_sdpa`` attention, honouring the sliding-window mask of Gemma 3n's sliding layers."""
    installed, upstream = _installed()
    sliding = getattr(module, "is_sliding", False) and type(module).__name__.startswith("Gemma3n")
    if installed and sliding and attention_mask is not None and not kwargs.get("is_sliding"):
        import torch

        mask = attention_mask[0, 0]  # (batch 1) x (1 head) x query x key -> query x key, over the whole cache
        if mask.dtype == torch.bool:
            mask = torch.where(mask, 0.0, float("-inf"))
        kwargs["is_sliding"] = True  # upstream's masked branch: non-causal with attn_mask, start_pos 0
        attention_mask = mask.to(torch.float32)
    return upstream(module, query, key, value, attention_mask, position_ids, scaling, softcap, head_mask, **kwargs)


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    _UPSTREAM[PATH] = originals[PATH]
    return {PATH: custom_sdpa_with_start_pos_forward}


def reproduce() -> Reproduction:
    """The tiny model, eager, 12 tokens (window 8): optimum's ``custom_sdpa`` attention vs transformers' ``sdpa``.

    Registered the way optimum's ``convert`` module does (the attention, and ``sdpa``'s mask), under a private
    name, with whatever function optimum's module holds now (patched or not). Upstream: the last 4 positions
    differ (the window is ignored). Fixed: equal to float rounding.
    """
    from gemma3n_export_fixes.versions import installed_version

    if installed_version(DISTRIBUTION) is None:
        return Reproduction(False, f"{DISTRIBUTION} is not installed: nothing to reproduce")
    import importlib

    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    from gemma3n_export_fixes.models.tiny import build_tiny_model, tiny_input_ids

    client = importlib.import_module(OPTIMUM_SDPA_MODULE)
    name = "gemma3n_export_fixes_custom_sdpa"
    AttentionInterface.register(name, getattr(client, PATH))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model = build_tiny_model(seed=0)
    window = int(model.config.sliding_window)
    ids = tiny_input_ids(window + 4, seed=3, vocab_size=model.config.vocab_size)
    with torch.no_grad():
        expected = model(ids, use_cache=True).logits
        model.config._attn_implementation = name
        got = model(ids, use_cache=True).logits
    diff = float((got - expected).abs().max())
    inside = float((got[:, :window] - expected[:, :window]).abs().max())
    if diff <= 1e-4:
        return Reproduction(False, f"custom_sdpa matches sdpa past the window ({ids.shape[1]} tokens, window "
                                   f"{window}): max abs diff {diff:.2g}")  # fmt: skip
    return Reproduction(True, f"custom_sdpa ignores the sliding window: max abs diff {diff:.3g} vs sdpa past the "
                              f"window of {window} ({inside:.2g} inside it)", "window-ignored")  # fmt: skip


PATCH = Patch(
    id="optimum-custom-sdpa",
    title="optimum-executorch --use_custom_sdpa: Gemma 3n's sliding layers keep their window",
    defect=(
        "optimum's custom_sdpa attention ignores the attention mask outside its ring-buffer cache: Gemma 3n's "
        "sliding-window layers attend to the whole past (silently wrong logits past the window)"
    ),
    needed_on=SpecifierSet(">=0.1.0"),
    verified_through="1.1.0",
    targets=(Target(PATH, {"e0f5645b813b5ba3": "1.1.0"}),),
    build=build,
    reproduce=reproduce,
    upstream="open in optimum-executorch 1.1.0, the newest release (no upstream issue identified here)",
    module=OPTIMUM_SDPA_MODULE,
    distribution=DISTRIBUTION,
)
