"""Export a Gemma 3n text decoder to an ExecuTorch ``.pte`` the way the seed repo does, done right.

The exported program is the text-only decoder (``language_model`` + ``lm_head``), in one of two forms:

- fixed window (the seed's): token ids ``[1, seq_len]`` in, logits ``[1, seq_len, vocab]`` out,
  ``use_cache=False``, ``torch.export(strict=False)``;
- ``kv_cache``: prefill + decode with a static KV cache of ``max_seq_len`` positions (see ``kvcache``).

Then either the portable path (``to_edge``) or XNNPACK (``to_edge_transform_and_lower`` with
``XnnpackPartitioner``), then ``to_executorch``. The program is streamed into a temporary file; the ``.pte``
and its ``.json`` record appear together or not at all. The record holds the peak RSS of the exporting
process and the weight bytes before (float) and after quantization (as stored).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma3n_export_fixes.errors import require
from gemma3n_export_fixes.export.options import ExportOptions
from gemma3n_export_fixes.export.quant import quantize
from gemma3n_export_fixes.export.writing import AtomicFiles, check_out_path, sidecar_path, tokenizer_path
from gemma3n_export_fixes.models.sources import BUILTIN, torch_dtype

if TYPE_CHECKING:
    import torch

    from gemma3n_export_fixes.models.sources import LoadedModel

Progress = Callable[[str], None]
RECORD_FORMAT = "gemma3n-export-fixes/export/2"


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


def export_pte(loaded: LoadedModel, out: Path, options: ExportOptions, progress: Progress = _silent) -> dict[str, Any]:
    """Export ``loaded`` to ``out`` (+ ``out.json``); returns the JSON record. Writes nothing on failure."""
    require("executorch", "export", "executorch")
    import gemma3n_export_fixes as gx
    from gemma3n_export_fixes.export import kvcache
    from gemma3n_export_fixes.export.memory import plan, release_freed
    from gemma3n_export_fixes.export.sizes import price
    from gemma3n_export_fixes.models.recipe import export_recipe
    from gemma3n_export_fixes.versions import stack_versions

    versions = stack_versions()
    options.check(versions["transformers"] or "0")
    check_out_path(out)
    import torch
    from executorch.exir import to_edge

    from gemma3n_export_fixes._env import lowering_shortcuts_enabled, xnnpack_forms_enabled
    from gemma3n_export_fixes.export import lowered_cache
    from gemma3n_export_fixes.export.strict_export import weights_not_cloned

    timer = StageTimer(progress)
    model = loaded.model
    parameters = loaded.parameters  # before quantizing: quantized tables become buffers
    weights = price(model, options.dtype, options.quant, options.quant_embeddings)
    what = f"{options.dtype}, linears {options.quant}, embeddings {options.quant_embeddings}, unit by unit"
    with timer.stage("quantize", what):
        quantized = quantize(model, options.quant, options.quant_embeddings, torch_dtype(options.dtype))
        release_freed()
    methods: dict[str, Any] = {}
    lowering: dict[str, Any] = {}
    shortcuts = lowering_shortcuts_enabled()
    shared = False  # whether the strict trace shared the weights instead of cloning them (the record says)
    if options.kv_cache:
        what = f"torch.export(strict=True), static KV cache of {options.max_seq_len}"
        trace = weights_not_cloned(model) if shortcuts else nullcontext(False)
        with timer.stage("export", what), trace as shared:
            exported = export_recipe(model, options.max_seq_len)
        methods = kvcache.constant_methods(loaded.config, options.max_seq_len)
    else:
        example = (torch.zeros(1, options.seq_len, dtype=torch.long),)
        with timer.stage("export", "torch.export(strict=False)"):
            exported = torch.export.export(TextOnlyLogits.wrap(model), example, strict=False)
    forms = xnnpack_forms_enabled() if options.backend == "xnnpack" else None  # None: the portable path
    lowering_flags = {"options": options.describe(), "forms": forms, "shortcuts": shortcuts}
    key = lowered_cache.program_key(exported, lowering_flags, methods) if lowered_cache.cache_dir() else None
    hit = lowered_cache.lookup(key) if key else None
    if hit is None:
        if forms is not None:
            from gemma3n_export_fixes.export.lowering import lower_to_xnnpack

            with timer.stage("lower", "to_edge_transform_and_lower(XnnpackPartitioner)"):
                edge, lowering = lower_to_xnnpack(exported, methods, forms=forms, shortcuts=shortcuts)
            progress(f"  lower: {lowering['partitions']} XNNPACK partitions")
        else:
            with timer.stage("lower", "to_edge (portable kernels)"):
                edge = to_edge(exported, constant_methods=methods or None)
        del exported
        with timer.stage("to_executorch", "memory planning and emission"):
            program = edge.to_executorch()
        del edge
        release_freed()
    else:
        del exported
        cached, lowering = hit[0], {**hit[1], "cached": key}
        progress(f"  lower: this exported graph was lowered on this stack before: {cached} (validated anew)")
    with AtomicFiles() as files:
        with timer.stage("serialize", f"write {out}"):
            if hit is not None:
                with open(cached, "rb") as source:
                    shutil.copyfileobj(source, files.open(out), 1 << 22)
            else:
                program.write_to_file(files.open(out))
            size, sha256 = files.digest(out)
        record = {
            "format": RECORD_FORMAT,
            "model": loaded.source,
            "config_hash": loaded.config_hash,
            "config": loaded.config,
            "parameters": parameters,
            "weight_bytes": {"float": weights["float_bytes"], "stored": weights["bytes"]},
            "program": "kv-cache" if options.kv_cache else "fixed-window",
            "options": options.describe(),
            "quantized": quantized,
            "versions": versions,
            "patches": [s.to_dict() for s in gx.status()],
            "pte": {"path": str(out.resolve()), "bytes": size, "sha256": sha256},
            "seconds": timer.seconds,
            "lowering": lowering,
            "trace": {"weights_not_cloned": shared},
            "peak_rss_mb": peak_rss_mb(),
            "peak_rss_mb_after": timer.peak_rss_mb,
            "memory": plan(loaded.source, options).to_dict(),
        }
        source_tokenizer = Path(loaded.source) / "tokenizer.json"
        if loaded.source not in BUILTIN and source_tokenizer.is_file():  # what the LLM runner needs beside it
            files.write(tokenizer_path(out), source_tokenizer.read_bytes())
            record["tokenizer"] = str(tokenizer_path(out).resolve())
        files.write(sidecar_path(out), (json.dumps(record, indent=2, default=str) + "\n").encode())
    if key and hit is None:
        lowered_cache.store(key, out, lowering)
    return record
