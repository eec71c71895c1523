"""A tiny run of benchmarks/study_exit_recipes.py, so that the study cannot rot."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fixtures_glue import NUM_LAYERS, save_tiny_model, write_glue_task

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "study_exit_recipes.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def study():
    spec = importlib.util.spec_from_file_location("study_exit_recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_study(study, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = save_tiny_model(tmp_path / "model", "bert")
    data_dir = write_glue_task(tmp_path / "SST-2", "sst-2")
    output_dir = tmp_path / "study"
    argv = ["--output_dir", str(output_dir), "--recipes", "mean-10x+distill+ge", "--seeds", "3",
            "--leading_recipes", "distill", "--leading_seeds", "3,4",
            "--num_train_epochs", "1", "--data_dir", data_dir, "--model_name_or_path", model, "--bootstrap", "50",
            "--plot", str(tmp_path / "docs" / "frontier.png"), "--wall_rounds", "1",
            "--training_args", "--max_steps 3 --max_seq_length 32 --per_gpu_train_batch_size 8 --save_steps 0 "
                               "--logging_steps 5 --no_cuda"]
    try:
        study_results = study.main(argv)
        run = output_dir / "epochs-1" / "mean-10x+distill+ge" / "seed-3"
        trained_at = (run / "model.safetensors").stat().st_mtime_ns
        again = study.main(argv)  # resumes: every run is there, none is trained again
    finally:
        torch.set_num_threads(threads)
    assert (run / "model.safetensors").stat().st_mtime_ns == trained_at
    assert without_timing(again) == without_timing(study_results)  # the figures; each run times anew

    # Each recipe's flags reach the saved config.
    config = json.loads((run / "config.json").read_text())
    assert (config["exit_pooling"], config["self_distillation_weight"], config["self_distillation_temperature"],
            config["gradient_equilibrium"]) == ("mean", 1.0, 2.0, True)
    plain = json.loads((output_dir / "epochs-1" / "plain" / "seed-3" / "config.json").read_text())
    assert plain["layer_loss_weights"] == "last" and plain["self_distillation_weight"] == 0.0

    results = json.loads((output_dir / "study_results.json").read_text())
    (budget,) = results["study"]
    assert budget["epochs"] == 1
    # The baseline is always run, first, with every seed; then the recipes asked for, the leading one with its seeds.
    assert list(budget["recipes"]) == ["plain", "mean-10x+distill+ge", "distill"]
    assert [budget["recipes"][recipe]["seeds"] for recipe in budget["recipes"]] == [[3, 4], [3], [3, 4]]
    assert (output_dir / "epochs-1" / "plain" / "seed-4" / "model.safetensors").is_file()
    assert not (output_dir / "epochs-1" / "mean-10x+distill+ge" / "seed-4").exists()
    recipe = budget["recipes"]["distill"]
    rules = {setting["rule"] for setting in recipe["settings"]}
    assert rules == {"full depth", "patience", "gated patience", "entropy", "confidence", "oracle"}
    plain_rows = budget["recipes"]["plain"]["settings"]
    assert [(s["rule"], s["vs_plain"]) for s in plain_rows] == [("full depth", [0.0, 0.0, 0.0])]
    gated = [s["setting"] for s in recipe["settings"] if s["rule"] == "gated patience"]
    assert len(gated) == len(study.GATES) * (NUM_LAYERS - 2)
    by_setting = {s["setting"]: s for s in recipe["settings"]}
    agreeing = by_setting["oracle: full-depth answer"]
    # Paired with plain of the same seed; the bounds: full-depth answers, and the earliest correct layer.
    for setting in recipe["settings"]:
        mean, low, high = setting["vs_plain"]
        assert low <= mean <= high and 1 <= setting["layer_speedup"] <= NUM_LAYERS
        assert setting["accuracy_std"] is not None  # two seeds: a spread
    assert by_setting["oracle: earliest correct"]["accuracy"] >= agreeing["accuracy"]
    assert agreeing["layer_speedup"] >= max(s["layer_speedup"] for s in recipe["settings"]
                                            if s["accuracy"] == agreeing["accuracy"] and s["rule"] != "oracle")
    # Each rule's best setting is the fastest within a point of plain.
    for rule, best in recipe["best"].items():
        candidates = [s for s in recipe["settings"] if s["rule"] == rule and s["vs_plain"][0] >= -1.0]
        assert (best is None) == (not candidates)
        if best:
            assert best["layer_speedup"] == max(s["layer_speedup"] for s in candidates)
    assert set(recipe["layers"]) == {"3", "4"}
    layers = recipe["layers"]["3"]
    assert len(layers["layer_accuracy"]) == len(layers["agreement_with_full_depth"]) == NUM_LAYERS
    assert layers["agreement_with_full_depth"][-1] == 100.0
    assert budget["leading_recipe"] in ("mean-10x+distill+ge", "distill")

    # The leading recipe's best settings ran for real at batch 32, on every seed, with the simulated exit layers.
    assert budget["wall_timing"] == {"recipe": budget["leading_recipe"], "batch_size": 32, "rounds": 1, "threads": 1}
    leading = budget["recipes"][budget["leading_recipe"]]
    timed = [best for best in leading["best"].values() if best]
    assert timed
    for best in timed:
        assert len(best["wall_speedup_per_seed"]) == len(leading["seeds"]) and best["wall_speedup"] > 0
        assert best["simulation_agreement"] == 1.0
    others = [best for name, summary in budget["recipes"].items() if name != budget["leading_recipe"]
              for best in summary["best"].values() if best]
    assert not any("wall_speedup" in best for best in others)

    report = (output_dir / "study_results.md").read_text()
    assert "| distill | gated patience |" in report and "oracle: full-depth answer" in report
    assert "wall speed-up, batch 32 |" in report and f"{timed[0]['wall_speedup']:.2f}x" in report
    assert (tmp_path / "docs" / "frontier.png").read_bytes().startswith(PNG_SIGNATURE)


def without_timing(value):
    """The study's results without its wall-clock figures, as JSON would give them back."""
    timing = {"wall_timing", "wall_speedup", "wall_speedup_per_seed", "simulation_agreement"}
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if key not in timing}
    if isinstance(value, (list, tuple)):
        return [without_timing(item) for item in value]
    return value


def test_unknown_recipe_is_one_line_error(study, capsys):
    with pytest.raises(SystemExit):
        study.main(["--recipes", "plain,nope"])
    assert "unknown recipes ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(["--wall_rounds", "-1"])
    assert "--wall_rounds must be 0 or more, not -1" in capsys.readouterr().err
