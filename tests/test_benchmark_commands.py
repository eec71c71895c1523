"""Smoke test of benchmarks/benchmark_commands.py: one round on a tiny model must time every command as a whole
process and score the labels it prints. Timings of a tiny model mean nothing; what is checked is the shape of the
results and that every command answered every review.

    python -m pytest tests/test_benchmark_commands.py -q
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from test_benchmark_deploy import save_model_and_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchmark_commands  # noqa: E402


def test_one_round_times_every_command_and_scores_its_labels(tmp_path, capsys):
    folder, data_dir = save_model_and_data(tmp_path)
    output = tmp_path / "commands.json"
    argv = ["--model", folder, "--data_dir", data_dir, "--output", str(output), "--rounds", "1",
            "--setting", "1@0.6", "--max_examples", "10"]
    benchmark_commands.main(argv)
    results = json.loads(output.read_text())
    assert results["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert results["setting"] == "patience 1, confidence >= 0.6" and results["dev_examples"] == 10
    assert set(results["startup"]) == {"classify, onnx int8", "runner, onnx int8", "classify, torch fp32"}
    assert set(results["dev_file"]) == {"torch fp32", "onnx fp32", "onnx int8"}
    for entry in [*results["startup"].values(), *results["dev_file"].values()]:
        assert len(entry["seconds_raw"]) == 1 and entry["seconds_median"] > 0
    # fp32 on ONNX Runtime answers as torch does, so its labels score the same
    assert results["dev_file"]["onnx fp32"]["accuracy"] == results["dev_file"]["torch fp32"]["accuracy"]
    assert results["dev_file"]["torch fp32"]["speedup_over_torch_fp32"] == 1.0
    assert "torch capability" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="exists: results are kept"):
        benchmark_commands.main(argv)
