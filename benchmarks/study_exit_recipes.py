"""Which early-exit recipe pays off on a small sentence encoder: accuracy against speed-up per patience, per recipe.

Each recipe fine-tunes the same backbone on the same data with the same budget and seed through
run_glue_with_pabee.py, which then evaluates patience 0..L-1 (timed, batch 32; with --batch1 also batch 1). On top of
its figures, this script measures each patience's accuracy difference against the recipe's own full-depth answer and
against a plain fine-tuned classifier, with 95% paired bootstrap intervals over the dev examples (paired differences
are far tighter than the +-2.5 points of an accuracy on 1,000 examples).

    python benchmarks/study_exit_recipes.py --output_dir output/study            # the demo setting, ~35 min on 2 cores
    python benchmarks/study_exit_recipes.py --recipes reference,mean --seeds 1,2  # a subset, more seeds

Recipes (see --help): plain (last layer only: the baseline), reference (the paper: pooler, weights 1..L), mean
(internal classifiers over mean-pooled hidden states), mean-uniform (and uniform layer weights), mean-lr10 (and
classifiers trained at 10x the learning rate).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import run_glue_with_pabee  # noqa: E402
from pabee import BertForSequenceClassificationWithPabee  # noqa: E402
from pabee.evaluation import ExitSetting, answers, predict, simulate  # noqa: E402
from pabee.features import convert_examples_to_features  # noqa: E402
from pabee.glue import get_task, read_glue_split  # noqa: E402

RECIPES = {
    "plain": ["--layer_loss_weights", "last"],
    "reference": [],
    "mean": ["--exit_pooling", "mean"],
    "mean-uniform": ["--exit_pooling", "mean", "--layer_loss_weights", "uniform"],
    "mean-lr10": ["--exit_pooling", "mean", "--classifier_lr_multiplier", "10"],
}
DEMO_TRAINING = ["--max_seq_length", "64", "--per_gpu_train_batch_size", "32", "--learning_rate", "5e-5",
                 "--num_train_epochs", "1", "--warmup_steps", "30", "--logging_steps", "50", "--save_steps", "0"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="output/study", help="Where each recipe's run and the results go.")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"Comma-separated recipes among {', '.join(RECIPES)}; 'plain' is the baseline.")
    parser.add_argument("--seeds", default="42", help="Comma-separated seeds; each recipe is trained once per seed.")
    parser.add_argument("--data_dir", default="data/SST-2",
                        help="A GLUE SST-2 folder; built from the demo corpus (python -m pabee.demo_data) if missing.")
    parser.add_argument("--model_name_or_path", default=None,
                        help="Backbone to fine-tune. Default: the demo's pretrained MiniLM.")
    parser.add_argument("--batch1", action="store_true",
                        help="Also time every patience at evaluation batch size 1 (slow: one example at a time).")
    parser.add_argument("--bootstrap", type=int, default=2000, help="Bootstrap resamples for the intervals.")
    parser.add_argument("--training_args", default=None,
                        help="Training flags for run_glue_with_pabee.py, replacing the demo's (quote them).")
    return parser.parse_args(argv)


def train_and_evaluate(args, recipe, seed, num_layers):
    """Fine-tune one recipe (or reuse a finished run) and return its output folder."""
    output_dir = Path(args.output_dir) / recipe / f"seed-{seed}"
    patience = ",".join(str(p) for p in range(num_layers))
    training = args.training_args.split() if args.training_args else DEMO_TRAINING
    model = ["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else []
    if not (output_dir / "model.safetensors").exists():
        run_glue_with_pabee.main([
            "--task_name", "SST-2", "--data_dir", args.data_dir, "--output_dir", str(output_dir), *model,
            "--do_train", "--do_eval", "--overwrite_output_dir", "--seed", str(seed), "--patience", patience,
            "--per_gpu_eval_batch_size", "32", *training, *RECIPES[recipe],
        ])
    if args.batch1 and not batch1_entries(output_dir):
        run_glue_with_pabee.main([
            "--task_name", "SST-2", "--data_dir", args.data_dir, "--output_dir", str(output_dir), "--do_eval",
            "--patience", patience, "--per_gpu_eval_batch_size", "1", *max_length(training),
        ])
    return output_dir


def max_length(training_flags):
    """The --max_seq_length of the training flags, for evaluating on the same inputs."""
    index = training_flags.index("--max_seq_length") if "--max_seq_length" in training_flags else None
    return [] if index is None else training_flags[index : index + 2]


def read_runs(output_dir):
    with open(output_dir / "eval_results.json") as file:
        return json.load(file)["runs"]


def batch1_entries(output_dir):
    return [e for run in read_runs(output_dir) for e in run["entries"] if e["batch_size"] == 1]


@torch.no_grad()
def correctness(output_dir, data_dir, num_layers):
    """Per patience, whether each dev example is answered correctly: (patience -> bool array), from one pass."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, DataCollatorWithPadding

    task = get_task("sst-2")
    model = BertForSequenceClassificationWithPabee.from_pretrained(output_dir).eval()
    # With the config given, AutoTokenizer does not ask (on a terminal) whether to run the folder's modeling code.
    tokenizer = AutoTokenizer.from_pretrained(output_dir, config=model.config)
    with open(output_dir / "training_args.json") as file:
        max_seq_length = json.load(file)["max_seq_length"]
    features = convert_examples_to_features(read_glue_split(data_dir, task, "dev"), task, tokenizer, max_seq_length)
    loader = DataLoader(features, batch_size=64, collate_fn=DataCollatorWithPadding(tokenizer))
    accelerator = Accelerator(cpu=True)
    full_depth = predict(model, loader, accelerator, ExitSetting("patience", 0).model_kwargs(0.1), "dev every layer",
                         all_layers=True)
    return {
        patience: answers(task, simulate(full_depth, ExitSetting("patience", patience), 0.1).logits)
        == full_depth.labels
        for patience in range(num_layers)
    }


