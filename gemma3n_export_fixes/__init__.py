"""gemma3n-export-fixes: patches transformers' Gemma 3n text decoder so it exports to ExecuTorch.

Installing the package is enough: a start-up hook applies the fixes the installed transformers needs as
soon as transformers' Gemma 3n modelling module is imported (``GEMMA3N_EXPORT_FIXES=0`` turns that off).

    import gemma3n_export_fixes as gx
    gx.status()           # per patch: applied / not-needed / skipped-drift / failed, with the reason
    with gx.unpatched():  # upstream code, e.g. to reproduce a bug
        ...

This module stays import-light (it is imported at interpreter start): the API loads on first use.
"""

from __future__ import annotations

__all__ = ["PatchStatus", "State", "apply", "patched", "revert", "status", "unpatched"]

_API = {"apply", "revert", "status", "patched", "unpatched"}
_ENGINE = {"PatchStatus", "State", "Gemma3nExportFixesWarning"}


def __getattr__(name: str) -> object:  # no `typing` import: this module loads at every start-up
    if name in _API:
        from gemma3n_export_fixes import api

        return getattr(api, name)
    if name in _ENGINE:
        from gemma3n_export_fixes import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'gemma3n_export_fixes' has no attribute {name!r}")
