"""The README's two commands: exactly two, and the second is what .ci/run runs, verbatim (the grid's rows are
checked in test_matrix.py)."""

from __future__ import annotations

import re

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
