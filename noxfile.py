"""Sessions, all driven by the one pinned grid in matrix/grid.toml.

nox -s check                     # the main job on the default stack (provisional: status + tiny export)
nox -s tests                     # the test suite on every row tagged "ci"
nox -s "tests(tf4.57.6-et1.5.1)" # one row
nox -l --json                    # the sessions, for a CI fan-out
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - nox itself may run on 3.10
    import tomli as tomllib

ROOT = Path(__file__).parent
GRID: list[dict] = tomllib.loads((ROOT / "matrix" / "grid.toml").read_text())["row"]
STACK = ("torch", "torchao", "executorch", "transformers")

# pip (not uv) so the CPU torch wheel is found through pip's find-links setting on these machines.
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = False


def pins(row: dict) -> list[str]:
    return [f"{name}=={row[name]}" for name in STACK]


def rows(tag: str) -> list:
    return [nox.param(row, id=row["id"], tags=list(row["tags"])) for row in GRID if tag in row["tags"]]


(DEFAULT,) = [row for row in GRID if "default" in row["tags"]]


def install(session: nox.Session, row: dict, extras: str = "") -> None:
    session.install(f".{extras}", *pins(row))
    session.run("python", "-m", "pip", "check", silent=True)


@nox.session(python=DEFAULT["python"])
def check(session: nox.Session) -> None:
    """The main job on the built-in tiny model (default stack): reproducers, export + validate, verdicts."""
    install(session, DEFAULT)
    session.run("gemma3n-export-fixes", "check", *session.posargs)


@nox.session
@nox.parametrize("row", rows("ci"))
def tests(session: nox.Session, row: dict) -> None:
    """The test suite on one grid row (all rows tagged "ci" by default)."""
    if row["python"] != f"{sys.version_info.major}.{sys.version_info.minor}":
        session.warn(f"row {row['id']} pins Python {row['python']}; this nox runs on {sys.version.split()[0]}")
    install(session, row, "[test]")
    # The last transformers without Gemma 3n, for the "unsupported release" test (downloaded here, not in tests).
    old = Path(session.create_tmp()) / "old-transformers"
    session.run("python", "-m", "pip", "download", "-q", "--no-deps", "transformers==4.52.4", "-d", str(old))
    (wheel,) = old.glob("transformers-4.52.4-*.whl")
    session.run("pytest", "-p", "no:cacheprovider", *session.posargs,
                env={"GEMMA3N_TEST_OLD_TRANSFORMERS_WHEEL": str(wheel)})  # fmt: skip
