"""``gemma3n-export-fixes``: the command line (status, check, export, validate, generate, sizes).

Exit codes: 0 ok; 1 a failed check/validation or a user error (one line on stderr, no traceback, no
output file); 2 usage. Results go to stdout, progress and errors to stderr; third-party output goes to a
log file unless ``--verbose`` (see :mod:`gemma3n_export_fixes.cli.console`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemma3n_export_fixes.cli.console import Console, console, default_log
from gemma3n_export_fixes.cli.stack import import_gemma3n, status_record
from gemma3n_export_fixes.errors import UserError
from gemma3n_export_fixes.versions import package_version, stack_versions


def _print_json(con: Console, record: Any) -> None:
    con.print(json.dumps(record, indent=2))


def _print_table(con: Console, record: dict[str, Any]) -> None:
    from gemma3n_export_fixes._env import DISABLE_VAR, ENV_VAR

    versions = record["versions"]
    con.print("stack: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()))
    activation = record["activation"]
    files = activation["files"]
    con.print(f"activation: {', '.join(files) if files else 'no .pth found (automatic patching inactive)'}")
    if activation["disabled_by_env"]:
        con.print(f"activation: {ENV_VAR} turns automatic patching off in this process")
    if activation["disabled_patches"]:
        known = {p["id"] for p in record["patches"]}
        unknown = [p for p in activation["disabled_patches"] if p not in known]
        con.print(f"activation: {DISABLE_VAR} leaves out {', '.join(activation['disabled_patches'])}"
                  + (f" (unknown patch ids: {', '.join(unknown)}; known: {', '.join(sorted(known))})"
                     if unknown else ""))  # fmt: skip

    def needed_on(p: dict[str, Any]) -> str:  # transformers ranges bare; a client's named
        return p["needed_on"] if p["distribution"] == "transformers" else f"{p['distribution']} {p['needed_on']}"

    rows = [(p["id"], f"{p['kind']}/{p['scope']}", p["state"], needed_on(p), p["reason"]) for p in record["patches"]]
    headers = ("patch", "kind/scope", "state", "needed on transformers", "why")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(4)]
    con.print()
    for row in [headers, *rows]:
        con.print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])


def _cmd_status(args: argparse.Namespace, con: Console) -> int:
    record = status_record()
    if args.json:
        _print_json(con, record)
    else:
        _print_table(con, record)
    return 0


def _cmd_export(args: argparse.Namespace, con: Console) -> int:
    from gemma3n_export_fixes.export.options import ExportOptions
    from gemma3n_export_fixes.export.program import export_pte
    from gemma3n_export_fixes.export.writing import check_free_space, check_out_path
    from gemma3n_export_fixes.models.sources import load_model
    from gemma3n_export_fixes.pte import sidecar_path

    options = ExportOptions.from_cli(
        seq_len=args.seq_len, dtype=args.dtype, recipe=args.recipe, qlinear=args.qlinear,
        qembedding=args.qembedding, kv_cache=not args.fixed_window, max_seq_len=args.max_seq_len,
    )  # fmt: skip
    out = Path(args.out)
    check_out_path(out)
    versions = stack_versions()
    options.check(versions["transformers"])  # before the model loads: bad options cost nothing
    import_gemma3n(versions)
    from gemma3n_export_fixes.export.memory import check_fits

    memory = check_fits(args.model, options)  # before any heavy work: refuse what cannot fit, in one line
    check_free_space(out, memory.stored_bytes)  # and a program the disk cannot hold (its weights, as stored)
    con.progress(f"loading {args.model} (predicted peak memory of the export {memory.predicted_peak / 1e9:.1f} GB) ...")
    loaded = load_model(args.model, lazy=True)  # the real shapes: weights come unit by unit (models.lazy)
    con.progress(f"loaded {args.model}: {loaded.parameters:,} parameters")
    record = export_pte(loaded, out, options, progress=con.progress, memory=memory)
    applied = [p["id"] for p in record["patches"] if p["state"] == "applied"]
    con.print(
        f"wrote {out} ({record['pte']['bytes'] / 1e6:.2f} MB, {record['program']}, sha256 "
        f"{record['pte']['sha256'][:12]}) and {sidecar_path(out)}; peak RSS {record['peak_rss_mb']} MB; "
        f"patches applied: {', '.join(applied) or 'none'}"
    )
    return 0


def _vs_float(diff: float | None, top1: float | None) -> str:
    if diff is None or top1 is None:
        return ""
    return (
        f"; reference = the eager model quantized the same way; vs the float model: max abs diff {diff:.3g}, "
        f"top-1 {top1:.1%}"
    )


def _validation_fits(model: str, options: Any, pte: Path, con: Console) -> bool:
    """Whether the float comparison fits in memory too; ``UserError`` (one line) when not even the reference
    does. Said before any model is built."""
    from gemma3n_export_fixes.export.memory import GB, available_bytes, validation_peaks

    with_float, without = validation_peaks(model, options, pte.stat().st_size)
    available = available_bytes()
    if available is not None and without > available:
        also = f" ({with_float / GB:.1f} GB with the float comparison)" if options.quantized else ""
        raise UserError(
            f"validating {pte} needs about {without / GB:.1f} GB{also}; this machine has "
            f"{available / GB:.1f} GB available"
        )
    # 25% headroom for the float comparison: the E2B one was OOM-killed at a predicted 20.0 GB of 22.5 GB
    if available is None or not options.quantized or with_float * 1.25 <= available:
        return True
    con.progress(
        f"the float comparison needs about {with_float / GB:.1f} GB ({available / GB:.1f} GB available): "
        "validating against the eager model quantized the same way only"
    )
    return False


def _cmd_validate(args: argparse.Namespace, con: Console) -> int:
    from functools import partial

    from gemma3n_export_fixes.export.memory import meta_model
    from gemma3n_export_fixes.export.options import ExportOptions
    from gemma3n_export_fixes.pte import read_sidecar
    from gemma3n_export_fixes.runtime.loading import is_kv_program, load_forward, load_program, set_threads
    from gemma3n_export_fixes.runtime.validation import (
        default_new_tokens,
        float_source,
        minimum_phrase,
        reference_model,
        validate,
        validate_kv,
    )

    pte = Path(args.pte)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: give at least 1")
    threads = set_threads(args.threads)
    program = load_program(pte)
    record = read_sidecar(pte) or {}
    model = args.model or record.get("model")
    if not model:
        raise UserError(f"{pte}: no export record next to it; say which model it came from with --model")
    options = ExportOptions.from_record(record.get("options", {}))
    kind = options.kind
    import_gemma3n(stack_versions())
    # the reference: the eager model in the program's dtype and quantization; quantized programs are also
    # compared with the float model (reported, not judged)
    with_float = _validation_fits(model, options, pte, con)
    reference = partial(reference_model, model, options)  # built inside, dropped before the float model is built
    float_model = float_source(model, options, with_float=with_float)
    if is_kv_program(program):
        cap = args.max_new_tokens or default_new_tokens(sum(p.numel() for p in meta_model(model).parameters()))
        note = "" if args.max_new_tokens or cap is None else f" (at most {cap} new tokens at this size)"
        con.progress(f"validating {pte}: teacher-forced logits and greedy tokens vs eager generate{note} ...")
        kv = validate_kv(program, reference, kind=kind, float_model=float_model, max_new_tokens=cap)
        if args.json:
            _print_json(con, {"pte": str(pte), "model": model, "kind": kind, "program": "kv-cache", "threads": threads,
                              **kv.to_dict()})  # fmt: skip
        else:
            where = (
                ""
                if kv.tokens_match
                else f" (first divergence at new token {kv.first_divergence}"
                + (")" if kind == "float32" else f"; not judged for {kind} programs)")
            )
            con.print(
                f"{pte}: {'OK' if kv.ok else 'MISMATCH'}: {kv.prompt_len}-token prompt + {kv.new_tokens} greedy tokens "
                f"(sliding window {kv.sliding_window}, cache {kv.max_seq_len}) vs eager {model} generate: "
                f"max abs diff {kv.max_abs_diff:.3g} (tolerance {kv.tolerance:g}), top-1 agreement "
                f"{kv.top1_agreement:.1%} {minimum_phrase(kv.min_top1)}, greedy tokens "
                f"{'identical' if kv.tokens_match else 'differ'}{where}; runtime {kv.runtime_ms_per_token:.2f} "
                f"ms/token, {threads} thread(s)" + _vs_float(kv.float_max_abs_diff, kv.float_top1_agreement)
            )
        return 0 if kv.ok else 1
    result = validate(load_forward(program, pte), reference, kind=kind, float_model=float_model)
    if args.json:
        _print_json(con, {"pte": str(pte), "model": model, "kind": kind, "program": "fixed-window", "threads": threads,
                          **result.to_dict()})  # fmt: skip
    else:
        con.print(
            f"{pte}: {'OK' if result.ok else 'MISMATCH'}: max abs diff {result.max_abs_diff:.3g} "
            f"(tolerance {result.tolerance:g}), top-1 agreement {result.top1_agreement:.1%} "
            f"{minimum_phrase(result.min_top1)}, finite {result.finite}, {result.seq_len} tokens vs eager "
            f"{model} use_cache=True; runtime {result.runtime_ms:.1f} ms, eager {result.eager_ms:.1f} ms"
            + _vs_float(result.float_max_abs_diff, result.float_top1_agreement)
        )
    return 0 if result.ok else 1


def _cmd_generate(args: argparse.Namespace, con: Console) -> int:
    from gemma3n_export_fixes.runtime.generation import generate_from_pte

    result = generate_from_pte(
        Path(args.pte), ids=args.ids, prompt=args.prompt, tokenizer=args.tokenizer,
        max_new_tokens=args.max_new_tokens, threads=args.threads,
    )  # fmt: skip
    if args.json:
        _print_json(con, result)
    else:
        con.print(" ".join(str(t) for t in result["new_ids"]))
        if result.get("text") is not None:
            con.print(result["text"])
        per_token = result["decode_ms_per_token"]
        con.progress(
            f"{len(result['new_ids'])} new tokens: prefill {len(result['prompt_ids'])} tokens in "
            f"{result['prefill_ms']:.1f} ms; decode "
            + (f"{per_token:.2f} ms/token over {result['decode_steps']} steps" if per_token is not None else "-")
            + f"; {result['threads']} runtime thread{'s' if result['threads'] != 1 else ''}"
            + (f"; stopped at EOS id {result['new_ids'][-1]}" if result["stopped_at_eos"] else "")
        )
    return 0


def _cmd_sizes(args: argparse.Namespace, con: Console) -> int:
    from gemma3n_export_fixes.export.sizes import TABLE_OPTIONS, weight_bytes
    from gemma3n_export_fixes.models.sources import BUILTIN

    if args.model not in BUILTIN:
        raise UserError(f"--model must be one of {', '.join(BUILTIN)} (sizes are computed from the config), got "
                        f"{args.model!r}")  # fmt: skip
    import_gemma3n(stack_versions())
    rows = [weight_bytes(args.model, *options) for options in TABLE_OPTIONS]
    if args.json:
        _print_json(con, rows)
        return 0
    con.print(
        f"{args.model}: {rows[0]['parameters']:,} parameters; weight bytes per export option (computed per tensor)"
    )
    con.print(
        f"{'dtype':<10}{'linears':<9}{'embeddings':<12}{'GB':>8}{'GiB':>8}{'embeddings GB':>15}{'linears GB':>12}"
    )
    for r in rows:
        k = r["by_kind"]
        con.print(f"{r['dtype']:<10}{r['qlinear']:<9}{r['qembedding']:<12}{r['bytes'] / 1e9:>8.2f}"
                  f"{r['bytes'] / 2**30:>8.2f}{k['embedding'] / 1e9:>15.2f}{k['linear'] / 1e9:>12.2f}")  # fmt: skip
    return 0


def _cmd_check(args: argparse.Namespace, con: Console) -> int:
    from gemma3n_export_fixes.cli.check import print_summary, run_check, select_exports, write_json

    if args.json and Path(args.json).is_dir():
        raise UserError(f"--json {args.json}: is a directory")
    keep = Path(args.keep) if args.keep else None
    if keep is not None and keep.exists() and not keep.is_dir():
        raise UserError(f"--keep {args.keep}: exists and is not a directory")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be at least 1")
    names = select_exports(args.exports)
    record = run_check(say=con.print, keep=keep, jobs=args.jobs, exports=names)
    print_summary(record, say=con.print)
    if args.json:
        write_json(record, Path(args.json))
        con.print(f"wrote {args.json}")
    return 0 if record["ok"] else 1


THREADS_HELP = (
    "threads of the ExecuTorch runtime's pool (default: the cores not kept busy by other processes, "
    "at least 1: XNNPACK's pool spins while it waits, so more threads than idle cores is slower)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma3n-export-fixes",
        description=(
            "Fixes for exporting transformers' Gemma 3n text decoder to ExecuTorch. Installing the package "
            "applies them automatically whenever transformers' Gemma 3n code is imported; set "
            "GEMMA3N_EXPORT_FIXES=0 to turn that off for a process, or GEMMA3N_EXPORT_FIXES_DISABLE=ID,... to "
            "leave single patches out (ids: see `status`)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="show third-party output (library warnings, "
                        "C++ log lines) instead of sending it to the log file")  # fmt: skip
    common.add_argument("--log", metavar="FILE", help="where third-party output goes (default: "
                        "~/.cache/gemma3n-export-fixes/COMMAND.log, overwritten each run)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = sub.add_parser(
        "status",
        parents=[common],
        help="every change this package makes to other people's code: which this stack needs, which apply, and why",
        description=(
            "Import transformers' Gemma 3n module as an export script would, then report per patch (kind: fix, "
            "shortcut or form; scope: import = applied when its module is imported, export = only while `export` "
            "traces and lowers): applied, ready (an export patch that would apply here), not-needed (this release "
            "does not have the defect), disabled (GEMMA3N_EXPORT_FIXES_DISABLE names it), skipped-drift (the code "
            "differs from what the patch was written for), failed (rolled back) or pending (its module is not "
            "imported, or automatic patching is off)."
        ),
    )
    status.add_argument("--json", action="store_true", help="print a JSON record instead of a table")
    status.set_defaults(func=_cmd_status)

    from gemma3n_export_fixes.export.options import CLI_LINEAR_QUANTS, DEFAULT_QLINEAR, RECIPES, ExportOptions
    from gemma3n_export_fixes.export.quant import EMBEDDING_QUANTS, GROUP_SIZE
    from gemma3n_export_fixes.models.sources import DTYPES

    export = sub.add_parser(
        "export",
        parents=[common],
        help="export the text decoder to an ExecuTorch .pte (and a .json record next to it)",
        description=(
            "Export the Gemma 3n text decoder (language_model + lm_head; no vision/audio towers). The default is "
            "what a phone runs: one prefill+decode program with a static KV cache of MAX_SEQ_LEN positions "
            "(ExecuTorch's LLM runner and `generate` drive it), delegated to XNNPACK, linears 8da4w, embeddings "
            "4w. --fixed-window gives the seed repo's form instead (token ids [1, SEQ_LEN] in, logits out, "
            "use_cache=False). Flags follow optimum-cli export executorch (--recipe, --qlinear, --qembedding, "
            "--max_seq_len). FILE.pte and FILE.json (versions, patches applied, config hash, sizes, sha256, "
            "stage timings, peak RSS), and a checkpoint's tokenizer as FILE.tokenizer.json, are written "
            "atomically: on failure none exists."
        ),
    )
    export.add_argument("--model", required=True, help="a local checkpoint directory (gemma3n or gemma3n_text), "
                        "or a built-in: tiny (300k parameters, for trying things), e2b-shape, e4b-shape (the "
                        "real configs with random weights)")  # fmt: skip
    export.add_argument("--out", required=True, metavar="FILE.pte", help="where to write the program")
    form = export.add_mutually_exclusive_group()
    form.add_argument("--fixed-window", action="store_true", help="the seed-compatible program: SEQ_LEN tokens "
                      "in, logits out, no cache")  # fmt: skip
    form.add_argument("--kv-cache", action="store_true", help=argparse.SUPPRESS)  # the default; older spelling
    default = ExportOptions.default  # the command line's defaults are the options' (export/options.py)
    export.add_argument("--seq-len", type=int, default=default("seq_len"),
                        help="--fixed-window: number of tokens (default: %(default)s)")  # fmt: skip
    export.add_argument("--max_seq_len", "--max-seq-len", dest="max_seq_len", type=int,
                        default=default("max_seq_len"),
                        help="KV cache: positions in the cache, prompt + generated tokens "
                        "(default: %(default)s)")  # fmt: skip
    export.add_argument("--dtype", choices=DTYPES, default=default("dtype"), help="weights and activations "
                        "(default: %(default)s)")  # fmt: skip
    export.add_argument(
        "--recipe",
        "--backend",
        dest="recipe",
        choices=RECIPES,
        default=default("recipe"),
        help="xnnpack (delegated, fast) or portable (ExecuTorch's portable kernels); default: %(default)s",
    )
    export.add_argument(
        "--qlinear",
        "--quant",
        dest="qlinear",
        choices=CLI_LINEAR_QUANTS,
        default=default("qlinear"),
        help=f"linears: 8da4w / 8da8w: int8 dynamic activations, int4 weights in groups of {GROUP_SIZE} / int8 per "
        "channel, XNNPACK only; 8w (alias int8): weight-only int8, portable only; none. Default: "
        + ", ".join(f"{q} with {r}" for r, q in DEFAULT_QLINEAR.items()),
    )
    export.add_argument(
        "--qembedding",
        "--quant-embeddings",
        dest="qembedding",
        choices=EMBEDDING_QUANTS,
        nargs="?",
        const="8w",
        default=default("qembedding"),
        help=f"embed_tokens and the per-layer table (~57%% of E2B's parameters): 4w (int4 in groups of "
        f"{GROUP_SIZE}), 8w (int8 per row; a bare flag) or none; default: %(default)s",
    )
    export.set_defaults(func=_cmd_export)

    validate = sub.add_parser(
        "validate",
        parents=[common],
        help="run a .pte in the ExecuTorch runtime and compare with the eager model",
        description=(
            "Load FILE.pte in the ExecuTorch runtime and compare with the eager model on seeded real token ids. "
            "Fixed window: logits vs eager use_cache=True (max abs diff, top-1 agreement, NaN/Inf). KV cache: "
            "token by token vs eager greedy generate for twice the sliding window (teacher-forced logits, then "
            "the program's own greedy tokens; at most 32 new tokens for a model of more than 1B parameters, whose "
            "eager reference is slow). Exit 0 when within tolerance, 1 otherwise. The model defaults to the one "
            "named in FILE.json."
        ),
    )
    validate.add_argument("pte", metavar="FILE.pte")
    validate.add_argument(
        "--max-new-tokens", "--max_new_tokens", type=int, default=None, metavar="N",
        help="KV cache: decode at most N new tokens (default: twice the sliding window within the cache; 32 at size)",
    )  # fmt: skip
    validate.add_argument("--model", help="tiny, e2b-shape, e4b-shape or a checkpoint directory")
    validate.add_argument("--json", action="store_true", help="print a JSON record")
    validate.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    validate.set_defaults(func=_cmd_validate)

    generate = sub.add_parser(
        "generate",
        parents=[common],
        help="greedy decoding from a KV-cache .pte: token ids in, token ids out",
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
    generate.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    generate.set_defaults(func=_cmd_generate)

    sizes = sub.add_parser(
        "sizes",
        parents=[common],
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
        parents=[common],
        help="the main job: patch states, reproducers, export + validate of tiny on portable and XNNPACK",
        description=(
            "For the installed stack: versions, each patch's state, each patch's reproducer on the upstream and "
            "on the patched code (two fresh processes), then export + validate of the built-in tiny model four "
            "ways (fixed window portable and XNNPACK, KV cache portable, KV cache 8da4w + 4w on XNNPACK), each in a "
            "process of its own, as many at once as --jobs. Exit 0 when every patch verdict is good and every "
            "export validates."
        ),
    )
    check.add_argument("--json", metavar="FILE", help="also write the machine record (what a matrix cell stores)")
    check.add_argument("--keep", metavar="DIR", help="keep the exported programs (tiny-NAME.pte + .json) in DIR")
    check.add_argument(
        "--exports", metavar="NAMES",
        help="only these exports, comma-separated (default: all four: portable,xnnpack,kv-portable,kv-8da4w-4w; "
             "a matrix cell runs the ones its row's kind names in matrix/grid.toml)",
    )  # fmt: skip
    check.add_argument(
        "--jobs", type=int, metavar="N",
        help="how many of its jobs (reproducer and export processes) run at once (default: one per core, at most 4; "
             "each export needs ~1.3 GB)",
    )  # fmt: skip
    check.set_defaults(func=_cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import traceback

    args = build_parser().parse_args(argv)
    log = Path(args.log) if args.log else default_log(args.command)
    with console(args.verbose, log) as con:
        try:
            code = int(args.func(args, con))
        except UserError as exc:
            con.error(f"gemma3n-export-fixes: error: {exc}")
            return 1
        except KeyboardInterrupt:
            con.error("gemma3n-export-fixes: interrupted")
            return 130
        except Exception:  # a bug, ours or a library's: the whole traceback, never hidden
            con.error(traceback.format_exc().rstrip())
            code = 1
        if code != 0 and con.log is not None:
            con.error(f"gemma3n-export-fixes: third-party output of this run: {con.log}")
        return code
