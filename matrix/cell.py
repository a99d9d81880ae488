"""Run one matrix cell: a fresh venv with the row's pins and this package, then ``check --json``.

The cell's result (``results/<id>.json``) is check's record plus a ``cell`` block: the row, the inputs
hash (see :func:`grid.inputs_hash`), when and how long, and every distribution installed in the cell's venv
(name -> version), so a change in a transitive dependency is visible between two results. A failing check
is evidence too and is stored.
uv is used when it is on PATH, told to look where pip looks for wheels (pip's find-links: on these machines
the CPU torch wheel lives there, while the registry's torch is a multi-GB CUDA build).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matrix.grid import (
    ROOT,
    Row,
    cell_exports,
    cell_kind,
    find_links_args,
    inputs_hash,
    install_flags,
    pins,
    result_path,
)

Log = Callable[[str], None]
#: Shared by the cells of one machine (kept out of git with the rest of ``.nox``).
LOWERED_CACHE = ROOT / ".nox" / "lowered-cache"


def _uv() -> str | None:
    """uv's executable: on PATH, or from the ``uv`` package of the Python running the matrix (``pip install
    uv``). A cell installs in ~15 s with it (pip: ~90 s)."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin
    except ImportError:
        return None
    try:
        return find_uv_bin()
    except FileNotFoundError:
        return None


def _create_venv(row: Row, venv: Path, log: Log) -> Path:
    python = shutil.which(f"python{row['python']}")
    if python is None:
        raise RuntimeError(f"python{row['python']} not found on PATH (row {row['id']})")
    if venv.exists():
        shutil.rmtree(venv)
    uv = _uv()
    requirements = [*pins(row), str(ROOT)]
    flags = install_flags(row)
    if uv:
        log(f"uv venv {venv} ({python})")
        subprocess.run([uv, "venv", "-q", "-p", python, str(venv)], check=True)
        uv_flags = ["--prerelease", "allow"] if flags else []
        subprocess.run([uv, "pip", "install", "-q", "-p", str(venv / "bin" / "python"), *find_links_args(), *uv_flags,
                        *requirements], check=True)  # fmt: skip
    else:
        log(f"python -m venv {venv} ({python}); pip install {' '.join(pins(row))} .")
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *flags, *requirements],
                       check=True)  # fmt: skip
    return venv / "bin" / "gemma3n-export-fixes"


FREEZE = (
    "import importlib.metadata as m, json; "
    "print(json.dumps(sorted({d.metadata['Name'].lower(): d.version for d in m.distributions()}.items())))"
)


def installed_distributions(venv: Path) -> dict[str, str]:
    """Every distribution installed in the cell's venv, name -> version: the full lock the result came from."""
    out = subprocess.run([str(venv / "bin" / "python"), "-c", FREEZE], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def run_cell(
    row: Row,
    venv: Path,
    log: Log = print,
    lowered_cache: Path | None = LOWERED_CACHE,
    result_file: Path | None = None,
) -> dict[str, Any]:
    """Install the row into ``venv``, run ``check --json`` there, store and return the cell's result.

    ``lowered_cache``: where lowered programs are shared between cells (``None``: every cell lowers its own).
    ``result_file``: where to store it (default: ``matrix/results/<id>.json``, the committed evidence).
    """
    started = time.perf_counter()
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    # the sources the venv is about to install: a change while the cell runs leaves the result *older package*
    inputs = inputs_hash(row)
    cli = _create_venv(row, venv, log)
    installed = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        record_file = Path(tmp) / "check.json"
        env = {k: v for k, v in os.environ.items() if k not in ("GEMMA3N_EXPORT_FIXES", "PYTHONPATH")}
        # as if the venv were activated: some executorch releases (1.0.x) run a `flatc` found on PATH
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
        # uv writes no .pyc and these machines set PYTHONDONTWRITEBYTECODE=1: the cell's processes (reproducers,
        # one per export) would each compile transformers anew (~20 s); the first ones write it for the rest
        # (uv pip install --compile-bytecode instead cost 53 s of a 7 s install)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        # an exported graph lowered by an earlier cell on the same torch/executorch/torchao is not lowered again
        # (gemma3n_export_fixes.export.lowered_cache); a fixed hash seed makes XNNPACK's lowering byte-stable, and
        # the trace itself: transformers 5.x's Gemma3nTextModel.forward iterates a set of layer-type strings
        env.setdefault("PYTHONHASHSEED", "0")
        if lowered_cache is not None:
            env["GEMMA3N_EXPORT_FIXES_LOWERED_CACHE"] = str(lowered_cache)
        exports = ",".join(cell_exports(row))
        log(f"{cli} check --exports {exports} --json ...")
        proc = subprocess.run([str(cli), "check", "--exports", exports, "--json", str(record_file)], cwd=tmp,
                              env=env, capture_output=True, text=True)  # fmt: skip
        if record_file.exists():
            record = json.loads(record_file.read_text())
        else:  # check could not even start: record why, as evidence
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            record = {"format": "gemma3n-export-fixes/check/1", "ok": False, "error": tail}
    record["cell"] = {
        "id": row["id"],
        "row": row,
        "inputs_hash": inputs,
        "kind": cell_kind(row),
        "ran_at": when,
        "install_seconds": round(installed - started, 1),
        "check_seconds": round(time.perf_counter() - installed, 1),
        "check_exit_code": proc.returncode,
        "lowered_cache": bool(lowered_cache),
        "installed": installed_distributions(venv),
    }
    path = result_file or result_path(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".json.partial")
    tmp_path.write_text(json.dumps(record, indent=2) + "\n")
    tmp_path.replace(path)
    log(f"{row['id']}: check {'OK' if record.get('ok') else 'FAILED'} -> {path}")
    return record


def evidence_summary(record: dict[str, Any]) -> dict[str, Any]:
    """What a cell's result claims, without what varies from run to run (timings, digests, float error in the
    last digits): check's verdict, each patch's state, reproducer outcomes and verdict, each export's outcome."""
    patches = {
        p["id"]: (p["state"], (p.get("upstream") or {}).get("bug"), (p.get("patched") or {}).get("bug"), p["verdict"])
        for p in record.get("patches", [])
    }
    exports = {
        e.get("name", e.get("backend")): "refused" if e.get("refused") else "ok" if e.get("ok") else "failed"
        for e in record.get("exports", [])
    }
    versions = {k: v for k, v in (record.get("versions") or {}).items() if k in ("torch", "executorch", "transformers")}
    return {"ok": record.get("ok"), "versions": versions, "patches": patches, "exports": exports}


def reproduction_differences(stored: dict[str, Any], again: dict[str, Any]) -> list[str]:
    """How a re-run of a cell differs from its stored result, claim by claim (empty: the evidence reproduces)."""
    old, new = evidence_summary(stored), evidence_summary(again)
    problems = []
    for part in ("ok", "versions"):
        if old[part] != new[part]:
            problems.append(f"{part}: stored {old[part]}, now {new[part]}")
    for part, what in (("patches", "patch"), ("exports", "export")):
        for key in sorted(set(old[part]) | set(new[part])):
            if old[part].get(key) != new[part].get(key):
                problems.append(f"{what} {key}: stored {old[part].get(key)}, now {new[part].get(key)}")
    return problems
