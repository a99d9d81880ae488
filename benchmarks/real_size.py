"""Real-size figures: export a real-shape Gemma 3n (E2B or E4B, random weights) the way a phone needs it, then
generate from it. Not a test (tens of minutes, several GB): `nox -s real_size` runs it.

    python benchmarks/real_size.py --model e2b-shape [--max-seq-len 256] [--out-dir DIR] [--json FILE]

Steps, each in its own process (so each peak RSS is its own): `sizes` (the computed weight bytes), `export
--max_seq_len 256 --recipe xnnpack --qlinear 8da4w --qembedding 4w`, `generate` 32 tokens (prefill ms, decode
ms/token), `benchmarks/runtime_figures.py` (decode vs eager and vs the memory-bandwidth bound, the seed form's
per-token cost, runtime memory and the `.pte` pages resident), and with --validate `validate`.
Prints a table and writes the figures as JSON; the README's real-size figures come from this script.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gemma3n_export_fixes.pte import sidecar_path

CLI = [sys.executable, "-m", "gemma3n_export_fixes.cli"]


FIGURES: dict[str, object] = {}
JSON_OUT: list[Path] = []


def save() -> None:
    """Write the figures so far (each step adds its own; a failed step keeps what came before)."""
    for path in JSON_OUT:
        path.write_text(json.dumps(FIGURES, indent=2) + "\n")


def run(args: list[str]) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """(result, wall seconds, peak RSS GB of that child); stderr streams through so progress shows."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(args, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode != 0:
        FIGURES["failed"] = {"command": args[3:], "returncode": result.returncode, "wall_s": round(wall, 1)}
        save()
        print(json.dumps(FIGURES, indent=2))
        sys.exit(f"failed ({result.returncode}): {' '.join(args)}")
    return result, wall, (peak if peak > before else float("nan")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="e2b-shape")
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out-dir", type=Path, default=None, help="keep the program here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-eager", action="store_true", help="skip the eager decode comparison")
    parser.add_argument("--validate", action="store_true", help="also time `validate` (eager models at size)")
    parser.add_argument("--reuse", action="store_true",
                        help="use the program an earlier run left in --out-dir")  # fmt: skip
    args = parser.parse_args()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="gemma3n-real-size-"))
    pte = out_dir / f"{args.model}-kv{args.max_seq_len}-8da4w-4w.pte"
    figures = FIGURES
    figures.update(model=args.model, max_seq_len=args.max_seq_len)
    JSON_OUT.extend([args.json] if args.json else [])

    sizes, _, _ = run([*CLI, "sizes", "--model", args.model, "--json"])
    (row,) = [r for r in json.loads(sizes.stdout) if (r["qlinear"], r["qembedding"]) == ("8da4w", "4w")]
    figures["computed_weight_bytes"] = row["bytes"]

    export_args = ["export", "--model", args.model, "--max_seq_len", str(args.max_seq_len), "--recipe", "xnnpack",
                   "--qlinear", "8da4w", "--qembedding", "4w", "--out", str(pte)]  # fmt: skip
    if args.reuse and pte.is_file():
        wall, peak = float("nan"), float("nan")
    else:
        _, wall, peak = run([*CLI, *export_args])
    record = json.loads(sidecar_path(pte).read_text())
    figures["export"] = {"wall_s": round(wall, 1), "peak_rss_gb": round(peak, 2), "stages_s": record["seconds"],
                         "recorded_peak_rss_mb": record.get("peak_rss_mb"), "lowering": record.get("lowering"),
                         "pte_bytes": record["pte"]["bytes"], "predicted": record.get("memory")}  # fmt: skip
    figures["pte_vs_computed"] = record["pte"]["bytes"] / row["bytes"]
    save()

    prompt = ",".join(str(i) for i in range(2, 2 + 16))
    gen, wall, peak = run([*CLI, "generate", str(pte), "--ids", prompt, "--max-new-tokens", str(args.new_tokens),
                           "--json"])  # fmt: skip
    result = json.loads(gen.stdout)
    figures["generate"] = {"wall_s": round(wall, 1), "peak_rss_gb": round(peak, 2), "prompt_tokens": 16,
                           "prefill_ms": result["prefill_ms"], "decode_ms_per_token": result["decode_ms_per_token"],
                           "new_tokens": len(result["new_ids"])}  # fmt: skip
    save()
    eager = [] if args.no_eager else ["--eager"]
    runtime_args = [sys.executable, str(Path(__file__).with_name("runtime_figures.py")), str(pte), "--model",
                    args.model, "--new-tokens", str(args.new_tokens), *eager]  # fmt: skip
    runtime, _, _ = run(runtime_args)
    figures["runtime"] = json.loads(runtime.stdout)
    save()
    if args.validate:
        checked, wall, peak = run([*CLI, "validate", str(pte), "--json"])
        figures["validate"] = {"wall_s": round(wall, 1), "peak_rss_gb": round(peak, 2), **json.loads(checked.stdout)}
    save()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
