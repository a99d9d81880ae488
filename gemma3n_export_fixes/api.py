"""The public API: ``apply``, ``revert``, ``status`` and the ``patched`` / ``unpatched`` context managers.

All of them act on the process-wide state of transformers' Gemma 3n classes (patches replace class
attributes), so a context manager affects every thread while it is open.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from gemma3n_export_fixes.engine import Engine, PatchStatus
from gemma3n_export_fixes.patches import REGISTRY

#: The process-wide engine the import hook and this API share.
ENGINE = Engine(REGISTRY)


def apply(ids: Iterable[str] | None = None) -> list[PatchStatus]:
    """Apply the patches (all, or those named) that the installed transformers needs.

    Imports transformers' Gemma 3n modelling module if it is not imported yet. Idempotent. Works also
    when ``GEMMA3N_EXPORT_FIXES=0`` turned the automatic patching off.
    """
    return ENGINE.apply(ids=ids)


def revert(ids: Iterable[str] | None = None) -> list[PatchStatus]:
    """Put the original upstream functions back (all, or those named)."""
    return ENGINE.revert(ids=ids)


def status(ids: Iterable[str] | None = None) -> list[PatchStatus]:
    """Per patch: applied / not needed on this release / skipped (code drift) / failed, with the reason."""
    return ENGINE.status(ids=ids)


@contextmanager
def unpatched(ids: Iterable[str] | None = None) -> Iterator[None]:
    """Run the block on the upstream code (e.g. to reproduce a bug); re-applies what was applied."""
    ids = None if ids is None else list(ids)
    with ENGINE._lock:
        was_applied = {s.id for s in ENGINE.status(ids) if s.applied}
        ENGINE.revert(was_applied)
    try:
        yield
    finally:
        if was_applied:
            ENGINE.apply(ids=was_applied)


@contextmanager
def patched(ids: Iterable[str] | None = None) -> Iterator[list[PatchStatus]]:
    """Run the block with the patches applied; reverts on exit those that were not applied before."""
    ids = None if ids is None else list(ids)
    with ENGINE._lock:
        was_applied = ENGINE.applied_ids()
        statuses = ENGINE.apply(ids=ids)
    try:
        yield statuses
    finally:
        newly = {s.id for s in statuses if s.applied} - was_applied
        if newly:
            ENGINE.revert(newly)
