"""The public API: ``apply`` / ``revert`` / ``status`` / ``patched`` / ``unpatched``, and ``exporting`` for the
toolchain patches an export runs inside.

All of them act on the process-wide state of the patched modules (patches replace class and module attributes),
so a context manager affects every thread while it is open. They act on :data:`ENGINE`, the engine the import
hook uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from gemma3n_export_fixes.plugin.engine import Engine, PatchStatus, import_targets
from gemma3n_export_fixes.plugin.patch import EXPORTED_MODEL, Scope
from gemma3n_export_fixes.plugin.patches import REGISTRY

#: The process-wide engine: the import hook, this API and the export tool share it.
ENGINE = Engine(REGISTRY)


def apply(ids: Iterable[str] | None = None) -> list[PatchStatus]:
    """Apply the patches (all import-scope ones, or those named) that the installed releases need.

    Imports the patched modules that are not imported yet. Idempotent. Works also when ``GEMMA3N_EXPORT_FIXES=0``
    turned the automatic patching off, and applies patches that ``GEMMA3N_EXPORT_FIXES_DISABLE`` kept out of it.
    """
    return ENGINE.apply(ids=ids)


def import_modules() -> list[str]:
    """Import every module an import-scope patch targets, the way an export script would (their import hooks fire):
    Gemma 3n's modelling code, transformers' ExecuTorch recipe, then installed clients' modules (a client module
    that does not import on this stack is left out; its patches report why). Returns the names imported."""
    return list(import_targets(p for p in REGISTRY if p.scope is Scope.IMPORT))


def assess(ids: Iterable[str] | None = None) -> list[PatchStatus]:
    """For the toolchain (export-scope) patches, or those named: whether each would apply in an export here
    (``ready``, ``not-needed``, ``skipped-drift``, ``disabled``), without installing anything. Imports ExecuTorch
    and torch modules; ``status`` shows the outcome."""
    return ENGINE.assess(ids)


def revert(ids: Iterable[str] | None = None) -> list[PatchStatus]:
    """Put the original upstream objects back (every applied patch, or those named)."""
    return ENGINE.revert(ids=ids)


def status(ids: Iterable[str] | None = None) -> list[PatchStatus]:
    """Per patch (both scopes): applied / ready / not needed on this release / disabled / skipped (code drift) /
    failed / pending, and why."""
    return ENGINE.status(ids=ids)


def unpatched(ids: Iterable[str] | None = None) -> AbstractContextManager[None]:
    """Run the block on the upstream code (e.g. to reproduce a bug); re-applies what was applied."""
    return ENGINE.unpatched(ids)


def patched(ids: Iterable[str] | None = None) -> AbstractContextManager[list[PatchStatus]]:
    """Run the block with the patches applied (import-scope ones, or those named); reverts on exit those that were
    not applied before."""
    return ENGINE.patched(ids)


@contextmanager
def exporting(model: Any = None, ids: Iterable[str] | None = None) -> Iterator[list[PatchStatus]]:
    """Run an export's trace and lowering of ``model`` with the toolchain patches (every export-scope patch, or
    those named) applied, honouring ``GEMMA3N_EXPORT_FIXES_DISABLE`` and ``GEMMA3N_EXPORT_FIXES=0``; yields their
    statuses (what the program's record keeps) and reverts them on exit."""
    token = EXPORTED_MODEL.set(model)
    try:
        with ENGINE.patched(ids, scope=Scope.EXPORT, automatic=True) as statuses:
            yield statuses
    finally:
        EXPORTED_MODEL.reset(token)


__all__ = ["ENGINE", "apply", "assess", "exporting", "import_modules", "patched", "revert", "status", "unpatched"]
