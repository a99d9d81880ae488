"""gemma3n-export-fixes: patches transformers' Gemma 3n text decoder so it exports to ExecuTorch.

Installing the package is enough: a start-up hook applies the fixes the installed transformers needs as
soon as transformers' Gemma 3n modelling module is imported (``GEMMA3N_EXPORT_FIXES=0`` turns that off,
``GEMMA3N_EXPORT_FIXES_DISABLE=<id>,...`` leaves single patches out).

    import gemma3n_export_fixes as gx
    gx.status()           # per patch: applied / not-needed / disabled / skipped-drift / failed, with the reason
    with gx.unpatched():  # upstream code, e.g. to reproduce a bug
        ...

The package has three parts: ``_startup`` (runs in every Python process, stdlib only), ``plugin/`` (runs when
transformers is imported) and the export tool (``models/``, ``export/``, ``runtime/``, ``cli/``), which uses
the plugin only through this API. This module stays import-light (it is imported at interpreter start): the
API loads on first use.
"""

from __future__ import annotations

__all__ = [
    "Gemma3nExportFixesWarning",
    "PatchStatus",
    "State",
    "__version__",
    "apply",
    "patched",
    "revert",
    "status",
    "unpatched",
]

_PLUGIN = {"apply", "revert", "status", "patched", "unpatched", "PatchStatus", "State", "Gemma3nExportFixesWarning"}


def __getattr__(name: str) -> object:  # no `typing` import: this module loads at every start-up
    if name in _PLUGIN:
        from gemma3n_export_fixes import plugin

        return getattr(plugin, name)
    if name == "__version__":
        from gemma3n_export_fixes.versions import package_version

        return package_version()
    raise AttributeError(f"module 'gemma3n_export_fixes' has no attribute {name!r}")
