"""Tests of pabee.sweep called directly, as a library, with a `SweepOptions` (tiny random BERT, CPU, offline).

    python -m pytest tests/test_sweep.py -q
"""

import os

import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from test_modeling import LENGTHS, has_spread, make_batch, make_model

import pabee.sweep
from pabee.evaluation import ExitSetting
from pabee.glue import get_task
from pabee.sweep import SweepOptions, evaluate, exit_settings, plot_results, write_test_predictions

SST2 = get_task("sst-2")


def dev_loader(batch_size=4, labelled=True):
    """The test batch's examples as dict batches, as the script's dataloaders give them."""
    input_ids, attention_mask, token_type_ids = make_batch()
    rows = [{"input_ids": input_ids[b], "attention_mask": attention_mask[b], "token_type_ids": token_type_ids[b]}
            for b in range(len(LENGTHS))]
    if labelled:
        for b, row in enumerate(rows):
            row["labels"] = torch.tensor(b % 2)
    return DataLoader(rows, batch_size=batch_size)


def test_exit_settings_grid_of_the_options():
    options = SweepOptions(task=SST2, patience=(0, 2, 1), exit_confidence=(0.7, 0.9), exit_criterion="entropy",
                           exit_thresholds=(0.3,))
    assert [setting.label for setting in exit_settings(options)] == [
        "patience 0", "patience 2", "patience 1",
        "patience 2, confidence >= 0.7", "patience 1, confidence >= 0.7",
        "patience 2, confidence >= 0.9", "patience 1, confidence >= 0.9",
        "entropy < 0.3",
    ]


@torch.no_grad()
def test_evaluate_answers_as_the_model_does_at_each_setting():
    model = make_model("bert", 2, patience=1)
    options = SweepOptions(task=SST2, patience=(0, 1, 2), exit_confidence=(0.55,), eval_batch_size=4)
    entries, per_layer = evaluate(options, Accelerator(cpu=True), model, {"dev": dev_loader()}, "final", step=7)

    assert [entry["setting"] for entry in entries] == [
        "patience 0", "patience 1", "patience 2", "patience 1, confidence >= 0.55", "patience 2, confidence >= 0.55",
        "oracle: full-depth answer", "oracle: earliest correct"]
    input_ids, attention_mask, token_type_ids = make_batch()
    for entry in entries[:5]:
        kwargs = ExitSetting.from_entry(entry).model_kwargs(model.config.regression_threshold)
        exit_layers = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            **kwargs).exit_layers
        assert entry["avg_exit_layer"] == pytest.approx(exit_layers.float().mean().item())
        assert (entry["step"], entry["batch_size"], entry["eval_set"]) == (7, 4, "dev")
        assert entry["simulation_agreement"] == 1.0 and entry["eval_seconds"] > 0
    assert has_spread(exit_layers, model.config.num_hidden_layers)
    assert [row["layer"] for row in per_layer[0]["layers"]] == list(range(1, model.config.num_hidden_layers + 1))


@torch.no_grad()
def test_one_pass_sweep_times_nothing():
    options = SweepOptions(task=SST2, patience=(0, 1), sweep_from_one_pass=True)
    entries, _ = evaluate(options, Accelerator(cpu=True), make_model("bert", 2), {"dev": dev_loader()}, "final")
    assert all(entry["eval_seconds"] is None and "simulation_agreement" not in entry for entry in entries)


@torch.no_grad()
def test_plots_and_test_predictions_go_to_the_options_output_dir(tmp_path):
    options = SweepOptions(task=SST2, patience=(0, 1), output_dir=str(tmp_path))
    model = make_model("bert", 2)
    entries, per_layer = evaluate(options, Accelerator(cpu=True), model, {"dev": dev_loader()}, "final")
    (plot,) = plot_results(options, entries, per_layer)
    assert plot == os.path.join(tmp_path, "tradeoff_final_dev.png") and os.path.getsize(plot) > 0
    written = write_test_predictions(options, Accelerator(cpu=True), model, {"test": dev_loader(labelled=False)})
    assert sorted(os.path.relpath(path, tmp_path) for path in written) == [
        os.path.join("predictions", "patience_0", "SST-2.tsv"), os.path.join("predictions", "patience_1", "SST-2.tsv")]
    for path in written:
        assert len(open(path).read().splitlines()) == len(LENGTHS) + 1  # a header, then one row per example


@torch.no_grad()
def test_full_depth_is_warmed_up_then_timed_around_every_other_setting(monkeypatch):
    runs = []  # (description, patience or criterion, seconds) of each predict call, in order

    def recording_predict(*args, **kwargs):
        predictions = predict(*args, **kwargs)
        model_kwargs = args[3]
        setting = model_kwargs.get("patience", model_kwargs["exit_criterion"])
        runs.append((args[4].removeprefix("final dev "), setting, kwargs.get("all_layers", False),
                     predictions.seconds))
        return predictions

    predict = pabee.sweep.predict
    monkeypatch.setattr(pabee.sweep, "predict", recording_predict)
    options = SweepOptions(task=SST2, patience=(1, 0, 2), exit_criterion="confidence", exit_thresholds=(0.6,))
    entries, _ = evaluate(options, Accelerator(cpu=True), make_model("bert", 2), {"dev": dev_loader()}, "final")

    assert [(description, setting, all_layers) for description, setting, all_layers, _ in runs] == [
        ("every layer", 0, True),  # the pass every setting is simulated from
        ("warm-up", 0, False),  # untimed
        ("patience 0", 0, False),
        ("patience 1", 1, False),
        ("patience 0 (again)", 0, False),
        ("patience 2", 2, False),
        ("patience 0 (again)", 0, False),
        ("confidence > 0.6", "confidence", False),
        ("patience 0 (again)", 0, False),
    ]
    by_setting = {entry["setting"]: entry for entry in entries}
    full_depth_seconds = [seconds for description, _, _, seconds in runs[2:] if description.startswith("patience 0")]
    for index, setting in enumerate(["patience 1", "patience 2", "confidence > 0.6"]):
        assert by_setting[setting]["full_depth_seconds"] == pytest.approx(sum(full_depth_seconds[index:index + 2]) / 2)
        assert by_setting[setting]["eval_seconds"] == runs[3 + 2 * index][3]
    assert by_setting["patience 0"]["eval_seconds"] == pytest.approx(sum(full_depth_seconds) / 4)
    assert by_setting["oracle: full-depth answer"]["wall_speedup"] is None


@torch.no_grad()
def test_without_full_depth_each_setting_is_timed_once_after_a_warm_up(monkeypatch):
    descriptions = []

    def recording_predict(*args, **kwargs):
        descriptions.append(args[4].removeprefix("final dev "))
        return predict(*args, **kwargs)

    predict = pabee.sweep.predict
    monkeypatch.setattr(pabee.sweep, "predict", recording_predict)
    options = SweepOptions(task=SST2, patience=(2, 1))
    entries, _ = evaluate(options, Accelerator(cpu=True), make_model("bert", 2), {"dev": dev_loader()}, "final")
    assert descriptions == ["every layer", "warm-up", "patience 2", "patience 1"]
    assert all(entry["wall_speedup"] is None for entry in entries)
