"""``gemma3n-export-fixes status``: the table, the JSON record, usage errors."""

from __future__ import annotations

import json

import gemma3n_export_fixes as gx
from conftest import run_python
from gemma3n_export_fixes.plugin.patches import REGISTRY


def test_status_json_matches_the_in_process_status(gemma3n_module):
    result = run_python(["-m", "gemma3n_export_fixes.cli", "status", "--json"])
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout)
    assert set(record["versions"]) >= {"python", "torch", "transformers", "executorch", "torchao"}
    import transformers

    assert record["versions"]["transformers"].split("+")[0] == transformers.__version__.split("+")[0]
    assert record["activation"]["files"], "the installed package ships its .pth"
    states = {p["id"]: p["state"] for p in record["patches"]}
    from gemma3n_export_fixes.plugin import assess

    assess()  # what `status` does for the toolchain patches (ready / not-needed / ...)
    assert states == {s.id: s.state.value for s in gx.status()}
    assert {p["scope"] for p in record["patches"]} == {"import", "export"}
    assert all(p["distribution"] and p["needed_on"] and p["reason"] for p in record["patches"])
    assert states["gaussian-topk"] == "applied"


def test_status_table_names_every_patch_with_its_state(gemma3n_module):
    result = run_python(["-m", "gemma3n_export_fixes.cli", "status"])
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("stack: python ")
    for status in gx.status():
        (row,) = [line for line in lines if line.startswith(status.id + " ")]
        assert status.state.value in row.split()


def test_status_with_the_hook_turned_off_reports_pending(gemma3n_module):
    result = run_python(["-m", "gemma3n_export_fixes.cli", "status", "--json"], env={"GEMMA3N_EXPORT_FIXES": "0"})
    assert result.returncode == 0
    record = json.loads(result.stdout)
    assert record["activation"]["disabled_by_env"] is True
    states = {scope: {p["state"] for p in record["patches"] if p["scope"] == scope} for scope in ("import", "export")}
    assert states == {"import": {"pending"}, "export": {"disabled"}}  # an export would run on upstream's toolchain
    assert all("GEMMA3N_EXPORT_FIXES" in p["reason"] for p in record["patches"])


def test_help_explains_and_bad_usage_exits_2():
    help_text = run_python(["-m", "gemma3n_export_fixes.cli", "--help"])
    assert help_text.returncode == 0 and "GEMMA3N_EXPORT_FIXES=0" in help_text.stdout
    assert all(p.id for p in REGISTRY)
    bad = run_python(["-m", "gemma3n_export_fixes.cli", "frobnicate"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
