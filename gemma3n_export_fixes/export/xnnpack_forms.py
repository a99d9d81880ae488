"""Rewrite the edge graph into forms XNNPACK delegates, so it lowers in few, large partitions.

XNNPACK lowering time grows with the number of delegate partitions (ExecuTorch recompiles the whole graph and
runs its pass pipeline once per partition), and the graph is split wherever an op stays outside the delegate.
In Gemma 3n most of those ops are value-preserving forms XNNPACK happens not to accept:

- RMSNorm's ``torch.pow(mean_squared, -0.5)``  -> ``rsqrt`` (XNNPACK's pow takes only the exponent 2);
- ``mean(x, -1)`` (any rank; XNNPACK's own mean is 4-D over dims (2, 3) only) -> a view to ``[N, 1, H, 1]``,
  that 4-D mean (XNNPACK's global average pooling), and a view back;
- ``select(x, dim, i)`` -> ``slice(x, dim, i, i + 1)`` + a view that drops ``dim`` (pure data movement);
- ``unsqueeze(x, d)`` off the trailing dimension (RoPE's ``cos.unsqueeze(2)``) -> a view;
- ``view(x, [1, s, 2, 64])`` with one symbolic size ``s`` -> ``view(x, [1, -1, 2, 64])`` (XNNPACK refuses
  symbolic sizes in a reshape, not an inferred one);
- ``slice_scatter`` along a static dimension (AltUp's ``corrected[1:] += ...``) -> ``cat`` of the kept slices
  and the source;
- ``expand`` to the shape it already has, ``x * 1.0`` (``mul.Scalar``) and ``copy(x, src)`` with ``src`` of
  ``x``'s shape and dtype (functionalised in-place updates) -> ``x`` / ``src`` (exactly the same values).

Each rewrite applies only where the resulting views have static sizes or one symbolic size (XNNPACK's
``static_reshape`` takes one inferred dimension), so a dynamic-shape (KV-cache) program keeps its semantics.
The rewrites change no value beyond float rounding of ``rsqrt`` against ``pow(-0.5)`` and of the reduction
order of the pooled mean; ``validate`` checks the program against eager PyTorch as before.
"""

from __future__ import annotations

from typing import Any

import torch
from executorch.exir.dialects._ops import ops as exir_ops
from executorch.exir.pass_base import ExportPass

aten = exir_ops.edge.aten


def _is_static(size: Any) -> bool:
    return isinstance(size, int)


def _view_shape(shape: list[Any]) -> list[int] | None:
    """``shape`` for a ``view_copy`` XNNPACK lowers: ints, at most one symbolic size (as -1); else ``None``."""
    symbolic = [i for i, s in enumerate(shape) if not _is_static(s)]
    if len(symbolic) > 1:
        return None
    return [-1 if i in symbolic else int(s) for i, s in enumerate(shape)]


def _same_static(a: Any, b: Any) -> bool:
    """Both tensors (proxies) have one static shape and one dtype."""
    x, y = a.to_tensor(), b.to_tensor()
    return x.dtype == y.dtype and all(_is_static(s) for s in x.shape) and list(x.shape) == list(y.shape)


