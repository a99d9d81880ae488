"""Drift fingerprints: blind to comments, formatting and docstrings; sensitive to code."""

from __future__ import annotations

import pytest

from gemma3n_export_fixes.plugin.fingerprint import fingerprint, source_fingerprint
from gemma3n_export_fixes.plugin.patches import REGISTRY

BASE = '''
def f(self, x):
    """Doc."""
    y = x + 1  # comment
    return y * self.k
'''


def test_comments_formatting_and_docstring_do_not_count():
    reformatted = """
        def f(self,   x):
            # a new comment
            y = (x + 1)
            return y*self.k
    """
    assert source_fingerprint(BASE) == source_fingerprint(reformatted)


@pytest.mark.parametrize(
    "changed",
    [BASE.replace("x + 1", "x + 2"), BASE.replace("self.k", "self.j"), BASE.replace("return y", "return -y")],
)
def test_code_changes_count(changed):
    assert source_fingerprint(BASE) != source_fingerprint(changed)


def test_installed_release_matches_declared_fingerprints_where_the_patch_is_needed(gemma3n_module):
    """For each patch this release needs, every target's upstream code is one the patch declares."""
    import importlib

    import gemma3n_export_fixes as gx
    from gemma3n_export_fixes.plugin.engine import UNIMPORTABLE, _resolve
    from gemma3n_export_fixes.versions import installed_version

    # a client's module that does not import here (optimum's custom_kv_cache on 5.23) has no code to check
    usable = [p for p in REGISTRY if not set(p.modules) & set(UNIMPORTABLE)]
    needed = [p for p in usable if (v := installed_version(p.distribution)) and p.needed_by(v)]
    assert needed, "every release with Gemma 3n needs at least gaussian-topk"
    with gx.unpatched():
        for patch in needed:
            for target in patch.targets:
                if target.adds:  # defined by the patch: nothing upstream to fingerprint
                    continue
                _, _, original = _resolve(importlib.import_module(target.module or patch.module), target.path)
                assert fingerprint(original) in target.fingerprints, (patch.id, target.path)
