"""Quantization: embedding tables (8w, 4w) and linears (8da4w, 8da8w, int8), eager and exported."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_commands import CLI

from conftest import run_python

pytest.importorskip("executorch", reason="the embedding ops are ExecuTorch's quantized_decomposed ops")


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 40),
    groups=st.integers(1, 4),
    scheme=st.sampled_from(["8w", "4w"]),
    scale=st.floats(1e-3, 50.0),
    seed=st.integers(0, 2**16),
)
def test_quantized_embedding_error_is_within_half_a_step(rows, groups, scheme, scale, seed):
    """Each looked-up value is within half a quantization step of the float one (and the packing is right)."""
    import torch

    from gemma3n_export_fixes.export.quant import GROUP_SIZE, QuantizedEmbeddingFactory

    torch.manual_seed(seed)
    embedding = torch.nn.Embedding(rows, groups * GROUP_SIZE)
    with torch.no_grad():
        embedding.weight.mul_(scale)
    quantized = QuantizedEmbeddingFactory.build(embedding, scheme)
    ids = torch.randint(0, rows, (1, 7))
    got, want = quantized(ids), embedding(ids)
    group = embedding.embedding_dim if scheme == "8w" else GROUP_SIZE
    qmax = 127 if scheme == "8w" else 7
    amax = embedding.weight.abs().reshape(rows, -1, group).amax(-1)  # per (row, group)
    step = (amax / qmax).repeat_interleave(group, dim=1)[ids[0]]
    assert bool(((got[0] - want[0]).abs() <= step / 2 + 1e-6 * scale).all())
    assert quantized.qweight.dtype == (torch.int8 if scheme == "8w" else torch.uint8)
    assert quantized.qweight.shape[1] == embedding.embedding_dim // (1 if scheme == "8w" else 2)


@pytest.mark.parametrize("scheme", ["8w", "4w"])
def test_eager_lookup_dequantizes_only_the_rows_it_reads(scheme):
    """Eager (validate's reference) gathers the looked-up rows before the op: bit-identical to the op on the
    whole table, which is what a traced program keeps (one op over the full table, strict and non-strict)."""
    import torch

    from gemma3n_export_fixes.export.quant import QuantizedEmbeddingFactory

    torch.manual_seed(0)
    quantized = QuantizedEmbeddingFactory.build(torch.nn.Embedding(300, 64), scheme, torch.float32)
    ids = torch.randint(0, 300, (2, 7))
    ops = torch.ops.quantized_decomposed
    name = "embedding_byte" if scheme == "8w" else "embedding_4bit"
    qmin, qmax, op = (-128, 127, ops.embedding_byte) if scheme == "8w" else (-8, 7, ops.embedding_4bit)
    whole = op.dtype(quantized.qweight, quantized.scales, None, qmin, qmax, ids, dtype=torch.float32)
    assert torch.equal(quantized(ids), whole)
    for strict in (False, True):
        graph = torch.export.export(quantized, (ids,), strict=strict).graph
        calls = [str(n.target) for n in graph.nodes if n.op == "call_function"]
        assert calls == [f"quantized_decomposed.{name}.dtype"], (strict, calls)


def test_embed_scale_is_kept(gemma3n_module):
    """Gemma 3n's scaled embeddings multiply the looked-up rows; the quantized copy must too."""
    import torch

    from gemma3n_export_fixes.export.quant import quantize_embeddings
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    model = build_tiny_model()
    ids = torch.tensor([[3, 9, 200]])
    before = model.model.embed_tokens(ids)
    names = quantize_embeddings(model, "8w")
    assert names == ["model.embed_tokens", "model.embed_tokens_per_layer"]
    after = model.model.embed_tokens(ids)
    assert float((after - before).abs().max()) < 0.02 * float(before.abs().max())


@pytest.mark.parametrize("scheme", ["8da4w", "8da8w"])
def test_linears_that_do_not_fit_the_group_stay_float(scheme, gemma3n_module):
    pytest.importorskip("torchao", reason="--quant needs torchao")
    from torch import nn

    from gemma3n_export_fixes.export.quant import ALTUP_COEFFICIENTS, GROUP_SIZE, quantize_linears
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    model = build_tiny_model()
    linears = {n: m.in_features for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    quantized, kept = quantize_linears(model, scheme)
    assert set(quantized) | set(kept) == set(linears) and not set(quantized) & set(kept)
    altup = [n for n in linears if n.endswith(ALTUP_COEFFICIENTS)]
    assert altup and set(altup) <= set(kept)  # Gemma 3n clamps their weights directly: always float
    if scheme == "8da4w":
        assert kept == [n for n, dim in linears.items() if dim % GROUP_SIZE or n in altup]
    else:
        assert kept == altup


@pytest.mark.parametrize("scheme", ["8da4w", "8da8w"])
def test_a_reference_dequantized_once_computes_what_torchao_computes(scheme, gemma3n_module):
    """``dequantize_linears`` (validate's reference) gives torchao's logits bit for bit, in row chunks too,
    and leaves no quantized linear behind."""
    pytest.importorskip("torchao", reason="--quant needs torchao")
    import torch

    from gemma3n_export_fixes.export.quant import dequantize_linears, quantize
    from gemma3n_export_fixes.models.tiny import build_tiny_model, tiny_input_ids

    model = build_tiny_model(seed=3)
    quantize(model, scheme, "4w", torch.float32)
    quantized = sum(type(m.weight) is not torch.nn.Parameter for m in model.modules() if isinstance(m, torch.nn.Linear))
    ids = tiny_input_ids(12, seed=5, vocab_size=model.config.vocab_size)
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        assert dequantize_linears(model, rows=7) == quantized > 0
        got = model(input_ids=ids, use_cache=False).logits
    assert all(type(m.weight) is torch.nn.Parameter for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert torch.equal(got, expected)
    assert dequantize_linears(model) == 0  # nothing quantized is left to do


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, gemma3n_module):
    """A 2-layer Gemma 3n (one sliding, one full layer): the quantized XNNPACK exports lower in a third of
    the tiny model's time."""
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("small-checkpoint")
    model = build_tiny_model(
        num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], num_kv_shared_layers=0,
        activation_sparsity_pattern=[0.95, 0.0],
    )  # fmt: skip
    model.save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.toolchain
def test_8da8w_with_8w_embeddings_on_xnnpack(small_checkpoint, tmp_path):
    pytest.importorskip("torchao", reason="--quant needs torchao")
    out = tmp_path / "q.pte"
    result = run_python([*CLI, "export", "--model", str(small_checkpoint), "--fixed-window", "--qlinear", "8da8w",
                         "--qembedding", "8w", "--recipe", "xnnpack", "--out", str(out)])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["options"]["qlinear"] == "8da8w" and any("int8 weights per output channel" in q
                                                         for q in record["quantized"])  # fmt: skip
    checked = run_python([*CLI, "validate", str(out), "--json"])
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    v = json.loads(checked.stdout)
    assert v["kind"] == "quantized" and v["top1_agreement"] >= 0.9 and v["max_abs_diff"] <= v["tolerance"]
    assert v["float_max_abs_diff"] > 0


@pytest.mark.slow
@pytest.mark.toolchain
def test_int8_on_xnnpack_still_fails_at_execute(small_checkpoint, tmp_path, gemma3n_module):
    """The upstream defect ``export`` refuses: int8 weight-only linears on XNNPACK. With our XNNPACK forms the
    lowering itself fails (ExecuTorch's ``ConvertToLinearPass`` hits a shape error); without
    them the program lowers and fails at execute. When this test fails, the defect is fixed upstream and the
    refusal can go."""
    pytest.importorskip("torchao", reason="--quant needs torchao")
    code = f"""
import gemma3n_export_fixes as gx; gx.apply()
from pathlib import Path
from gemma3n_export_fixes.export.options import ExportOptions
from gemma3n_export_fixes.export.program import export_pte
from gemma3n_export_fixes.models.sources import load_model
from gemma3n_export_fixes.runtime.loading import load_pte
from gemma3n_export_fixes.runtime.validation import validate
out = Path({str(tmp_path / "int8.pte")!r})
try:
    export_pte(load_model({str(small_checkpoint)!r}), out,
               ExportOptions(recipe="xnnpack", qlinear="8w", qembedding="none", kv_cache=False,
                             allow_known_broken=True))
except Exception as exc:
    print("FAILS at lowering:", repr(exc)[:300])
else:
    try:
        validate(load_pte(out), load_model({str(small_checkpoint)!r}), kind="quantized")
    except Exception as exc:
        print("FAILS at execute:", exc)
    else:
        print("RUNS")
"""
    result = run_python(["-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    lowering = "FAILS at lowering: Exception(\"An error occurred when running the 'ConvertToLinearPass' pass"
    execute = "FAILS at execute: the ExecuTorch runtime failed to run the program"
    assert lowering in result.stdout or execute in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("scheme", ["8w", "4w", "none"])
def test_the_runtime_has_the_quantized_embedding_kernels(scheme):
    """After ``load_quantized_kernels``, ExecuTorch's Python runtime has the kernels quantized embeddings call
    (``load_program`` refuses a program in one line where it has not: the runtime imported after the kernels
    on ExecuTorch 1.0.1, the matrix's seed row)."""
    pytest.importorskip("executorch", reason="executorch is not installed")
    from gemma3n_export_fixes.runtime.loading import missing_embedding_kernel

    assert missing_embedding_kernel(scheme) is None
