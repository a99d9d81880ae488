"""A full disk: ``export`` refuses up front what cannot fit, and a disk that fills while writing leaves nothing.

On real small filesystems (a tmpfs mounted for the test; root only: skipped with the reason elsewhere), no mocks.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import run_python
from gemma3n_export_fixes.errors import UserError
from gemma3n_export_fixes.export.writing import AtomicFiles, check_free_space, required_bytes

TINY_FLOAT = ["--model", "tiny", "--fixed-window", "--recipe", "portable", "--qlinear", "none", "--qembedding", "none"]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``small_fs(bytes)``: a directory on a tmpfs of that size, mounted for the test and unmounted after it."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        if not sys.platform.startswith("linux"):
            pytest.skip(f"mounting a tmpfs needs Linux ({sys.platform})")
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (root only): {done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


def fill(directory: Path) -> None:
    """Write to ``directory`` until its filesystem has no byte left."""
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28, exc


def test_a_disk_filling_mid_write_leaves_nothing_and_says_so_in_one_error(small_fs):
    """Written in small pieces, a buffer is pending when the disk fills, so closing the file raises ENOSPC again
    (upstream: the second traceback, and the cleanup never ran)."""
    fs = small_fs(256 * 1024)
    out = fs / "deep" / "er" / "model.pte"
    with pytest.raises(UserError) as caught, AtomicFiles() as files:
        handle = files.open(out)
        for _ in range(1000):
            handle.write(b"x" * 1000)
    message = str(caught.value)
    assert message.startswith(f"no space left on {fs}: writing model.pte needs more than 0.2")
    assert "\n" not in message and "MB free" in message
    assert list(fs.iterdir()) == []  # no .partial file, and the directories it made are gone


def test_a_close_that_fails_on_a_full_disk_still_removes_every_staged_file(small_fs):
    fs = small_fs(64 * 1024)
    fill(fs)
    with (
        pytest.raises(UserError, match=f"^no space left on {fs}: writing a.pte needs more than"),
        AtomicFiles() as files,
    ):
        files.write(fs / "a.pte", b"x" * 100)  # buffered: the block succeeds, the flush in __exit__ fails
        files.write(fs / "b.json", b"{}")
    assert [p.name for p in fs.iterdir()] == ["filler"]


def test_check_free_space_refuses_what_cannot_fit_in_one_line(small_fs):
    fs = small_fs(1024 * 1024)
    check_free_space(fs / "new" / "model.pte", 500_000)  # fits: an absent directory is measured on its parent
    with pytest.raises(UserError) as caught:
        check_free_space(fs / "model.pte", 1_000_000)  # + the margin: more than 1 MiB
    assert str(caught.value) == (
        f"no space left on {fs}: writing model.pte needs about {required_bytes(1_000_000) / 1e6:.2f} MB, 1.05 MB free"
    )


def test_export_refuses_a_program_the_disk_cannot_hold_before_any_heavy_work(small_fs):
    fs = small_fs(1024 * 1024)  # the tiny float program is predicted at 1.23 MB of weights
    ran = run_python(["-m", "gemma3n_export_fixes.cli", "export", *TINY_FLOAT, "--out", str(fs / "tiny.pte")])
    assert ran.returncode == 1
    (line,) = ran.stderr.splitlines()  # one line: no traceback, and no "loading tiny" (refused before the model)
    assert line.startswith(f"gemma3n-export-fixes: error: no space left on {fs}: writing tiny.pte needs about 1.3")
    assert line.endswith(", 1.05 MB free")
    assert list(fs.iterdir()) == []


@pytest.mark.slow
def test_export_onto_a_disk_that_fills_while_writing_leaves_nothing(small_fs, gemma3n_module):
    """The disk passes the up-front check (the prediction counts the weights, not the program's graph) and fills
    while the program is streamed: one line, exit 1, no file and no directory left."""
    from gemma3n_export_fixes.export.memory import plan
    from gemma3n_export_fixes.export.options import ExportOptions

    options = ExportOptions.from_cli(seq_len=32, dtype="float32", recipe="portable", qlinear="none",
                                     qembedding="none", kv_cache=False, max_seq_len=128)  # fmt: skip
    fs = small_fs(required_bytes(plan("tiny", options).stored_bytes) // 4096 * 4096 + 32 * 1024)
    ran = run_python(["-m", "gemma3n_export_fixes.cli", "export", *TINY_FLOAT, "--out", str(fs / "out" / "tiny.pte")])
    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr
    last = ran.stderr.splitlines()[-1]
    assert last.startswith(f"gemma3n-export-fixes: error: no space left on {fs}: writing tiny.pte needs more than")
    assert "serialize: write" in ran.stderr  # it got as far as writing: the in-write path, not the up-front check
    assert list(fs.iterdir()) == []
