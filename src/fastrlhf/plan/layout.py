"""Device meshes and 3D parallel layouts (ReaLHF sec. 4.1).

A `Mesh` is a contiguous range of global GPU ids `[start, start + size)`, aligned as ReaLHF allows:
either a power-of-two slice of one node (1, 2, 4, ... GPUs, `start % size == 0`) or a run of whole
nodes. A `Layout` is dp x tp x pp = mesh size with tp inside a node (tp divides GPUs per node),
tp dividing the attention heads (key/value heads are replicated when tp exceeds them) and
pp <= layers. Rank order inside a mesh is Megatron's: tp fastest, then dp, then pp.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastrlhf.plan.hardware import Cluster
from fastrlhf.plan.model_spec import ModelSpec


@dataclass(frozen=True, order=True)
class Mesh:
    start: int
    size: int

    @property
    def gpus(self) -> range:
        return range(self.start, self.start + self.size)

    def nodes(self, gpus_per_node: int) -> range:
        return range(self.start // gpus_per_node, (self.start + self.size - 1) // gpus_per_node + 1)

    def single_node(self, gpus_per_node: int) -> bool:
        return len(self.nodes(gpus_per_node)) == 1

    def overlaps(self, other: "Mesh") -> bool:
        return self.start < other.start + other.size and other.start < self.start + self.size


@dataclass(frozen=True, order=True)
class Layout:
    dp: int
    tp: int
    pp: int

    @property
    def size(self) -> int:
        return self.dp * self.tp * self.pp


def is_valid_mesh(mesh: Mesh, cluster: Cluster) -> bool:
    gpn = cluster.gpus_per_node
    if mesh.size < 1 or mesh.start < 0 or mesh.start + mesh.size > cluster.n_gpus:
        return False
    if mesh.size <= gpn:
        power_of_two = mesh.size & (mesh.size - 1) == 0
        return power_of_two and mesh.start % mesh.size == 0
    return mesh.size % gpn == 0 and mesh.start % gpn == 0


def all_meshes(cluster: Cluster) -> list[Mesh]:
    gpn, meshes = cluster.gpus_per_node, []
    size = 1
    while size <= gpn:
        meshes += [Mesh(start, size) for start in range(0, cluster.n_gpus, size)]
        size *= 2
    for n in range(2, cluster.n_nodes + 1):
        meshes += [Mesh(node * gpn, n * gpn) for node in range(cluster.n_nodes - n + 1)]
    return meshes


def is_valid_layout(layout: Layout, mesh: Mesh, model: ModelSpec, gpus_per_node: int) -> bool:
    tp, heads, kv = layout.tp, model.n_heads, model.n_kv_heads
    return (layout.size == mesh.size and gpus_per_node % tp == 0 and heads % tp == 0
            and (kv % tp == 0 or tp % kv == 0) and layout.pp <= model.n_layers)


def all_layouts(mesh: Mesh, model: ModelSpec, gpus_per_node: int, max_dp: int) -> list[Layout]:
    """Every valid dp x tp x pp for `mesh`, with dp <= max_dp (no DP rank without data)."""
    out = []
    for tp in _divisors(mesh.size):
        for pp in _divisors(mesh.size // tp):
            layout = Layout(mesh.size // (tp * pp), tp, pp)
            if layout.dp <= max_dp and is_valid_layout(layout, mesh, model, gpus_per_node):
                out.append(layout)
    return out


def dp_spans_nodes(mesh: Mesh, layout: Layout, gpus_per_node: int) -> bool:
    """A DP group (stride tp) leaves the node when tp*dp GPUs do not fit in one node."""
    return not mesh.single_node(gpus_per_node) and layout.tp * layout.dp > gpus_per_node


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
