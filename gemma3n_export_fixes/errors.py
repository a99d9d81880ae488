"""Errors a user can fix: the CLI reports them as one line with a non-zero exit and no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake or a missing piece the user can fix (bad path, missing dependency, unsupported release)."""


def require(module: str, purpose: str, install: str) -> None:
    """Raise :class:`UserError` when ``module`` cannot be imported (without importing it)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UserError(f"{module} is not installed; {purpose} needs it (pip install {install})")
