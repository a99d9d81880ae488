"""Export a Gemma 3n text decoder to an ExecuTorch ``.pte`` the way the seed repo does, done right.

The exported program is the text-only decoder (``language_model`` + ``lm_head``), in one of two forms:

- fixed window (the seed's): token ids ``[1, seq_len]`` in, logits ``[1, seq_len, vocab]`` out,
  ``use_cache=False``, ``torch.export(strict=False)``;
- ``kv_cache``: prefill + decode with a static KV cache of ``max_seq_len`` positions (see ``kvcache``).

Then either the portable path (``to_edge``) or XNNPACK (``to_edge_transform_and_lower`` with
``XnnpackPartitioner``), then ``to_executorch``. The ``.pte`` and its ``.json`` record are written
atomically: a failure leaves no file. The record holds the peak RSS of the exporting process.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma3n_export_fixes.errors import UserError, require
from gemma3n_export_fixes.quant import EMBEDDING_QUANTS, LINEAR_QUANTS, quantize

if TYPE_CHECKING:
    import torch

    from gemma3n_export_fixes.models import LoadedModel

BACKENDS = ("xnnpack", "portable")
QUANTS = LINEAR_QUANTS
#: Linear schemes that only XNNPACK runs (dynamically quantized activations).
XNNPACK_ONLY_QUANTS = ("8da4w", "8da8w")
DTYPES = ("float32", "bfloat16")

Progress = Callable[[str], None]


def _silent(_: str) -> None:
    pass


@dataclass
class ExportOptions:
    seq_len: int = 32
    dtype: str = "float32"
    backend: str = "xnnpack"
    quant: str = "none"
    quant_embeddings: str = "none"
    kv_cache: bool = False
    max_seq_len: int = 128
    #: Build combinations known to produce a broken program (for the reproducer of that upstream bug).
    allow_known_broken: bool = False

    def validate(self) -> None:
        if self.seq_len < 1:
            raise UserError(f"--seq-len must be at least 1, got {self.seq_len}")
        if self.max_seq_len < 2:
            raise UserError(f"--max-seq-len must be at least 2, got {self.max_seq_len}")
        for name, value, allowed in (
            ("--dtype", self.dtype, DTYPES),
            ("--backend", self.backend, BACKENDS),
            ("--quant", self.quant, QUANTS),
            ("--quant-embeddings", self.quant_embeddings, EMBEDDING_QUANTS),
        ):
            if value not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.backend == "xnnpack" and self.quant == "int8" and not self.allow_known_broken:
            raise UserError(
                "--quant int8 with --backend xnnpack builds a .pte that fails at execute (XNNPACK: 'Failed to "
                "retrieve dim order', error 0x1; an upstream ExecuTorch/torchao defect): use --backend portable"
            )
        if self.quant in XNNPACK_ONLY_QUANTS and self.backend != "xnnpack":
            raise UserError(
                f"--quant {self.quant} runs on XNNPACK's dynamically quantized kernels: use --backend xnnpack"
            )

    def describe(self) -> dict[str, Any]:
        """The options as recorded in the ``.json`` next to the ``.pte``."""
        shown = {k: v for k, v in vars(self).items() if k != "allow_known_broken"}
        if self.kv_cache:
            shown.pop("seq_len")
        else:
            shown.pop("max_seq_len")
        return shown


@dataclass
class StageTimer:
    """Wall time per stage, reported through ``progress`` as each stage starts and ends."""

    progress: Progress = _silent
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.progress(f"  {name}: {what} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.progress(f"  {name}: done in {self.seconds[name]:.1f} s")


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far, in MB (``None`` where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1e6 if sys.platform == "darwin" else 1e3), 1)


class TextOnlyLogits:
    """Factory for the exported module (kept out of import time: it subclasses ``torch.nn.Module``)."""

    @staticmethod
    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        import torch

        class TextOnly(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.model = inner

            def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
                return self.model(input_ids=input_ids, use_cache=False).logits

        return TextOnly(model).eval()


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory: all or nothing."""
    write_all_atomically({path: data})


def write_all_atomically(files: dict[Path, bytes]) -> None:
    """Write several files so that, short of a crash between two renames, all appear or none does."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise


def sidecar_path(pte: Path) -> Path:
    return pte.with_suffix(".json")


def check_out_path(out: Path) -> None:
    """``UserError`` unless ``out`` names a ``.pte`` file (checked before any work is done)."""
    if out.suffix != ".pte":
        raise UserError(f"--out must name a .pte file, got {out}")


def export_pte(loaded: LoadedModel, out: Path, options: ExportOptions, progress: Progress = _silent) -> dict[str, Any]:
    """Export ``loaded`` to ``out`` (+ ``out.json``); returns the JSON record. Writes nothing on failure."""
    options.validate()
    check_out_path(out)
    require("executorch", "export", "executorch")
    import torch
    from executorch.exir import to_edge, to_edge_transform_and_lower

    from gemma3n_export_fixes import api, kvcache
    from gemma3n_export_fixes.versions import stack_versions

    versions = stack_versions()
    if options.kv_cache and (reason := kvcache.unsupported_reason(versions["transformers"] or "0")):
        raise UserError(reason)
    timer = StageTimer(progress)
    model = loaded.model.to(torch_dtype(options.dtype))
    with timer.stage("quantize", f"linears {options.quant}, embeddings {options.quant_embeddings}"):
        quantized = quantize(model, options.quant, options.quant_embeddings)
    methods: dict[str, Any] = {}
    if options.kv_cache:
        with timer.stage("export", f"torch.export(strict=True), static KV cache of {options.max_seq_len}"):
            exported = kvcache.export_program(model, options.max_seq_len)
        methods = kvcache.constant_methods(loaded.config, options.max_seq_len)
    else:
        example = (torch.zeros(1, options.seq_len, dtype=torch.long),)
        with timer.stage("export", "torch.export(strict=False)"):
            exported = torch.export.export(TextOnlyLogits.wrap(model), example, strict=False)
    if options.backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        with timer.stage("lower", "to_edge_transform_and_lower(XnnpackPartitioner)"):
            edge = to_edge_transform_and_lower(
                exported, partitioner=[XnnpackPartitioner()], constant_methods=methods or None
            )
    else:
        with timer.stage("lower", "to_edge (portable kernels)"):
            edge = to_edge(exported, constant_methods=methods or None)
    with timer.stage("to_executorch", "memory planning and emission"):
        program = edge.to_executorch()
    with timer.stage("serialize", f"write {out}"):
        data = bytes(program.buffer)
        record = {
            "format": "gemma3n-export-fixes/export/1",
            "model": loaded.source,
            "config_hash": loaded.config_hash,
            "config": loaded.config,
            "parameters": loaded.parameters,
            "program": "kv-cache" if options.kv_cache else "fixed-window",
            "options": options.describe(),
            "quantized": quantized,
            "versions": versions,
            "patches": [s.to_dict() for s in api.status()],
            "pte": {"path": str(out), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        }
    record["seconds"] = timer.seconds
    record["peak_rss_mb"] = peak_rss_mb()
    side = (json.dumps(record, indent=2, default=str) + "\n").encode()
    write_all_atomically({out: data, sidecar_path(out): side})
    return record
