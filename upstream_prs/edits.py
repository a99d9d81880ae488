"""The upstream form of each fix still needed on the newest release, as exact text edits.

An edit is the fix as it should land in transformers (the best form for upstream, not a copy of our
monkeypatch), applied to ``modular_gemma3n.py`` (the source of truth) and, identically, to the generated
``modeling_gemma3n.py`` (the Gemma3nTextMLP code is copied verbatim by the modular converter). Each
replacement must match exactly once, so a changed upstream file fails loudly instead of being mis-edited.
"""

from __future__ import annotations

from collections.abc import Callable

GAUSSIAN_TOPK_INIT_ANCHOR = "        self.activation_sparsity = config.activation_sparsity_pattern[layer_idx]\n"
GAUSSIAN_TOPK_INIT_ADDED = """\
        # std_multiplier is adapted from jax.scipy.stats.norm.ppf(): torch.distributions.normal.Normal(0, 1).icdf()
        # of the target sparsity, written out with the same float32 ops, so the value is bit-identical. It depends
        # only on the config, so it is computed once here, on the CPU (this also works on the meta device), instead
        # of in every forward, where aten.erfinv (not in the core ATen opset) stops lowering to ExecuTorch and
        # torch.distributions (on Dynamo's skip list) stops strict torch.export.
        #
        # References:
        #   *   https://docs.jax.dev/en/latest/_autosummary/jax.scipy.stats.norm.ppf.html
        #   *   https://pytorch.org/docs/stable/distributions.html#torch.distributions.normal.Normal
        self.std_multiplier = 0.0
        if self.activation_sparsity > 0.0:
            target_sparsity_tensor = torch.tensor(self.activation_sparsity, dtype=torch.float32, device="cpu")
            self.std_multiplier = (torch.erfinv(2 * target_sparsity_tensor - 1) * math.sqrt(2)).item()
"""
GAUSSIAN_TOPK_OLD_BODY = """        target_sparsity_tensor = torch.tensor(self.activation_sparsity, dtype=torch.float32, device=inputs.device)
        # normal_dist and std_multiplier are adapted from jax.scipy.stats.norm.ppf().
        #
        # References:
        #   *   https://docs.jax.dev/en/latest/_autosummary/jax.scipy.stats.norm.ppf.html
        #   *   https://pytorch.org/docs/stable/distributions.html#torch.distributions.normal.Normal
        #   *   https://pytorch.org/docs/stable/distributions.html#torch.distributions.transformed_distribution.TransformedDistribution.icdf
        normal_dist = torch.distributions.normal.Normal(0, 1)
        std_multiplier: torch.Tensor = normal_dist.icdf(target_sparsity_tensor)
        std_multiplier = std_multiplier.type(inputs.dtype)
        inputs_mean = torch.mean(inputs, dim=-1, keepdim=True)
        inputs_std = torch.std(inputs, dim=-1, keepdim=True, unbiased=False)
        cutoff_x = inputs_mean + inputs_std * std_multiplier
"""
GAUSSIAN_TOPK_NEW_BODY = """\
        # A 0-d tensor of the input dtype, as before (not a Python scalar): the same rounding in every dtype.
        std_multiplier = torch.full((), self.std_multiplier, dtype=inputs.dtype, device=inputs.device)
        inputs_mean = torch.mean(inputs, dim=-1, keepdim=True)
        inputs_std = torch.std(inputs, dim=-1, keepdim=True, unbiased=False)
        cutoff_x = inputs_mean + inputs_std * std_multiplier
"""


class EditError(ValueError):
    """The upstream file no longer has the exact text an edit was written for."""


def replace_once(text: str, old: str, new: str, where: str) -> str:
    count = text.count(old)
    if count != 1:
        raise EditError(f"{where}: expected the text to edit exactly once, found it {count} times: {old[:60]!r}")
    return text.replace(old, new)


def gaussian_topk(source: str, where: str) -> str:
    """std_multiplier: upstream's float32 quantile computed once at init, as a Python float; forward casts it to
    the input dtype as upstream does (bit-identical in float32, bfloat16 and float16)."""
    source = replace_once(
        source, GAUSSIAN_TOPK_INIT_ANCHOR, GAUSSIAN_TOPK_INIT_ANCHOR + GAUSSIAN_TOPK_INIT_ADDED, where
    )
    return replace_once(source, GAUSSIAN_TOPK_OLD_BODY, GAUSSIAN_TOPK_NEW_BODY, where)


ROTARY_ORDER_OLD = """\
        for layer_type in set(self.config.layer_types):
            position_embeddings[layer_type] = self.rotary_emb(hidden_states, position_ids, layer_type)
"""
ROTARY_ORDER_NEW = """\
        # sorted: a set of strings iterates in the order of the process's hash seed (PYTHONHASHSEED), and the
        # order of these calls is the order of the traced graph's nodes (same model, different exported bytes)
        for layer_type in sorted(set(self.config.layer_types)):
            position_embeddings[layer_type] = self.rotary_emb(hidden_states, position_ids, layer_type)
"""


def rotary_order(source: str, where: str) -> str:
    """The rotary embeddings in sorted layer-type order (``Gemma3nRotaryEmbedding``'s own), not a set's."""
    return replace_once(source, ROTARY_ORDER_OLD, ROTARY_ORDER_NEW, where)


#: patch id -> edit applied to both the modular and the modeling file.
EDITS: dict[str, Callable[[str, str], str]] = {"gaussian-topk": gaussian_topk, "rotary-order": rotary_order}
