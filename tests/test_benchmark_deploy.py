"""Smoke test of benchmarks/benchmark_deploy.py: a --quick run on a tiny model must go through and write every figure.
Timings of a tiny model mean nothing; what is checked is the shape of the results and the answers' agreement.

    python -m pytest tests/test_benchmark_deploy.py -q
"""

import importlib.util
import json
from pathlib import Path

import torch
from fixtures_glue import VOCAB, write_glue_task
from test_modeling import make_model
from transformers import BertTokenizerFast

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_deploy.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_deploy", SCRIPT)  # benchmarks/ is not a package
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_answers_and_interleaved_timings(tmp_path):
    threads = torch.get_num_threads()
    model_folder = tmp_path / "model"
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(VOCAB)}, do_lower_case=True)
    model = make_model("bert", 2, num_hidden_layers=3, exit_pooling="mean", vocab_size=len(VOCAB))
    model.config.finetuning_task = "sst-2"
    model.save_pretrained(model_folder)
    tokenizer.save_pretrained(model_folder)
    data_dir = write_glue_task(tmp_path / "SST-2", "sst-2")
    output = tmp_path / "deploy.json"
    benchmark = load_benchmark()
    try:
        benchmark.main(["--model", str(model_folder), "--plain_model", str(model_folder), "--data_dir", data_dir,
                        "--output", str(output), "--quick", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    results = json.loads(output.read_text())

    answers = results["answers"]["entries"]
    assert len(answers) == len(benchmark.DEMO_SETTINGS) * len(benchmark.ENGINES)
    for entry in answers:
        assert sum(entry["exit_histogram"].values()) == results["dev_examples"]
        if entry["engine"] in ("torch fp32", "onnx fp32"):  # the exported fp32 model gives torch's exits
            assert entry["exit_layer_agreement_with_torch_fp32"] == 1.0, entry
            assert entry["max_logit_difference_from_torch_fp32_where_exits_agree"] < 1e-4
    assert results["answers"]["max_every_layer_logit_difference_from_torch_fp32"]["onnx fp32"] < 1e-4
    assert {entry["batch_1_vs_batch_32"]["reviews"] for entry in answers if "batch_1_vs_batch_32" in entry} == {6}

    timing = results["timing"]
    timed = {(entry["model"], entry["engine"], entry["batch_size"], entry["setting"]) for entry in timing}
    assert len(timed) == len(timing) == 2 * 4 * 4 + 2 * 4  # the model at 4 settings, the plain model at full depth
    for entry in timing:
        assert len(entry["seconds_raw"]) == 2 and entry["seconds_median"] > 0
        assert entry["examples"] == (results["dev_examples"] if entry["batch_size"] == 32 else 6)
    baseline = [entry for entry in timing if entry["model"] == "model" and entry["engine"] == "torch fp32"
                and entry["patience"] == 0]
    assert all(entry["speedup_over_torch_fp32_full_depth"] == 1.0 for entry in baseline)
