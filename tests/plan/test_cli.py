import json

import pytest

from fastrlhf.cli import main

SMALL = ["plan", "--algo", "grpo", "--actor", "qwen2.5-0.5b", "--cluster", "1x4xA100-40G",
         "--batch", "64", "--prompt-len", "64", "--gen-len", "64", "--time-limit", "10",
         "--max-steps", "300"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "p.json"
    assert main(SMALL + ["--out", str(out)]) == 0
    return out


def test_plan_writes_json_and_png(planned, capsys):
    data = json.loads(planned.read_text())
    assert data["format"] == "fastrlhf-plan" and len(data["calls"]) == 4
    assert planned.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in planned.parent.iterdir() if p.name.startswith(".tmp-")]


def test_plan_prints_table_and_baselines(tmp_path, capsys):
    assert main(SMALL + ["--out", str(tmp_path / "x.json")]) == 0
    out = capsys.readouterr().out
    for word in ("actor.generate", "ref.inference", "baseline symmetric", "baseline per_call",
                 "iteration time"):
        assert word in out


def test_simulate_reproduces_and_honours_edits(planned, tmp_path, capsys):
    data = json.loads(planned.read_text())
    assert main(["simulate", str(planned), "--gantt", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    assert f"iteration time {data['iteration_time_s']:.3f} s" in out
    assert (tmp_path / "g.png").exists()
    train = next(c for c in data["calls"] if c["kind"] == "train")
    train["n_micro"] = 1 if train["n_micro"] != 1 else 2  # hand edit
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    assert main(["simulate", str(edited)]) == 0
    assert f"iteration time {data['iteration_time_s']:.3f} s" not in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["--cluster", "2x8xNOPE"], "unknown accelerator"),
    (["--cluster", "2x3xH100"], "power of two"),
    (["--actor", "llama2-70b", "--cluster", "1xA100-40G"], "does not fit"),
    (["--actor", "no-such-model"], "unknown model"),
    (["--batch", "0"], "must all be >= 1"),
])
def test_plan_bad_input_exit_2_and_no_output(tmp_path, capsys, argv, needle):
    out = tmp_path / "p.json"
    assert main(SMALL + argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_simulate_bad_plans_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["simulate", str(bad)]) == 2
    bad.write_text(json.dumps({"format": "fastrlhf-plan"}))
    assert main(["simulate", str(bad)]) == 2
    assert main(["simulate", str(tmp_path / "missing.json")]) == 2
    assert "error" in capsys.readouterr().err


def test_simulate_rejects_plan_over_memory(planned, tmp_path):
    data = json.loads(planned.read_text())
    data["cluster"]["accelerator"]["hbm_bytes"] = 1e9
    over = tmp_path / "over.json"
    over.write_text(json.dumps(data))
    assert main(["simulate", str(over)]) == 2


def test_plan_from_yaml_cluster_and_config_dir(tmp_path, capsys):
    model_dir = tmp_path / "tiny-llama"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        "num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 688,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}))
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("accelerator: cpu\nnodes: 1\ngpus_per_node: 2\n")
    out = tmp_path / "p.json"
    argv = ["plan", "--algo", "grpo", "--actor", str(model_dir), "--cluster", str(cluster),
            "--batch", "8", "--prompt-len", "16", "--gen-len", "16", "--time-limit", "5",
            "--max-steps", "200", "--out", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["models"]["actor"]["hidden"] == 256 and data["cluster"]["gpus_per_node"] == 2
    spans = [t for t in data["timeline"] if t["task"] == "actor.train"]
    assert len(spans) == 1 and spans[0]["end_s"] == pytest.approx(max(t["end_s"] for t in data["timeline"]))
    assert main(["simulate", str(out)]) == 0
    assert "GPU utilisation" in capsys.readouterr().out