class XnnpackForms(ExportPass):
    """The rewrites above, as an ExecuTorch edge pass (``to_edge_transform_and_lower(transform_passes=...)``)."""

    def call_operator(self, op, args, kwargs, meta):  # type: ignore[no-untyped-def]  # ExportPass's signature
        rewritten = self._rewrite(op, args, kwargs, meta)
        return super().call_operator(op, args, kwargs, meta) if rewritten is None else rewritten

    def _rewrite(self, op, args, kwargs, meta):  # type: ignore[no-untyped-def]
        if op == aten.pow.Tensor_Scalar and args[1] == -0.5:
            return super().call_operator(aten.rsqrt.default, (args[0],), {}, meta)
        if op == aten.mul.Scalar and args[1] == 1 and not isinstance(args[1], bool):
            return args[0] if args[0].to_tensor().dtype.is_floating_point else None
        if op == aten.expand_copy.default and all(_is_static(s) for s in meta["val"].shape):
            return args[0] if list(args[0].to_tensor().shape) == list(meta["val"].shape) else None
        if op == aten.copy.default and not kwargs.get("non_blocking") and _same_static(args[0], args[1]):
            return args[1]
        if op == aten.mean.dim:
            return self._pooled_mean(args, kwargs, meta)
        if op == aten.select_copy.int:
            return self._sliced_select(args, meta)
        if op == aten.view_copy.default:
            return self._inferred_view(args, kwargs, meta)
        if op == aten.unsqueeze_copy.default:
            return self._view_to_output(args[0], meta)
        if op == aten.slice_scatter.default:
            return self._concatenated_scatter(args, kwargs, meta)
        return None

    def _inferred_view(self, args, kwargs, meta):  # type: ignore[no-untyped-def]
        sizes = list(args[1])
        if all(_is_static(s) for s in sizes) or any(_is_static(s) and s == -1 for s in sizes):
            return None
        shape = _view_shape(sizes)
        return None if shape is None else super().call_operator(aten.view_copy.default, (args[0], shape), kwargs, meta)

    def _concatenated_scatter(self, args, kwargs, meta):  # type: ignore[no-untyped-def]
        values = dict(zip(("dim", "start", "end", "step"), args[2:], strict=False)) | kwargs
        x = args[0].to_tensor()
        dim = values.get("dim", 0) % x.dim()
        size = x.shape[dim]
        start, end, step = values.get("start"), values.get("end"), values.get("step", 1)
        if step != 1 or not all(_is_static(v) for v in (size, start if start is not None else 0)):
            return None
        start = 0 if start is None else min(start % size if start < 0 else start, size)
        end = size if end is None or (_is_static(end) and end >= size) else end
        if not _is_static(end):
            return None
        end = end % size if end < 0 else end
        pieces = []
        if start > 0:
            pieces.append(super().call_operator(aten.slice_copy.Tensor, (args[0], dim, 0, start, 1), {}, meta))
        pieces.append(args[1])
        if end < size:
            pieces.append(super().call_operator(aten.slice_copy.Tensor, (args[0], dim, end, size, 1), {}, meta))
        return args[1] if len(pieces) == 1 else super().call_operator(aten.cat.default, (pieces, dim), {}, meta)

    def _pooled_mean(self, args, kwargs, meta):  # type: ignore[no-untyped-def]
        x = args[0].to_tensor()
        dims = args[1]
        if kwargs.get("dtype") is not None or x.dim() < 2 or dims is None or len(dims) != 1:
            return None
        if dims[0] % x.dim() != x.dim() - 1 or not _is_static(x.shape[-1]) or x.dtype != torch.float32:
            return None
        if _view_shape(list(meta["val"].shape)) is None:
            return None
        view = super().call_operator(aten.view_copy.default, (args[0], [-1, 1, x.shape[-1], 1]), {}, meta)
        return self._view_to_output(super().call_operator(aten.mean.dim, (view, [2, 3], True), {}, meta), meta)

    def _sliced_select(self, args, meta):  # type: ignore[no-untyped-def]
        x = args[0].to_tensor()
        dim, index = args[1] % x.dim(), args[2]
        if not _is_static(index) or not _is_static(x.shape[dim]) or x.dim() < 2:
            return None
        index = index % x.shape[dim]
        if _view_shape(list(meta["val"].shape)) is None:
            return None
        sliced = super().call_operator(aten.slice_copy.Tensor, (args[0], dim, index, index + 1, 1), {}, meta)
        return self._view_to_output(sliced, meta)

    def _view_to_output(self, value, meta):  # type: ignore[no-untyped-def]
        """``value`` viewed as the rewritten op's output shape (``None`` when XNNPACK could not lower the view)."""
        shape = _view_shape(list(meta["val"].shape))
        return None if shape is None else super().call_operator(aten.view_copy.default, (value, shape), {}, meta)
