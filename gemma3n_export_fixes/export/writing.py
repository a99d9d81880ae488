"""Writing an export's files all or nothing (where they go: the ``.pte`` contract, ``gemma3n_export_fixes.pte``).

``AtomicFiles`` stages every file as a temporary file in its target directory (a program is streamed into
its file, never held as one ``bytes``), and renames them into place only when the block succeeds; on any
failure the temporary files are removed, so no half-written output is ever left. A full disk (``ENOSPC``, or a
quota: ``EDQUOT``) while writing, flushing or closing is a :class:`UserError` of one line naming the directory,
the bytes it took and the space left; :func:`check_free_space` refuses up front what cannot fit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

from gemma3n_export_fixes.errors import UserError


class AtomicFiles:
    """``with AtomicFiles() as files: files.open(path)...; files.write(path, data)``: all appear, or none."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path, IO[bytes]]] = []
        self._created: list[Path] = []  # directories ``open`` made: removed again (when empty) on failure

    def __enter__(self) -> AtomicFiles:
        return self

    def open(self, path: Path) -> IO[bytes]:
        """A binary file to write ``path``'s content to (a temporary file until the block succeeds)."""
        missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        self._created.extend(missing)  # deepest first
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
        """Rename every staged file into place (after flush + fsync + close) when the block succeeded; otherwise,
        or when any of that fails, remove every staged file (a close that raises does not stop the cleanup).

        A full disk, in the block or here, leaves nothing behind and raises one :class:`UserError`
        (:func:`no_space_error`); any other error propagates as it is, once.
        """
        failure: BaseException | None = exc
        target = self._staged[-1][1] if self._staged else None  # the block failed: the last file opened
        try:
            if kind is None:
                for _, path, handle in self._staged:
                    target = path  # the file a failure below names
                    handle.flush()
                    os.fsync(handle.fileno())
                    handle.close()
                for tmp, path, _ in self._staged:
                    target = path
                    os.replace(tmp, path)
                self._staged.clear()
                self._created.clear()
        except OSError as error:
            failure = error
        written = self._discard()
        if target is not None and isinstance(failure, OSError) and failure.errno in NO_SPACE:
            raise no_space_error(target, written) from None
        if failure is not None and failure is not exc:
            raise failure

    def _discard(self) -> int:
        """Close and remove every staged file (every one, whatever a close raises), and the directories ``open``
        created when they are empty again; the bytes the files held."""
        written = 0
        for tmp, _, handle in self._staged:
            with contextlib.suppress(OSError):  # a close flushes what is buffered: on a full disk it raises again
                handle.close()  # (and still closes the file)
            with contextlib.suppress(OSError):
                written += tmp.stat().st_size
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        self._staged.clear()
        for directory in self._created:
            with contextlib.suppress(OSError):  # not empty (someone else wrote there): kept
                directory.rmdir()
        self._created.clear()
        return written


#: ``errno`` values of a full disk: no space left, or the user's quota reached.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
#: :func:`check_free_space`'s margin over the predicted program: the record next to it and rounding.
FREE_SPACE_MARGIN = 0.01
FREE_SPACE_MARGIN_BYTES = 64 * 1024


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _existing(directory: Path) -> Path:
    """``directory``, or its nearest ancestor that exists (what ``AtomicFiles.open`` would create it in)."""
    directory = directory.absolute()
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def no_space_error(path: Path, written: int) -> UserError:
    """The one-line error for a disk that filled while ``path`` was written (``written`` bytes staged by then;
    the free space is measured after they were removed)."""
    directory = _existing(path.parent)
    free = shutil.disk_usage(directory).free
    return UserError(
        f"no space left on {directory}: writing {path.name} needs more than {_size(written)} (what it had written "
        f"when the disk filled; nothing was left behind), {_size(free)} free"
    )


def required_bytes(program_bytes: int) -> int:
    """The free space :func:`check_free_space` asks for a program predicted at ``program_bytes``."""
    return int(program_bytes * (1 + FREE_SPACE_MARGIN)) + FREE_SPACE_MARGIN_BYTES


def check_free_space(out: Path, needed_bytes: int) -> None:
    """``UserError`` (one line naming the directory, the space needed and the space free) when ``out``'s
    filesystem has less free space than :func:`required_bytes` of ``needed_bytes`` (the predicted size of what
    the export writes). Checked before any heavy work; an export that passes can still fill the disk (the
    prediction leaves out the program's graph, a few hundred KB; other writers), which ``AtomicFiles`` reports
    and cleans up."""
    directory = _existing(out.parent)
    free = shutil.disk_usage(directory).free
    needed = required_bytes(needed_bytes)
    if needed > free:
        raise UserError(
            f"no space left on {directory}: writing {out.name} needs about {_size(needed)}, {_size(free)} free"
        )


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
