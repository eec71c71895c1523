"""Evaluate a PABEE model at one exit setting, summarise what it did, and keep every result."""

import datetime
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .glue import GlueTask, compute_metrics
from .modeling_pabee import simulate_exit_layers

RESULTS_JSON = "eval_results.json"
RESULTS_TABLE = "eval_results.txt"
EARLIER_RESULTS_TABLE = "eval_results.earlier.txt"


# The two oracle bounds: each example exits at the first layer whose answer equals the full-depth answer, or at the
# first layer that answers correctly. No real rule can know either; they say how much room a model leaves.
ORACLES = {"oracle": "full-depth answer", "oracle-correct": "earliest correct"}


@dataclass(frozen=True)
class ExitSetting:
    """
    One point of a sweep: a patience (optionally with the confidence gate `confidence` on its counter), a threshold
    of another exit criterion, or one of the oracle bounds (criterion "oracle" or "oracle-correct", value unused).
    A rule may carry the slowdown defences: the depth cap `max_exit_layer` and the uncertainty guard `slowdown_guard`
    (see the model's config).
    """

    criterion: str  # "patience", "entropy", "confidence", or an oracle (see ORACLES)
    value: float  # the patience (an integer) or the threshold
    confidence: float = 0.0  # the gate of gated patience: 0 is plain PABEE
    max_exit_layer: int | None = None
    slowdown_guard: float | None = None

    @classmethod
    def from_entry(cls, entry):
        """The setting of a result entry (see `as_dict`)."""
        defences = {"max_exit_layer": entry.get("max_exit_layer"), "slowdown_guard": entry.get("slowdown_guard")}
        if entry["criterion"] == "patience":
            return cls("patience", entry["patience"], entry.get("exit_confidence") or 0.0, **defences)
        return cls(entry["criterion"], 0 if entry["criterion"] in ORACLES else entry["threshold"], **defences)

    @property
    def is_defended(self):
        return self.max_exit_layer is not None or self.slowdown_guard is not None

    def defended(self, max_exit_layer=None, slowdown_guard=None):
        """This rule with the given slowdown defences (None: off)."""
        return ExitSetting(self.criterion, self.value, self.confidence, max_exit_layer, slowdown_guard)

    @property
    def is_full_depth(self):
        return self.criterion == "patience" and self.value == 0 and not self.is_defended

    @property
    def is_oracle(self):
        return self.criterion in ORACLES

    @property
    def rule(self):
        """The exit rule, as the trade-off plot and the study group settings: "gated patience 0.7", "entropy"..."""
        return f"gated patience {self.confidence:g}" if self.confidence else self.criterion

    @property
    def label(self):
        if self.is_oracle:
            return f"oracle: {ORACLES[self.criterion]}"
        defences = "" if self.max_exit_layer is None else f", cap {self.max_exit_layer}"
        defences += "" if self.slowdown_guard is None else f", guard {self.slowdown_guard:g}"
        if self.criterion == "patience":
            gate = f", confidence >= {self.confidence:g}" if self.confidence else ""
            return f"patience {int(self.value)}{gate}{defences}"
        return f"{self.criterion} {'<' if self.criterion == 'entropy' else '>'} {self.value:g}{defences}"

    @property
    def slug(self):
        """
        The label as a file and TensorBoard name: "patience_3", "patience_2_confidence_ge_0.7", "entropy_lt_0.2",
        "confidence_gt_0.9", "oracle_full-depth_answer".
        """
        return (self.label.replace(", ", "_").replace(": ", "_").replace(" >= ", "_ge_").replace(" < ", "_lt_")
                .replace(" > ", "_gt_").replace(" ", "_"))

    def model_kwargs(self, regression_threshold):
        """The keyword arguments of the model's forward that select this setting."""
        if self.is_oracle:
            raise ValueError(f"{self.label} is a bound computed from every layer's answers, not a rule a model runs")
        defences = {}
        if self.max_exit_layer is not None:
            defences["max_exit_layer"] = int(self.max_exit_layer)
        if self.slowdown_guard is not None:
            defences["slowdown_guard"] = float(self.slowdown_guard)
        if self.criterion == "patience":
            return {"exit_criterion": "patience", "patience": int(self.value),
                    "regression_threshold": regression_threshold, "exit_confidence": float(self.confidence),
                    **defences}
        return {"exit_criterion": self.criterion, "exit_threshold": float(self.value),
                "regression_threshold": regression_threshold, **defences}

    def as_dict(self):
        defences = {"max_exit_layer": self.max_exit_layer, "slowdown_guard": self.slowdown_guard}
        if self.criterion == "patience":
            return {"setting": self.label, "criterion": "patience", "patience": int(self.value), "threshold": None,
                    "exit_confidence": float(self.confidence), **defences}
        threshold = None if self.is_oracle else self.value
        return {"setting": self.label, "criterion": self.criterion, "patience": None, "threshold": threshold,
                "exit_confidence": None, **defences}


