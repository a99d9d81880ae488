"""What the user sees: the command's own lines; third-party output goes to a log file.

Libraries an export loads write to the terminal on their own: Python warnings (torch's deprecations,
Dynamo's "side effects", the emitter's "Mutation on a buffer"), ``logging`` and ``print`` lines (torchao's
"Failed to load ..."), and C++ log lines written straight to file descriptor 2 (ExecuTorch's
``[cpuinfo_utils.cpp:71] Reading file ...``). Unless ``--verbose`` is given, :func:`console` points file
descriptors 1 and 2 (and so ``sys.stdout``, ``sys.stderr``, warnings, logging and C++ output) at the log
file, and gives the command a :class:`Console` on duplicates of the original descriptors. Errors are never
hidden: the CLI prints them (and unexpected tracebacks) to the console, names the log when a command fails,
and ``faulthandler`` writes a crash's traceback to the terminal.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class Console:
    """The command's output streams (``out``: results, ``err``: progress and errors) and the log, if any."""

    out: TextIO
    err: TextIO
    log: Path | None = None

    def print(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)

    def progress(self, line: str) -> None:
        print(line, file=self.err, flush=True)

    def error(self, line: str) -> None:
        print(line, file=self.err, flush=True)


def default_log(command: str) -> Path:
    """``$XDG_CACHE_HOME/gemma3n-export-fixes/<command>.log`` (``~/.cache`` by default), overwritten per run."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gemma3n-export-fixes" / f"{command}.log"


def _fd_backed(stream: TextIO, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def console(verbose: bool, log: Path) -> Iterator[Console]:
    """The :class:`Console` for one command; third-party output goes to ``log`` unless ``verbose``."""
    if verbose:
        yield Console(sys.stdout, sys.stderr)
        return
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        sink = open(log, "w", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed below)
    except OSError:
        yield Console(sys.stdout, sys.stderr)  # nowhere to put it: show everything rather than lose it
        return
    saved_streams = (sys.stdout, sys.stderr)
    if _fd_backed(sys.stdout, 1) and _fd_backed(sys.stderr, 2):
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
        out = os.fdopen(saved[0], "w", encoding="utf-8", errors="replace")
        err = os.fdopen(saved[1], "w", encoding="utf-8", errors="replace")
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        faulthandler.enable(file=err)
        try:
            yield Console(out, err, log)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            faulthandler.enable(file=sys.stderr)
            out.close()
            err.close()
            sink.close()
        return
    # streams that are not the process's descriptors (an embedding application, pytest's capture): Python-level
    sys.stdout = sys.stderr = sink
    try:
        yield Console(*saved_streams, log)
    finally:
        sys.stdout, sys.stderr = saved_streams
        sink.close()
