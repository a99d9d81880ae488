"""The patch engine: decides, installs, undoes and reports; one lock, one record per patch.

Contract:
- A patch is applied when the installed release of its package (transformers, a client, ExecuTorch, torch) lies
  in its declared range AND every target's code has a fingerprint the patch was written for. In range with other
  code: not applied, warned once, reported ``skipped-drift`` (never a silent no-op).
- What gets installed is the plain function (or class) the patch built, never a proxy, so every tracer sees it.
- ``apply`` is idempotent; ``revert`` puts back the very original objects (identity), or deletes what the patch
  added, but never over a replacement somebody else installed after us (that is reported, and left alone).
- A patch that fails half-way is rolled back (undo steps run in reverse) and reported as failed.
- All state changes hold one re-entrant lock, so concurrent apply/revert leave a consistent state.
- Scopes (:class:`~gemma3n_export_fixes.plugin.patch.Scope`): ``import`` patches are applied by the import hook
  when their module is imported (and by ``apply()``); ``export`` patches (the toolchain's) only inside
  ``patched(scope=Scope.EXPORT)``, which the export tool runs its trace and lowering in. ``assess`` says, without
  installing anything, what applying would do (``status`` shows it for the export patches: ``ready``).
- ``GEMMA3N_EXPORT_FIXES_DISABLE`` leaves the patches it names out of every automatic run (the import hook, and
  the export's ``patched(..., automatic=True)``); they are reported ``disabled``. An explicit ``apply`` does what
  it is asked.
- Each target lies in one module (the patch's :attr:`~Patch.module` unless the target names its own); a patch
  whose package is not installed, or one of whose modules does not import, stays pending and is reported so.
- A target module is always imported through ``importlib.import_module`` and never under the lock: a
  thread importing it runs the post-import hook, which takes the lock (holding it while importing would
  deadlock), and a module another thread is still importing sits half-built in ``sys.modules``
  (``import_module`` waits for it; ``sys.modules.get`` would return it and its fingerprints would "drift").
- Nothing here raises into the import hook's caller: the hook catches, records and warns.

This module holds no registry (the process-wide engine is :data:`gemma3n_export_fixes.plugin.api.ENGINE`): the
patches import nothing of the engine, so the plugin has no import circle.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from types import ModuleType
from typing import Any

from gemma3n_export_fixes import _env
from gemma3n_export_fixes.plugin.fingerprint import fingerprint
from gemma3n_export_fixes.plugin.patch import Function, Patch, Scope, Target
from gemma3n_export_fixes.versions import installed_version

MARKER = "__gemma3n_export_fixes__"


class Gemma3nExportFixesWarning(UserWarning):
    """A patch was not applied although its release range says it is needed (drift or failure)."""


class State(str, Enum):
    PENDING = "pending"
    READY = "ready"
    APPLIED = "applied"
    NOT_NEEDED = "not-needed"
    DISABLED = "disabled"
    SKIPPED = "skipped-drift"
    FAILED = "failed"
    REVERTED = "reverted"


@dataclass(frozen=True)
class PatchStatus:
    """What a patch did on this process, and why. ``to_dict`` is the JSON form."""

    id: str
    title: str
    state: State
    reason: str
    distribution: str
    version: str | None
    needed_on: str
    changes_eager_numerics: bool
    upstream: str
    scope: str = Scope.IMPORT.value
    kind: str = "fix"
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def applied(self) -> bool:
        return self.state is State.APPLIED

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "state": self.state.value,
            "reason": self.reason,
            "distribution": self.distribution,
            "version": self.version,
            "needed_on": self.needed_on,
            "scope": self.scope,
            "kind": self.kind,
            "changes_eager_numerics": self.changes_eager_numerics,
            "upstream": self.upstream,
            "fingerprints": dict(self.fingerprints),
        }


@dataclass
class _Installed:
    module: ModuleType
    owner: Any
    name: str
    original: Any  # None where the patch added the attribute
    replacement: Any
    added: bool = False


@dataclass
class _Record:
    state: State
    reason: str
    modules: dict[str, ModuleType] = field(default_factory=dict)
    version: str | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)
    installed: list[_Installed] = field(default_factory=list)


class _Drift(Exception):
    """A target's code is not the code the patch was written for."""


