"""The upstream form of each fix still needed on the newest release, as exact text edits.

An edit is the fix as it should land in transformers (the best form for upstream, not a copy of our
monkeypatch), applied to ``modular_gemma3n.py`` (the source of truth) and, identically, to the generated
``modeling_gemma3n.py`` (the Gemma3nTextMLP code is copied verbatim by the modular converter). Each
replacement must match exactly once, so a changed upstream file fails loudly instead of being mis-edited.
"""

from __future__ import annotations

from collections.abc import Callable

GAUSSIAN_TOPK_INIT_ANCHOR = "        self.activation_sparsity = config.activation_sparsity_pattern[layer_idx]\n"
GAUSSIAN_TOPK_INIT_ADDED = (
    "        # Standard normal quantile of the target sparsity (jax.scipy.stats.norm.ppf), computed once with the\n"
    "        # standard library: no torch.distributions / erfinv in forward, so Dynamo (torch.export strict,\n"
    "        # torch.compile) can trace it and ExecuTorch can lower it.\n"
    "        self.std_multiplier = (\n"
    "            statistics.NormalDist().inv_cdf(self.activation_sparsity) if self.activation_sparsity > 0.0 else 0.0\n"
    "        )\n"
)
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
GAUSSIAN_TOPK_NEW_BODY = """        inputs_mean = torch.mean(inputs, dim=-1, keepdim=True)
        inputs_std = torch.std(inputs, dim=-1, keepdim=True, unbiased=False)
        cutoff_x = inputs_mean + inputs_std * self.std_multiplier
"""


class EditError(ValueError):
    """The upstream file no longer has the exact text an edit was written for."""


def replace_once(text: str, old: str, new: str, where: str) -> str:
    count = text.count(old)
    if count != 1:
        raise EditError(f"{where}: expected the text to edit exactly once, found it {count} times: {old[:60]!r}")
    return text.replace(old, new)


def gaussian_topk(source: str, where: str) -> str:
    """std_multiplier as a plain float computed at init with ``statistics.NormalDist``; forward uses it."""
    source = replace_once(source, "import math\n", "import math\nimport statistics\n", where)
    source = replace_once(
        source, GAUSSIAN_TOPK_INIT_ANCHOR, GAUSSIAN_TOPK_INIT_ANCHOR + GAUSSIAN_TOPK_INIT_ADDED, where
    )
    return replace_once(source, GAUSSIAN_TOPK_OLD_BODY, GAUSSIAN_TOPK_NEW_BODY, where)


#: patch id -> edit applied to both the modular and the modeling file.
EDITS: dict[str, Callable[[str, str], str]] = {"gaussian-topk": gaussian_topk}
