"""The grid and its evidence: well-formed rows, the CI fan-out, and the registry agreeing with results."""

from __future__ import annotations

import json
import subprocess
import sys

from packaging.version import Version

from gemma3n_export_fixes.plugin.patches import REGISTRY
from matrix.grid import ROOT, load_rows, tagged, transformers_releases
from matrix.report import disagreements, evidence, kv_disagreements, kv_verdict, markdown


def test_grid_rows_are_explicit_and_the_default_stack_is_one_of_them():
    rows = load_rows()
    (default,) = tagged("default-stack", rows)
    assert (default["torch"], default["transformers"], default["executorch"], default["torchao"]) == (
        "2.13.0", "5.23.0", "1.5.1", "0.18.0",
    )  # fmt: skip
    for row in rows:
        if "heavy" in row["tags"]:
            assert row["torch"] != "2.13.0" and "grid" not in row["tags"], row["id"]
        elif row["transformers"] == "next":
            assert row["id"] == f"tf-next-et{row['executorch']}" and row["tags"] == ["next"]
        else:
            assert row["id"] == f"tf{row['transformers']}-et{row['executorch']}"
            assert row["torch"] == "2.13.0" and "grid" in row["tags"]
    assert 2 <= len(tagged("smoke", rows)) <= 3
    assert {"5.23.0", "4.57.6"} <= {row["transformers"] for row in tagged("ci", rows)}
    assert tagged("seed", rows)[0]["transformers"] == "5.0.0rc1"


def boundary(releases: list[str], needed) -> tuple[str, str] | None:
    """(last release in the range, the release right after it) in the release list; None when open-ended."""
    inside = [i for i, v in enumerate(releases) if needed(v)]
    assert inside == list(range(inside[0], inside[-1] + 1)), "a declared range must be contiguous"
    last = inside[-1]
    return None if last + 1 == len(releases) else (releases[last], releases[last + 1])


def test_every_declared_boundary_is_bracketed_by_adjacent_releases_in_the_grid():
    """Each patch's last affected release and the release right after it are both grid rows, and so are the first
    affected release and the one before it when a later release introduced the defect, and the oldest release with
    Gemma 3n: so the evidence of the grid decides each range exactly."""
    releases = transformers_releases()
    assert releases[0] == "4.53.0" and "5.23.0" in releases
    grid = {row["transformers"] for row in tagged("grid")}
    assert releases[0] in grid
    for patch in (p for p in REGISTRY if p.is_transformers_patch):
        edges = [boundary(releases, patch.needed_by)]
        first = next(v for v in releases if patch.needed_by(v))
        if first != releases[0]:  # a defect a later release introduced: where it starts is a boundary too
            edges.append((releases[releases.index(first) - 1], first))
        for edge in filter(None, edges):
            assert set(edge) <= grid, f"{patch.id}: the boundary {edge[0]} | {edge[1]} is not bracketed by grid rows"


def test_the_boundary_check_can_fail():
    releases = transformers_releases()
    assert boundary(releases, lambda v: Version(v) < Version("5.6.1")) == ("5.6.0", "5.6.1")  # 5.6.1: no row
    assert "5.6.1" not in {row["transformers"] for row in tagged("grid")}


