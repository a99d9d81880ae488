"""The engine's contract: idempotent apply, identity-restoring revert, drift, rollback, thread safety."""

from __future__ import annotations

import random
import threading
import warnings
from collections.abc import Iterator, Mapping

import pytest
from packaging.specifiers import SpecifierSet

import gemma3n_export_fixes as gx
from conftest import run_python
from gemma3n_export_fixes.plugin.api import ENGINE
from gemma3n_export_fixes.plugin.engine import (
    MARKER,
    UNIMPORTABLE,
    Engine,
    Gemma3nExportFixesWarning,
    State,
)
from gemma3n_export_fixes.plugin.fingerprint import fingerprint
from gemma3n_export_fixes.plugin.modules import RECIPE_MODULE, WATCHED_MODULES
from gemma3n_export_fixes.plugin.patch import Patch, Scope, Target
from gemma3n_export_fixes.plugin.patches import REGISTRY
from gemma3n_export_fixes.versions import installed_version


def _owner(patch, target):
    """(owner, name) of ``target`` in the module it lies in (a class, or the module itself)."""
    import importlib

    owner = importlib.import_module(target.module or patch.module)
    *path, name = target.path.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def _present(status) -> bool:
    """The patch's module is in this process (a client such as optimum-executorch may be absent, or not import)."""
    return status.distribution == "transformers" or not status.reason.startswith("pending")


def _targets(module):
    """(owner, name) of every replaced target of the patches applied on this release."""
    return [_owner(patch, target) for patch in REGISTRY if patch.id in ENGINE.applied_ids()
            for target in patch.targets if target.replaced]  # fmt: skip


def test_apply_twice_changes_nothing(gemma3n_module):
    gx.apply()
    before = {(o, n): vars(o)[n] for o, n in _targets(gemma3n_module)}
    assert before, "at least gaussian-topk applies on every release"
    statuses = gx.apply()
    assert {(o, n): vars(o)[n] for o, n in _targets(gemma3n_module)} == before
    assert all(getattr(f, MARKER, None) for f in before.values())
    assert [s.state for s in statuses] == [s.state for s in gx.status() if s.scope == "import"]


def test_revert_restores_the_very_original_objects(gemma3n_module):
    targets = _targets(gemma3n_module)
    with gx.unpatched():
        originals = {(o, n): vars(o)[n] for o, n in targets}
    assert all(getattr(f, MARKER, None) is None for f in originals.values())
    gx.revert()
    try:
        for (owner, name), original in originals.items():
            assert vars(owner)[name] is original
        imports = [s for s in gx.status() if _present(s) and s.scope == "import"]
        assert all(s.state in (State.REVERTED, State.NOT_NEEDED) for s in imports)
    finally:
        gx.apply()
    assert all(getattr(vars(o)[n], MARKER, None) for o, n in targets)


def test_unpatched_and_patched_context_managers(gemma3n_module):
    mlp = gemma3n_module.Gemma3nTextMLP
    assert getattr(mlp._gaussian_topk, MARKER, None) == "gaussian-topk"
    with gx.unpatched(["gaussian-topk"]):
        assert getattr(mlp._gaussian_topk, MARKER, None) is None
        with gx.patched(["gaussian-topk"]) as statuses:
            assert statuses[0].applied
            assert getattr(mlp._gaussian_topk, MARKER, None) == "gaussian-topk"
        assert getattr(mlp._gaussian_topk, MARKER, None) is None
    assert getattr(mlp._gaussian_topk, MARKER, None) == "gaussian-topk"


def test_every_patch_reports_a_state_and_a_reason(gemma3n_module):
    statuses = gx.status()
    assert [s.id for s in statuses] == [p.id for p in REGISTRY]
    for s in statuses:
        if s.scope == "export":  # in place only during an export: see tests/test_scopes.py
            assert s.state in {State.PENDING, State.READY, State.NOT_NEEDED, State.SKIPPED, State.DISABLED}, s
            continue
        if not _present(s):
            assert "not installed" in s.reason or "does not import here" in s.reason, s
            continue
        assert s.state in {State.APPLIED, State.NOT_NEEDED}
        assert s.reason.startswith(s.state.value.split("-")[0])
        assert s.to_dict()["state"] == s.state.value
    kv = next(s for s in statuses if s.id == "kv-share-nocache")
    assert kv.changes_eager_numerics
    if kv.applied:
        assert "changes eager numbers on purpose" in kv.reason


