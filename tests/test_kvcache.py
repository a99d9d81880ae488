"""KV-cache programs: export, token-by-token validation against eager ``generate``, greedy ``generate``.

The programs come from one ``check --keep`` run (``check_run``), on every release: before ``KV_CACHE_SINCE``
through the recipe patches (whose reproducers ``tests/test_reproducers.py`` runs).
"""

from __future__ import annotations

import json

import pytest
from test_commands import CLI, one_line_error

from conftest import one_char_tokenizer, require_check_export, require_kv_cache, run_python


def test_kv_support_is_declared_on_every_release_with_gemma3n():
    """The upstream recipe is right from 5.5.1; every older release with Gemma 3n is in the recipe patch's range."""
    from packaging.version import Version

    from gemma3n_export_fixes.export.kvcache import KV_CACHE_SINCE, RECIPE_PATCHES
    from gemma3n_export_fixes.plugin.patches import by_id
    from matrix.grid import transformers_releases

    assert KV_CACHE_SINCE == "5.5.1"  # 5.4.0 - 5.5.0 size the sliding layers' replacement to the window
    cache, mask = (by_id(i) for i in RECIPE_PATCHES)
    for release in transformers_releases():
        assert cache.needed_by(release) is (Version(release) < Version(KV_CACHE_SINCE)), release
        assert mask.needed_by(release) is (Version(release) < Version("5.0.0rc0")), release


def test_kv_cache_refused_without_the_recipe_patch(tmp_path, gemma3n_module):
    """With the cache patch disabled on a release that needs it: one line naming the patch, exit 1, no file."""
    import transformers

    from gemma3n_export_fixes.plugin.patches import by_id

    if not by_id("recipe-sliding-cache").needed_by(transformers.__version__):
        pytest.skip(f"transformers {transformers.__version__}'s recipe is right as released (no patch to disable)")
    out = tmp_path / "kv.pte"
    args = [*CLI, "export", "--model", "tiny", "--recipe", "portable", "--out", str(out)]  # a KV cache: the default
    result = run_python(args, env={"GEMMA3N_EXPORT_FIXES_DISABLE": "recipe-sliding-cache"})
    one_line_error(result, "needs the plugin's recipe-sliding-cache patch", "--fixed-window")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def kv_programs(check_run):
    require_kv_cache()
    result, _, keep = check_run
    assert result.returncode == 0, result.stdout[-3000:]
    return keep


@pytest.mark.slow
def test_float_kv_program_matches_eager_generate_token_by_token(kv_programs):
    pte = kv_programs / "tiny-kv-portable.pte"
    record = json.loads(pte.with_suffix(".json").read_text())
    assert record["program"] == "kv-cache" and record["options"]["max_seq_len"] == 32
    assert record["peak_rss_mb"] > 0
    result = run_python([*CLI, "validate", str(pte), "--json"])
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    v = json.loads(result.stdout)
    assert v["program"] == "kv-cache" and v["kind"] == "float32"
    assert v["tokens_match"] and v["program_tokens"] == v["eager_tokens"]
    assert v["new_tokens"] >= 2 * v["sliding_window"]
    assert v["max_abs_diff"] <= 1e-3 and v["top1_agreement"] == 1.0
    capped = run_python([*CLI, "validate", str(pte), "--json", "--max-new-tokens", "3"])  # what runs at size
    assert capped.returncode == 0, capped.stdout + capped.stderr[-2000:]
    c = json.loads(capped.stdout)
    assert c["new_tokens"] == 3 and c["eager_tokens"] == v["eager_tokens"][:3] and c["tokens_match"]
    one_line_error(run_python([*CLI, "validate", str(pte), "--max-new-tokens", "0"]), "--max-new-tokens 0")


@pytest.mark.slow
def test_quantized_kv_program_matches_the_quantized_eager_model(kv_programs):
    require_check_export("kv-8da4w-4w")
    pte = kv_programs / "tiny-kv-8da4w-4w.pte"
    result = run_python([*CLI, "validate", str(pte), "--json"])
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    v = json.loads(result.stdout)
    assert v["kind"] == "quantized" and v["max_abs_diff"] <= v["tolerance"]
    assert v["min_top1"] == 0.0 and 0.0 <= v["top1_agreement"] <= 1.0  # reported; flips are near-ties (validation.py)
    # the quantization error itself is reported against the float model
    assert v["float_max_abs_diff"] is not None and v["float_max_abs_diff"] > 0.0
    assert 0.0 <= v["float_top1_agreement"] <= 1.0


