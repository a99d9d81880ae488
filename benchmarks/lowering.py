"""XNNPACK lowering with and without the registry's toolchain patches (the XNNPACK forms, the shortcuts), on tiny.

    python benchmarks/lowering.py [--only fixed|kv] [--settings upstream,forms,forms+shortcuts] [--json FILE]

For each program (fixed window float32; KV cache 128, 8da4w + 4w) and each setting (`upstream`: neither;
`forms`: the `xnnpack-forms` patch; `forms+shortcuts`: and every shortcut of the registry (kind `shortcut`);
the others are left out by GEMMA3N_EXPORT_FIXES_DISABLE), one `export` (its own process,
PYTHONHASHSEED=0 so that XNNPACK's lowering is byte-stable) and one `validate --json`: lowering seconds, XNNPACK
partitions, CPU seconds of the export process, the `.pte`'s sha256 (the shortcuts must not change it),
validation max abs diff and top-1. One run each on a 2-core machine: the ratios are the figures, not the
seconds. A benchmark: nothing asserts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from gemma3n_export_fixes.plugin.patch import Kind, Scope
from gemma3n_export_fixes.plugin.patches import REGISTRY
from gemma3n_export_fixes.pte import sidecar_path

CLI = [sys.executable, "-m", "gemma3n_export_fixes.cli"]
PROGRAMS = {
    "fixed": ["--fixed-window", "--qlinear", "none", "--qembedding", "none"],
    "kv": ["--max_seq_len", "128", "--qlinear", "8da4w", "--qembedding", "4w"],
}


SHORTCUTS = [p.id for p in REGISTRY if p.scope is Scope.EXPORT and p.kind is Kind.SHORTCUT]
#: setting -> the toolchain patches it leaves out (GEMMA3N_EXPORT_FIXES_DISABLE)
SETTINGS = {"upstream": ["xnnpack-forms", *SHORTCUTS], "forms": SHORTCUTS, "forms+shortcuts": []}


def one(name: str, setting: str, workdir: Path) -> dict[str, object]:
    pte = workdir / f"{name}-{setting}.pte"
    env = {**os.environ, "GEMMA3N_EXPORT_FIXES_DISABLE": ",".join(SETTINGS[setting]), "PYTHONHASHSEED": "0"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    args = [*CLI, "export", "--model", "tiny", "--recipe", "xnnpack", *PROGRAMS[name], "--out", str(pte)]
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = json.loads(sidecar_path(pte).read_text())
    checked = subprocess.run([*CLI, "validate", str(pte), "--json"], env=env, stdout=subprocess.PIPE, text=True)
    result = json.loads(checked.stdout) if checked.stdout.strip() else {}
    return {
        "program": name,
        "setting": setting,
        "lower_s": record["seconds"]["lower"],
        "export_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        "partitions": record["lowering"]["partitions"],
        "pte_bytes": record["pte"]["bytes"],
        "sha256": record["pte"]["sha256"],
        "validate_ok": result.get("ok"),
        "max_abs_diff": result.get("max_abs_diff"),
        "top1_agreement": result.get("top1_agreement"),
        "tokens_match": result.get("tokens_match"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(PROGRAMS), action="append")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from: " + ", ".join(SETTINGS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gemma3n-lowering-") as tmp:
        for name in args.only or list(PROGRAMS):
            for setting in args.settings.split(","):
                rows.append(one(name, setting, Path(tmp)))
                print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"{'program':8} {'setting':16} {'lower s':>8} {'cpu s':>7} {'parts':>6} {'max abs':>9} {'top1':>5} sha256")
    for r in rows:
        diff, top1 = r["max_abs_diff"] or float("nan"), r["top1_agreement"] or 0
        print(f"{r['program']:8} {r['setting']:16} {r['lower_s']:8.1f} {r['export_cpu_s']:7.1f} "
              f"{r['partitions']:6} {diff:9.2e} {top1:5.2f} {r['sha256'][:12]}")  # fmt: skip
    for name in {r["program"] for r in rows}:
        mine = [r for r in rows if r["program"] == name]
        for before, after in itertools.pairwise(mine):
            ratio, same = after["lower_s"] / before["lower_s"], after["sha256"] == before["sha256"]
            print(f"{name}: {after['setting']} / {before['setting']}: lowering {ratio:.2f}x, partitions "
                  f"{after['partitions']}/{before['partitions']}, same bytes: {same}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
