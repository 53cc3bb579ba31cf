from fastrlhf.plan.hardware import ACCELERATORS, make_cluster
from fastrlhf.plan.layout import (Layout, Mesh, all_layouts, all_meshes, dp_spans_nodes,
                                  is_valid_layout, is_valid_mesh)
from fastrlhf.plan.model_spec import PRESETS


def test_meshes_of_two_nodes_of_four():
    cluster = make_cluster(ACCELERATORS["H100"], 2, 4)
    meshes = all_meshes(cluster)
    # 8 singles, 4 pairs, 2 single-node quads, 1 two-node mesh
    assert len(meshes) == 8 + 4 + 2 + 1
    assert Mesh(0, 8) in meshes and Mesh(2, 2) in meshes
    assert not is_valid_mesh(Mesh(1, 2), cluster)  # misaligned
    assert not is_valid_mesh(Mesh(2, 4), cluster)  # straddles nodes
    assert not is_valid_mesh(Mesh(0, 6), cluster)
    assert len(all_meshes(make_cluster(ACCELERATORS["H100"], 3, 8))) == 3 * 15 + 2 + 1


def test_layouts_respect_node_heads_and_batch():
    m = PRESETS["llama2-70b"]  # 64 heads, 8 kv heads, 80 layers
    lays = all_layouts(Mesh(0, 16), m, 8, max_dp=1000)
    assert all(lay.size == 16 and lay.tp <= 8 for lay in lays)
    assert Layout(1, 16, 1) not in lays and Layout(2, 8, 1) in lays
    assert len(lays) == 5 + 4 + 3 + 2  # tp 1,2,4,8 with pp over the divisors of 16/tp
    assert all(lay.dp <= 2 for lay in all_layouts(Mesh(0, 16), m, 8, max_dp=2))
    q = PRESETS["qwen2.5-0.5b"]  # 14 heads: tp 4 impossible
    assert not is_valid_layout(Layout(1, 4, 1), Mesh(0, 4), q, 8)
    assert is_valid_layout(Layout(2, 2, 1), Mesh(0, 4), q, 8)


def test_dp_group_locality():
    assert not dp_spans_nodes(Mesh(0, 16), Layout(1, 8, 2), 8)
    assert dp_spans_nodes(Mesh(0, 16), Layout(2, 8, 1), 8)
    assert not dp_spans_nodes(Mesh(0, 8), Layout(8, 1, 1), 8)