def _gaussian_patch(**changes) -> Patch:
    """The real gaussian-topk patch with some declarations changed (for a private engine)."""
    real = next(p for p in REGISTRY if p.id == "gaussian-topk")
    fields = {f: getattr(real, f) for f in real.__dataclass_fields__}
    fields.update(changes)
    return Patch(**fields)


def test_drift_in_range_is_skipped_and_warned_once_naming_the_patch(gemma3n_module):
    drifted = _gaussian_patch(
        id="gaussian-topk-drift",
        targets=(Target("Gemma3nTextMLP._gaussian_topk", {"0000000000000000": "a release that never was"}),),
    )
    engine = Engine([drifted])
    with gx.unpatched(["gaussian-topk"]):
        original = vars(gemma3n_module.Gemma3nTextMLP)["_gaussian_topk"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (status,) = engine.apply(gemma3n_module)
            engine.revert()
            engine.apply(gemma3n_module)
        assert status.state is State.SKIPPED
        assert fingerprint(original) in status.reason and "gaussian-topk-drift" not in status.reason
        assert vars(gemma3n_module.Gemma3nTextMLP)["_gaussian_topk"] is original
        ours = [w for w in caught if issubclass(w.category, Gemma3nExportFixesWarning)]
        assert len(ours) == 1 and "gaussian-topk-drift" in str(ours[0].message)


def test_out_of_range_release_is_not_needed_and_silent(gemma3n_module):
    engine = Engine([_gaussian_patch(id="old-only", needed_on=SpecifierSet("<4.0"))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (status,) = engine.apply(gemma3n_module)
    assert status.state is State.NOT_NEEDED and "outside" in status.reason


class _FailsAfterFirst(Mapping):
    """A build result that yields one replacement, then fails: a patch that breaks half-way."""

    def __init__(self, first):
        self.first = first

    def __getitem__(self, key):
        return self.first[key]

    def __len__(self):
        return 2

    def __iter__(self) -> Iterator[str]:
        yield from self.first
        raise RuntimeError("boom half-way")


def test_a_patch_failing_half_way_is_rolled_back_and_reported(gemma3n_module):
    real_build = next(p for p in REGISTRY if p.id == "gaussian-topk").build
    broken = _gaussian_patch(id="half-way", build=lambda originals: _FailsAfterFirst(real_build(originals)))
    engine = Engine([broken])
    with gx.unpatched(["gaussian-topk"]):
        original = vars(gemma3n_module.Gemma3nTextMLP)["_gaussian_topk"]
        with pytest.warns(Gemma3nExportFixesWarning, match="half-way"):
            (status,) = engine.apply(gemma3n_module)
        assert status.state is State.FAILED and "boom half-way" in status.reason
        assert vars(gemma3n_module.Gemma3nTextMLP)["_gaussian_topk"] is original


def test_revert_leaves_a_later_foreign_replacement_alone(gemma3n_module):
    engine = Engine([_gaussian_patch(id="mine")])
    with gx.unpatched(["gaussian-topk"]):
        cls = gemma3n_module.Gemma3nTextMLP
        original = vars(cls)["_gaussian_topk"]
        engine.apply(gemma3n_module)

        def foreign(self, inputs):
            return original(self, inputs)

        cls._gaussian_topk = foreign
        try:
            (status,) = engine.revert()
            assert "replaced by someone else" in status.reason
            assert vars(cls)["_gaussian_topk"] is foreign
        finally:
            cls._gaussian_topk = original


def test_concurrent_apply_and_revert_leave_a_consistent_state(gemma3n_module):
    targets = _targets(gemma3n_module)
    with gx.unpatched():
        originals = {(o, n): vars(o)[n] for o, n in targets}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait()
            for _ in range(40):
                ids = rng.choice([None, ["gaussian-topk"], [p.id for p in REGISTRY]])
                (gx.apply if rng.random() < 0.5 else gx.revert)(ids)
                with gx.unpatched(ids):
                    pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    applied = ENGINE.applied_ids()
    # a client may be absent, or its module may not import on this transformers
    imports = [p for p in REGISTRY if p.scope is Scope.IMPORT]
    for patch in (p for p in imports if installed_version(p.distribution) and p.module not in UNIMPORTABLE):
        for target in (t for t in patch.targets if t.replaced):
            owner, name = _owner(patch, target)
            current = vars(owner).get(name)  # None: not in this release (a patch not needed here)
            assert (getattr(current, MARKER, None) == patch.id) == (patch.id in applied)
    gx.revert()
    for (owner, name), original in originals.items():
        assert vars(owner)[name] is original
    gx.apply()


def test_the_recipe_patches_apply_when_the_recipe_module_is_imported():
    """A second watched module: importing transformers' ExecuTorch recipe alone (no Gemma 3n import) runs the hook
    for the recipe patches, and only for them."""
    code = (
        "import transformers.integrations.executorch\n"
        "import gemma3n_export_fixes as gx\n"
        "print(' '.join(f'{s.id}={s.state.value}' for s in gx.status()))\n"
    )
    result = run_python(["-c", code])
    assert result.returncode == 0, result.stderr[-2000:]
    states = dict(item.split("=") for item in result.stdout.split())
    for patch in REGISTRY:
        if patch.module == RECIPE_MODULE:
            assert states[patch.id] in ("applied", "not-needed"), states
    assert {p.module for p in REGISTRY if p.scope is Scope.IMPORT} == set(WATCHED_MODULES)


def test_apply_after_importlib_reload_patches_the_new_classes():
    """reload() builds new classes and fires no import hook; apply() notices and patches them."""
    from conftest import run_python

    code = (
        "import importlib, gemma3n_export_fixes as gx\n"
        "import transformers.models.gemma3n.modeling_gemma3n as m\n"
        "old = m.Gemma3nTextMLP\n"
        "importlib.reload(m)\n"
        "assert m.Gemma3nTextMLP is not old\n"
        "print(getattr(m.Gemma3nTextMLP._gaussian_topk, '__gemma3n_export_fixes__', None))\n"
        "gx.apply()\n"
        "print(getattr(m.Gemma3nTextMLP._gaussian_topk, '__gemma3n_export_fixes__', None))\n"
    )
    result = run_python(["-c", code])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["None", "gaussian-topk"]


def test_a_failing_engine_never_breaks_the_users_import():
    """Whatever goes wrong inside the hook, `import transformers...gemma3n` succeeds, with one warning."""
    from conftest import run_python

    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "import gemma3n_export_fixes.plugin.api as api\n"
        "def broken(*a, **k): raise RuntimeError('engine exploded')\n"
        "api.ENGINE.apply = broken\n"
        "import transformers.models.gemma3n.modeling_gemma3n as m\n"
        "print(m.Gemma3nTextMLP.__name__)\n"
    )
    result = run_python(["-c", code])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["Gemma3nTextMLP"]
    assert "gemma3n-export-fixes could not run: RuntimeError('engine exploded')" in result.stderr


def test_apply_while_another_thread_imports_the_module_does_not_deadlock():
    """Thread B imports the Gemma 3n module (its post-import hook takes the engine lock) while thread A calls
    ``apply()`` (which imports the module): the engine must not hold its lock while importing."""
    code = """
import threading, time, sys
import gemma3n_export_fixes as gx
from gemma3n_export_fixes.plugin.modules import TARGET_MODULE
importer = threading.Thread(target=lambda: __import__(TARGET_MODULE), daemon=True)
applier = threading.Thread(target=gx.apply, daemon=True)
importer.start(); time.sleep(0.3); applier.start()
importer.join(90); applier.join(30)
import os
if importer.is_alive() or applier.is_alive():
    print("hung"); sys.stdout.flush(); os._exit(0)  # a deadlocked engine would also block status()
print("done", sorted(s.state.value for s in gx.status() if s.distribution == "transformers")); sys.stdout.flush()
os._exit(0)
"""
    result = run_python(["-c", code], timeout=200)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("done"), result.stdout
    assert "pending" not in result.stdout


def test_patched_while_another_thread_imports_the_module_does_not_deadlock():
    """Like the test above for ``gx.patched()``: it must import the module outside the engine lock, and wait
    for a half-built module (``import_module``) rather than fingerprint it (``sys.modules.get``: "drift")."""
    code = """
import threading, time, sys, os, warnings
warnings.simplefilter("always")
import gemma3n_export_fixes as gx
from gemma3n_export_fixes.plugin.modules import TARGET_MODULE
seen = []
def enter_patched():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gx.patched() as statuses:
            seen.extend(s.state.value for s in statuses if s.distribution == "transformers")
    seen.extend(str(w.message) for w in caught if "gemma3n-export-fixes" in str(w.message))
importer = threading.Thread(target=lambda: __import__(TARGET_MODULE), daemon=True)
patcher = threading.Thread(target=enter_patched, daemon=True)
importer.start(); time.sleep(0.3); patcher.start()
importer.join(90); patcher.join(30)
if importer.is_alive() or patcher.is_alive():
    print("hung"); sys.stdout.flush(); os._exit(0)
print("done", seen); sys.stdout.flush(); os._exit(0)
"""
    result = run_python(["-c", code], timeout=200)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("done"), result.stdout
    assert "skipped-drift" not in result.stdout and "pending" not in result.stdout and "applied" in result.stdout


def test_an_inherited_target_is_drift_not_a_crash(gemma3n_module):
    """A target the class only inherits (here nn.Module.train) is reported as drift, never a KeyError."""
    inherited = _gaussian_patch(id="inherited", targets=(Target("Gemma3nTextMLP.train", {"0" * 16: "never"}),))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        (status,) = Engine([inherited]).apply(gemma3n_module)
    assert status.state is State.SKIPPED and "not defined by Gemma3nTextMLP itself" in status.reason
    assert "train" not in vars(gemma3n_module.Gemma3nTextMLP)


def test_a_release_newer_than_the_verified_one_says_the_fingerprints_decided(gemma3n_module):
    engine = Engine([_gaussian_patch(id="old-verified", verified_through="4.53.0")])
    with gx.unpatched(["gaussian-topk"]):
        (status,) = engine.apply(gemma3n_module)
        try:
            assert status.state is State.APPLIED
            assert "newer than the newest release checked, 4.53.0: the fingerprints decided" in status.reason
        finally:
            engine.revert()
    (current,) = Engine([_gaussian_patch(id="verified", verified_through="99.0")]).status()
    assert "newer than" not in current.reason


def test_the_disable_variable_leaves_named_patches_out_of_the_automatic_run(gemma3n_module):
    """GEMMA3N_EXPORT_FIXES_DISABLE=gaussian-topk: the import hook skips it (state `disabled`, with why), the
    other patches still apply, `status` says so, and an explicit `apply([id])` still applies it."""
    code = (
        "import gemma3n_export_fixes as gx\n"
        "import transformers.models.gemma3n.modeling_gemma3n as m\n"
        "(s,) = gx.status(['gaussian-topk'])\n"
        "print(s.state.value, '|', s.reason, '|', getattr(m.Gemma3nTextMLP._gaussian_topk, '__gemma3n_export_fixes__',"
        " None))\n"
        "(s,) = gx.apply(['gaussian-topk'])\n"
        "print(s.state.value)\n"
    )
    result = run_python(["-c", code], env={"GEMMA3N_EXPORT_FIXES_DISABLE": "gaussian-topk, not-a-patch"})
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = result.stdout.strip().splitlines()
    state, reason, marker = (part.strip() for part in first.split("|"))
    assert state == "disabled" and "GEMMA3N_EXPORT_FIXES_DISABLE names it" in reason and marker == "None"
    assert second == "applied"
    status = run_python(
        ["-m", "gemma3n_export_fixes.cli", "status"], env={"GEMMA3N_EXPORT_FIXES_DISABLE": "gaussian-topk,nope"}
    )
    assert status.returncode == 0, status.stderr[-2000:]
    assert "GEMMA3N_EXPORT_FIXES_DISABLE leaves out gaussian-topk, nope (unknown patch ids: nope" in status.stdout
    (row,) = [line for line in status.stdout.splitlines() if line.startswith("gaussian-topk ")]
    assert row.split()[1:3] == ["fix/import", "disabled"]
