"""Compare a draft's ``Gemma3nTextMLP._gaussian_topk`` with upstream's, bit for bit, in every float dtype.

    GEMMA3N_EXPORT_FIXES=0 python -m upstream_prs.numerics [PATCH_FILE] [--runtime]   -> JSON on stdout

The draft (default: ``upstream_prs/gaussian-topk/0001-gemma3n-gaussian-topk.patch``) is applied to a copy of
the installed transformers' Gemma 3n sources and imported next to the installed (upstream) module; with
``--runtime`` the package's own runtime patch (``gemma3n_export_fixes.plugin.patches.gaussian_topk``) is measured too.
Both run on the same 1,048,576 standard normal values (``torch.randn(256, 4096)``, seed 0, cast to the dtype)
at the Gemma 3n sparsity 0.95 (and on 64 rows at a sweep of other sparsity values). Per dtype: how many
keep/drop decisions (output > 0) differ from upstream, the largest absolute difference, and whether the two
outputs are bit-identical. Also: the draft's init-time multiplier against ``Normal(0, 1).icdf`` on a grid of
sparsity values, and built on the meta device and under a bfloat16 default dtype.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PATCH = HERE / "gaussian-topk" / "0001-gemma3n-gaussian-topk.patch"
DTYPES = ("float32", "bfloat16", "float16")
SWEEP = (0.05, 0.1, 0.25, 0.5, 0.6, 0.75, 0.8, 0.9, 0.95, 0.975, 0.99, 0.999)


def compare(reference, candidate) -> dict:
    import torch

    ref_keep, cand_keep = reference > 0, candidate > 0
    return {
        "flips": int((ref_keep != cand_keep).sum()),
        "elements": reference.numel(),
        "max_abs_diff": float((reference.float() - candidate.float()).abs().max()),
        "bit_identical": bool(torch.equal(reference.view(torch.int16 if reference.itemsize == 2 else torch.int32),
                                          candidate.view(torch.int16 if candidate.itemsize == 2 else torch.int32))),
    }  # fmt: skip


def measure(patch_file: Path, runtime: bool) -> dict:
    import torch
    import transformers.models.gemma3n.modeling_gemma3n as upstream

    from upstream_prs.apply_check import load_draft

    if "gemma3n_export_fixes.plugin.engine" in sys.modules:
        raise SystemExit("run with GEMMA3N_EXPORT_FIXES=0: upstream must be unpatched")
    draft = load_draft(patch_file)

    candidates = {"draft": draft.Gemma3nTextMLP}
    if runtime:
        from gemma3n_export_fixes.plugin.patches import gaussian_topk

        fixed = gaussian_topk.build({gaussian_topk.PATH: upstream.Gemma3nTextMLP._gaussian_topk})[gaussian_topk.PATH]
        candidates["runtime"] = type("RuntimePatched", (upstream.Gemma3nTextMLP,), {"_gaussian_topk": fixed})

    def mlp(cls, sparsity):
        config = upstream.Gemma3nTextConfig(
            vocab_size=64, vocab_size_per_layer_input=64, hidden_size=32, hidden_size_per_layer_input=8,
            intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
            laurel_rank=4, num_kv_shared_layers=0, layer_types=["sliding_attention", "full_attention"],
            activation_sparsity_pattern=[sparsity, 0.0],
        )  # fmt: skip
        return cls(config, layer_idx=0).eval()

    values = torch.randn(256, 4096, generator=torch.Generator().manual_seed(0))
    out: dict = {"torch": torch.__version__, "input": "torch.randn(256, 4096), seed 0", "sparsity_0.95": {}}
    with torch.no_grad():
        reference = mlp(upstream.Gemma3nTextMLP, 0.95)
        for name, cls in candidates.items():
            module = mlp(cls, 0.95)
            out["sparsity_0.95"][name] = {
                dtype: compare(reference._gaussian_topk(x), module._gaussian_topk(x))
                for dtype in DTYPES
                for x in [values.to(getattr(torch, dtype))]
            }
            out.setdefault("sweep_not_bit_identical", {})[name] = [
                f"{s} {dtype}"
                for s in SWEEP
                for dtype in DTYPES
                for x in [values[:64].to(getattr(torch, dtype))]
                if not compare(mlp(upstream.Gemma3nTextMLP, s)._gaussian_topk(x),
                               mlp(cls, s)._gaussian_topk(x))["bit_identical"]
            ]  # fmt: skip
        # The draft's init-time multiplier vs upstream's Normal(0, 1).icdf in float32, on a dense grid; and built on
        # the meta device / under a bfloat16 default dtype (as from_pretrained does).
        grid = [i / 1000 for i in range(1, 1000)]
        normal = torch.distributions.normal.Normal(0, 1)
        icdf = {s: normal.icdf(torch.tensor(s, dtype=torch.float32)).item() for s in grid}
        mismatches = [s for s in grid if mlp(draft.Gemma3nTextMLP, s).std_multiplier != icdf[s]]
        out["multiplier_vs_icdf_float32"] = f"{len(mismatches)} of {len(grid)} sparsity values (0.001 ... 0.999) differ"
        with torch.device("meta"):
            meta = mlp(draft.Gemma3nTextMLP, 0.95).std_multiplier
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            bf16_default = mlp(draft.Gemma3nTextMLP, 0.95).std_multiplier
        finally:
            torch.set_default_dtype(default)
        out["init_on_meta_device_ok"] = meta == icdf[0.95]
        out["init_under_bfloat16_default_dtype_ok"] = bf16_default == icdf[0.95]
    return out


def main(argv: list[str]) -> int:
    runtime = "--runtime" in argv
    paths = [Path(a).resolve() for a in argv if not a.startswith("--")]
    if os.environ.get("GEMMA3N_EXPORT_FIXES") != "0":
        raise SystemExit("run with GEMMA3N_EXPORT_FIXES=0: upstream must be unpatched")
    print(json.dumps(measure(paths[0] if paths else DEFAULT_PATCH, runtime), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
