"""The upstream drafts: generated from the registry, apply cleanly to the newest release's sources, and the
patched module passes the reproducer and the transformers-style test without this package's help. The test
additions are not committed: they are generated from their template (``upstream_prs.generate.write_test``)."""

from __future__ import annotations

import json

import pytest

from conftest import run_python
from gemma3n_export_fixes.plugin.patch import Scope
from gemma3n_export_fixes.plugin.patches import REGISTRY
from matrix.grid import ROOT, default_stack
from upstream_prs.generate import TEMPLATES, TEST_NAME, write_test

DRAFTS = ROOT / "upstream_prs"


@pytest.fixture(scope="module")
def newest(gemma3n_module):
    import transformers

    target = default_stack()["transformers"]
    if transformers.__version__ != target:
        pytest.skip(
            f"the drafts target the newest release, transformers {target}; installed {transformers.__version__}"
        )
    return target


def test_one_draft_per_patch_still_needed_and_a_record_per_fixed_one(newest):
    for patch in (p for p in REGISTRY if p.is_transformers_patch):
        folder, record = DRAFTS / patch.id, DRAFTS / f"{patch.id}.md"
        if patch.needed_by(newest):
            # committed: the patch and PR.md; the test additions come from their template (generated on demand)
            assert {p.name for p in folder.iterdir()} - {TEST_NAME} == {f"0001-gemma3n-{patch.id}.patch", "PR.md"}
            assert (TEMPLATES / f"{patch.id}_test.py").is_file()
            header = (folder / "PR.md").read_text().split("\n\n")[0]
            for field in ("Description:", "Bug:", "Forwarded:", "Applied-Upstream:", "Last-Update:"):
                assert field in header, (patch.id, field)
            assert not record.exists()
        else:
            text = record.read_text()
            assert "Applied-Upstream:" in text and not folder.exists()
            assert "PR #" in text or "PR not identified" in text  # name the upstream fix, or say it is unknown


def test_a_client_patch_has_a_hand_written_record_for_its_project():
    """A patch on a client (optimum-executorch) has no transformers draft; its record holds the DEP-3 header
    and the change proposed to that project."""
    clients = [p for p in REGISTRY if not p.is_transformers_patch and p.scope is Scope.IMPORT]
    assert clients
    for patch in clients:
        text = (DRAFTS / f"{patch.id}.md").read_text()
        header = text.split("\n\n")[0]
        for field in ("Description:", "Bug:", "Forwarded:", "Applied-Upstream:", "Last-Update:"):
            assert field in header, (patch.id, field)
        assert "```diff" in text and not (DRAFTS / patch.id).exists()


def test_a_toolchain_patch_has_a_record_for_its_project():
    """A patch on the toolchain (ExecuTorch, torch) has a record under ``upstream_prs/<distribution>/<id>.md`` with
    the DEP-3 header (what upstream has, what is drafted), and its ``upstream`` field points at it."""
    toolchain = [p for p in REGISTRY if p.scope is Scope.EXPORT]
    assert toolchain
    for patch in toolchain:
        record = DRAFTS / patch.distribution / f"{patch.id}.md"
        header = record.read_text().split("\n\n")[0]
        for field in ("Description:", "Bug:", "Forwarded:", "Applied-Upstream:", "Last-Update:"):
            assert field in header, (patch.id, field)
        assert f"upstream_prs/{patch.distribution}/{patch.id}.md" in patch.upstream, patch.upstream


def test_committed_drafts_are_what_the_generator_writes_today(newest, tmp_path):
    from upstream_prs.generate import generate

    generate(tmp_path)
    for path in sorted(tmp_path.rglob("*")):
        if path.name == TEST_NAME:  # not committed: the template, as it is
            assert path.read_bytes() == (TEMPLATES / f"{path.parent.name}_test.py").read_bytes()
        elif path.is_file():
            committed = DRAFTS / path.relative_to(tmp_path)
            strip = lambda text: [line for line in text.splitlines() if not line.startswith("Last-Update:")]  # noqa: E731
            assert strip(committed.read_text()) == strip(path.read_text()), f"regenerate: {committed}"


@pytest.mark.parametrize("patch", [p for p in REGISTRY if (DRAFTS / p.id).is_dir()], ids=lambda p: p.id)
def test_draft_applies_cleanly_and_the_patched_module_is_fixed_without_the_plugin(newest, patch):
    from upstream_prs.apply_check import check

    measured = check(DRAFTS / patch.id / f"0001-gemma3n-{patch.id}.patch")
    assert measured["hook_active"] is False
    assert measured["export_strict_False"] == measured["export_strict_True"] == measured["to_edge"] == "ok"
    assert [measured[f"max_abs_diff_{dtype}"] for dtype in ("float32", "bfloat16", "float16")] == [0, 0, 0]


