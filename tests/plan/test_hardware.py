import dataclasses

import pytest

from fastrlhf.errors import UserError
from fastrlhf.plan.hardware import (ACCELERATORS, accelerator_from_measurements, cluster_from_dict,
                                    load_cluster, parse_cluster)


def test_parse_cluster_forms():
    c = parse_cluster("2x8xH100")
    assert (c.n_nodes, c.gpus_per_node, c.n_gpus, c.accelerator.name) == (2, 8, 16, "H100")
    c = parse_cluster("4xA100-80G")
    assert (c.n_nodes, c.gpus_per_node, c.accelerator.hbm_bytes) == (1, 4, 80e9)
    c = parse_cluster("l40s")
    assert (c.n_gpus, c.accelerator.name) == (1, "L40S")
    assert c.node_of(0) == 0 and parse_cluster("2x8xH100").node_of(9) == 1


@pytest.mark.parametrize("text", ["", "2x8x", "2x8xTPU9", "0x8xH100", "2x6xH100", "a x b"])
def test_bad_cluster_strings(text):
    with pytest.raises(UserError):
        parse_cluster(text)


def test_datasheet_numbers_and_derived_rates():
    h100 = ACCELERATORS["H100"]
    assert h100.peak_flops == 989e12 and h100.hbm_bw == 3.35e12 and h100.hbm_bytes == 80e9
    assert ACCELERATORS["H200"].hbm_bytes == 141e9 and ACCELERATORS["H200"].hbm_bw == 4.8e12
    assert ACCELERATORS["A100-40G"].hbm_bw == 1.555e12
    assert ACCELERATORS["L40S"].peak_flops == 362e12 and ACCELERATORS["L40S"].hbm_bytes == 48e9
    assert h100.flops == pytest.approx(989e12 * 0.6)
    assert h100.mem_bw == pytest.approx(3.35e12 * 0.8)
    assert h100.link_bw(True) == pytest.approx(450e9 * 0.8)
    assert h100.link_bw(False) == pytest.approx(50e9 * 0.8)


def test_measured_profile_uses_rates_as_given():
    cpu = accelerator_from_measurements("mycpu", flops=2e11, mem_bw=2e10, memory_bytes=8e9)
    assert cpu.flops == 2e11 and cpu.mem_bw == 2e10 and cpu.memory_budget == pytest.approx(6.4e9)


def test_cluster_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("accelerator: {name: H100, hbm_bytes: 40.0e9}\nnodes: 3\ngpus_per_node: 4\n")
    c = load_cluster(str(path))
    assert (c.n_nodes, c.gpus_per_node, c.accelerator.hbm_bytes) == (3, 4, 40e9)
    assert c.accelerator.peak_flops == 989e12
    assert cluster_from_dict({"accelerator": "A100", "nodes": 2}).n_gpus == 16


def test_a_measured_profile_round_trips_through_json():
    import json

    cpu = accelerator_from_measurements("cpu", 1e11, 1e10, 8e9, half_rows_by_bytes=[[2e6, 14], [1.3e8, 40]],
                                        loss_time=3e-9)
    cluster = cluster_from_dict({"accelerator": cpu.name, "nodes": 1, "gpus_per_node": 1})
    data = json.loads(json.dumps({**cluster.to_dict(), "accelerator": dataclasses.asdict(cpu)}))
    back = cluster_from_dict(data).accelerator
    assert back == cpu and back.half_rows_by_bytes == ((2e6, 14.0), (1.3e8, 40.0))


@pytest.mark.parametrize("data", [[1], {"accelerator": 3}, {"accelerator": {"nope": 1}},
                                  {"accelerator": "H100", "nodes": "x"},
                                  {"accelerator": {"name": "cpu", "half_rows_by_bytes": 3}},
                                  {"accelerator": {"name": "cpu", "half_rows_by_bytes": [[1, "x"]]}}])
def test_bad_cluster_mappings(data):
    with pytest.raises(UserError):
        cluster_from_dict(data)


def test_unreadable_cluster_file(tmp_path):
    with pytest.raises(UserError):
        load_cluster(str(tmp_path / "missing.yaml"))
