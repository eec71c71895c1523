"""Fast and robust, measured: character-edit attacks on each exit rule, and the slowdown defences against them.

On each model, the dev set is split once (seeded) into reported reviews (--examples, attacked) and held-out ones (the
rest), on which the entropy and confidence thresholds are chosen (the fastest whose accuracy is within 1 point of
full depth's) and the slowdown guards (the most eager whose accuracy stays within 1 point of the undefended demo
setting's). Then, on the reported reviews, `pabee.attack` attacks each exit rule with each goal, and each defended
setting of the demo's rule (gated patience, p1, tau 0.75) with the slowdown goal: the attacker knows the defence (it
attacks the defended setting and scores its real exit layers). Every figure has a 95% bootstrap interval over the
reviews; "more robust" is PABEE's accuracy under attack against full depth's on the same reviews (paired interval).
Runs go in priority order and the results are rewritten after each, so an interrupted study keeps what it finished
and --resume goes on from there.

    python benchmarks/study_robustness.py --models demo=output/demo,plain=output/plain \
        --data_dir glue_data/SST-2 --examples 500
    python benchmarks/study_robustness.py --resume --time_batch32     # then, on a quiet machine: wall speed-ups

--time_batch32 times real early exit at batch 32 on the clean and on the adversarial reviews of each slowdown run
(and full depth on the clean ones), --wall_rounds interleaved rounds, and adds the wall speed-ups to the results.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pabee.attack import AttackConfig, Victim, attack, read_outputs  # noqa: E402
from pabee.classify import InputError, load_model  # noqa: E402
from pabee.evaluation import ExitSetting  # noqa: E402
from pabee.glue import get_task, read_glue_split  # noqa: E402
from pabee.modeling_pabee import uncertainty_scores  # noqa: E402
from pabee.robustness import accuracy_summary, interval, roc_auc, slowdown_summary  # noqa: E402

DEMO_RULE = ExitSetting("patience", 1, 0.75)
ENTROPY_GRID = [round(x, 3) for x in np.arange(0.02, 0.70, 0.02)]
CONFIDENCE_GRID = [round(x, 3) for x in np.arange(0.5, 1.0, 0.01)]
GUARD_GRID = [round(x, 3) for x in np.arange(0.05, 1.0, 0.05)]


class StudyError(Exception):
    """A bad argument or input, reported as one line."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    parser.add_argument("--models", default="demo=output/demo,plain=output/plain",
                        help="NAME=FOLDER pairs, comma-separated: the trained PABEE models to study.")
    parser.add_argument("--data_dir", default="glue_data/SST-2", help="The SST-2 folder; its dev.tsv is used.")
    parser.add_argument("--examples", type=int, default=500,
                        help="Dev reviews attacked and reported; the rest choose the thresholds and guards.")
    parser.add_argument("--query_budget", type=int, default=30, help="Queries per review (see pabee.attack).")
    parser.add_argument("--max_word_share", type=float, default=0.2,
                        help="At most this share of a review's words is edited (at least one).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the dev split, the attacks and the bootstrap.")
    parser.add_argument("--batch_size", type=int, default=64, help="Texts per model call in the attacks.")
    parser.add_argument("--max_seq_length", type=int, default=64, help="Reviews are truncated to this many tokens.")
    parser.add_argument("--max_runs", type=int, default=None,
                        help="Stop after this many attack runs per model (they go in priority order).")
    parser.add_argument("--plain_runs", default="misclassification",
                        help="Goals run on models other than the first (comma-separated), full depth and patience "
                             "rules only; the first model gets every rule, goal and defence.")
    parser.add_argument("--output_json", default="benchmarks/results/study_robustness.json",
                        help="Results (summaries) as JSON; the adversarial reviews go beside it (_examples.json).")
    parser.add_argument("--output_md", default="benchmarks/results/study_robustness.md", help="Results as tables.")
    parser.add_argument("--plot", default="docs/robustness_exit_layers.png",
                        help="Exit-layer histograms, clean against attacked, of the first model's slowdown runs.")
    parser.add_argument("--resume", action="store_true",
                        help="Keep the runs already in --output_json (same models and settings) and do the rest.")
    parser.add_argument("--time_batch32", action="store_true",
                        help="Also time real early exit at batch 32, clean against attacked (needs a quiet machine).")
    parser.add_argument("--wall_rounds", type=int, default=3, help="Interleaved timing rounds of --time_batch32.")
    args = parser.parse_args(argv)
    try:
        args.model_paths = dict(pair.split("=", 1) for pair in args.models.split(","))
    except ValueError:
        parser.error(f"--models expects NAME=FOLDER pairs separated by commas, got {args.models!r}")
    for name, value in (("examples", args.examples), ("query_budget", args.query_budget - 1),
                        ("batch_size", args.batch_size), ("wall_rounds", args.wall_rounds)):
        if value < 1:
            parser.error(f"--{name} is too small")
    if not 0 < args.max_word_share <= 1:
        parser.error(f"--max_word_share must be in (0, 1], got {args.max_word_share}")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Choosing settings on the held-out reviews


