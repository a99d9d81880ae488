"""altup-clamp: no in-place write to ``correction_coefs`` in eval (transformers 4.53.0 - 5.0.0rc3).

Defect: ``Gemma3nTextAltUp.correct`` runs ``self.correction_coefs.weight.data.clamp_(...)`` in eval too:
an in-place write to a parameter inside forward. Non-strict ``torch.export`` fails ("fake tensor in the
exported program constant's list ... lifted_tensor_N" / "Constant ... is mutated in the forward method"),
and every eval forward silently rewrites the weights.

Fix: in eval, clamp out of place and use the clamped copy (as transformers 5.2.0 does in training, PR
#43801), so eval output equals upstream eval output even for coefficients outside ``altup_coef_clip``, and
the parameter is left untouched. In training the upstream function runs unchanged.

Why not the seed repo's ``if self.training and ...`` guard (what 5.0.0 and 5.1.0 shipped): it skips the
clamp in eval, which equals upstream eval output only while every coefficient lies inside the clip range.
"""

from __future__ import annotations

from collections.abc import Mapping

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.errors import first_line
from gemma3n_export_fixes.plugin.patch import Function, Patch, Reproduction, Target

PATH = "Gemma3nTextAltUp.correct"


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    import torch

    upstream_correct = originals[PATH]

    def correct(self: torch.nn.Module, predictions: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
        if self.training:
            return upstream_correct(self, predictions, activated)
        modalities = self.compute_router_modalities(activated)
        innovation = activated - predictions[self.config.altup_active_idx]
        innovation = innovation.repeat(self.config.altup_num_inputs, 1, 1, 1)
        if self.config.altup_coef_clip is not None:
            clip = self.config.altup_coef_clip
            weight = self.correction_coefs.weight.clamp(-clip, clip)
            all_coefs = torch.nn.functional.linear(modalities, weight, bias=None) + 1.0
        else:
            all_coefs = self.correction_coefs(modalities) + 1.0
        all_coefs = all_coefs.permute(2, 0, 1).unsqueeze(-1)
        corrected = torch.mul(innovation, all_coefs)
        corrected += predictions
        return corrected.contiguous().type_as(activated)

    correct.__qualname__ = "Gemma3nTextAltUp.correct"
    correct.__doc__ = upstream_correct.__doc__
    return {PATH: correct}


def reproduce() -> Reproduction:
    """Export ``Gemma3nTextAltUp.correct`` (non-strict, eval) with coefficients outside the clip range.

    Upstream: the export fails on the mutated parameter, and an eager eval call rewrites the weights.
    Fixed: exports, leaves the parameter untouched, and matches an out-of-place clamp.
    """
    import torch
    from transformers.models.gemma3n import modeling_gemma3n

    from gemma3n_export_fixes.models.tiny import tiny_text_config

    config = tiny_text_config()
    torch.manual_seed(0)
    altup = modeling_gemma3n.Gemma3nTextAltUp(config).eval()
    with torch.no_grad():
        altup.correction_coefs.weight.uniform_(-3 * config.altup_coef_clip, 3 * config.altup_coef_clip)
    before = altup.correction_coefs.weight.detach().clone()

    class Correct(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.altup = altup

        def forward(self, predictions: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
            return self.altup.correct(predictions, activated)

    example = (torch.randn(config.altup_num_inputs, 1, 3, config.hidden_size), torch.randn(1, 3, config.hidden_size))
    try:
        torch.export.export(Correct().eval(), example, strict=False)
    except Exception as exc:
        return Reproduction(True, f"torch.export: {first_line(exc)}", type(exc).__name__)
    with torch.no_grad():
        altup.correct(*example)
    if not torch.equal(altup.correction_coefs.weight, before):
        return Reproduction(True, "an eval forward clamped correction_coefs.weight in place", "parameter-mutated")
    return Reproduction(False, "eval forward left the parameter untouched and torch.export succeeded")


PATCH = Patch(
    id="altup-clamp",
    title="Gemma3nTextAltUp.correct without an in-place parameter write in eval",
    defect=(
        "correction_coefs.weight.data.clamp_() runs in eval: a parameter mutated inside forward; non-strict "
        "torch.export fails on the mutated lifted constant"
    ),
    needed_on=SpecifierSet(">=4.53.0,<=5.0.0rc3"),
    verified_through="5.0.0rc3",
    targets=(Target(PATH, {"826afbde0aea9afc": "4.53.0 - 5.0.0rc3"}),),
    build=build,
    reproduce=reproduce,
    upstream="fixed: 5.0.0 guards the clamp with self.training; 5.2.0 clamps out of place (PR #43801)",
)
