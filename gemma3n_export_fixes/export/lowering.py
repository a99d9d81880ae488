"""XNNPACK lowering for the export tool: the graph rewrites, then ExecuTorch's partitioner, with five shortcuts.

The shortcuts are reversible patches on ExecuTorch, active only while ``export`` lowers, only where its source
still reads the way they were written for, and the program comes out byte for byte the same
(``GEMMA3N_EXPORT_FIXES_LOWERING_SHORTCUTS=0`` turns them off; ``benchmarks/lowering.py`` compares):

- :func:`validate_once`: ExecuTorch (1.5.1 and earlier) copies every constant that two partitions share and,
  after each copy, runs ``ExportedProgram._validate()`` on the whole program (``duplicate_constant_node``): one
  full EXIR verification per copied constant per partition (on E2B, thousands of validations of a 10k-node
  graph: the lowering ran for hours). ``to_backend`` validates the tagged program again once every partition is
  lowered, so nothing goes unchecked. Upstream record: ``upstream_prs/executorch/validate-once.md``.
- :func:`legalized_in_place`: after cutting out each partition, ExecuTorch topologically sorts the whole
  top-level graph with torch's ``legalize_graph``, which copies every node into a new graph and recompiles its
  Python code: work per partition proportional to the whole graph (on E4B, 93.5% of the lowering). The patch
  puts the nodes in the very order ``legalize_graph`` would, in place (same node names, users and lookup
  order), and recompiles once, when ExecuTorch's partitioning function returns. Upstream record:
  ``upstream_prs/executorch/legalize-in-place.md``.
- :func:`merge_check_by_sets`: XNNPACK's group partitioner tries to merge every pair of partitions, and for
  each external user of a pair it scans that user's whole transitive downstream set in Python (``any(n in
  combined for n in downstream)``); on E2B that scan was the lowering for minutes at a time. And it keeps every
  node's transitive downstream and upstream nodes as sets (N^2 entries: 3.5 GB on E2B). The patch keeps them as
  bits (one Python int a node) and asks the same question with one ``&``: the same answer for every pair.
  Upstream record: ``upstream_prs/executorch/merge-check-by-sets.md``.
- :func:`idle_passes_skipped`: seven of the 17 passes XNNPACK runs on every partition look for ops or op
  patterns Gemma 3n's decoder does not have (batch norm, PReLU, convolution, dim-order copies, the decomposed
  SDPA and bilinear-upsample patterns) and then retrace the whole partition anyway. Upstream record:
  ``upstream_prs/executorch/idle-passes.md``.
- :func:`constants_shared_in_preprocess`: ExecuTorch 1.5.1 deep-copies every partition's program, weights
  included, before XNNPACK preprocesses the first; the copies share the weights instead (memory, not time).
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any


def _no_validation() -> None:
    pass


def validate_once_applies() -> bool:
    """True when ExecuTorch validates after each duplicated constant and again after lowering (so skipping the
    first kind loses no check)."""
    try:
        from executorch.exir.backend import backend_api
        from executorch.exir.backend import utils as backend_utils
        from executorch.exir.backend.canonical_partitioners import duplicate_constant_node_pass as dup
    except ImportError:
        return False
    return (
        getattr(backend_utils, "duplicate_constant_node", None) is dup.duplicate_constant_node
        and "exported_program._validate()" in inspect.getsource(dup.duplicate_constant_node)
        and "tagged_exported_program._validate()" in inspect.getsource(backend_api)
    )


@contextmanager
def validate_once() -> Iterator[bool]:
    """While active, ``duplicate_constant_node`` does not re-validate the program; yields whether it patched."""
    if not validate_once_applies():
        yield False
        return
    from executorch.exir.backend import utils as backend_utils

    original = backend_utils.duplicate_constant_node

    def duplicate_constant_node(exported_program: Any, candidate_node: str) -> Any:
        exported_program._validate = _no_validation  # the instance attribute shadows the method for this call
        try:
            return original(exported_program, candidate_node)
        finally:
            del exported_program._validate

    backend_utils.duplicate_constant_node = duplicate_constant_node
    try:
        yield True
    finally:
        backend_utils.duplicate_constant_node = original


def _legalize_order(graph: Any) -> list[Any]:
    """The node order torch's ``legalize_graph`` produces (Kahn's algorithm with the prioritized ops in front,
    the same queue discipline, the same iteration order over nodes and users)."""
    prioritized = _prioritized_ops()
    indeg = dict.fromkeys(graph.nodes, 0)
    for node in graph.nodes:
        for user in node.users:
            indeg[user] += 1
    queue = collections.deque(node for node in graph.nodes if indeg[node] == 0)
    order = []
    while queue:
        cur = queue.popleft()
        order.append(cur)
        for user in cur.users:
            indeg[user] -= 1
            if indeg[user] == 0:
                if user.op == "call_function" and user.target in prioritized:
                    queue.appendleft(user)
                else:
                    queue.append(user)
    if len(order) < len(indeg):
        raise RuntimeError(f"Input graph has cycles, unable to add {[n for n in indeg if indeg[n] != 0]}")
    return order


#: ``legalize_graph``'s ``PRIORITIZED_OPS`` (a local of that function), as written in its source:
#: :func:`_prioritized_ops` resolves these names and :func:`legalize_in_place_applies` checks that the source
#: still lists exactly them, in this order.
_PRIORITIZED_NAMES = (
    "operator.add", "operator.mul", "operator.sub", "operator.floordiv", "operator.truediv", "operator.mod",
    "operator.le", "operator.lt", "operator.ge", "operator.gt", "operator.eq", "operator.ne",
    "torch.ops.aten.sym_constrain_range.default", "torch.ops.aten.sym_constrain_range_for_size.default",
    "torch.ops.aten._assert_async.msg", "torch.ops.aten.scalar_tensor.default",
    "torch.ops.aten._assert_scalar.default",
)  # fmt: skip


def _prioritized_ops() -> list[Any]:
    """The objects :data:`_PRIORITIZED_NAMES` names, in its order."""
    import operator

    import torch

    roots = {"operator": operator, "torch": torch}
    ops = []
    for name in _PRIORITIZED_NAMES:
        root, *attrs = name.split(".")
        obj = roots[root]
        for attr in attrs:
            obj = getattr(obj, attr)
        ops.append(obj)
    return ops


def legalize_in_place_applies() -> bool:
    """True when ExecuTorch's ``create_submodule_from_nodes`` calls torch's ``legalize_graph`` and that function
    still reads the way :func:`_legalize_order` and :func:`_legalize_in_place` reproduce it."""
    try:
        import torch.fx.graph as fx_graph
        from executorch.exir import lowered_backend_module as lbm
        from executorch.exir.backend import backend_api
        from torch.fx.passes import tools_common
    except ImportError:
        return False
    if getattr(lbm, "legalize_graph", None) is not tools_common.legalize_graph:
        return False
    body = " ".join(inspect.getsource(tools_common.legalize_graph).split())
    needed = (
        ", ".join(_PRIORITIZED_NAMES) + ",",
        "indeg = dict.fromkeys(gm.graph.nodes, 0) new_graph = torch.fx.Graph()",
        "for node in gm.graph.nodes: for user in node.users: indeg[user] += 1",
        "env[cur] = new_graph.node_copy(cur, lambda x: env[x]) for user in cur.users: indeg[user] -= 1",
        "new_graph._codegen = gm.graph._codegen gm.graph = new_graph return gm",
    )
    return (
        all(text in body for text in needed)
        and "legalize_graph(gm)" in inspect.getsource(lbm.create_submodule_from_nodes)
        and all(hasattr(backend_api, name) for name in _PARTITIONING_FUNCTIONS)
        and hasattr(fx_graph, "_Namespace")
        and hasattr(fx_graph, "_FindNodesLookupTable")
    )


#: The functions of ``backend_api`` that cut partitions out of a graph module (its first argument); the
#: graph modules they legalized are recompiled when they return.
_PARTITIONING_FUNCTIONS = ("_partition_and_lower_one_graph_module", "_create_partitions_in_graph_module")


def _legalize_in_place(gm: Any) -> Any:
    """``legalize_graph(gm)`` without the copy: the nodes move into :func:`_legalize_order`, each node's users
    are reordered the way a copy in that order inserts them, and the name space and the ``find_nodes`` table are
    rebuilt in that order (as a new graph's are), so later node names and every later order come out the same.
    The Python code is not recompiled here (the caller recompiles once)."""
    import torch.fx.graph as fx_graph

    graph = gm.graph
    order = _legalize_order(graph)
    position = {node: i for i, node in enumerate(order)}
    root = graph._root
    namespace = fx_graph._Namespace()
    table = fx_graph._FindNodesLookupTable()
    for node in order:
        root.prepend(node)  # to the end of the list: the nodes end up in ``order``
        node.users = dict(sorted(node.users.items(), key=lambda item: position[item[0]]))
        namespace.associate_name_with_obj(namespace.create_name(node.name, None), node)
        table.insert(node)
    graph._graph_namespace = namespace
    graph._find_nodes_lookup_table = table
    return gm


@contextmanager
def legalized_in_place() -> Iterator[bool]:
    """While active, ExecuTorch's per-partition ``legalize_graph`` is :func:`_legalize_in_place`, and each graph
    module it sorted is recompiled when the partitioning function of ``backend_api`` returns (or fails);
    yields whether it patched."""
    if not legalize_in_place_applies():
        yield False
        return
    from executorch.exir import lowered_backend_module as lbm
    from executorch.exir.backend import backend_api

    original = lbm.legalize_graph
    originals = {name: getattr(backend_api, name) for name in _PARTITIONING_FUNCTIONS}

    def recompiled_after(function: Callable[..., Any]) -> Callable[..., Any]:
        def partition(graph_module: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return function(graph_module, *args, **kwargs)
            finally:
                graph_module.recompile()

        return partition

    lbm.legalize_graph = _legalize_in_place
    for name, function in originals.items():
        setattr(backend_api, name, recompiled_after(function))
    try:
        yield True
    finally:
        lbm.legalize_graph = original
        for name, function in originals.items():
            setattr(backend_api, name, function)


_MERGE_CHECK_SOURCE = (
    "p1_nodes = set(partitions_by_id[p1].nodes.keys())",
    "p2_nodes = set(partitions_by_id[p2].nodes.keys())",
    "combined_nodes = p1_nodes.union(p2_nodes)",
    "for node in combined_nodes: for user in node.users: if user not in combined_nodes: user_nodes.append(user)",
    "for external_node in user_nodes: # Check if any external downstream nodes have downstream nodes in the "
    "combined partition downstream_nodes = self.dependency_viewer.downstreams_of(external_node) "
    "if any(n in combined_nodes for n in downstream_nodes): return False",
    "if not validate_partition(list(combined_nodes)): return False return True",
)


_VIEWER_SOURCE = (
    "self.downstreams = collections.defaultdict(set)",
    "self.downstreams[node].update(self.downstreams[output_node])",
    "self.upstreams[node].update(self.upstreams[input_node])",
    "self.dependency_viewer = _DependencyViewer(graph_module)",
)


def merge_check_by_sets_applies() -> bool:
    """True when ExecuTorch's ``GroupBasedPartitioner._can_merge_partitions`` still reads the way
    :func:`_can_merge_partitions` reproduces it, over a dependency viewer that keeps sets."""
    try:
        from executorch.exir.backend.canonical_partitioners import group_partitioner
    except ImportError:
        return False
    cls = getattr(group_partitioner, "GroupBasedPartitioner", None)
    viewer = getattr(group_partitioner, "_DependencyViewer", None)
    if cls is None or viewer is None or "_can_merge_partitions" not in vars(cls):
        return False
    body = " ".join(inspect.getsource(cls._can_merge_partitions).split())
    viewer_source = inspect.getsource(viewer) + inspect.getsource(cls.__init__)  # the viewer, and where it is built
    return all(" ".join(text.split()) in body for text in _MERGE_CHECK_SOURCE) and all(
        text in viewer_source for text in _VIEWER_SOURCE
    )


class _BitsetDependencyViewer:
    """``group_partitioner._DependencyViewer`` with each node's transitive downstream and upstream nodes as the
    bits of one Python int (bit ``i``: the graph's ``i``-th node) instead of a set of nodes: the same relation in
    N bits a node instead of up to N set entries. On E2B's KV program the sets took 3.5 GB for the 20 s the
    partitioner held them (E2B 8da8w + 8w, 2026-12-06: 12.9 GB, the lowering's peak; that export peaked at
    13.9 GB, in Dynamo); ``downstreams_of`` and ``upstreams_of`` still answer with sets, for any other caller."""

    def __init__(self, graph_module: Any) -> None:
        self._nodes = list(graph_module.graph.nodes)
        self._index = {node: i for i, node in enumerate(self._nodes)}
        self._down = self._closure(reversed(self._nodes), lambda node: node.users)
        self._up: dict[Any, int] | None = None
        self._masks: dict[tuple[int, int], int] = {}

    def _closure(self, order: Any, neighbours: Callable[[Any], Any]) -> dict[Any, int]:
        closure: dict[Any, int] = {}
        for node in order:
            bits = 0
            for other in neighbours(node):
                bits |= (1 << self._index[other]) | closure.get(other, 0)
            closure[node] = bits
        return closure

    def _members(self, bits: int) -> set[Any]:
        found = set()
        while bits:
            low = bits & -bits
            found.add(self._nodes[low.bit_length() - 1])
            bits ^= low
        return found

    def downstream_bits(self, node: Any) -> int:
        return self._down.get(node, 0)

    def mask(self, partition: Any) -> int:
        """The bits of ``partition``'s nodes (cached while its node count stays the same: merging only adds)."""
        key = (partition.id, len(partition.nodes))
        if key not in self._masks:
            buffer = bytearray(len(self._nodes) // 8 + 1)
            for node in partition.nodes:
                i = self._index[node]
                buffer[i >> 3] |= 1 << (i & 7)
            self._masks[key] = int.from_bytes(buffer, "little")
        return self._masks[key]

    def downstreams_of(self, node: Any) -> set[Any]:
        return self._members(self._down.get(node, 0))

    def upstreams_of(self, node: Any) -> set[Any]:
        if self._up is None:
            self._up = self._closure(self._nodes, lambda node: node.all_input_nodes)
        return self._members(self._up.get(node, 0))


def _can_merge_partitions(self: Any, p1: Any, p2: Any, partitions_by_id: Any) -> bool:
    """``GroupBasedPartitioner._can_merge_partitions`` over :class:`_BitsetDependencyViewer`: no external user
    of the merged pair may lead back into it (its downstream bits and the pair's bits are disjoint), and the pair
    must pass ``validate_partition``."""
    from torch.fx.passes.utils.fuser_utils import validate_partition

    viewer = self.dependency_viewer
    first, second = partitions_by_id[p1], partitions_by_id[p2]
    combined_nodes = set(first.nodes.keys()).union(set(second.nodes.keys()))
    combined = viewer.mask(first) | viewer.mask(second)
    for node in combined_nodes:
        for user in node.users:
            if user not in combined_nodes and viewer.downstream_bits(user) & combined:
                return False
    return bool(validate_partition(list(combined_nodes)))


@contextmanager
def merge_check_by_sets() -> Iterator[bool]:
    """While active, ``GroupBasedPartitioner`` keeps its dependencies in :class:`_BitsetDependencyViewer` and
    checks a merge with :func:`_can_merge_partitions`; yields whether it patched."""
    if not merge_check_by_sets_applies():
        yield False
        return
    from executorch.exir.backend.canonical_partitioners import group_partitioner

    cls = group_partitioner.GroupBasedPartitioner
    originals = vars(cls)["_can_merge_partitions"], group_partitioner._DependencyViewer
    cls._can_merge_partitions = _can_merge_partitions
    group_partitioner._DependencyViewer = _BitsetDependencyViewer
    try:
        yield True
    finally:
        cls._can_merge_partitions, group_partitioner._DependencyViewer = originals


HasWork = Callable[[frozenset[Any]], bool]


def _targets(graph: Any) -> frozenset[Any]:
    return frozenset(node.target for node in graph.nodes if node.op == "call_function")


def _any_op(ops: frozenset[Any]) -> HasWork:
    return lambda present: bool(ops & present)


def _any_pattern(patterns: Callable[[], Any]) -> HasWork:
    """A pattern can match (``SubgraphMatcher`` compares call targets one to one) only where every op it is made
    of is present: the patterns' op sets, computed on first use."""
    sets: list[frozenset[Any]] = []

    def has_work(present: frozenset[Any]) -> bool:
        if not sets:
            sets.extend(_targets(pattern.graph) for pattern in patterns())
        return any(needed <= present for needed in sets)

    return has_work


def _idle_passes() -> dict[type, HasWork]:
    """XNNPACK passes that look for ops or op patterns Gemma 3n's decoder does not have, then retrace the whole
    partition (``ExportPass.call``, with fake tensors and symbolic shapes) whether or not they found one:
    pass -> whether a partition (its set of call targets) gives it work. Only those whose source still reads
    the way this was written for (the search, then the retrace)."""
    from executorch.backends.xnnpack._passes import (
        conv1d_unsqueeze_pass,
        convert_to_sdpa,
        convert_to_upsample_bilinear2d,
        decompose_batch_norm,
        fuse_batch_norm,
        prelu_reshape_pass,
    )
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.passes import memory_format_ops_pass

    edge = exir_ops.edge.aten
    batch_norm = frozenset({edge.native_batch_norm.default, edge._native_batch_norm_legit_no_training.default})
    matcher = "SubgraphMatcher(pattern.graph, ignore_literals=True)"
    table: dict[type, tuple[HasWork, tuple[str, ...]]] = {
        decompose_batch_norm.DecomposeBatchNorm: (_any_op(batch_norm), ("node.target in self.BATCH_NORM_OPS",)),
        fuse_batch_norm.FuseBatchNormPass: (
            _any_op(batch_norm),
            ("bn.target != exir_ops.edge.aten.native_batch_norm",),
        ),
        prelu_reshape_pass.PReLUReshapePass: (
            _any_op(frozenset({edge._prelu_kernel.default})),
            ("node.target == exir_ops.edge.aten._prelu_kernel.default",),
        ),
        conv1d_unsqueeze_pass.Conv1dUnsqueezePass: (
            _any_op(frozenset({edge.convolution.default})),
            ('node.target.__name__ == "aten.convolution.default"',),
        ),
        convert_to_sdpa.ConvertToSDPAPass: (
            _any_pattern(sdpa.get_graphs),
            ("for pattern in sdpa.get_graphs():", matcher),
        ),
        convert_to_upsample_bilinear2d.ConvertToUpsampleBilinear2d: (
            _any_pattern(bilinear_2d.get_graphs),
            ("in bilinear_2d.get_graphs_dict().items():", matcher),
        ),
    }
    found = {
        cls: has_work
        for cls, (has_work, texts) in table.items()
        if all(text in inspect.getsource(cls.call) for text in texts)
    }
    revert = memory_format_ops_pass.DimOrderOpsRevertPass
    if "call" not in vars(revert) and "op in MemoryFormatOpsMap" in inspect.getsource(revert.call_operator):
        found[revert] = _any_op(frozenset(memory_format_ops_pass.MemoryFormatOpsMap))  # rewrites those ops only
    return found


@contextmanager
def idle_passes_skipped() -> Iterator[int]:
    """While active, the passes of :func:`_idle_passes` return a partition unchanged (``modified=False``) when
    it gives them no work, instead of retracing it; yields how many passes it guards. The pass manager still
    checks the program before and after each pass. Evidence that nothing changes: ``tests/test_lowering.py``
    (the same ``.pte`` bytes with and without, on graphs with and without those ops) and
    ``benchmarks/lowering.py`` (the tiny programs, by sha256)."""
    try:
        guarded = _idle_passes()
    except ImportError:
        yield 0
        return
    from torch.fx.passes.infra.pass_base import PassResult

    originals = {cls: vars(cls).get("call") for cls in guarded}

    def guard(cls: type, has_work: HasWork) -> Any:
        call = cls.call

        def idle_or_call(self: Any, graph_module: Any) -> Any:
            if not has_work(_targets(graph_module.graph)):
                return PassResult(graph_module, False)
            return call(self, graph_module)

        return idle_or_call

    for cls, has_work in guarded.items():
        cls.call = guard(cls, has_work)
    try:
        yield len(guarded)
    finally:
        for cls, original in originals.items():
            if original is None:
                del cls.call
            else:
                cls.call = original


_COPY_SOURCE = "return copy.deepcopy(edge_program)"


def constants_shared_in_preprocess_applies() -> bool:
    """True where ExecuTorch copies every partition's program for preprocessing through
    ``BackendDetails.copy_exported_program_for_preprocess`` (1.5.1) with a plain deep copy that XNNPACK does not
    override (1.4.1 and older deep-copy inline: not patched)."""
    try:
        from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
        from executorch.exir.backend.backend_details import BackendDetails
    except ImportError:
        return False
    copier = vars(BackendDetails).get("copy_exported_program_for_preprocess")
    return (
        copier is not None
        and "copy_exported_program_for_preprocess" not in vars(XnnpackBackend)
        and _COPY_SOURCE in inspect.getsource(copier.__func__)
    )


def _copy_sharing_constants(cls: type, edge_program: Any, compile_specs: Any) -> Any:
    """The program's deep copy, with its parameters, buffers and constants shared instead of copied (preprocess
    reads them and writes its own: the serialized weights)."""
    import copy

    import torch

    tensors = [*edge_program.state_dict.values(), *edge_program.constants.values()]
    return copy.deepcopy(edge_program, {id(t): t for t in tensors if isinstance(t, torch.Tensor)})


@contextmanager
def constants_shared_in_preprocess() -> Iterator[bool]:
    """While active, XNNPACK's copy of each partition for preprocessing shares the partition's weights
    (:func:`_copy_sharing_constants`); yields whether it patched.

    ExecuTorch 1.5.1 copies every partition's program before it preprocesses the first
    (``lower_all_submodules_to_backend``), so for the whole preprocessing the process holds every delegated weight
    twice: on E2B's KV program 8da4w + 4w, 6.2 -> 8.9 GB at its start, 10.8 GB at its end (1 s RSS samples; 11.1 GB
    max RSS, the export's peak; 2026-12-06, py-spy dumps). Upstream record:
    ``upstream_prs/executorch/constants-shared-in-preprocess.md``."""
    if not constants_shared_in_preprocess_applies():
        yield False
        return
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    XnnpackBackend.copy_exported_program_for_preprocess = classmethod(_copy_sharing_constants)
    try:
        yield True
    finally:
        del XnnpackBackend.copy_exported_program_for_preprocess


def delegate_count(edge: Any) -> int:
    """How many XNNPACK partitions the lowered program holds, over all its methods."""
    from executorch.exir.delegate import executorch_call_delegate

    return sum(
        1
        for name in edge.methods
        for node in edge.exported_program(name).graph.nodes
        if node.target is executorch_call_delegate
    )


def lower_to_xnnpack(
    exported: Any, constant_methods: dict[str, Any] | None = None, forms: bool = True, shortcuts: bool = True
) -> tuple[Any, dict[str, Any]]:
    """``to_edge_transform_and_lower`` with ``XnnpackPartitioner`` after :class:`XnnpackForms` (``forms``),
    validated once, with the fixes of :mod:`~gemma3n_export_fixes.export.executorch_backports` the installed
    ExecuTorch lacks; returns the edge program manager and what the lowering did (for the export record)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from gemma3n_export_fixes.export.executorch_backports import preserved_ops_in_config
    from gemma3n_export_fixes.export.xnnpack_forms import XnnpackForms

    with ExitStack() as stack:
        backported = stack.enter_context(preserved_ops_in_config())
        validated_once = stack.enter_context(validate_once()) if shortcuts else False
        guarded = stack.enter_context(idle_passes_skipped()) if shortcuts else 0
        in_place = stack.enter_context(legalized_in_place()) if shortcuts else False
        by_sets = stack.enter_context(merge_check_by_sets()) if shortcuts else False
        shared = stack.enter_context(constants_shared_in_preprocess()) if shortcuts else False
        edge = to_edge_transform_and_lower(
            exported,
            transform_passes=[XnnpackForms()] if forms else None,
            partitioner=[XnnpackPartitioner()],
            constant_methods=constant_methods or None,
        )
    done = {
        "xnnpack_forms": forms,
        "validate_once": validated_once,
        "idle_passes_skipped": guarded,
        "legalized_in_place": in_place,
        "merge_check_by_sets": by_sets,
        "constants_shared_in_preprocess": shared,
        "backports": ["executorch#17404"] if backported else [],
    }
    return edge, {**done, "partitions": delegate_count(edge)}
