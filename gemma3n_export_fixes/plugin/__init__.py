"""The plugin: what runs when transformers is imported. Never imports the export tool.

- :mod:`.hook`: the wrapt post-import hooks on the patched modules (registered by ``_startup``);
- :mod:`.engine`: decides, installs, reverts and reports patches (holds no registry);
- :mod:`.api`: the process-wide ``ENGINE`` and ``apply`` / ``revert`` / ``status`` / ``patched`` / ``unpatched``
  (re-exported by the package), ``assess`` and ``exporting`` (the toolchain patches an export runs inside);
- :mod:`.patch`: what a patch declares; :mod:`.fingerprint`: drift detection; :mod:`.patches`: one module per
  fix; :mod:`.reproduce`: every patch's reproducer in a fresh process (``check`` runs it).

This package stays import-light: importing it (the hook does, at ``import transformers``) loads only this
file; the rest loads when the Gemma 3n module is imported or the API is used.
"""

from __future__ import annotations

from gemma3n_export_fixes.plugin.modules import (
    OPTIMUM_KV_CACHE_MODULE,
    OPTIMUM_SDPA_MODULE,
    RECIPE_MODULE,
    TARGET_MODULE,
    WATCHED_MODULES,
)

__all__ = [
    "OPTIMUM_KV_CACHE_MODULE",
    "OPTIMUM_SDPA_MODULE",
    "RECIPE_MODULE",
    "TARGET_MODULE",
    "WATCHED_MODULES",
    "Gemma3nExportFixesWarning",
    "Kind",
    "PatchStatus",
    "Scope",
    "State",
    "apply",
    "assess",
    "exporting",
    "import_modules",
    "patched",
    "revert",
    "status",
    "unpatched",
]

_API = {"apply", "assess", "exporting", "import_modules", "revert", "status", "patched", "unpatched"}
_ENGINE = {"PatchStatus", "State", "Gemma3nExportFixesWarning"}
_PATCH = {"Kind", "Scope"}


def __getattr__(name: str) -> object:
    if name in _API:
        from gemma3n_export_fixes.plugin import api

        return getattr(api, name)
    if name in _ENGINE:
        from gemma3n_export_fixes.plugin import engine

        return getattr(engine, name)
    if name in _PATCH:
        from gemma3n_export_fixes.plugin import patch

        return getattr(patch, name)
    raise AttributeError(f"module 'gemma3n_export_fixes.plugin' has no attribute {name!r}")
