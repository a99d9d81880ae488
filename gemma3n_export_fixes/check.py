"""``check``: the main job. Everything a user (or a matrix cell) needs to know about the installed stack.

1. versions and each patch's state on this transformers release;
2. each patch's reproducer on the upstream code and on the patched code, in two fresh processes (so
   neither state can leak into the other);
3. export + validate of the built-in ``tiny`` model on the portable and XNNPACK paths.

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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gemma3n_export_fixes.errors import UserError, require

Say = Callable[[str], None]
GOOD_VERDICTS = ("fixed", "not-needed")


def _reproduce(mode: str) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "GEMMA3N_EXPORT_FIXES"}
    if mode == "upstream":
        env["GEMMA3N_EXPORT_FIXES"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "gemma3n_export_fixes._reproduce", mode],
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


def _patch_rows(statuses: list[dict[str, Any]], say: Say) -> list[dict[str, Any]]:
    say("reproducers: upstream code (fresh process, GEMMA3N_EXPORT_FIXES=0) ...")
    start = time.perf_counter()
    upstream = {r["id"]: r for r in _reproduce("upstream")}
    say(f"reproducers: upstream done in {time.perf_counter() - start:.1f} s; patched code (fresh process) ...")
    start = time.perf_counter()
    patched = {r["id"]: r for r in _reproduce("patched")}
    say(f"reproducers: patched done in {time.perf_counter() - start:.1f} s")
    rows = []
    for status in statuses:
        up, fixed = upstream[status["id"]], patched[status["id"]]
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


def _export_and_validate(backend: str, workdir: Path, say: Say) -> dict[str, Any]:
    from gemma3n_export_fixes.exporting import ExportOptions, export_pte
    from gemma3n_export_fixes.models import load_model
    from gemma3n_export_fixes.validation import load_pte, validate

    out = workdir / f"tiny-{backend}.pte"
    say(f"export tiny -> {backend} ...")
    try:
        record = export_pte(load_model("tiny"), out, ExportOptions(backend=backend), progress=say)
        start = time.perf_counter()
        result = validate(load_pte(out), load_model("tiny"))
        seconds = {**record["seconds"], "validate": round(time.perf_counter() - start, 3)}
    except Exception as exc:
        from gemma3n_export_fixes.patch import first_line

        say(f"export tiny -> {backend}: FAILED: {first_line(exc)}")
        return {"backend": backend, "ok": False, "error": first_line(exc)}
    say(
        f"export tiny -> {backend}: {'OK' if result.ok else 'MISMATCH'}: max abs diff {result.max_abs_diff:.2e}, "
        f"top-1 {result.top1_agreement:.0%}, {record['pte']['bytes'] / 1e6:.2f} MB, runtime {result.runtime_ms:.1f} ms"
    )
    return {
        "backend": backend,
        "ok": result.ok,
        "pte_bytes": record["pte"]["bytes"],
        "seconds": seconds,
        "validation": result.to_dict(),
    }


def run_check(say: Say = print, backends: tuple[str, ...] = ("portable", "xnnpack")) -> dict[str, Any]:
    """Run the whole check; returns the machine record (``ok`` says whether everything passed)."""
    from gemma3n_export_fixes.stack import status_record

    require("executorch", "check", "executorch")
    started = time.perf_counter()
    status = status_record()
    versions = status["versions"]
    say("stack: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()))
    for p in status["patches"]:
        say(f"patch {p['id']}: {p['state']}")
    patches = _patch_rows(status["patches"], say)
    with tempfile.TemporaryDirectory(prefix="gemma3n-check-") as tmp:
        exports = [_export_and_validate(backend, Path(tmp), say) for backend in backends]
    ok = all(p["verdict"] in GOOD_VERDICTS for p in patches) and all(e["ok"] for e in exports)
    return {
        "format": "gemma3n-export-fixes/check/1",
        "ok": ok,
        "versions": versions,
        "activation": status["activation"],
        "patches": patches,
        "exports": exports,
        "seconds": round(time.perf_counter() - started, 1),
    }


def print_summary(record: dict[str, Any], say: Say = print) -> None:
    say("")
    say(f"{'patch':<18}{'state':<15}{'upstream':<28}{'patched':<12}verdict")
    for p in record["patches"]:
        up = p["upstream"]
        shown = f"bug ({up['error']})" if up["bug"] else "no bug"
        say(f"{p['id']:<18}{p['state']:<15}{shown[:27]:<28}{'bug' if p['patched']['bug'] else 'no bug':<12}"
            f"{p['verdict']}")  # fmt: skip
    say("")
    say(f"{'export':<10}{'result':<10}{'max abs diff':<14}{'top-1':<8}{'MB':<7}stages (s)")
    for e in record["exports"]:
        if "validation" not in e:
            say(f"{e['backend']:<10}{'FAILED':<10}{e.get('error', '')}")
            continue
        v = e["validation"]
        stages = ", ".join(f"{k} {s:.1f}" for k, s in e["seconds"].items())
        say(f"{e['backend']:<10}{'OK' if e['ok'] else 'MISMATCH':<10}{v['max_abs_diff']:<14.2e}"
            f"{v['top1_agreement']:<8.0%}{e['pte_bytes'] / 1e6:<7.2f}{stages}")  # fmt: skip
    say("")
    say(f"check: {'OK' if record['ok'] else 'FAILED'} in {record['seconds']} s")


def write_json(record: dict[str, Any], path: Path) -> None:
    from gemma3n_export_fixes.exporting import write_atomically

    if path.is_dir():
        raise UserError(f"--json {path}: is a directory")
    write_atomically(path, (json.dumps(record, indent=2) + "\n").encode())
