"""Eager, export and runtime figures for the built-in tiny model, as ratios measured in one run.

    python benchmarks/export.py [--runs N] [--json FILE]

- patched vs upstream eager forward (seq 32, float32);
- export stage times, portable vs XNNPACK;
- .pte forward (portable, XNNPACK) vs eager forward;
- .pte size per quantization option (portable); every option incl. KV cache and 8da4w: benchmarks/programs.py.
A benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def interleaved_ms(patched: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median ms of ``patched()`` with the patches on and off, alternating so drift hits both alike."""
    import gemma3n_export_fixes as gx

    on, off = [], []
    patched()
    for i in range(2 * runs):
        upstream_turn = i % 2 == 1
        if upstream_turn:
            gx.revert()
        start = time.perf_counter()
        patched()
        (off if upstream_turn else on).append((time.perf_counter() - start) * 1000)
        if upstream_turn:
            gx.apply()
    return statistics.median(on), statistics.median(off)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import torch

    import gemma3n_export_fixes as gx
    from gemma3n_export_fixes.export.options import ExportOptions
    from gemma3n_export_fixes.export.program import export_pte
    from gemma3n_export_fixes.models.sources import load_model
    from gemma3n_export_fixes.models.tiny import tiny_input_ids
    from gemma3n_export_fixes.runtime.loading import load_pte

    gx.apply()
    torch.set_num_threads(torch.get_num_threads())
    model = load_model("tiny").model
    ids = tiny_input_ids(32, seed=7)
    figures: dict[str, object] = {"threads": torch.get_num_threads()}
    with torch.no_grad():
        eager, upstream = interleaved_ms(lambda: model(input_ids=ids, use_cache=False), args.runs)
    figures["eager_ms"] = {"patched": eager, "upstream": upstream, "ratio": eager / upstream}
    print(f"eager forward, seq 32: patched {eager:.2f} ms, upstream {upstream:.2f} ms, ratio {eager / upstream:.3f}")

    stages, runtime, sizes = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("portable", "xnnpack"):
            out = Path(tmp) / f"{backend}.pte"
            record = export_pte(
                load_model("tiny"),
                out,
                ExportOptions(recipe=backend, qlinear="none", qembedding="none", kv_cache=False),
            )
            stages[backend] = record["seconds"]
            method = load_pte(out)
            runtime[backend] = median_ms(lambda m=method: m.execute([ids]), args.runs)
            sizes[f"{backend}/none"] = record["pte"]["bytes"]
            print(f"export {backend}: " + ", ".join(f"{k} {v:.1f} s" for k, v in record["seconds"].items()))
            print(f".pte forward {backend}: {runtime[backend]:.2f} ms = {runtime[backend] / eager:.2f} x eager")
        for quant, embeddings in (("8w", "none"), ("none", "8w"), ("8w", "8w")):
            out = Path(tmp) / f"q-{quant}-{embeddings}.pte"
            options = ExportOptions(recipe="portable", qlinear=quant, qembedding=embeddings, kv_cache=False)
            record = export_pte(load_model("tiny"), out, options)
            sizes[f"portable/{quant}{'+emb' + embeddings if embeddings != 'none' else ''}"] = record["pte"]["bytes"]
    base = sizes["portable/none"]
    for name, size in sizes.items():
        print(f".pte size {name}: {size / 1e6:.2f} MB ({size / base:.2f} x portable float32)")
    figures.update({"export_seconds": stages, "pte_forward_ms": runtime, "pte_bytes": sizes})
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
