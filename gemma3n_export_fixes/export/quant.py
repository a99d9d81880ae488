"""Weight quantization for export, with ops the ExecuTorch runtime has kernels for.

Linears (``--quant``):

- ``int8``: torchao ``Int8WeightOnlyConfig`` (int8 per output channel). Runs on the portable path; the
  XNNPACK program fails at execute (an upstream defect, see the README).
- ``8da4w`` / ``8da8w``: torchao ``Int8DynamicActivationIntxWeightConfig``: activations int8 per token at run
  time, weights int4 in groups of :data:`GROUP_SIZE` (8da4w) or int8 per output channel (8da8w). XNNPACK
  consumes these as its dynamically quantized linear kernels. Linears whose input dimension is not a multiple
  of the group size stay in float; the export record lists them.

Under every scheme the AltUp coefficient linears (``altup.correction_coefs``, ``altup.prediction_coefs``: 4
inputs, 16 or 4 outputs per layer) stay float: Gemma 3n's code reads and clamps their ``weight`` directly,
which a quantized tensor does not support (on transformers < 5.0.0 every quantized export failed there).

Embeddings (``--quant-embeddings``): ``embed_tokens`` and ``embed_tokens_per_layer`` (the largest tensor of
Gemma 3n: ~2.0B of E2B's ~4.4B parameters) become ``8w`` (int8 per row, ExecuTorch's
``quantized_decomposed::embedding_byte``) or ``4w`` (int4 in groups of :data:`GROUP_SIZE`, two per byte,
``quantized_decomposed::embedding_4bit``). torchao's ``IntxWeightOnlyConfig`` on embeddings leaves
``torchao::dequantize_affine`` in the graph, which has no ExecuTorch out variant ("Missing out variants"),
so the embedding path is done here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gemma3n_export_fixes.errors import require

if TYPE_CHECKING:
    import torch

LINEAR_QUANTS = ("none", "int8", "8da4w", "8da8w")
EMBEDDING_QUANTS = ("none", "8w", "4w")
#: Linears whose weight Gemma 3n's code reads directly (clamps): never quantized.
ALTUP_COEFFICIENTS = ("altup.correction_coefs", "altup.prediction_coefs")
#: Group size of int4 weights (linears and 4w embeddings), as in ExecuTorch's Llama recipes.
GROUP_SIZE = 32


def load_quantized_kernels() -> None:
    """Load ExecuTorch's quantized kernels (``quantized_decomposed::embedding_4bit`` and friends) into this
    process: a program with quantized embeddings fails without them (``embedding_4bit.dtype_out not found``);
    a device runner must link them the same way (``quantized_ops_lib``)."""
    import executorch.kernels.quantized  # noqa: F401


def _embedding_ops() -> None:
    """Register ``quantized_decomposed::embedding_{byte,4bit}`` (AOT schema and kernels)."""
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401

    load_quantized_kernels()


def linear_is_quantized(name: str, in_features: int, scheme: str) -> bool:
    """Whether ``scheme`` quantizes the linear called ``name`` (the rule both the export and ``sizes`` use).

    The AltUp coefficient linears stay float under every scheme; 8da4w needs an input dim that is a multiple
    of :data:`GROUP_SIZE`.
    """
    if scheme == "none" or name.endswith(ALTUP_COEFFICIENTS):
        return False
    return scheme != "8da4w" or in_features % GROUP_SIZE == 0


def _symmetric(weight: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of ``weight`` [rows, cols] in groups of ``group`` columns: (q int8, scales)."""
    import torch

    qmax = 2 ** (bits - 1) - 1
    rows, cols = weight.shape
    grouped = weight.float().reshape(rows, cols // group, group)
    scales = (grouped.abs().amax(dim=2) / qmax).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(grouped / scales[:, :, None]).clamp(-qmax - 1, qmax).to(torch.int8)
    return q.reshape(rows, cols), scales


class QuantizedEmbeddingFactory:
    """Builds the quantized embedding module (kept out of import time: it subclasses ``torch.nn.Module``)."""

    @staticmethod
    def build(embedding: torch.nn.Embedding, scheme: str) -> torch.nn.Module:
        import torch

        _embedding_ops()

        class QuantizedEmbedding(torch.nn.Module):
            """``scheme`` copy of ``embedding`` that keeps its forward (including Gemma 3n's ``embed_scale``)."""

            def __init__(self, source: torch.nn.Embedding) -> None:
                super().__init__()
                weight = source.weight.detach()
                dim = weight.shape[1]
                if scheme == "8w":
                    q, scales = _symmetric(weight, 8, dim)
                    self.register_buffer("qweight", q)
                else:
                    q, scales = _symmetric(weight, 4, GROUP_SIZE if dim % GROUP_SIZE == 0 else dim)
                    nibbles = (q.to(torch.int16) + 8).to(torch.uint8).reshape(weight.shape[0], dim // 2, 2)
                    self.register_buffer("qweight", nibbles[:, :, 0] * 16 + nibbles[:, :, 1])
                self.register_buffer("scales", scales.to(weight.dtype))
                scale = getattr(source, "embed_scale", None)
                self.register_buffer("embed_scale", None if scale is None else scale.detach().clone(), persistent=False)
                self.embedding_dim = dim
                self.num_embeddings = weight.shape[0]

            def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
                ops = torch.ops.quantized_decomposed
                if scheme == "8w":
                    out = ops.embedding_byte.dtype(
                        self.qweight, self.scales, None, -128, 127, input_ids, dtype=self.scales.dtype
                    )
                else:
                    out = ops.embedding_4bit.dtype(
                        self.qweight, self.scales, None, -8, 7, input_ids, dtype=self.scales.dtype
                    )
                return out if self.embed_scale is None else out * self.embed_scale.to(out.dtype)

        return QuantizedEmbedding(embedding)


def quantize_embeddings(model: torch.nn.Module, scheme: str = "8w") -> list[str]:
    """Replace every ``nn.Embedding`` of ``model`` by its ``scheme`` copy; returns the module names replaced."""
    from torch import nn

    if scheme == "4w":
        odd = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.embedding_dim % 2]
        if odd:
            raise ValueError(f"4w embeddings need an even embedding dim; {', '.join(odd)} have an odd one")
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Embedding)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantizedEmbeddingFactory.build(getattr(parent, child), scheme))
    return names


