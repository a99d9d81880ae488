"""Random-weight models built unit by unit: the large weights stay on the meta device until a unit needs them.

A real shape (E2B: 4.4B parameters) built the ordinary way exists whole, in bfloat16, before anything is
quantized (10.4 GB peak RSS for E2B, measured). Built here, only the small tensors are real at first: every
tensor of at least :data:`LARGE` elements created while the model is constructed (the weights of the linears
and embedding tables) is put on the meta device; buffers and small parameters (norm scales, AltUp scales,
rotary frequencies) are built by transformers' own code, so they hold what it computes. A unit (an embedding
table, a decoder layer, the rest) gets its real weights when the export reaches it (:func:`materialize`), is
cast and quantized, and the next unit follows; the whole float model is never resident.

Contract of the values: a large weight is ``N(0, initializer_range)`` (transformers' init for Gemma 3n's linears
and embeddings; an embedding's padding row is zero), drawn from a generator seeded by the model's seed and the
weight's name, in the build dtype. So a weight has the same values whichever order the units come in and
whether the model is materialized lazily or at once; the export and ``validate``'s reference agree bit for bit.
Tied weights (the head and ``embed_tokens``) stay one tensor.
"""

from __future__ import annotations

import weakref
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Tensors created with at least this many elements during construction go to the meta device.
LARGE = 1 << 16
#: Elements drawn at a time when a weight gets its values (64 MB of float32).
CHUNK = 1 << 24


class _Pending:
    """The meta weights of one lazily built model: name -> the slots (module, attribute) that hold it."""

    def __init__(self, model: torch.nn.Module, seed: int, std: float) -> None:
        self.seed, self.std = seed, std
        self.slots: dict[int, list[tuple[torch.nn.Module, str]]] = {}
        self.names: dict[int, str] = {}
        for module_name, module in model.named_modules(remove_duplicate=False):
            for attr, param in module._parameters.items():
                if param is not None and param.is_meta:
                    self.names.setdefault(id(param), f"{module_name}.{attr}" if module_name else attr)
                    self.slots.setdefault(id(param), []).append((module, attr))


_PENDING: weakref.WeakKeyDictionary[Any, _Pending] = weakref.WeakKeyDictionary()


def _construct_large_on_meta(threshold: int) -> Any:
    """A TorchFunctionMode that sends factory calls of ``threshold`` or more elements to the meta device."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._device import _device_constructors

    constructors = _device_constructors()

    class LargeOnMeta(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in constructors and kwargs.get("device") is None:
                probe = func(*args, **{**kwargs, "device": "meta"})
                if isinstance(probe, torch.Tensor) and probe.numel() >= threshold:
                    return probe
            return func(*args, **kwargs)

    return LargeOnMeta()


def build_lazy(build: Any, seed: int, threshold: int | None = None) -> torch.nn.Module:
    """``build()`` (a constructor call) with its tensors of ``threshold`` (default :data:`LARGE`) or more
    elements on the meta device, registered for :func:`materialize` under ``seed``."""
    with _construct_large_on_meta(LARGE if threshold is None else threshold):
        model = build()
    for name, buffer in model.named_buffers():
        if buffer.is_meta:  # a buffer computed from a large temporary: this model cannot be built lazily
            raise RuntimeError(f"{name}: a buffer of {type(model).__name__} was built on the meta device")
    _PENDING[model] = _Pending(model, seed, float(getattr(model.config, "initializer_range", 0.02)))
    return model


def is_lazy(model: torch.nn.Module) -> bool:
    """Whether ``model`` still has weights on the meta device that :func:`materialize` will fill."""
    pending = _PENDING.get(model)
    return bool(pending and pending.slots)


def _values(pending: _Pending, key: int, like: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
    import torch

    name = pending.names[key]
    generator = torch.Generator().manual_seed(pending.seed * 1_000_003 + zlib.crc32(name.encode()))
    values = torch.empty(like.shape, dtype=like.dtype)
    flat = values.view(-1)
    for start in range(0, flat.numel(), CHUNK):  # drawn in float32 a chunk at a time: no float32 copy of a table
        stop = min(flat.numel(), start + CHUNK)
        flat[start:stop] = torch.randn(stop - start, generator=generator).mul_(pending.std)
    if padding_idx is not None:
        values[padding_idx].zero_()
    return values


def materialize(model: torch.nn.Module, unit: torch.nn.Module | None = None) -> int:
    """Give the meta weights of ``unit`` (default: all of ``model``) their values; returns how many. A no-op for a
    model not built by :func:`build_lazy`, or a unit already materialized."""
    import torch

    pending = _PENDING.get(model)
    if pending is None:
        return 0
    unit = model if unit is None else unit
    keys = dict.fromkeys(id(p) for m in unit.modules() for p in m._parameters.values() if p is not None)
    done = 0
    for key in keys:
        slots = pending.slots.pop(key, None)
        if slots is None:
            continue
        module, attr = slots[0]
        meta = module._parameters[attr]
        padding_idx = getattr(module, "padding_idx", None) if isinstance(module, torch.nn.Embedding) else None
        param = torch.nn.Parameter(_values(pending, key, meta, padding_idx), requires_grad=meta.requires_grad)
        for holder, name in slots:
            holder._parameters[name] = param
        done += 1
    return done
