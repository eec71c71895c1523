"""A tiny run of benchmarks/study_exit_recipes.py, so that the study cannot rot."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_glue import NUM_LAYERS, save_tiny_model, write_review_corpus

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "study_exit_recipes.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEEDS = [3, 4]
DELTA = 0.2


@pytest.fixture()
def study():
    spec = importlib.util.spec_from_file_location("study_exit_recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_study_chooses_on_calibration_and_reports_on_dev(study, tmp_path):
    corpus = write_review_corpus(tmp_path / "corpus.csv.bz2")
    model = save_tiny_model(tmp_path / "backbone", "bert")
    output_dir = tmp_path / "study"
    argv = ["--output_dir", str(output_dir), "--recipes", "mean-10x+distill+ge", "--seeds", ",".join(map(str, SEEDS)),
            "--corpus", str(corpus), "--dev_size", "50", "--calibration_fraction", "0.2",
            "--select_setting", f"consistency:{DELTA}", "--model_name_or_path", model, "--bootstrap", "50",
            "--plot", str(tmp_path / "docs" / "frontier.png"), "--wall_rounds", "1",
            "--training_args", "--max_steps 3 --max_seq_length 32 --per_gpu_train_batch_size 8 --save_steps 0 "
                               "--logging_steps 5 --no_cuda"]
    results = study.main(argv)
    run = output_dir / "epochs-1" / "mean-10x+distill+ge" / "seed-3"
    trained_at = (run / "model.safetensors").stat().st_mtime_ns
    again = study.main(argv)  # resumes: every run is there, none is trained again
    assert (run / "model.safetensors").stat().st_mtime_ns == trained_at
    assert without_timing(again) == without_timing(results)  # the figures; each run times anew

    # Each recipe's flags reach the saved config; each run held out its seed's calibration set, the same for every
    # recipe of the seed, and the seeds split the data differently.
    config = json.loads((run / "config.json").read_text())
    assert (config["exit_pooling"], config["self_distillation_weight"], config["gradient_equilibrium"]) == (
        "mean", 1.0, True)
    plain_run = output_dir / "epochs-1" / "plain" / "seed-3"
    assert json.loads((plain_run / "config.json").read_text())["layer_loss_weights"] == "last"
    calibration = (run / "calibration.jsonl").read_text()
    assert calibration == (plain_run / "calibration.jsonl").read_text() and len(calibration.splitlines()) == 30
    assert ((output_dir / "data" / "seed-3" / "dev.tsv").read_text()
            != (output_dir / "data" / "seed-4" / "dev.tsv").read_text())

    assert json.loads((output_dir / "study_results.json").read_text()) == json.loads(json.dumps(again))
    (budget,) = results["study"]
    assert budget["epochs"] == 1 and list(budget["recipes"]) == ["plain", "mean-10x+distill+ge"]
    plain = budget["recipes"]["plain"]
    assert [(s["setting"], s["vs_plain"]) for s in plain["bounds"]] == [("patience 0", [0.0, 0.0, 0.0])]
    assert plain["chosen"] == {}  # its internal classifiers are untrained
    recipe = budget["recipes"]["mean-10x+distill+ge"]
    assert recipe["seeds"] == SEEDS
    assert list(recipe["chosen"]) == ["patience", "gated patience", "entropy", "confidence", "any rule"]
    for rule, chosen in recipe["chosen"].items():
        assert len(chosen["settings"]) == len(SEEDS)
        for setting, certified, risk in zip(chosen["settings"], chosen["certified"], chosen["calibration_risk"]):
            assert certified or (setting == "patience 0" and risk == 0.0)
            if certified and rule != "any rule":
                assert (rule == "gated patience") == ("confidence >=" in setting)
                assert setting.split()[0] == rule.split()[-1]
        mean, low, high = chosen["vs_plain"]
        assert low <= mean <= high
        assert chosen["layer_speedup"] == pytest.approx(np.mean(chosen["layer_speedup_per_seed"]))
        assert all(1 <= speedup <= NUM_LAYERS for speedup in chosen["layer_speedup_per_seed"])
    rules = {candidate["rule"] for candidate in recipe["candidates"]}
    assert rules == {"patience", "gated patience", "entropy", "confidence"}
    full_depth, agreeing, earliest = recipe["bounds"]
    assert (full_depth["setting"], agreeing["setting"], earliest["setting"]) == (
        "patience 0", "oracle: full-depth answer", "oracle: earliest correct")
    assert agreeing["accuracy"] == full_depth["accuracy"] and earliest["accuracy"] >= full_depth["accuracy"]
    layers = recipe["layers"]["3"]
    assert len(layers["layer_accuracy"]) == NUM_LAYERS and layers["agreement_with_full_depth"][-1] == 100.0

    # The leading recipe is timed on every seed, with the simulated exit layers; full-depth choices are not timed.
    assert budget["leading_recipe"] == "mean-10x+distill+ge"
    assert budget["wall_timing"] == {"recipe": "mean-10x+distill+ge", "batch_size": 32, "rounds": 1,
                                     "threads": torch.get_num_threads()}
    for chosen in recipe["chosen"].values():
        assert [value is None for value in chosen["wall_speedup_per_seed"]] == [not c for c in chosen["certified"]]
        assert (chosen["wall_speedup"] is None) == (not all(chosen["certified"]))  # a mean over every seed, or none
        assert chosen["simulation_agreement"] in (None, 1.0)

    report = (output_dir / "study_results.md").read_text()
    assert "| mean-10x+distill+ge | gated patience |" in report and "oracle: full-depth answer" in report
    assert f"consistency (share of answers that differ from full depth's) at most {DELTA:g}" in report
    held = recipe["chosen"]["entropy"]["held"]
    assert f"| {held} of {len(SEEDS)} |" in report
    assert (tmp_path / "docs" / "frontier.png").read_bytes().startswith(PNG_SIGNATURE)


def every_layer_logits(later_answer, first_answers, layers=NUM_LAYERS, examples=200):
    """
    Predictions from one pass through every layer: layers 1 to L-1 answer `first_answers` with confidence, the last
    layer `later_answer`; the labels are the last layer's answers.
    """
    from pabee.evaluation import Predictions

    logits = np.zeros((examples, layers, 2), dtype=np.float32)
    logits[:, :-1, first_answers] = 5.0
    logits[:, -1, later_answer] = 5.0
    labels = np.full(examples, later_answer)
    return Predictions(logits[:, -1], labels, np.full(examples, layers), float("nan"), logits)


def test_the_choice_reads_calibration_only_and_dev_says_whether_it_held(study):
    """Known risks: calibration where every layer agrees with the last; dev sets where they all agree, or none."""
    args = study.parse_args(["--select_setting", "consistency:0.1"])
    calibration = every_layer_logits(later_answer=0, first_answers=0)
    agreeing_dev = study.analyse_run(args, calibration, every_layer_logits(0, 0), seed=0)
    disagreeing_dev = study.analyse_run(args, calibration, every_layer_logits(0, 1), seed=0)
    for rule in ("patience", "gated patience", "entropy", "confidence", "any rule"):
        agreeing, disagreeing = agreeing_dev["chosen"][rule], disagreeing_dev["chosen"][rule]
        # The same choice whatever dev says, and a certified early exit: nothing differs on calibration.
        assert agreeing["setting"] == disagreeing["setting"] and agreeing["certified"]
        assert agreeing["calibration_risk"] == disagreeing["calibration_risk"] == 0.0
        # On dev, an early exit gives the full-depth answer on every review, or on none.
        assert (agreeing["dev_risk"], disagreeing["dev_risk"]) == (0.0, 1.0)
        assert agreeing["layer_speedup"] > 1
        assert agreeing["in_sample_optimum"]["layer_speedup"] >= agreeing["layer_speedup"]
        # On that dev set, only a candidate that never exits early stays within delta.
        optimum = disagreeing["in_sample_optimum"]
        assert optimum is None or (optimum["dev_risk"], optimum["layer_speedup"]) == (0.0, 1.0)
    summary = study.summarize_recipe(args, {1: agreeing_dev, 2: disagreeing_dev},
                                     plain_correct=np.ones(200))
    assert summary["chosen"]["patience"]["held"] == 1  # of the two seeds
    assert summary["chosen"]["patience"]["vs_plain"][0] == pytest.approx(-50.0)  # dev answers wrong on one seed


def without_timing(value):
    """The study's results without its wall-clock figures, as JSON would give them back."""
    timing = {"wall_timing", "wall_speedup", "wall_speedup_per_seed", "simulation_agreement"}
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if key not in timing}
    if isinstance(value, (list, tuple)):
        return [without_timing(item) for item in value]
    return value


@pytest.mark.parametrize("argv, message", [
    (["--recipes", "plain,nope"], "unknown recipes ['nope']"),
    (["--wall_rounds", "-1"], "--wall_rounds must be 0 or more, not -1"),
    (["--select_setting", "consistency:1.5"], "delta must be in (0, 1), got 1.5"),
    (["--select_setting", "speed:0.1"], "expected RISK:DELTA"),
    (["--calibration_fraction", "1"], "--calibration_fraction must be in (0, 1), got 1.0"),
])
def test_bad_values_are_one_line_errors(study, capsys, argv, message):
    with pytest.raises(SystemExit):
        study.main(argv)
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
