"""A tiny run of benchmarks/study_selection.py (both protocols), so that the study cannot rot."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fixtures_glue import save_tiny_model, write_review_corpus

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "study_selection.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DELTAS = [0.05, 0.2]


@pytest.fixture()
def study():
    spec = importlib.util.spec_from_file_location("study_selection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield module
    torch.set_num_threads(threads)


def test_tiny_study_trains_per_seed_then_selects_on_calibration(study, tmp_path):
    corpus = write_review_corpus(tmp_path / "corpus.csv.bz2")
    model = save_tiny_model(tmp_path / "backbone", "bert")
    argv = ["--output_dir", str(tmp_path / "study"), "--seeds", "1,2", "--corpus", str(corpus), "--dev_size", "50",
            "--calibration_fraction", "0.2", "--deltas", ",".join(map(str, DELTAS)), "--model_name_or_path", model,
            "--results", str(tmp_path / "results" / "study.json"), "--plot", str(tmp_path / "plot.png"),
            "--training_args", "--max_steps 3 --max_seq_length 32 --per_gpu_train_batch_size 8 --save_steps 0 "
                               "--no_cuda"]
    results = study.main(argv)
    trained_at = (tmp_path / "study" / "seed-1" / "model" / "model.safetensors").stat().st_mtime_ns
    assert study.main(argv)["rows"] == results["rows"]  # resumed: nothing trained again, the same figures
    assert (tmp_path / "study" / "seed-1" / "model" / "model.safetensors").stat().st_mtime_ns == trained_at

    assert [(row["seed"], row["delta"]) for row in results["rows"]] == [(1, 0.05), (1, 0.2), (2, 0.05), (2, 0.2)]
    for row in results["rows"]:
        assert row["calibration_examples"] == 30  # 0.2 of the 150 training reviews
        assert row["held"] == (row["dev"]["risk"] <= row["delta"])
        assert row["certified"] or row["setting"] == "patience 0"
        assert row["oracle_layer_speedup"] >= 1
    summary = {entry["delta"]: entry for entry in results["summary"]}
    assert summary[0.2]["held"] == sum(row["held"] for row in results["rows"] if row["delta"] == 0.2)
    assert json.loads((tmp_path / "results" / "study.json").read_text()) == json.loads(json.dumps(results))
    table = (tmp_path / "results" / "study.md").read_text()
    assert "| 0.2 |" in table and "guarantee held on dev" in table
    assert (tmp_path / "plot.png").read_bytes().startswith(PNG_SIGNATURE)

    # The cheaper protocol: one trained model, its dev set split into calibration and report parts per seed.
    results = study.main(["--model", str(tmp_path / "study" / "seed-1" / "model"), "--data_dir",
                          str(tmp_path / "study" / "seed-1" / "data"), "--calibration_from_dev", "20", "--seeds",
                          "5,6", "--deltas", "0.2", "--results", str(tmp_path / "dev_split.json"), "--plot", ""])
    assert [row["calibration_examples"] for row in results["rows"]] == [20, 20]
    assert "20 of its dev reviews" in results["protocol"]
