"""What a patch declares: its target code, the releases that need it, its scope and kind, and how to build it.

A patch module (one per change, under :mod:`gemma3n_export_fixes.plugin.patches`) defines one :class:`Patch`.
The engine (:mod:`gemma3n_export_fixes.plugin.engine`) decides whether to apply it and does the
installing, undoing and reporting; a patch only says *what* and *why*.

Every change this package makes to code it does not own is a :class:`Patch`: transformers' model and recipe
code and a client's (optimum-executorch) with :attr:`Scope.IMPORT` (applied when their module is imported), and
the toolchain (ExecuTorch, torch) with :attr:`Scope.EXPORT` (applied only while ``export`` traces and lowers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from gemma3n_export_fixes.plugin.modules import TARGET_MODULE

Function = Callable[..., Any]


class Scope(str, Enum):
    """When a patch is in place: from the import of its module on (``import``), or only while an export traces
    and lowers (``export``: the engine's ``patched(scope=Scope.EXPORT)``, which ``export`` runs inside)."""

    IMPORT = "import"
    EXPORT = "export"


class Kind(str, Enum):
    """What a patch is: ``fix`` (without it an export fails or computes the wrong function), ``shortcut`` (the
    same program, less time or memory), ``form`` (an equivalent graph that changes float rounding)."""

    FIX = "fix"
    SHORTCUT = "shortcut"
    FORM = "form"


@dataclass(frozen=True)
class Target:
    """One attribute the patch depends on, in :attr:`module` (default: the patch's :attr:`Patch.module`).

    ``path`` is dotted from the module (``"Gemma3nTextMLP._gaussian_topk"``). ``fingerprints`` maps each
    known fingerprint (see :mod:`gemma3n_export_fixes.plugin.fingerprint`) of the upstream code to the releases
    where it was seen. ``replaced`` is False for code the fix relies on but does not replace (for
    example a caller that must keep forwarding ``**kwargs``): it is checked, never touched. ``adds``: the patch
    defines the attribute where upstream only inherits it (it must not be defined there: that is drift; the
    inherited code it overrides is checked as a target of its own); revert deletes it again.
    """

    path: str
    fingerprints: Mapping[str, str]
    replaced: bool = True
    module: str | None = None
    adds: bool = False


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
    defect's reproducer against whatever code is installed right now (patched or not), with the patches
    ``reproduce_with`` names applied (other defects that would hide this one); a toolchain shortcut has
    none (the program is the same by design): its ``evidence`` names the measurement it exists for and the test
    that the program comes out byte for byte the same. ``module`` is the module the target paths start from
    (an import-scope patch applies when it is imported). ``distribution`` is the package that ships ``module``:
    while it is not installed, the patch stays pending. ``scope`` and ``kind``: see :class:`Scope`, :class:`Kind`;
    a ``form`` says in ``notes`` why it is on by default.
    """

    id: str
    title: str
    defect: str
    needed_on: SpecifierSet
    verified_through: str
    targets: tuple[Target, ...]
    build: Callable[[Mapping[str, Function]], Mapping[str, Function]]
    reproduce: Callable[[], Reproduction] | None = None
    reproduce_with: tuple[str, ...] = ()
    changes_eager_numerics: bool = False
    upstream: str = ""
    notes: tuple[str, ...] = field(default=())
    module: str = TARGET_MODULE
    distribution: str = "transformers"
    scope: Scope = Scope.IMPORT
    kind: Kind = Kind.FIX
    evidence: str = ""

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module a target lies in (the patch's own first), each once."""
        return tuple(dict.fromkeys([self.module, *(t.module or self.module for t in self.targets)]))

    @property
    def is_transformers_patch(self) -> bool:
        """Whether the defect is in transformers (the grid's axis); else in a client (see ``distribution``)."""
        return self.distribution == "transformers"

    def needed_by(self, version: str) -> bool:
        """True when ``version`` (of :attr:`distribution`) lies in :attr:`needed_on` (pre-releases count)."""
        return self.needed_on.contains(Version(version), prereleases=True)

    def beyond_verified(self, version: str) -> bool:
        """True when ``version`` is newer than every release this patch was checked against."""
        return Version(Version(version).public) > Version(self.verified_through)  # 2.13.0+cpu is 2.13.0


#: The model an export is tracing and lowering right now (set by ``api.exporting``; ``None`` outside an export):
#: what an export-scope patch may need to know of it (the weights-not-cloned shortcut: which tensors are weights).
EXPORTED_MODEL: ContextVar[Any] = ContextVar("gemma3n_export_fixes_exported_model", default=None)
