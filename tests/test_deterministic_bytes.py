"""A program is a function of its inputs: two ``export`` processes with different hash seeds write the same bytes.

transformers 5.6.0 and newer compute the rotary embeddings in the iteration order of a set of strings, which
follows ``PYTHONHASHSEED`` (the ``rotary-order`` patch fixes it). The two seeds are chosen so that this
interpreter iterates the tiny model's layer types in different orders: without the fix the programs differ.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import require_kv_cache, run_python

TINY = ["--model", "tiny", "--recipe", "portable", "--qlinear", "none", "--qembedding", "none"]
PROGRAMS = {
    "fixed-window": ["--fixed-window", "--seq-len", "8"],
    "kv-cache": ["--max_seq_len", "16"],
}


def set_order(seed: str) -> str:
    """How this interpreter iterates the tiny model's layer types as a set under ``PYTHONHASHSEED=seed``."""
    from gemma3n_export_fixes.models.tiny import tiny_text_config

    code = f"print(list(set({list(tiny_text_config().layer_types)!r})))"
    env = {"PYTHONHASHSEED": seed}
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env).stdout


def two_seeds() -> tuple[str, str]:
    """``0`` and the first seed that iterates the layer types in another order (asked of the interpreter)."""
    first = set_order("0")
    other = next(str(s) for s in range(1, 32) if set_order(str(s)) != first)
    return "0", other


def export(seed: str, flags: list[str], out: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """``export`` in a fresh process under ``PYTHONHASHSEED=seed`` (no lowered cache); the result and the sha256."""
    env = {"PYTHONHASHSEED": seed, "GEMMA3N_EXPORT_FIXES_LOWERED_CACHE": ""}
    ran = run_python(["-m", "gemma3n_export_fixes.cli", "export", *TINY, *flags, "--out", str(out)], env=env)
    return ran, hashlib.sha256(out.read_bytes()).hexdigest() if ran.returncode == 0 else ""


@pytest.mark.slow
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_two_processes_with_different_hash_seeds_write_the_same_program(gemma3n_module, tmp_path, program):
    if program == "kv-cache":
        require_kv_cache()
    seeds = two_seeds()
    assert set_order(seeds[0]) != set_order(seeds[1])  # the seeds that tell the defect apart
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda s: export(s, PROGRAMS[program], tmp_path / f"seed{s}.pte"), seeds))
    for seed, (ran, _) in zip(seeds, runs, strict=True):
        assert ran.returncode == 0, f"PYTHONHASHSEED={seed}: {ran.stderr[-3000:]}"
    (_, first), (_, second) = runs
    assert first == second, f"PYTHONHASHSEED={seeds[0]} and {seeds[1]} wrote different {program} programs"
