"""Weight bytes of an exported program, computed per tensor from the config (no weights, no export).

Used for models too large to export here (``e2b-shape``, ``e4b-shape``). The model is built on PyTorch's
meta device (shapes only) and every parameter is priced by what the export stores for it:

- float tensors: 4 bytes (float32) or 2 (bfloat16) per element;
- ``--qembedding 8w``: 1 byte per element + one scale per row; ``4w``: half a byte per element + one
  scale per group of 32;
- ``--qlinear 8da4w``: half a byte per element + one scale per group of 32 for every linear whose input dim
  is a multiple of 32 (the others stay float); ``8da8w`` / ``int8``: 1 byte per element + one scale per
  output channel; the AltUp coefficient linears stay float (``quant.linear_is_quantized`` decides, for
  both the export and this table);
- scales: 4 bytes, except the per-group scales of ``8da4w`` linears, which XNNPACK's delegate payload stores as
  bfloat16 (2 bytes: ``NodeVisitor.get_quant_params``, ``per_channel_group``). Pricing them as torchao's
  float32 made the E2B figure 4.8% (150 MB) too high against the measured ``.pte``.

The tied ``lm_head`` shares ``embed_tokens``' tensor: stored once while both are float, twice once either
is quantized (the other keeps the float tensor). The program's graph, buffers and flatbuffer overhead are
not counted (about 0.3 MB for the tiny model; negligible at E2B size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gemma3n_export_fixes.export.quant import GROUP_SIZE, linear_is_quantized

if TYPE_CHECKING:
    import torch


@dataclass
class PricedTensor:
    name: str
    kind: str  # "embedding", "linear" or "other"
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def meta_model(spec: str) -> torch.nn.Module:
    """``tiny``, ``e2b-shape`` or ``e4b-shape`` on the meta device (no memory for weights)."""
    import torch
    from transformers import Gemma3nForCausalLM

    from gemma3n_export_fixes.models.sources import SHAPES
    from gemma3n_export_fixes.models.tiny import tiny_text_config

    config = tiny_text_config(**SHAPES.get(spec, {}))
    with torch.device("meta"):
        return Gemma3nForCausalLM(config)


def tensors(model: torch.nn.Module) -> tuple[list[PricedTensor], bool]:
    """Every parameter once, classified; and whether ``lm_head`` is tied to ``embed_tokens``."""
    from torch import nn

    seen: dict[int, PricedTensor] = {}
    for module_name, module in model.named_modules():
        kind = "embedding" if isinstance(module, nn.Embedding) else "linear" if isinstance(module, nn.Linear) else None
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            name = f"{module_name}.{pname}" if module_name else pname
            seen[id(param)] = PricedTensor(name, kind or "other", tuple(param.shape))
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    return list(seen.values()), tied


def _quantized_bytes(rows: int, cols: int, bits: int, group: int, scale_bytes: int) -> int:
    return rows * cols * bits // 8 + rows * (cols // group) * scale_bytes


def weight_bytes(spec: str, dtype: str = "float32", qlinear: str = "none", qembedding: str = "none") -> dict[str, Any]:
    """Bytes per category for ``spec`` exported with these options (see the module docstring for the rules)."""
    return {"model": spec, **price(meta_model(spec), dtype, qlinear, qembedding)}


def price(
    model: torch.nn.Module, dtype: str = "float32", qlinear: str = "none", qembedding: str = "none"
) -> dict[str, Any]:
    """Bytes per category of ``model``'s (float, unquantized) parameters stored with these options."""
    items, tied = tensors(model)
    fbytes = 4 if dtype == "float32" else 2
    by_kind = {"embedding": 0, "linear": 0, "other": 0}
    lm_head_rows_cols = None
    for t in items:
        if t.kind == "embedding":
            rows, cols = t.shape
            if qembedding == "8w":
                by_kind["embedding"] += _quantized_bytes(rows, cols, 8, cols, fbytes)
            elif qembedding == "4w":
                group = GROUP_SIZE if cols % GROUP_SIZE == 0 else cols
                by_kind["embedding"] += _quantized_bytes(rows, cols, 4, group, fbytes)
            else:
                by_kind["embedding"] += t.numel * fbytes
            if tied and t.name.endswith("embed_tokens.weight"):
                lm_head_rows_cols = (rows, cols)
        elif t.kind == "linear":
            by_kind["linear"] += _linear_bytes(t.name, t.shape, qlinear, fbytes)
        else:
            by_kind["other"] += t.numel * fbytes
    if lm_head_rows_cols is not None and (qlinear != "none" or qembedding != "none"):
        # the tied head is a second tensor once either side is quantized
        by_kind["linear"] += _linear_bytes("lm_head.weight", lm_head_rows_cols, qlinear, fbytes)
    parameters = sum(t.numel for t in items)
    return {"dtype": dtype, "qlinear": qlinear, "qembedding": qembedding, "parameters": parameters,
            "float_bytes": parameters * fbytes, "bytes": sum(by_kind.values()), "by_kind": by_kind}  # fmt: skip


#: XNNPACK serializes per-group (blockwise) weight scales as bfloat16.
XNNPACK_GROUP_SCALE_BYTES = 2


def _linear_bytes(name: str, shape: tuple[int, ...], quant: str, fbytes: int) -> int:
    out, inp = shape
    if not linear_is_quantized(name.removesuffix(".weight"), inp, quant):
        return out * inp * fbytes
    if quant == "8da4w":
        return _quantized_bytes(out, inp, 4, GROUP_SIZE, XNNPACK_GROUP_SCALE_BYTES)
    return _quantized_bytes(out, inp, 8, inp, 4)


#: The options the size table lists, as (dtype, linears, embeddings).
TABLE_OPTIONS = (
    ("float32", "none", "none"),
    ("bfloat16", "none", "none"),
    ("bfloat16", "8w", "none"),
    ("bfloat16", "8w", "8w"),
    ("float32", "8da8w", "8w"),
    ("float32", "8da4w", "8w"),
    ("float32", "8da4w", "4w"),
)
