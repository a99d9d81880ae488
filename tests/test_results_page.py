"""docs/RESULTS.md is what benchmarks/report.py generates from benchmarks/results/*.json (so it cannot go stale),
and every record says which command on which machine produced its figures."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import TESTS

REPO = TESTS.parent
RESULTS = REPO / "benchmarks" / "results"


def report():
    spec = importlib.util.spec_from_file_location("benchmarks_report", REPO / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_page_is_generated_from_the_records():
    module = report()
    assert (REPO / "docs" / "RESULTS.md").read_text() == module.render(module.load()), "run `nox -s results`"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.stem)
def test_every_record_names_its_command_machine_and_date(path):
    record = json.loads(path.read_text())
    assert isinstance(record, dict)
    for key in ("command", "machine", "date"):
        assert isinstance(record.get(key), str) and record[key].strip(), f"{path.name}: no {key}"


def test_a_record_without_command_or_machine_is_refused(tmp_path):
    (tmp_path / "bare.json").write_text(json.dumps({"title": "t", "date": "2026-01-01", "wall_s": 1.0}))
    with pytest.raises(ValueError, match="command, machine"):
        report().load(tmp_path)


def test_there_are_records():
    assert sorted(RESULTS.glob("*.json")), "benchmarks/results/ holds the measured figures"
