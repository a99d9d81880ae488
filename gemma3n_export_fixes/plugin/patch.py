"""What a patch declares: its target code, the releases that need it, and how to build the fix.

A patch module (one per fix, under :mod:`gemma3n_export_fixes.plugin.patches`) defines one :class:`Patch`.
The engine (:mod:`gemma3n_export_fixes.plugin.engine`) decides whether to apply it and does the
installing, undoing and reporting; a patch only says *what* and *why*.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from gemma3n_export_fixes.plugin import TARGET_MODULE

Function = Callable[..., Any]


@dataclass(frozen=True)
class Target:
    """One attribute of the patch's module (:attr:`Patch.module`) the patch depends on.

    ``path`` is dotted from the module (``"Gemma3nTextMLP._gaussian_topk"``). ``fingerprints`` maps each
    known fingerprint (see :mod:`gemma3n_export_fixes.plugin.fingerprint`) of the upstream code to the releases
    where it was seen. ``replaced`` is False for code the fix relies on but does not replace (for
    example a caller that must keep forwarding ``**kwargs``): it is checked, never touched.
    """

    path: str
    fingerprints: Mapping[str, str]
    replaced: bool = True


@dataclass(frozen=True)
class Reproduction:
    """The outcome of a patch's reproducer on the code currently installed.

    ``bug`` is True when the defect showed; ``error`` names the exception family when it showed as one.
    """

    bug: bool
    detail: str
    error: str | None = None


@dataclass(frozen=True)
class Patch:
    """A reversible fix for one defect in the code a Gemma 3n export runs (transformers', or a client's).

    ``needed_on`` is the PEP 440 range of releases of :attr:`distribution` (transformers, or a client such as
    optimum-executorch) that have the defect (pre-releases included); ``verified_through`` is the newest release
    whose code was checked by hand: on a newer release the fingerprints alone decide, and the status says so.
    ``build`` receives the original upstream functions (``{path: function}``, replaced targets only) and returns
    the plain functions to install at the same paths; it must not touch anything itself. ``reproduce`` runs the
    defect's reproducer against whatever code is installed right now (patched or not). ``module`` is the module
    the target paths start from; the patch applies when it is imported. ``distribution`` is the package that
    ships ``module``: while it is not installed, the patch stays pending.
    """

    id: str
    title: str
    defect: str
    needed_on: SpecifierSet
    verified_through: str
    targets: tuple[Target, ...]
    build: Callable[[Mapping[str, Function]], Mapping[str, Function]]
    reproduce: Callable[[], Reproduction] | None = None
    changes_eager_numerics: bool = False
    upstream: str = ""
    notes: tuple[str, ...] = field(default=())
    module: str = TARGET_MODULE
    distribution: str = "transformers"

    @property
    def is_transformers_patch(self) -> bool:
        """Whether the defect is in transformers (the grid's axis); else in a client (see ``distribution``)."""
        return self.distribution == "transformers"

    def needed_by(self, version: str) -> bool:
        """True when ``version`` (of :attr:`distribution`) lies in :attr:`needed_on` (pre-releases count)."""
        return self.needed_on.contains(Version(version), prereleases=True)

    def beyond_verified(self, version: str) -> bool:
        """True when ``version`` is newer than every release this patch was checked against."""
        return Version(version) > Version(self.verified_through)
