"""Real shapes built unit by unit (``models.lazy``): the whole model is never resident, and what is built is
the same function however it is materialized; large linears quantized in row chunks are bit-identical."""

from __future__ import annotations

import json

import pytest

from conftest import run_python


@pytest.fixture
def small_units(monkeypatch):
    """The tiny model's weights count as large (the real shapes' threshold would leave them all real)."""
    from gemma3n_export_fixes.models import lazy

    monkeypatch.setattr(lazy, "LARGE", 256)
    return lazy


def _build(lazy: bool = True):
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    return build_tiny_model(seed=0, lazy=lazy)


def _logits(model):
    import torch

    from gemma3n_export_fixes.models.tiny import tiny_input_ids

    with torch.no_grad():
        return model(tiny_input_ids(16)).logits


def test_large_weights_wait_on_the_meta_device_and_buffers_are_real(small_units, gemma3n_module):
    model = _build()
    meta = [name for name, p in model.named_parameters() if p.is_meta]
    assert meta and len(meta) < len(list(model.parameters()))  # small ones (norm scales) are real at once
    assert not [name for name, b in model.named_buffers() if b.is_meta]  # rotary frequencies, embed scales
    assert small_units.is_lazy(model) and model.lm_head.weight is model.model.embed_tokens.weight
    layers = model.model.layers
    small_units.materialize(model, layers[1])
    assert not any(p.is_meta for p in layers[1].parameters())
    assert all(any(p.is_meta for p in layer.parameters()) for i, layer in enumerate(layers) if i != 1)
    small_units.materialize(model)
    assert not small_units.is_lazy(model) and model.lm_head.weight is model.model.embed_tokens.weight


def test_values_do_not_depend_on_the_order_units_come_in(small_units, gemma3n_module):
    import torch

    at_once, reversed_units = _build(), _build()
    small_units.materialize(at_once)
    for layer in reversed(reversed_units.model.layers):
        small_units.materialize(reversed_units, layer)
    small_units.materialize(reversed_units)
    for (name, a), (_, b) in zip(at_once.state_dict().items(), reversed_units.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    table = at_once.model.embed_tokens.weight.detach()
    assert float(table[0].abs().max()) == 0.0  # the padding row, as transformers initialises it
    assert float(table[1:].float().std()) == pytest.approx(at_once.config.initializer_range, rel=0.1)
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    other_seed = build_tiny_model(seed=1, lazy=True)
    small_units.materialize(other_seed)
    assert not torch.equal(other_seed.model.embed_tokens.weight, table)


@pytest.mark.parametrize("quant, embeddings", [("8da4w", "4w"), ("none", "8w"), ("8da8w", "none")])
def test_quantizing_a_lazy_model_is_quantizing_the_materialized_one(quant, embeddings, small_units, gemma3n_module):
    import torch

    from gemma3n_export_fixes.export.quant import quantize

    lazy, whole = _build(), _build()
    small_units.materialize(whole)
    float_logits = _logits(whole)
    assert quantize(lazy, quant, embeddings, torch.float32) == quantize(whole, quant, embeddings, torch.float32)
    assert not small_units.is_lazy(lazy)
    assert torch.equal(_logits(lazy), _logits(whole))
    assert not torch.equal(_logits(whole), float_logits)  # the quantization did something


@pytest.mark.parametrize("scheme", ["8da4w", "8da8w"])
def test_a_large_linear_quantized_in_row_chunks_is_bit_identical(scheme, monkeypatch, gemma3n_module):
    import torch

    from gemma3n_export_fixes.export import quant
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    whole, chunked = (build_tiny_model(seed=0, init_dtype=torch.bfloat16) for _ in range(2))
    quant.quantize(whole, scheme, "4w", torch.float32)
    monkeypatch.setattr(quant, "ROW_CHUNK", 60)  # 256 head rows: four pieces of 60 and one of 16
    assert quant.is_row_chunked(chunked.lm_head, scheme)
    quant.quantize(chunked, scheme, "4w", torch.float32)
    a, b = whole.lm_head.weight, chunked.lm_head.weight
    assert type(a) is type(b) and a.shape == b.shape and a.__tensor_flatten__()[1] == b.__tensor_flatten__()[1]
    for name in a.__tensor_flatten__()[0]:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(_logits(whole), _logits(chunked))


def test_e2b_is_built_without_its_weights(gemma3n_module):
    """E2B (4.4B parameters) as the export loads it: its large weights on the meta device, a few hundred MB."""
    code = (
        "import json, resource; from gemma3n_export_fixes.models.sources import load_model\n"
        "m = load_model('e2b-shape', lazy=True).model\n"
        "real = sum(p.numel() for p in m.parameters() if not p.is_meta)\n"
        "total = sum(p.numel() for p in m.parameters())\n"
        "print(json.dumps({'real': real, 'total': total, 'peak_kb': resource.getrusage(0).ru_maxrss}))"
    )
    result = run_python(["-c", code], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["total"] > 4.4e9 and found["real"] < 1e-3 * found["total"]
    assert found["peak_kb"] < 1.5e6  # the bfloat16 model would be 8.9 GB; the interpreter with torch ~0.4 GB
