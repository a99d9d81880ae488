"""Errors a user can fix, and how reports name an error (shared by the plugin and the export tool).

The CLI reports a :class:`UserError` as one line with a non-zero exit and no traceback.
"""

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


def first_line(exc: BaseException, limit: int = 240) -> str:
    """``Type: first non-empty line of the message`` (shortened): how reports name an error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def message_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
