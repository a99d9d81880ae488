"""Generate ``upstream_prs/`` from the patch registry and the installed transformers' Gemma 3n sources.

    python -m upstream_prs.generate                 (or: nox -s upstream_prs) everything, into upstream_prs/
    python -m upstream_prs.generate --tests-only    only the test additions, into the committed drafts' folders
    python -m upstream_prs.generate --out DIR       either of the above into DIR instead

For each patch still needed on the installed (newest) release: a folder ``<patch>/`` with the git-style patch
against ``src/transformers/models/gemma3n/{modular,modeling}_gemma3n.py``, ``PR.md`` (DEP-3 header + PR text,
with the exact error the reproducer shows today), and :data:`TEST_NAME`, the additions to transformers'
``tests/models/gemma3n/test_modeling_gemma3n.py``. For each patch already fixed upstream: a short DEP-3 record.

The patch and ``PR.md`` are committed (they hold what was measured on the release). The test additions are
not: their one source is ``templates/<patch>_test.py``, written into ``<patch>/`` on demand (ignored by git).
To send a PR from a checkout, ``--tests-only`` writes them next to the committed patch (no transformers
needed, nothing else rewritten); a full run writes them too.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
FILES = ("modular_gemma3n.py", "modeling_gemma3n.py")
#: The test additions' file name in a draft folder: generated from ``templates/<patch>_test.py``, never committed.
TEST_NAME = "test_modeling_gemma3n_addition.py"


def write_test(patch_id: str, folder: Path) -> Path:
    """Write the test additions of ``patch_id`` (its template, as it is) into ``folder``; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TEST_NAME
    shutil.copyfile(TEMPLATES / f"{patch_id}_test.py", path)
    return path


def write_tests(out: Path = HERE) -> list[Path]:
    """The test additions of every committed draft (a ``<patch>/`` folder here with a template), into ``out``."""
    drafts = sorted(p.name for p in HERE.iterdir() if p.is_dir() and (TEMPLATES / f"{p.name}_test.py").is_file())
    return [write_test(patch_id, out / patch_id) for patch_id in drafts]


def unified_diff(old: str, new: str, name: str) -> str:
    path = f"src/transformers/models/gemma3n/{name}"
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}", n=3
    )
    return f"diff --git a/{path} b/{path}\n" + "".join(lines)


def upstream_error(patch_id: str) -> str:
    """What the patch's reproducer shows on the installed upstream code (fresh process, hook off)."""
    env = {**os.environ, "GEMMA3N_EXPORT_FIXES": "0"}
    proc = subprocess.run([sys.executable, "-m", "gemma3n_export_fixes.plugin.reproduce", "upstream"],
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), check=True)  # fmt: skip
    (result,) = [r for r in json.loads(proc.stdout.strip().splitlines()[-1]) if r["id"] == patch_id]
    return result["detail"]


def draft(patch, edit, version: str, today: str, out: Path) -> Path:
    from upstream_prs.apply_check import check, installed_sources

    folder = out / patch.id
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sources = installed_sources()
    diff = "".join(unified_diff(src, edit(src, name), name) for name in FILES for src in [(sources / name).read_text()])
    patch_file = folder / f"0001-gemma3n-{patch.id}.patch"
    patch_file.write_text(diff)
    write_test(patch.id, folder)
    measured = check(patch_file)
    text = (TEMPLATES / f"{patch.id}_PR.md").read_text()
    import torch

    text = text.replace("{transformers}", version).replace("{date}", today)
    text = text.replace("{torch}", torch.__version__.split("+")[0])
    text = text.replace("{error}", upstream_error(patch.id))
    text += (
        f"\nMeasured on transformers {version} with the patch applied (gemma3n-export-fixes "
        f"`upstream_prs/apply_check.py`): `torch.export` non-strict: {measured['export_strict_False']}, strict: "
        f"{measured['export_strict_True']}; `to_edge` + `to_executorch`: {measured['to_edge']}; max abs difference "
        f"from the current code: {measured['max_abs_diff_float32']:.3g} (float32), "
        f"{measured['max_abs_diff_bfloat16']:.3g} (bfloat16), {measured['max_abs_diff_float16']:.3g} (float16).\n"
    )
    (folder / "PR.md").write_text(text)
    return folder


def record(patch, version: str, today: str, out: Path) -> Path:
    path = out / f"{patch.id}.md"
    path.write_text(
        f"Description: {patch.title}\n"
        f" {patch.defect}\n"
        f"Bug: see gemma3n_export_fixes/plugin/patches/{patch.id.replace('-', '_')}.py (reproducer)\n"
        f"Forwarded: not-needed\n"
        f"Applied-Upstream: {patch.upstream}\n"
        f"Last-Update: {today}\n\n"
        f"# {patch.id}: fixed upstream\n\n"
        f"Needed on transformers {patch.needed_on}; the installed transformers {version} no longer has the defect, "
        "and the matrix (`matrix/README.md`) shows where the reproducer stops showing it. The runtime patch stays "
        "for the older releases until the lowest supported transformers is past the fix.\n"
    )
    return path


def generate(out: Path = HERE) -> list[Path]:
    import transformers

    from gemma3n_export_fixes.plugin.patches import REGISTRY
    from upstream_prs.edits import EDITS

    version = transformers.__version__
    today = dt.date.today().isoformat()
    written = []
    for patch in (p for p in REGISTRY if p.is_transformers_patch):  # a client's record is written by hand
        if patch.needed_by(version):
            if patch.id not in EDITS:
                raise SystemExit(f"{patch.id} is still needed on {version} but has no upstream edit in edits.py")
            written.append(draft(patch, EDITS[patch.id], version, today, out))
        else:
            stale = out / patch.id
            if stale.is_dir():
                shutil.rmtree(stale)
            written.append(record(patch, version, today, out))
    return written


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m upstream_prs.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: upstream_prs/)")
    parser.add_argument("--tests-only", action="store_true", help=f"write only each committed draft's {TEST_NAME}")
    args = parser.parse_args(argv)
    for path in write_tests(args.out) if args.tests_only else generate(args.out):
        print(f"wrote {path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path}")


if __name__ == "__main__":
    main()