@dataclass
class Predictions:
    """What a model answered on one evaluation set, and how long it took."""

    logits: np.ndarray  # (examples, num_labels)
    labels: np.ndarray | None  # (examples,), None for unlabelled (test) data
    exit_layers: np.ndarray  # (examples,), 1-based
    seconds: float
    all_layer_logits: np.ndarray | None = None  # (examples, num_layers, num_labels) when asked for


def precision(accelerator):
    """What `predict` computes in: "fp16" or "bf16" (autocast, as --fp16 / --bf16 ask), or "fp32"."""
    return "fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict(model, dataloader, accelerator, model_kwargs, description="Evaluating", all_layers=False):
    """
    Run `model` over `dataloader` with the exit setting in `model_kwargs` and gather the answers from every process.
    Every forward pass runs under the accelerator's autocast, whatever the model (just trained, or loaded from a
    folder), so that all models are evaluated in the precision the accelerator was made with. The time covers the
    whole loop (moving batches to the device included), measured after the device has finished its work.
    `all_layers=True` runs every layer and also returns every classifier's logits.
    """
    model.eval()
    logits, labels, exit_layers, all_layer_logits = [], [], [], []
    _synchronize(accelerator.device)
    start = time.perf_counter()
    for batch in tqdm(dataloader, desc=description, disable=not accelerator.is_local_main_process, leave=False):
        batch_labels = batch.pop("labels", None)
        with accelerator.autocast():
            output = model(**batch, **model_kwargs, output_all_layer_logits=all_layers)
        logits.append(accelerator.gather_for_metrics(output.logits.float()))
        exit_layers.append(accelerator.gather_for_metrics(output.exit_layers))
        if all_layers:
            all_layer_logits.append(accelerator.gather_for_metrics(output.all_layer_logits.float()))
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
        all_layer_logits=torch.cat(all_layer_logits).cpu().numpy() if all_layers else None,
    )


def saved_run_loader(run_dir, examples, task: GlueTask, batch_size):
    """
    The model a training run saved in folder `run_dir` (in evaluation mode) and a dataloader over `examples`,
    tokenized as the run was trained: its tokenizer, its --max_seq_length (from training_args.json), dynamic padding.
    """
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    from .classify import load_model
    from .export import takes_token_types
    from .features import convert_examples_to_features

    model, tokenizer = load_model(str(run_dir))
    with open(os.path.join(run_dir, "training_args.json")) as file:
        max_seq_length = json.load(file)["max_seq_length"]
    features = convert_examples_to_features(examples, task, tokenizer, max_seq_length, takes_token_types(model))
    return model, DataLoader(features, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))


def saved_run_every_layer(run_dir, examples, task: GlueTask, accelerator, description, batch_size=64):
    """Every classifier's logits (and the labels) on `examples`, from one full-depth pass of the run in `run_dir`."""
    model, loader = saved_run_loader(run_dir, examples, task, batch_size)
    full_depth = ExitSetting("patience", 0).model_kwargs(model.config.regression_threshold)
    return predict(model, loader, accelerator, full_depth, description, all_layers=True)