def paired_interval(difference_per_example, resamples, seed=0):
    """Mean of a per-example difference and its 95% bootstrap interval, in points."""
    rng = np.random.default_rng(seed)
    n = len(difference_per_example)
    means = difference_per_example[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    return 100 * difference_per_example.mean(), 100 * np.percentile(means, 2.5), 100 * np.percentile(means, 97.5)


def main(argv=None):
    args = parse_args(argv)
    # The plain baseline first, so that every other recipe can be compared with it.
    recipes = sorted(args.recipes.split(","), key=lambda recipe: recipe != "plain")
    unknown = set(recipes) - set(RECIPES)
    if unknown:
        sys.exit(f"study_exit_recipes.py: error: unknown recipes {sorted(unknown)}; choose among {list(RECIPES)}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if not os.path.isdir(args.data_dir):
        from pabee.demo_data import build_sst2_demo

        build_sst2_demo(args.data_dir)
    backbone = args.model_name_or_path or run_glue_with_pabee.default_model_path()
    from transformers import AutoConfig

    num_layers = AutoConfig.from_pretrained(backbone).num_hidden_layers

    rows, correct = [], {}
    for recipe in recipes:
        for seed in seeds:
            output_dir = train_and_evaluate(args, recipe, seed, num_layers)
            correct[recipe, seed] = correctness(output_dir, args.data_dir, num_layers)
            timed = {(e["batch_size"], e["patience"]): e for run in read_runs(output_dir) for e in run["entries"]
                     if e["checkpoint"] == "final"}
            # The plain baseline's internal classifiers are untrained: only its full depth means something.
            for patience in range(1 if recipe == "plain" else num_layers):
                entry = timed[32, patience]
                row = {"recipe": recipe, "seed": seed, "patience": patience, "acc": 100 * entry["metrics"]["acc"],
                       "avg_exit_layer": entry["avg_exit_layer"], "layer_speedup": entry["layer_speedup"],
                       "wall_speedup_batch32": entry["wall_speedup"],
                       "wall_speedup_batch1": timed.get((1, patience), {}).get("wall_speedup")}
                own = correct[recipe, seed][patience].astype(float) - correct[recipe, seed][0]
                row["vs_full_depth"] = paired_interval(own, args.bootstrap)
                if ("plain", seed) in correct:
                    versus_plain = correct[recipe, seed][patience].astype(float) - correct["plain", seed][0]
                    row["vs_plain"] = paired_interval(versus_plain, args.bootstrap)
                rows.append(row)

    layer_accuracy = {f"{recipe}/seed-{seed}": per_layer_accuracy(Path(args.output_dir) / recipe / f"seed-{seed}")
                      for recipe, seed in correct}
    report = format_report(rows)
    print(report)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "study_results.json"), "w") as file:
        json.dump({"rows": rows, "layer_accuracy": layer_accuracy, "recipes": {r: RECIPES[r] for r in recipes},
                   "training_args": args.training_args or " ".join(DEMO_TRAINING), "seeds": seeds}, file, indent=2)
    with open(os.path.join(args.output_dir, "study_results.md"), "w") as file:
        file.write(report + "\n")
    return rows


def per_layer_accuracy(output_dir):
    """The accuracy of each internal classifier alone, as kept by run_glue_with_pabee.py's evaluation."""
    layers = next(layer for run in read_runs(output_dir) for layer in run["layer_metrics"]
                  if layer["checkpoint"] == "final")
    return [100 * row["acc"] for row in layers["layers"]]


def format_report(rows):
    def interval(value):
        if value is None:
            return "-"
        mean, low, high = value
        return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"

    def speedup(value):
        return "-" if value is None else f"{value:.2f}x"

    lines = ["| recipe | seed | patience | accuracy | vs own full depth | vs plain | avg exit layer | "
             "layer speed-up | wall speed-up (batch 32) | wall speed-up (batch 1) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['recipe']} | {row['seed']} | {row['patience']} | {row['acc']:.1f} | "
            f"{interval(row['vs_full_depth'])} | {interval(row.get('vs_plain'))} | {row['avg_exit_layer']:.2f} | "
            f"{row['layer_speedup']:.2f}x | {speedup(row['wall_speedup_batch32'])} | "
            f"{speedup(row['wall_speedup_batch1'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
