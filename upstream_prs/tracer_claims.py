"""What each tracer does with upstream's ``Gemma3nTextMLP._gaussian_topk`` and with the draft's, on this stack.

    GEMMA3N_EXPORT_FIXES=0 python -m upstream_prs.tracer_claims [PATCH_FILE]   -> JSON on stdout

For a sparse (0.95) ``Gemma3nTextMLP``, upstream (the installed transformers) and the draft (the patch applied
to a copy of its sources): ``torch.compile(fullgraph=True)`` (``eager`` backend: Dynamo only, and ``inductor``),
``torch.export`` strict and non-strict (and whether ``aten.erfinv`` is in the graph), and ``to_edge`` of the
non-strict program. Each outcome is ``ok`` or the exception's type and first line. Every check runs in a fresh
process: on torch 2.13.0 the outcome of a strict export depends on what ran before it in the process (after a
``torch.compile`` of the module, strict export of upstream's code succeeds; in a fresh process it fails); the
last entry, ``strict export after torch.compile``, shows that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PATCH = HERE / "gaussian-topk" / "0001-gemma3n-gaussian-topk.patch"


def outcome(func) -> str:
    try:
        result = func()
    except Exception as exc:
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:240]}"
    return result if isinstance(result, str) else "ok"


CHECKS = (
    "torch.compile(fullgraph=True, backend='eager')",
    "torch.compile(fullgraph=True, backend='inductor')",
    "torch.export(strict=True)",
    "torch.export(strict=False)",
    "to_edge(export(strict=False)).to_executorch()",
    "torch.export(strict=True) after torch.compile in the same process",
)


def probe(module_cls, check: str) -> str:
    import torch
    from transformers import Gemma3nTextConfig

    config = Gemma3nTextConfig(
        vocab_size=64, vocab_size_per_layer_input=64, hidden_size=32, hidden_size_per_layer_input=8,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        laurel_rank=4, num_kv_shared_layers=0, layer_types=["sliding_attention", "full_attention"],
        activation_sparsity_pattern=[0.95, 0.0],
    )  # fmt: skip
    torch.manual_seed(0)
    mlp = module_cls(config, layer_idx=0).eval()
    x = torch.randn(1, 4, 32)
    with torch.no_grad():
        eager = mlp(x)

    def compiled(backend):
        def run():
            torch._dynamo.reset()
            torch.testing.assert_close(torch.compile(mlp, fullgraph=True, backend=backend)(x), eager)

        return run

    def export(strict):
        def run():
            program = torch.export.export(mlp, (x,), strict=strict)
            torch.testing.assert_close(program.module()(x), eager)
            return "ok, graph has aten.erfinv" if any("erfinv" in str(n.target) for n in program.graph.nodes) else "ok"

        return run

    def to_edge():
        from executorch.exir import to_edge

        to_edge(torch.export.export(mlp, (x,), strict=False)).to_executorch()

    def strict_after_compile():
        compiled("eager")()
        return export(True)()

    runs = dict(zip(CHECKS, (compiled("eager"), compiled("inductor"), export(True), export(False), to_edge,
                             strict_after_compile), strict=True))  # fmt: skip
    with torch.no_grad():
        return outcome(runs[check])


def load(which: str, patch_file: Path):
    import transformers.models.gemma3n.modeling_gemma3n as upstream

    from upstream_prs.apply_check import load_draft

    if which == "upstream":
        return upstream.Gemma3nTextMLP
    draft = load_draft(patch_file)
    return draft.Gemma3nTextMLP


def main(argv: list[str]) -> int:
    import warnings

    warnings.simplefilter("ignore")
    if os.environ.get("GEMMA3N_EXPORT_FIXES") != "0":
        raise SystemExit("run with GEMMA3N_EXPORT_FIXES=0: upstream must be unpatched")
    if argv[:1] == ["--one"]:  # child: one check, in this fresh process
        _, which, check, patch = argv
        print(json.dumps(probe(load(which, Path(patch)), check)))
        return 0
    from importlib.metadata import version

    import torch
    import transformers

    patch_file = Path(argv[0]).resolve() if argv else DEFAULT_PATCH
    report = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "executorch": version("executorch")},
    }  # fmt: skip
    for which in ("upstream", "draft"):
        report[which] = {}
        for check in CHECKS:
            proc = subprocess.run([sys.executable, "-m", "upstream_prs.tracer_claims", "--one", which, check,
                                   str(patch_file)], capture_output=True, text=True, check=True)  # fmt: skip
            report[which][check] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