def _owner(module: ModuleType, path: str) -> tuple[Any, str]:
    *owner_path, name = path.split(".")
    owner: Any = module
    try:
        for part in owner_path:
            owner = getattr(owner, part)
    except AttributeError as exc:
        raise _Drift(f"{path} not found in this release ({exc})") from exc
    return owner, name


def _resolve(module: ModuleType, path: str) -> tuple[Any, str, Function]:
    """Owner, attribute name and the very object stored there (from the owner's own ``__dict__``).

    A target the class only inherits is drift: replacing it on the class that defines it would patch every
    subclass of that base (``nn.Module.train``), and on the named class it would shadow the base's function.
    """
    owner, name = _owner(module, path)
    try:
        return owner, name, vars(owner)[name]
    except (KeyError, TypeError) as exc:
        where = getattr(owner, "__name__", repr(owner))
        raise _Drift(f"{path}: not defined by {where} itself in this release") from exc


#: Modules of clients and toolchains that failed to import in this process (module -> the error): their
#: patches stay pending.
UNIMPORTABLE: dict[str, str] = {}


def import_targets(patches: Iterable[Patch], given: ModuleType | None = None) -> dict[str, ModuleType]:
    """The modules ``patches`` target, by name: only ``given`` when set (the hook's module), else each imported
    (or waited for) the safe way. Call without the lock."""
    if given is not None:
        return {given.__name__: given}
    modules = {}
    for patch in patches:
        for name in patch.modules:
            if name in modules or name in UNIMPORTABLE:
                continue
            if patch.is_transformers_patch and patch.scope is Scope.IMPORT:
                modules[name] = importlib.import_module(name)
            elif installed_version(patch.distribution) is not None:
                try:  # a client's module may not import on this transformers (its own defect, loud where it is used)
                    modules[name] = importlib.import_module(name)
                except ImportError as exc:
                    UNIMPORTABLE[name] = f"{type(exc).__name__}: {exc}"
    return modules


