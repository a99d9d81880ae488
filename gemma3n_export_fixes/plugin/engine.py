"""The patch engine: decides, installs, undoes and reports; one lock, one record per patch.

Contract:
- A patch is applied when the installed release of its package (transformers, or a client) lies in its declared
  range AND every target's code has a fingerprint the patch was written for. In range with other code: not
  applied, warned once.
- What gets installed is the plain function the patch built (never a proxy), so every tracer sees it.
- ``apply`` is idempotent; ``revert`` puts back the very original objects (identity), but never over a
  replacement somebody else installed after us (that is reported, and left alone).
- A patch that fails half-way is rolled back (undo steps run in reverse) and reported as failed.
- All state changes hold one re-entrant lock, so concurrent apply/revert leave a consistent state.
- ``GEMMA3N_EXPORT_FIXES_DISABLE`` leaves the patches it names out of the automatic run (the import hook);
  they are reported ``disabled``. An explicit ``apply`` does what it is asked.
- Each patch targets one module (:attr:`Patch.module`: Gemma 3n's modelling code, transformers' ExecuTorch
  recipe, or a client's module such as optimum-executorch's) and declares its range on the package that ships
  it (:attr:`Patch.distribution`); a patch whose package is not installed stays pending and imports nothing.
  Given a module (the import hook), ``apply`` handles only the patches on that module; without one, it imports
  the module of every selected patch.
- A target module is always imported through ``importlib.import_module`` and never under the lock: a
  thread importing it runs the post-import hook, which takes the lock (holding it while importing would
  deadlock), and a module another thread is still importing sits half-built in ``sys.modules``
  (``import_module`` waits for it; ``sys.modules.get`` would return it and its fingerprints would "drift").
- Nothing here raises into the import hook's caller: the hook catches, records and warns.
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
from gemma3n_export_fixes.plugin.patch import Function, Patch
from gemma3n_export_fixes.plugin.patches import REGISTRY

MARKER = "__gemma3n_export_fixes__"


class Gemma3nExportFixesWarning(UserWarning):
    """A patch was not applied although its release range says it is needed (drift or failure)."""


class State(str, Enum):
    PENDING = "pending"
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
            "changes_eager_numerics": self.changes_eager_numerics,
            "upstream": self.upstream,
            "fingerprints": dict(self.fingerprints),
        }


@dataclass
class _Installed:
    owner: Any
    name: str
    original: Function
    replacement: Function


@dataclass
class _Record:
    state: State
    reason: str
    module: ModuleType | None = None
    version: str | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)
    installed: list[_Installed] = field(default_factory=list)


class _Drift(Exception):
    """A target's code is not the code the patch was written for."""


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def installed_version(distribution: str) -> str | None:
    """The version of ``distribution`` in this process: transformers from the imported module (what runs, even
    from a ``PYTHONPATH`` tree), any other from its installed metadata; ``None`` when it is not installed."""
    if distribution == "transformers":
        return _transformers_version()
    from gemma3n_export_fixes.versions import distribution_version

    return distribution_version(distribution)


def _resolve(module: ModuleType, path: str) -> tuple[Any, str, Function]:
    """Owner, attribute name and the very object stored there (from the owner's own ``__dict__``).

    A target the class only inherits is drift: replacing it on the class that defines it would patch every
    subclass of that base (``nn.Module.train``), and on the named class it would shadow the base's function.
    """
    *owner_path, name = path.split(".")
    owner: Any = module
    try:
        for part in owner_path:
            owner = getattr(owner, part)
    except AttributeError as exc:
        raise _Drift(f"{path} not found in this release ({exc})") from exc
    try:
        return owner, name, vars(owner)[name]
    except (KeyError, TypeError) as exc:
        where = getattr(owner, "__name__", repr(owner))
        raise _Drift(f"{path}: not defined by {where} itself in this release") from exc


#: Client modules that failed to import in this process (module -> the error): their patches stay pending.
UNIMPORTABLE: dict[str, str] = {}


