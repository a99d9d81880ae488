"""Every export option on the tiny model: .pte size, computed weight bytes, peak RSS, stage times, accuracy.

    python benchmarks/programs.py [--only NAME ...] [--json FILE]

Each export runs in its own process (`gemma3n-export-fixes export`), so its peak RSS is that export's alone;
then `validate --json` compares the program with the eager model quantized the same way, and with the float
model. Sizes are also shown as ratios to the float32 portable program. A benchmark, not a test: nothing here
asserts a figure; one run, 2-core machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from gemma3n_export_fixes.pte import sidecar_path

#: name -> export arguments
OPTIONS: dict[str, list[str]] = {
    "fixed portable f32": ["--backend", "portable"],
    "fixed xnnpack f32": ["--backend", "xnnpack"],
    "fixed portable bf16": ["--backend", "portable", "--dtype", "bfloat16"],
    "fixed portable 8w": ["--recipe", "portable", "--qlinear", "8w"],
    "fixed portable 8w emb": ["--backend", "portable", "--quant-embeddings", "8w"],
    "fixed portable 4w emb": ["--backend", "portable", "--quant-embeddings", "4w"],
    "fixed xnnpack 8da8w": ["--backend", "xnnpack", "--quant", "8da8w"],
    "fixed xnnpack 8da4w": ["--backend", "xnnpack", "--quant", "8da4w"],
    "fixed xnnpack 8da4w+4w": ["--backend", "xnnpack", "--quant", "8da4w", "--quant-embeddings", "4w"],
    "kv portable f32": ["--backend", "portable", "--kv-cache", "--max-seq-len", "32"],
    "kv xnnpack f32": ["--backend", "xnnpack", "--kv-cache", "--max-seq-len", "32"],
    "kv xnnpack 8da4w+4w": ["--backend", "xnnpack", "--kv-cache", "--max-seq-len", "32", "--quant", "8da4w",
                            "--quant-embeddings", "4w"],
}  # fmt: skip
CLI = [sys.executable, "-m", "gemma3n_export_fixes.cli"]


def run(name: str, args: list[str], workdir: Path) -> dict[str, object]:
    from gemma3n_export_fixes.export.sizes import weight_bytes

    out = workdir / (name.replace(" ", "-").replace("+", "-") + ".pte")
    done = subprocess.run([*CLI, "export", "--model", "tiny", *args, "--out", str(out)], capture_output=True,
                          text=True, cwd=tempfile.gettempdir())  # fmt: skip
    if done.returncode != 0:
        return {"name": name, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    record = json.loads(sidecar_path(out).read_text())
    checked = subprocess.run([*CLI, "validate", str(out), "--json"], capture_output=True, text=True,
                             cwd=tempfile.gettempdir())  # fmt: skip
    validation = json.loads(checked.stdout) if checked.stdout.strip().startswith("{") else {"error": checked.stderr}
    o = record["options"]
    computed = weight_bytes("tiny", o["dtype"], o["qlinear"], o["qembedding"])["bytes"]
    return {"name": name, "pte_bytes": record["pte"]["bytes"], "computed_weight_bytes": computed,
            "peak_rss_mb": record["peak_rss_mb"], "seconds": record["seconds"], "validation": validation}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(OPTIONS), help="run only these options")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or OPTIONS:
            print(f"{name} ...", file=sys.stderr, flush=True)
            rows.append(run(name, OPTIONS[name], Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = next((r["pte_bytes"] for r in rows if r["name"] == "fixed portable f32" and "pte_bytes" in r), None)
    print(
        "| option | .pte MB | x f32 | computed weights MB | peak RSS MB | lower s | vs same-quant eager: "
        "max abs / top-1 | vs float: max abs / top-1 | greedy tokens |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | FAILED: {r['error']} |||||||")
            continue
        v = r["validation"]
        ratio = f"{r['pte_bytes'] / base:.2f}" if base else "-"
        fl = (
            "-"
            if v.get("float_max_abs_diff") is None
            else f"{v['float_max_abs_diff']:.3g} / {v['float_top1_agreement']:.0%}"
        )
        tokens = (
            "-"
            if "tokens_match" not in v
            else ("identical" if v["tokens_match"] else f"differ from {v['first_divergence']}")
        )
        same = (
            f"{v['max_abs_diff']:.2g} / {v['top1_agreement']:.0%}" if "max_abs_diff" in v else v.get("error", "?")[-80:]
        )
        print(
            f"| {r['name']} | {r['pte_bytes'] / 1e6:.2f} | {ratio} | {r['computed_weight_bytes'] / 1e6:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['seconds']['lower']:.0f} | {same} | {fl} | {tokens} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
