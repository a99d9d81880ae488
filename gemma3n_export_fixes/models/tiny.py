"""The built-in tiny Gemma 3n text decoder: random, seeded, small enough to export in seconds.

It has every structural feature of the real E2B text decoder that the fixes touch: AltUp with 4
inputs, LAuReL, per-layer inputs, activation sparsity on the first layers (so ``_gaussian_topk``
runs), sliding and full attention layers, and KV-shared last layers of both kinds. Parameters that
random init leaves constant (zeros or ones, e.g. the AltUp output scale) are perturbed, so every
path reaches the logits and a broken path cannot hide.

Works with every transformers release that has Gemma 3n (4.53.0 and later); imports torch and
transformers when called, not at import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

#: Layer pattern of the tiny model: two KV-shared layers at the end (one sliding, one full), whose
#: sources are layer 3 (sliding) and layer 2 (full).
TINY_LAYER_TYPES = (
    "sliding_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "sliding_attention",
    "full_attention",
)

TINY_DEFAULTS: dict[str, Any] = {
    "vocab_size": 256,
    "vocab_size_per_layer_input": 256,
    "hidden_size": 64,
    "hidden_size_per_layer_input": 16,
    "intermediate_size": 128,
    "num_hidden_layers": len(TINY_LAYER_TYPES),
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "layer_types": list(TINY_LAYER_TYPES),
    "sliding_window": 8,
    "num_kv_shared_layers": 2,
    "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0, 0.0, 0.0],
    "altup_num_inputs": 4,
    "laurel_rank": 8,
    "max_position_embeddings": 256,
}


def tiny_text_config(**overrides: Any) -> Gemma3nTextConfig:
    """A ``Gemma3nTextConfig`` for the tiny model; ``overrides`` replace any of :data:`TINY_DEFAULTS`."""
    from transformers import Gemma3nTextConfig

    values = {**TINY_DEFAULTS, **overrides}
    values["activation_sparsity_pattern"] = [float(x) for x in values["activation_sparsity_pattern"]]
    layers = values["num_hidden_layers"]
    for key in ("layer_types", "activation_sparsity_pattern"):
        if len(values[key]) != layers:
            raise ValueError(f"{key} needs {layers} values, got {len(values[key])}")
    return Gemma3nTextConfig(**values)


def perturb_constant_parameters(model: torch.nn.Module, generator: torch.Generator, scale: float = 0.1) -> int:
    """Add seeded noise to every parameter whose entries are all equal; returns how many changed.

    The test is ``min == max`` (no temporary the size of the tensor: the real shapes' tables are billions of
    elements)."""
    import torch

    changed = 0
    with torch.no_grad():
        for param in model.parameters():
            if param.is_meta:  # a lazily built weight (models.lazy): random when it gets its values
                continue
            flat = param.detach().reshape(-1)
            if flat.numel() and bool(torch.eq(*torch.aminmax(flat))):
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32) * scale
                param.add_(noise.to(param.dtype))
                changed += 1
    return changed


@contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Construct tensors in ``dtype`` inside the block (no float32 copy of a model ever exists)."""
    import torch

    if dtype is None:
        yield
        return
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_tiny_model(
    seed: int = 0,
    dtype: torch.dtype | None = None,
    init_dtype: torch.dtype | None = None,
    lazy: bool = False,
    **overrides: Any,
) -> Gemma3nForCausalLM:
    """The seeded tiny ``Gemma3nForCausalLM`` in eval mode (float32 unless ``dtype`` says otherwise).

    ``init_dtype``: build and initialise the weights in that dtype (the real shapes use bfloat16, the real
    checkpoints' dtype, so a 4.4B model never exists in float32); then ``dtype`` casts, if given.
    ``lazy``: build unit by unit (``models.lazy``): the large weights stay on the meta device until
    ``models.lazy.materialize`` gives them their (seeded) values; ``dtype`` must then be ``None``.
    """
    import torch
    from transformers import Gemma3nForCausalLM

    from gemma3n_export_fixes.models.lazy import build_lazy

    config = tiny_text_config(**overrides)
    torch.manual_seed(seed)
    with default_dtype(init_dtype):
        model = build_lazy(lambda: Gemma3nForCausalLM(config), seed) if lazy else Gemma3nForCausalLM(config)
    perturb_constant_parameters(model, torch.Generator().manual_seed(seed + 1))
    if dtype is not None:
        if lazy:
            raise ValueError("a lazily built model is cast unit by unit (export.quant.quantize), not as a whole")
        model = model.to(dtype)
    return model.eval()


def tiny_input_ids(seq_len: int = 32, seed: int = 0, vocab_size: int | None = None) -> torch.Tensor:
    """Seeded token ids of shape ``[1, seq_len]`` (no padding, no special tokens needed)."""
    import torch

    vocab = vocab_size or TINY_DEFAULTS["vocab_size"]
    return torch.randint(3, vocab, (1, seq_len), generator=torch.Generator().manual_seed(seed))
