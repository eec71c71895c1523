"""Which training recipe and exit rule pay off on a small sentence encoder: accuracy against layer speed-up.

Each recipe fine-tunes the same backbone on the same data through run_glue_with_pabee.py, once per seed and per
training budget (--num_train_epochs). Every run is then evaluated on the dev set from one full-depth pass, which gives
every rule's exact answers (no timing): patience 1..L-1, gated patience (each patience under each confidence gate),
entropy and confidence thresholds, and the two oracle bounds (each review exits at the first layer whose answer equals
the full-depth answer, or at its earliest correct layer). Per (budget, recipe, rule) it reports the setting with the
best mean layer speed-up whose mean accuracy is within 1 point of plain fine-tuning (same budget and seeds), with a
95% bootstrap interval of the paired difference over the dev reviews (each review's difference averaged over seeds).
Finished runs are reused, so an interrupted study resumes where it stopped. Last, each rule's best setting of the
leading recipe is run for real (early exit at batch 32 on the dev set), timed against full depth over --wall_rounds
interleaved rounds per seed: its wall speed-up, on a machine that runs nothing else.

    python benchmarks/study_exit_recipes.py --output_dir output/study    # plain, 3 recipes, seed 42, the demo's budget
    python benchmarks/study_exit_recipes.py --leading_recipes mean-10x+distill+ge --leading_seeds 42,43,44 \
        --num_train_epochs 1,3       # and two more seeds of plain and of the demo's recipe; a 3-epoch budget too

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
from pabee import BertForSequenceClassificationWithPabee  # noqa: E402
from pabee.evaluation import ExitSetting, answers, oracle_settings, predict, simulate  # noqa: E402
from pabee.features import convert_examples_to_features  # noqa: E402
from pabee.glue import get_task, read_glue_split  # noqa: E402

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
GATES = tuple(round(0.5 + 0.05 * i, 2) for i in range(1, 10))  # 0.55 .. 0.95: simulated from one pass, so a fine grid
ENTROPY_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 14))  # 0.05 .. 0.65 nats (two classes: ln 2 = 0.69)
CONFIDENCE_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(1, 10))  # 0.55 .. 0.95
RULES = ("patience", "gated patience", "entropy", "confidence")
PABEE_FAMILY = ("patience", "gated patience")
TOLERANCE = 1.0  # points of accuracy below plain fine-tuning that a setting may lose
WALL_BATCH_SIZE = 32  # the demo's evaluation batch size
REGRESSION_THRESHOLD = 0.1  # what the exit rules take for a regression task; SST-2 has classes, so it is unused


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="output/study",
                        help="Where each run (OUTPUT_DIR/epochs-E/RECIPE/seed-S) and the results go.")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES,
                        help=f"Comma-separated recipes among {', '.join(RECIPES)}; 'plain', the baseline, is always "
                             "run too.")
    parser.add_argument("--seeds", default="42", help="Comma-separated seeds; each recipe is trained once per seed.")
    parser.add_argument("--leading_recipes", default="",
                        help="Comma-separated recipes (among --recipes) trained with --leading_seeds instead, as is "
                             "plain (with both seed lists), to see how much of their figures is training noise.")
    parser.add_argument("--leading_seeds", default="42,43,44", help="The seeds of --leading_recipes.")
    parser.add_argument("--num_train_epochs", default="1",
                        help="Comma-separated training budgets in epochs (the demo's is 1); each is a separate study.")
    parser.add_argument("--data_dir", default="data/SST-2",
                        help="A GLUE SST-2 folder; built from the demo corpus (python -m pabee.demo_data) if missing.")
    parser.add_argument("--model_name_or_path", default=None,
                        help="Backbone to fine-tune. Default: the demo's pretrained MiniLM.")
    parser.add_argument("--bootstrap", type=int, default=2000, help="Bootstrap resamples for the intervals.")
    parser.add_argument("--training_args", default=None,
                        help="Training flags for run_glue_with_pabee.py, replacing the demo's (quote them).")
    parser.add_argument("--wall_rounds", type=int, default=5,
                        help="Rounds of the wall-clock timing of the leading recipe's best settings against full "
                             f"depth (real early exit, batch {WALL_BATCH_SIZE}, interleaved; the median per setting "
                             "and seed). 0 skips it. Time it on a machine that runs nothing else.")
    parser.add_argument("--plot", default="docs/exit_frontier.png",
                        help="Where to draw each rule's frontier against the oracle, for the leading recipe of the "
                             "first budget ('' for no plot).")
    args = parser.parse_args(argv)
    if args.wall_rounds < 0:
        parser.error(f"--wall_rounds must be 0 or more, not {args.wall_rounds}")
    args.leading_recipes = [recipe for recipe in args.leading_recipes.split(",") if recipe]
    args.recipes = list(dict.fromkeys(["plain", *args.recipes.split(","), *args.leading_recipes]))  # baseline first
    unknown = [recipe for recipe in args.recipes if recipe not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose among {', '.join(RECIPES)}")
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
        leading_seeds = [int(seed) for seed in args.leading_seeds.split(",")]
        args.num_train_epochs = [float(epochs) for epochs in args.num_train_epochs.split(",")]
    except ValueError as error:
        parser.error(f"--seeds and --leading_seeds take integers, --num_train_epochs numbers: {error}")
    args.seeds = {recipe: seeds for recipe in args.recipes}
    for recipe in args.leading_recipes:
        args.seeds[recipe] = leading_seeds
    if args.leading_recipes:
        args.seeds["plain"] = sorted(set(seeds) | set(leading_seeds))
    return args


def run_dir(args, epochs, recipe, seed):
    return Path(args.output_dir) / f"epochs-{epochs:g}" / recipe / f"seed-{seed}"


def train(args, epochs, recipe, seed, num_layers):
    """Fine-tune one recipe unless a finished run is there; returns its output folder."""
    output_dir = run_dir(args, epochs, recipe, seed)
    if (output_dir / "model.safetensors").exists():
        return output_dir
    training = args.training_args.split() if args.training_args else DEMO_TRAINING
    model = ["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else []
    run_glue_with_pabee.main([
        "--task_name", "SST-2", "--data_dir", args.data_dir, "--output_dir", str(output_dir), *model,
        "--do_train", "--do_eval", "--sweep_from_one_pass", "--overwrite_output_dir", "--seed", str(seed),
        "--patience", ",".join(str(p) for p in range(num_layers)), "--exit_confidence", ",".join(map(str, GATES)),
        "--per_gpu_eval_batch_size", "32", "--num_train_epochs", f"{epochs:g}", *training, *RECIPES[recipe],
    ])
    return output_dir


def load_run(output_dir, data_dir, batch_size):
    """A finished run's model and its dev set, tokenized as the run was trained."""
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, DataCollatorWithPadding

    task = get_task("sst-2")
    model = BertForSequenceClassificationWithPabee.from_pretrained(output_dir).eval()
    # With the config given, AutoTokenizer does not ask (on a terminal) whether to run the folder's modeling code.
    tokenizer = AutoTokenizer.from_pretrained(output_dir, config=model.config)
    with open(output_dir / "training_args.json") as file:
        max_seq_length = json.load(file)["max_seq_length"]
    features = convert_examples_to_features(read_glue_split(data_dir, task, "dev"), task, tokenizer, max_seq_length)
    return model, DataLoader(features, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))