class Engine:
    """Applies and reverts a registry of patches on other packages' modules (each patch names its own)."""

    def __init__(self, registry: Iterable[Patch]) -> None:
        self.registry = tuple(registry)
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._warned: set[tuple[str, str]] = set()

    # -- selection -----------------------------------------------------------------------------
    def _select(self, ids: Iterable[str] | None, scope: Scope | None = Scope.IMPORT) -> list[Patch]:
        """The patches named (any scope), or without names every patch of ``scope`` (``None``: all)."""
        if ids is None:
            return [p for p in self.registry if scope is None or p.scope is scope]
        wanted = set(ids)
        unknown = wanted - {p.id for p in self.registry}
        if unknown:
            raise KeyError(f"unknown patch id(s): {', '.join(sorted(unknown))}")
        return [p for p in self.registry if p.id in wanted]

    def applied_ids(self) -> set[str]:
        with self._lock:
            return {pid for pid, rec in self._records.items() if rec.state is State.APPLIED}

    # -- apply ---------------------------------------------------------------------------------
    def apply(
        self,
        module: ModuleType | None = None,
        ids: Iterable[str] | None = None,
        automatic: bool = False,
        scope: Scope = Scope.IMPORT,
    ) -> list[PatchStatus]:
        """Apply every selected patch its release needs; returns the status of each selected patch.

        ``module``: apply only the import-scope patches on it (the import hook passes the module just imported).
        ``automatic`` (the import hook, an export): patches named by ``GEMMA3N_EXPORT_FIXES_DISABLE`` are left out.
        ``scope``: which patches ``ids=None`` selects.
        """
        selected = self._select(ids, scope)
        if module is not None:
            selected = [p for p in selected if p.scope is Scope.IMPORT and p.module == module.__name__]
        modules = import_targets(selected, module)  # never under the lock (see the module docstring)
        return self._apply(modules, selected, automatic)

    def _apply(self, modules: dict[str, ModuleType], selected: list[Patch], automatic: bool) -> list[PatchStatus]:
        disabled = self._disabled_ids() if automatic else frozenset()
        with self._lock:
            for patch in selected:
                present = {name: modules[name] for name in patch.modules if name in modules}
                if len(present) < len(patch.modules):
                    continue
                version = installed_version(patch.distribution) or "0"
                record = self._records.get(patch.id)
                if record and record.state is State.APPLIED and self._intact(record, present):
                    continue
                if patch.id in disabled:
                    if record is None or record.state is not State.APPLIED:
                        self._records[patch.id] = self._disabled(patch, present, version)
                    continue
                self._records[patch.id] = self._apply_one(patch, present, version)
            return [self._status(p) for p in selected]

    def _disabled_ids(self) -> frozenset[str]:
        """What an automatic run leaves out: the patches ``GEMMA3N_EXPORT_FIXES_DISABLE`` names, or every patch
        while ``GEMMA3N_EXPORT_FIXES=0`` (then only an export's toolchain patches get this far)."""
        return frozenset(p.id for p in self.registry) if _env.disabled_by_env() else _env.disabled_patches()

    @staticmethod
    def _disabled(patch: Patch, modules: dict[str, ModuleType], version: str) -> _Record:
        needs = "needs it" if patch.needed_by(version) else "does not need it"
        why = f"{_env.ENV_VAR} turns the patching off" if _env.disabled_by_env() else f"{_env.DISABLE_VAR} names it"
        reason = f"disabled: {why} ({patch.distribution} {version}: {needs})"
        return _Record(State.DISABLED, reason, modules=modules, version=version)

    @contextmanager
    def patched(
        self, ids: Iterable[str] | None = None, scope: Scope = Scope.IMPORT, automatic: bool = False
    ) -> Iterator[list[PatchStatus]]:
        """Run the block with the patches applied (``ids``, or every patch of ``scope``); on exit, reverts those
        that were not applied before. ``automatic``: honour ``GEMMA3N_EXPORT_FIXES_DISABLE`` (what ``export``
        does for the toolchain patches). Yields the statuses as applied (what an export records)."""
        selected = self._select(None if ids is None else list(ids), scope)
        modules = import_targets(selected)  # never under the lock
        with self._lock:
            was_applied = self.applied_ids()
            statuses = self._apply(modules, selected, automatic)
        try:
            yield statuses
        finally:
            newly = {s.id for s in statuses if s.applied} - was_applied
            if newly:
                self.revert(newly)

    @contextmanager
    def unpatched(self, ids: Iterable[str] | None = None) -> Iterator[None]:
        """Run the block on the upstream code; on exit, re-applies what was applied before."""
        ids = None if ids is None else list(ids)
        with self._lock:
            was_applied = {s.id for s in self.status(ids) if s.applied}
            self.revert(was_applied)
        try:
            yield
        finally:
            if was_applied:
                self.apply(ids=was_applied)

    def _apply_one(self, patch: Patch, modules: dict[str, ModuleType], version: str) -> _Record:
        record, originals = self._decide(patch, modules, version)
        if record.state is not State.READY:
            if record.state is State.SKIPPED:
                self._warn(patch, record.reason)
            return record
        try:
            replacements = patch.build({path: original for path, (_, _, _, original) in originals.items()})
            for path, replacement in replacements.items():
                module, owner, name, original = originals[path]
                setattr(replacement, MARKER, patch.id)
                setattr(owner, name, replacement)
                record.installed.append(_Installed(module, owner, name, original, replacement, original is None))
        except Exception as exc:
            problems = self._undo(record)
            record.state = State.FAILED
            record.reason = f"failed and rolled back: {type(exc).__name__}: {exc}" + "".join(f"; {p}" for p in problems)
            self._warn(patch, record.reason)
            return record
        record.state = State.APPLIED
        record.reason = "applied" + record.reason.removeprefix("ready")
        return record

    def _decide(
        self, patch: Patch, modules: dict[str, ModuleType], version: str
    ) -> tuple[_Record, dict[str, tuple[ModuleType, Any, str, Any]]]:
        """What applying ``patch`` would do, installing nothing: ``ready`` (range and code match), ``not-needed``
        or ``skipped-drift``, with the reason and the fingerprints found; and, when ready, the targets to replace
        (see :meth:`_check_targets`)."""
        record = _Record(State.READY, "", modules=modules, version=version)
        package = patch.distribution
        if not patch.needed_by(version):
            record.state = State.NOT_NEEDED
            record.reason = f"not needed: {package} {version} is outside {patch.needed_on} ({patch.upstream})"
            return record, {}
        try:
            originals = self._check_targets(patch, modules, record)
        except _Drift as exc:
            record.state = State.SKIPPED
            record.reason = f"skipped: {exc}; {package} {version} should need it ({patch.needed_on})"
            return record, {}
        record.reason = f"ready: {package} {version} is in {patch.needed_on} and the code matches"
        if patch.beyond_verified(version):
            record.reason += (
                f" (newer than the newest release checked, {patch.verified_through}: the fingerprints decided)"
            )
        if patch.scope is Scope.EXPORT:
            record.reason += "; in place only while an export traces and lowers"
        if patch.changes_eager_numerics and patch.notes:
            record.reason += f"; {patch.notes[0]}"
        return record, originals

    def _check_targets(
        self, patch: Patch, modules: dict[str, ModuleType], record: _Record
    ) -> dict[str, tuple[ModuleType, Any, str, Any]]:
        """Each replaced target's (module, owner, name, original object; ``None`` for an added attribute), after
        checking every target's code; ``_Drift`` when one is not what the patch was written for."""
        originals: dict[str, tuple[ModuleType, Any, str, Any]] = {}
        for target in patch.targets:
            module = modules[target.module or patch.module]
            if target.adds:
                owner, name = _owner(module, target.path)
                if name in vars(owner):
                    raise _Drift(f"{target.path} is defined in this release (the patch adds it)")
                originals[target.path] = (module, owner, name, None)
                continue
            owner, name, original = _resolve(module, target.path)
            record.fingerprints[target.path] = self._fingerprint(target, original)
            if target.replaced:
                originals[target.path] = (module, owner, name, original)
        return originals

    @staticmethod
    def _fingerprint(target: Target, original: Any) -> str:
        if getattr(original, MARKER, None) is not None:
            raise _Drift(f"{target.path} already holds a gemma3n-export-fixes function from another engine")
        try:
            found = fingerprint(original)
        except (OSError, TypeError, SyntaxError, ValueError) as exc:
            raise _Drift(f"{target.path}: source unavailable for fingerprinting ({exc})") from exc
        if found not in target.fingerprints:
            raise _Drift(
                f"{target.path} has code (fingerprint {found}) this patch was not written for "
                f"(known: {', '.join(f'{fp} [{rel}]' for fp, rel in target.fingerprints.items())})"
            )
        return found

    @staticmethod
    def _intact(record: _Record, modules: dict[str, ModuleType]) -> bool:
        """Our objects are still where we put them, in the classes the modules have now.

        False after ``importlib.reload`` (new classes, no hook fires) or a foreign replacement.
        """
        for step in record.installed:
            current = step.module if step.owner is step.module else getattr(step.module, step.owner.__name__, None)
            if current is not step.owner or vars(step.owner).get(step.name) is not step.replacement:
                return False
        return all(record.modules.get(name) is module for name, module in modules.items())

    # -- assess --------------------------------------------------------------------------------
    def assess(self, ids: Iterable[str] | None = None, scope: Scope = Scope.EXPORT) -> list[PatchStatus]:
        """For each selected patch not applied now: what applying it would do here (``ready``, ``not-needed``,
        ``skipped-drift``, ``disabled``, or ``pending`` while its modules do not import), recorded for ``status``;
        nothing is installed. Imports the patches' modules (not under the lock)."""
        selected = self._select(None if ids is None else list(ids), scope)
        modules = import_targets(selected)
        disabled = self._disabled_ids()
        with self._lock:
            for patch in selected:
                record = self._records.get(patch.id)
                present = {name: modules[name] for name in patch.modules if name in modules}
                if (record and record.state is State.APPLIED) or len(present) < len(patch.modules):
                    continue
                version = installed_version(patch.distribution) or "0"
                if patch.id in disabled:
                    self._records[patch.id] = self._disabled(patch, present, version)
                else:
                    self._records[patch.id] = self._decide(patch, present, version)[0]
            return [self._status(p) for p in selected]

    # -- revert --------------------------------------------------------------------------------
    def revert(self, ids: Iterable[str] | None = None) -> list[PatchStatus]:
        """Put back the original objects of every selected applied patch (any scope when ``ids`` is None)."""
        with self._lock:
            selected = self._select(ids, None)
            for patch in selected:
                record = self._records.get(patch.id)
                if record is None or record.state is not State.APPLIED:
                    continue
                problems = self._undo(record)
                if patch.scope is Scope.EXPORT and not problems:  # back to what it is outside an export
                    record.state, record.reason = State.READY, "ready" + record.reason.removeprefix("applied")
                    continue
                record.state = State.REVERTED
                record.reason = "reverted: the upstream code is back" + "".join(f"; {p}" for p in problems)
            return [self._status(p) for p in selected]

    @staticmethod
    def _undo(record: _Record) -> list[str]:
        problems = []
        while record.installed:
            step = record.installed.pop()
            current = vars(step.owner).get(step.name)
            if current is not step.replacement:
                problems.append(
                    f"{step.owner.__name__}.{step.name} was replaced by someone else after us; left as it is"
                )
            elif step.added:
                delattr(step.owner, step.name)
            else:
                setattr(step.owner, step.name, step.original)
        return problems

    # -- status --------------------------------------------------------------------------------
    def status(self, ids: Iterable[str] | None = None) -> list[PatchStatus]:
        """The status of each selected patch (every scope unless named), without importing anything."""
        with self._lock:
            return [self._status(p) for p in self._select(ids, None)]

    def _status(self, patch: Patch) -> PatchStatus:
        record = self._records.get(patch.id)
        if record is None:
            record = _Record(State.PENDING, self._pending_reason(patch))
        return PatchStatus(
            id=patch.id,
            title=patch.title,
            state=record.state,
            reason=record.reason,
            distribution=patch.distribution,
            version=record.version,
            needed_on=str(patch.needed_on),
            changes_eager_numerics=patch.changes_eager_numerics,
            upstream=patch.upstream,
            scope=patch.scope.value,
            kind=patch.kind.value,
            fingerprints=dict(record.fingerprints),
        )

    @staticmethod
    @staticmethod
    def _pending_reason(patch: Patch) -> str:
        if _env.disabled_by_env() and patch.scope is Scope.IMPORT:
            return f"pending: {_env.ENV_VAR} turns the automatic patching off in this process (apply() still works)"
        if not patch.is_transformers_patch and installed_version(patch.distribution) is None:
            return f"pending: {patch.distribution} is not installed (the patch applies when {patch.module} is imported)"
        unimportable = [name for name in patch.modules if name in UNIMPORTABLE]
        if unimportable:
            return f"pending: {unimportable[0]} does not import here ({UNIMPORTABLE[unimportable[0]]})"
        if patch.scope is Scope.EXPORT:
            return "pending: in place only while an export traces and lowers (`status` says whether it would apply)"
        return f"pending: {patch.module} has not been imported in this process"

    def _warn(self, patch: Patch, reason: str) -> None:
        key = (patch.id, reason)
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(f"gemma3n-export-fixes: {patch.id}: {reason}", Gemma3nExportFixesWarning, stacklevel=3)
