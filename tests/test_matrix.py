"""The grid and its evidence: well-formed rows, the CI fan-out, and the registry agreeing with results."""

from __future__ import annotations

import json
import subprocess
import sys

from packaging.version import Version

from gemma3n_export_fixes.plugin.patches import REGISTRY
from matrix.grid import ROOT, load_rows, tagged
from matrix.report import disagreements, evidence, kv_disagreements, markdown


def test_grid_rows_are_explicit_and_the_default_stack_is_one_of_them():
    rows = load_rows()
    (default,) = tagged("default-stack", rows)
    assert (default["torch"], default["transformers"], default["executorch"], default["torchao"]) == (
        "2.13.0", "5.23.0", "1.5.1", "0.18.0",
    )  # fmt: skip
    for row in rows:
        if "heavy" in row["tags"]:
            assert row["torch"] != "2.13.0" and "grid" not in row["tags"], row["id"]
        else:
            assert row["id"] == f"tf{row['transformers']}-et{row['executorch']}"
            assert row["torch"] == "2.13.0" and "grid" in row["tags"]
    assert 2 <= len(tagged("smoke", rows)) <= 3
    assert {"5.23.0", "4.57.6"} <= {row["transformers"] for row in tagged("ci", rows)}
    assert tagged("seed", rows)[0]["transformers"] == "5.0.0rc1"


def test_every_declared_boundary_is_bracketed_by_grid_rows():
    releases = sorted({Version(row["transformers"]) for row in tagged("grid")})
    for patch in REGISTRY:
        needed = [v for v in releases if patch.needed_by(str(v))]
        assert needed and needed[0] == releases[0], patch.id  # the oldest release with Gemma 3n is in
        later = [v for v in releases if v > needed[-1]]
        if later:  # the last affected and the first fixed release are both rows
            assert all(not patch.needed_by(str(v)) for v in later), patch.id


def test_the_kv_cache_boundary_is_bracketed_by_adjacent_releases():
    from gemma3n_export_fixes.export.kvcache import KV_CACHE_SINCE

    releases = {row["transformers"] for row in tagged("grid")}
    assert KV_CACHE_SINCE in releases and "5.5.0" in releases  # the last release before it


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


def test_matrix_readme_is_generated_from_the_results():
    assert (ROOT / "matrix" / "README.md").read_text() == markdown(load_rows()), "run `nox -s matrix_report`"
