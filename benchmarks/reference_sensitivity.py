"""How far the eager reference's own logits move when its first decoder layer's output is perturbed by a relative
noise of eps: the floor below which a program-vs-reference logit difference says nothing about the export.

    python benchmarks/reference_sensitivity.py --model e2b-shape [--qlinear 8da4w --qembedding 4w]

The reference is ``validate``'s (``runtime.validation.reference_model``: the eager model in the program's dtype,
quantized the same way). One prefill of 12 seeded tokens without a cache, then the same with noise of relative
size eps (1e-4, 1e-3, 1e-2; seeded) multiplied into layer 0's output. Prints one JSON line per eps: mean and max
abs logit change and top-1 agreement. On random weights, int8 per-token activation quantization and Gemma 3n's
gaussian top-k (0.95 sparsity in E2B's first 10 layers) are discontinuous, so the floor does not shrink with eps.
E2B needs ~12 GB.
"""

from __future__ import annotations

import argparse
import json


def perturbation(eps: float) -> object:
    """A forward hook multiplying a module's output by ``1 + eps * N(0, 1)`` (seeded)."""
    import torch

    noise = torch.Generator().manual_seed(1)

    def perturb(_module: object, _inputs: object, out: torch.Tensor) -> torch.Tensor:
        return out * (1 + eps * torch.randn(out.shape, generator=noise, dtype=out.dtype))

    return perturb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="e2b-shape", help="tiny, e2b-shape, e4b-shape or a checkpoint directory")
    parser.add_argument("--qlinear", default="8da4w")
    parser.add_argument("--qembedding", default="4w")
    parser.add_argument("--tokens", type=int, default=12)
    args = parser.parse_args()

    import torch

    import gemma3n_export_fixes as gx
    from gemma3n_export_fixes.cli.stack import import_gemma3n
    from gemma3n_export_fixes.export.options import ExportOptions
    from gemma3n_export_fixes.models.tiny import tiny_input_ids
    from gemma3n_export_fixes.runtime.validation import reference_model
    from gemma3n_export_fixes.versions import stack_versions

    import_gemma3n(stack_versions())
    gx.apply()
    options = ExportOptions(qlinear=args.qlinear, qembedding=args.qembedding)
    reference = reference_model(args.model, options)
    model = reference.model
    ids = tiny_input_ids(args.tokens, seed=7, vocab_size=reference.vocab_size)
    with torch.no_grad():
        base = model(input_ids=ids, use_cache=False).logits.float()
        print(json.dumps({"model": args.model, "options": options.describe(), "logit_std": float(base.std())}))
        for eps in (1e-4, 1e-3, 1e-2):
            hook = model.model.layers[0].register_forward_hook(perturbation(eps))
            got = model(input_ids=ids, use_cache=False).logits.float()
            hook.remove()
            change = (got - base).abs()
            top1 = float((got.argmax(-1) == base.argmax(-1)).float().mean())
            print(json.dumps({"eps": eps, "mean_abs": float(change.mean()), "max_abs": float(change.max()),
                              "top1": top1}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