@pytest.mark.parametrize("patch", [p for p in REGISTRY if (DRAFTS / p.id).is_dir()], ids=lambda p: p.id)
def test_transformers_style_test_passes_patched_and_fails_upstream(newest, patch, tmp_path):
    from upstream_prs.apply_check import run_snippet

    folder = DRAFTS / patch.id
    snippet = write_test(patch.id, tmp_path)
    fixed = run_snippet(folder / f"0001-gemma3n-{patch.id}.patch", snippet)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    upstream = run_snippet(None, snippet)
    assert upstream.returncode == 1 and "FAILED" in upstream.stderr


@pytest.mark.skipif(not (DRAFTS / "gaussian-topk").is_dir(), reason="no gaussian-topk draft (fixed upstream)")
def test_gaussian_topk_draft_is_bit_identical_to_upstream_on_a_million_values_in_every_dtype(newest):
    """``upstream_prs.numerics``: on 1,048,576 standard normal values at sparsity 0.95, no keep/drop decision differs
    from upstream and the outputs are equal bit for bit, in float32, bfloat16 and float16 (the first draft, which
    multiplied by an unrounded Python float, flipped 359 decisions in bfloat16 and 42 in float16)."""
    proc = run_python(["-m", "upstream_prs.numerics"], env={"GEMMA3N_EXPORT_FIXES": "0"}, cwd=DRAFTS.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    measured = report["sparsity_0.95"]["draft"]
    assert set(measured) == {"float32", "bfloat16", "float16"}
    for dtype, result in measured.items():
        assert result == {"flips": 0, "elements": 1_048_576, "max_abs_diff": 0.0, "bit_identical": True}, dtype
    assert report["sweep_not_bit_identical"]["draft"] == []
    assert report["multiplier_vs_icdf_float32"].startswith("0 of 999 ")
    assert report["init_on_meta_device_ok"] and report["init_under_bfloat16_default_dtype_ok"]


@pytest.mark.slow
@pytest.mark.skipif(not (DRAFTS / "gaussian-topk").is_dir(), reason="no gaussian-topk draft (fixed upstream)")
def test_gaussian_topk_tester_change_lets_upstream_export_tests_see_the_bug(newest, tmp_path):
    """The upstream ``Gemma3nTextModelTester`` config lowers today (no layer is sparse, ``_gaussian_topk`` never
    runs); with the snippet's ``activation_sparsity_pattern`` it fails on ``aten.erfinv`` upstream, and lowers with
    the draft applied."""
    from upstream_prs.apply_check import run_tester, tester_sparsity

    folder = DRAFTS / "gaussian-topk"
    pattern = tester_sparsity(write_test("gaussian-topk", tmp_path))
    assert isinstance(pattern, list) and len(pattern) == 4 and pattern[0] > 0  # a list: the config rejects a tuple
    today = run_tester(None, None)
    assert today["sparse_layers"] == [] and today["to_edge"] == "ok"
    upstream = run_tester(None, pattern)
    assert upstream["hook_active"] is False and upstream["sparse_layers"] == [0]
    assert "erfinv" in upstream["to_edge"] and upstream["to_edge"].startswith("SpecViolationError")
    fixed = run_tester(folder / "0001-gemma3n-gaussian-topk.patch", pattern)
    assert fixed["patched"] is True and fixed["hook_active"] is False and fixed["to_edge"] == "ok"


def test_the_test_additions_are_generated_next_to_each_committed_draft(tmp_path):
    """``python -m upstream_prs.generate --tests-only --out DIR``: each committed draft's test additions, the
    template as it is (what a maintainer sending the PR copies into transformers' test file)."""
    proc = run_python(["-m", "upstream_prs.generate", "--tests-only", "--out", str(tmp_path)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    drafts = {p.name for p in DRAFTS.iterdir() if p.is_dir() and (TEMPLATES / f"{p.name}_test.py").is_file()}
    written = {p.parent.name: p for p in tmp_path.glob(f"*/{TEST_NAME}")}
    assert set(written) == drafts
    for patch_id, path in written.items():
        assert path.read_bytes() == (TEMPLATES / f"{patch_id}_test.py").read_bytes()
