"""The README's two commands: the second is what .ci/run runs, verbatim; both use the grid's default row."""

from __future__ import annotations

import re
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from conftest import TESTS

REPO = TESTS.parent


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md starts with a ```bash block of two commands"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_command_verbatim():
    commands = readme_commands()
    assert len(commands) == 2
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci


def test_exactly_one_default_row_and_ci_rows_bracket_the_known_boundaries():
    rows = tomllib.loads((REPO / "matrix" / "grid.toml").read_text())["row"]
    assert len([r for r in rows if "default" in r["tags"]]) == 1
    ci = {r["transformers"] for r in rows if "ci" in r["tags"]}
    assert {"5.23.0", "4.57.6"} <= ci
