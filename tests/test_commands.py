"""The commands as users run them (subprocesses): export, validate, check; and every bad input."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from conftest import CHECK_EXPORTS, run_python

CLI = ["-m", "gemma3n_export_fixes.cli"]


def one_line_error(result, *fragments: str) -> None:
    """A user mistake: exit 1, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 1, (result.stdout[-1000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.startswith("gemma3n-export-fixes: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="session")
def portable_pte(tmp_path_factory, gemma3n_module):
    out = tmp_path_factory.mktemp("export") / "tiny.pte"
    result = run_python(
        [
            *CLI,
            "export",
            "--model",
            "tiny",
            "--fixed-window",
            "--recipe",
            "portable",
            "--qembedding",
            "none",
            "--out",
            str(out),
        ],
        env={"GEMMA3N_EXPORT_FIXES_DISABLE": "validate-once"},
    )  # a toolchain patch left out by name
    return result, out


@pytest.mark.slow
def test_export_writes_the_pte_and_its_record(portable_pte):
    import hashlib

    result, out = portable_pte
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout
    assert "export: torch.export(strict=False) ..." in result.stderr  # progress as it goes
    # only our own lines: library warnings and C++ log lines go to the log file
    assert all(line.startswith(("loading ", "loaded ", "  ")) for line in result.stderr.splitlines()), result.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["pte"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert record["pte"]["bytes"] == out.stat().st_size
    assert record["model"] == "tiny" and len(record["config_hash"]) == 16
    assert set(record["seconds"]) == {"quantize", "export", "lower", "to_executorch", "serialize"}
    assert {"torch", "transformers", "executorch", "torchao"} <= set(record["versions"])
    patches = {p["id"]: p for p in record["patches"]}  # both scopes, one list
    assert patches["gaussian-topk"]["state"] == "applied" and patches["gaussian-topk"]["scope"] == "import"
    assert patches["validate-once"]["state"] == "disabled" and patches["validate-once"]["scope"] == "export"
    assert patches["legalize-in-place"]["state"] == "applied", patches["legalize-in-place"]["reason"]
    assert not list(out.parent.glob("*.partial"))


@pytest.mark.slow
def test_validate_passes_for_the_exported_model(portable_pte):
    _, out = portable_pte
    result = run_python([*CLI, "validate", str(out), "--json"])
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout)
    assert record["ok"] and record["finite"] and record["top1_agreement"] == 1.0
    assert record["max_abs_diff"] < 1e-4 and record["seq_len"] == 32


@pytest.mark.slow
def test_validate_fails_against_a_different_model(portable_pte, tmp_path, gemma3n_module):
    """Validation can fail: the same architecture with other weights is a different function."""
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    _, out = portable_pte
    other = tmp_path / "other-weights"
    build_tiny_model(seed=1).save_pretrained(other)
    result = run_python([*CLI, "validate", str(out), "--model", str(other)])
    assert result.returncode == 1
    assert "MISMATCH" in result.stdout


@pytest.mark.slow
def test_export_from_a_checkpoint_directory_with_int8_embeddings(tiny_checkpoint, tmp_path):
    """Given as a relative path; the record names it absolutely, so validate works from anywhere. Parameters
    are counted before quantization (quantized tables are buffers), with float and stored weight bytes."""
    from gemma3n_export_fixes.export.sizes import weight_bytes

    out = tmp_path / "ckpt.pte"
    relative = os.path.relpath(tiny_checkpoint, tmp_path)
    result = run_python(
        [*CLI, "export", "--model", relative, "--fixed-window", "--recipe", "portable", "--qembedding",
         "--out", "ckpt.pte"],  # a bare --qembedding means 8w
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert any("embeddings: int8 per row" in q for q in record["quantized"])
    assert record["options"]["qembedding"] == "8w" and record["peak_rss_mb"] > 0
    assert record["model"] == str(Path(tiny_checkpoint).resolve())
    # the checkpoint's tokenizer ships next to the program (ExecuTorch's LLM runner takes it as a file)
    shipped = out.with_suffix(".tokenizer.json")
    assert shipped.read_bytes() == (tiny_checkpoint / "tokenizer.json").read_bytes()
    assert record["tokenizer"] == str(shipped.resolve())
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    expected = weight_bytes("tiny", "float32", "none", "8w")
    built = sum(p.numel() for p in build_tiny_model().parameters())  # per release: 5.x drops shared layers' K/V
    assert record["parameters"] == expected["parameters"] == built
    assert record["weight_bytes"] == {"float": expected["float_bytes"], "stored": expected["bytes"]}
    assert record["weight_bytes"]["stored"] < record["weight_bytes"]["float"]
    checked = run_python([*CLI, "validate", str(out), "--json"], cwd=tiny_checkpoint)
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    validated = json.loads(checked.stdout)
    assert validated["kind"] == "quantized" and validated["top1_agreement"] >= 0.9
    assert validated["float_top1_agreement"] >= 0.9  # int8 rows of the tiny model: close to float


@pytest.mark.slow
def test_bfloat16_export_validates_against_the_bfloat16_eager_model(tmp_path, gemma3n_module):
    out = tmp_path / "bf16.pte"
    result = run_python([*CLI, "export", "--model", "tiny", "--fixed-window", "--dtype", "bfloat16", "--recipe",
                         "portable", "--qembedding", "none", "--out", str(out)])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    checked = run_python([*CLI, "validate", str(out), "--json"])
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    record = json.loads(checked.stdout)
    assert record["kind"] == "bfloat16" and record["top1_agreement"] >= 0.9


def run_cli_without(module: str, args: list[str]):
    """The CLI in a process where ``module`` cannot be imported, as if it were not installed."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from gemma3n_export_fixes.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    return run_python(["-c", code])


def test_export_int8_without_torchao_says_so(tmp_path):
    args = ["export", "--model", "tiny", "--fixed-window", "--recipe", "portable", "--qlinear", "8w", "--out",
            str(tmp_path / "x.pte")]  # fmt: skip
    one_line_error(run_cli_without("torchao", args), "torchao is not installed")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_check_runs_reproducers_exports_and_writes_its_record(check_run):
    import gemma3n_export_fixes as gx
    from conftest import kv_supported

    result, record, keep = check_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "check: OK" in result.stdout
    assert record["ok"]
    applied = {s.id for s in gx.status() if s.applied}
    for row in record["patches"]:
        if row.get("scope") == "export":  # no reproducer: judged by its state here, the exports are its evidence
            assert row["upstream"] is None and row["verdict"] in ("applies", "not-needed"), row
            continue
        assert row["verdict"] == ("fixed" if row["id"] in applied else "not-needed")
        assert row["upstream"]["bug"] is (row["id"] in applied)
        assert row["patched"]["bug"] is False
    exports = {e["name"]: e for e in record["exports"]}
    assert list(exports) == CHECK_EXPORTS == record["exports_selected"]
    for name in ("portable", "xnnpack"):
        assert exports[name]["ok"] and exports[name]["validation"]["top1_agreement"] == 1.0
        assert (keep / f"tiny-{name}.pte").is_file()
    assert kv_supported()  # on every release: the recipe patches apply where the recipe needs them
    for name in (n for n in ("kv-portable", "kv-8da4w-4w") if n in exports):
        v = exports[name]["validation"]
        assert exports[name]["ok"] and v["max_abs_diff"] <= v["tolerance"] and v["top1_agreement"] >= v["min_top1"]
        assert (keep / f"tiny-{name}.pte").is_file()


def test_check_verdicts():
    from gemma3n_export_fixes.cli.check import verdict

    assert verdict("applied", True, False) == "fixed"
    assert verdict("applied", True, True) == "bug-not-fixed"
    assert verdict("applied", False, False) == "stale"
    assert verdict("not-needed", False, False) == "not-needed"
    assert verdict("not-needed", True, True) == "range-wrong"
    assert verdict("skipped-drift", True, True) == "bug-skipped-drift"


# -- bad input: one line, exit 1, no traceback, no output file -------------------------------------


def test_validate_missing_file(tmp_path):
    one_line_error(run_python([*CLI, "validate", str(tmp_path / "nope.pte")]), "no such file")


def test_validate_corrupt_file(tmp_path):
    bad = tmp_path / "corrupt.pte"
    bad.write_bytes(os.urandom(4096))
    one_line_error(run_python([*CLI, "validate", str(bad), "--model", "tiny"]), "not an ExecuTorch program")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "missing", "no such directory"),
        (lambda d: d, "no config.json"),
        (lambda d: (d / "config.json").write_text('{"model_type": "llama"}') and d, "is not Gemma 3n"),
        (lambda d: (d / "config.json").write_text("{not json") and d, "unreadable"),
    ],
    ids=["missing", "no-config", "not-gemma3n", "corrupt-config"],
)
def test_export_rejects_a_directory_that_is_not_a_gemma3n_checkpoint(tmp_path, make, fragment):
    (tmp_path / "ckpt").mkdir()
    source = make(tmp_path / "ckpt")
    out = tmp_path / "out.pte"
    one_line_error(run_python([*CLI, "export", "--model", str(source), "--fixed-window", "--out", str(out)]), fragment)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_export_rejects_a_corrupt_checkpoint_in_one_line(tiny_checkpoint, tmp_path):
    """A checkpoint whose weights file is damaged (safetensors raises its own error type): one line, no file."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (weights,) = broken.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    out = tmp_path / "out.pte"
    one_line_error(
        run_python([*CLI, "export", "--model", str(broken), "--fixed-window", "--out", str(out)]),
        "cannot load the checkpoint",
    )
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_checkpoint_that_would_load_with_random_weights_is_refused(tiny_checkpoint, tmp_path):
    """A weight under another name (the name transformers 5.0.0rc1 is reported to write for the per-layer
    projection): from_pretrained would silently random-initialise the real one. Refused, one line, no file."""
    import shutil

    from safetensors.torch import load_file, save_file

    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_checkpoint, renamed)
    (weights,) = renamed.glob("*.safetensors")
    tensors = load_file(weights)
    # the file's name for it differs by release (4.57.6 writes per_layer_model.language_model_projection)
    (key,) = [k for k in tensors if "per_layer_model" in k and k.endswith("projection.weight")]
    tensors[key.replace("projection.weight", "projection_renamed.weight")] = tensors.pop(key)
    save_file(tensors, weights, metadata={"format": "pt"})
    out = tmp_path / "out.pte"
    result = run_python([*CLI, "export", "--model", str(renamed), "--fixed-window", "--out", str(out)])
    one_line_error(
        result, "does not match this transformers' Gemma 3n", "missing (would be random)", "per_layer_model_projection"
    )
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--out", "x.txt"], "--out must name a .pte file"),
        (["--seq-len", "0", "--out", "x.pte"], "--seq-len must be at least 1"),
        (["--recipe", "xnnpack", "--qlinear", "8w", "--out", "x.pte"], "fails at execute"),
        (["--backend", "xnnpack", "--quant", "int8", "--out", "x.pte"], "fails at execute"),  # older spellings
        (["--recipe", "portable", "--qlinear", "8da4w", "--out", "x.pte"], "use --recipe xnnpack"),
        (["--qlinear", "4w", "--out", "x.pte"], "--qlinear 4w (weight-only int4 linears) is not offered"),
        (["--max_seq_len", "1", "--out", "x.pte"], "--max_seq_len must be at least 2"),
    ],
    ids=["not-pte", "seq-len", "8w-xnnpack", "int8-xnnpack", "8da4w-portable", "4w", "max-seq-len"],
)
def test_export_rejects_bad_options(tmp_path, args, fragment):
    one_line_error(run_python([*CLI, "export", "--model", "tiny", *args], cwd=tmp_path), fragment)
    assert not list(tmp_path.iterdir())


def test_export_without_executorch_says_so(tmp_path):
    args = ["export", "--model", "tiny", "--fixed-window", "--out", str(tmp_path / "x.pte")]
    one_line_error(run_cli_without("executorch", args), "executorch is not installed")
    assert not list(tmp_path.iterdir())


def test_transformers_without_gemma3n_is_unsupported(tmp_path):
    """transformers 4.52.4 (the last release without Gemma 3n): one line, exit 1."""
    wheel = os.environ.get("GEMMA3N_TEST_OLD_TRANSFORMERS_WHEEL")
    if not wheel:
        pytest.skip("GEMMA3N_TEST_OLD_TRANSFORMERS_WHEEL is not set (nox -s tests downloads transformers 4.52.4)")
    zipfile.ZipFile(wheel).extractall(tmp_path)
    result = run_python([*CLI, "status"], env={"PYTHONPATH": str(tmp_path)})
    one_line_error(result, "transformers 4.52.4 has no Gemma 3n")
    assert Path(wheel).name.startswith("transformers-4.52.4")


@pytest.mark.slow
def test_validate_truncated_file(portable_pte, tmp_path):
    _, out = portable_pte
    truncated = tmp_path / "truncated.pte"
    truncated.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    one_line_error(run_python([*CLI, "validate", str(truncated), "--model", "tiny"]), "truncated")


def test_the_operator_table_is_the_flatbuffer_the_extended_header_sizes(portable_pte):
    """What ``load_program`` reads for the kernels a program calls: the flatbuffer, sized by the ``eh00`` header."""
    from gemma3n_export_fixes.pte import extended_header, operator_table

    _, out = portable_pte
    extended = extended_header(out.read_bytes()[:40])
    assert extended is not None and 0 < extended[0] < out.stat().st_size
    table = operator_table(out)
    assert len(table) == extended[0] and b"aten::" in table
    with pytest.raises(ValueError, match="truncated"):
        extended_header(out.read_bytes()[:39])  # ends inside the header


def test_the_extended_header_is_read_by_its_length(tmp_path):
    """The 24-byte form (no segment size: 0) leaves the flatbuffer bytes after it alone; a file that ends inside the
    header, or whose header is malformed, is refused in one line before the runtime sees it."""
    from gemma3n_export_fixes.errors import UserError
    from gemma3n_export_fixes.pte import check_pte_header, extended_header

    def head(length: int, *fields: int) -> bytes:
        return b"\x1c\0\0\0ET12eh00" + length.to_bytes(4, "little") + b"".join(f.to_bytes(8, "little") for f in fields)

    flatbuffer = (1 << 62).to_bytes(8, "little")  # bytes 32-40 of a 24-byte-header program: not a segment size
    assert extended_header(head(24, 100, 64) + flatbuffer) == (100, 64, 0)
    assert extended_header(head(32, 100, 64, 36)) == (100, 64, 36)
    assert extended_header(b"\x1c\0\0\0ET12" + bytes(32)) is None
    older = tmp_path / "older.pte"
    older.write_bytes(head(24, 40, 0) + flatbuffer)
    check_pte_header(older)  # the 24-byte form: accepted
    for name, data, reason in (
        ("cut.pte", head(32, 100, 64), "truncated"),  # ends at byte 32, the header says 40
        ("short.pte", head(32)[:14], "truncated"),
        ("malformed.pte", head(8, 100, 64, 0), "malformed"),
    ):
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(UserError, match=reason) as refused:
            check_pte_header(bad)
        assert "\n" not in str(refused.value)


def test_a_checkpoint_with_the_older_releases_name_for_the_per_layer_projection_loads_its_weight(
    tiny_checkpoint, tmp_path
):
    """transformers 4.57.6 writes the per-layer projection as ``...per_layer_model.language_model_projection``
    (reproduced: the tiny checkpoint saved on 4.57.6 has that key); 5.x reads such a file with the weight
    missing. The loader takes it from the file under the old name: the real weight, not random init."""
    import shutil

    from safetensors.torch import load_file, save_file

    from gemma3n_export_fixes.models.sources import load_model
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    old = tmp_path / "old-name"
    shutil.copytree(tiny_checkpoint, old)
    (weights,) = old.glob("*.safetensors")
    tensors = load_file(weights)
    (key,) = [k for k in tensors if "per_layer_model" in k and k.endswith("projection.weight")]
    tensors["model.language_model.per_layer_model.language_model_projection.weight"] = tensors.pop(key)
    save_file(tensors, weights, metadata={"format": "pt"})
    loaded = load_model(str(old))
    expected = build_tiny_model().model.per_layer_model_projection.weight
    assert torch_equal(loaded.model.model.per_layer_model_projection.weight, expected)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.detach(), b.detach()))


@pytest.mark.parametrize("names", ["kv-8da4w", "portable,,nope", ","])
def test_check_rejects_unknown_exports(tmp_path, names):
    """``check --exports`` names check's own exports only: anything else is one line before any work."""
    one_line_error(run_python([*CLI, "check", "--exports", names], cwd=tmp_path), "choose from portable, xnnpack")
    assert not list(tmp_path.iterdir())


def test_check_groups_its_exports_longest_alone():
    from gemma3n_export_fixes.cli.check import export_groups, select_exports

    assert export_groups(list(select_exports(None))) == [["kv-8da4w-4w"], ["xnnpack", "kv-portable", "portable"]]
    assert export_groups(["portable", "kv-portable"]) == [["kv-portable", "portable"]]
    assert select_exports("kv-portable, portable") == ("portable", "kv-portable")
