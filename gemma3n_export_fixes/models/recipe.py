"""transformers' ExecuTorch KV-cache recipe around a Gemma 3n model, the way ``export --kv-cache`` and optimum use it.

Shared by the export tool (:mod:`gemma3n_export_fixes.export.kvcache`) and the plugin's recipe patches (their
reproducers), so both exercise exactly the same recipe call. Imports torch and transformers when called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def recipe(model: torch.nn.Module, max_cache_len: int) -> torch.nn.Module:
    """``TorchExportableModuleForDecoderOnlyLM`` around ``model``: batch 1, a static cache of ``max_cache_len``."""
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    params = inspect.signature(TorchExportableModuleForDecoderOnlyLM.__init__).parameters
    batch = "batch_size" if "batch_size" in params else "max_batch_size"  # 4.53 - 4.55 call it max_batch_size
    return TorchExportableModuleForDecoderOnlyLM(model, **{batch: 1, "max_cache_len": max_cache_len})


def export_recipe(model: torch.nn.Module, max_cache_len: int) -> Any:
    """``torch.export`` the recipe's prefill+decode module: token dim dynamic in ``[1, max_cache_len]``, strict.

    Non-strict export of the same module fails in torch's AOT stage ("expected compiled_fn to be
    GraphModule", seen for a tiny Llama as well), so strict mode is used, as transformers' recipe does.
    """
    import torch

    wrapper = recipe(model, max_cache_len)
    seq = torch.export.Dim("seq", min=1, max=max_cache_len)
    example = min(2, max_cache_len)
    return wrapper.export(
        input_ids=torch.zeros(1, example, dtype=torch.long),
        cache_position=torch.arange(example, dtype=torch.long),
        dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}},
        strict=True,
    )


def recipe_runner(exported: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(input_ids, cache_position) -> logits`` of a program :func:`export_recipe` returns, run as a module (4.53 -
    4.55 export the two inputs positionally, later releases by name)."""
    module = exported.module()
    by_name = bool(exported.call_spec.in_spec.children_specs[1].context)

    def run(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return module(input_ids=ids, cache_position=positions) if by_name else module(ids, positions)

    return run


def decode_error_past_the_window(exported: Any, model: torch.nn.Module, prompt: int, steps: int) -> float:
    """Max abs logit difference between an exported recipe program and eager ``model`` over ``prompt`` + ``steps``.

    ``exported`` is the program :func:`export_recipe` returns, run as a module: one prefill of ``prompt`` tokens at
    position 0, then teacher-forced single-token decode steps; eager runs the whole sequence in one call with
    transformers' dynamic cache (``use_cache=True``: also right on releases whose uncached path is not, see
    ``kv-share-nocache``). Raises what the module raises (an out-of-bounds write).
    """
    import torch

    run = recipe_runner(exported)
    vocab = int(model.config.vocab_size)
    ids = torch.arange(prompt + steps, dtype=torch.long).remainder(vocab - 3).add(3).unsqueeze(0)
    with torch.no_grad():
        eager = model(input_ids=ids, use_cache=True).logits[0].float()
        out = run(ids[:, :prompt], torch.arange(prompt))
        worst = float((out[0, -1].float() - eager[prompt - 1]).abs().max())
        for pos in range(prompt, prompt + steps):
            out = run(ids[:, pos : pos + 1], torch.tensor([pos]))
            worst = max(worst, float((out[0, -1].float() - eager[pos]).abs().max()))
    return worst
