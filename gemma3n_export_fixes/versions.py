"""Installed versions of the stack, read from package metadata (imports none of the packages, stdlib only)."""

from __future__ import annotations

import platform
from importlib import metadata

STACK = ("torch", "transformers", "executorch", "torchao")
DISTRIBUTION = "gemma3n-export-fixes"


def distribution_version(name: str) -> str | None:
    """The installed version string of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def installed_version(distribution: str) -> str | None:
    """The version of ``distribution`` in this process: transformers from the imported module (what runs, even
    from a ``PYTHONPATH`` tree; imports it), any other from its installed metadata; ``None`` when not installed."""
    if distribution == "transformers":
        import transformers

        return str(transformers.__version__)
    return distribution_version(distribution)


def package_version() -> str:
    """This package's installed version (``unknown`` when run from a checkout that was never installed)."""
    return distribution_version(DISTRIBUTION) or "unknown"


def stack_versions() -> dict[str, str | None]:
    """Python, this package and the four libraries an export needs: name -> version (None: absent)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    found[DISTRIBUTION] = distribution_version(DISTRIBUTION)
    for name in STACK:
        found[name] = distribution_version(name)
    return found
