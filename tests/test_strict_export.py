"""Strict ``torch.export`` without Dynamo's clone of every weight (the registry's ``weights-not-cloned``).

The tiny model, quantized the way ``export`` does (8da4w linears are torchao tensor subclasses, 4w tables are
buffers), exported through the KV-cache recipe with and without the patch: the same program, and Dynamo clones
none of the model's weights with it (at least half of them without). The memory it saves at size is a benchmark
figure (``benchmarks/real_size.py``), not asserted here.
"""

from __future__ import annotations

import pytest

from conftest import require_kv_cache

torch = pytest.importorskip("torch")
pytest.importorskip("torchao", reason="torchao is not installed")


def _export(patched: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[object, int, int, bool]:
    """The recipe program of the quantized tiny model, how many of its weights Dynamo cloned, how many it has, and
    whether the patch applied."""
    from torch._dynamo.variables import builder

    from gemma3n_export_fixes.export.quant import quantize
    from gemma3n_export_fixes.models.recipe import export_recipe
    from gemma3n_export_fixes.models.sources import load_model
    from gemma3n_export_fixes.plugin import exporting

    model = load_model("tiny").model
    quantize(model, "8da4w", "4w", torch.float32)
    weights = {id(t) for t in (*model.parameters(), *model.buffers())}
    cloned: list[int] = []
    clone = builder.clone_input

    def counted(value, *args, **kwargs):  # type: ignore[no-untyped-def]  # the real clone, after a note
        if id(value) in weights:
            cloned.append(id(value))
        return clone(value, *args, **kwargs)

    monkeypatch.setattr(builder, "clone_input", counted)
    original = builder._clone_input
    with exporting(model, ids=["weights-not-cloned"] if patched else []) as statuses:
        applied = bool(statuses) and statuses[0].applied
        exported = export_recipe(model, 16)
    assert builder._clone_input is original
    monkeypatch.undo()
    return exported, len(set(cloned)), len(weights), applied


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values; a torchao tensor subclass (no ``aten.equal``) compared through its inner tensors."""
    if type(a) is not type(b):
        return False
    if hasattr(a, "__tensor_flatten__") and type(a) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = a.__tensor_flatten__()
        return all(_same(getattr(a, n), getattr(b, n)) for n in names)
    return torch.equal(a, b)


@pytest.mark.slow
def test_the_trace_is_the_same_without_the_weight_clones(gemma3n_module, monkeypatch):
    require_kv_cache()
    plain, plain_clones, weights, _ = _export(False, monkeypatch)
    shared, shared_clones, _, applied = _export(True, monkeypatch)
    assert applied, "weights-not-cloned does not apply to this torch: see `gemma3n-export-fixes status`"
    assert plain_clones >= weights // 2 > 0  # without: Dynamo clones the weights it meets
    # builder's one call site of clone_input is _clone_input, which the patch short-cuts for these ids: zero
    # shows no other path (a newer torch's second call site, say) still clones a weight
    assert shared_clones == 0
    assert shared.graph_module.code == plain.graph_module.code
    assert str(shared.graph_signature) == str(plain.graph_signature)
    assert shared.state_dict.keys() == plain.state_dict.keys()
    for name, tensor in plain.state_dict.items():
        assert _same(shared.state_dict[name], tensor), name
    from gemma3n_export_fixes.models.recipe import recipe_runner

    ids, positions = torch.arange(2).unsqueeze(0) + 3, torch.arange(2)
    assert torch.equal(recipe_runner(shared)(ids, positions), recipe_runner(plain)(ids, positions))
