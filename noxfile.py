"""Sessions, all driven by the one pinned grid in matrix/grid.toml.

nox -s check                        # the main job on the default stack: `gemma3n-export-fixes check`
nox -s lint tests                   # ruff (check + format --check), then the test suite on every "ci" row
nox -s "tests(tf4.57.6-et1.5.1)"    # one row
nox -s matrix                       # `check --json` on every "grid" row -> matrix/results/<id>.json
nox -s "matrix(tf5.6.0-et1.5.1)"    # one cell; `-- --force` re-runs a cell whose result is current,
                                    # `-- --heavy` lets a "heavy" row (another torch: multi-GB) run;
                                    # `-- --no-lowered-cache`: every cell lowers its own programs (by
                                    # default a graph lowered by an earlier cell on the same stack is reused)
nox -s "matrix(tf-next-et1.5.1)" -- --next   # the newest transformers (pre-releases too) at run time: drop
                                    # candidates in matrix/README.md before anyone reads a changelog
nox -s matrix_current               # fails, naming them, when a grid row's result is not current (CI, first)
nox -s matrix -t smoke -- --reproduce   # the smoke rows re-run from scratch must make the stored claims (CI)
nox -s matrix_report                # matrix/README.md + matrix/heatmap.svg from the results
nox -s optimum_cli                  # optimum-cli export executorch (float, 8da4w + 4w) on a tiny checkpoint vs
                                    # eager, on optimum-executorch's own transformers pin and on the default stack
nox -s "real_size(e2b-shape)"       # benchmark (not CI): E2B export KV 256 8da4w + 4w, then generate; figures JSON
nox -l --json                       # the sessions, for a CI fan-out (see .github/workflows/matrix.yml)
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.append(str(ROOT))

from matrix.grid import (  # noqa: E402
    cell_exports,
    cell_kind,
    client_pins,
    default_stack,
    find_links_args,
    inputs_hash,
    is_current,
    load_result,
    load_rows,
    pins,
    stale_rows,
    tagged,
    tool_pin,
)

GRID = load_rows()
DEFAULT = default_stack(GRID)

# uv where it is installed (`pip install nox uv`: a row's venv in ~15 s instead of ~3 min), else venv + pip.
# Either way pip's find-links setting is passed on (where the CPU torch wheel lies on these machines).
nox.options.default_venv_backend = "uv|venv"
nox.options.sessions = ["tests"]


def params(tag: str | None = None, tags: list[str] | None = None) -> list:
    """One nox.param per grid row (those tagged ``tag``), tagged with the row's tags unless ``tags`` is given."""
    return [
        nox.param(row, id=row["id"], tags=list(row["tags"]) if tags is None else tags)
        for row in GRID
        if tag is None or tag in row["tags"]
    ]


def _install(session: nox.Session, *requirements: str) -> None:
    """pip install, or uv pip install with pip's find-links and compiled bytecode (these machines set
    PYTHONDONTWRITEBYTECODE=1: without ``.pyc`` files every test process compiles transformers anew, ~20 s)."""
    uv = ["--compile-bytecode"] if session.venv_backend == "uv" else []
    session.install(*uv, *find_links_args(), *requirements)


def install(session: nox.Session, row: dict, extras: str = "") -> None:
    _install(session, "pip", f".{extras}", *pins(row))  # pip too: the tests build a wheel with it
    session.run("python", "-m", "pip", "check", silent=True)


def install_optimum(session: nox.Session) -> None:
    """optimum-executorch next to an installed stack: its other requirements, then itself with ``--no-deps``
    (its exact transformers pin excludes every other release; pip check would report only that pin)."""
    clients = client_pins()
    optimum_executorch = clients.pop("optimum-executorch")
    _install(session, *clients.values())
    _install(session, "--no-deps", optimum_executorch)


@nox.session(python=DEFAULT["python"])
def check(session: nox.Session) -> None:
    """The main job on the built-in tiny model (default stack): reproducers, export + validate, verdicts."""
    install(session, DEFAULT)
    session.run("gemma3n-export-fixes", "check", *session.posargs)