def simulate(full_depth: Predictions, setting: ExitSetting, regression_threshold):
    """
    The answers and exit layers that real early exit with `setting` gives, from the every-layer logits of one
    full-depth pass: each layer's logits do not depend on whether the example would have stopped earlier. For an
    oracle setting, the answers and exit layers of that bound (see `oracle_exit_layers`).
    """
    if setting.is_oracle:
        reference = full_depth.labels if setting.criterion == "oracle-correct" else None
        exit_layers = oracle_exit_layers(full_depth.all_layer_logits, regression_threshold, reference)
    else:
        kwargs = setting.model_kwargs(regression_threshold)
        exit_layers = simulate_exit_layers(
            torch.from_numpy(full_depth.all_layer_logits), kwargs.get("patience", 0), regression_threshold,
            kwargs["exit_criterion"], kwargs.get("exit_threshold"), kwargs.get("exit_confidence", 0.0),
            kwargs.get("max_exit_layer"), kwargs.get("slowdown_guard"),
        ).numpy()
    logits = full_depth.all_layer_logits[np.arange(len(exit_layers)), exit_layers - 1]
    return Predictions(logits=logits, labels=full_depth.labels, exit_layers=exit_layers, seconds=float("nan"))


def oracle_exit_layers(all_layer_logits, regression_threshold, labels=None):
    """
    The exit layer (1-based) of each example under an oracle, from every layer's logits `(examples, num_layers,
    num_labels)`: the first layer whose answer equals the full-depth (last) layer's answer (for regression: whose
    score is within `regression_threshold` of it, strictly; the last layer always qualifies, so for classes the
    answers are exactly the full-depth answers); or, given `labels` (classification), the first layer whose answer
    is correct, and the last layer for an example no layer gets right (its answer is wrong wherever it exits).
    """
    num_layers = all_layer_logits.shape[1]
    if all_layer_logits.shape[-1] == 1:
        scores = all_layer_logits[..., 0]
        if labels is not None:
            raise ValueError("the earliest-correct oracle needs classes: a regression score is never exactly correct")
        matches = np.abs(scores - scores[:, -1:]) < regression_threshold
        matches[:, -1] = True
    else:
        predictions = all_layer_logits.argmax(axis=-1)  # (examples, num_layers)
        reference = predictions[:, -1] if labels is None else labels
        matches = predictions == reference[:, None]
    return np.where(matches.any(axis=1), matches.argmax(axis=1) + 1, num_layers)


def oracle_settings(task: GlueTask, labelled):
    """The oracle bounds an evaluation set allows: the earliest-correct one needs labels and classes."""
    return [ExitSetting("oracle", 0)] + ([ExitSetting("oracle-correct", 0)] if labelled and not task.is_regression
                                         else [])


def layer_metrics(task: GlueTask, full_depth: Predictions):
    """The task metrics of each internal classifier on its own: where the model becomes sure of its answers."""
    return [
        {"layer": layer, **compute_metrics(task, answers(task, full_depth.all_layer_logits[:, layer - 1]),
                                           full_depth.labels)}
        for layer in range(1, full_depth.all_layer_logits.shape[1] + 1)
    ]


def answers(task: GlueTask, logits):
    """Class ids (classification) or scores (regression) from logits."""
    return logits[:, 0] if task.is_regression else logits.argmax(axis=-1)


def summarize(task: GlueTask, predictions: Predictions, num_layers):
    """
    The figures users choose a patience by: task metrics, exit layers, layer speed-up and, when the predictions come
    from a timed early-exit run rather than a simulation, time.
    """
    examples = len(predictions.exit_layers)
    timed = not np.isnan(predictions.seconds)
    average_exit_layer = float(predictions.exit_layers.mean())
    histogram = np.bincount(predictions.exit_layers, minlength=num_layers + 1)[1:]
    summary = {
        "examples": examples,
        "avg_exit_layer": average_exit_layer,
        # Layers a full-depth model runs per layer that early exit runs: the paper's speed-up, as a ratio.
        "layer_speedup": num_layers / average_exit_layer,
        "exit_histogram": {str(layer): int(count) for layer, count in enumerate(histogram, start=1)},
        "eval_seconds": predictions.seconds if timed else None,
        "examples_per_second": examples / predictions.seconds if timed and predictions.seconds > 0 else None,
    }
    if predictions.labels is not None:
        summary["metrics"] = compute_metrics(task, answers(task, predictions.logits), predictions.labels)
    return summary


