"""legalize-in-place: ExecuTorch re-sorts a copy of the whole graph after cutting out each partition (shortcut).

After cutting out each partition, ExecuTorch topologically sorts the whole top-level graph with torch's
``legalize_graph``, which copies every node into a new graph and recompiles its Python code: work per partition
proportional to the whole graph (on E4B, 93.5% of the lowering). The patch puts the nodes in the very order
``legalize_graph`` would, in place (same node names, users and lookup order), and recompiles once, when
ExecuTorch's partitioning function returns.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.patch import Function, Kind, Patch, Scope, Target

LOWERED = "executorch.exir.lowered_backend_module"
BACKEND_API = "executorch.exir.backend.backend_api"
FX_GRAPH = "torch.fx.graph"
#: The functions of ``backend_api`` that cut partitions out of a graph module (its first argument); the graph
#: modules they legalized are recompiled when they return.
PARTITIONING_FUNCTIONS = ("_partition_and_lower_one_graph_module", "_create_partitions_in_graph_module")


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


#: ``legalize_graph``'s ``PRIORITIZED_OPS`` (a local of that function), as written in its source (its
#: fingerprint is a target: a change to the list is drift).
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


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    def recompiled_after(function: Callable[..., Any]) -> Callable[..., Any]:
        def partition(graph_module: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return function(graph_module, *args, **kwargs)
            finally:
                graph_module.recompile()

        partition.__doc__ = function.__doc__
        return partition

    return {"legalize_graph": _legalize_in_place} | {
        name: recompiled_after(originals[name]) for name in PARTITIONING_FUNCTIONS
    }


PATCH = Patch(
    id="legalize-in-place",
    title="per-partition legalize_graph in place, one recompile per partitioning call",
    defect=(
        "after cutting out each partition, ExecuTorch copies and re-sorts the whole graph (torch's legalize_graph) "
        "and recompiles it: on E4B 93.5% of the lowering"
    ),
    needed_on=SpecifierSet(">=1.0"),
    verified_through="1.5.1",
    targets=(
        # torch's legalize_graph, as ExecuTorch imported it:
        Target("legalize_graph", {"400c74c5c1b18f50": "torch 2.13.0"}),
        Target(
            "create_submodule_from_nodes",
            {"e49917b9cb8cef70": "1.0.1 - 1.4.1", "9ed341e3c802c59b": "1.5.1"},
            replaced=False,
        ),
        Target(PARTITIONING_FUNCTIONS[0], {"f1bfeaed539d0213": "1.0.1 - 1.5.1"}, module=BACKEND_API),
        Target(PARTITIONING_FUNCTIONS[1], {"56003a20407ff0b6": "1.0.1 - 1.5.1"}, module=BACKEND_API),
        Target("_Namespace.create_name", {"a47178a235cf8652": "torch 2.13.0"}, replaced=False, module=FX_GRAPH),
        Target(
            "_Namespace.associate_name_with_obj", {"75ae688531c1a4e7": "torch 2.13.0"}, replaced=False, module=FX_GRAPH
        ),
        Target("_FindNodesLookupTable.insert", {"2f720dbf4b983f29": "torch 2.13.0"}, replaced=False, module=FX_GRAPH),
    ),
    build=build,
    module=LOWERED,
    distribution="executorch",
    scope=Scope.EXPORT,
    kind=Kind.SHORTCUT,
    evidence=(
        "benchmarks/lowering.py (seconds with and without); tests/test_lowering.py: legalize_graph's node order, "
        "names and users, and the same program bytes"
    ),
    upstream="open; record upstream_prs/executorch/legalize-in-place.md",
)
