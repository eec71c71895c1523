"""Evaluate a model over a sweep of exit settings, and write what the sweep found: results entries, trade-off
plots, TensorBoard figures and GLUE test-set predictions. What to sweep is a `SweepOptions`.

    options = SweepOptions(task=get_task("sst-2"), patience=(0, 1, 2, 3), eval_batch_size=32)
    entries, per_layer = evaluate(options, accelerator, model, {"dev": dataloader}, "final")
"""

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from .evaluation import (
    ExitSetting,
    add_wall_speedups,
    answers,
    layer_metrics,
    oracle_settings,
    precision,
    predict,
    simulate,
    summarize,
)
from .glue import GlueTask, main_metric_name, submission_file_name, write_submission


@dataclass(frozen=True)
class SweepOptions:
    """
    What a sweep evaluates and where it writes (run_glue_with_pabee.py fills it from its flags of the same names;
    `eval_batch_size` from --per_gpu_eval_batch_size).

    Args:
        task: the GLUE task, for its metrics and submission files.
        patience: the patience values to run (0: every layer).
        exit_confidence: confidence gates, each run with every patience above 0.
        exit_criterion: "patience", or a second criterion ("entropy", "confidence") run at each of `exit_thresholds`.
        exit_thresholds: the thresholds of `exit_criterion`.
        sweep_from_one_pass: every setting's answers simulated from the one full-depth pass, none timed.
        eval_batch_size: the batch size the dataloaders were made with, recorded with each result.
        output_dir: where the trade-off plots and the test-set predictions go.
    """

    task: GlueTask
    patience: tuple = (0,)
    exit_confidence: tuple = ()
    exit_criterion: str = "patience"
    exit_thresholds: tuple = ()
    sweep_from_one_pass: bool = False
    eval_batch_size: int | None = None
    output_dir: str = "."


def exit_settings(options):
    """
    The sweep of `options` (a `SweepOptions`): every patience, then every patience above 0 under every confidence
    gate (a grid), then every threshold of a second exit criterion.
    """
    settings = [ExitSetting("patience", patience) for patience in options.patience]
    settings += [ExitSetting("patience", patience, confidence) for confidence in options.exit_confidence
                 for patience in options.patience if patience > 0]
    if options.exit_criterion != "patience":
        settings += [ExitSetting(options.exit_criterion, threshold) for threshold in options.exit_thresholds]
    return settings


FULL_DEPTH = ExitSetting("patience", 0)


def evaluate(options, accelerator, model, eval_dataloaders, checkpoint_name, step=None):
    """
    Evaluate `model` at every exit setting of `options` (a `SweepOptions`) on every eval set, and add the oracle
    bounds from the full-depth pass. Returns one result entry per (eval set, setting) and the metrics of each
    internal classifier on its own, per eval set. How the settings are timed: see `time_settings`.
    """
    num_layers = model.config.num_hidden_layers
    threshold = model.config.regression_threshold
    entries, per_layer = [], []
    for eval_set, dataloader in eval_dataloaders.items():
        description = f"{checkpoint_name} {eval_set}"
        # One pass through every layer gives each classifier's answers: the per-layer metrics, and each setting's
        # exact answers by simulation.
        full_depth = predict(model, dataloader, accelerator, FULL_DEPTH.model_kwargs(threshold),
                             f"{description} every layer", all_layers=True)
        per_layer.append({"checkpoint": checkpoint_name, "eval_set": eval_set,
                          "layers": layer_metrics(options.task, full_depth)})
        # The oracle bounds come from the same pass: no rule can run them.
        settings = exit_settings(options) + oracle_settings(options.task, labelled=full_depth.labels is not None)
        to_time = [] if options.sweep_from_one_pass else [setting for setting in settings if not setting.is_oracle]
        timed_runs, full_depth_seconds = time_settings(model, dataloader, accelerator, to_time, threshold,
                                                       description)
        for setting in settings:
            simulated = simulate(full_depth, setting, threshold)
            timed = setting in timed_runs
            predictions = timed_runs[setting] if timed else simulated
            entry = {"checkpoint": checkpoint_name, "step": step, "eval_set": eval_set, **setting.as_dict(),
                     "regression_threshold": threshold if options.task.is_regression else None,
                     "batch_size": options.eval_batch_size, "num_layers": num_layers,
                     "precision": precision(accelerator)}
            entry.update(summarize(options.task, predictions, num_layers))
            entry["full_depth_seconds"] = full_depth_seconds.get(setting)
            if timed:
                # Agreement of the real run with the one-pass simulation: 1.0 up to floating-point ties.
                entry["simulation_agreement"] = float((simulated.exit_layers == predictions.exit_layers).mean())
            entries.append(entry)
    return add_wall_speedups(entries), per_layer


