"""The installed stack as the commands see it: versions, activation files, and the Gemma 3n import.

``import_gemma3n`` imports transformers' Gemma 3n modelling module the way a user's export script would (so
the import hook runs exactly as it would there), after turning unusable stacks into one-line errors.
"""

from __future__ import annotations

from typing import Any

from gemma3n_export_fixes.errors import UserError
from gemma3n_export_fixes.versions import stack_versions


def activation_files() -> list[str]:
    import site

    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    found = []
    for directory in dirs:
        for name in ("gemma3n_export_fixes.pth", "gemma3n_export_fixes.start"):
            path = f"{directory}/{name}"
            try:
                with open(path, encoding="utf-8"):
                    found.append(path)
            except OSError:
                continue
    return found


def import_gemma3n(versions: dict[str, str | None]) -> None:

    if versions.get("transformers") is None:
        raise UserError("transformers is not installed: nothing to patch (pip install 'transformers>=4.53')")
    from packaging.version import InvalidVersion, Version

    from gemma3n_export_fixes._startup import install

    try:
        too_old = Version(versions["transformers"]) < Version("4.53.0")
    except InvalidVersion:
        too_old = False
    if too_old:
        raise UserError(f"transformers {versions['transformers']} has no Gemma 3n (it arrived in 4.53.0)")
    install()  # what the .pth does at start-up; honours GEMMA3N_EXPORT_FIXES
    from gemma3n_export_fixes.plugin import import_modules

    try:  # Gemma 3n's modelling code first, then the ExecuTorch recipe, then installed clients' modules
        import_modules()
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("transformers.models.gemma3n"):
            raise UserError(f"transformers {versions['transformers']} has no Gemma 3n (it arrived in 4.53.0)") from None
        raise UserError(f"cannot import a patched module: {exc}") from None
    except ImportError as exc:
        raise UserError(f"cannot import a patched module: {exc}") from None


def status_record() -> dict[str, Any]:
    """The machine-readable status: versions, activation (with the opt-out switches), and one entry per patch of
    both scopes (the toolchain's as they would apply in an export here: ``ready``, ``not-needed``, ...)."""
    versions = stack_versions()
    import_gemma3n(versions)
    import gemma3n_export_fixes as gx
    from gemma3n_export_fixes.plugin import assess

    if versions.get("executorch") is not None:
        assess()
    from gemma3n_export_fixes._env import disabled_by_env, disabled_patches

    return {
        "versions": versions,
        "activation": {
            "files": activation_files(),
            "disabled_by_env": disabled_by_env(),
            "disabled_patches": sorted(disabled_patches()),
        },
        "patches": [s.to_dict() for s in gx.status()],
    }