def import_targets(patches: Iterable[Patch], given: ModuleType | None = None) -> dict[str, ModuleType]:
    """The modules ``patches`` target, by name: only ``given`` when set (the hook's module), else each imported
    (or waited for) the safe way. Call without the lock."""
    if given is not None:
        return {given.__name__: given}
    modules = {}
    for patch in patches:
        if patch.module in modules or patch.module in UNIMPORTABLE:
            continue
        if patch.is_transformers_patch:
            modules[patch.module] = importlib.import_module(patch.module)
        elif installed_version(patch.distribution) is not None:
            try:  # a client's module may not import on this transformers (its own defect, loud where it is used)
                modules[patch.module] = importlib.import_module(patch.module)
            except ImportError as exc:
                UNIMPORTABLE[patch.module] = f"{type(exc).__name__}: {exc}"
    return modules


class Engine:
    """Applies and reverts a registry of patches on transformers' modules (each patch names its own)."""

    def __init__(self, registry: Iterable[Patch]) -> None:
        self.registry = tuple(registry)
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._warned: set[tuple[str, str]] = set()

    # -- selection -----------------------------------------------------------------------------
    def _select(self, ids: Iterable[str] | None) -> list[Patch]:
        if ids is None:
            return list(self.registry)
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
        self, module: ModuleType | None = None, ids: Iterable[str] | None = None, automatic: bool = False
    ) -> list[PatchStatus]:
        """Apply every selected patch this release needs; returns the status of each selected patch.

        ``module``: apply only the patches on it (the import hook passes the module just imported).
        ``automatic`` (the import hook): patches named by ``GEMMA3N_EXPORT_FIXES_DISABLE`` are left out.
        """
        modules = import_targets(self._select(ids), module)  # never under the lock (see the module docstring)
        return self._apply(modules, ids, automatic)

    def _apply(self, modules: dict[str, ModuleType], ids: Iterable[str] | None, automatic: bool) -> list[PatchStatus]:
        disabled = _env.disabled_patches() if automatic else frozenset()
        with self._lock:
            selected = self._select(ids)
            for patch in selected:
                module = modules.get(patch.module)
                if module is None:
                    continue
                version = installed_version(patch.distribution) or "0"
                record = self._records.get(patch.id)
                if record and record.state is State.APPLIED and self._intact(record, module):
                    continue
                if patch.id in disabled:
                    if record is None or record.state is not State.APPLIED:
                        self._records[patch.id] = _Record(
                            State.DISABLED,
                            f"disabled: {_env.DISABLE_VAR} names it ({patch.distribution} {version}: "
                            f"{'needs it' if patch.needed_by(version) else 'does not need it'})",
                            module=module, version=version,
                        )  # fmt: skip
                    continue
                self._records[patch.id] = self._apply_one(patch, module, version)
            return [self._status(p) for p in selected]

    @contextmanager
    def patched(self, ids: Iterable[str] | None = None) -> Iterator[list[PatchStatus]]:
        """Run the block with the patches applied; on exit, reverts those that were not applied before."""
        ids = None if ids is None else list(ids)
        modules = import_targets(self._select(ids))  # never under the lock
        with self._lock:
            was_applied = self.applied_ids()
            statuses = self._apply(modules, ids, automatic=False)
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

    def _apply_one(self, patch: Patch, module: ModuleType, version: str) -> _Record:
        record = _Record(State.PENDING, "", module=module, version=version)
        package = patch.distribution
        if not patch.needed_by(version):
            record.state = State.NOT_NEEDED
            record.reason = f"not needed: {package} {version} is outside {patch.needed_on} ({patch.upstream})"
            return record
        try:
            originals = self._check_targets(patch, module, record)
        except _Drift as exc:
            record.state = State.SKIPPED
            record.reason = f"skipped: {exc}; {package} {version} should need it ({patch.needed_on})"
            self._warn(patch, record.reason)
            return record
        try:
            replacements = patch.build({path: originals[path][2] for path in originals})
            for path, replacement in replacements.items():
                owner, name, original = originals[path]
                setattr(replacement, MARKER, patch.id)
                setattr(owner, name, replacement)
                record.installed.append(_Installed(owner, name, original, replacement))
        except Exception as exc:
            problems = self._undo(record)
            record.state = State.FAILED
            record.reason = f"failed and rolled back: {type(exc).__name__}: {exc}" + "".join(f"; {p}" for p in problems)
            self._warn(patch, record.reason)
            return record
        record.state = State.APPLIED
        record.reason = f"applied: {package} {version} is in {patch.needed_on} and the code matches"
        if patch.beyond_verified(version):
            record.reason += (
                f" (newer than the newest release checked, {patch.verified_through}: the fingerprints decided)"
            )
        if patch.changes_eager_numerics and patch.notes:
            record.reason += f"; {patch.notes[0]}"
        return record

    def _check_targets(self, patch: Patch, module: ModuleType, record: _Record) -> dict[str, tuple[Any, str, Function]]:
        originals: dict[str, tuple[Any, str, Function]] = {}
        for target in patch.targets:
            owner, name, original = _resolve(module, target.path)
            if getattr(original, MARKER, None) is not None:
                raise _Drift(f"{target.path} already holds a gemma3n-export-fixes function from another engine")
            try:
                found = fingerprint(original)
            except (OSError, TypeError, SyntaxError, ValueError) as exc:
                raise _Drift(f"{target.path}: source unavailable for fingerprinting ({exc})") from exc
            record.fingerprints[target.path] = found
            if found not in target.fingerprints:
                raise _Drift(
                    f"{target.path} has code (fingerprint {found}) this patch was not written for "
                    f"(known: {', '.join(f'{fp} [{rel}]' for fp, rel in target.fingerprints.items())})"
                )
            if target.replaced:
                originals[target.path] = (owner, name, original)
        return originals

    @staticmethod
    def _intact(record: _Record, module: ModuleType) -> bool:
        """Our functions are still where we put them, in the classes the module has now.

        False after ``importlib.reload`` (new classes, no hook fires) or a foreign replacement.
        """
        for step in record.installed:
            current = module if step.owner is module else getattr(module, step.owner.__name__, None)
            if current is not step.owner or vars(step.owner).get(step.name) is not step.replacement:
                return False
        return record.module is module

    # -- revert --------------------------------------------------------------------------------
    def revert(self, ids: Iterable[str] | None = None) -> list[PatchStatus]:
        """Put back the original objects of every selected applied patch."""
        with self._lock:
            selected = self._select(ids)
            for patch in selected:
                record = self._records.get(patch.id)
                if record is None or record.state is not State.APPLIED:
                    continue
                problems = self._undo(record)
                record.state = State.REVERTED
                record.reason = "reverted: the upstream code is back" + "".join(f"; {p}" for p in problems)
            return [self._status(p) for p in selected]

    @staticmethod
    def _undo(record: _Record) -> list[str]:
        problems = []
        while record.installed:
            step = record.installed.pop()
            current = vars(step.owner).get(step.name)
            if current is step.replacement:
                setattr(step.owner, step.name, step.original)
            else:
                problems.append(
                    f"{step.owner.__name__}.{step.name} was replaced by someone else after us; left as it is"
                )
        return problems

    # -- status --------------------------------------------------------------------------------
    def status(self, ids: Iterable[str] | None = None) -> list[PatchStatus]:
        """The status of each selected patch, without importing anything."""
        with self._lock:
            return [self._status(p) for p in self._select(ids)]

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
            fingerprints=dict(record.fingerprints),
        )

    @staticmethod
    def _pending_reason(patch: Patch) -> str:
        if _env.disabled_by_env():
            return f"pending: {_env.ENV_VAR} turns the automatic patching off in this process (apply() still works)"
        if not patch.is_transformers_patch and installed_version(patch.distribution) is None:
            return f"pending: {patch.distribution} is not installed (the patch applies when {patch.module} is imported)"
        if patch.module in UNIMPORTABLE:
            return f"pending: {patch.module} does not import here ({UNIMPORTABLE[patch.module]})"
        return f"pending: {patch.module} has not been imported in this process"

    def _warn(self, patch: Patch, reason: str) -> None:
        key = (patch.id, reason)
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(f"gemma3n-export-fixes: {patch.id}: {reason}", Gemma3nExportFixesWarning, stacklevel=3)


#: The process-wide engine: the import hook and the public API share it.
ENGINE = Engine(REGISTRY)
