"""merge-check-by-sets: XNNPACK's group partitioner checks each merge by scanning sets, and keeps N^2 of them
(shortcut).

XNNPACK's group partitioner tries to merge every pair of partitions, and for each external user of a pair it scans
that user's whole transitive downstream set in Python (``any(n in combined for n in downstream)``); on E2B that
scan was the lowering for minutes at a time. And it keeps every node's transitive downstream and upstream nodes as
sets (N^2 entries: 3.5 GB on E2B). The patch keeps them as bits (one Python int a node) and asks the same question
with one ``&``: the same answer for every pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.patch import Function, Kind, Patch, Scope, Target

MODULE = "executorch.exir.backend.canonical_partitioners.group_partitioner"
MERGE = "GroupBasedPartitioner._can_merge_partitions"
VIEWER = "_DependencyViewer"


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


def build(originals: Mapping[str, Function]) -> dict[str, Any]:
    return {MERGE: _can_merge_partitions, VIEWER: _BitsetDependencyViewer}


PATCH = Patch(
    id="merge-check-by-sets",
    title="XNNPACK's group partitioner: dependencies as bitsets, the merge check as one &",
    defect=(
        "GroupBasedPartitioner keeps every node's transitive up/downstream nodes as sets (3.5 GB on E2B) and "
        "checks each candidate merge by scanning them in Python (minutes at a time)"
    ),
    needed_on=SpecifierSet(">=1.4"),
    verified_through="1.5.1",
    targets=(
        # 1.0.1 checks p2 only, without validate_partition: another answer, so drift there
        Target(MERGE, {"db5d02d179f6e892": "1.4.1 - 1.5.1"}),
        Target(VIEWER, {"f7e662398388b315": "1.0.1 - 1.5.1"}),
        # where the viewer is built:
        Target("GroupBasedPartitioner.__init__", {"2b774f6d173b896f": "1.0.1 - 1.5.1"}, replaced=False),
    ),
    build=build,
    module=MODULE,
    distribution="executorch",
    scope=Scope.EXPORT,
    kind=Kind.SHORTCUT,
    evidence=(
        "the 8da4w/8da8w export peaks (benchmarks/real_size.py); tests/test_lowering.py: the same answer as "
        "upstream for every pair, the same relation, the same program bytes"
    ),
    upstream="open; record upstream_prs/executorch/merge-check-by-sets.md",
)
