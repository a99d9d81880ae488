"""What a phone user gets from an exported KV-cache program: decode speed against eager PyTorch and against the
bound set by memory bandwidth, the seed form's per-token cost, and the memory the runtime really touches.
Not a test (minutes at E2B size, ~12 GB with --eager): `nox -s real_size` runs it after the export.

    python benchmarks/runtime_figures.py FILE.pte [--model e2b-shape] [--new-tokens 32] [--eager] [--json FILE]

In one process, in this order (so each figure is its own):
1. the program, loaded by ExecuTorch's runtime: resident memory after load, the `.pte` file's pages resident
   (from /proc/self/smaps: the runtime maps the file, so a table's pages come in only when rows are read);
2. greedy decoding, 16-token prompt + NEW tokens: prefill ms, decode ms/token, resident memory after;
3. the seed's form (a fixed 32-token window re-run for every token, no cache) costs one 32-token forward per
   token: measured as a 32-token prefill of the same program (same weights, same kernels);
4. copy bandwidth: the best of 5 copies of a 1 GiB tensor (bytes copied per second, one direction); the bound:
   bytes of weights every decode step reads (all linears, the tied head included, plus the norms;
   embedding tables contribute one row each) / copy bandwidth;
5. with --eager: the eager model (as built for the export: bfloat16 for the real shapes; transformers' own
   generate with a static cache) decoding the same prompt.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def mapped_file_rss_gb(path: Path) -> float:
    """Resident bytes of every mapping of ``path`` in this process (0 when the file is read, not mapped)."""
    total, inside = 0, False
    target = str(path.resolve())
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not line.startswith(("Rss", "Size")):
            inside = len(head) >= 6 and head[5] == target
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total / 1e9


def copy_bandwidth_gbps(gib: int = 1) -> float:
    import torch

    src = torch.ones(gib << 28, dtype=torch.float32)  # gib GiB
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    nbytes = src.numel() * 4
    del src, dst
    return nbytes / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pte", type=Path)
    parser.add_argument("--model", default="e2b-shape")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--eager", action="store_true", help="also time the eager bfloat16 model")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import gemma3n_export_fixes as gx
    from gemma3n_export_fixes.cli.console import console

    figures: dict[str, object] = {"pte": str(args.pte), "model": args.model}
    with console(False, Path.home() / ".cache" / "gemma3n-export-fixes" / "runtime_figures.log"):
        gx.apply()
        from executorch.runtime import Runtime

        from gemma3n_export_fixes.export.sizes import weight_bytes
        from gemma3n_export_fixes.pte import load_quantized_kernels, sidecar_path
        from gemma3n_export_fixes.runtime.decoding import runtime_decoder

        load_quantized_kernels()  # the 4w embedding kernels
        record = json.loads(sidecar_path(args.pte).read_text())
        options = record["options"]
        base = rss_gb()
        start = time.perf_counter()
        program = Runtime.get().load_program(str(args.pte))
        decoder = runtime_decoder(program)
        figures["load"] = {"seconds": round(time.perf_counter() - start, 2), "rss_gb": round(rss_gb() - base, 2),
                           "pte_pages_resident_gb": round(mapped_file_rss_gb(args.pte), 3),
                           "pte_gb": round(args.pte.stat().st_size / 1e9, 3)}  # fmt: skip

        prompt = list(range(2, 18))
        greedy = decoder.greedy(prompt, args.new_tokens)
        figures["generate"] = {
            "prompt_tokens": len(prompt), "new_tokens": len(greedy.tokens),
            "prefill_ms": round(greedy.prefill_ms, 1), "decode_ms_per_token": round(greedy.decode_ms_per_token, 1),
            "rss_gb": round(rss_gb() - base, 2), "peak_rss_gb": round(peak_rss_gb(), 2),
            "pte_pages_resident_gb": round(mapped_file_rss_gb(args.pte), 3),
        }  # fmt: skip
        window = list(range(2, 34))
        start = time.perf_counter()
        decoder.greedy(window, 1)
        seed_ms = (time.perf_counter() - start) * 1000
        figures["seed_form_ms_per_token"] = round(seed_ms, 1)
        figures["seed_form_vs_kv_decode"] = round(seed_ms / greedy.decode_ms_per_token, 1)

        bandwidth = copy_bandwidth_gbps()  # after the runtime figures: its 2 GiB must not count in their peak
        figures["copy_bandwidth_gbps"] = round(bandwidth, 2)
        sizes = weight_bytes(args.model, options["dtype"], options["qlinear"], options["qembedding"])
        per_token = sizes["by_kind"]["linear"] + sizes["by_kind"]["other"]
        figures["bytes_read_per_token_gb"] = round(per_token / 1e9, 3)
        figures["bandwidth_bound_ms_per_token"] = round(per_token / (bandwidth * 1e9) * 1000, 1)
        figures["decode_vs_bound"] = round(greedy.decode_ms_per_token / figures["bandwidth_bound_ms_per_token"], 2)
        del decoder, program

        if args.eager:
            import torch

            from gemma3n_export_fixes.models.sources import load_model

            model = load_model(args.model).model  # as built for the export (real shapes: bfloat16)
            ids = torch.tensor([prompt])
            with torch.no_grad():
                start = time.perf_counter()
                model(input_ids=ids, use_cache=True)
                prefill = time.perf_counter() - start
                start = time.perf_counter()
                out = model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False, cache_implementation="static")  # fmt: skip
                total = time.perf_counter() - start
            steps = out.shape[1] - len(prompt) - 1
            figures["eager"] = {
                "prefill_ms": round(prefill * 1000, 1),
                "decode_ms_per_token": round((total - prefill) * 1000 / max(steps, 1), 1),
                "dtype": str(next(model.parameters()).dtype),
            }
            figures["pte_decode_vs_eager"] = round(
                greedy.decode_ms_per_token / figures["eager"]["decode_ms_per_token"], 3
            )
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
