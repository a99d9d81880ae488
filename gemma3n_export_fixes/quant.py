"""Weight quantization for export, with ops the ExecuTorch runtime has kernels for.

- ``int8`` linears: torchao ``Int8WeightOnlyConfig`` (int8 per output channel). Exports and runs on the
  portable path; see the README for the XNNPACK status.
- int8 embeddings (``--quant-embeddings``): ``embed_tokens`` and ``embed_tokens_per_layer`` (the largest
  tensor of Gemma 3n: ~2.0B of E2B's ~4.4B parameters) become int8 per row, looked up with ExecuTorch's
  ``quantized_decomposed::embedding_byte`` kernel. torchao's ``IntxWeightOnlyConfig`` on embeddings leaves
  ``torchao::dequantize_affine`` in the graph, which has no ExecuTorch out variant ("Missing out variants"),
  so the embedding path is done here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gemma3n_export_fixes.errors import require

if TYPE_CHECKING:
    import torch


def _embedding_byte_ops() -> None:
    """Register ``quantized_decomposed::embedding_byte`` (AOT schema and kernels)."""
    import executorch.exir.passes._quant_patterns_and_replacements
    import executorch.kernels.quantized  # noqa: F401


def int8_embedding(embedding: torch.nn.Embedding) -> torch.nn.Module:
    """An int8 per-row copy of ``embedding`` that keeps its forward (including Gemma 3n's ``embed_scale``)."""
    import torch

    _embedding_byte_ops()

    class Int8Embedding(torch.nn.Module):
        def __init__(self, source: torch.nn.Embedding) -> None:
            super().__init__()
            weight = source.weight.detach().float()
            scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
            self.register_buffer("qweight", torch.round(weight / scales[:, None]).clamp(-128, 127).to(torch.int8))
            self.register_buffer("scales", scales.to(source.weight.dtype))
            scale = getattr(source, "embed_scale", None)
            self.register_buffer("embed_scale", None if scale is None else scale.detach().clone(), persistent=False)
            self.embedding_dim = source.embedding_dim
            self.num_embeddings = source.num_embeddings

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            out = torch.ops.quantized_decomposed.embedding_byte.dtype(
                self.qweight, self.scales, None, -128, 127, input_ids, dtype=self.scales.dtype
            )
            return out if self.embed_scale is None else out * self.embed_scale.to(out.dtype)

    return Int8Embedding(embedding)


def quantize_embeddings(model: torch.nn.Module) -> list[str]:
    """Replace every ``nn.Embedding`` of ``model`` by its int8 copy; returns the module names replaced."""
    from torch import nn

    names = [name for name, module in model.named_modules() if isinstance(module, nn.Embedding)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, int8_embedding(getattr(parent, child)))
    return names


def quantize_linears_int8(model: torch.nn.Module) -> None:
    """torchao int8 weight-only quantization of every ``nn.Linear`` (in place)."""
    require("torchao", "--quant int8", "torchao")
    from torch import nn
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, fqn: isinstance(module, nn.Linear))


def quantize(model: torch.nn.Module, quant: str, embeddings: bool) -> list[str]:
    """Apply ``quant`` (``none`` or ``int8``) to the linears and optionally int8 to the embeddings."""
    done = []
    if quant == "int8":
        quantize_linears_int8(model)
        done.append("linear weights: int8 per output channel (torchao Int8WeightOnlyConfig)")
    if embeddings:
        names = quantize_embeddings(model)
        done.append(f"embeddings: int8 per row, quantized_decomposed::embedding_byte ({', '.join(names)})")
    return done