def full_depth_pass(output_dir, data_dir):
    """Every classifier's logits on the dev set, from one pass through every layer."""
    from accelerate import Accelerator

    model, loader = load_run(output_dir, data_dir, batch_size=64)
    full_depth = ExitSetting("patience", 0).model_kwargs(REGRESSION_THRESHOLD)
    return predict(model, loader, Accelerator(cpu=True), full_depth, "dev every layer", all_layers=True)


def time_settings(output_dir, data_dir, settings, rounds, full_depth):
    """
    Real early exit with each setting on the dev set at batch WALL_BATCH_SIZE, timed against full depth in the same
    `rounds` rounds (full depth, then each setting, in turn). Per setting: the median full-depth time over its median
    time, and the share of reviews whose exit layer equals its simulation from the full-depth pass `full_depth`.
    """
    from accelerate import Accelerator

    model, loader = load_run(output_dir, data_dir, WALL_BATCH_SIZE)
    accelerator = Accelerator(cpu=True)
    baseline = ExitSetting("patience", 0)
    # First-call allocations, untimed.
    predict(model, loader, accelerator, baseline.model_kwargs(REGRESSION_THRESHOLD), "warm-up")
    seconds = {setting: [] for setting in [baseline, *settings]}
    exit_layers = {}
    for _ in range(rounds):
        for setting in seconds:
            predictions = predict(model, loader, accelerator, setting.model_kwargs(REGRESSION_THRESHOLD),
                                  f"timing {setting.label}")
            seconds[setting].append(predictions.seconds)
            exit_layers[setting] = predictions.exit_layers
    full_depth_seconds = np.median(seconds[baseline])
    results = {}
    for setting in settings:
        simulated = simulate(full_depth, setting, REGRESSION_THRESHOLD).exit_layers
        results[setting.label] = {"wall_speedup": float(full_depth_seconds / np.median(seconds[setting])),
                                  "simulation_agreement": float(np.mean(exit_layers[setting] == simulated))}
    return results


