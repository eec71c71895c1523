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
