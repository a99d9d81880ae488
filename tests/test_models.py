"""Model sources: the tiny model's structure, the real E2B/E4B shapes (built on the meta device)."""

from __future__ import annotations

import pytest
import torch

from gemma3n_export_fixes.models.sources import SHAPES, load_model
from gemma3n_export_fixes.models.tiny import build_tiny_model, tiny_text_config


def _meta_model(overrides):
    from transformers import Gemma3nForCausalLM

    with torch.device("meta"):
        return Gemma3nForCausalLM(tiny_text_config(**overrides))


@pytest.mark.parametrize(
    ("shape", "total", "per_layer_table"),
    [("e2b-shape", 4.425e9, 30 * 256 * 262_144), ("e4b-shape", 6.835e9, 35 * 256 * 262_144)],
)
def test_real_shapes_have_the_expected_sizes(gemma3n_module, shape, total, per_layer_table):
    """E2B: 4.43B text parameters, of which the per-layer embedding table is 2.01B (45%).

    The seed model cards say 4.46B / 7.40B "text params"; counted from the configs it is 4.43B / 6.84B.
    """
    model = _meta_model(SHAPES[shape])
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - total) / total < 0.01, params
    assert model.model.embed_tokens_per_layer.weight.numel() == per_layer_table
    assert model.model.embed_tokens.weight.numel() == 262_400 * 2048


def test_e4b_shape_is_transformers_default_config(gemma3n_module):
    """transformers' Gemma3nTextConfig defaults are E4B's text config (layer_types aside: 4.53's default
    pattern puts the full layer first; the checkpoints' config.json lists it explicitly, 4 sliding then 1 full)."""
    from transformers import Gemma3nTextConfig

    default = Gemma3nTextConfig()
    for key, value in SHAPES["e4b-shape"].items():
        if key == "layer_types":
            continue
        got = getattr(default, key)
        got = list(got) if isinstance(got, (list, tuple)) else got
        expected = value if key != "intermediate_size" else [value] * default.num_hidden_layers
        assert got == expected, key


def test_tiny_has_every_structural_feature(gemma3n_module):
    model = build_tiny_model()
    config = model.config
    assert config.altup_num_inputs == 4 and config.laurel_rank > 0 and config.hidden_size_per_layer_input > 0
    assert set(config.layer_types) == {"sliding_attention", "full_attention"}
    shared = config.layer_types[config.num_hidden_layers - config.num_kv_shared_layers :]
    assert set(shared) == {"sliding_attention", "full_attention"}  # both kinds of KV-shared layer
    sparse = [p for p in config.activation_sparsity_pattern if p > 0]
    assert sparse and config.activation_sparsity_pattern[0] > 0  # _gaussian_topk runs on the first layers
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        assert not bool((flat == flat[0]).all()), f"{name} is constant: a path could hide"


def test_tiny_is_seeded(gemma3n_module):
    a, b = load_model("tiny").model, load_model("tiny").model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert load_model("tiny").config_hash == load_model("tiny").config_hash
