"""Property tests over random tiny configs, inputs and dtypes.

- gaussian-topk and altup-clamp: patched eager output is bit-identical to upstream eager output;
- kv-share-nocache: use_cache=False logits equal use_cache=True logits.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gemma3n_export_fixes as gx
from conftest import require_applied
from gemma3n_export_fixes.models.tiny import build_tiny_model
from strategies import tiny_overrides

DTYPES = st.sampled_from([torch.float32, torch.bfloat16])
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ids(seed: int, seq_len: int) -> torch.Tensor:
    return torch.randint(3, 64, (1, seq_len), generator=torch.Generator().manual_seed(seed))


@SETTINGS
@given(overrides=tiny_overrides(), dtype=DTYPES, seed=st.integers(0, 2**16), seq_len=st.integers(1, 20))
def test_gaussian_topk_patched_equals_upstream_exactly(gemma3n_module, overrides, dtype, seed, seq_len):
    require_applied("gaussian-topk")
    model = build_tiny_model(seed=seed, dtype=dtype, **overrides)
    ids = _ids(seed, seq_len)
    with torch.no_grad():
        patched = model(input_ids=ids, use_cache=True).logits
        with gx.unpatched(["gaussian-topk"]):
            upstream = model(input_ids=ids, use_cache=True).logits
    assert torch.equal(patched, upstream)


@SETTINGS
@given(
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=16, max_size=16),
    clip=st.sampled_from([0.01, 0.5, 120.0]),
)
def test_altup_correct_patched_equals_upstream_in_eval_and_leaves_the_parameter(
    gemma3n_module, dtype, seed, values, clip
):
    """Coefficients far outside the clip range: the same eval output, and no write to the parameter."""
    require_applied("altup-clamp")
    from gemma3n_export_fixes.models.tiny import tiny_text_config

    config = tiny_text_config(altup_coef_clip=clip)
    torch.manual_seed(seed)
    altup = gemma3n_module.Gemma3nTextAltUp(config).to(dtype).eval()
    with torch.no_grad():
        altup.correction_coefs.weight.copy_(torch.tensor(values).reshape(4, 4))
    before = altup.correction_coefs.weight.detach().clone()
    predictions = torch.randn(4, 1, 3, config.hidden_size, dtype=dtype)
    activated = torch.randn(1, 3, config.hidden_size, dtype=dtype)
    with torch.no_grad():
        patched = altup.correct(predictions, activated)
        assert torch.equal(altup.correction_coefs.weight, before)
        with gx.unpatched(["altup-clamp"]):
            upstream = altup.correct(predictions, activated)
    assert torch.equal(patched, upstream)


def test_altup_training_behaviour_stays_upstreams(gemma3n_module):
    require_applied("altup-clamp")
    from gemma3n_export_fixes.models.tiny import tiny_text_config

    config = tiny_text_config(altup_coef_clip=0.1)
    altup = gemma3n_module.Gemma3nTextAltUp(config).train()
    with torch.no_grad():
        altup.correction_coefs.weight.fill_(5.0)
    predictions, activated = torch.randn(4, 1, 3, 64), torch.randn(1, 3, 64)
    altup.correct(predictions, activated)
    assert float(altup.correction_coefs.weight.detach().max()) == pytest.approx(0.1)  # upstream clamps in training


@SETTINGS
@given(overrides=tiny_overrides(), dtype=DTYPES, seed=st.integers(0, 2**16), seq_len=st.integers(1, 24))
def test_uncached_logits_equal_cached_logits(gemma3n_module, overrides, dtype, seed, seq_len):
    """Holds on every release once the package is active (upstream from 5.6.0, the patch before)."""
    model = build_tiny_model(seed=seed, dtype=dtype, **overrides)
    ids = _ids(seed, seq_len)
    with torch.no_grad():
        cached = model(input_ids=ids, use_cache=True).logits
        uncached = model(input_ids=ids, use_cache=False).logits
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(uncached, cached, atol=tolerance, rtol=0)
