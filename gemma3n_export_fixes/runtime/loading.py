"""Loading a ``.pte`` in the ExecuTorch runtime without letting a bad file take the process down, and the one
place runtime failures become one-line errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gemma3n_export_fixes.errors import UserError, message_line, require
from gemma3n_export_fixes.pte import (
    EMBEDDING_KERNELS,
    FORWARD_METHOD,
    KV_MARKER_METHOD,
    check_pte_header,
    load_quantized_kernels,
    operator_table,
)


def _runtime_operators() -> frozenset[str]:
    """The operators this process's ExecuTorch runtime has, with the quantized kernels loaded (no overloads)."""
    load_quantized_kernels()
    from executorch.extension.pybindings import portable_lib

    return frozenset(name.split(".")[0] for name in portable_lib._get_operator_names())


def missing_embedding_kernel(scheme: str, operators: frozenset[str] | None = None) -> str | None:
    """Why this process's ExecuTorch runtime cannot run a program whose embeddings are quantized with
    ``scheme`` (its kernel is not there even with the quantized kernels loaded: ExecuTorch 1.0.1's Python
    runtime), or ``None`` when it can (or ``scheme`` needs no kernel). ``operators``: the runtime's, when the
    caller has them (:func:`_runtime_operators`)."""
    kernel = EMBEDDING_KERNELS.get(scheme)
    if kernel is None or kernel in (operators if operators is not None else _runtime_operators()):
        return None
    from gemma3n_export_fixes.versions import distribution_version

    return (
        f"this ExecuTorch runtime (executorch {distribution_version('executorch')}) has no {kernel} kernel, which "
        f"--qembedding {scheme} programs call (the matrix's executorch 1.4.1 and 1.5.1 rows have it): run it in a "
        "runner linked with quantized_ops_lib, or export with --qembedding none"
    )


@contextmanager
def runtime_errors(what: str = "the ExecuTorch runtime failed to run the program") -> Iterator[None]:
    """Turn a runtime failure inside the block into a one-line :class:`UserError` (user errors pass as they are)."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{what} ({message_line(exc)})") from None


def load_program(path: Path) -> Any:
    """A ``.pte`` loaded in the ExecuTorch runtime (``Program``); ``UserError`` when it is not one."""
    require("executorch", "running a .pte", "executorch")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    check_pte_header(path)
    operators = _runtime_operators()  # loads the quantized kernels: a device runner links them the same way
    table = operator_table(path)
    if b"llama::" in table:  # optimum-cli's --use_custom_sdpa programs: llama::custom_sdpa
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (2.6 s: only when needed)
    for scheme, kernel in EMBEDDING_KERNELS.items():
        reason = missing_embedding_kernel(scheme, operators) if kernel.encode() in table else None
        if reason:
            raise UserError(f"{path}: {reason}")
    from executorch.runtime import Runtime

    with runtime_errors(f"{path}: not a loadable ExecuTorch program"):
        program = Runtime.get().load_program(str(path))
    if FORWARD_METHOD not in program.method_names:
        raise UserError(f"{path}: the program has no forward method")
    return program


def auto_threads() -> int:
    """Threads for the runtime's pool: the cores this process may use, less those other processes keep busy
    (1-minute load average), at least 1. XNNPACK's pool spins while it waits: a pool larger than the idle
    cores makes every call wait for a descheduled thread (see ``benchmarks/threads.py``)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


def set_threads(threads: int | None) -> int:
    """Size the ExecuTorch runtime's thread pool (``None``: :func:`auto_threads`); returns the size in force."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    require("executorch", "running a .pte", "executorch")
    from executorch.extension.pybindings import portable_lib

    wanted = threads or auto_threads()
    with runtime_errors("cannot size the ExecuTorch thread pool"):
        count = getattr(portable_lib, "_threadpool_get_thread_count", None)  # not in ExecuTorch 1.0.x
        if count is None or count() != wanted:
            portable_lib._unsafe_reset_threadpool(wanted)
        return wanted if count is None else int(count())


def load_forward(program: Any, path: Path) -> Any:
    """The program's ``forward`` method, ready to execute."""
    with runtime_errors(f"{path}: not a loadable ExecuTorch program"):
        return program.load_method(FORWARD_METHOD)


def is_kv_program(program: Any) -> bool:
    return KV_MARKER_METHOD in program.method_names


def load_pte(path: Path) -> Any:
    """The ``forward`` method of the ``.pte`` at ``path`` (:func:`load_program` + :func:`load_forward`)."""
    return load_forward(load_program(path), path)
