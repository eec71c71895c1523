"""Smoke test of benchmarks/benchmark_speed.py: its --tiny run must go through and write every figure, so the script
cannot rot. The timings of a tiny model mean nothing; what is checked is that the forced exit layers are the ones
the model really took.

    python -m pytest tests/test_benchmark_speed.py -q
"""

import importlib.util
import json
import numbers
from pathlib import Path

import pytest
import torch

from pabee.modeling_pabee_bert import patience_exit_layers

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_speed.py"
SECTIONS = ["forced_exit_batch1", "exit_cost_batch1", "batched_early_exit", "full_depth_vs_transformers", "training_step",
            "eval_peak_memory"]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_speed", SCRIPT)  # benchmarks/ is not a package
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark():
    return load_benchmark()


def numbers_in(value):
    """Every number in a nested JSON value (bools excluded)."""
    if isinstance(value, dict):
        return [number for item in value.values() for number in numbers_in(item)]
    if isinstance(value, list):
        return [number for item in value for number in numbers_in(item)]
    return [value] if isinstance(value, numbers.Number) and not isinstance(value, bool) else []


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_wanted_predictions_give_the_wanted_exit_layers(benchmark, patience):
    num_layers = 6
    wanted = torch.arange(patience + 1, num_layers + 1)
    predictions = benchmark.wanted_predictions(wanted, patience, num_layers)  # (examples, layers) of 0/1
    logits = torch.nn.functional.one_hot(predictions, 2).float()
    assert torch.equal(patience_exit_layers(logits, patience, regression_threshold=0.1), wanted)


def test_tiny_run_writes_every_section(benchmark, tmp_path):
    output = tmp_path / "speed.json"
    threads = torch.get_num_threads()
    benchmark.main(["--tiny", "--output", str(output)])
    assert torch.get_num_threads() == threads  # the run leaves the process as it found it
    results = json.loads(output.read_text())

    for key in ["cpu_model", "torch_num_threads", "torch", "transformers", "device"]:
        assert results["machine"][key] not in (None, "")
    for section in SECTIONS:
        assert list(results[section]) == ["tiny"], section
        figures = numbers_in(results[section]["tiny"])
        assert figures and all(figure == figure and figure >= 0 for figure in figures), section  # no NaN

    num_layers = benchmark.SHAPES["tiny"]["num_hidden_layers"]
    for pooling in ("pooler", "mean"):
        forced = results["forced_exit_batch1"]["tiny"][pooling]["rows"]
        assert [row["exit_layer"] for row in forced] == list(range(2, num_layers + 1))
        for row in forced:
            assert row["measured_mean_exit_layer"] == row["exit_layer"]
            assert row["efficiency"] > 0

    batched = results["batched_early_exit"]["tiny"]
    assert [row["batch_size"] for row in batched["rows"]] == [2, 4, 8]
    for row in batched["rows"] + [batched["batched_vs_batch_1"]]:
        assert 1 < row["mean_exit_layer"] < num_layers
    assert results["batched_early_exit"]["tiny"]["rows"][-1]["layer_speedup"] > 1

    # The breakdown of the batch-1 time: every part timed in every round, shares of the layer's time.
    assert list(results["exit_cost_batch1"]["tiny"]) == ["pooler", "mean"]
    cost = results["exit_cost_batch1"]["tiny"]["mean"]
    rounds = cost["seconds"]["instrumented"]
    assert len(rounds) == len(cost["seconds"]["forward"]) == 2 * 2 + 1
    for parts in rounds:
        assert set(parts) == {"embeddings", "layers", "classifiers", "exit_rule", "total"}
        assert all(seconds > 0 for seconds in parts.values())
        assert parts["total"] >= parts["embeddings"] + parts["layers"] + parts["classifiers"] + parts["exit_rule"]
    assert cost["classifier_share"] == pytest.approx(cost["classifier_us_per_layer"] / (1e3 * cost["layer_ms"]))
    assert cost["efficiency_bound"] == pytest.approx(
        1 / (1 + cost["classifier_share"] + cost["exit_rule_share"]))

    assert [row["batch_size"] for row in results["full_depth_vs_transformers"]["tiny"]["rows"]] == [1, 8]
    assert results["training_step"]["tiny"]["time_ratio"] > 0
    assert results["eval_peak_memory"]["tiny"]["transformers_peak_mib"] > 0
