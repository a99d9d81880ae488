"""gaussian-topk: no ``torch.distributions`` and no ``erfinv`` inside ``Gemma3nTextMLP`` forward.

Defect: ``Gemma3nTextMLP._gaussian_topk`` builds ``torch.distributions.normal.Normal(0, 1)`` and calls
``.icdf()`` on every call. Non-strict ``torch.export`` leaves ``aten.erfinv`` in the graph, which is not in
ExecuTorch's core ATen opset, so ``to_edge`` raises ``SpecViolationError``; strict export fails earlier, in
Dynamo, on ``torch.distributions`` (skip list; torch 2.13.0, fresh process). ``torch.compile(fullgraph=True)``
does trace it.

Fix: the multiplier (the standard normal quantile of the layer's target sparsity) depends only on a Python
float, so it is computed once per value, eagerly, with the very float32 ops upstream uses (so the result is
bit-identical), and enters the graph as a 0-d ``full`` of the input's dtype. The computation runs in a
short-lived worker thread, so it is never traced whatever tracer is active in the caller (non-strict
export's fake mode, Dynamo), and ``torch.compiler.assume_constant_result`` makes Dynamo treat it as a
constant. Nothing is stored on the module: no ``state_dict`` keys, nothing to re-create after
``from_pretrained`` on the meta device, and models built before the patch was applied get it too.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.errors import first_line
from gemma3n_export_fixes.plugin.patch import Function, Patch, Reproduction, Target

PATH = "Gemma3nTextMLP._gaussian_topk"

_MULTIPLIERS: dict[tuple[float, str], float] = {}
_LOCK = threading.Lock()


def _upstream_quantile(sparsity: float, device: str) -> float:
    """Upstream's float32 ``Normal(0, 1).icdf(sparsity)`` on ``device``, as a Python float (exact)."""
    import torch

    target = torch.tensor(sparsity, dtype=torch.float32, device=device)
    return float(torch.distributions.normal.Normal(0, 1).icdf(target).item())


def _compute_outside_any_tracer(sparsity: float, device: str) -> float:
    result: list[float] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(_upstream_quantile(sparsity, device))
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=work, name="gemma3n-export-fixes-quantile", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]


def _assume_constant(func: Function) -> Function:
    import torch

    return torch.compiler.assume_constant_result(func)


def std_multiplier(sparsity: float, device_type: str = "cpu") -> float:
    """The float32 standard normal quantile of ``sparsity``, as upstream computes it on ``device_type``.

    Cached per ``(sparsity, device_type)``; ``meta`` (and any device that fails) falls back to the CPU.
    """
    key = (float(sparsity), device_type)
    value = _MULTIPLIERS.get(key)
    if value is None:
        with _LOCK:
            value = _MULTIPLIERS.get(key)
            if value is None:
                try:
                    value = _compute_outside_any_tracer(key[0], "cpu" if device_type == "meta" else device_type)
                except Exception:
                    value = _compute_outside_any_tracer(key[0], "cpu")
                _MULTIPLIERS[key] = value
    return value


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    import torch
    from torch import nn

    multiplier = _assume_constant(std_multiplier)

    def _gaussian_topk(self: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        value = multiplier(self.activation_sparsity, inputs.device.type)
        std_multiplier_t = torch.full((), value, dtype=inputs.dtype, device=inputs.device)
        inputs_mean = torch.mean(inputs, dim=-1, keepdim=True)
        inputs_std = torch.std(inputs, dim=-1, keepdim=True, unbiased=False)
        cutoff_x = inputs_mean + inputs_std * std_multiplier_t
        return nn.functional.relu(inputs - cutoff_x)

    _gaussian_topk.__qualname__ = "Gemma3nTextMLP._gaussian_topk"
    _gaussian_topk.__doc__ = originals[PATH].__doc__
    return {PATH: _gaussian_topk}


def reproduce() -> Reproduction:
    """Export one sparse ``Gemma3nTextMLP`` (non-strict) and lower it with ``to_edge``.

    Upstream: ``SpecViolationError`` (``aten.erfinv`` is not core ATen). Fixed: lowers, no ``erfinv``.
    """
    import torch
    from executorch.exir import to_edge
    from transformers.models.gemma3n import modeling_gemma3n

    from gemma3n_export_fixes.models.tiny import tiny_text_config

    torch.manual_seed(0)
    mlp = modeling_gemma3n.Gemma3nTextMLP(tiny_text_config(), layer_idx=0).eval()
    example = (torch.randn(1, 4, mlp.hidden_size),)
    try:
        exported = torch.export.export(mlp, example, strict=False)
        edge = to_edge(exported)
    except Exception as exc:
        return Reproduction(True, first_line(exc), type(exc).__name__)
    ops = {str(node.target) for node in edge.exported_program().graph.nodes if node.op == "call_function"}
    erfinv = sorted(op for op in ops if "erfinv" in op)
    if erfinv:
        return Reproduction(True, f"to_edge passed but the graph still has {erfinv}", "erfinv-in-graph")
    return Reproduction(False, f"exported and lowered with to_edge; {len(ops)} op kinds, no erfinv")


PATCH = Patch(
    id="gaussian-topk",
    title="Gemma3nTextMLP._gaussian_topk without torch.distributions / erfinv",
    defect=(
        "torch.distributions.Normal(0, 1).icdf() inside forward: aten.erfinv is not in ExecuTorch's core "
        "ATen opset (to_edge: SpecViolationError); strict export cannot trace torch.distributions (Dynamo "
        "skip list)"
    ),
    needed_on=SpecifierSet(">=4.53.0"),
    verified_through="5.25.0",
    targets=(Target(PATH, {"6a96b990e159b20a": "4.53.0 - 5.25.0 (every release so far)"}),),
    build=build,
    reproduce=reproduce,
    upstream="open: no upstream fix yet (every release 4.53.0 - 5.25.0 has the same code)",
)
