"""End to end, as a user runs it: an export script like the seed repo's, in a subprocess that never
imports this package, yields a .pte whose ExecuTorch-runtime logits match eager use_cache=True logits;
with GEMMA3N_EXPORT_FIXES=0 the same script fails."""

from __future__ import annotations

import pytest
import torch

from conftest import SCRIPTS, run_python
from gemma3n_export_fixes.models.tiny import tiny_input_ids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seed_style_pte(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("e2e") / "tiny.pte"
    result = run_python([str(SCRIPTS / "seed_style_export.py"), str(tiny_checkpoint), str(out)])
    return result, out


def test_seed_style_export_runs_in_the_executorch_runtime_and_matches_eager(seed_style_pte, tiny_checkpoint):
    from executorch.runtime import Runtime
    from transformers import Gemma3nForCausalLM

    result, out = seed_style_pte
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hook-loaded: True" in result.stdout
    method = Runtime.get().load_program(str(out)).load_method("forward")
    ids = tiny_input_ids(32, seed=7)
    (logits,) = method.execute([ids])
    model = Gemma3nForCausalLM.from_pretrained(tiny_checkpoint).eval()
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=True).logits
    assert torch.isfinite(logits).all()
    assert float((logits - expected).abs().max()) < 1e-4
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))


def test_the_same_script_fails_with_the_fixes_turned_off(tmp_path, tiny_checkpoint):
    out = tmp_path / "unpatched.pte"
    result = run_python(
        [str(SCRIPTS / "seed_style_export.py"), str(tiny_checkpoint), str(out)], env={"GEMMA3N_EXPORT_FIXES": "0"}
    )
    assert result.returncode != 0
    assert "hook-loaded" not in result.stdout
    assert any(s in result.stderr for s in ("erfinv", "fake tensor in the exported program")), result.stderr[-2000:]
    assert not out.exists()
