"""``check``: the main job. Everything a user (or a matrix cell) needs to know about the installed stack.

1. versions and each patch's state on this transformers release;
2. each patch's reproducer on the upstream code and on the patched code, in two fresh processes (so
   neither state can leak into the other);
3. export + validate of the built-in ``tiny`` model: the seed's fixed window on the portable and XNNPACK
   paths, and the on-device paths: a KV-cache program (portable, float32, token by token vs eager
   ``generate``, past twice the sliding window) and a KV-cache program with 8da4w linears and 4w embeddings on
   XNNPACK. On releases before ``kvcache.KV_CACHE_SINCE`` those need the recipe patches; when one is not
   applied, the KV-cache exports are ``refused`` (a failure of the check).

Verdict per patch: ``fixed`` (bug on upstream, gone when patched), ``not-needed`` (no bug on upstream and
not applied), or a failure (``bug-not-fixed``, ``range-wrong``: upstream has the bug but the patch
did not apply, ``stale``: applied though upstream shows no bug). ``check`` exits 0 only when every patch
verdict is good and both exports validate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gemma3n_export_fixes.errors import UserError, first_line, require

Say = Callable[[str], None]
GOOD_VERDICTS = ("fixed", "not-needed", "applies", "disabled")
#: A toolchain patch's verdict from its state (no reproducer: the exports are its evidence); any other state
#: (``skipped-drift``, ``pending``, ``failed``) is its own verdict, and not a good one.
TOOLCHAIN_VERDICTS = {"ready": "applies", "applied": "applies", "not-needed": "not-needed", "disabled": "disabled"}


def _job_env(jobs: int) -> dict[str, str]:
    """The environment of a job process: with jobs side by side, one intra-op thread each unless the user
    chose (the jobs are the parallelism; OpenMP threads spin while they wait, so two jobs with two threads
    each on two cores slow each other down)."""
    return {"OMP_NUM_THREADS": "1", **os.environ} if jobs > 1 else dict(os.environ)


def _reproduce(mode: str, jobs: int = 1) -> list[dict[str, Any]]:
    from gemma3n_export_fixes._env import ENV_VAR

    env = {k: v for k, v in _job_env(jobs).items() if k != ENV_VAR}
    if mode == "upstream":
        env[ENV_VAR] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "gemma3n_export_fixes.plugin.reproduce", mode],
        capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the {mode} reproducer process failed: {tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def verdict(state: str, upstream_bug: bool, patched_bug: bool) -> str:
    """The verdict for one patch from its state and the two reproducer outcomes."""
    if state == "applied":
        if not upstream_bug:
            return "stale"
        return "bug-not-fixed" if patched_bug else "fixed"
    if upstream_bug:
        return "range-wrong" if state == "not-needed" else f"bug-{state}"
    return "not-needed"


def _patch_rows(
    statuses: list[dict[str, Any]], upstream: list[dict[str, Any]], patched: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per patch: its state, both reproducer outcomes, the verdict. A toolchain (export-scope) patch has no
    reproducer: its evidence is the exports below, whose records list it applied; its verdict is its state here
    (``applies`` where it is ready; a drift fails the check as a model patch's does)."""
    ups, fixes = {r["id"]: r for r in upstream}, {r["id"]: r for r in patched}
    rows = []
    for status in statuses:
        if status.get("scope") == "export":
            judged = TOOLCHAIN_VERDICTS.get(status["state"], status["state"])
            keys = ("id", "state", "reason", "needed_on", "scope", "kind")
            rows.append({key: status[key] for key in keys} | {"upstream": None, "patched": None, "verdict": judged})
            continue
        up, fixed = ups[status["id"]], fixes[status["id"]]
        rows.append(
            {
                "id": status["id"],
                "state": status["state"],
                "reason": status["reason"],
                "needed_on": status["needed_on"],
                "upstream": up,
                "patched": fixed,
                "verdict": verdict(status["state"], up["bug"], fixed["bug"]),
            }
        )
    return rows


