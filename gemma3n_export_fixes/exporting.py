"""Export a Gemma 3n text decoder to an ExecuTorch ``.pte`` the way the seed repo does, done right.

The exported program is the text-only decoder (``language_model`` + ``lm_head``): token ids ``[1, seq_len]``
in, logits ``[1, seq_len, vocab]`` out, ``use_cache=False``, ``torch.export(strict=False)``, then either the
portable path (``to_edge``) or XNNPACK (``to_edge_transform_and_lower`` with ``XnnpackPartitioner``), then
``to_executorch``. The ``.pte`` and its ``.json`` record are written atomically: a failure leaves no file.
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
from gemma3n_export_fixes.quant import quantize

if TYPE_CHECKING:
    import torch

    from gemma3n_export_fixes.models import LoadedModel

BACKENDS = ("xnnpack", "portable")
QUANTS = ("none", "int8")
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
    quant_embeddings: bool = False
    #: Build combinations known to produce a broken program (for the reproducer of that upstream bug).
    allow_known_broken: bool = False

    def validate(self) -> None:
        if self.seq_len < 1:
            raise UserError(f"--seq-len must be at least 1, got {self.seq_len}")
        for name, value, allowed in (
            ("--dtype", self.dtype, DTYPES),
            ("--backend", self.backend, BACKENDS),
            ("--quant", self.quant, QUANTS),
        ):
            if value not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.backend == "xnnpack" and self.quant == "int8" and not self.allow_known_broken:
            raise UserError(
                "--quant int8 with --backend xnnpack builds a .pte that fails at execute (XNNPACK: 'Failed to "
                "retrieve dim order', error 0x1; an upstream ExecuTorch/torchao defect): use --backend portable"
            )


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


def export_pte(loaded: LoadedModel, out: Path, options: ExportOptions, progress: Progress = _silent) -> dict[str, Any]:
    """Export ``loaded`` to ``out`` (+ ``out.json``); returns the JSON record. Writes nothing on failure."""
    options.validate()
    require("executorch", "export", "executorch")
    if out.suffix != ".pte":
        raise UserError(f"--out must name a .pte file, got {out}")
    import torch
    from executorch.exir import to_edge, to_edge_transform_and_lower

    from gemma3n_export_fixes import api
    from gemma3n_export_fixes.versions import stack_versions

    timer = StageTimer(progress)
    model = loaded.model.to(torch_dtype(options.dtype))
    with timer.stage("quantize", f"quant={options.quant}, embeddings={options.quant_embeddings}"):
        quantized = quantize(model, options.quant, options.quant_embeddings)
    example = (torch.zeros(1, options.seq_len, dtype=torch.long),)
    with timer.stage("export", "torch.export(strict=False)"):
        exported = torch.export.export(TextOnlyLogits.wrap(model), example, strict=False)
    if options.backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        with timer.stage("lower", "to_edge_transform_and_lower(XnnpackPartitioner)"):
            edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    else:
        with timer.stage("lower", "to_edge (portable kernels)"):
            edge = to_edge(exported)
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
            "options": {k: v for k, v in vars(options).items() if k != "allow_known_broken"},
            "quantized": quantized,
            "versions": stack_versions(),
            "patches": [s.to_dict() for s in api.status()],
            "pte": {"path": str(out), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        }
    record["seconds"] = timer.seconds
    side = (json.dumps(record, indent=2, default=str) + "\n").encode()
    write_all_atomically({out: data, sidecar_path(out): side})
    return record
