"""Export a Gemma 3n text decoder to an ExecuTorch ``.pte`` the way the seed repo does, done right.

The exported program is the text-only decoder (``language_model`` + ``lm_head``), in one of two forms:

- fixed window (the seed's): token ids ``[1, seq_len]`` in, logits ``[1, seq_len, vocab]`` out,
  ``use_cache=False``, ``torch.export(strict=False)``;
- ``kv_cache``: prefill + decode with a static KV cache of ``max_seq_len`` positions (see ``kvcache``).

Four steps (:func:`export_pte` runs them): :func:`trace` (``torch.export``), :func:`lower` (the portable path,
``to_edge``, or XNNPACK, ``to_edge_transform_and_lower`` with ``XnnpackPartitioner``, then ``to_executorch``), both
inside the registry's toolchain patches (``gemma3n_export_fixes.plugin.exporting``); then :func:`write` (the
program streamed into a temporary file) and :func:`record` (the ``.json`` beside it): the ``.pte`` and its record
appear together or not at all. The record holds the patches in place (both scopes, one list), the peak RSS of the
exporting process and the weight bytes before (float) and after quantization (as stored).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma3n_export_fixes.errors import require
from gemma3n_export_fixes.export.options import ExportOptions
from gemma3n_export_fixes.export.quant import quantize
from gemma3n_export_fixes.export.stages import Lowered, Traced
from gemma3n_export_fixes.export.writing import AtomicFiles, check_out_path
from gemma3n_export_fixes.models.sources import BUILTIN, torch_dtype
from gemma3n_export_fixes.pte import RECORD_FORMAT, sidecar_path, tokenizer_path

if TYPE_CHECKING:
    import torch

    from gemma3n_export_fixes.export.memory import MemoryPlan
    from gemma3n_export_fixes.models.sources import LoadedModel

Progress = Callable[[str], None]


def _silent(_: str) -> None:
    pass


@dataclass
class StageTimer:
    """Wall time per stage, and the process's peak RSS when it ends, reported through ``progress``."""

    progress: Progress = _silent
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float | None] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.progress(f"  {name}: {what} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.peak_rss_mb[name] = peak = peak_rss_mb()
        self.progress(
            f"  {name}: done in {self.seconds[name]:.1f} s" + (f", peak RSS {peak / 1e3:.1f} GB" if peak else "")
        )


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


def trace(model: torch.nn.Module, config: dict[str, Any], options: ExportOptions, timer: StageTimer) -> Traced:
    """``torch.export`` of the (quantized) decoder: the recipe's strict KV-cache program, or the fixed window."""
    import torch

    from gemma3n_export_fixes.export import kvcache
    from gemma3n_export_fixes.models.recipe import export_recipe

    if options.kv_cache:
        with timer.stage("export", f"torch.export(strict=True), static KV cache of {options.max_seq_len}"):
            exported = export_recipe(model, options.max_seq_len)
        return Traced(exported, kvcache.constant_methods(config, options.max_seq_len))
    example = (torch.zeros(1, options.seq_len, dtype=torch.long),)
    with timer.stage("export", "torch.export(strict=False)"):
        return Traced(torch.export.export(TextOnlyLogits.wrap(model), example, strict=False), {})


def lower(traced: Traced, options: ExportOptions, applied: frozenset[str], timer: StageTimer) -> Lowered:
    """The edge program (portable or XNNPACK, with the XNNPACK forms where that patch is ``applied``), then
    ``to_executorch``. Consumes ``traced.exported``."""
    from executorch.exir import to_edge

    from gemma3n_export_fixes.export.lowering import delegate_count, lower_to_xnnpack
    from gemma3n_export_fixes.export.memory import release_freed

    lowering: dict[str, Any] = {}
    if options.recipe == "xnnpack":
        with timer.stage("lower", "to_edge_transform_and_lower(XnnpackPartitioner)"):
            edge = lower_to_xnnpack(traced.exported, traced.methods, applied)
        lowering["partitions"] = delegate_count(edge)
        timer.progress(f"  lower: {lowering['partitions']} XNNPACK partitions")
    else:
        with timer.stage("lower", "to_edge (portable kernels)"):
            edge = to_edge(traced.exported, constant_methods=traced.methods or None)
    traced.exported = None
    with timer.stage("to_executorch", "memory planning and emission"):
        program = edge.to_executorch()
    del edge
    release_freed()
    return Lowered(program=program, lowering=lowering)


def write(lowered: Lowered, out: Path, files: AtomicFiles, timer: StageTimer) -> dict[str, Any]:
    """Stream the program into ``out``'s staged file; its path, size and sha256."""
    with timer.stage("serialize", f"write {out}"):
        lowered.write_to(files.open(out))
        size, sha256 = files.digest(out)
    return {"path": str(out.resolve()), "bytes": size, "sha256": sha256}


def record(
    loaded: LoadedModel,
    options: ExportOptions,
    patches: list[dict[str, Any]],
    pte: dict[str, Any],
    lowered: Lowered,
    memory: MemoryPlan,
    facts: dict[str, Any],
    timer: StageTimer,
) -> dict[str, Any]:
    """The export record (``FILE.json``): what was exported, how, with which patches (both scopes, as they were
    while the program was traced and lowered), and what it cost."""
    from gemma3n_export_fixes.versions import stack_versions

    return {
        "format": RECORD_FORMAT,
        "model": loaded.source,
        "config_hash": loaded.config_hash,
        "config": loaded.config,
        **facts,
        "program": "kv-cache" if options.kv_cache else "fixed-window",
        "options": options.describe(),
        "versions": stack_versions(),
        "patches": patches,
        "pte": pte,
        "seconds": timer.seconds,
        "lowering": lowered.lowering,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_after": timer.peak_rss_mb,
        "memory": memory.to_dict(),
    }


def export_pte(
    loaded: LoadedModel,
    out: Path,
    options: ExportOptions,
    progress: Progress = _silent,
    memory: MemoryPlan | None = None,
) -> dict[str, Any]:
    """Export ``loaded`` to ``out`` (+ ``out.json``); returns the JSON record. Writes nothing on failure.

    ``memory``: the plan of a caller that already checked the options and the output path and planned the memory
    (``ExportOptions.check``, ``check_out_path``, ``export.memory.check_fits``: the CLI, before loading the
    model); without it, all three are done here.
    """
    require("executorch", "export", "executorch")
    import gemma3n_export_fixes as gx
    from gemma3n_export_fixes.export import lowered_cache
    from gemma3n_export_fixes.export.memory import plan, release_freed
    from gemma3n_export_fixes.plugin import exporting
    from gemma3n_export_fixes.versions import distribution_version

    if memory is None:  # a library caller: the CLI checked the options and planned before it loaded the model
        options.check(distribution_version("transformers") or "0")
        check_out_path(out)
        memory = plan(loaded.source, options)
    timer = StageTimer(progress)
    model = loaded.model
    parameters = loaded.parameters  # before quantizing: quantized tables become buffers
    float_bytes = parameters * (4 if options.dtype == "float32" else 2)
    facts: dict[str, Any] = {"parameters": parameters}
    facts["weight_bytes"] = {"float": float_bytes, "stored": memory.stored_bytes}  # priced once, by the plan
    what = f"{options.dtype}, linears {options.qlinear}, embeddings {options.qembedding}, unit by unit"
    with timer.stage("quantize", what):
        facts["quantized"] = quantize(model, options.qlinear, options.qembedding, torch_dtype(options.dtype))
        release_freed()
    with exporting(model) as toolchain:
        applied = frozenset(s.id for s in toolchain if s.applied)
        traced = trace(model, loaded.config, options, timer)
        lowered = lowered_cache.cached(lower)(traced, options, applied, timer)
    patches = [s.to_dict() for s in gx.status() if s.scope == "import"] + [s.to_dict() for s in toolchain]
    with AtomicFiles() as files:
        pte = write(lowered, out, files, timer)
        result = record(loaded, options, patches, pte, lowered, memory, facts, timer)
        source_tokenizer = Path(loaded.source) / "tokenizer.json"
        if loaded.source not in BUILTIN and source_tokenizer.is_file():  # what the LLM runner needs beside it
            files.write(tokenizer_path(out), source_tokenizer.read_bytes())
            result["tokenizer"] = str(tokenizer_path(out).resolve())
        files.write(sidecar_path(out), (json.dumps(result, indent=2, default=str) + "\n").encode())
    return result