#: The tiny model's KV cache: prompt + twice the sliding window (8) fits.
TINY_MAX_SEQ_LEN = 32


#: The exports that take longest (XNNPACK lowering), longest first: the first runs in a process of its own.
LONGEST_FIRST = ("kv-8da4w-4w", "xnnpack", "kv-portable")


def check_exports() -> dict[str, Any]:
    """The exports ``check`` runs, by name (``ExportOptions``)."""
    from gemma3n_export_fixes.export.options import ExportOptions

    fixed = {"kv_cache": False, "qlinear": "none", "qembedding": "none"}  # the seed's form: float, fixed window
    return {
        "portable": ExportOptions(recipe="portable", **fixed),
        "xnnpack": ExportOptions(recipe="xnnpack", **fixed),
        "kv-portable": ExportOptions(recipe="portable", qembedding="none", max_seq_len=TINY_MAX_SEQ_LEN),
        "kv-8da4w-4w": ExportOptions(recipe="xnnpack", qlinear="8da4w", qembedding="4w", max_seq_len=TINY_MAX_SEQ_LEN),
    }


def select_exports(names: str | None) -> tuple[str, ...]:
    """The exports ``--exports`` names (comma-separated; ``None``: all of :func:`check_exports`), in check's order;
    ``UserError`` for an unknown or empty selection."""
    known = tuple(check_exports())
    if names is None:
        return known
    chosen = {name.strip() for name in names.split(",") if name.strip()}
    unknown = sorted(chosen - set(known))
    if unknown or not chosen:
        raise UserError(f"--exports {names}: choose from {', '.join(known)} (comma-separated)")
    return tuple(name for name in known if name in chosen)


def _kv_refused(name: str, options: Any, reason: str) -> dict[str, Any]:
    """A KV-cache export ``check`` does not attempt: a recipe patch this release needs is not applied."""
    return {"name": name, "backend": options.recipe, "options": options.describe(), "ok": False, "refused": reason}


def _tokens_phrase(options: Any, result: Any) -> str:
    """How the greedy-token comparison reads, and whether it was judged (float32 only)."""
    if not options.kv_cache:
        return ""
    if result.tokens_match:
        return ", greedy tokens identical to eager (judged)"
    if options.kind == "float32":
        return f", greedy tokens differ from eager from new token {result.first_divergence} (judged: a failure)"
    return (
        f"; judged on logits only: its own greedy tokens part from eager's at new token {result.first_divergence}, "
        f"which {options.kind} programs may do on near-ties (tokens not judged)"
    )


def export_and_validate(name: str, options: Any, workdir: Path, say: Say) -> dict[str, Any]:
    from gemma3n_export_fixes.export.program import export_pte
    from gemma3n_export_fixes.models.sources import load_model
    from gemma3n_export_fixes.runtime.loading import load_forward, load_program
    from gemma3n_export_fixes.runtime.validation import float_source, reference_model, validate, validate_kv

    out = workdir / f"tiny-{name}.pte"
    say(f"export tiny -> {name} ...")
    try:
        record = export_pte(load_model("tiny"), out, options, progress=lambda line: say(f"  {name} {line.strip()}"))
        start = time.perf_counter()
        program = load_program(out)
        reference, float_model = reference_model("tiny", options), float_source("tiny", options)
        if options.kv_cache:
            result = validate_kv(program, reference, kind=options.kind, float_model=float_model)
        else:
            result = validate(load_forward(program, out), reference, kind=options.kind, float_model=float_model)
        seconds = {**record["seconds"], "validate": round(time.perf_counter() - start, 3)}
    except Exception as exc:
        say(f"export tiny -> {name}: FAILED: {first_line(exc)}")
        return {"name": name, "backend": options.recipe, "options": options.describe(), "ok": False,
                "error": first_line(exc)}  # fmt: skip
    say(
        f"export tiny -> {name}: {'OK' if result.ok else 'MISMATCH'}: max abs diff {result.max_abs_diff:.2e}, "
        f"top-1 {result.top1_agreement:.0%}, {record['pte']['bytes'] / 1e6:.2f} MB"
        + (
            ""
            if result.float_max_abs_diff is None
            else f" (vs float: {result.float_max_abs_diff:.2e}, top-1 {result.float_top1_agreement:.0%})"
        )
        + _tokens_phrase(options, result)
    )
    return {
        "name": name,
        "backend": options.recipe,
        "options": options.describe(),
        "ok": result.ok,
        "pte_bytes": record["pte"]["bytes"],
        "peak_rss_mb": record["peak_rss_mb"],
        "lowering": record["lowering"],
        "seconds": seconds,
        "validation": result.to_dict(),
    }


