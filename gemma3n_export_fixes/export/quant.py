"""Weight quantization for export, with ops the ExecuTorch runtime has kernels for.

Linears (``--qlinear``):

- ``8w``: torchao ``Int8WeightOnlyConfig`` (int8 per output channel). Runs on the portable path; the
  XNNPACK lowering fails, or the program fails at execute (an upstream defect, see the README).
- ``8da4w`` / ``8da8w``: torchao ``Int8DynamicActivationIntxWeightConfig``: activations int8 per token at run
  time, weights int4 in groups of :data:`GROUP_SIZE` (8da4w) or int8 per output channel (8da8w). XNNPACK
  consumes these as its dynamically quantized linear kernels. Linears whose input dimension is not a multiple
  of the group size stay in float; the export record lists them.

Under every scheme the AltUp coefficient linears (``altup.correction_coefs``, ``altup.prediction_coefs``: 4
inputs, 16 or 4 outputs per layer) stay float: Gemma 3n's code reads and clamps their ``weight`` directly,
which a quantized tensor does not support (on transformers < 5.0.0 every quantized export failed there).

Embeddings (``--qembedding``): ``embed_tokens`` and ``embed_tokens_per_layer`` (the largest tensor of
Gemma 3n: ~2.0B of E2B's ~4.4B parameters) become ``8w`` (int8 per row, ExecuTorch's
``quantized_decomposed::embedding_byte``) or ``4w`` (int4 in groups of :data:`GROUP_SIZE`, two per byte,
``quantized_decomposed::embedding_4bit``). torchao's ``IntxWeightOnlyConfig`` on embeddings leaves
``torchao::dequantize_affine`` in the graph, which has no ExecuTorch out variant ("Missing out variants"),
so the embedding path is done here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gemma3n_export_fixes.errors import require
from gemma3n_export_fixes.pte import load_quantized_kernels

if TYPE_CHECKING:
    import torch

LINEAR_QUANTS = ("none", "8w", "8da4w", "8da8w")
#: The linear schemes with int8 dynamic activations (torchao ``Int8DynamicActivationIntxWeightConfig``): their
#: weights are quantized per row, so they are quantized in row chunks and a reference dequantizes them once.
DYNAMIC_ACTIVATION_QUANTS = ("8da4w", "8da8w")
EMBEDDING_QUANTS = ("none", "8w", "4w")
#: Linears whose weight Gemma 3n's code reads directly (clamps): never quantized.
ALTUP_COEFFICIENTS = ("altup.correction_coefs", "altup.prediction_coefs")
#: Group size of int4 weights (linears and 4w embeddings), as in ExecuTorch's Llama recipes.
GROUP_SIZE = 32


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


#: Rows of an embedding table quantized at a time (bounds the float32 temporaries: 8192 x 7680 x 4 B = 252 MB).
CHUNK_ROWS = 8192


def quantize_table(
    weight: torch.Tensor, scheme: str, chunk_rows: int = CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``8w`` (int8 per row) or ``4w`` (int4 in groups of :data:`GROUP_SIZE`, two per byte, high nibble first)
    of an embedding table: (packed weights, float32 scales), computed ``chunk_rows`` rows at a time."""
    import torch

    rows, dim = weight.shape
    bits, group = (8, dim) if scheme == "8w" else (4, GROUP_SIZE if dim % GROUP_SIZE == 0 else dim)
    packed = torch.empty((rows, dim if bits == 8 else dim // 2), dtype=torch.int8 if bits == 8 else torch.uint8)
    scales = torch.empty((rows, dim // group), dtype=torch.float32)
    for start in range(0, rows, chunk_rows):
        stop = min(rows, start + chunk_rows)
        q, chunk_scales = _symmetric(weight[start:stop], bits, group)
        scales[start:stop] = chunk_scales
        if bits == 8:
            packed[start:stop] = q
        else:
            nibbles = (q.to(torch.int16) + 8).to(torch.uint8).reshape(stop - start, dim // 2, 2)
            packed[start:stop] = nibbles[:, :, 0] * 16 + nibbles[:, :, 1]
    return packed, scales


def _tracing(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` flows through a tracer (Dynamo, ``torch.export`` strict or not) rather than eager code."""
    import torch
    from torch._guards import detect_fake_mode

    return bool(torch.compiler.is_compiling() or detect_fake_mode([tensor]) is not None)


class QuantizedEmbeddingFactory:
    """Builds the quantized embedding module (kept out of import time: it subclasses ``torch.nn.Module``)."""

    @staticmethod
    def build(embedding: torch.nn.Embedding, scheme: str, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """``scheme`` copy of ``embedding``; its scales (and output) in ``dtype`` (default: the table's)."""
        import torch

        _embedding_ops()

        class QuantizedEmbedding(torch.nn.Module):
            """``scheme`` copy of ``embedding`` that keeps its forward (including Gemma 3n's ``embed_scale``)."""

            def __init__(self, source: torch.nn.Embedding) -> None:
                super().__init__()
                weight = source.weight.detach()
                dim = weight.shape[1]
                out_dtype = dtype or weight.dtype
                packed, scales = quantize_table(weight, scheme)
                self.register_buffer("qweight", packed)
                self.register_buffer("scales", scales.to(out_dtype))
                scale = getattr(source, "embed_scale", None)
                scale = None if scale is None else scale.detach().to(out_dtype)
                self.register_buffer("embed_scale", scale, persistent=False)
                self.embedding_dim = dim
                self.num_embeddings = weight.shape[0]

            def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
                ops = torch.ops.quantized_decomposed
                qweight, scales, ids = self.qweight, self.scales, input_ids
                if not _tracing(input_ids):
                    # eager (validate's reference): the ops' Python kernels dequantize the whole table per call
                    # (E2B's per-layer table: 8 GB in float32); each row is dequantized on its own, so gathering
                    # the looked-up rows first gives the same numbers. A traced program keeps the one op.
                    rows = input_ids.reshape(-1)
                    qweight, scales = qweight[rows], scales[rows]
                    ids = torch.arange(rows.numel(), device=rows.device).reshape(input_ids.shape)
                if scheme == "8w":
                    out = ops.embedding_byte.dtype(qweight, scales, None, -128, 127, ids, dtype=scales.dtype)
                else:
                    out = ops.embedding_4bit.dtype(qweight, scales, None, -8, 7, ids, dtype=scales.dtype)
                return out if self.embed_scale is None else out * self.embed_scale.to(out.dtype)

        return QuantizedEmbedding(embedding)


def quantize_embeddings(model: torch.nn.Module, scheme: str = "8w", dtype: torch.dtype | None = None) -> list[str]:
    """Replace every ``nn.Embedding`` of ``model`` by its ``scheme`` copy (scales in ``dtype``); returns the
    module names replaced. The float table is released as soon as nothing else holds it (a tied head does)."""
    from torch import nn

    if scheme == "4w":
        odd = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.embedding_dim % 2]
        if odd:
            raise ValueError(f"4w embeddings need an even embedding dim; {', '.join(odd)} have an odd one")
    from gemma3n_export_fixes.models.lazy import materialize

    names = [name for name, module in model.named_modules() if isinstance(module, nn.Embedding)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        materialize(model, getattr(parent, child))  # a lazily built table gets its values now (models.lazy)
        setattr(parent, child, QuantizedEmbeddingFactory.build(getattr(parent, child), scheme, dtype))
    return names


def _linear_config(scheme: str) -> object:
    import torch

    if scheme == "8w":
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da4w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(GROUP_SIZE))
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))


#: Linears with more output rows than this are quantized this many rows at a time (``8da4w``/``8da8w``: their
#: weights are quantized per row, so the pieces are exact): torchao's quantization of E2B's tied head in one go
#: (262,400 x 2,048, float32) took 4.3 GB of temporaries on top of the 2.1 GB weight (measured).
ROW_CHUNK = 32_768


def is_row_chunked(linear: torch.nn.Module, scheme: str) -> bool:
    """Whether :func:`quantize_linears` quantizes ``linear`` in row chunks (so it is cast chunk by chunk too)."""
    return scheme in DYNAMIC_ACTIVATION_QUANTS and linear.out_features > ROW_CHUNK


def _quantize_row_chunks(linear: torch.nn.Module, scheme: str, dtype: torch.dtype) -> None:
    """``linear``'s weight quantized ``ROW_CHUNK`` rows at a time, each cast to ``dtype`` on its own, then joined
    into one quantized weight: bit for bit what quantizing it whole gives (``tests/test_lazy.py``)."""
    import torch
    from torchao.quantization import quantize_

    weight = linear.weight.detach()
    rows, cols = weight.shape
    parts = []
    for start in range(0, rows, ROW_CHUNK):
        piece = torch.nn.Linear(cols, min(ROW_CHUNK, rows - start), bias=False, device="meta")
        piece.weight = torch.nn.Parameter(weight[start : start + ROW_CHUNK].to(dtype), requires_grad=False)
        quantize_(piece, _linear_config(scheme))
        parts.append(piece.weight)
    kind = type(parts[0])
    names, context = parts[0].__tensor_flatten__()
    inner = {name: torch.cat([getattr(part, name) for part in parts]) for name in names}
    del parts, weight
    joined = kind.__tensor_unflatten__(inner, context, torch.Size((rows, cols)), (cols, 1))
    linear.weight = torch.nn.Parameter(joined, requires_grad=False)
    if linear.bias is not None:
        linear.bias = torch.nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)


def quantize_linears(
    model: torch.nn.Module, scheme: str, skip: set[int] | None = None, dtype: torch.dtype | None = None
) -> tuple[list[str], list[str]]:
    """torchao quantization of the ``nn.Linear`` layers (in place; those in ``skip``, by id, untouched);
    returns (quantized, left in float). Linears with more than :data:`ROW_CHUNK` rows are quantized in row
    chunks, each cast to ``dtype`` (default: the weight's) first."""
    require("torchao", f"--quant {scheme}", "torchao")
    from torch import nn
    from torchao.quantization import quantize_

    skip = skip or set()
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in skip]
    chosen = {id(m) for name, m in linears if linear_is_quantized(name, m.in_features, scheme)}
    chunked = {id(m) for _, m in linears if id(m) in chosen and is_row_chunked(m, scheme)}
    for _, module in linears:
        if id(module) in chunked:
            _quantize_row_chunks(module, scheme, dtype or module.weight.dtype)
    whole = chosen - chunked
    if whole:
        quantize_(model, _linear_config(scheme), filter_fn=lambda module, fqn: id(module) in whole)
    return [n for n, m in linears if id(m) in chosen], [n for n, m in linears if id(m) not in chosen]


def dequantize_linears(model: torch.nn.Module, rows: int = ROW_CHUNK) -> int:
    """Dequantize each ``8da4w``/``8da8w`` linear of ``model`` once, for an eager reference that is run, never
    exported; returns how many. torchao's linear dequantizes its weight in every call (an E2B reference spent
    minutes per token there, most of it allocating and filling float copies of the weights). Here each weight
    is dequantized ``rows`` rows at a time into one tensor of its dtype, and a forward pre-hook applies torchao's
    own int8 per-token activation quantize-dequantize: the ops torchao's linear runs (activations, weight
    dequantize, ``F.linear``), so the same numbers (``tests/test_quant.py``), with the weights in float."""
    import torch
    from torchao.quantization.quantize_.workflows.intx import intx_unpacked_to_int8_tensor as intx

    def quantize_activations(_: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (intx._apply_int8_act_asym_per_token_quant_dequant(args[0]), *args[1:])

    done = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or not isinstance(weight, intx.IntxUnpackedToInt8Tensor):
            continue
        activations = weight.activation_quantization
        if activations not in (None, intx.IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN):
            continue  # a kind this reference does not know: left to torchao
        values = torch.empty(weight.shape, dtype=weight.dtype)
        for start in range(0, weight.shape[0], rows):
            values[start : start + rows] = weight[start : start + rows].dequantize()
        module.weight = torch.nn.Parameter(values, requires_grad=False)
        if activations is not None:
            module.register_forward_pre_hook(quantize_activations)
        done += 1
    return done


LINEAR_DESCRIPTIONS = {
    "8w": "int8 weight-only per output channel (torchao Int8WeightOnlyConfig)",
    "8da4w": f"int8 dynamic activations, int4 weights in groups of {GROUP_SIZE} (torchao)",
    "8da8w": "int8 dynamic activations, int8 weights per output channel (torchao)",
}
EMBEDDING_DESCRIPTIONS = {
    "8w": "int8 per row, quantized_decomposed::embedding_byte",
    "4w": f"int4 in groups of {GROUP_SIZE}, quantized_decomposed::embedding_4bit",
}


def decoder_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The decoder layers (the ``layers`` ModuleList), by name: the units the model is prepared in."""
    from torch import nn

    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "layers" and isinstance(module, nn.ModuleList):
            return [(f"{name}.{i}", layer) for i, layer in enumerate(module)]
    return []


def cast_floats(module: torch.nn.Module, dtype: torch.dtype, skip: set[int] | None = None) -> None:
    """Cast ``module``'s floating-point parameters and buffers to ``dtype`` in place, tensor by tensor (never a
    second copy of the whole module), leaving submodules in ``skip`` (ids) and quantized tensors alone."""
    import torch

    skip = skip or set()
    stack = [module]
    while stack:
        current = stack.pop()
        if id(current) in skip:
            continue
        stack.extend(current.children())
        for store in (current._parameters, current._buffers):
            for key, tensor in store.items():
                if tensor is None or type(tensor) not in (torch.Tensor, torch.nn.Parameter):
                    continue
                if tensor.is_floating_point() and tensor.dtype != dtype:
                    if isinstance(tensor, torch.nn.Parameter):
                        tensor.data = tensor.data.to(dtype)
                    else:
                        store[key] = tensor.to(dtype)


def quantize(model: torch.nn.Module, quant: str, embeddings: str, dtype: torch.dtype | None = None) -> list[str]:
    """Bring ``model`` to ``dtype`` and apply ``quant`` to the linears and ``embeddings`` to the embedding tables,
    unit by unit: the tables first (in row chunks), then each decoder layer (cast, then its linears quantized),
    then the rest. The model never exists in ``dtype`` as a whole unless nothing is quantized; a lazily built
    model (``models.lazy``) gets each unit's weights just before the unit is cast, so it never exists whole at
    all. Returns what was done, as lines for the export record."""
    import torch

    from gemma3n_export_fixes.models.lazy import materialize

    dtype = dtype or next(model.parameters()).dtype
    done = []
    if embeddings != "none":
        names = quantize_embeddings(model, embeddings, dtype)
        done.append(f"embeddings: {EMBEDDING_DESCRIPTIONS[embeddings]} ({', '.join(names)})")
    quantized: list[str] = []
    kept: list[str] = []
    layers = decoder_layers(model)
    with torch.no_grad():
        for prefix, layer in layers:
            materialize(model, layer)
            cast_floats(layer, dtype)
            if quant != "none":
                q, k = quantize_linears(layer, quant)
                quantized += [f"{prefix}.{n}" for n in q]
                kept += [f"{prefix}.{n}" for n in k]
        materialize(model)  # what is left: the AltUp and per-layer projections, the norms, the (tied) head
        chunked = {id(m) for m in model.modules() if isinstance(m, torch.nn.Linear) and is_row_chunked(m, quant)}
        cast_floats(model, dtype, skip={id(layer) for _, layer in layers} | chunked)  # those: chunk by chunk
        if quant != "none":
            in_layers = {id(m) for _, layer in layers for m in layer.modules()}
            q, k = quantize_linears(model, quant, skip=in_layers, dtype=dtype)
            quantized, kept = q + quantized, k + kept
    if quant != "none":
        line = f"linears ({len(quantized)}): {LINEAR_DESCRIPTIONS[quant]}"
        if kept:
            line += (
                f"; left in float (AltUp coefficients, or input dim not a multiple of {GROUP_SIZE}): {', '.join(kept)}"
            )
        done.insert(0, line)
    return done
