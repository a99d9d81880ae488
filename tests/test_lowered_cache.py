"""The lowered-program cache (``GEMMA3N_EXPORT_FIXES_LOWERED_CACHE``): what its key sees, and that a hit writes
the program the lowering writes."""

from __future__ import annotations

import json

import pytest
from test_commands import CLI

from conftest import run_python


def _exported(seed: int = 0, tweak: bool = False):
    import torch

    from gemma3n_export_fixes.export.program import TextOnlyLogits
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    model = build_tiny_model(seed=seed)
    if tweak:
        with torch.no_grad():
            model.lm_head.weight[0, 0] += 1e-3
    return torch.export.export(TextOnlyLogits.wrap(model), (torch.zeros(1, 8, dtype=torch.long),), strict=False)


def test_the_key_is_the_graph_and_its_weights_not_the_trace(gemma3n_module):
    from gemma3n_export_fixes.export.lowered_cache import _graphs_text, program_key

    # Nothing process-specific: transformers 4.57's vmap mask traces Python functions, whose repr is an address.
    assert " at 0x" not in _graphs_text(_exported())
    lowering = {"options": {"backend": "xnnpack"}, "forms": True, "shortcuts": True}
    key = program_key(_exported(), lowering, {})
    assert program_key(_exported(), lowering, {}) == key  # a second trace of the same model
    assert program_key(_exported(tweak=True), lowering, {}) != key  # one weight differs
    assert program_key(_exported(seed=1), lowering, {}) != key
    assert program_key(_exported(), {**lowering, "options": {"backend": "portable"}}, {}) != key
    assert program_key(_exported(), lowering, {"get_max_seq_len": 32}) != key
    assert program_key(_exported(), {**lowering, "forms": False}, {}) != key  # without the XNNPACK form rewrites


_STRICT_KEY = """
import torch
from gemma3n_export_fixes.export.lowered_cache import program_key

class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.where(x > 0, self.proj(x), x)

torch.manual_seed(0)
model = torch.nn.Sequential(Block(), Block())
length = torch.export.Dim("length", max=16)
exported = torch.export.export(model, (torch.ones(1, 3, 4),), dynamic_shapes=({1: length},), strict=True)
print(program_key(exported, {"options": {}}, {}))
"""


def test_the_key_of_a_strict_export_is_the_same_in_another_process():
    """Strict export (the KV-cache recipe's) keys ``nn_module_stack`` by the ``id()`` of each module and puts
    built-in functions' reprs (an address) in ``source_fn_stack``: the key must see neither, or no matrix cell
    ever finds the KV programs an earlier cell lowered."""
    keys = []
    for _ in range(2):
        result = run_python(["-c", _STRICT_KEY])
        assert result.returncode == 0, result.stderr[-2000:]
        keys.append(result.stdout.split()[-1])
    assert keys[0] == keys[1]


@pytest.mark.slow
def test_a_cache_hit_writes_the_lowered_program_and_is_validated_anew(tmp_path):
    """Portable fixed window (its lowering is byte-deterministic): the second export is a hit, writes the same
    bytes as the first, says so in its record, and ``validate`` passes on it."""
    # a fixed hash seed, as in a matrix cell: transformers 5.x's Gemma3nTextModel.forward computes the rotary
    # embeddings in the order of a set of layer-type strings, so the traced graph follows the seed
    env = {"GEMMA3N_EXPORT_FIXES_LOWERED_CACHE": str(tmp_path / "cache"), "PYTHONHASHSEED": "0"}
    args = ["--model", "tiny", "--fixed-window", "--recipe", "portable", "--qlinear", "none", "--qembedding", "none"]
    records = []
    for name in ("first", "second"):
        out = tmp_path / f"{name}.pte"
        result = run_python([*CLI, "export", *args, "--out", str(out)], env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        records.append(json.loads(out.with_suffix(".json").read_text()))
    first, second = records
    assert "cached" not in first["lowering"] and "lower" in first["seconds"]
    assert len(second["lowering"]["cached"]) == 64 and "lower" not in second["seconds"]
    assert second["pte"]["sha256"] == first["pte"]["sha256"]
    assert len(list((tmp_path / "cache").glob("*.pte"))) == 1
    result = run_python([*CLI, "validate", str(tmp_path / "second.pte"), "--model", "tiny"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