def add_wall_speedups(entries):
    """
    Wall-clock speed-up of each timed entry: the seconds of the full-depth runs it was timed against
    (`full_depth_seconds`, see `pabee.sweep.time_settings`) over its own. None for an entry timed without full depth
    to compare with, and for a simulated one.
    """
    for entry in entries:
        baseline, seconds = entry.get("full_depth_seconds"), entry["eval_seconds"]
        entry["wall_speedup"] = baseline / seconds if baseline and seconds else None
    return entries


def format_table(entries, metric):
    """A plain-text table of result entries, one row per (checkpoint, eval set, exit setting), showing `metric`."""
    header = ["checkpoint", "eval set", "exit setting", metric, "avg exit layer", "layer speed-up", "seconds",
              "examples/s", "wall speed-up"]
    rows, notes = [header], []
    for entry in entries:
        value = entry.get("metrics", {}).get(metric)
        selected = entry.get("selected")
        if selected:
            notes.append(selection_note(entry))
        rows.append([
            entry["checkpoint"],
            entry["eval_set"],
            f"{entry['setting']} (selected)" if selected else entry["setting"],
            "-" if value is None else f"{value:.4f}",
            f"{entry['avg_exit_layer']:.2f}",
            f"{entry['layer_speedup']:.2f}x",
            "-" if entry["eval_seconds"] is None else f"{entry['eval_seconds']:.2f}",
            "-" if entry["examples_per_second"] is None else f"{entry['examples_per_second']:.1f}",
            "-" if entry.get("wall_speedup") is None else f"{entry['wall_speedup']:.2f}x",
        ])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.rjust(width) if column else cell.ljust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines + notes)


def selection_note(entry):
    """The line under a results table that says how its (selected) row was chosen and what it did on this set."""
    chosen = entry["selected"]
    how = (f"chosen on {chosen['calibration_examples']} calibration examples for {chosen['risk']} <= "
           f"{chosen['delta']:g} at confidence {chosen['confidence']:g}")
    if not chosen["certified"]:
        how += " (nothing faster could be certified: full depth)"
    else:
        how += f" ({chosen['calibration_risk']:.2%} on the {chosen['tested_examples']} tested)"
    return f"(selected) {entry['setting']}: {how}; {chosen['risk']} on {entry['eval_set']}: {chosen['eval_risk']:.2%}"


def _write_atomically(path, text):
    partial_path = f"{path}.partial-{os.getpid()}"
    with open(partial_path, "w") as file:
        file.write(text)
    os.replace(partial_path, path)


def read_earlier_runs(output_dir):
    """
    The runs already kept in `eval_results.json` in `output_dir` ([] if there is none). An unreadable file raises a
    `ValueError` naming it: a run checks this before it starts, so that it never ends unable to keep its results.
    """
    json_path = os.path.join(output_dir, RESULTS_JSON)
    if not os.path.exists(json_path):
        return []
    try:
        with open(json_path) as file:
            runs = json.load(file)["runs"]
        if not isinstance(runs, list):
            raise TypeError("'runs' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{json_path} is not a results file this program can add to ({error}); move it away to "
                         "keep it and start a new one") from None
    return runs


def save_results(output_dir, run_entries, run_info, layer_results=()):
    """
    Add this run's entries, and the per-layer metrics of each evaluated (checkpoint, eval set), to
    `eval_results.json` in `output_dir` (earlier runs' entries are kept, never replaced) and rewrite
    `eval_results.txt`, the same results as tables, one per run. Returns the paths written.
    """
    json_path = os.path.join(output_dir, RESULTS_JSON)
    table_path = os.path.join(output_dir, RESULTS_TABLE)
    if os.path.exists(table_path) and not os.path.exists(json_path):
        # A table with no JSON beside it was written by something else (e.g. the reference script): keep it.
        os.replace(table_path, os.path.join(output_dir, EARLIER_RESULTS_TABLE))
    runs = read_earlier_runs(output_dir)
    runs.append({**run_info, "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "entries": run_entries, "layer_metrics": list(layer_results)})
    _write_atomically(json_path, json.dumps({"runs": runs}, indent=2) + "\n")

    tables = [
        f"Run started {run['started']} ({run['task']}):\n{format_table(run['entries'], run['metric'])}" for run in runs
    ]
    _write_atomically(table_path, "\n\n".join(tables) + "\n")
    return json_path, table_path
