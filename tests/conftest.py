"""Shared fixtures: the patched Gemma 3n module, the tiny model, and exported programs built once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import gemma3n_export_fixes as gx
from gemma3n_export_fixes.plugin.modules import TARGET_MODULE

TESTS = Path(__file__).parent
SCRIPTS = TESTS / "scripts"
# matrix/ (grid, results, report) is read by tests; appended so the installed package still wins.
sys.path.append(str(TESTS.parent))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (``nox -s tests`` runs ``-n auto --dist loadfile``: a file's tests share one worker, so a
    module-scoped fixture is built once): within each file, the tests that use ``check_run`` first, so the
    worker that takes test_commands.py starts ``check`` (~6 min) at once; the others wait for it there."""
    if not hasattr(config, "workerinput"):  # not an xdist worker (the workers' collection order is the one used)
        return
    files = {item.path: n for n, item in reversed(list(enumerate(items)))}
    items.sort(key=lambda item: (files[item.path], "check_run" not in getattr(item, "fixturenames", ())))


@pytest.fixture(scope="session")
def gemma3n_module():
    """transformers' Gemma 3n modelling module, with every patch this release needs applied."""
    import importlib

    module = importlib.import_module(TARGET_MODULE)
    gx.apply()
    return module


def applied(patch_id: str) -> bool:
    return any(s.id == patch_id and s.applied for s in gx.status())


def require_applied(patch_id: str) -> None:
    """Skip (with the reason) when this transformers release does not need ``patch_id``."""
    import transformers

    if not applied(patch_id):
        (status,) = gx.status([patch_id])
        on = f"{status.distribution} {status.version}" if status.version else f"transformers {transformers.__version__}"
        pytest.skip(f"{patch_id} is {status.state.value} ({on}): {status.reason}")


def run_python(
    code_or_args: list[str],
    env: dict[str, str] | None = None,
    python: str | None = None,
    cwd: str | Path | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """Run a fresh interpreter (the one under test unless ``python`` says otherwise).

    The working directory defaults to the temp dir, so ``-m gemma3n_export_fixes...`` imports the
    installed package (what users run), never the checkout.
    """
    full_env = {k: v for k, v in os.environ.items() if k not in {"GEMMA3N_EXPORT_FIXES", "PYTHONPATH"}}
    full_env.update(env or {})
    return subprocess.run(
        [python or sys.executable, *code_or_args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or tempfile.gettempdir(),
        timeout=timeout,
    )


def one_char_tokenizer(directory, vocab: int = 256) -> list[str]:
    """A BPE ``tokenizer.json`` (the kind ExecuTorch's runner reads) with one character per id; the characters."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = [chr(0x4E00 + i) for i in range(vocab)]
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(chars)}, []))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=chars[1], bos_token=chars[2]).save_pretrained(directory)
    return chars


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, gemma3n_module):
    """The tiny model saved with ``save_pretrained``, with a tokenizer: what a user's export script loads."""
    from gemma3n_export_fixes.models.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny-checkpoint")
    build_tiny_model(seed=0).save_pretrained(path)
    one_char_tokenizer(path)
    return path


#: ``check --exports`` of the shared run: what the CI row's cell kind runs (matrix/grid.toml ``[cells]``; the tests
#: session sets it), all four when unset.
CHECK_EXPORTS = os.environ.get("GEMMA3N_TEST_CHECK_EXPORTS", "portable,xnnpack,kv-portable,kv-8da4w-4w").split(",")


def require_check_export(name: str) -> None:
    """Skip (with the reason) when the shared ``check`` run of this row does not export ``name``."""
    if name not in CHECK_EXPORTS:
        pytest.skip(f"{name} is not exported on this row (a row that varies transformers only runs "
                    f"{','.join(CHECK_EXPORTS)}; the default-stack row runs it: matrix/grid.toml [cells])")  # fmt: skip


@pytest.fixture(scope="session")
def check_run(tmp_path_factory, gemma3n_module):
    """``check --json --keep``, run once: (process result, its JSON record, the directory of its programs).

    Every export path check covers (fixed window portable/XNNPACK, KV cache portable, KV cache 8da4w + 4w on
    XNNPACK) is built here once and shared by the tests that validate or run those programs.
    Under xdist the workers share one run: the first to get here runs it under a file lock, the others wait for
    it and read its result.
    """
    import fcntl
    import json

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    base = root / "check-shared"
    out, keep, done = base / "check.json", base / "programs", base / "process.json"
    with open(root / "check-shared.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            base.mkdir(exist_ok=True)
            cmd = ["-m", "gemma3n_export_fixes.cli", "check", "--json", str(out), "--keep", str(keep),
                   "--exports", ",".join(CHECK_EXPORTS)]  # fmt: skip
            ran = run_python(cmd, timeout=1800)
            done.write_text(json.dumps([ran.args, ran.returncode, ran.stdout, ran.stderr]))
    result = subprocess.CompletedProcess(*json.loads(done.read_text()))
    record = json.loads(out.read_text()) if out.exists() else {}
    return result, record, keep


def kv_supported() -> bool:
    import transformers

    from gemma3n_export_fixes.export.kvcache import unsupported_reason

    return unsupported_reason(transformers.__version__) is None


def require_kv_cache() -> None:
    """Skip (with the reason) where a KV-cache export is refused (a recipe patch not applied in this process)."""
    import transformers

    from gemma3n_export_fixes.export.kvcache import unsupported_reason

    if reason := unsupported_reason(transformers.__version__):
        pytest.skip(f"transformers {transformers.__version__}: export refuses a KV-cache program here ({reason})")