def test_ci_fan_out_has_one_job_per_grid_row():
    out = subprocess.run([sys.executable, str(ROOT / "matrix" / "fanout.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = json.loads(out.stdout)["include"]
    assert [job["id"] for job in jobs] == [row["id"] for row in tagged("grid")]
    assert all(job["session"] == f"matrix({job['id']})" for job in jobs)
    workflow = (ROOT / ".github" / "workflows" / "matrix.yml").read_text()
    assert "matrix/fanout.py" in workflow and 'nox -s "${{ matrix.session }}"' in workflow


def test_registry_ranges_agree_with_the_committed_evidence():
    found = evidence(load_rows())
    assert found, "matrix/results/ holds no cell result yet: run `nox -s matrix`"
    problems = disagreements(found) + kv_disagreements(found)
    assert not problems, "\n".join(problems)


def _kv_result(transformers: str, export: dict) -> tuple[dict, dict]:
    row = {"id": f"tf{transformers}", "transformers": transformers}
    return row, {"patches": [{"id": "x"}], "exports": [{"name": "kv-portable", "backend": "portable", **export}]}


def test_kv_evidence_and_disagreements():
    """A KV-cache export is declared to work on every release: a refusal or a failure is a disagreement."""
    refused = _kv_result("5.0.0rc1", {"ok": False, "refused": "needs the plugin's recipe-sliding-cache patch"})
    works = _kv_result("5.23.0", {"ok": True, "validation": {}})
    export_fails = _kv_result("5.5.1", {"ok": False, "error": "boom"})
    assert not kv_disagreements([works])
    problems = kv_disagreements([refused, works, export_fails])
    assert len(problems) == 2 and "5.0.0rc1" in problems[0] and "recipe-sliding-cache" in problems[0]
    assert "5.5.1" in problems[1] and "boom" in problems[1]
    text = kv_verdict([refused, works, export_fails])
    assert "refused on 5.0.0rc1" in text and "validated on 5.23.0" in text and "FAILED on 5.5.1" in text


def test_matrix_readme_is_generated_from_the_results():
    assert (ROOT / "matrix" / "README.md").read_text() == markdown(load_rows()), "run `nox -s matrix_report`"


def test_the_next_row_reports_a_drop_candidate_and_is_never_evidence():
    """A "next" result whose reproducer no longer shows a bug on upstream code names the release it installed;
    it never counts toward (or against) the declared ranges, and it is never current."""
    from matrix import grid
    from matrix.report import next_lines

    (row,) = [r for r in load_rows() if r["transformers"] == "next"]
    assert not grid.is_current(row) and grid.install_flags(row) == ["--pre"] and "transformers" in grid.pins(row)
    result = {"versions": {"transformers": "5.30.0.dev0"}, "cell": {"ran_at": "2026-12-01T00:00:00"}, "patches": [
        {"id": "gaussian-topk", "state": "applied", "verdict": "fixed", "upstream": {"bug": False}},
        {"id": "altup-clamp", "state": "not-needed", "verdict": "not-needed", "upstream": {"bug": False}},
    ]}  # fmt: skip
    original = grid.load_result
    try:
        import matrix.report as report

        report.load_result = lambda r: result if r is row else original(r)
        text = "\n".join(next_lines([row]))
        assert "gaussian-topk**: fixed upstream in 5.30.0.dev0: drop candidate" in text
        assert "altup-clamp**: not needed on 5.30.0.dev0" in text
        assert row not in [r for r, _ in evidence([row])]
    finally:
        report.load_result = original


def test_inputs_hash_reads_code_not_docstrings_or_comments(tmp_path):
    from matrix.grid import inputs_hash

    (tmp_path / "gemma3n_export_fixes").mkdir()
    (tmp_path / "activation").mkdir()
    (tmp_path / "activation" / "x.pth").write_text("import x\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    module = tmp_path / "gemma3n_export_fixes" / "m.py"
    row = load_rows()[0]

    def hashed(source: str) -> str:
        module.write_text(source)
        return inputs_hash(row, tmp_path)

    base = hashed('"""Doc."""\n\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    assert hashed('"""Reworded."""\n# a comment\ndef f(x):\n    """Other."""\n    return (x + 1)\n') == base
    assert hashed('"""Doc."""\n\n\ndef f(x):\n    """Doc."""\n    return x + 2\n') != base
    assert hashed('"""Doc."""\n\n\ndef f(x):\n    return "x + 1"\n') != base  # a string that is not a docstring
    module.write_text("def f(x):\n    return x + 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    assert inputs_hash(row, tmp_path) != base
    assert inputs_hash({**row, "transformers": "0.0.1"}, tmp_path) != inputs_hash(row, tmp_path)


def test_a_row_runs_what_it_varies():
    """A row that varies transformers only runs the float programs; a toolchain row (another torch, torchao or
    ExecuTorch), the default row and the seed row the quantized one too; a row's own ``cell`` key wins."""
    from matrix.grid import cell_exports, cell_kind

    rows = load_rows()
    by_id = {row["id"]: row for row in rows}
    assert cell_kind(by_id["tf4.53.0-et1.5.1"], rows) == "model"
    assert "kv-8da4w-4w" not in cell_exports(by_id["tf4.53.0-et1.5.1"], rows)
    for row_id in ("tf5.23.0-et1.5.1", "tf5.6.0-et1.4.1", "seed-tf5.0.0rc1-et1.0.1"):
        assert cell_kind(by_id[row_id], rows) == "toolchain", row_id
        assert "kv-8da4w-4w" in cell_exports(by_id[row_id], rows)
    assert cell_kind({**by_id["tf4.53.0-et1.5.1"], "cell": "toolchain"}, rows) == "toolchain"
    for row in rows:  # every kind's exports are check's own names
        from gemma3n_export_fixes.cli.check import select_exports

        assert tuple(cell_exports(row, rows)) == select_exports(",".join(cell_exports(row, rows)))


def _tree(root) -> None:
    """A copy of the files a cell's inputs hash reads (the package, its build and activation files)."""
    import shutil

    shutil.copytree(ROOT / "gemma3n_export_fixes", root / "gemma3n_export_fixes",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copytree(ROOT / "activation", root / "activation")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")


def test_a_package_change_stales_every_grid_row(tmp_path):
    """What CI's first step refuses: a change to the package's code leaves every grid row's result not current
    (named), while a copy of the same sources leaves exactly the rows the checkout has stale."""
    from matrix.grid import stale_rows

    _tree(tmp_path)
    assert stale_rows(root=tmp_path) == stale_rows()
    module = tmp_path / "gemma3n_export_fixes" / "cli" / "check.py"
    module.write_text(module.read_text() + "\nCHANGED = True\n")
    assert stale_rows(root=tmp_path) == [row["id"] for row in tagged("grid")]


def test_the_matrix_gate_fails_naming_the_stale_rows(tmp_path):
    """``nox -s matrix_current`` on a checkout whose package changed: a non-zero exit naming the rows."""
    import shutil

    for name in ("noxfile.py", "matrix"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, tmp_path / name)
    _tree(tmp_path)
    module = tmp_path / "gemma3n_export_fixes" / "export" / "options.py"
    module.write_text(module.read_text() + "\nCHANGED = True\n")
    out = subprocess.run([sys.executable, "-m", "nox", "-s", "matrix_current"], cwd=tmp_path, capture_output=True,
                         text=True)  # fmt: skip
    if out.returncode != 0 and "No module named nox" in out.stderr:
        import pytest

        pytest.skip("nox is not installed in this interpreter")
    assert out.returncode != 0
    assert "tf5.23.0-et1.5.1" in out.stderr and "not current" in out.stderr and "nox -s matrix" in out.stderr


def test_a_rerun_reproduces_the_stored_claims_or_names_what_differs():
    from matrix.cell import reproduction_differences

    stored = json.loads((ROOT / "matrix" / "results" / "tf5.23.0-et1.5.1.json").read_text())
    again = json.loads(json.dumps(stored))
    for e in again["exports"]:
        e["seconds"] = {"lower": 1.0}  # what varies between runs is not a claim
        e.get("validation", {})["max_abs_diff"] = 1e-9
    assert reproduction_differences(stored, again) == []
    again["patches"][1]["verdict"] = "bug-not-fixed"
    again["exports"][0]["ok"] = False
    problems = reproduction_differences(stored, again)
    assert len(problems) == 2
    assert f"patch {again['patches'][1]['id']}" in problems[0] and "bug-not-fixed" in problems[0]
    assert f"export {again['exports'][0]['name']}" in problems[1] and "failed" in problems[1]
