"""Read the pinned grid (``grid.toml``, the one place versions are pinned) and fingerprint a cell's inputs.

Stdlib only: the noxfile imports this before any virtualenv exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GRID_FILE = HERE / "grid.toml"
RESULTS = HERE / "results"
STACK = ("torch", "torchao", "executorch", "transformers")
KEYS = ("id", "python", *STACK, "tags")

Row = dict[str, Any]


def load_rows(path: Path = GRID_FILE) -> list[Row]:
    """Every row of the grid, in file order; ``ValueError`` names a malformed row."""
    rows = tomllib.loads(path.read_text())["row"]
    ids = [row.get("id") for row in rows]
    for row in rows:
        missing = [key for key in KEYS if key not in row]
        if missing:
            raise ValueError(f"grid row {row.get('id', '?')}: missing {', '.join(missing)}")
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"grid: duplicate row ids {sorted(duplicates)}")
    return rows


TOOLCHAIN = ("torch", "torchao", "executorch")


def cell_kind(row: Row, rows: list[Row] | None = None) -> str:
    """What the row's cell runs (``[cells]`` in grid.toml): its own ``cell`` key, else "toolchain" for the default
    row, the seed row and every row whose torch, torchao or executorch is not the default row's, else "model"."""
    if "cell" in row:
        return str(row["cell"])
    default = default_stack(rows)
    varies_toolchain = any(row[name] != default[name] for name in TOOLCHAIN)
    return "toolchain" if varies_toolchain or {"default-stack", "seed"} & set(row["tags"]) else "model"


def cell_exports(row: Row, rows: list[Row] | None = None, path: Path = GRID_FILE) -> list[str]:
    """The exports of ``check`` the row's cell runs (``check --exports``), from the ``[cells]`` table."""
    return list(tomllib.loads(path.read_text())["cells"][cell_kind(row, rows)]["exports"])


def tool_pin(name: str, path: Path = GRID_FILE) -> str:
    """``name==version`` for a developer tool pinned in the grid's ``[tools]`` table."""
    return f"{name}=={tomllib.loads(path.read_text())['tools'][name]}"


def client_pins(path: Path = GRID_FILE) -> dict[str, str]:
    """``name==version`` of each client package in the grid's ``[clients]`` table (optimum-executorch first)."""
    return {name: f"{name}=={version}" for name, version in tomllib.loads(path.read_text())["clients"].items()}


def transformers_releases(path: Path = HERE / "transformers_releases.txt") -> list[str]:
    """Every transformers release with Gemma 3n, oldest first (``transformers_releases.txt``)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def tagged(tag: str, rows: list[Row] | None = None) -> list[Row]:
    return [row for row in (rows if rows is not None else load_rows()) if tag in row["tags"]]


def default_stack(rows: list[Row] | None = None) -> Row:
    (row,) = tagged("default-stack", rows)
    return row


#: The ``transformers`` value of the "next" row: whatever newest release (pre-releases included) the registry
#: serves when the cell runs. Its result names the version it got; it is never current (the registry moves).
NEXT = "next"


def is_next(row: Row) -> bool:
    return row["transformers"] == NEXT


def pins(row: Row) -> list[str]:
    """pip requirements pinning the row's stack (the "next" row's transformers: unpinned, see ``install_flags``)."""
    return [name if row[name] == NEXT else f"{name}=={row[name]}" for name in STACK]


def find_links_args() -> list[str]:
    """pip's find-links (``PIP_FIND_LINKS`` and ``pip config``) as ``--find-links`` arguments, for uv, which reads
    neither: where the CPU torch wheel lies on these machines."""
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True
        )
        links += out.stdout.split() if out.returncode == 0 else []
    except OSError:
        pass
    return [arg for link in sorted(set(links)) for arg in ("--find-links", link)]


def install_flags(row: Row) -> list[str]:
    """Extra pip flags for the row: the "next" row admits pre-releases."""
    return ["--pre"] if is_next(row) else []


def release_of(row: Row, result: dict[str, Any] | None = None) -> str:
    """The transformers release a row's result was produced on (the "next" row: the one it installed)."""
    if is_next(row):
        return str(((result or {}).get("versions") or {}).get("transformers") or NEXT)
    return str(row["transformers"])


def package_files(root: Path = ROOT) -> list[Path]:
    """The files whose content decides what a cell runs: the package, its build and activation files."""
    files = sorted((root / "gemma3n_export_fixes").rglob("*.py"))
    files += [root / "pyproject.toml", *sorted((root / "activation").iterdir())]
    return files


def inputs_hash(row: Row, root: Path = ROOT) -> str:
    """sha256 of the row's pins, the exports its cell runs and the package sources: a stored result with the same
    hash is current.

    A Python source counts by its code (``module_fingerprint``: docstrings, comments and formatting left
    out, so rewording one does not stale the grid); the build and activation files by their bytes.
    """
    from gemma3n_export_fixes.plugin.fingerprint import module_fingerprint

    what = {k: row[k] for k in ("python", *STACK)} | {"exports": cell_exports(row)}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    for path in package_files(root):
        digest.update(str(path.relative_to(root)).encode())
        if path.suffix == ".py":
            digest.update(module_fingerprint(path.read_text(encoding="utf-8")).encode())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def result_path(row: Row) -> Path:
    return RESULTS / f"{row['id']}.json"


def load_result(row: Row) -> dict[str, Any] | None:
    try:
        return json.loads(result_path(row).read_text())
    except (OSError, ValueError):
        return None


def is_current(row: Row, root: Path = ROOT) -> bool:
    """The stored result was produced from these pins, this cell kind and this package source."""
    if is_next(row):
        return False
    result = load_result(row)
    return bool(result) and result.get("cell", {}).get("inputs_hash") == inputs_hash(row, root)


def stale_rows(rows: list[Row] | None = None, root: Path = ROOT) -> list[str]:
    """The ids of the grid rows (tagged "grid") whose stored result is missing or not current: the evidence a
    submission may not land with (``nox -s matrix_current``, the first step of ``.ci/run``)."""
    return [row["id"] for row in tagged("grid", rows) if not is_current(row, root)]