def rule_settings(num_layers):
    """Every setting of every rule the study compares, by rule."""
    patience = range(1, num_layers - 1)  # patience >= L - 1 never exits early
    return {
        "patience": [ExitSetting("patience", p) for p in patience],
        "gated patience": [ExitSetting("patience", p, gate) for gate in GATES for p in patience],
        "entropy": [ExitSetting("entropy", threshold) for threshold in ENTROPY_THRESHOLDS],
        "confidence": [ExitSetting("confidence", threshold) for threshold in CONFIDENCE_THRESHOLDS],
    }


def analyse_run(full_depth, num_layers):
    """Per setting (and oracle): which dev reviews it answers correctly, and its layer speed-up."""
    task = get_task("sst-2")
    settings = {"full depth": [ExitSetting("patience", 0)], **rule_settings(num_layers),
                "oracle": oracle_settings(task, labelled=True)}
    results = {}
    for rule, values in settings.items():
        for setting in values:
            simulated = simulate(full_depth, setting, REGRESSION_THRESHOLD)
            results[rule, setting.label] = {"correct": answers(task, simulated.logits) == full_depth.labels,
                                            "layer_speedup": num_layers / simulated.exit_layers.mean()}
    layers = full_depth.all_layer_logits.argmax(axis=-1).T  # (layers, reviews): each classifier's answers
    layer_accuracy = (layers == full_depth.labels).mean(axis=1)
    agreement = (layers == layers[-1]).mean(axis=1)  # with the full-depth answer
    return results, {"layer_accuracy": list(100 * layer_accuracy), "agreement_with_full_depth": list(100 * agreement)}


