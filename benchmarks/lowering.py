"""XNNPACK lowering with and without the graph rewrites of `export/xnnpack_forms.py`, on the tiny model.

    python benchmarks/lowering.py [--only fixed|kv] [--json FILE]

For each program (fixed window float32; KV cache 128, 8da4w + 4w) and each setting of
GEMMA3N_EXPORT_FIXES_XNNPACK_FORMS, one `export` (its own process) and one `validate --json`: lowering seconds,
XNNPACK partitions, CPU seconds of the export process, validation max abs diff and top-1. One run each on a
2-core machine: the ratios (forms on / off) are the figures, not the seconds. A benchmark: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CLI = [sys.executable, "-m", "gemma3n_export_fixes.cli"]
PROGRAMS = {
    "fixed": ["--fixed-window", "--qlinear", "none", "--qembedding", "none"],
    "kv": ["--max_seq_len", "128", "--qlinear", "8da4w", "--qembedding", "4w"],
}


def one(name: str, forms: bool, workdir: Path) -> dict[str, object]:
    pte = workdir / f"{name}-{'forms' if forms else 'upstream'}.pte"
    env = {**os.environ, "GEMMA3N_EXPORT_FIXES_XNNPACK_FORMS": "1" if forms else "0"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    args = [*CLI, "export", "--model", "tiny", "--recipe", "xnnpack", *PROGRAMS[name], "--out", str(pte)]
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = json.loads(pte.with_suffix(".json").read_text())
    checked = subprocess.run([*CLI, "validate", str(pte), "--json"], env=env, stdout=subprocess.PIPE, text=True)
    result = json.loads(checked.stdout) if checked.stdout.strip() else {}
    return {
        "program": name,
        "xnnpack_forms": forms,
        "lower_s": record["seconds"]["lower"],
        "export_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        "partitions": record["lowering"]["partitions"],
        "pte_bytes": record["pte"]["bytes"],
        "validate_ok": result.get("ok"),
        "max_abs_diff": result.get("max_abs_diff"),
        "top1_agreement": result.get("top1_agreement"),
        "tokens_match": result.get("tokens_match"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(PROGRAMS), action="append")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gemma3n-lowering-") as tmp:
        for name in args.only or list(PROGRAMS):
            for forms in (False, True):
                rows.append(one(name, forms, Path(tmp)))
                print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"{'program':8} {'forms':6} {'lower s':>8} {'cpu s':>7} {'parts':>6} {'max abs':>9} {'top1':>5}")
    for r in rows:
        diff, top1 = r["max_abs_diff"] or float("nan"), r["top1_agreement"] or 0
        print(f"{r['program']:8} {r['xnnpack_forms']!s:6} {r['lower_s']:8.1f} {r['export_cpu_s']:7.1f} "
              f"{r['partitions']:6} {diff:9.2e} {top1:5.2f}")  # fmt: skip
    for name in {r["program"] for r in rows}:
        off, on = ([r for r in rows if r["program"] == name and r["xnnpack_forms"] == f] for f in (False, True))
        if off and on:
            print(f"{name}: lowering {on[0]['lower_s'] / off[0]['lower_s']:.2f}x, partitions "
                  f"{on[0]['partitions']}/{off[0]['partitions']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
