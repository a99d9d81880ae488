"""Writing an export's files all or nothing (where they go: the ``.pte`` contract, ``gemma3n_export_fixes.pte``).

``AtomicFiles`` stages every file as a temporary file in its target directory (a program is streamed into
its file, never held as one ``bytes``), and renames them into place only when the block succeeds; on any
failure the temporary files are removed, so no half-written output is ever left.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

from gemma3n_export_fixes.errors import UserError
from gemma3n_export_fixes.pte import sidecar_path, tokenizer_path  # noqa: F401  (program.py, until it imports pte)


class AtomicFiles:
    """``with AtomicFiles() as files: files.open(path)...; files.write(path, data)``: all appear, or none."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path, IO[bytes]]] = []

    def __enter__(self) -> AtomicFiles:
        return self

    def open(self, path: Path) -> IO[bytes]:
        """A binary file to write ``path``'s content to (a temporary file until the block succeeds)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        handle = os.fdopen(fd, "wb")
        self._staged.append((Path(tmp), path, handle))
        return handle

    def write(self, path: Path, data: bytes) -> None:
        self.open(path).write(data)

    def digest(self, path: Path) -> tuple[int, str]:
        """(size, sha256) of what was written for ``path`` so far (read back in chunks, not held in memory)."""
        (tmp, handle) = next((t, h) for t, p, h in self._staged if p == path)
        handle.flush()
        size, digest = 0, hashlib.sha256()
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                size += len(chunk)
                digest.update(chunk)
        return size, digest.hexdigest()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if kind is None:
                for _, _, handle in self._staged:
                    handle.flush()
                    os.fsync(handle.fileno())
                    handle.close()
                for tmp, path, _ in self._staged:
                    os.replace(tmp, path)
                self._staged.clear()
        finally:
            for tmp, _, handle in self._staged:
                handle.close()
                tmp.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory: all or nothing."""
    with AtomicFiles() as files:
        files.write(path, data)


def check_out_path(out: Path) -> None:
    """``UserError`` unless ``out`` names a ``.pte`` file in a place a file can go (checked before any work)."""
    if out.suffix != ".pte":
        raise UserError(f"--out must name a .pte file, got {out}")
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory")
