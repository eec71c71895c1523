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

# Engines whose answers do not depend on the rest of the batch (int8 on ONNX scales each token alone)
BATCH_INDEPENDENT = ("torch fp32", "onnx fp32", "onnx int8")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_deploy", SCRIPT)  # benchmarks/ is not a package
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_model_and_data(tmp_path):
    model_folder = tmp_path / "model"
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(VOCAB)}, do_lower_case=True)
    model = make_model("bert", 2, num_hidden_layers=3, exit_pooling="mean", vocab_size=len(VOCAB))
    model.config.finetuning_task = "sst-2"
    model.save_pretrained(model_folder)
    tokenizer.save_pretrained(model_folder)
    return str(model_folder), write_glue_task(tmp_path / "SST-2", "sst-2")


def run_benchmark(*argv):
    threads = torch.get_num_threads()
    benchmark = load_benchmark()
    try:
        return benchmark, benchmark.main([str(arg) for arg in argv] + ["--quick", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


def test_quick_run_writes_answers_and_interleaved_timings(tmp_path, capsys):
    model_folder, data_dir = save_model_and_data(tmp_path)
    output = tmp_path / "deploy.json"
    benchmark, _ = run_benchmark("--model", model_folder, "--plain_model", model_folder, "--data_dir", data_dir,
                                 "--output", output)
    results = json.loads(output.read_text())
    # The figures say which CPU they come from: int8 speed depends on its instructions (AVX2, AVX-512 VNNI)
    assert results["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and results["cpu_model"]
    assert f"torch capability {results['cpu_capability']}" in capsys.readouterr().out

    answers = results["answers"]["entries"]
    assert len(answers) == len(benchmark.DEMO_SETTINGS) * len(benchmark.ENGINES)
    for entry in answers:
        assert sum(entry["exit_histogram"].values()) == results["dev_examples"]
        if entry["engine"] in ("torch fp32", "onnx fp32"):  # the exported fp32 model gives torch's exits
            assert entry["exit_layer_agreement_with_torch_fp32"] == 1.0, entry
            assert entry["max_logit_difference_from_torch_fp32_where_exits_agree"] < 1e-4
    assert results["answers"]["max_every_layer_logit_difference_from_torch_fp32"]["onnx fp32"] < 1e-4
    assert {entry["batch_1_vs_batch_32"]["reviews"] for entry in answers if "batch_1_vs_batch_32" in entry} == {6}
    for entry in answers:
        if entry["engine"] in BATCH_INDEPENDENT and "batch_1_vs_batch_32" in entry:
            assert entry["batch_1_vs_batch_32"]["exit_layer_agreement"] == 1.0, entry
            assert entry["batch_1_vs_batch_32"]["max_logit_difference"] < 1e-5, entry

    timing = results["timing"]
    timed = {(entry["model"], entry["engine"], entry["batch_size"], entry["setting"]) for entry in timing}
    engines = len(benchmark.ENGINES)
    assert len(timed) == len(timing) == 2 * engines * 4 + 2 * engines  # the model at 4 settings, plain at full depth
    for entry in timing:
        assert len(entry["seconds_raw"]) == 2 and entry["seconds_median"] > 0
        assert entry["examples"] == (results["dev_examples"] if entry["batch_size"] == 32 else 6)
    baseline = [entry for entry in timing if entry["model"] == "model" and entry["engine"] == "torch fp32"
                and entry["patience"] == 0]
    assert all(entry["speedup_over_torch_fp32_full_depth"] == 1.0 for entry in baseline)


def test_answers_from_one_pass_agree_with_real_runs(tmp_path):
    model_folder, data_dir = save_model_and_data(tmp_path)
    output = tmp_path / "answers.json"
    benchmark, results = run_benchmark("--model", model_folder, "--data_dir", data_dir, "--output", output,
                                       "--no_timing", "--answers_from_one_pass")
    assert "timing" not in results and json.loads(output.read_text()) == results
    entries = results["answers"]["entries"]
    assert len(entries) == len(benchmark.DEMO_SETTINGS) * len(benchmark.ENGINES)
    checked = [entry for entry in entries if "real_run" in entry]
    assert {entry["setting"] for entry in checked} == {"patience 1, confidence >= 0.75"}
    for entry in checked:
        if entry["engine"] in BATCH_INDEPENDENT:  # answers that do not depend on the batch: the one pass's
            assert entry["real_run"]["exit_layer_agreement_with_one_pass"] == 1.0
            assert entry["real_run"]["exit_histogram"] == entry["exit_histogram"]
