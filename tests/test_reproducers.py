"""Per fix: the reproducer shows the upstream failure under ``unpatched()`` and none with the fix."""

from __future__ import annotations

import pytest

import gemma3n_export_fixes as gx
from conftest import require_applied
from gemma3n_export_fixes.plugin.patch import Scope
from gemma3n_export_fixes.plugin.patches import REGISTRY

#: The error families each defect shows on the upstream code (one per release line where they differ).
EXPECTED_FAILURE = {
    "altup-clamp": (("RuntimeError", "fake tensor in the exported program constant"),),
    "gaussian-topk": (("SpecViolationError", "erfinv"),),
    "kv-share-nocache": (("logits-differ", "use_cache=False logits differ"),),
    "recipe-sliding-cache": (
        ("UserError", "Constraints violated (seq)"),  # 4.53 - 5.3: a prefill longer than the window
        ("TorchRuntimeError", "when making fake tensor call"),  # 5.4.0 - 5.5.0: window-sized StaticLayer
    ),
    "recipe-sliding-mask": (("windowed-full-attention", "the full-attention mask drops"),),
    "rotary-order": (("hash-seed-dependent", "the rotary embeddings' order depends on the hash seed"),),
    "optimum-custom-sdpa": (("window-ignored", "custom_sdpa ignores the sliding window"),),
    "optimum-custom-kv-cache": (("missing-shared-layers", "KV-shared layer"),),
}


#: The patches with a reproducer: every import-scope one. A toolchain (export-scope) patch's evidence is its
#: measurement and its same-program test (``Patch.evidence``; tests/test_lowering.py and the like).
REPRODUCED = [p for p in REGISTRY if p.scope is Scope.IMPORT]


@pytest.mark.parametrize("patch", REPRODUCED, ids=lambda p: p.id)
def test_reproducer_shows_the_bug_unpatched_and_not_patched(gemma3n_module, patch):
    require_applied(patch.id)
    with gx.unpatched([patch.id]):
        upstream = patch.reproduce()
    fixed = patch.reproduce()
    assert upstream.bug, upstream
    assert any(upstream.error == error and text in upstream.detail for error, text in EXPECTED_FAILURE[patch.id])
    assert not fixed.bug, fixed


def test_every_patch_has_a_reproducer_and_an_expected_failure_or_evidence():
    assert {p.id for p in REPRODUCED} == set(EXPECTED_FAILURE)
    assert all(callable(p.reproduce) for p in REPRODUCED)
    assert all(p.reproduce is None and p.evidence for p in REGISTRY if p not in REPRODUCED)