@nox.session(python=DEFAULT["python"])
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole checkout (the version pinned in grid.toml)."""
    session.install(tool_pin("ruff"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
@nox.parametrize("row", params("ci", tags=["tests"]))
def tests(session: nox.Session, row: dict) -> None:
    """The test suite on one grid row (all rows tagged "ci" by default)."""
    if row["python"] != f"{sys.version_info.major}.{sys.version_info.minor}":
        session.warn(f"row {row['id']} pins Python {row['python']}; this nox runs on {sys.version.split()[0]}")
    install(session, row, "[test]")
    if "default-stack" in row["tags"]:  # optimum-cli as a client (tests/test_optimum_cli.py; skipped on the other rows)
        install_optimum(session)
    # The last transformers without Gemma 3n, for the "unsupported release" test (downloaded here, not in tests).
    old = Path(session.create_tmp()) / "old-transformers"
    session.run("python", "-m", "pip", "download", "-q", "--no-deps", "transformers==4.52.4", "-d", str(old))
    (wheel,) = old.glob("transformers-4.52.4-*.whl")
    # What the row varies decides what runs, as in its matrix cell (grid.toml [cells]): the shared `check` exports
    # the row's kind's programs, and on a row that varies transformers only the toolchain tests are left to the
    # rows that vary the toolchain (the default row among the CI rows).
    env = {"GEMMA3N_TEST_OLD_TRANSFORMERS_WHEEL": str(wheel), "GEMMA3N_TEST_CHECK_EXPORTS": ",".join(cell_exports(row))}
    marks = ["-m", "not toolchain"] if cell_kind(row) == "model" and "-m" not in session.posargs else []
    # Two workers (or more on a bigger machine): one pytest process keeps ~1 of 2 cores busy (it waits on
    # the CLI processes it starts); a file's tests stay on one worker, check_run is shared (tests/conftest.py).
    # (Not --dist loadgroup: with pytest 9.2 + xdist 3.8 its xdist_group marks grouped nothing, measured.)
    # --durations: every run's log says where the time goes (CI's budget is 30 min for everything).
    session.run("pytest", "-p", "no:cacheprovider", "-n", "auto", "--maxprocesses", "4", "--dist", "loadfile",
                "--durations", "15", *marks, *session.posargs, env=env)  # fmt: skip


@nox.session(venv_backend="none")
@nox.parametrize("row", params())
def matrix(session: nox.Session, row: dict) -> None:
    """One grid cell: its own venv with the row's pins, `check --json`, result in matrix/results/<id>.json.

    `-- --reproduce` re-runs the cell from scratch (current or not, no lowered program reused) into .nox/ and
    fails unless it makes the same claims as the stored result (CI, on the smoke rows)."""
    from matrix.cell import LOWERED_CACHE, reproduction_differences, run_cell

    if "heavy" in row["tags"] and "--heavy" not in session.posargs:
        session.skip(f"{row['id']} is a heavy row (torch {row['torch']}); run it with -- --heavy")
    if "next" in row["tags"] and "--next" not in session.posargs:
        session.skip(f"{row['id']} installs the newest transformers the registry serves today; run it with -- --next")
    venv = ROOT / ".nox" / f"matrix-{row['id']}"
    if "--reproduce" in session.posargs:
        stored = load_result(row)
        if not stored or not is_current(row):
            session.error(f'{row["id"]}: no current stored result to reproduce: run `nox -s "matrix({row["id"]})"`')
        again = run_cell(row, venv, log=session.log, lowered_cache=None,
                         result_file=ROOT / ".nox" / "matrix-reproduced" / f"{row['id']}.json")  # fmt: skip
        differences = reproduction_differences(stored, again)
        if differences:
            session.error(f"{row['id']}: the stored result does not reproduce: " + "; ".join(differences))
        session.log(f"{row['id']}: reproduced from scratch: the same claims as matrix/results/{row['id']}.json")
        return
    if is_current(row) and "--force" not in session.posargs:
        session.skip(f"{row['id']}: stored result is current (inputs {inputs_hash(row)[:12]}); -- --force re-runs")
    cache = None if "--no-lowered-cache" in session.posargs else LOWERED_CACHE
    record = run_cell(row, venv, log=session.log, lowered_cache=cache)
    if not record.get("ok"):  # the evidence is stored either way; the session says it failed
        session.error(f"{row['id']}: check failed (see matrix/results/{row['id']}.json)")


@nox.session(venv_backend="none")
def matrix_current(session: nox.Session) -> None:
    """Fail, naming them, when a grid row's stored result is missing or not current for these sources (CI's
    first step: evidence from an older package may not land). `nox -s matrix` re-runs exactly those rows."""
    stale = stale_rows(GRID)
    if stale:
        session.error(f"{len(stale)} grid row(s) not current for these sources: {', '.join(stale)}; "
                      "run `nox -s matrix` (stale rows only), then `nox -s matrix_report`")  # fmt: skip
    session.log(f"every grid row's stored result is current ({len(tagged('grid', GRID))} rows)")


@nox.session(venv_backend="none")
def matrix_report(session: nox.Session) -> None:
    """matrix/README.md and matrix/heatmap.svg from the stored results (generated, never hand-written)."""
    from matrix.report import write_report

    for path in write_report():
        session.log(f"wrote {path.relative_to(ROOT)}")


@nox.session(venv_backend="none")
def results(session: nox.Session) -> None:
    """docs/RESULTS.md from benchmarks/results/*.json (generated, never hand-written; stdlib only)."""
    session.run(sys.executable, str(ROOT / "benchmarks" / "report.py"))


@nox.session(python=DEFAULT["python"])
@nox.parametrize("stack", ["optimum-pin", "default"])
def optimum_cli(session: nox.Session, stack: str) -> None:
    """optimum-cli as a client (tests/test_optimum_cli.py): on "optimum-pin", pip resolves optimum-executorch with
    the default stack's torch/executorch/torchao and its own transformers pin, in one line; on "default", the
    default stack plus optimum-executorch --no-deps (the install lines the README gives)."""
    if stack == "optimum-pin":
        _install(session, "pip", ".[test]", *(p for p in pins(DEFAULT) if not p.startswith("transformers")),
                        client_pins()["optimum-executorch"])  # fmt: skip
        session.run("python", "-m", "pip", "check", silent=True)
    else:
        install(session, DEFAULT, "[test]")
        install_optimum(session)
    session.run("pytest", "-p", "no:cacheprovider", "-s", "tests/test_optimum_cli.py", *session.posargs)


@nox.session(python=DEFAULT["python"])
@nox.parametrize("model", [nox.param(m, id=m) for m in ("e2b-shape", "e4b-shape")])
def real_size(session: nox.Session, model: str) -> None:
    """Real-size benchmark (tens of minutes, ~12 GB): export + generate, figures in benchmarks/results/."""
    install(session, DEFAULT)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    session.run("python", "benchmarks/real_size.py", "--model", model, "--json", str(out / f"real_size-{model}.json"),
                *session.posargs)  # fmt: skip


@nox.session(python=DEFAULT["python"])
def upstream_prs(session: nox.Session) -> None:
    """Regenerate upstream_prs/ from the registry and the default stack's (newest) transformers sources."""
    install(session, DEFAULT)
    session.run("python", "-m", "upstream_prs.generate")
