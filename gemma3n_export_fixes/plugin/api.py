"""The public API: ``apply``, ``revert``, ``status`` and the ``patched`` / ``unpatched`` context managers.

All of them act on the process-wide state of transformers' Gemma 3n classes (patches replace class
attributes), so a context manager affects every thread while it is open. They act on
:data:`gemma3n_export_fixes.plugin.engine.ENGINE`, the engine the import hook uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager

from gemma3n_export_fixes.plugin.engine import ENGINE, PatchStatus, import_targets
from gemma3n_export_fixes.plugin.patches import REGISTRY


def apply(ids: Iterable[str] | None = None) -> list[PatchStatus]:
    """Apply the patches (all, or those named) that the installed transformers needs.

    Imports transformers' Gemma 3n modelling module if it is not imported yet. Idempotent. Works also
    when ``GEMMA3N_EXPORT_FIXES=0`` turned the automatic patching off, and applies patches that
    ``GEMMA3N_EXPORT_FIXES_DISABLE`` kept out of it.
    """
    return ENGINE.apply(ids=ids)


def import_modules() -> list[str]:
    """Import every module a patch targets, the way an export script would (their import hooks fire): Gemma 3n's
    modelling code, transformers' ExecuTorch recipe, then installed clients' modules (a client module that
    does not import on this stack is left out; its patches report why). Returns the names imported."""
    return list(import_targets(REGISTRY))


def revert(ids: Iterable[str] | None = None) -> list[PatchStatus]:
    """Put the original upstream functions back (all, or those named)."""
    return ENGINE.revert(ids=ids)


def status(ids: Iterable[str] | None = None) -> list[PatchStatus]:
    """Per patch: applied / not needed on this release / disabled / skipped (code drift) / failed, and why."""
    return ENGINE.status(ids=ids)


def unpatched(ids: Iterable[str] | None = None) -> AbstractContextManager[None]:
    """Run the block on the upstream code (e.g. to reproduce a bug); re-applies what was applied."""
    return ENGINE.unpatched(ids)


def patched(ids: Iterable[str] | None = None) -> AbstractContextManager[list[PatchStatus]]:
    """Run the block with the patches applied; reverts on exit those that were not applied before."""
    return ENGINE.patched(ids)


__all__ = ["apply", "import_modules", "patched", "revert", "status", "unpatched"]
