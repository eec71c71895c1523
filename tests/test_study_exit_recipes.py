"""A tiny run of benchmarks/study_exit_recipes.py, so that the study cannot rot."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fixtures_glue import NUM_LAYERS, save_tiny_model, write_glue_task

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "study_exit_recipes.py"


@pytest.fixture()
def study():
    spec = importlib.util.spec_from_file_location("study_exit_recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_study(study, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = save_tiny_model(tmp_path / "model", "bert")
        data_dir = write_glue_task(tmp_path / "SST-2", "sst-2")
        output_dir = tmp_path / "study"
        rows = study.main([
            "--output_dir", str(output_dir), "--recipes", "mean,plain,reference", "--seeds", "3",
            "--data_dir", data_dir, "--model_name_or_path", model, "--bootstrap", "50",
            "--training_args", "--max_steps 3 --max_seq_length 32 --per_gpu_train_batch_size 8 --save_steps 0 "
                               "--logging_steps 5 --no_cuda",
        ])
    finally:
        torch.set_num_threads(threads)

    results = json.loads((output_dir / "study_results.json").read_text())
    assert results["rows"] == json.loads(json.dumps(rows))
    by_recipe = {}
    for row in rows:
        by_recipe.setdefault(row["recipe"], []).append(row["patience"])
    # The baseline is trained first and reported at full depth only; the others at every patience.
    assert list(by_recipe) == ["plain", "mean", "reference"]
    assert by_recipe["plain"] == [0] and by_recipe["mean"] == list(range(NUM_LAYERS))
    for row in rows:
        mean, low, high = row["vs_full_depth"]
        assert low <= mean <= high
        if row["patience"] == 0:
            assert list(row["vs_full_depth"]) == [0.0, 0.0, 0.0]
        if row["recipe"] != "plain":
            assert "vs_plain" in row and row["avg_exit_layer"] <= NUM_LAYERS
    assert set(results["layer_accuracy"]) == {"plain/seed-3", "mean/seed-3", "reference/seed-3"}
    assert all(len(values) == NUM_LAYERS for values in results["layer_accuracy"].values())

    mean_config = json.loads((output_dir / "mean" / "seed-3" / "config.json").read_text())
    assert mean_config["exit_pooling"] == "mean"
    plain_config = json.loads((output_dir / "plain" / "seed-3" / "config.json").read_text())
    assert plain_config["layer_loss_weights"] == "last"
    table = (output_dir / "study_results.md").read_text().splitlines()
    assert table[0].startswith("| recipe |") and len(table) == 2 + len(rows)
