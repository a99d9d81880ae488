"""The ``gemma3n-export-fixes`` command line (``status``, ``check``, ``export``, ``validate``, ``generate``,
``sizes``): argument parsing, readable output, one-line errors. ``python -m gemma3n_export_fixes.cli`` runs it."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The console script's entry point (see :func:`gemma3n_export_fixes.cli.main.main`)."""
    from gemma3n_export_fixes.cli.main import main as run

    return run(argv)