def _exports_in_child(names: list[str], workdir: Path, say: Say, jobs: int) -> list[dict[str, Any]]:
    """:func:`export_and_validate` of each of ``names``, one after the other, in one fresh process (``check_job``),
    its progress relayed through ``say``; an export the process did not report on (it died) is a failure."""
    child = subprocess.Popen(
        [sys.executable, "-m", "gemma3n_export_fixes.cli.check_job", ",".join(names), str(workdir)],
        stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(), env=_job_env(jobs),
    )  # fmt: skip
    rows: dict[str, dict[str, Any]] = {}
    assert child.stdout is not None
    for line in child.stdout:
        kind, _, text = line.rstrip("\n").partition(" ")
        if kind == "progress":
            say(text)
        elif kind == "result":
            row = json.loads(text)
            rows[row["name"]] = row
    code = child.wait()
    for name in names:
        if name not in rows:
            options = check_exports()[name]
            error = f"the export process died (exit code {code}) before it reported"
            say(f"export tiny -> {name}: FAILED: {error}")
            rows[name] = {"name": name, "backend": options.recipe, "options": options.describe(), "ok": False,
                          "error": error}  # fmt: skip
    return [rows[name] for name in names]


def export_groups(names: list[str]) -> list[list[str]]:
    """The export processes check starts: the longest export (:data:`LONGEST_FIRST`) in a process of its own, the
    others together, longest first (each process pays ~5-7 s of imports; the tiny exports are a few seconds each
    when their lowered program is reused)."""
    alone = [name for name in LONGEST_FIRST[:1] if name in names]
    rest = [name for name in (*LONGEST_FIRST, *names) if name in names and name not in alone]
    return [group for group in ([alone] if alone else []) + [list(dict.fromkeys(rest))] if group]


def default_jobs() -> int:
    """How many of check's jobs run at once: one per core, at most 4 (each export needs ~1.3 GB)."""
    return max(1, min(4, os.cpu_count() or 1))


