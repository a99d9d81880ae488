"""One registry, two scopes: toolchain patches (export scope) go through the same engine as the model's.

A private engine on a module written for the test (a real source file: fingerprints read it) shows the mechanics
(in place only inside ``patched(scope=EXPORT)``, an added attribute deleted again, drift when it exists); the real
registry shows every toolchain patch in ``status`` and an opt-out by name.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

import gemma3n_export_fixes as gx
from gemma3n_export_fixes.plugin.engine import MARKER, Engine, State
from gemma3n_export_fixes.plugin.fingerprint import fingerprint
from gemma3n_export_fixes.plugin.patch import Kind, Patch, Scope, Target

SOURCE = """
class Base:
    def copy(self):
        return "deep copy"


class Backend(Base):
    pass


def lower(x):
    return x + 1
"""


@pytest.fixture
def toolchain_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "fake_toolchain.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("fake_toolchain")
    yield module
    sys.modules.pop("fake_toolchain", None)


def _patch(module, **changes) -> Patch:
    fields = {
        "id": "fake-shortcut",
        "title": "t",
        "defect": "d",
        "needed_on": SpecifierSet(">=0"),  # the distribution below is not installed: version "0"
        "verified_through": "0",
        "targets": (
            Target("lower", {fingerprint(module.lower): "this test"}),
            Target("Backend.copy", {}, adds=True),
            Target("Base.copy", {fingerprint(module.Base.copy): "this test"}, replaced=False),
        ),
        "build": lambda originals: {
            "lower": lambda x: originals["lower"](x) * 10,
            "Backend.copy": lambda self: "shared",
        },
        "module": "fake_toolchain",
        "distribution": "pip",  # installed everywhere the tests run
        "scope": Scope.EXPORT,
        "kind": Kind.SHORTCUT,
    }
    fields.update(changes)
    return Patch(**fields)


def test_an_export_patch_is_in_place_only_inside_patched_export_scope(toolchain_module):
    engine = Engine([_patch(toolchain_module, needed_on=SpecifierSet(">=1"))])
    original = toolchain_module.lower
    assert engine.apply() == []  # the import scope selects nothing here
    assert toolchain_module.lower is original
    (ready,) = engine.assess()
    assert ready.state is State.READY and ready.scope == "export" and ready.kind == "shortcut", ready.reason
    with engine.patched(scope=Scope.EXPORT) as (status,):
        assert status.applied, status.reason
        assert toolchain_module.lower(1) == 20 and getattr(toolchain_module.lower, MARKER) == "fake-shortcut"
        assert toolchain_module.Backend().copy() == "shared" and "copy" in vars(toolchain_module.Backend)
    assert toolchain_module.lower is original  # the very object
    assert "copy" not in vars(toolchain_module.Backend) and toolchain_module.Backend().copy() == "deep copy"
    (after,) = engine.status()
    assert after.state is State.READY  # outside an export it is what it was before


def test_an_added_attribute_that_upstream_defines_is_drift(toolchain_module):
    toolchain_module.Backend.copy = lambda self: "upstream's own now"
    engine = Engine([_patch(toolchain_module)])
    warned = pytest.warns(gx.Gemma3nExportFixesWarning, match="defined in this release")
    with warned, engine.patched(scope=Scope.EXPORT) as (status,):
        assert status.state is State.SKIPPED
    assert toolchain_module.Backend().copy() == "upstream's own now"


def test_an_export_patch_disabled_by_name_stays_out_and_says_so(toolchain_module, monkeypatch):
    monkeypatch.setenv("GEMMA3N_EXPORT_FIXES_DISABLE", "fake-shortcut")
    engine = Engine([_patch(toolchain_module)])
    original = toolchain_module.lower
    with engine.patched(scope=Scope.EXPORT, automatic=True) as (status,):
        assert status.state is State.DISABLED and "GEMMA3N_EXPORT_FIXES_DISABLE" in status.reason
        assert toolchain_module.lower is original
    with engine.patched(scope=Scope.EXPORT) as (status,):  # an explicit request does what it is asked
        assert status.applied


def test_status_lists_every_patch_of_both_scopes_with_its_distribution_range_and_state():
    pytest.importorskip("executorch", reason="executorch is not installed")
    from gemma3n_export_fixes.plugin import assess
    from gemma3n_export_fixes.plugin.patches import REGISTRY

    assess()
    statuses = {s.id: s for s in gx.status()}
    assert set(statuses) == {p.id for p in REGISTRY}
    toolchain = [p for p in REGISTRY if p.scope is Scope.EXPORT]
    assert {p.distribution for p in toolchain} == {"executorch", "torch"}
    for patch in toolchain:
        status = statuses[patch.id]
        assert status.scope == "export" and status.distribution == patch.distribution
        assert status.needed_on == str(patch.needed_on) and status.kind == patch.kind.value
        assert status.state.value in ("ready", "not-needed", "skipped-drift", "disabled"), status.reason
        assert patch.evidence and patch.upstream  # a shortcut's measurement and test; its upstream record


def test_a_toolchain_patch_disabled_by_name_is_left_out_of_an_export(monkeypatch):
    pytest.importorskip("executorch", reason="executorch is not installed")
    from executorch.exir.backend import utils as backend_utils

    from gemma3n_export_fixes.plugin import exporting

    original = backend_utils.duplicate_constant_node
    monkeypatch.setenv("GEMMA3N_EXPORT_FIXES_DISABLE", "validate-once")
    with exporting() as statuses:
        by_id = {s.id: s for s in statuses}
        assert by_id["validate-once"].state is State.DISABLED
        assert backend_utils.duplicate_constant_node is original
        assert by_id["legalize-in-place"].applied, by_id["legalize-in-place"].reason
    monkeypatch.delenv("GEMMA3N_EXPORT_FIXES_DISABLE")
    with exporting(ids=["validate-once"]) as (status,):
        assert status.applied and backend_utils.duplicate_constant_node is not original
    assert backend_utils.duplicate_constant_node is original