def clean_stats(all_layer_logits, labels, setting):
    readout = read_outputs(all_layer_logits, setting.model_kwargs(0.1))
    accuracy = float((readout.logits.argmax(-1).numpy() == labels).mean())
    return accuracy, all_layer_logits.shape[1] / float(readout.exit_layers.double().mean())


def fastest_within_a_point(all_layer_logits, labels, candidates, reference_accuracy):
    """The candidate setting of best layer speed-up whose accuracy is at least `reference_accuracy` - 1 point."""
    best = None
    for setting in candidates:
        accuracy, speedup = clean_stats(all_layer_logits, labels, setting)
        if accuracy >= reference_accuracy - 0.01 and (best is None or speedup > best[1]):
            best = (setting, speedup)
    return None if best is None else best[0]


def choose_settings(all_layer_logits, labels, num_layers):
    """The rules and defended settings of the study, chosen on held-out logits; and how each was chosen."""
    full_accuracy, _ = clean_stats(all_layer_logits, labels, ExitSetting("patience", 0))
    entropy = fastest_within_a_point(all_layer_logits, labels, [ExitSetting("entropy", t) for t in ENTROPY_GRID],
                                     full_accuracy)
    confidence = fastest_within_a_point(all_layer_logits, labels,
                                        [ExitSetting("confidence", t) for t in CONFIDENCE_GRID], full_accuracy)
    demo_accuracy, _ = clean_stats(all_layer_logits, labels, DEMO_RULE)
    defended = {}
    for cap in (None, num_layers - 2, num_layers - 3):  # guard alone, with a cap at 4 and at 3 (of 6)
        if cap is not None and cap < 1:
            continue
        # The most eager guard (lowest threshold) within a point of the undefended demo setting.
        for guard in GUARD_GRID:
            setting = DEMO_RULE.defended(cap, guard)
            if clean_stats(all_layer_logits, labels, setting)[0] >= demo_accuracy - 0.01:
                defended[f"guard, cap {cap}" if cap else "guard"] = setting
                break
    rules = {"full depth": ExitSetting("patience", 0), "patience 2": ExitSetting("patience", 2),
             "patience 3": ExitSetting("patience", 3), "gated patience (demo)": DEMO_RULE}
    if entropy:
        rules["entropy"] = entropy
    if confidence:
        rules["confidence"] = confidence
    caps = {f"cap {cap}": DEMO_RULE.defended(cap) for cap in (num_layers - 2, num_layers - 1) if cap >= 1}
    how = {"held_out_full_depth_accuracy": full_accuracy, "held_out_demo_accuracy": demo_accuracy}
    return rules, {**caps, **defended}, how


def frontier(all_layer_logits, labels, num_layers):
    """Clean accuracy and layer speed-up of the demo rule under every cap and guard of the grids (reported reviews)."""
    points = []
    for cap in [None] + list(range(2, num_layers)):
        for guard in [None] + GUARD_GRID[::2]:
            setting = DEMO_RULE.defended(cap, guard)
            accuracy, speedup = clean_stats(all_layer_logits, labels, setting)
            points.append({"setting": setting.label, "max_exit_layer": cap, "slowdown_guard": guard,
                           "clean_accuracy": accuracy, "clean_layer_speedup": speedup,
                           "worst_case_layer_speedup": num_layers / cap if cap and guard is None else None})
    return points


