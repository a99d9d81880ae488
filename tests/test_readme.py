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


def test_the_fixes_tables_name_every_patch_with_its_declared_range():
    """One line per patch of the registry, both scopes; a toolchain patch's range as declared (the transformers
    ranges are written as release spans, checked against the registry by the matrix tests)."""
    from gemma3n_export_fixes.plugin.patch import Scope
    from gemma3n_export_fixes.plugin.patches import REGISTRY

    rows = {line.split("|")[1].strip().strip("`"): line for line in (REPO / "README.md").read_text().splitlines()
            if line.startswith("| `")}  # fmt: skip
    assert set(rows) == {p.id for p in REGISTRY}
    for patch in (p for p in REGISTRY if p.scope is Scope.EXPORT):
        assert f"| {patch.kind.value} |" in rows[patch.id], patch.id
        needed_on = rows[patch.id].rstrip().rstrip("|").rsplit("|", 1)[1].replace(" ", "")
        assert needed_on == f"{patch.distribution}{patch.needed_on}", (patch.id, needed_on)
