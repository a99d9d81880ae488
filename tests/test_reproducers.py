"""Per fix: the reproducer shows the upstream failure under ``unpatched()`` and none with the fix."""

from __future__ import annotations

import pytest

import gemma3n_export_fixes as gx
from conftest import require_applied
from gemma3n_export_fixes.plugin.patches import REGISTRY

#: The error family each defect shows on the upstream code.
EXPECTED_FAILURE = {
    "altup-clamp": ("RuntimeError", "fake tensor in the exported program constant"),
    "gaussian-topk": ("SpecViolationError", "erfinv"),
    "kv-share-nocache": ("logits-differ", "use_cache=False logits differ"),
}


@pytest.mark.parametrize("patch", REGISTRY, ids=lambda p: p.id)
def test_reproducer_shows_the_bug_unpatched_and_not_patched(gemma3n_module, patch):
    require_applied(patch.id)
    with gx.unpatched([patch.id]):
        upstream = patch.reproduce()
    fixed = patch.reproduce()
    error, text = EXPECTED_FAILURE[patch.id]
    assert upstream.bug, upstream
    assert upstream.error == error and text in upstream.detail, upstream
    assert not fixed.bug, fixed


def test_every_patch_has_a_reproducer_and_an_expected_failure():
    assert {p.id for p in REGISTRY} == set(EXPECTED_FAILURE)
    assert all(callable(p.reproduce) for p in REGISTRY)
