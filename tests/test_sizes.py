"""Weight bytes computed per tensor (``sizes``), checked against the seed card and against real .pte files."""

from __future__ import annotations

import json

import pytest
from test_commands import CLI

from conftest import CHECK_EXPORTS, require_kv_cache, run_python


def test_e2b_shape_sizes_match_the_seed_cards_figures(gemma3n_module):
    from gemma3n_export_fixes.export.sizes import weight_bytes

    bf16 = weight_bytes("e2b-shape", "bfloat16")
    # 4,435,182,688 on transformers 5.23.0; 4,456,156,768 on 4.57.6 (the seed card: 4.46B)
    assert bf16["parameters"] in (4_435_182_688, 4_456_156_768)
    assert bf16["bytes"] * 2 == weight_bytes("e2b-shape", "float32")["bytes"]
    # the seed card: 8.4 GB bf16 (ours: 8.26 GiB) and 7.0 GB int8 linears (ours: 7.01 GiB)
    assert abs(bf16["bytes"] / 2**30 - 8.4) < 0.2
    assert abs(weight_bytes("e2b-shape", "bfloat16", "8w")["bytes"] / 2**30 - 7.0) < 0.1
    # embeddings are 57% of the parameters: why int8 linears alone barely helped
    assert 0.55 < bf16["by_kind"]["embedding"] / bf16["bytes"] < 0.6


def test_quantization_orders_the_sizes(gemma3n_module):
    from gemma3n_export_fixes.export.sizes import weight_bytes

    def total(*options):
        return weight_bytes("e2b-shape", *options)["bytes"]

    assert total("float32", "8da4w", "4w") < total("float32", "8da4w", "8w") < total("float32", "8da8w", "8w")
    assert total("float32", "8da4w", "4w") < 0.2 * total("float32")
    # the tied lm_head is stored a second time once the embedding table is quantized
    embeddings_only = weight_bytes("e2b-shape", "bfloat16", "none", "8w")
    assert embeddings_only["by_kind"]["linear"] > weight_bytes("e2b-shape", "bfloat16")["by_kind"]["linear"]


def test_sizes_command(gemma3n_module):
    result = run_python([*CLI, "sizes", "--model", "e2b-shape", "--json"])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert {(r["dtype"], r["qlinear"], r["qembedding"]) for r in rows} >= {("float32", "8da4w", "4w")}
    bad = run_python([*CLI, "sizes", "--model", "/no/such/dir"])
    assert bad.returncode == 1 and "computed from the config" in bad.stderr


@pytest.mark.slow
def test_computed_bytes_track_the_measured_programs(check_run):
    """Measured .pte size = computed weight bytes + a program overhead that does not depend on the weights'
    format (graph, delegate headers: 0.25 - 0.5 MB for tiny). A wrong per-tensor rule (e.g. int4 stored one per
    byte) would move one program by hundreds of kB."""
    from gemma3n_export_fixes.export.sizes import weight_bytes

    result, record, _ = check_run
    assert result.returncode == 0
    exports = {e["name"]: e for e in record["exports"]}
    names = ["portable", "xnnpack"]
    try:
        require_kv_cache()
        names.append("kv-8da4w-4w")
    except pytest.skip.Exception:
        pass
    names = [name for name in names if name in CHECK_EXPORTS]  # what this row's check exported
    for name in names:
        options = exports[name]["options"]
        computed = weight_bytes("tiny", options["dtype"], options["qlinear"], options["qembedding"])["bytes"]
        overhead = exports[name]["pte_bytes"] - computed
        assert 0.2e6 < overhead < 0.5e6, (name, exports[name]["pte_bytes"], computed)