# ---------------------------------------------------------------------------------------------------------------------
# Runs


def planned_runs(rules, defended, first_model, plain_goals):
    """(rule name, setting, goal) in priority order."""
    if not first_model:
        return [(name, setting, goal) for goal in plain_goals for name, setting in rules.items()
                if setting.criterion == "patience"]
    demo = rules["gated patience (demo)"]
    runs = [("gated patience (demo)", demo, "slowdown")]
    guarded = [name for name in defended if name.startswith("guard, cap")]
    runs += [(name, defended[name], "slowdown") for name in guarded[:1]]
    runs += [("full depth", rules["full depth"], "misclassification"), ("gated patience (demo)", demo,
                                                                       "misclassification")]
    runs += [(name, defended[name], "slowdown") for name in defended if name.startswith("cap")]
    runs += [(name, setting, "slowdown") for name, setting in rules.items()
             if name not in ("full depth", "gated patience (demo)")]
    runs += [("gated patience (demo)", demo, "slowdown-patience"), ("patience 2", rules["patience 2"],
                                                                    "slowdown-patience")]
    runs += [(name, defended[name], "slowdown") for name in defended
             if name.startswith("guard") and name not in guarded[:1]]
    runs += [(name, setting, "misclassification") for name, setting in rules.items()
             if name not in ("full depth", "gated patience (demo)")]
    return runs


def running_score_maxima(all_layer_logits, exit_layers):
    """The largest running uncertainty score over the layers each example runs: the guard fires at a threshold
    below it."""
    scores = uncertainty_scores(all_layer_logits)
    running = scores.cumsum(dim=1) / torch.arange(1, scores.shape[1] + 1)
    ran = torch.arange(1, scores.shape[1] + 1)[None] <= exit_layers[:, None]
    return running.masked_fill(~ran, -1.0).amax(dim=1)


def summarize_run(victim, results, labels, setting, goal, num_layers, seed):
    clean_layers = np.array([r.clean_exit_layer for r in results])
    attacked_layers = np.array([r.attacked_exit_layer for r in results])
    summary = {"goal": goal, **setting.as_dict(), "examples": len(results)}
    summary.update(accuracy_summary(labels, [r.clean_answer for r in results], [r.attacked_answer for r in results],
                                    [r.skipped for r in results], [r.queries for r in results],
                                    [r.words_changed for r in results], [r.words for r in results], seed=seed))
    if goal != "misclassification":
        summary.update(slowdown_summary(clean_layers, attacked_layers, num_layers, seed=seed))
        raised = attacked_layers > clean_layers
        summary["slowdown_success_rate"] = interval(np.mean, raised, seed=seed)
        share = np.array([r.words_changed / max(r.words, 1) for r in results])
        summary["slowdown_words_changed_share"] = interval(np.mean, share[raised], seed=seed)
        # The guard's separation of clean from attacked reviews (those the attack changed), under this setting
        changed = [r for r in results if r.adversarial != r.text]
        kwargs = setting.model_kwargs(0.1)
        statistics = []
        for texts in ([r.text for r in results], [r.adversarial for r in changed]):
            if texts:
                logits = victim.all_layer_logits(texts)
                statistics.append(running_score_maxima(logits, read_outputs(logits, kwargs).exit_layers).numpy())
            else:
                statistics.append(np.array([]))
        summary["guard_roc_auc"] = roc_auc(*statistics)
        if setting.slowdown_guard is not None:
            summary["guard_fired_clean"] = float(np.mean([r.clean_guard_fired for r in results]))
            summary["guard_fired_attacked"] = float(np.mean([r.attacked_guard_fired for r in results]))
    return summary


