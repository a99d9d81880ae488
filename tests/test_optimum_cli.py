"""optimum-cli as a client: ``optimum-cli export executorch`` on a tiny checkpoint, with the plugin installed.

What a user of Hugging Face's exporter runs, unchanged: the checkpoint saved with ``save_pretrained``, then
``optimum-cli export executorch --recipe xnnpack`` (float, and ``--qlinear 8da4w --qembedding 4w``). The
``.pte`` is run in the ExecuTorch runtime token by token past the sliding window and compared with eager
``generate`` on the same checkpoint (for the quantized program: the eager model quantized by optimum's own
``quantize_model_``, with the defaults the CLI uses). Without the plugin the export fails (gaussian-topk).

optimum-executorch is installed by nox next to the package on the default-stack tests row and in
``nox -s optimum_cli`` (both stacks: optimum-executorch's own transformers pin, and the default stack).
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import require_applied, run_python

try:
    OPTIMUM_EXECUTORCH = metadata.version("optimum-executorch")
except metadata.PackageNotFoundError:
    OPTIMUM_EXECUTORCH = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        OPTIMUM_EXECUTORCH is None,
        reason="optimum-executorch is not installed (nox installs it on the default-stack tests row and in "
        "`nox -s optimum_cli`)",
    ),
]

FLAGS = {
    "float": [],
    "8da4w-4w": ["--qlinear", "8da4w", "--qembedding", "4w"],
    "custom-sdpa": ["--use_custom_sdpa"],  # float, ExecuTorch's llama::custom_sdpa (the optimum-custom-sdpa patch)
}
MAX_SEQ_LEN = 32


def optimum_cli(checkpoint: Path, out: Path, flags: list[str], env: dict[str, str] | None = None):
    """``optimum-cli export executorch`` as a user runs it (the console script of this interpreter's venv)."""
    script = Path(sys.executable).parent / "optimum-cli"
    args = ["export", "executorch", "--model", str(checkpoint), "--task", "text-generation", "--recipe", "xnnpack",
            "--max_seq_len", str(MAX_SEQ_LEN), "--output_dir", str(out), *flags]  # fmt: skip
    return run_python([str(script), *args], env=env, timeout=1800)


@pytest.fixture(scope="module")
def optimum_export(tmp_path_factory, tiny_checkpoint):
    """``export(config)``: the .pte optimum-cli writes for ``config`` (each exported once per module)."""
    made: dict[str, Path] = {}

    def export(config: str) -> Path:
        if config not in made:
            out = tmp_path_factory.mktemp(f"optimum-{config}")
            result = optimum_cli(tiny_checkpoint, out, FLAGS[config])
            assert result.returncode == 0 and (out / "model.pte").is_file(), (
                result.stdout[-3000:] + result.stderr[-3000:]
            )
            made[config] = out / "model.pte"
        return made[config]

    return export


@pytest.mark.parametrize("config", sorted(FLAGS))
def test_program_decodes_like_eager_past_the_sliding_window(config, optimum_export, tiny_checkpoint):
    import transformers
    from optimum.exporters.executorch.quantization import quantize_model_

    from gemma3n_export_fixes.models.sources import load_model
    from gemma3n_export_fixes.runtime.loading import load_program
    from gemma3n_export_fixes.runtime.validation import validate_kv

    if config == "custom-sdpa":
        require_applied("optimum-custom-sdpa")
    pte = optimum_export(config)
    reference = load_model(str(tiny_checkpoint))
    if config == "8da4w-4w":  # the CLI's defaults: linears group 32, embeddings per row
        quantize_model_(reference.model, qlinear_config="8da4w", qembedding_config="4w")
    kind = "quantized" if config == "8da4w-4w" else "float32"
    result = validate_kv(load_program(pte), reference, kind=kind)
    window = result.sliding_window
    print(
        f"optimum-cli {config} (optimum-executorch {OPTIMUM_EXECUTORCH}, transformers {transformers.__version__}): "
        f"{result.prompt_len}-token prompt + "
        f"{result.new_tokens} tokens, window {window}: max abs diff {result.max_abs_diff:.3g}, teacher-forced top-1 "
        f"{result.top1_agreement:.0%}, greedy tokens {'identical' if result.tokens_match else 'differ'}"
    )
    assert window and result.prompt_len + result.new_tokens > 2 * window  # decoded well past the window
    assert result.ok, result.to_dict()
    if kind == "float32":
        assert result.tokens_match and result.top1_agreement == 1.0
        assert result.max_abs_diff < 1e-3


def test_our_validate_reads_optimum_programs(optimum_export, tiny_checkpoint):
    """``gemma3n-export-fixes validate`` on optimum's float program (no export record: ``--model`` says which)."""
    pte = optimum_export("float")
    result = run_python(["-m", "gemma3n_export_fixes.cli", "validate", str(pte), "--model", str(tiny_checkpoint)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": OK: " in result.stdout and "greedy tokens identical" in result.stdout


def test_export_fails_without_the_plugin(tmp_path, tiny_checkpoint, gemma3n_module):
    """The plugin is what makes optimum-cli work: with it off, the export dies in ``_gaussian_topk``."""
    require_applied("gaussian-topk")
    result = optimum_cli(tiny_checkpoint, tmp_path, [], env={"GEMMA3N_EXPORT_FIXES": "0"})
    output = result.stdout + result.stderr
    assert result.returncode != 0 and not (tmp_path / "model.pte").exists(), output[-3000:]
    assert "_gaussian_topk" in output or "torch.distributions" in output, output[-3000:]


def test_custom_kv_cache_fails_at_export_with_the_reason(tmp_path, tiny_checkpoint, gemma3n_module):
    """``--use_custom_kv_cache`` cannot export Gemma 3n: refused in one line where optimum's cache module imports
    (the optimum-custom-kv-cache patch), optimum's own ImportError where it does not; never a program."""
    import gemma3n_export_fixes as gx
    from gemma3n_export_fixes.plugin.patches.optimum_custom_kv_cache import REFUSAL

    (status,) = gx.status(["optimum-custom-kv-cache"])
    result = optimum_cli(tiny_checkpoint, tmp_path, ["--use_custom_sdpa", "--use_custom_kv_cache"])
    output = result.stdout + result.stderr
    assert result.returncode != 0 and not (tmp_path / "model.pte").exists(), output[-3000:]
    if status.applied:
        assert REFUSAL in output, output[-3000:]
    else:
        assert "does not import here" in status.reason, status
        assert "cannot import name 'HybridCache'" in output, output[-3000:]