def run_check(
    say: Say = print, keep: Path | None = None, jobs: int | None = None, exports: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Run the whole check; returns the machine record (``ok`` says whether everything passed).

    ``keep``: a directory to leave the exported programs (``tiny-<name>.pte`` + ``.json``) in. ``jobs``: how
    many of its independent jobs (the two reproducer processes, one process per export) run at once
    (:func:`default_jobs` when not given); the longest start first, and the record is the same in any order.
    ``exports``: which of :func:`check_exports` to run (all when not given); the record names them all under
    ``exports_selected`` so a reader can tell a program not run from one that failed.
    """
    from gemma3n_export_fixes.cli.stack import status_record
    from gemma3n_export_fixes.export.kvcache import unsupported_reason

    require("executorch", "check", "executorch")
    jobs = jobs or default_jobs()
    selected = exports or tuple(check_exports())
    started = time.perf_counter()
    status = status_record()
    versions = status["versions"]
    say("stack: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()))
    for p in status["patches"]:
        say(f"patch {p['id']}: {p['state']}")
    kv_reason = unsupported_reason(versions["transformers"] or "0")
    if kv_reason:
        say(f"KV cache: refused: {kv_reason}")
    lock = threading.Lock()

    def said(line: str) -> None:
        with lock:
            say(line)

    def reproduce(mode: str) -> list[dict[str, Any]]:
        what = "upstream code (GEMMA3N_EXPORT_FIXES=0)" if mode == "upstream" else "patched code"
        said(f"reproducers: {what}, fresh process ...")
        start = time.perf_counter()
        rows = _reproduce(mode, jobs)
        said(f"reproducers: {mode} done in {time.perf_counter() - start:.1f} s")
        return rows

    def export(names: list[str], workdir: Path) -> list[dict[str, Any]]:
        refused = {name: _kv_refused(name, check_exports()[name], kv_reason)
                   for name in names if kv_reason and check_exports()[name].kv_cache}  # fmt: skip
        run = [name for name in names if name not in refused]
        done = dict(zip(run, _exports_in_child(run, workdir, said, jobs), strict=True)) if run else {}
        return [{**refused, **done}[name] for name in names]

    def run_all(workdir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        names = list(selected)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            groups = [pool.submit(export, group, workdir) for group in export_groups(names)]
            upstream, patched = pool.submit(reproduce, "upstream"), pool.submit(reproduce, "patched")
            rows = {row["name"]: row for group in groups for row in group.result()}
            return upstream.result(), patched.result(), [rows[name] for name in names]

    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        upstream, patched, done = run_all(keep)
    else:
        with tempfile.TemporaryDirectory(prefix="gemma3n-check-") as tmp:
            upstream, patched, done = run_all(Path(tmp))
    patches = _patch_rows(status["patches"], upstream, patched)
    ok = all(p["verdict"] in GOOD_VERDICTS for p in patches) and all(e["ok"] for e in done)
    return {
        "format": "gemma3n-export-fixes/check/1",
        "ok": ok,
        "versions": versions,
        "activation": status["activation"],
        "patches": patches,
        "exports": done,
        "exports_selected": list(selected),
        "jobs": jobs,
        "seconds": round(time.perf_counter() - started, 1),
    }


def print_summary(record: dict[str, Any], say: Say = print) -> None:
    say("")
    say(f"{'patch':<31}{'state':<15}{'upstream':<28}{'patched':<12}verdict")
    for p in record["patches"]:
        up = p["upstream"]
        if up is None:  # a toolchain patch: no reproducer (see _patch_rows)
            say(f"{p['id']:<31}{p['state']:<15}{'(export scope)':<28}{'':<12}{p['verdict']}")
            continue
        shown = f"bug ({up['error']})" if up["bug"] else "no bug"
        say(f"{p['id']:<31}{p['state']:<15}{shown[:27]:<28}{'bug' if p['patched']['bug'] else 'no bug':<12}"
            f"{p['verdict']}")  # fmt: skip
    say("")
    say(f"{'export':<13}{'result':<13}{'max abs diff':<14}{'top-1':<8}{'MB':<7}stages (s)")
    for e in record["exports"]:
        name = e.get("name", e["backend"])
        if "refused" in e:
            say(f"{name:<13}{'REFUSED':<13}{e['refused']}")
            continue
        if "validation" not in e:
            say(f"{name:<13}{'FAILED':<13}{e.get('error', '')}")
            continue
        v = e["validation"]
        stages = ", ".join(f"{k} {s:.1f}" for k, s in e["seconds"].items())
        say(f"{name:<13}{'OK' if e['ok'] else 'MISMATCH':<13}{v['max_abs_diff']:<14.2e}"
            f"{v['top1_agreement']:<8.0%}{e['pte_bytes'] / 1e6:<7.2f}{stages}")  # fmt: skip
    say("")
    n = record.get("jobs")
    jobs = f" ({n} job{'s' * (n != 1)} at a time)" if n else ""
    say(f"check: {'OK' if record['ok'] else 'FAILED'} in {record['seconds']} s{jobs}")


def write_json(record: dict[str, Any], path: Path) -> None:
    from gemma3n_export_fixes.export.writing import write_atomically

    if path.is_dir():
        raise UserError(f"--json {path}: is a directory")
    write_atomically(path, (json.dumps(record, indent=2) + "\n").encode())
