"""Hypothesis strategies for random tiny Gemma 3n text configs (valid on every release with Gemma 3n)."""

from __future__ import annotations

from hypothesis import strategies as st

LAYER_TYPES = ("sliding_attention", "full_attention")


@st.composite
def tiny_overrides(draw: st.DrawFn) -> dict:
    """Overrides for :func:`gemma3n_export_fixes.models.tiny.tiny_text_config`: layers, sizes, sparsity, sharing."""
    producers = draw(st.lists(st.sampled_from(LAYER_TYPES), min_size=1, max_size=4))
    shared = draw(st.lists(st.sampled_from(sorted(set(producers))), min_size=0, max_size=3))
    layer_types = producers + shared
    heads = draw(st.sampled_from([1, 2]))
    head_dim = draw(st.sampled_from([8, 16]))
    sparsity = draw(
        st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.95]), min_size=len(layer_types), max_size=len(layer_types))
    )
    return {
        "num_hidden_layers": len(layer_types),
        "layer_types": layer_types,
        "num_kv_shared_layers": len(shared),
        "num_attention_heads": heads,
        "num_key_value_heads": 1,
        "head_dim": head_dim,
        "hidden_size": draw(st.sampled_from([16, 32])),
        "intermediate_size": draw(st.sampled_from([16, 48])),
        "hidden_size_per_layer_input": draw(st.sampled_from([4, 8])),
        "laurel_rank": draw(st.sampled_from([2, 4])),
        "sliding_window": draw(st.integers(2, 12)),
        "activation_sparsity_pattern": sparsity,
        "vocab_size": 64,
        "vocab_size_per_layer_input": 64,
    }