def quantize_linears(model: torch.nn.Module, scheme: str) -> tuple[list[str], list[str]]:
    """torchao quantization of the ``nn.Linear`` layers (in place); returns (quantized, left in float)."""
    require("torchao", f"--quant {scheme}", "torchao")
    import torch
    from torch import nn
    from torchao.quantization import quantize_

    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if scheme == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        config = Int8WeightOnlyConfig()
    else:
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig
        from torchao.quantization.granularity import PerAxis, PerGroup

        if scheme == "8da4w":
            config = Int8DynamicActivationIntxWeightConfig(
                weight_dtype=torch.int4, weight_granularity=PerGroup(GROUP_SIZE)
            )
        else:
            config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    chosen = {id(m) for name, m in linears if linear_is_quantized(name, m.in_features, scheme)}
    quantize_(model, config, filter_fn=lambda module, fqn: id(module) in chosen)
    return [n for n, m in linears if id(m) in chosen], [n for n, m in linears if id(m) not in chosen]


LINEAR_DESCRIPTIONS = {
    "int8": "int8 weight-only per output channel (torchao Int8WeightOnlyConfig)",
    "8da4w": f"int8 dynamic activations, int4 weights in groups of {GROUP_SIZE} (torchao)",
    "8da8w": "int8 dynamic activations, int8 weights per output channel (torchao)",
}
EMBEDDING_DESCRIPTIONS = {
    "8w": "int8 per row, quantized_decomposed::embedding_byte",
    "4w": f"int4 in groups of {GROUP_SIZE}, quantized_decomposed::embedding_4bit",
}


def quantize(model: torch.nn.Module, quant: str, embeddings: str) -> list[str]:
    """Apply ``quant`` to the linears and ``embeddings`` to the embedding tables; returns what was done."""
    done = []
    if quant != "none":
        quantized, kept = quantize_linears(model, quant)
        line = f"linears ({len(quantized)}): {LINEAR_DESCRIPTIONS[quant]}"
        if kept:
            line += (
                f"; left in float (AltUp coefficients, or input dim not a multiple of {GROUP_SIZE}): {', '.join(kept)}"
            )
        done.append(line)
    if embeddings != "none":
        names = quantize_embeddings(model, embeddings)
        done.append(f"embeddings: {EMBEDDING_DESCRIPTIONS[embeddings]} ({', '.join(names)})")
    return done
