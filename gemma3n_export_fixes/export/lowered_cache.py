"""Lowered programs by content: an exported graph already lowered on the same stack is not lowered again.

The matrix runs the same ``check`` on every row again whenever the package changes, and most changes leave the
graph a row traces as it was; lowering it (XNNPACK's partitioner and passes, ``to_executorch``) is most of a
cell's time, and its result is a function of what this key covers. (Across transformers releases a hit is rare:
neighbouring releases trace the tiny model to graphs that differ in a few nodes, e.g. 4.53.0 and 4.55.4's fixed
window in its mask and dtype casts.) The key:

- the exported program, as the lowering sees it: every graph's nodes (op, name, target, arguments, the
  shape/dtype/symbolic-shape value each produces, the module path and source function they came from), the
  graph signature, the range constraints, and the bytes of every parameter, buffer and constant (a tensor
  subclass, e.g. torchao's quantized weights, by its flattened inner tensors and metadata). Left out: stack
  traces (file names and line numbers of the transformers release that traced it) and autograd sequence
  numbers, which no lowering pass reads;
- the export options, the program's constant methods, the toolchain patches applied (by id);
- the versions of torch, executorch and torchao, and the code of this package's ``export`` folder and of its
  toolchain patches (``plugin/patches/toolchain``; docstrings and comments left out).

Same key, same lowering input, same code: the stored ``.pte`` is the one the lowering would write
(``tests/test_lowered_cache.py`` lowers a program twice, once from a second transformers-equivalent trace,
and compares bytes). Validation is never cached: every cell runs the cached program against its own eager
model. Opt-in, for the matrix: ``GEMMA3N_EXPORT_FIXES_LOWERED_CACHE=DIR`` (the matrix's cells set it);
:func:`cached` wraps the export's ``lower`` step with it, and the export record says ``"cached": KEY`` when a
program came from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gemma3n_export_fixes.export.stages import Lowered, Traced

ENV_VAR = "GEMMA3N_EXPORT_FIXES_LOWERED_CACHE"
_META_KEYS = ("nn_module_stack", "source_fn_stack", "torch_fn")


def cache_dir() -> Path | None:
    """The cache directory, when ``GEMMA3N_EXPORT_FIXES_LOWERED_CACHE`` names one."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value) if value else None


def _value(val: Any) -> str:
    import torch

    if isinstance(val, torch.Tensor):
        return f"T{tuple(str(d) for d in val.shape)}{val.dtype}"
    if isinstance(val, (list, tuple)):
        return "(" + ",".join(_value(v) for v in val) + ")"
    return repr(val)


def _tensor_digest(h: Any, tensor: Any) -> None:
    import torch

    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        inner, context = tensor.__tensor_flatten__()
        h.update(f"{type(tensor).__qualname__}{context!r}{tuple(tensor.shape)}".encode())
        for name in inner:
            _tensor_digest(h, getattr(tensor, name))
        return
    t = tensor.detach().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _target(target: Any) -> str:
    """A node's target by name: ``aten.add.Tensor``, or ``module.qualname`` for a Python function (a function's
    repr holds its address, which differs in every process: transformers 4.57's vmap mask traces such nodes)."""
    if isinstance(target, str) or not callable(target) or hasattr(target, "_schema"):
        return str(target)
    module, name = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    return f"{module}.{name}" if module and name else str(target)