@pytest.mark.slow
def test_generate_from_token_ids_equals_eager_greedy(kv_programs, gemma3n_module):
    import torch

    from gemma3n_export_fixes.models.tiny import build_tiny_model

    prompt = [5, 17, 42, 99]
    result = run_python([*CLI, "generate", str(kv_programs / "tiny-kv-portable.pte"), "--ids", "5, 17 42,99",
                         "--max-new-tokens", "24", "--json"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    with torch.no_grad():
        # eager stops at the generation config's EOS ids too, as ours does (the program's get_eos_ids)
        eager = build_tiny_model().generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    assert out["prompt_ids"] == prompt
    assert out["new_ids"] == eager[0, len(prompt) :].tolist()  # 24 tokens: three sliding windows past the prompt
    assert not out["stopped_at_eos"]
    assert out["text"] is None and out["tokenizer"] is None
    # prefill and decode are timed apart: one prefill of the prompt, then one step per further token
    assert out["prefill_ms"] > 0 and out["decode_ms_per_token"] > 0 and out["decode_steps"] == 24 - 1
    plain = run_python([*CLI, "generate", str(kv_programs / "tiny-kv-portable.pte"), "--ids", "5,17,42,99",
                        "--max-new-tokens", "3", "--threads", "1"])  # fmt: skip
    assert plain.returncode == 0 and plain.stdout.split() == [str(t) for t in out["new_ids"][:3]]
    assert "; 1 runtime thread" in plain.stderr and 1 <= out["threads"] <= 64  # the pool size is reported


@pytest.mark.slow
@pytest.mark.parametrize(
    ("program", "args", "fragment"),
    [
        ("tiny-portable.pte", ["--ids", "1,2"], "a fixed-window program"),
        ("tiny-kv-portable.pte", ["--prompt", "hello"], "--prompt needs a tokenizer"),
        ("tiny-kv-portable.pte", ["--ids", "1,2", "--max-new-tokens", "40"], "exceed the program's cache of 32"),
        ("tiny-kv-portable.pte", ["--ids", "1,999"], "outside the program's vocabulary of 256"),
        ("tiny-kv-portable.pte", ["--ids", "1,x"], "--ids must be non-negative integers"),
        ("tiny-kv-portable.pte", ["--ids", "1", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        ("tiny-kv-portable.pte", ["--ids", "1", "--threads", "0"], "--threads must be at least 1"),
    ],
    ids=["fixed-window", "no-tokenizer", "too-long", "vocab", "bad-ids", "zero-tokens", "zero-threads"],
)
def test_generate_bad_input(kv_programs, program, args, fragment):
    one_line_error(run_python([*CLI, "generate", str(kv_programs / program), *args]), fragment)


@pytest.mark.slow
def test_generate_with_a_tokenizer_directory(kv_programs, tmp_path):
    """Text in, text out: a small local tokenizer (built here, nothing downloaded) whose ids fit the vocab."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i:03d}": i for i in range(256)}  # fixed width: no word contains a special token
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t000"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t000", eos_token="t001").save_pretrained(tmp_path)
    result = run_python([*CLI, "generate", str(kv_programs / "tiny-kv-portable.pte"), "--prompt", "t005 t017 t042",
                         "--tokenizer", str(tmp_path), "--max-new-tokens", "6", "--json"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["prompt_ids"] == [5, 17, 42] and 1 <= len(out["new_ids"]) <= 6
    assert out["text"].split() == [f"t{i:03d}" for i in out["new_ids"] if i not in (0, 1)]


@pytest.mark.slow
def test_programs_carry_the_llm_runner_metadata(kv_programs, gemma3n_module):
    """What ExecuTorch's LLM runner reads: the stop ids (every one of the generation config's), BOS, no custom
    SDPA; our ``generate`` stops at the same ids."""
    from executorch.runtime import Runtime

    from gemma3n_export_fixes.models.sources import special_token_ids
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    bos, eos = special_token_ids(build_tiny_model())
    program = Runtime.get().load_program(str(kv_programs / "tiny-kv-portable.pte"))
    meta = {m: program.load_method(m).execute([]) for m in ("get_eos_ids", "get_bos_id", "use_sdpa_with_kv_cache")}
    assert list(meta["get_eos_ids"]) == eos and eos and list(meta["get_bos_id"]) == [bos]
    assert list(meta["use_sdpa_with_kv_cache"]) == [False]
    result = run_python([*CLI, "generate", str(kv_programs / "tiny-kv-portable.pte"), "--ids", "5,17,42",
                         "--max-new-tokens", "4", "--json"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["eos_ids"] == sorted(eos)


@pytest.mark.slow
@pytest.mark.parametrize("program", ["tiny-kv-portable.pte", "tiny-kv-8da4w-4w.pte"])
def test_executorch_llm_runner_generates_what_our_generate_does(kv_programs, tmp_path, program):
    """ExecuTorch's C++ ``TextLLMRunner`` (the runner of its Android/iOS apps), greedy, on our program: the same
    tokens as ``generate``. The 8da4w + 4w program needs ExecuTorch's quantized kernels loaded in the process."""
    require_check_export(program.removeprefix("tiny-").removesuffix(".pte"))
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from gemma3n_export_fixes.pte import load_quantized_kernels

    load_quantized_kernels()  # embedding_4bit etc. for the quantized program

    chars = one_char_tokenizer(tmp_path)
    prompt, new = [5, 17, 42], 12
    ours = run_python([*CLI, "generate", str(kv_programs / program), "--ids", ",".join(map(str, prompt)),
                       "--max-new-tokens", str(new), "--json"])  # fmt: skip
    assert ours.returncode == 0, ours.stderr[-2000:]
    expected = json.loads(ours.stdout)["new_ids"]
    runner = TextLLMRunner(str(kv_programs / program), str(tmp_path / "tokenizer.json"))
    pieces: list[str] = []
    config = GenerationConfig(max_new_tokens=new, temperature=0.0, echo=False, num_bos=0, num_eos=0)
    runner.generate("".join(chars[i] for i in prompt), config, token_callback=pieces.append)
    assert [chars.index(p) for p in pieces] == expected