def time_settings(model, dataloader, accelerator, settings, regression_threshold, description):
    """
    Run `model` over `dataloader` at each of `settings` (rules, not oracles) and time each run. Returns the
    `Predictions` of each setting, and for each the full-depth seconds its wall speed-up is measured against (none
    when full depth is not among `settings`).

    An untimed full-depth run first warms the model up (allocator, kernels, caches), so that no timed run pays the
    start-up. Full depth is then timed before the first other setting and again after each one, and each setting is
    measured against the mean of the two full-depth runs on either side of it: drift over the sweep (a machine that
    warms up or gets busier) then counts against both sides alike, so that a setting that runs every layer reads
    1.00x within noise. Full depth's own time is the mean of all its runs. This costs one full-depth run per setting.
    """
    if not settings:
        return {}, {}
    full_depth_kwargs = FULL_DEPTH.model_kwargs(regression_threshold)

    def run(setting, note=""):
        return predict(model, dataloader, accelerator, setting.model_kwargs(regression_threshold),
                       f"{description} {setting.label}{note}")

    predict(model, dataloader, accelerator, full_depth_kwargs, f"{description} warm-up")
    if FULL_DEPTH not in settings:  # nothing to measure against
        return {setting: run(setting) for setting in settings}, {}
    runs, full_depth_seconds = {}, {}
    full_depth_runs = [run(FULL_DEPTH)]
    for setting in settings:
        if setting == FULL_DEPTH:
            continue
        runs[setting] = run(setting)
        full_depth_runs.append(run(FULL_DEPTH, " (again)"))
        full_depth_seconds[setting] = (full_depth_runs[-2].seconds + full_depth_runs[-1].seconds) / 2
    mean_seconds = float(np.mean([predictions.seconds for predictions in full_depth_runs]))
    runs[FULL_DEPTH] = dataclasses.replace(full_depth_runs[0], seconds=mean_seconds)
    full_depth_seconds[FULL_DEPTH] = mean_seconds
    return runs, full_depth_seconds


def plot_results(options, entries, per_layer):
    """One trade-off plot per (checkpoint, eval set), next to the results. Returns the paths written."""
    from .plotting import plot_tradeoff  # matplotlib only where a plot is drawn

    metric = main_metric_name(options.task)
    paths = []
    for layers in per_layer:
        key = (layers["checkpoint"], layers["eval_set"])
        points = [entry for entry in entries if (entry["checkpoint"], entry["eval_set"]) == key]
        path = os.path.join(options.output_dir, f"tradeoff_{key[0]}_{key[1]}.png")
        title = f"{options.task.name.upper()} {key[1]} ({key[0]})"
        paths.append(plot_tradeoff(points, layers["layers"], metric, title, path))
    return paths


def write_test_predictions(options, accelerator, model, test_dataloaders):
    """GLUE submission files for every exit setting, from one full-depth pass over each test split."""
    threshold = model.config.regression_threshold
    written = []
    for split, dataloader in test_dataloaders.items():
        full_depth = predict(model, dataloader, accelerator, FULL_DEPTH.model_kwargs(threshold),
                             f"test {split} every layer", all_layers=True)
        if not accelerator.is_main_process:
            continue
        for setting in exit_settings(options):
            folder = os.path.join(options.output_dir, "predictions", setting.slug)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, submission_file_name(options.task, split))
            logits = simulate(full_depth, setting, threshold).logits
            write_submission(path, options.task, answers(options.task, logits))
            written.append(path)
    return written


def log_evaluation(tb_writer, entries, per_layer, step):
    """Metrics, exit layers (mean and histogram) per setting, and each layer's metrics, to TensorBoard."""
    for entry in entries:
        prefix = f"eval/{entry['eval_set']}/{ExitSetting.from_entry(entry).slug}"
        for name, value in entry.get("metrics", {}).items():
            tb_writer.add_scalar(f"{prefix}/{name}", value, step)
        tb_writer.add_scalar(f"{prefix}/avg_exit_layer", entry["avg_exit_layer"], step)
        layers, counts = zip(*((int(layer), count) for layer, count in entry["exit_histogram"].items()))
        tb_writer.add_histogram(f"{prefix}/exit_layers", np.repeat(layers, counts), step,
                                bins=np.arange(0.5, len(layers) + 1))
    for layers in per_layer:
        for row in layers["layers"]:
            for name, value in row.items():
                if name != "layer":
                    tb_writer.add_scalar(f"eval/{layers['eval_set']}/layer_{row['layer']}/{name}", value, step)
