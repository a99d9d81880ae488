"""The real machinery behind the start-up trigger: wrapt post-import hooks on the modules patches target.

Imported only once transformers is being imported (see :mod:`gemma3n_export_fixes._startup`). Each hook
applies what the installed release needs of the patches on the module just imported (honouring
``GEMMA3N_EXPORT_FIXES_DISABLE``) and never raises into the importer: a failure becomes one
``Gemma3nExportFixesWarning``.
"""

from __future__ import annotations

from types import ModuleType

from gemma3n_export_fixes.plugin.modules import WATCHED_MODULES

_registered = False


def _on_import(module: ModuleType) -> None:
    """Post-import hook: apply what this release needs. Never raises into the importer."""
    try:
        from gemma3n_export_fixes.plugin.api import ENGINE

        ENGINE.apply(module, automatic=True)
    except Exception as exc:
        try:
            import warnings

            from gemma3n_export_fixes.plugin.engine import Gemma3nExportFixesWarning

            warnings.warn(f"gemma3n-export-fixes could not run: {exc!r}", Gemma3nExportFixesWarning, stacklevel=2)
        except Exception:
            pass


def register() -> None:
    """Register the post-import hooks once per process (each fires at once if its module is imported)."""
    global _registered
    if _registered:
        return
    _registered = True
    import wrapt

    for name in WATCHED_MODULES:
        wrapt.register_post_import_hook(_on_import, name)
