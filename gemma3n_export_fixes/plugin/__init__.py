"""The plugin: what runs when transformers is imported. Never imports the export tool.

- :mod:`.hook`: the wrapt post-import hooks on the patched modules (registered by ``_startup``);
- :mod:`.engine`: decides, installs, reverts and reports patches; owns the process-wide :data:`ENGINE`;
- :mod:`.api`: ``apply`` / ``revert`` / ``status`` / ``patched`` / ``unpatched`` (re-exported by the package);
- :mod:`.patch`: what a patch declares; :mod:`.fingerprint`: drift detection; :mod:`.patches`: one module per
  fix; :mod:`.reproduce`: every patch's reproducer in a fresh process (``check`` runs it).

This package stays import-light: importing it (the hook does, at ``import transformers``) loads only this
file; the rest loads when the Gemma 3n module is imported or the API is used.
"""

from __future__ import annotations

#: The module the model patches target (Gemma 3n's modelling code).
TARGET_MODULE = "transformers.models.gemma3n.modeling_gemma3n"
#: The module the recipe patches target (transformers' ExecuTorch recipe: what optimum-cli and ``--kv-cache`` use).
RECIPE_MODULE = "transformers.integrations.executorch"
#: The optimum-executorch module the client patch targets (``optimum-cli export executorch --use_custom_sdpa``).
OPTIMUM_SDPA_MODULE = "optimum.executorch.attentions.custom_sdpa"
#: The optimum-executorch module of ``--use_custom_kv_cache`` (does not import on transformers without HybridCache).
OPTIMUM_KV_CACHE_MODULE = "optimum.executorch.attentions.custom_kv_cache"
#: Every module a patch targets; the post-import hook watches each (a patch applies when its module is imported).
WATCHED_MODULES = (TARGET_MODULE, RECIPE_MODULE, OPTIMUM_SDPA_MODULE, OPTIMUM_KV_CACHE_MODULE)

__all__ = [
    "OPTIMUM_KV_CACHE_MODULE",
    "OPTIMUM_SDPA_MODULE",
    "RECIPE_MODULE",
    "TARGET_MODULE",
    "WATCHED_MODULES",
    "Gemma3nExportFixesWarning",
    "PatchStatus",
    "State",
    "apply",
    "import_modules",
    "patched",
    "revert",
    "status",
    "unpatched",
]

_API = {"apply", "import_modules", "revert", "status", "patched", "unpatched"}
_ENGINE = {"PatchStatus", "State", "Gemma3nExportFixesWarning"}


def __getattr__(name: str) -> object:
    if name in _API:
        from gemma3n_export_fixes.plugin import api

        return getattr(api, name)
    if name in _ENGINE:
        from gemma3n_export_fixes.plugin import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'gemma3n_export_fixes.plugin' has no attribute {name!r}")
