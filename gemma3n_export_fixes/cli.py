"""``gemma3n-export-fixes``: the command line (status, check, export, validate, generate).

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

    from gemma3n_export_fixes.exporting import ExportOptions, check_out_path, export_pte
    from gemma3n_export_fixes.models import load_model

    options = ExportOptions(
        seq_len=args.seq_len, dtype=args.dtype, backend=args.backend, quant=args.quant,
        quant_embeddings=args.quant_embeddings, kv_cache=args.kv_cache, max_seq_len=args.max_seq_len,
    )  # fmt: skip
    options.validate()
    out = Path(args.out)
    check_out_path(out)
    versions = stack_versions()
    import_gemma3n(versions)
    if options.kv_cache:
        from gemma3n_export_fixes.kvcache import unsupported_reason

        if reason := unsupported_reason(versions["transformers"] or "0"):
            raise UserError(reason)
    _progress(f"loading {args.model} ...")
    loaded = load_model(args.model)
    _progress(f"loaded {args.model}: {loaded.parameters:,} parameters")
    record = export_pte(loaded, out, options, progress=_progress)
    applied = [p["id"] for p in record["patches"] if p["state"] == "applied"]
    print(
        f"wrote {out} ({record['pte']['bytes'] / 1e6:.2f} MB, {record['program']}, sha256 "
        f"{record['pte']['sha256'][:12]}) and {out.with_suffix('.json')}; peak RSS {record['peak_rss_mb']} MB; "
        f"patches applied: {', '.join(applied) or 'none'}"
    )
    return 0


def _program_kind(record: dict[str, Any]) -> str:
    """The validation kind (``float32``, ``bfloat16`` or ``quantized``) of a program from its export record."""
    options = record.get("options", {})
    embeddings = options.get("quant_embeddings", "none")
    quantized = options.get("quant", "none") != "none" or embeddings not in ("none", False, None)
    return "quantized" if quantized else options.get("dtype", "float32")


def _vs_float(diff: float | None, top1: float | None) -> str:
    if diff is None or top1 is None:
        return ""
    return (
        f"; reference = the eager model quantized the same way; vs the float model: max abs diff {diff:.3g}, "
        f"top-1 {top1:.1%}"
    )


def _cmd_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gemma3n_export_fixes.validation import (
        is_kv_program,
        load_program,
        reference_models,
        sidecar,
        validate,
        validate_kv,
    )  # fmt: skip

    pte = Path(args.pte)
    program = load_program(pte)
    record = sidecar(pte) or {}
    model = args.model or record.get("model")
    if not model:
        raise UserError(f"{pte}: no export record next to it; say which model it came from with --model")
    kind = _program_kind(record)
    import_gemma3n(stack_versions())
    # the reference: the eager model in the program's dtype and quantization; quantized programs are also
    # compared with the float model (reported, not judged)
    loaded, float_model = reference_models(model, record.get("options", {}))
    if is_kv_program(program):
        _progress(f"validating {pte}: teacher-forced logits and greedy tokens vs eager generate ...")
        kv = validate_kv(program, loaded, kind=kind, float_model=float_model)
        if args.json:
            json.dump({"pte": str(pte), "model": model, "kind": kind, "program": "kv-cache", **kv.to_dict()},
                      sys.stdout, indent=2)  # fmt: skip
            sys.stdout.write("\n")
        else:
            where = "" if kv.tokens_match else f" (first divergence at new token {kv.first_divergence})"
            print(
                f"{pte}: {'OK' if kv.ok else 'MISMATCH'}: {kv.prompt_len}-token prompt + {kv.new_tokens} greedy tokens "
                f"(sliding window {kv.sliding_window}, cache {kv.max_seq_len}) vs eager {model} generate: "
                f"max abs diff {kv.max_abs_diff:.3g} (tolerance {kv.tolerance:g}), top-1 agreement "
                f"{kv.top1_agreement:.1%} (minimum {kv.min_top1:.0%}), greedy tokens "
                f"{'identical' if kv.tokens_match else 'differ'}{where}; runtime {kv.runtime_ms_per_token:.2f} ms/token"
                + _vs_float(kv.float_max_abs_diff, kv.float_top1_agreement)
            )
        return 0 if kv.ok else 1
    result = validate(program.load_method("forward"), loaded, kind=kind, float_model=float_model)
    if args.json:
        json.dump({"pte": str(pte), "model": model, "kind": kind, "program": "fixed-window", **result.to_dict()},
                  sys.stdout, indent=2)  # fmt: skip
        sys.stdout.write("\n")
    else:
        print(
            f"{pte}: {'OK' if result.ok else 'MISMATCH'}: max abs diff {result.max_abs_diff:.3g} "
            f"(tolerance {result.tolerance:g}), top-1 agreement {result.top1_agreement:.1%} "
            f"(minimum {result.min_top1:.0%}), finite {result.finite}, {result.seq_len} tokens vs eager "
            f"{model} use_cache=True; runtime {result.runtime_ms:.1f} ms, eager {result.eager_ms:.1f} ms"
            + _vs_float(result.float_max_abs_diff, result.float_top1_agreement)
        )
    return 0 if result.ok else 1


def _cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gemma3n_export_fixes.generation import generate_from_pte

    result = generate_from_pte(
        Path(args.pte), ids=args.ids, prompt=args.prompt, tokenizer=args.tokenizer,
        max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(" ".join(str(t) for t in result["new_ids"]))
        if result.get("text") is not None:
            print(result["text"])
        _progress(f"{len(result['new_ids'])} tokens, {result['ms_per_token']:.2f} ms/token")
    return 0


def _cmd_sizes(args: argparse.Namespace) -> int:
    from gemma3n_export_fixes.models import BUILTIN
    from gemma3n_export_fixes.sizes import TABLE_OPTIONS, weight_bytes

    if args.model not in BUILTIN:
        raise UserError(f"--model must be one of {', '.join(BUILTIN)} (sizes are computed from the config), got "
                        f"{args.model!r}")  # fmt: skip
    import_gemma3n(stack_versions())
    rows = [weight_bytes(args.model, *options) for options in TABLE_OPTIONS]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{args.model}: {rows[0]['parameters']:,} parameters; weight bytes per export option (computed per tensor)")
    print(f"{'dtype':<10}{'linears':<9}{'embeddings':<12}{'GB':>8}{'GiB':>8}{'embeddings GB':>15}{'linears GB':>12}")
    for r in rows:
        k = r["by_kind"]
        print(f"{r['dtype']:<10}{r['quant']:<9}{r['embeddings']:<12}{r['bytes'] / 1e9:>8.2f}{r['bytes'] / 2**30:>8.2f}"
              f"{k['embedding'] / 1e9:>15.2f}{k['linear'] / 1e9:>12.2f}")  # fmt: skip
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gemma3n_export_fixes.check import print_summary, run_check, write_json

    if args.json and Path(args.json).is_dir():
        raise UserError(f"--json {args.json}: is a directory")
    keep = Path(args.keep) if args.keep else None
    if keep is not None and keep.exists() and not keep.is_dir():
        raise UserError(f"--keep {args.keep}: exists and is not a directory")
    record = run_check(say=lambda line: print(line, flush=True), keep=keep)
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
    from gemma3n_export_fixes.quant import EMBEDDING_QUANTS, GROUP_SIZE

    export = sub.add_parser(
        "export",
        help="export the text decoder to an ExecuTorch .pte (and a .json record next to it)",
        description=(
            "Export the Gemma 3n text decoder (language_model + lm_head; no vision/audio towers). Default: the "
            "seed repo's fixed window, token ids [1, SEQ_LEN] in, logits out, use_cache=False. With --kv-cache: "
            "one prefill+decode program with a static KV cache of MAX_SEQ_LEN positions (run it with `generate`). "
            "FILE.pte and FILE.json (versions, patches applied, config hash, sizes, sha256, stage timings, peak "
            "RSS) are written atomically: on failure neither exists."
        ),
    )
    export.add_argument("--model", default="tiny", help="tiny, e2b-shape, e4b-shape (random weights) or a "
                        "local checkpoint directory (default: tiny)")  # fmt: skip
    export.add_argument("--out", required=True, metavar="FILE.pte", help="where to write the program")
    export.add_argument("--seq-len", type=int, default=32, help="fixed window: number of tokens (default: 32)")
    export.add_argument("--kv-cache", action="store_true", help="prefill+decode program with a static KV cache "
                        "(transformers >= 5.5.1)")  # fmt: skip
    export.add_argument("--max-seq-len", type=int, default=128, help="--kv-cache: positions in the cache, "
                        "prompt + generated tokens (default: 128)")  # fmt: skip
    export.add_argument("--dtype", choices=DTYPES, default="float32", help="weights and activations")
    export.add_argument(
        "--backend",
        choices=BACKENDS,
        default="xnnpack",
        help="xnnpack (delegated, fast; default) or portable (ExecuTorch's portable kernels)",
    )
    export.add_argument(
        "--quant",
        choices=QUANTS,
        default="none",
        help=f"linears: none; 8da4w / 8da8w (int8 dynamic activations, int4 weights in groups of {GROUP_SIZE} / "
        "int8 per channel; XNNPACK); int8 (weight-only; portable backend only)",
    )
    export.add_argument(
        "--quant-embeddings",
        choices=EMBEDDING_QUANTS,
        nargs="?",
        const="8w",
        default="none",
        help=f"embed_tokens and the per-layer table (~57%% of E2B's parameters): 8w (int8 per row; the default "
        f"when the flag has no value) or 4w (int4 in groups of {GROUP_SIZE})",
    )
    export.set_defaults(func=_cmd_export)

    validate = sub.add_parser(
        "validate",
        help="run a .pte in the ExecuTorch runtime and compare with the eager model",
        description=(
            "Load FILE.pte in the ExecuTorch runtime and compare with the eager model on seeded real token ids. "
            "Fixed window: logits vs eager use_cache=True (max abs diff, top-1 agreement, NaN/Inf). KV cache: "
            "token by token vs eager greedy generate for twice the sliding window (teacher-forced logits, then "
            "the program's own greedy tokens). Exit 0 when within tolerance, 1 otherwise. The model defaults to "
            "the one named in FILE.json."
        ),
    )
    validate.add_argument("pte", metavar="FILE.pte")
    validate.add_argument("--model", help="tiny, e2b-shape, e4b-shape or a checkpoint directory")
    validate.add_argument("--json", action="store_true", help="print a JSON record")
    validate.set_defaults(func=_cmd_validate)

    generate = sub.add_parser(
        "generate",
        help="greedy decoding from a --kv-cache .pte: token ids in, token ids out",
        description=(
            "Run a KV-cache program in the ExecuTorch runtime: prefill the prompt, then greedy decoding. Give token "
            "ids (--ids 2,651,3124) or text (--prompt) when a tokenizer is at hand: --tokenizer DIR, or the "
            "checkpoint directory the program was exported from. Prints the new token ids (and their text)."
        ),
    )
    generate.add_argument("pte", metavar="FILE.pte")
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--ids", help="prompt token ids, comma or space separated")
    source.add_argument("--prompt", help="prompt text (needs a tokenizer)")
    generate.add_argument("--tokenizer", metavar="DIR", help="a local tokenizer directory (default: the checkpoint "
                          "directory in FILE.json, when it has a tokenizer)")  # fmt: skip
    generate.add_argument("--max-new-tokens", type=int, default=32, help="default: 32 (stops early at EOS when "
                          "a tokenizer is known)")  # fmt: skip
    generate.add_argument("--json", action="store_true", help="print a JSON record")
    generate.set_defaults(func=_cmd_generate)

    sizes = sub.add_parser(
        "sizes",
        help="weight bytes of a built-in model per export option, computed per tensor (no export)",
        description=(
            "Build the model on the meta device (shapes only) and price every tensor the way the export stores it: "
            "float32/bfloat16, int8 or int4 weights plus their scales, the tied lm_head once or twice. For models "
            "too large to export on this machine (e2b-shape, e4b-shape)."
        ),
    )
    sizes.add_argument("--model", default="e2b-shape", help="tiny, e2b-shape or e4b-shape (default: e2b-shape)")
    sizes.add_argument("--json", action="store_true", help="print a JSON list")
    sizes.set_defaults(func=_cmd_sizes)

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
    check.add_argument("--keep", metavar="DIR", help="keep the exported programs (tiny-NAME.pte + .json) in DIR")
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
