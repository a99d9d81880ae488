"""Backports of ExecuTorch fixes: the registry's ``preserved-ops-in-config`` (pytorch/executorch#17404).

The stack CI installs has the fix, so the registry reports the backport ``not-needed`` there: these tests install
its replacement by hand and show it changes no program and is removed again. Where it applies (ExecuTorch 1.0.1,
the matrix's seed row), the evidence is that row's XNNPACK exports, validated in the runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch", reason="executorch is not installed")

from gemma3n_export_fixes.plugin import assess  # noqa: E402
from gemma3n_export_fixes.plugin.patches.toolchain import preserved_ops_in_config as backport  # noqa: E402


class LinearsAndNorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(16, 16)
        self.b = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(h * torch.pow(h.pow(2).mean(-1, keepdim=True) + 1e-6, -0.5))


@contextmanager
def forced() -> Iterator[None]:
    """The backport's replacement installed for the block even where ExecuTorch has the fix (the registry would
    not apply it there), and the original put back."""
    from executorch.exir.program._program import EdgeProgramManager

    original = vars(EdgeProgramManager)["__init__"]
    EdgeProgramManager.__init__ = backport.build({backport.PATH: original})[backport.PATH]
    try:
        yield
    finally:
        EdgeProgramManager.__init__ = original


def _lowered_bytes(force: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, list[str]]:
    """The program ``to_edge_transform_and_lower`` writes with a transform pass (the step #17404 fixed), with the
    backport forced on or not; and the exception list ``transform()`` verified with."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir.program._program import EdgeProgramManager

    from gemma3n_export_fixes.export.xnnpack_forms import XnnpackForms

    seen: list[str] = []
    transform = EdgeProgramManager.transform

    def recorded(self, *args, **kwargs):  # type: ignore[no-untyped-def]  # the real transform, after a note
        seen.extend(sorted(str(op) for op in self.compile_config._core_aten_ops_exception_list))
        return transform(self, *args, **kwargs)

    monkeypatch.setattr(EdgeProgramManager, "transform", recorded)
    torch.manual_seed(0)
    exported = torch.export.export(LinearsAndNorm().eval(), (torch.randn(1, 4, 16),), strict=False)
    with forced() if force else nullcontext():
        edge = to_edge_transform_and_lower(
            exported, transform_passes=[XnnpackForms()], partitioner=[XnnpackPartitioner()]
        )
    monkeypatch.undo()
    return edge.to_executorch().buffer, seen


def test_the_registry_applies_the_backport_only_where_executorch_lacks_the_fix():
    import inspect

    from executorch.exir.program import _program

    fixed = "config._core_aten_ops_exception_list = list(" in inspect.getsource(
        _program._gen_edge_manager_for_partitioners
    )
    (status,) = assess([backport.PATCH.id])
    assert status.state.value == ("not-needed" if fixed else "ready"), status.reason


def test_the_backport_carries_the_kept_ops_and_writes_the_same_program(monkeypatch):
    upstream, _ = _lowered_bytes(False, monkeypatch)
    backported, listed = _lowered_bytes(True, monkeypatch)
    assert "aten.linear.default" in listed, listed
    assert backported == upstream


def test_the_backport_restores_the_original():
    from executorch.exir.program._program import EdgeProgramManager

    original = vars(EdgeProgramManager)["__init__"]
    with forced():
        assert vars(EdgeProgramManager)["__init__"] is not original
    assert vars(EdgeProgramManager)["__init__"] is original
