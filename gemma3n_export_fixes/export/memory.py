"""How much memory an export will need, before any heavy work, and how much this machine has.

The export keeps at most one whole copy of the model: built (or loaded) in its natural dtype (bfloat16 for the
real shapes and checkpoints, see ``models.sources.load_model``), then cast and quantized unit by unit
(``export.quant.quantize``), then traced, lowered and streamed to the file. The peak is predicted from the
weight bytes, computed per tensor on the meta device (``export.sizes``), with factors measured on this
machine (the figures in the README; ``nox -s real_size`` re-measures them):

- before lowering: a checkpoint, whole in its natural dtype, plus the unit being cast (the tied head in float32 at
  worst); a real shape, built unit by unit (``models.lazy``), the quantized model plus the largest unit in flight;
- lowering: the eager quantized model stays resident (torchao keeps int4 weights unpacked, one byte each, and
  the exported program shares them), while XNNPACK packs them into its delegate payloads and the program and
  the payloads exist side by side until the file is written (measured on the KV program; the plan applies it
  to fixed-window programs too). E2B 8da4w + 4w, KV 256, 2026-12-06: 9.22 GB
  measured (in ``to_executorch``), predicted 1.0 + 4.02 (eager quantized) + 1.45 x 2.96 (stored) = 9.3 GB (the
  plan says 10.1 GB: the build's upper bound above, 8.0 GB measured, is now the larger term). That
  factor holds with the memory shortcuts (the registry's toolchain patches ``weights-not-cloned``,
  ``merge-check-by-sets`` and ``constants-shared-in-preprocess``); without them (shortcuts off, ExecuTorch
  1.4.1 and older, the portable path, unmeasured at size) the factor measured before them, 2.5 (12.3 GB for the
  same export, predicted 12.4).

``export`` refuses, in one line, a job whose predicted peak exceeds the memory available (``MemAvailable``, or
the cgroup limit when lower), and says what would fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma3n_export_fixes.export.quant import DYNAMIC_ACTIVATION_QUANTS
from gemma3n_export_fixes.export.sizes import price

if TYPE_CHECKING:
    import torch

    from gemma3n_export_fixes.export.options import ExportOptions

GB = 1e9
#: Resident memory of the process before any weight exists (torch, transformers, executorch imported).
BASE_BYTES = 1.0 * GB
#: Peak during lowering on top of the eager quantized model, per byte of stored weights, with the memory
#: shortcuts and without them (measured: see the module docstring).
LOWERING_FACTOR = 1.45
UNSHARED_LOWERING_FACTOR = 2.5


#: The toolchain patches :data:`LOWERING_FACTOR` was measured with (``weights-not-cloned`` matters only where the
#: trace is strict: the KV-cache program).
MEMORY_SHORTCUTS = ("merge-check-by-sets", "constants-shared-in-preprocess")
STRICT_TRACE_SHORTCUT = "weights-not-cloned"


def memory_shortcuts_apply(options: ExportOptions) -> bool:
    """True when the export will trace and lower with every shortcut that :data:`LOWERING_FACTOR` was measured
    with: XNNPACK, and each of those patches ``ready`` here (in range, code matching, not disabled)."""
    if options.recipe != "xnnpack":
        return False
    from gemma3n_export_fixes.plugin import assess

    needed = (*MEMORY_SHORTCUTS, STRICT_TRACE_SHORTCUT) if options.kv_cache else MEMORY_SHORTCUTS
    return all(s.state.value in ("ready", "applied") for s in assess(needed))


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted peak of one export, and what it is made of (bytes)."""

    natural_bytes: int
    stored_bytes: int
    head_bytes: int
    predicted_peak: int

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v / GB, 2) for k, v in vars(self).items()} | {"unit": "GB"}


def release_freed() -> None:
    """Give freed heap memory back to the OS (glibc's ``malloc_trim``; a no-op elsewhere). After quantizing E2B
    unit by unit, 0.8 GB of the process's RSS was freed memory kept by the allocator (6.28 -> 5.49 GB)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_bytes() -> int | None:
    """Memory this process can still take (``None`` where the OS does not say)."""
    found = [b for b in (_meminfo_available(), _cgroup_available()) if b is not None]
    return min(found) if found else None


def natural_dtype(spec: str) -> str:
    """The dtype a source comes in (``models.sources.load_model`` without a dtype)."""
    from gemma3n_export_fixes.models.sources import SHAPES

    if spec == "tiny":
        return "float32"
    if spec in SHAPES:
        return "bfloat16"
    config = json.loads((Path(spec) / "config.json").read_text())
    found = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
    return "bfloat16" if found in ("bfloat16", "float16") else "float32"


def meta_model(spec: str) -> torch.nn.Module:
    """``spec``'s text decoder on the meta device (a checkpoint directory: from its config, no weights read)."""
    from gemma3n_export_fixes.export.sizes import meta_model as builtin_meta_model
    from gemma3n_export_fixes.models.sources import BUILTIN

    if spec in BUILTIN:
        return builtin_meta_model(spec)
    from gemma3n_export_fixes.models.sources import checkpoint_model_type

    checkpoint_model_type(Path(spec))
    import torch
    from transformers import AutoConfig, Gemma3nForCausalLM

    config = AutoConfig.from_pretrained(spec, local_files_only=True)
    config = getattr(config, "text_config", config)
    with torch.device("meta"):
        return Gemma3nForCausalLM(config)


