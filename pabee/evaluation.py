"""Evaluate a PABEE model at one patience, summarise what it did, and keep every result."""

import datetime
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .glue import GlueTask, compute_metrics

RESULTS_JSON = "eval_results.json"
RESULTS_TABLE = "eval_results.txt"


@dataclass
class Predictions:
    """What a model answered on one evaluation set, and how long it took."""

    logits: np.ndarray  # (examples, num_labels)
    labels: np.ndarray | None  # (examples,), None for unlabelled (test) data
    exit_layers: np.ndarray  # (examples,), 1-based
    seconds: float


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict(model, dataloader, accelerator, patience, regression_threshold, description="Evaluating"):
    """
    Run `model` over `dataloader` with early exit at `patience` and gather the answers from every process. The time
    covers the whole loop (moving batches to the device included), measured after the device has finished its work.
    """
    model.eval()
    logits, labels, exit_layers = [], [], []
    _synchronize(accelerator.device)
    start = time.perf_counter()
    for batch in tqdm(dataloader, desc=description, disable=not accelerator.is_local_main_process, leave=False):
        batch_labels = batch.pop("labels", None)
        output = model(**batch, patience=patience, regression_threshold=regression_threshold)
        logits.append(accelerator.gather_for_metrics(output.logits.float()))
        exit_layers.append(accelerator.gather_for_metrics(output.exit_layers))
        if batch_labels is not None:
            labels.append(accelerator.gather_for_metrics(batch_labels))
    _synchronize(accelerator.device)
    seconds = time.perf_counter() - start
    # Every process timed its own shard: the evaluation took as long as the slowest one.
    seconds = accelerator.reduce(torch.tensor(seconds, device=accelerator.device), reduction="max").item()
    return Predictions(
        logits=torch.cat(logits).cpu().numpy(),
        labels=torch.cat(labels).cpu().numpy() if labels else None,
        exit_layers=torch.cat(exit_layers).cpu().numpy(),
        seconds=seconds,
    )


def answers(task: GlueTask, logits):
    """Class ids (classification) or scores (regression) from logits."""
    return logits[:, 0] if task.is_regression else logits.argmax(axis=-1)


def summarize(task: GlueTask, predictions: Predictions, num_layers):
    """The figures users choose a patience by: task metrics, exit layers, layer speed-up, time."""
    examples = len(predictions.exit_layers)
    average_exit_layer = float(predictions.exit_layers.mean())
    histogram = np.bincount(predictions.exit_layers, minlength=num_layers + 1)[1:]
    summary = {
        "examples": examples,
        "avg_exit_layer": average_exit_layer,
        # Layers a full-depth model runs per layer that early exit runs: the paper's speed-up, as a ratio.
        "layer_speedup": num_layers / average_exit_layer,
        "exit_histogram": {str(layer): int(count) for layer, count in enumerate(histogram, start=1)},
        "eval_seconds": predictions.seconds,
        "examples_per_second": examples / predictions.seconds if predictions.seconds > 0 else None,
    }
    if predictions.labels is not None:
        summary["metrics"] = compute_metrics(task, answers(task, predictions.logits), predictions.labels)
    return summary


def add_wall_speedups(entries):
    """Wall-clock speed-up of each entry against the patience-0 (full-depth) entry of its checkpoint and data set."""
    full_depth_seconds = {
        (entry["checkpoint"], entry["eval_set"]): entry["eval_seconds"] for entry in entries if entry["patience"] == 0
    }
    for entry in entries:
        baseline = full_depth_seconds.get((entry["checkpoint"], entry["eval_set"]))
        entry["wall_speedup"] = baseline / entry["eval_seconds"] if baseline and entry["eval_seconds"] > 0 else None
    return entries


def format_table(entries, metric):
    """A plain-text table of result entries, one row per (checkpoint, eval set, patience), showing `metric`."""
    header = ["checkpoint", "eval set", "patience", metric, "avg exit layer", "layer speed-up", "seconds",
              "examples/s", "wall speed-up"]
    rows = [header]
    for entry in entries:
        value = entry.get("metrics", {}).get(metric)
        rows.append([
            entry["checkpoint"],
            entry["eval_set"],
            str(entry["patience"]),
            "-" if value is None else f"{value:.4f}",
            f"{entry['avg_exit_layer']:.2f}",
            f"{entry['layer_speedup']:.2f}x",
            f"{entry['eval_seconds']:.2f}",
            "-" if entry["examples_per_second"] is None else f"{entry['examples_per_second']:.1f}",
            "-" if entry.get("wall_speedup") is None else f"{entry['wall_speedup']:.2f}x",
        ])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.rjust(width) if column else cell.ljust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _write_atomically(path, text):
    partial_path = f"{path}.partial-{os.getpid()}"
    with open(partial_path, "w") as file:
        file.write(text)
    os.replace(partial_path, path)


def save_results(output_dir, run_entries, run_info):
    """
    Add this run's entries to `eval_results.json` in `output_dir` (earlier runs' entries are kept, never replaced)
    and rewrite `eval_results.txt`, the same results as tables, one per run. Returns the paths written.
    """
    json_path = os.path.join(output_dir, RESULTS_JSON)
    runs = []
    if os.path.exists(json_path):
        with open(json_path) as file:
            runs = json.load(file).get("runs", [])
    runs.append({**run_info, "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "entries": run_entries})
    _write_atomically(json_path, json.dumps({"runs": runs}, indent=2) + "\n")

    tables = [
        f"Run started {run['started']} ({run['task']}):\n{format_table(run['entries'], run['metric'])}" for run in runs
    ]
    table_path = os.path.join(output_dir, RESULTS_TABLE)
    _write_atomically(table_path, "\n\n".join(tables) + "\n")
    return json_path, table_path