def paired_interval(difference_per_example, resamples, seed=0):
    """Mean of a per-example difference and its 95% bootstrap interval, in points."""
    rng = np.random.default_rng(seed)
    n = len(difference_per_example)
    means = difference_per_example[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    return 100 * difference_per_example.mean(), 100 * np.percentile(means, 2.5), 100 * np.percentile(means, 97.5)


def summarize_recipe(runs, plain_runs, seeds, bootstrap):
    """
    Per setting of one (budget, recipe), over `seeds`: mean and spread of accuracy, mean layer speed-up, and the
    difference with plain fine-tuning of the same seed, paired per review. Then each rule's best setting within
    TOLERANCE points of plain.
    """
    plain = np.mean([plain_runs[seed]["full depth", "patience 0"]["correct"] for seed in seeds], axis=0)
    settings = []
    for key in runs[seeds[0]]:
        correct = np.array([runs[seed][key]["correct"] for seed in seeds], dtype=float)  # (seeds, reviews)
        accuracy = 100 * correct.mean(axis=1)
        difference = paired_interval(correct.mean(axis=0) - plain, bootstrap)
        settings.append({"rule": key[0], "setting": key[1], "accuracy": float(accuracy.mean()),
                         "accuracy_std": float(accuracy.std(ddof=1)) if len(seeds) > 1 else None,
                         "vs_plain": [float(value) for value in difference],
                         "layer_speedup": float(np.mean([runs[seed][key]["layer_speedup"] for seed in seeds]))})
    best = {}
    for rule in RULES:
        within = [s for s in settings if s["rule"] == rule and s["vs_plain"][0] >= -TOLERANCE]
        best[rule] = max(within, key=lambda s: s["layer_speedup"]) if within else None
    return settings, best


def format_report(study, args):
    lines = ["Plain fine-tuning is the baseline of its own budget and of each recipe's seeds. Accuracy: mean (± standard "
             "deviation over seeds, with several). Best: the highest mean layer speed-up whose mean accuracy is at most "
             f"{TOLERANCE:g} point below plain; vs plain: points, [95% paired bootstrap interval over the dev reviews].",
             ""]
    for budget in study:
        seeds = "; ".join(f"{recipe} {', '.join(map(str, summary['seeds']))}"
                          for recipe, summary in budget["recipes"].items())
        lines += [f"### {budget['epochs']:g} epoch(s); seeds: {seeds}", "",
                  "| recipe | layer | " + " | ".join(str(i) for i in range(1, budget["num_layers"] + 1)) + " |",
                  "|---|---|" + "---|" * budget["num_layers"]]
        for recipe, summary in budget["recipes"].items():
            if recipe == "plain":  # untrained internal classifiers
                continue
            for name, label in (("layer_accuracy", "accuracy alone"), ("agreement_with_full_depth",
                                                                        "agrees with full depth")):
                values = np.mean([layers[name] for layers in summary["layers"].values()], axis=0)
                lines.append(f"| {recipe} | {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
        lines += ["", f"| recipe | rule | best setting | accuracy | vs plain | layer speed-up | wall speed-up, batch "
                      f"{WALL_BATCH_SIZE} |", "|---|---|---|---|---|---|---|"]
        for recipe, summary in budget["recipes"].items():
            bounds = [s for s in summary["settings"] if s["rule"] in ("full depth", "oracle")]
            for rule, best in [*((s["rule"], s) for s in bounds[:1]), *summary["best"].items(),
                               *((s["setting"], s) for s in bounds[1:])]:
                if best is None:
                    lines.append(f"| {recipe} | {rule} | none within {TOLERANCE:g} point | | | | |")
                    continue
                spread = "" if best["accuracy_std"] is None else f" ± {best['accuracy_std']:.1f}"
                mean, low, high = best["vs_plain"]
                wall = ""
                if "wall_speedup" in best:
                    wall = f"{best['wall_speedup']:.2f}x"
                    if len(best["wall_speedup_per_seed"]) > 1:
                        wall += " (" + ", ".join(f"{value:.2f}" for value in best["wall_speedup_per_seed"]) + ")"
                lines.append(f"| {recipe} | {rule} | {best['setting']} | {best['accuracy']:.1f}{spread} | "
                             f"{mean:+.1f} [{low:+.1f}, {high:+.1f}] | {best['layer_speedup']:.2f}x | {wall} |")
        if "wall_timing" in budget:
            timing = budget["wall_timing"]
            lines += ["", f"Wall speed-up: real early exit of {timing['recipe']} on the dev set at batch "
                          f"{timing['batch_size']}, against full depth in the same {timing['rounds']} interleaved "
                          f"rounds ({timing['threads']} threads), median per seed, mean over seeds (per seed in "
                          "brackets)."]
        lines.append("")
    return "\n".join(lines)


def leading_recipe(budget):
    """The recipe whose best PABEE-family setting within tolerance has the highest layer speed-up."""
    def speedup(recipe):
        bests = [budget["recipes"][recipe]["best"].get(rule) for rule in PABEE_FAMILY]
        return max((best["layer_speedup"] for best in bests if best), default=0.0)

    return max(budget["recipes"], key=speedup)


def time_leading_recipe(args, budget, full_depth):
    """
    Times each rule's best setting of the budget's leading recipe on every seed of it (see `time_settings`), and adds
    to that setting its wall speed-up (mean over seeds, and per seed) and its agreement with the simulation.
    """
    recipe = budget["leading_recipe"]
    summary = budget["recipes"][recipe]
    by_label = {setting.label: setting for settings in rule_settings(budget["num_layers"]).values()
                for setting in settings}
    best = {rule: best for rule, best in summary["best"].items() if best}
    timings = {seed: time_settings(run_dir(args, budget["epochs"], recipe, seed), args.data_dir,
                                   [by_label[entry["setting"]] for entry in best.values()], args.wall_rounds,
                                   full_depth[recipe, seed])
               for seed in summary["seeds"]}
    for entry in best.values():
        per_seed = [timings[seed][entry["setting"]] for seed in summary["seeds"]]
        entry["wall_speedup_per_seed"] = [timing["wall_speedup"] for timing in per_seed]
        entry["wall_speedup"] = float(np.mean(entry["wall_speedup_per_seed"]))
        entry["simulation_agreement"] = float(np.mean([timing["simulation_agreement"] for timing in per_seed]))
    budget["wall_timing"] = {"recipe": recipe, "batch_size": WALL_BATCH_SIZE, "rounds": args.wall_rounds,
                             "threads": torch.get_num_threads()}


def plot_frontier(budget, recipe, path):
    """Each rule's frontier (accuracy vs plain against layer speed-up) and the oracle bounds, for one recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = budget["recipes"][recipe]["settings"]
    figure, axes = plt.subplots(figsize=(9.5, 4.5))
    for rule, marker in zip(RULES, "oDs^"):
        points = sorted((s["layer_speedup"], s["vs_plain"][0]) for s in settings if s["rule"] == rule)
        frontier = [point for point in points if not any(other[0] >= point[0] and other[1] > point[1]
                                                         for other in points)]  # the best accuracy per speed-up
        axes.plot(*zip(*frontier), marker=marker, label=rule)
    for oracle, marker in zip([s for s in settings if s["rule"] == "oracle"], "PX"):
        axes.plot([oracle["layer_speedup"]], [oracle["vs_plain"][0]], marker=marker, markersize=12, linestyle="none",
                  label=oracle["setting"])
    axes.axhline(-TOLERANCE, color="gray", linestyle="--", linewidth=1, label=f"{TOLERANCE:g} point below plain")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_ylim(max(axes.get_ylim()[0], -8), None)
    axes.set_xlabel("layer speed-up (layers / average exit layer)")
    axes.set_ylabel("accuracy - plain fine-tuning (points)")
    axes.set_title(f"{recipe}, {budget['epochs']:g} epoch(s), mean of {len(budget['recipes'][recipe]['seeds'])} "
                   "seed(s)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isdir(args.data_dir):
        from pabee.demo_data import build_sst2_demo

        build_sst2_demo(args.data_dir)
    backbone = args.model_name_or_path or run_glue_with_pabee.default_model_path()
    from transformers import AutoConfig

    num_layers = AutoConfig.from_pretrained(backbone).num_hidden_layers

    study = []
    for epochs in args.num_train_epochs:
        runs, layers, full_depth = {}, {}, {}
        for recipe in args.recipes:
            for seed in args.seeds[recipe]:
                output_dir = train(args, epochs, recipe, seed, num_layers)
                full_depth[recipe, seed] = full_depth_pass(output_dir, args.data_dir)
                runs[recipe, seed], layers[recipe, seed] = analyse_run(full_depth[recipe, seed], num_layers)
        budget = {"epochs": epochs, "num_layers": num_layers, "recipes": {}}
        plain_runs = {seed: runs["plain", seed] for seed in args.seeds["plain"]}
        for recipe in args.recipes:
            seeds = args.seeds[recipe]
            settings, best = summarize_recipe({seed: runs[recipe, seed] for seed in seeds}, plain_runs, seeds,
                                              args.bootstrap)
            if recipe == "plain":  # its internal classifiers are untrained: only its full depth means something
                settings = [s for s in settings if s["rule"] == "full depth"]
                best = {}
            budget["recipes"][recipe] = {"flags": RECIPES[recipe], "seeds": seeds, "settings": settings,
                                         "best": best, "layers": {str(seed): layers[recipe, seed] for seed in seeds}}
        budget["leading_recipe"] = leading_recipe(budget)
        if args.wall_rounds:
            time_leading_recipe(args, budget, full_depth)
        study.append(budget)

    report = format_report(study, args)
    print(report)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "study_results.json"), "w") as file:
        json.dump({"study": study, "training_args": args.training_args or " ".join(DEMO_TRAINING),
                   "gates": GATES, "tolerance_points": TOLERANCE}, file, indent=2)
    with open(os.path.join(args.output_dir, "study_results.md"), "w") as file:
        file.write(report + "\n")
    if args.plot:
        plot_frontier(study[0], study[0]["leading_recipe"], args.plot)
    return study


if __name__ == "__main__":
    main()
