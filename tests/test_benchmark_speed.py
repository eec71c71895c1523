"""Smoke test of benchmarks/benchmark_speed.py: its --tiny run must go through and write every figure, so the script
cannot rot. The timings of a tiny model mean nothing; what is checked is that the forced exit layers are the ones
the model really took.

    python -m pytest tests/test_benchmark_speed.py -q
"""

import importlib.util
import json
import numbers
import subprocess
from pathlib import Path

import pytest
import torch

from pabee.modeling_pabee import patience_exit_layers

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_speed.py"
SECTIONS = ["forced_exit_batch1", "exit_cost_batch1", "against_cut_model", "batched_early_exit",
            "full_depth_vs_transformers", "training_step", "eval_peak_memory"]


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

    # The breakdown of the batch-1 time: every part timed in every round.
    assert list(results["exit_cost_batch1"]["tiny"]) == ["pooler", "mean"]
    cost = results["exit_cost_batch1"]["tiny"]["mean"]
    rounds = cost["seconds"]["instrumented"]
    assert len(rounds) == len(cost["seconds"]["forward"]) == 2 * 2 + 1
    for parts in rounds:
        assert set(parts) == {"embeddings", "layers", "classifiers", "exit_rule", "total"}
        assert all(seconds > 0 for seconds in parts.values())

    # Early exit at k against transformers' model cut to k layers: batch 1 at every k, batch 8 at 2, L // 2, L - 1.
    for pooling in ("pooler", "mean"):
        cut = results["against_cut_model"]["tiny"][pooling]
        assert [(row["batch_size"], row["exit_layer"]) for row in cut["rows"]] == [(1, 2), (1, 3), (1, 4), (8, 2), (8, 3)]
        for row in cut["rows"]:
            assert row["patience"] == row["exit_layer"] - 1
            assert len(row["times_s"]["cut_model"]) == len(row["times_s"]["early_exit"]) == 2
            assert len(row["cut_over_early_exit_95ci"]) == 2
            assert "baseline_time_s" not in row  # no --baseline_revision
            # early exit runs a classifier at each of layers 1..k (none but the last at k = L), the cut model one
            more = row["early_exit_operators"] - row["cut_model_operators"]
            assert more > 0 if row["exit_layer"] < num_layers else more >= 0

    assert [row["batch_size"] for row in results["full_depth_vs_transformers"]["tiny"]["rows"]] == [1, 8]
    assert results["training_step"]["tiny"]["time_ratio"] > 0
    assert results["eval_peak_memory"]["tiny"]["transformers_peak_mib"] > 0


@pytest.mark.parametrize("exit_pooling", ["pooler", "mean"])
@torch.no_grad()
def test_cut_model_answers_like_early_exit_at_its_layer(benchmark, exit_pooling):
    """The yardstick of section 1c: transformers' model cut to k layers gives layer k's internal classifier's logits,
    checked on trained-looking classifiers (random weights), not only on the constant ones the section uses."""
    model, _ = benchmark.make_models("tiny", seed=0, device=torch.device("cpu"))
    model.config.exit_pooling = exit_pooling
    for classifier in model.classifiers:
        torch.nn.init.normal_(classifier.weight)
    input_ids, attention_mask = benchmark.make_inputs(3, 16, model.config.vocab_size, seed=0, device=torch.device("cpu"))
    attention_mask[1, 10:] = 0  # padding: the mean must skip it
    all_layer_logits = model(input_ids, attention_mask=attention_mask, output_all_layer_logits=True).all_layer_logits
    for exit_layer in (1, 2, 4):
        cut = benchmark.make_cut_model(model, exit_layer)
        assert len(cut.bert.encoder.layer) == exit_layer
        logits = cut(input_ids, attention_mask=attention_mask)
        logits = getattr(logits, "logits", logits)
        torch.testing.assert_close(logits, all_layer_logits[:, exit_layer - 1], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(subprocess.run(["git", "rev-parse", "HEAD"], cwd=SCRIPT.parent, capture_output=True).returncode,
                    reason="needs a git checkout")
def test_baseline_revision_is_timed_beside_the_current_code(benchmark):
    """--baseline_revision loads that commit's model class; section 1c times it in the same rounds."""
    baseline_class = benchmark.load_baseline_model_class("HEAD")
    assert baseline_class.__module__ == "baseline_pabee.modeling_pabee_bert"  # with the shared module it imports
    model, _ = benchmark.make_models("tiny", seed=0, device=torch.device("cpu"))
    baseline = baseline_class(model.config).eval()
    args = benchmark.parse_args(["--tiny"])
    result = benchmark.bench_against_cut_model(model, args, torch.device("cpu"), baseline)
    for row in result["rows"]:
        assert len(row["times_s"]["baseline_early_exit"]) == 2
        assert row["baseline_over_early_exit"] > 0
    # the baseline got the section's classifiers, so it answered like the current code
    assert torch.equal(baseline.classifiers[0].weight, model.classifiers[0].weight)


def test_unknown_baseline_revision_is_a_one_line_error(benchmark):
    with pytest.raises(SystemExit, match="--baseline_revision no-such-commit"):
        benchmark.load_baseline_model_class("no-such-commit")


def test_operators_only_counts_without_timing(benchmark, tmp_path):
    output = tmp_path / "operators.json"
    results = benchmark.main(["--tiny", "--operators_only", "--exit_poolings", "mean", "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(results))
    rows = results["against_cut_model"]["tiny"]["mean"]["rows"]
    assert [(row["batch_size"], row["exit_layer"]) for row in rows] == [(1, 2), (1, 3), (1, 4), (8, 2), (8, 3)]
    for row in rows:
        assert set(row) == {"batch_size", "exit_layer", "patience", "cut_model_operators", "early_exit_operators"}
    # the operator count grows with each layer the forward runs
    assert rows[0]["cut_model_operators"] < rows[1]["cut_model_operators"] < rows[2]["cut_model_operators"]
    for section in SECTIONS:
        if section != "against_cut_model":
            assert not numbers_in(results[section]), section  # nothing timed


def test_sections_run_alone_and_bad_sections_are_one_line_errors(benchmark, tmp_path, capsys):
    results = benchmark.main(["--tiny", "--sections", "full_depth_vs_transformers", "--output", str(tmp_path / "s.json")])
    assert [row["batch_size"] for row in results["full_depth_vs_transformers"]["tiny"]["rows"]] == [1, 8]
    assert all(not numbers_in(results[section]) for section in SECTIONS if section != "full_depth_vs_transformers")
    for sections, message in [("batched", "--sections: choose from"), ("eval_peak_memory", "add it")]:
        with pytest.raises(SystemExit):
            benchmark.parse_args(["--sections", sections])
        assert message in capsys.readouterr().err


def test_ratio_interval_of_paired_rounds(benchmark):
    # Early exit took exactly 4% longer than the cut model in every round: every resample gives that ratio, however
    # much the machine drifted from round to round.
    cut = [0.010, 0.013, 0.009, 0.020, 0.011]
    early = [1.04 * time for time in cut]
    assert benchmark.ratio_interval(cut, early) == pytest.approx([1 / 1.04, 1 / 1.04])
    # One slow early-exit round out of five moves the median's interval, not past the other rounds' ratios.
    low, high = benchmark.ratio_interval([1.0] * 5, [1.0, 1.0, 1.0, 1.0, 2.0])
    assert low == pytest.approx(0.5) and high == pytest.approx(1.0)