@torch.no_grad()
def time_run(model, tokenizer, texts, kwargs, max_length, rounds):
    """The fastest of `rounds` passes of real early exit over `texts` at batch 32, in seconds."""
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for index in range(0, len(texts), 32):
            encoded = tokenizer(texts[index : index + 32], padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt")
            model(**encoded, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best


def add_wall_speedups(model, tokenizer, run, examples, max_length, rounds):
    clean = [example["text"] for example in examples]
    adversarial = [example["adversarial"] for example in examples]
    setting = ExitSetting.from_entry(run)
    kwargs = setting.model_kwargs(0.1)
    full_depth = ExitSetting("patience", 0).model_kwargs(0.1)
    seconds = {"full": [], "clean": [], "attacked": []}
    for _ in range(rounds):  # interleaved, so that a slow spell of the machine hits all three alike
        seconds["full"].append(time_run(model, tokenizer, clean, full_depth, max_length, 1))
        seconds["clean"].append(time_run(model, tokenizer, clean, kwargs, max_length, 1))
        seconds["attacked"].append(time_run(model, tokenizer, adversarial, kwargs, max_length, 1))
    run["wall_speedup_clean"] = min(seconds["full"]) / min(seconds["clean"])
    run["wall_speedup_attacked"] = min(seconds["full"]) / min(seconds["attacked"])


# ---------------------------------------------------------------------------------------------------------------------
# Reporting


def fmt(entry, percent=False, digits=2):
    """An interval {"value", "low", "high"} as "81.0% [77.2, 84.6]" (percent) or "1.71 [1.60, 1.83]"."""
    if entry is None:
        return "-"
    scale, unit, digits = (100, "%", 1) if percent else (1, "", digits)
    value, low, high = (entry[key] * scale for key in ("value", "low", "high"))
    return f"{value:.{digits}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]"


def robustness_claim(runs, seed):
    """PABEE's (the demo rule's) accuracy under attack minus full depth's, paired over the same reviews."""
    by_key = {(run["model"], run["rule"], run["goal"]): run for run in runs}
    claims = []
    for model in sorted({run["model"] for run in runs}):
        full = by_key.get((model, "full depth", "misclassification"))
        if full is None:
            continue
        for rule in ("gated patience (demo)", "patience 2", "patience 3", "entropy", "confidence"):
            other = by_key.get((model, rule, "misclassification"))
            if other is None:
                continue
            difference = interval(lambda a, b: np.mean(a - b), np.array(other["attacked_correct"], dtype=float),
                                  np.array(full["attacked_correct"], dtype=float), seed=seed)
            claims.append({"model": model, "rule": rule, "setting": other["setting"],
                           "attacked_accuracy_minus_full_depth": difference})
    return claims


def write_markdown(path, study):
    lines = ["# Robustness study: character-edit attacks on each exit rule, and the slowdown defences", "",
             f"Command: `{study['command']}`", "",
             f"{study['examples']} reported dev reviews per model (seed {study['seed']}), query budget "
             f"{study['query_budget']} per review, at most {study['max_word_share']:.0%} of words edited. "
             "95% bootstrap intervals in brackets.", ""]
    for model, info in study["models"].items():
        lines += [f"## {model}", "", "Chosen on the held-out reviews: " + ", ".join(
            f"{name}: {setting}" for name, setting in info["rules"].items()) + "; defences: " + ", ".join(
            f"{name}: {setting}" for name, setting in info["defended"].items()), ""]
        runs = [run for run in study["runs"] if run["model"] == model]
        mis = [run for run in runs if run["goal"] == "misclassification"]
        if mis:
            lines += ["### Misclassification", "",
                      "| rule | setting | clean accuracy | accuracy under attack | success rate | queries | words "
                      "changed |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {r['rule']} | {r['setting']} | {fmt(r['clean_accuracy'], True)} | "
                      f"{fmt(r['attacked_accuracy'], True)} | {fmt(r['success_rate'], True)} | "
                      f"{fmt(r['avg_queries'], digits=1)} | {fmt(r['words_changed_share'], True)} |" for r in mis]
            lines.append("")
        slow = [run for run in runs if run["goal"] != "misclassification"]
        if slow:
            timed = any("wall_speedup_clean" in r for r in slow)
            lines += ["### Slowdown", "",
                      "| rule | setting | goal | layer speed-up, clean | layer speed-up, attacked | at the last "
                      "layer, clean → attacked | efficacy, clean → attacked | accuracy, clean → attacked | guard "
                      "ROC AUC |"
                      + (" wall speed-up at batch 32, clean → attacked |" if timed else ""),
                      "|---|---|---|---|---|---|---|---|---|" + ("---|" if timed else "")]
            for r in slow:
                row = (f"| {r['rule']} | {r['setting']} | {r['goal']} | {fmt(r['layer_speedup_clean'])}x | "
                       f"{fmt(r['layer_speedup_attacked'])}x | {r['at_last_layer_clean']['value']:.0%} → "
                       f"{r['at_last_layer_attacked']['value']:.0%} | {r['efficacy_clean']['value']:.3f} → "
                       f"{r['efficacy_attacked']['value']:.3f} | {r['clean_accuracy']['value']:.1%} → "
                       f"{r['attacked_accuracy']['value']:.1%} | {r['guard_roc_auc']:.3f} |")
                if timed:
                    row += (f" {r['wall_speedup_clean']:.2f}x → {r['wall_speedup_attacked']:.2f}x |"
                            if "wall_speedup_clean" in r else " - |")
                lines.append(row)
            lines.append("")
    if study["claims"]:
        lines += ["### Is PABEE more robust? Accuracy under attack minus full depth's (same model, reviews, budget)",
                  "", "| model | rule | setting | difference (points) |", "|---|---|---|---|"]
        lines += [f"| {c['model']} | {c['rule']} | {c['setting']} | "
                  f"{fmt({k: v * 100 for k, v in c['attacked_accuracy_minus_full_depth'].items()}, digits=1)} |"
                  for c in study["claims"]]
        lines.append("")
    for model, info in study["models"].items():
        lines += [f"### Defences of the demo rule on {model}, clean (every cap and guard of the grid)", "",
                  "| setting | clean accuracy | clean layer speed-up | worst-case layer speed-up |",
                  "|---|---|---|---|"]
        worst = "{:.2f}x".format
        lines += [f"| {p['setting']} | {p['clean_accuracy']:.1%} | {p['clean_layer_speedup']:.2f}x | "
                  f"{'-' if p['worst_case_layer_speedup'] is None else worst(p['worst_case_layer_speedup'])} |"
                  for p in info["frontier"]]
        lines.append("")
    Path(path).write_text("\n".join(lines) + "\n")


def plot_histograms(path, study, model):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for run in study["runs"] if run["model"] == model and run["goal"] == "slowdown"]
    if not runs:
        return None
    columns = min(3, len(runs))
    rows = math.ceil(len(runs) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, run in zip(axes.flat, runs):
        layers = np.arange(1, len(run["exit_histogram_clean"]) + 1)
        axis.bar(layers - 0.2, run["exit_histogram_clean"], width=0.4, label="clean")
        axis.bar(layers + 0.2, run["exit_histogram_attacked"], width=0.4, label="attacked")
        axis.set_title(f"{run['setting']}\n{run['layer_speedup_clean']['value']:.2f}x → "
                       f"{run['layer_speedup_attacked']['value']:.2f}x", fontsize=8)
        axis.set_xlabel("exit layer")
        axis.set_xticks(layers)
    for axis in list(axes.flat)[len(runs):]:
        axis.axis("off")
    axes.flat[0].set_ylabel("reviews")
    axes.flat[0].legend(fontsize=8)
    figure.suptitle(f"Exit layers, clean against the slowdown attack ({model}, {study['examples']} dev reviews)")
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def save(args, study, examples):
    study["claims"] = robustness_claim(study["runs"], args.seed)
    os.makedirs(os.path.dirname(args.output_json) or ".", exist_ok=True)
    # The adversarial reviews, one run per line
    examples_text = "{\n" + ",\n".join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in examples.items())
    for path, text in ((args.output_json, json.dumps(study, indent=1) + "\n"), (examples_path(args),
                                                                               examples_text + "\n}\n")):
        partial = f"{path}.partial"
        Path(partial).write_text(text)
        os.replace(partial, path)
    write_markdown(args.output_md, study)
    first = next(iter(study["models"]), None)
    if first and args.plot:
        plot_histograms(args.plot, study, first)


def examples_path(args):
    root, extension = os.path.splitext(args.output_json)
    return f"{root}_examples{extension}"


# ---------------------------------------------------------------------------------------------------------------------
# Main


def run_key(model, rule, setting, goal):
    return f"{model} | {rule} | {setting.label} | {goal}"


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (StudyError, InputError, FileNotFoundError) as error:
        raise SystemExit(f"study_robustness.py: error: {error}") from None


def run(args):
    torch.manual_seed(args.seed)
    task = get_task("sst-2")
    dev = read_glue_split(args.data_dir, task, "dev")
    if len(dev) <= args.examples:
        raise StudyError(f"--examples {args.examples} leaves no held-out reviews of the {len(dev)} in "
                         f"{args.data_dir}/dev.tsv")
    order = np.random.default_rng(args.seed).permutation(len(dev))
    reported, held_out = order[: args.examples], order[args.examples:]
    texts = [dev[i].text_a for i in range(len(dev))]
    gold = np.array([int(dev[i].label) for i in range(len(dev))])

    study = {"command": "python benchmarks/study_robustness.py " + " ".join(sys.argv[1:]),
             "examples": args.examples, "query_budget": args.query_budget, "max_word_share": args.max_word_share,
             "seed": args.seed, "models": {}, "runs": []}
    examples = {}
    if args.resume and os.path.exists(args.output_json):
        earlier = json.loads(Path(args.output_json).read_text())
        study["runs"] = earlier["runs"]
        examples = json.loads(Path(examples_path(args)).read_text()) if os.path.exists(examples_path(args)) else {}
    done = {run["key"] for run in study["runs"]}
    config = AttackConfig(goal="slowdown", query_budget=args.query_budget, max_word_share=args.max_word_share,
                          seed=args.seed)

    for position, (name, path) in enumerate(args.model_paths.items()):
        model, tokenizer = load_model(path)
        num_layers = model.config.num_hidden_layers
        victim = Victim(model, tokenizer, args.max_seq_length, args.batch_size)
        for start in tqdm(range(0, len(texts), 256), desc=f"{name}: every layer, clean", leave=False):
            victim.all_layer_logits(texts[start : start + 256])
        held_logits = victim.all_layer_logits([texts[i] for i in held_out])
        rules, defended, how = choose_settings(held_logits, gold[held_out], num_layers)
        reported_texts, reported_gold = [texts[i] for i in reported], gold[reported]
        study["models"][name] = {
            "path": path, "num_layers": num_layers, **how,
            "rules": {rule: setting.label for rule, setting in rules.items()},
            "defended": {rule: setting.label for rule, setting in defended.items()},
            "frontier": frontier(victim.all_layer_logits(reported_texts), reported_gold, num_layers),
        }
        save(args, study, examples)
        plan = planned_runs(rules, defended, position == 0, args.plain_runs.split(","))
        if args.max_runs is not None:
            plan = plan[: args.max_runs]
        for rule, setting, goal in plan:
            key = run_key(name, rule, setting, goal)
            if key in done:
                continue
            started = time.perf_counter()
            results = attack(victim, reported_texts, setting.model_kwargs(0.1), dataclasses.replace(config, goal=goal),
                             labels=reported_gold.tolist(), description=key)
            summary = summarize_run(victim, results, reported_gold, setting, goal, num_layers, args.seed)
            summary.update({"key": key, "model": name, "rule": rule, "seconds": time.perf_counter() - started,
                            "attacked_correct": [r.attacked_answer == r.label and not r.skipped for r in results]})
            study["runs"].append(summary)
            examples[key] = [{"text": r.text, "adversarial": r.adversarial, "label": r.label,
                              "clean_exit_layer": r.clean_exit_layer, "attacked_exit_layer": r.attacked_exit_layer,
                              "queries": r.queries} for r in results]
            done.add(key)
            save(args, study, examples)
        if args.time_batch32:
            for summary in study["runs"]:
                if summary["model"] == name and summary["goal"] != "misclassification" and summary["key"] in examples:
                    add_wall_speedups(model, tokenizer, summary, examples[summary["key"]], args.max_seq_length,
                                      args.wall_rounds)
            save(args, study, examples)
    written = [args.output_json, examples_path(args), args.output_md] + ([args.plot] if args.plot else [])
    print(f"Wrote {', '.join(written)}")


if __name__ == "__main__":
    main()
