"""Export the built-in tiny Gemma 3n the way the seed repo exports E2B, then validate the .pte.

Provisional main job (the `check` command replaces it): it writes a tiny checkpoint, runs the seed-style
export script (which never imports gemma3n_export_fixes: the installed hook does the patching), loads the
.pte in the ExecuTorch runtime and compares its logits with eager use_cache=True logits.

usage: python examples/export_tiny.py [OUT_DIR]   (default: a temporary directory)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import gemma3n_export_fixes as gx
from gemma3n_export_fixes.tiny import build_tiny_model, tiny_input_ids

SEED_STYLE = Path(__file__).resolve().parent.parent / "tests" / "scripts" / "seed_style_export.py"


def main() -> int:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="gemma3n-tiny-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint, pte = out_dir / "tiny-checkpoint", out_dir / "tiny.pte"
    model = build_tiny_model(seed=0)
    model.save_pretrained(checkpoint)
    params = sum(p.numel() for p in model.parameters())
    print(f"[1/3] tiny Gemma 3n text decoder: {params:,} parameters -> {checkpoint}", flush=True)

    start = time.perf_counter()
    export = subprocess.run(
        [sys.executable, str(SEED_STYLE), str(checkpoint), str(pte)], capture_output=True, text=True
    )
    if export.returncode != 0:
        print(export.stderr[-3000:], file=sys.stderr)
        print("export failed", file=sys.stderr)
        return 1
    print(
        f"[2/3] seed-style export (torch.export strict=False -> to_edge -> to_executorch): "
        f"{time.perf_counter() - start:.1f} s, {pte.stat().st_size / 1e6:.2f} MB -> {pte}",
        flush=True,
    )

    from executorch.runtime import Runtime

    ids = tiny_input_ids(32, seed=7)
    (logits,) = Runtime.get().load_program(str(pte)).load_method("forward").execute([ids])
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=True).logits
    diff = float((logits - expected).abs().max())
    top1 = float((logits.argmax(-1) == expected.argmax(-1)).float().mean())
    ok = diff < 1e-4 and top1 == 1.0 and bool(torch.isfinite(logits).all())
    print(
        f"[3/3] ExecuTorch runtime vs eager use_cache=True: max abs diff {diff:.2e}, top-1 agreement "
        f"{top1:.0%} -> {'OK' if ok else 'MISMATCH'}"
    )
    print("patches: " + ", ".join(f"{s.id}={s.state.value}" for s in gx.status()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
