"""Prefill + decode programs with a static KV cache (greedy decoding from them: ``runtime.decoding``).

The program is transformers' own ExecuTorch recipe (``TorchExportableModuleForDecoderOnlyLM``: a static
cache for every layer, sliding layers included; KV-shared layers read their source layer's cache), exported
with ``torch.export(strict=True)`` and a dynamic token dimension, so one ``forward(input_ids [1, T],
cache_position [T])`` serves the prefill (T tokens) and every decode step (T = 1). The cache lives in the
program as mutable buffers; a call at ``cache_position[0] == 0`` starts a new sequence.

Constant methods follow ExecuTorch's LLM runner conventions (``get_max_seq_len``, ``get_vocab_size``,
``use_kv_cache``, ``enable_dynamic_shape``, ``use_sdpa_with_kv_cache``, ``get_bos_id``, ``get_eos_ids``, ...), so
ExecuTorch's ``TextLLMRunner`` can drive the program and a runner can tell a KV-cache program from a fixed window.
Their names are the ``.pte`` contract's (``gemma3n_export_fixes.pte``); their values are given here.

Right as released from transformers :data:`KV_CACHE_SINCE`. Older releases' recipe gives the sliding-window
layers a cache that cannot run past the window (and, on 4.53 - 4.57, a mask that windows the full-attention
layers too); the plugin's recipe patches (``recipe-sliding-cache``, ``recipe-sliding-mask``) fix both, so a
KV-cache program is exported on every release with Gemma 3n as long as they are applied. When they are not
(the plugin switched off, or a patch disabled or skipped), ``export`` refuses with the patch's state.
"""

from __future__ import annotations

from typing import Any

from gemma3n_export_fixes import pte

KV_CACHE_SINCE = "5.5.1"


#: The plugin patches a KV-cache program needs on releases before :data:`KV_CACHE_SINCE` (each where in range).
RECIPE_PATCHES = ("recipe-sliding-cache", "recipe-sliding-mask")


def unsupported_reason(transformers_version: str) -> str | None:
    """Why a KV-cache program would be wrong in this process, or ``None`` when it is right.

    From :data:`KV_CACHE_SINCE` the recipe is right as released; before it, every recipe patch the release needs
    must be applied (importing the recipe module runs the plugin's hook, when the plugin is active).
    """
    import importlib

    from packaging.version import Version

    if Version(transformers_version) >= Version(KV_CACHE_SINCE):
        return None
    import gemma3n_export_fixes as gx
    from gemma3n_export_fixes.plugin import RECIPE_MODULE

    importlib.import_module(RECIPE_MODULE)
    for status in gx.status(RECIPE_PATCHES):
        if status.state.value not in ("applied", "not-needed"):
            return (
                f"a KV-cache program (export's default) on transformers {transformers_version} needs the plugin's "
                f"{status.id} patch (the recipe's sliding-window cache cannot decode past the window without it), "
                f"and it is {status.reason}; or export the seed's fixed window (--fixed-window)"
            )
    return None


def constant_methods(config: dict[str, Any], max_seq_len: int) -> dict[str, Any]:
    """Metadata methods in ExecuTorch's LLM runner convention (names: :mod:`gemma3n_export_fixes.pte`)."""
    special: dict[str, Any] = {}
    if config.get("eos_token_ids"):  # the runner stops at every one (Gemma: <eos> and <end_of_turn>)
        special[pte.EOS_IDS_METHOD] = [int(i) for i in config["eos_token_ids"]]
    if config.get("bos_token_id") is not None:
        special[pte.BOS_ID_METHOD] = int(config["bos_token_id"])
    return special | {
        pte.MAX_SEQ_LEN_METHOD: max_seq_len,
        pte.MAX_CONTEXT_LEN_METHOD: max_seq_len,
        pte.VOCAB_SIZE_METHOD: int(config["vocab_size"]),
        pte.MAX_BATCH_SIZE_METHOD: 1,
        pte.KV_MARKER_METHOD: True,
        pte.DYNAMIC_SHAPE_METHOD: True,
        pte.SLIDING_WINDOW_METHOD: int(config.get("sliding_window") or 0),
        pte.CUSTOM_SDPA_METHOD: False,  # transformers' attention, not ExecuTorch's custom SDPA op
    }
