"""Prefill + decode programs with a static KV cache (greedy decoding from them: ``runtime.decoding``).

The program is transformers' own ExecuTorch recipe (``TorchExportableModuleForDecoderOnlyLM``: a static
cache for every layer, sliding layers included; KV-shared layers read their source layer's cache), exported
with ``torch.export(strict=True)`` and a dynamic token dimension, so one ``forward(input_ids [1, T],
cache_position [T])`` serves the prefill (T tokens) and every decode step (T = 1). The cache lives in the
program as mutable buffers; a call at ``cache_position[0] == 0`` starts a new sequence.

Constant methods follow ExecuTorch's LLM runner conventions (``get_max_seq_len``, ``get_vocab_size``,
``use_kv_cache``, ``enable_dynamic_shape``, ``use_sdpa_with_kv_cache``, ``get_bos_id``, ``get_eos_ids``, ...), so
ExecuTorch's ``TextLLMRunner`` can drive the program and a runner can tell a KV-cache program from a fixed window.

Supported from transformers :data:`KV_CACHE_SINCE`. Before 5.4.0 the recipe keeps sliding layers as
``StaticSlidingWindowLayer``, whose fill level is a Python int frozen into the trace, so the exported decode
fails once the position passes the sliding window (``index_copy_(): index 8 is out of bounds for dimension 2
with size 8`` on 4.57.6 and 5.0.0rc1; and prefill is limited to ``sliding_window`` tokens). 5.4.0 and 5.5.0
replace those layers by ``StaticLayer(layer.max_cache_len)``, i.e. still only ``sliding_window`` long: the
prefill fails in export (mask of the cache length vs keys of another) and decode overruns the window. 5.5.1
sizes them ``max_cache_len``. All of that is generic cache code, not Gemma 3n's; ``export`` refuses a KV-cache
program on older releases with that reason, and the matrix reproduces it (:func:`reproduce_old_recipe_failure`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

KV_CACHE_SINCE = "5.5.1"
#: The method a KV-cache program carries to say so (ExecuTorch LLM runner convention).
KV_MARKER_METHOD = "use_kv_cache"


def unsupported_reason(transformers_version: str) -> str | None:
    """Why a KV-cache program cannot work on this transformers release, or ``None`` when it can."""
    from packaging.version import Version

    if Version(transformers_version) >= Version(KV_CACHE_SINCE):
        return None
    return (
        f"a KV-cache program (export's default) needs transformers >= {KV_CACHE_SINCE} (installed: "
        f"{transformers_version}): older releases' "
        "ExecuTorch recipe gives the sliding-window layers a cache that cannot run past the sliding window "
        "(index_copy_ out of bounds once decoding passes it); upgrade transformers, or export the seed's fixed "
        "window (--fixed-window)"
    )


def exportable(model: torch.nn.Module, max_seq_len: int) -> torch.nn.Module:
    """transformers' ExecuTorch recipe around ``model`` with a static cache of ``max_seq_len`` positions."""
    import inspect

    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    # 4.53 - 4.55 call it max_batch_size
    params = inspect.signature(TorchExportableModuleForDecoderOnlyLM.__init__).parameters
    batch = "batch_size" if "batch_size" in params else "max_batch_size"
    return TorchExportableModuleForDecoderOnlyLM(model, **{batch: 1, "max_cache_len": max_seq_len})


def export_program(model: torch.nn.Module, max_seq_len: int) -> Any:
    """``torch.export`` the prefill+decode program: token dim dynamic in ``[1, max_seq_len]``, strict mode.

    Non-strict export of the same module fails in torch's AOT stage ("expected compiled_fn to be
    GraphModule", seen for a tiny Llama as well), so strict mode is used, as transformers' recipe does.
    """
    import torch

    wrapper = exportable(model, max_seq_len)
    seq = torch.export.Dim("seq", min=1, max=max_seq_len)
    example = min(2, max_seq_len)
    return wrapper.export(
        input_ids=torch.zeros(1, example, dtype=torch.long),
        cache_position=torch.arange(example, dtype=torch.long),
        dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}},
        strict=True,
    )


def constant_methods(config: dict[str, Any], max_seq_len: int) -> dict[str, Any]:
    """Metadata methods in ExecuTorch's LLM runner convention."""
    special: dict[str, Any] = {}
    if config.get("eos_token_ids"):  # the runner stops at every one (Gemma: <eos> and <end_of_turn>)
        special["get_eos_ids"] = [int(i) for i in config["eos_token_ids"]]
    if config.get("bos_token_id") is not None:
        special["get_bos_id"] = int(config["bos_token_id"])
    return special | {
        "get_max_seq_len": max_seq_len,
        "get_max_context_len": max_seq_len,
        "get_vocab_size": int(config["vocab_size"]),
        "get_max_batch_size": 1,
        KV_MARKER_METHOD: True,
        "enable_dynamic_shape": True,
        "get_sliding_window": int(config.get("sliding_window") or 0),
        "use_sdpa_with_kv_cache": False,  # transformers' attention, not ExecuTorch's custom SDPA op
    }


def reproduce_old_recipe_failure(max_seq_len: int = 24) -> dict[str, Any]:
    """Run the installed recipe's exported decode past the tiny model's sliding window (in this process).

    Returns ``{"fails": bool, "error": str}``: on releases before :data:`KV_CACHE_SINCE` the exported module
    raises once the position passes the window; from it on, it decodes like eager ``generate``.
    """
    import torch

    from gemma3n_export_fixes.errors import first_line
    from gemma3n_export_fixes.models.tiny import TINY_DEFAULTS, build_tiny_model

    model = build_tiny_model()
    wrapper = exportable(model, max_seq_len)
    try:
        kwargs = {"input_ids": torch.zeros(1, 1, dtype=torch.long), "cache_position": torch.arange(1)}
        module = torch.export.export(wrapper.model, (), kwargs, strict=True).module()
        for pos in range(2 * TINY_DEFAULTS["sliding_window"] + 1):
            module(input_ids=torch.tensor([[5]]), cache_position=torch.tensor([pos]))
    except Exception as exc:
        return {"fails": True, "error": first_line(exc)}
    return {"fails": False, "error": ""}