def _meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The node metadata the key sees, without what differs from one process to the next: strict export keys
    ``nn_module_stack`` by each module's ``id()`` (so only its (path, type) values count), and
    ``source_fn_stack`` holds the functions themselves (by name here: a built-in's repr is an address)."""
    out = {k: meta[k] for k in _META_KEYS if meta.get(k) is not None}
    if isinstance(out.get("nn_module_stack"), dict):
        out["nn_module_stack"] = list(out["nn_module_stack"].values())
    if isinstance(out.get("source_fn_stack"), list):
        out["source_fn_stack"] = [(name, _target(fn)) for name, fn in out["source_fn_stack"]]
    return out


def _graphs_text(exported: Any) -> str:
    import torch

    lines = []
    for path, module in exported.graph_module.named_modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        lines.append(f"graph {path}")
        for node in module.graph.nodes:
            meta = _meta(node.meta)
            value = _value(node.meta.get("val"))
            lines.append(f"{node.op} {node.name} {_target(node.target)} {node.args} {node.kwargs} {value} {meta}")
    return "\n".join(lines)


def _package_source_digest() -> str:
    """The code (not the docstrings or comments: ``module_fingerprint``) of the export folder and the toolchain
    patches: what the lowering of a given graph can depend on in this package."""
    from gemma3n_export_fixes.plugin.fingerprint import module_fingerprint

    package = Path(__file__).parent.parent
    h = hashlib.sha256()
    for folder in (package / "export", package / "plugin" / "patches" / "toolchain"):
        for path in sorted(folder.glob("*.py")):
            h.update(path.name.encode() + module_fingerprint(path.read_text(encoding="utf-8")).encode())
    return h.hexdigest()


def program_key(exported: Any, lowering: dict[str, Any], methods: dict[str, Any]) -> str:
    """The sha256 that decides whether ``exported`` was lowered before (see the module docstring); ``lowering``:
    how it is lowered (the export options, the toolchain patches applied)."""
    from gemma3n_export_fixes.versions import distribution_version

    h = hashlib.sha256()
    stack = {name: distribution_version(name) for name in ("torch", "executorch", "torchao")}
    head = {"stack": stack, "source": _package_source_digest(), "lowering": lowering, "methods": methods}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    h.update(_graphs_text(exported).encode())
    h.update(str(exported.graph_signature).encode())
    h.update(str(exported.range_constraints).encode())
    for group in (exported.state_dict, exported.constants):
        for name in sorted(group):
            h.update(name.encode())
            _tensor_digest(h, group[name])
    return h.hexdigest()


Lower = Callable[[Traced, Any, frozenset[str], Any], Lowered]  # (traced, options, applied ids, stage timer)


def cached(lower: Lower) -> Lower:
    """``lower`` through the cache when ``GEMMA3N_EXPORT_FIXES_LOWERED_CACHE`` names one, else ``lower`` itself."""
    if cache_dir() is None:
        return lower

    def lower_or_reuse(traced: Traced, options: Any, applied: frozenset[str], timer: Any) -> Lowered:
        how = {"options": options.describe(), "patches": sorted(applied)}
        key = program_key(traced.exported, how, traced.methods)
        hit = lookup(key)
        if hit is not None:
            traced.exported = None
            timer.progress(f"  lower: this exported graph was lowered on this stack before: {hit[0]} (validated anew)")
            return Lowered(cached=hit[0], lowering={**hit[1], "cached": key})
        lowered = lower(traced, options, applied, timer)
        store(key, lowered)
        return lowered

    return lower_or_reuse


def lookup(key: str) -> tuple[Path, dict[str, Any]] | None:
    """The stored program and what its lowering recorded, if ``key`` was lowered before."""
    folder = cache_dir()
    if folder is None:
        return None
    pte, meta = folder / f"{key}.pte", folder / f"{key}.json"
    if not (pte.is_file() and meta.is_file()):
        return None
    return pte, json.loads(meta.read_text())


def store(key: str, lowered: Lowered) -> None:
    """Keep the lowered program under ``key`` (atomically: a reader never sees half a program)."""
    folder = cache_dir()
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        lowered.write_to(handle)
    (folder / f".{key}.{os.getpid()}.json").write_text(json.dumps(lowered.lowering, default=str))
    os.replace(folder / f".{key}.{os.getpid()}.json", folder / f"{key}.json")
    os.replace(tmp, folder / f"{key}.pte")
