"""The XNNPACK lowering: graph rewrites into forms XNNPACK delegates, and the registry's toolchain patches on it.

Small modules made of exactly the ops Gemma 3n leaves outside the delegate, lowered for real with
``XnnpackPartitioner`` (forms on and off), run in the ExecuTorch runtime and compared with eager PyTorch.
The whole-model checks are the export tests: every XNNPACK program they validate is lowered this way.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import pytest

pytestmark = pytest.mark.toolchain
torch = pytest.importorskip("torch")
pytest.importorskip("executorch", reason="executorch is not installed")

from gemma3n_export_fixes.export.lowering import FORMS_PATCH, delegate_count, lower_to_xnnpack  # noqa: E402
from gemma3n_export_fixes.plugin.api import ENGINE, assess  # noqa: E402
from gemma3n_export_fixes.plugin.patch import Scope  # noqa: E402
from gemma3n_export_fixes.plugin.patches.toolchain import constants_shared_in_preprocess  # noqa: E402
from gemma3n_export_fixes.plugin.patches.toolchain.idle_passes import GUARDED, _has_work, targets_of  # noqa: E402
from gemma3n_export_fixes.plugin.patches.toolchain.legalize_in_place import _legalize_in_place  # noqa: E402
from gemma3n_export_fixes.plugin.patches.toolchain.merge_check_by_sets import (  # noqa: E402
    _BitsetDependencyViewer,
    _can_merge_partitions,
)

Patched = Callable[[], AbstractContextManager[Any]]


def toolchain(*ids: str) -> Patched:
    """A context manager factory: the registry's toolchain patches ``ids`` applied for the block (each must apply on
    this ExecuTorch and torch: a drift fails the test, naming the patch and why)."""

    @contextmanager
    def patched() -> Iterator[Any]:
        with ENGINE.patched(ids, scope=Scope.EXPORT) as statuses:
            assert all(s.applied for s in statuses), [s.reason for s in statuses if not s.applied]
            yield statuses

    return patched


class GemmaShapedOps(torch.nn.Module):
    """RMSNorm (pow 2, mean over the last dim, pow -0.5), AltUp's select and ``[1:] +=``, RoPE's unsqueeze,
    a same-shape expand and a multiply by 1.0, between linears (so each op that stays out splits the graph)."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.a = torch.nn.Linear(hidden, hidden)
        self.b = torch.nn.Linear(hidden, hidden)
        self.c = torch.nn.Linear(hidden, hidden)
        self.cos = torch.nn.Buffer(torch.linspace(-1, 1, hidden))

    @staticmethod
    def norm(x: torch.Tensor) -> torch.Tensor:
        return x * torch.pow(x.pow(2).mean(-1, keepdim=True) + 1e-6, -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [4, 1, seq, hidden]
        h = self.norm(self.a(x[0]))  # select, rank-3 norm
        heads = self.norm(self.b(h).view(1, h.shape[1], 2, h.shape[-1] // 2))  # rank-4 norm over the last dim
        rotated = heads * self.cos.view(2, -1).unsqueeze(0).unsqueeze(1)  # unsqueeze off the trailing dim
        h = self.c(rotated.reshape(h.shape)).expand(h.shape) * 1.0
        stacked = x.clone()
        stacked[1:] += h
        return self.a(stacked)


def _lowered(forms: bool, dynamic: bool) -> tuple[int, torch.Tensor, torch.Tensor]:
    from executorch.runtime import Runtime

    torch.manual_seed(0)
    module = GemmaShapedOps().eval()
    x = torch.randn(4, 1, 6, 16)
    shapes = {"x": {2: torch.export.Dim("seq", min=2, max=8)}} if dynamic else None
    exported = torch.export.export(module, (x,), dynamic_shapes=shapes, strict=False)
    edge = lower_to_xnnpack(exported, None, [FORMS_PATCH] if forms else [])
    program = Runtime.get().load_program(edge.to_executorch().buffer)
    (got,) = program.load_method("forward").execute([x])
    with torch.no_grad():
        expected = module(x)
    return delegate_count(edge), got, expected


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic-seq"])
def test_forms_lower_in_one_partition_with_the_same_values(dynamic):
    upstream, got_upstream, expected = _lowered(forms=False, dynamic=dynamic)
    ours, got, _ = _lowered(forms=True, dynamic=dynamic)
    assert upstream > 1, "the upstream graph no longer splits here: the rewrites may be obsolete"
    assert ours < upstream
    if not dynamic:
        assert ours == 1
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    assert torch.allclose(got_upstream, expected, atol=1e-5)


def test_validate_once_patches_only_while_lowering_and_restores_the_original():
    from executorch.exir.backend import utils as backend_utils

    original = backend_utils.duplicate_constant_node
    with toolchain("validate-once")():
        assert backend_utils.duplicate_constant_node is not original
    assert backend_utils.duplicate_constant_node is original


class SharedConstant(torch.nn.Module):
    """One weight used by two partitions (an op XNNPACK refuses sits between them): ExecuTorch copies it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        y = torch.cumsum(y, dim=-1)  # not delegated: splits the graph
        return self.proj(y)


def test_shared_constants_are_copied_without_per_copy_validation_and_validated_once():
    from executorch.runtime import Runtime
    from torch.export import ExportedProgram

    calls = {"n": 0}
    original = ExportedProgram._validate

    def counting(self):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return original(self)

    module = SharedConstant().eval()
    x = torch.randn(2, 8)
    counts = []
    for once in (False, True):
        exported = torch.export.export(module, (x,), strict=False)
        ExportedProgram._validate = counting
        try:
            calls["n"] = 0
            if once:
                with toolchain("validate-once")():
                    edge = lower_to_xnnpack(exported, None, [])
            else:
                from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
                from executorch.exir import to_edge_transform_and_lower

                edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        finally:
            ExportedProgram._validate = original
        counts.append(calls["n"])
        assert delegate_count(edge) == 2
        (got,) = Runtime.get().load_program(edge.to_executorch().buffer).load_method("forward").execute([x])
        with torch.no_grad():
            assert torch.allclose(got, module(x), atol=1e-5)
    upstream, once = counts
    assert once < upstream  # the per-copy validations are gone ...
    assert once >= 1  # ... and the program is still validated


class ConvNorm(torch.nn.Module):
    """Conv1d + BatchNorm: ops the guarded passes rewrite, so they must still run here."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 4, 3)
        self.norm = torch.nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))


class Attention(torch.nn.Module):
    """``scaled_dot_product_attention`` with a 2-D float mask: the pattern ``ConvertToSDPAPass`` looks for."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


MODULES = {
    "gemma-shaped": lambda: (GemmaShapedOps(), (torch.randn(4, 1, 6, 16),)),
    "conv-norm": lambda: (ConvNorm(), (torch.randn(2, 4, 9),)),
    "attention": lambda: (Attention(), (*(torch.randn(1, 2, 8, 16) for _ in range(3)), torch.zeros(8, 8))),
}


def _program_bytes(module: torch.nn.Module, args: tuple[torch.Tensor, ...], shortcut: Patched | None = None) -> bytes:
    """The program ExecuTorch writes for ``module``, lowered to XNNPACK with ``shortcut`` (see :func:`toolchain`)
    applied, or without any."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(module, args, strict=False)
    with shortcut() if shortcut is not None else nullcontext():
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    return edge.to_executorch().buffer


@pytest.mark.parametrize("module", sorted(MODULES))
def test_skipping_idle_passes_writes_the_same_program(module):
    """Without the ops (Gemma's graph) the guarded passes are skipped; with them (conv, batch norm, the SDPA
    pattern) they run: either way the program is byte for byte the one ExecuTorch writes without the guard."""
    from executorch.runtime import Runtime

    torch.manual_seed(0)
    model, args = MODULES[module]()
    model.eval()
    upstream = _program_bytes(model, args)
    assert _program_bytes(model, args, toolchain("idle-passes-skipped")) == upstream
    (got,) = Runtime.get().load_program(upstream).load_method("forward").execute(list(args))
    with torch.no_grad():
        assert torch.allclose(got, model(*args), atol=1e-4)


def test_the_guards_see_work_where_there_is_some():
    from executorch.backends.xnnpack.utils.configs import get_xnnpack_edge_compile_config
    from executorch.exir import to_edge

    guards = {cls: _has_work(what) for cls, what in GUARDED.values()}
    present = {}
    for name in MODULES:
        model, args = MODULES[name]()
        edge = to_edge(torch.export.export(model.eval(), args), compile_config=get_xnnpack_edge_compile_config())
        present[name] = targets_of(edge.exported_program().graph)
    assert guards["ConvertToSDPAPass"](present["attention"])
    assert guards["DecomposeBatchNorm"](present["conv-norm"])
    busy = {cls for cls, has_work in guards.items() if has_work(present["gemma-shaped"])}
    assert busy == {"DimOrderOpsRevertPass"}, busy  # its x.clone() is a dim-order clone; nothing else applies


def test_idle_passes_skipped_restores_the_original_passes():
    from executorch.backends.xnnpack._passes.decompose_batch_norm import DecomposeBatchNorm
    from executorch.exir.passes.memory_format_ops_pass import DimOrderOpsRevertPass

    original = DecomposeBatchNorm.call
    assert "call" not in vars(DimOrderOpsRevertPass)
    with toolchain("idle-passes-skipped")():
        assert DecomposeBatchNorm.call is not original and "call" in vars(DimOrderOpsRevertPass)
    assert DecomposeBatchNorm.call is original and "call" not in vars(DimOrderOpsRevertPass)


def _shuffled_graph() -> Any:
    """A graph module whose nodes are out of topological order, the way ``create_submodule_from_nodes`` leaves
    one (a node moved after its users), with assertion-like ops that ``legalize_graph`` puts first."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    y = graph.placeholder("y")
    a = graph.call_function(torch.ops.aten.add.Tensor, (x, y))
    b = graph.call_function(torch.ops.aten.mul.Tensor, (a, x))
    c = graph.call_function(torch.ops.aten.sub.Tensor, (a, b))
    size = graph.call_function(torch.ops.aten.sym_size.int, (x, 0))
    bigger = graph.call_function(operator.add, (size, 1))
    d = graph.call_function(torch.ops.aten.add.Tensor, (c, bigger))
    graph.output((d, b))
    d.append(a)  # ``a`` after all its users: not a valid order any more
    return torch.fx.GraphModule(torch.nn.Module(), graph)


def _graph_facts(gm: Any) -> list[tuple[Any, ...]]:
    return [(n.name, n.op, str(n.target), str(n.args), [u.name for u in n.users]) for n in gm.graph.nodes]


def test_legalizing_in_place_gives_legalize_graphs_order_names_and_users():
    """The node order, each node's users in order, the names later nodes get and the generated code are what
    torch's ``legalize_graph`` (copying into a new graph) gives."""
    from torch.fx.passes.tools_common import legalize_graph

    copied, in_place = _shuffled_graph(), _shuffled_graph()
    legalize_graph(copied)
    graph = in_place.graph
    assert _legalize_in_place(in_place) is in_place and in_place.graph is graph  # the same graph, reordered
    in_place.recompile()
    assert _graph_facts(in_place) == _graph_facts(copied)
    assert [n.name for n in copied.graph.nodes][:4] == ["x", "y", "sym_size_int", "add"]  # operator.add put first
    for gm in (copied, in_place):
        with gm.graph.inserting_before(gm.graph.output_node()):
            for _ in range(2):
                gm.graph.call_function(torch.ops.aten.add.Tensor, (gm.graph.output_node().args[0][0], 1))
                gm.graph.call_function(operator.getitem, (gm.graph.output_node().args[0][0], 0))
    assert _graph_facts(in_place) == _graph_facts(copied)
    assert in_place.graph.find_nodes(op="call_function", target=torch.ops.aten.add.Tensor, sort=False) == [
        n for n in in_place.graph.nodes if n.target is torch.ops.aten.add.Tensor
    ]
    assert in_place.code == copied.code


@pytest.mark.parametrize("module", sorted(MODULES))
def test_legalizing_in_place_writes_the_same_program(module):
    torch.manual_seed(0)
    model, args = MODULES[module]()
    model.eval()
    assert _program_bytes(model, args, toolchain("legalize-in-place")) == _program_bytes(model, args)


def test_legalized_in_place_restores_the_originals():
    from executorch.exir import lowered_backend_module as lbm
    from executorch.exir.backend import backend_api

    originals = (lbm.legalize_graph, backend_api._create_partitions_in_graph_module)
    with toolchain("legalize-in-place")():
        assert lbm.legalize_graph is _legalize_in_place
        assert backend_api._create_partitions_in_graph_module is not originals[1]
    assert (lbm.legalize_graph, backend_api._create_partitions_in_graph_module) == originals


@pytest.mark.parametrize("module", sorted(MODULES))
def test_merge_check_by_sets_writes_the_same_program(module):
    torch.manual_seed(0)
    model, args = MODULES[module]()
    model.eval()
    assert _program_bytes(model, args, toolchain("merge-check-by-sets")) == _program_bytes(model, args)


def _gemma_shaped_edge() -> object:
    """The edge program of a graph that splits (``GemmaShapedOps`` without the rewrites)."""
    from executorch.backends.xnnpack.utils.configs import get_xnnpack_edge_compile_config
    from executorch.exir import to_edge

    model, args = MODULES["gemma-shaped"]()
    return to_edge(torch.export.export(model.eval(), args), compile_config=get_xnnpack_edge_compile_config())


def test_merge_check_by_sets_answers_as_upstream_for_every_pair():
    """Both checks on every pair of the group partitioner's initial partitions of a real graph: the patched one
    over the bitsets, ExecuTorch's own over its sets; and the originals restored afterwards."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir.backend.canonical_partitioners import group_partitioner

    cls = group_partitioner.GroupBasedPartitioner
    original, sets_viewer = cls._can_merge_partitions, group_partitioner._DependencyViewer
    edge = _gemma_shaped_edge()
    seen: list[tuple[bool, bool]] = []
    pre_checks: list[bool] = []

    def both(self, p1, p2, partitions_by_id):  # type: ignore[no-untyped-def]
        bits = self.dependency_viewer
        assert isinstance(bits, _BitsetDependencyViewer)
        sets = sets_viewer(self.graph_module)
        self.dependency_viewer = sets
        upstream = original(self, p1, p2, partitions_by_id)
        self.dependency_viewer = bits
        seen.append((upstream, _can_merge_partitions(self, p1, p2, partitions_by_id)))
        # the pre-checks themselves (validate_partition, the final check of both, would hide a missed overlap)
        first, second = partitions_by_id[p1], partitions_by_id[p2]
        for partition in (first, second):
            assert bits._members(bits.mask(partition)) == set(partition.nodes)
        combined = set(first.nodes) | set(second.nodes)
        pair = bits.mask(first) | bits.mask(second)
        for user in {u for n in combined for u in n.users if u not in combined}:
            overlap = any(n in combined for n in sets.downstreams_of(user))
            assert bool(bits.downstream_bits(user) & pair) == overlap, user
            pre_checks.append(overlap)
        return upstream

    with toolchain("merge-check-by-sets")():
        assert cls._can_merge_partitions is _can_merge_partitions
        assert group_partitioner._DependencyViewer is _BitsetDependencyViewer
        cls._can_merge_partitions = both
        try:
            XnnpackPartitioner().partition(edge.exported_program())
        finally:  # the patch's own function back, so the engine's revert finds what it installed
            cls._can_merge_partitions = _can_merge_partitions
    assert len(seen) > 3 and {a for a, _ in seen} == {True, False}, seen  # both answers occur
    assert all(a == b for a, b in seen)
    assert set(pre_checks) == {True, False}  # users that lead back into the pair, and users that do not
    assert (cls._can_merge_partitions, group_partitioner._DependencyViewer) == (original, sets_viewer)


def test_the_bitset_viewer_holds_upstream_s_relation():
    """Every node's downstream and upstream nodes, from the bitsets, are ExecuTorch's sets."""
    from executorch.exir.backend.canonical_partitioners.group_partitioner import _DependencyViewer

    module = _gemma_shaped_edge().exported_program().graph_module
    sets, bits = _DependencyViewer(module), _BitsetDependencyViewer(module)
    nodes = list(module.graph.nodes)
    assert sum(len(sets.downstreams_of(n)) for n in nodes) > len(nodes)  # a relation with something in it
    for node in nodes:
        assert bits.downstreams_of(node) == sets.downstreams_of(node), node
        assert bits.upstreams_of(node) == sets.upstreams_of(node), node


def _require_preprocess_copy() -> None:
    """Skip where the registry does not apply ``constants-shared-in-preprocess`` (ExecuTorch before 1.5 copies
    partitions inline: not needed), with the status's reason."""
    (status,) = assess([constants_shared_in_preprocess.PATCH.id])
    if status.state.value != "ready":
        pytest.skip(f"constants-shared-in-preprocess does not apply here: {status.reason}")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_constants_shared_in_preprocess_writes_the_same_program(module):
    torch.manual_seed(0)
    model, args = MODULES[module]()
    model.eval()
    _require_preprocess_copy()
    assert _program_bytes(model, args, toolchain("constants-shared-in-preprocess")) == _program_bytes(model, args)


@pytest.mark.parametrize("module", ["conv-norm", "gemma-shaped"])  # the graphs with weights
def test_the_shared_weights_are_unchanged_by_lowering(module, monkeypatch):
    """Sharing is safe only if XNNPACK's preprocess never writes the tensors it now shares: every tensor a
    partition's copy shared keeps its values and its version counter through a real lowering."""
    _require_preprocess_copy()
    shared: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    copy = constants_shared_in_preprocess._copy_sharing_constants

    def noted(cls, edge_program, compile_specs):  # type: ignore[no-untyped-def]  # the real copy, after a note
        for t in (*edge_program.state_dict.values(), *edge_program.constants.values()):
            if isinstance(t, torch.Tensor):
                shared.append((t, t.detach().clone(), t._version))
        return copy(cls, edge_program, compile_specs)

    monkeypatch.setattr(constants_shared_in_preprocess, "_copy_sharing_constants", noted)
    torch.manual_seed(0)
    model, args = MODULES[module]()
    _program_bytes(model.eval(), args, toolchain("constants-shared-in-preprocess"))
    assert shared, "no partition's copy shared a tensor"
    for tensor, before, version in shared:
        assert tensor._version == version and torch.equal(tensor, before)


def test_the_preprocess_copy_shares_the_weights_and_only_while_patched():
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    _require_preprocess_copy()
    program = _gemma_shaped_edge().exported_program()
    weights = [name for name, t in program.state_dict.items() if t.numel() > 1]
    assert weights
    copied = XnnpackBackend.copy_exported_program_for_preprocess(program, [])
    assert all(copied.state_dict[n] is not program.state_dict[n] for n in weights)  # upstream: a copy of each
    with toolchain("constants-shared-in-preprocess")():
        shared = XnnpackBackend.copy_exported_program_for_preprocess(program, [])
    assert all(shared.state_dict[n] is program.state_dict[n] for n in weights)
    assert shared.graph_module is not program.graph_module and shared.state_dict is not program.state_dict
    assert "copy_exported_program_for_preprocess" not in vars(XnnpackBackend)  # restored: inherited again
