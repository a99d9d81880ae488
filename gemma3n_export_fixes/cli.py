"""``gemma3n-export-fixes``: the command line (status, check, export, validate).

Exit codes: 0 ok; 1 a failed check/validation or a user error (one line on stderr, no traceback, no
output file); 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from gemma3n_export_fixes.errors import UserError
from gemma3n_export_fixes.stack import import_gemma3n, status_record
from gemma3n_export_fixes.versions import stack_versions


def _print_table(record: dict[str, Any]) -> None:
    versions = record["versions"]
    print("stack: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()))
    files = record["activation"]["files"]
    print(f"activation: {', '.join(files) if files else 'no .pth found (automatic patching inactive)'}")
    if record["activation"]["disabled_by_env"]:
        print("activation: GEMMA3N_EXPORT_FIXES turns automatic patching off in this process")
    rows = [(p["id"], p["state"], p["needed_on"], p["reason"]) for p in record["patches"]]
    headers = ("patch", "state", "needed on transformers", "why")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(3)]
    print()
    for row in [headers, *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])


def _cmd_status(args: argparse.Namespace) -> int:
    record = status_record()
    if args.json:
        json.dump(record, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(record)
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gemma3n_export_fixes.exporting import ExportOptions, export_pte
    from gemma3n_export_fixes.models import load_model

    options = ExportOptions(
        seq_len=args.seq_len, dtype=args.dtype, backend=args.backend, quant=args.quant,
        quant_embeddings=args.quant_embeddings,
    )  # fmt: skip
    options.validate()
    out = Path(args.out)
    if out.suffix != ".pte":
        raise UserError(f"--out must name a .pte file, got {out}")
    import_gemma3n(stack_versions())
    _progress(f"loading {args.model} ...")
    loaded = load_model(args.model)
    _progress(f"loaded {args.model}: {loaded.parameters:,} parameters")
    record = export_pte(loaded, out, options, progress=_progress)
    applied = [p["id"] for p in record["patches"] if p["state"] == "applied"]
    print(
        f"wrote {out} ({record['pte']['bytes'] / 1e6:.2f} MB, sha256 {record['pte']['sha256'][:12]}) and "
        f"{out.with_suffix('.json')}; patches applied: {', '.join(applied) or 'none'}"
    )
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gemma3n_export_fixes.models import load_model
    from gemma3n_export_fixes.validation import load_pte, sidecar, validate

    pte = Path(args.pte)
    method = load_pte(pte)
    record = sidecar(pte) or {}
    model = args.model or record.get("model")
    if not model:
        raise UserError(f"{pte}: no export record next to it; say which model it came from with --model")
    options = record.get("options", {})
    quantized = options.get("quant", "none") != "none" or options.get("quant_embeddings", False)
    dtype = options.get("dtype", "float32")
    kind = "quantized" if quantized else dtype
    import_gemma3n(stack_versions())
    from gemma3n_export_fixes.exporting import torch_dtype

    # the reference: the eager model in the program's dtype (quantized programs: against full precision)
    result = validate(method, load_model(model, dtype=torch_dtype(dtype)), kind=kind)
    if args.json:
        json.dump({"pte": str(pte), "model": model, "kind": kind, **result.to_dict()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(
            f"{pte}: {'OK' if result.ok else 'MISMATCH'}: max abs diff {result.max_abs_diff:.3g} "
            f"(tolerance {result.tolerance:g}), top-1 agreement {result.top1_agreement:.1%} "
            f"(minimum {result.min_top1:.0%}), finite {result.finite}, {result.seq_len} tokens vs eager "
            f"{model} use_cache=True; runtime {result.runtime_ms:.1f} ms, eager {result.eager_ms:.1f} ms"
        )
    return 0 if result.ok else 1


def _cmd_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gemma3n_export_fixes.check import print_summary, run_check, write_json

    if args.json and Path(args.json).is_dir():
        raise UserError(f"--json {args.json}: is a directory")
    record = run_check(say=lambda line: print(line, flush=True))
    print_summary(record)
    if args.json:
        write_json(record, Path(args.json))
        print(f"wrote {args.json}")
    return 0 if record["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma3n-export-fixes",
        description=(
            "Fixes for exporting transformers' Gemma 3n text decoder to ExecuTorch. Installing the package "
            "applies them automatically whenever transformers' Gemma 3n code is imported; set "
            "GEMMA3N_EXPORT_FIXES=0 to turn that off for a process."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = sub.add_parser(
        "status",
        help="which fixes this transformers release needs, and which were applied (and why not)",
        description=(
            "Import transformers' Gemma 3n module as an export script would, then report per patch: "
            "applied, not-needed (this release does not have the defect), skipped-drift (the code differs "
            "from what the patch was written for), failed (rolled back) or pending (automatic patching off)."
        ),
    )
    status.add_argument("--json", action="store_true", help="print a JSON record instead of a table")
    status.set_defaults(func=_cmd_status)

    from gemma3n_export_fixes.exporting import BACKENDS, DTYPES, QUANTS

    export = sub.add_parser(
        "export",
        help="export the text decoder to an ExecuTorch .pte (and a .json record next to it)",
        description=(
            "Export the Gemma 3n text decoder (language_model + lm_head; no vision/audio towers) the way the "
            "seed repo does: token ids [1, SEQ_LEN] in, logits out, use_cache=False, torch.export(strict=False). "
            "FILE.pte and FILE.json (versions, patches applied, config hash, sizes, sha256, stage timings) are "
            "written atomically: on failure neither exists."
        ),
    )
    export.add_argument("--model", default="tiny", help="tiny, e2b-shape, e4b-shape (random weights) or a "
                        "local checkpoint directory (default: tiny)")  # fmt: skip
    export.add_argument("--out", required=True, metavar="FILE.pte", help="where to write the program")
    export.add_argument("--seq-len", type=int, default=32, help="fixed number of tokens (default: 32)")
    export.add_argument("--dtype", choices=DTYPES, default="float32", help="weights and activations")
    export.add_argument(
        "--backend",
        choices=BACKENDS,
        default="xnnpack",
        help="xnnpack (delegated, fast; default) or portable (ExecuTorch's portable kernels)",
    )
    export.add_argument("--quant", choices=QUANTS, default="none", help="linear weights: none or int8 "
                        "(weight-only, torchao; portable backend)")  # fmt: skip
    export.add_argument(
        "--quant-embeddings",
        action="store_true",
        help="int8 per-row embedding tables (embed_tokens and the per-layer table, ~45%% of E2B)",
    )
    export.set_defaults(func=_cmd_export)

    validate = sub.add_parser(
        "validate",
        help="run a .pte in the ExecuTorch runtime and compare with eager use_cache=True logits",
        description=(
            "Load FILE.pte in the ExecuTorch runtime, run seeded real token ids and compare the logits with the "
            "eager model's use_cache=True logits: max abs diff, top-1 agreement, NaN/Inf. Exit 0 when within "
            "tolerance, 1 otherwise. The model defaults to the one named in FILE.json."
        ),
    )
    validate.add_argument("pte", metavar="FILE.pte")
    validate.add_argument("--model", help="tiny, e2b-shape, e4b-shape or a checkpoint directory")
    validate.add_argument("--json", action="store_true", help="print a JSON record")
    validate.set_defaults(func=_cmd_validate)

    check = sub.add_parser(
        "check",
        help="the main job: patch states, reproducers, export + validate of tiny on portable and XNNPACK",
        description=(
            "For the installed stack: versions, each patch's state, each patch's reproducer on the upstream and "
            "on the patched code (two fresh processes), then export + validate of the built-in tiny model on the "
            "portable and XNNPACK paths. Exit 0 when every patch verdict is good and both exports validate."
        ),
    )
    check.add_argument("--json", metavar="FILE", help="also write the machine record (what a matrix cell stores)")
    check.set_defaults(func=_cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    # torch/transformers deprecation chatter is not for the user of this command line
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"gemma3n-export-fixes: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gemma3n-export-fixes: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