def _eager_quantized_bytes(model: torch.nn.Module, options: ExportOptions) -> int:
    """The model's bytes once quantized in eager (torchao keeps int4 weights one byte each until lowering)."""
    unpacked = "8da8w" if options.qlinear == "8da4w" else options.qlinear
    return int(price(model, options.dtype, unpacked, options.qembedding)["bytes"])


def plan(spec: str, options: ExportOptions) -> MemoryPlan:
    """The predicted peak memory of exporting ``spec`` with ``options``."""
    from gemma3n_export_fixes.models.sources import SHAPES, torch_dtype

    model = meta_model(spec)
    natural = price(model, natural_dtype(spec))["float_bytes"]
    stored = price(model, options.dtype, options.qlinear, options.qembedding)
    head = model.lm_head.weight.numel() * 4
    eager = _eager_quantized_bytes(model, options)
    if spec in SHAPES:  # built unit by unit (models.lazy): the quantized model plus the largest unit in flight
        largest = max(p.numel() for p in model.parameters())
        # the largest tensor (E2B's per-layer table) in its natural dtype, plus a half byte per element for its
        # quantization's temporaries: E2B measured 8.0 GB at its peak here, predicted 10.1 GB (an upper bound:
        # it counts every unit as quantized already)
        in_flight = int(largest * (torch_dtype(natural_dtype(spec)).itemsize + 0.5))
        before_lowering = eager + in_flight
    else:  # the whole model as loaded, plus the unit being cast (the tied head in float32 at worst)
        before_lowering = natural + head
    factor = LOWERING_FACTOR if memory_shortcuts_apply(options) else UNSHARED_LOWERING_FACTOR
    lowering = eager + int(stored["bytes"] * factor)
    return MemoryPlan(natural, stored["bytes"], head, int(BASE_BYTES + max(before_lowering, lowering)))


def check_fits(spec: str, options: ExportOptions, available: int | None = None) -> MemoryPlan:
    """The plan, or ``UserError`` (one line: predicted peak vs available, and what would fit) when it cannot fit."""
    from dataclasses import replace

    from gemma3n_export_fixes.errors import UserError

    found = plan(spec, options)
    available = available_bytes() if available is None else available
    if available is None or found.predicted_peak <= available:
        return found
    smallest = replace(options, recipe="xnnpack", qlinear="8da4w", qembedding="4w", dtype="float32")
    alternative = plan(spec, smallest)
    hint = (
        f"--recipe xnnpack --qlinear 8da4w --qembedding 4w needs {alternative.predicted_peak / GB:.1f} GB"
        if alternative.predicted_peak <= available
        else "no option fits this machine: use one with more memory"
    )
    raise UserError(
        f"{spec} with these options needs about {found.predicted_peak / GB:.1f} GB at its peak (weights: "
        f"{found.natural_bytes / GB:.1f} GB as built, {found.stored_bytes / GB:.1f} GB as stored); this machine has "
        f"{available / GB:.1f} GB available: {hint}"
    )


#: Resident memory of a loaded XNNPACK program per byte of its file (measured on E2B 8da4w + 4w: 3.95 GB peak
#: for a 2.96 GB file while generating; XNNPACK repacks weights into buffers of its own).
RUNTIME_FACTOR = 1.35


def validation_peaks(spec: str, options: ExportOptions, pte_bytes: int) -> tuple[int, int]:
    """Predicted peak of ``validate`` (with the float model, without it), in bytes.

    ``validate`` loads the program (:data:`RUNTIME_FACTOR`), then builds the reference as the export does (a
    checkpoint is first loaded whole in its natural dtype); the reference's 8da4w/8da8w linears are dequantized
    once to the program's dtype (``quant.dequantize_linears``; other quantized linears are dequantized per call
    by torchao: the head in float32). The float model (natural dtype) is built after the reference is dropped."""
    model = meta_model(spec)
    natural = price(model, natural_dtype(spec))["float_bytes"]
    head = model.lm_head.weight.numel() * 4
    if options.qlinear in DYNAMIC_ACTIVATION_QUANTS:
        reference = int(price(model, options.dtype, "none", options.qembedding)["bytes"])
    else:
        reference = _eager_quantized_bytes(model, options) + head
    running = int(pte_bytes * RUNTIME_FACTOR)
    without = BASE_BYTES + max(natural + head, running + reference)
    return int(BASE_BYTES + running + max(reference, natural + head)), int(without)
