"""``gemma3n-export-fixes``: the command line.

``status`` imports transformers' Gemma 3n modelling module the way a user's export script would (so the
import hook runs exactly as it would there) and reports, per patch, what happened and why, plus the
versions of torch, transformers, executorch and torchao found. ``--json`` writes the same for machines.

Exit codes: 0 ok, 1 the stack cannot be patched (transformers missing, or without Gemma 3n), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from gemma3n_export_fixes.versions import stack_versions


class UserError(Exception):
    """A mistake or a missing piece the user can fix: reported as one line, exit 1, no traceback."""


def _activation_files() -> list[str]:
    import site

    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    found = []
    for directory in dirs:
        for name in ("gemma3n_export_fixes.pth", "gemma3n_export_fixes.start"):
            path = f"{directory}/{name}"
            try:
                with open(path, encoding="utf-8"):
                    found.append(path)
            except OSError:
                continue
    return found


def _import_gemma3n(versions: dict[str, str | None]) -> None:
    import importlib

    if versions.get("transformers") is None:
        raise UserError("transformers is not installed: nothing to patch (pip install 'transformers>=4.53')")
    from gemma3n_export_fixes._startup import install
    from gemma3n_export_fixes.patch import TARGET_MODULE

    install()  # what the .pth does at start-up; honours GEMMA3N_EXPORT_FIXES
    try:
        importlib.import_module(TARGET_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("transformers.models.gemma3n"):
            raise UserError(f"transformers {versions['transformers']} has no Gemma 3n (it arrived in 4.53.0)") from None
        raise UserError(f"cannot import {TARGET_MODULE}: {exc}") from None
    except ImportError as exc:
        raise UserError(f"cannot import {TARGET_MODULE}: {exc}") from None


def status_record() -> dict[str, Any]:
    """The machine-readable status: versions, activation, and one entry per patch."""
    versions = stack_versions()
    _import_gemma3n(versions)
    from gemma3n_export_fixes import api
    from gemma3n_export_fixes._startup import disabled_by_env

    return {
        "versions": versions,
        "activation": {"files": _activation_files(), "disabled_by_env": disabled_by_env()},
        "patches": [s.to_dict() for s in api.status()],
    }


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
