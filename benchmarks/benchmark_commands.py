"""What a user waits for: `python -m pabee.classify` timed as whole processes, torch folder against its exports.

    python benchmarks/benchmark_commands.py --model output/demo-all --data_dir data/SST-2 --setting 1@0.75 \
        --output benchmarks/results/commands.json

The model is exported to ONNX (fp32 and int8, with `pabee.export`, into a temporary folder). Two sections, each
run once untimed to warm the file cache (not with --rounds 1, a smoke run), then timed in --rounds interleaved rounds
(the order rotates every round), the median reported with every raw time:

1. start-up: one sentence, through `pabee.classify` on the int8 export, through the export's own runner
   (`python FOLDER/pabee_onnx.py`) and through `pabee.classify` on the torch folder. Everything a user waits for is
   in it: starting Python, imports, loading the model, one answer.
2. dev file: the dev reviews of --data_dir (one per line, `--file`) through `pabee.classify` on the torch folder
   (fp32) and on both exports, with the accuracy of the printed labels against the gold ones.

Every command runs at --setting (PATIENCE or PATIENCE@GATE), or, without it, at the setting saved with the model.
The results name the CPU (its model and torch's capability: int8 speed depends on VNNI).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the repository root, when run as a script
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from benchmark_deploy import cpu_model_name, parse_settings, setting_label, write_results  # noqa: E402

from pabee.classify import label_name  # noqa: E402
from pabee.export import RUNNER_FILE, export_model  # noqa: E402
from pabee.glue import get_task, read_glue_split  # noqa: E402

SENTENCE = "a gripping, funny film"


def setting_flags(setting):
    """The classify flags of a (patience, gate) setting; none for the saved one."""
    if setting is None:
        return []
    patience, gate = setting
    return ["--patience", str(patience)] + (["--exit_confidence", f"{gate:g}"] if gate else [])


def printed_label_names(folder):
    """The label classify prints for each class id of the model in `folder` (its config's names, if it has them)."""
    with open(os.path.join(folder, "config.json")) as file:
        id2label = json.load(file).get("id2label") or {}
    config = SimpleNamespace(id2label={int(key): value for key, value in id2label.items()})
    return lambda label_id: label_name(config, label_id)


def run_timed(command):
    """(seconds, stdout) of one whole process; a failing command stops the benchmark with its error."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"error: {shlex.join(command)} failed: {result.stderr.strip().splitlines()[-1:]}")
    return seconds, result.stdout


def time_contenders(contenders, rounds, description):
    """{name: (raw seconds, last stdout)} of `contenders` ({name: command}), timed in interleaved rounds."""
    names = list(contenders)
    raw, outputs = {name: [] for name in names}, {}
    if rounds > 1:  # warm the file cache (graphs, weights, Python's bytecode) first; one round is a smoke run
        for name in names:
            run_timed(contenders[name])
    for round_index in tqdm(range(rounds), desc=description):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, outputs[name] = run_timed(contenders[name])
            raw[name].append(seconds)
    return {name: (raw[name], outputs[name]) for name in names}


def accuracy(stdout, gold_labels):
    predicted = [line.split("\t")[0] for line in stdout.splitlines()[1:]]
    if len(predicted) != len(gold_labels):
        raise SystemExit(f"error: classify printed {len(predicted)} answers for {len(gold_labels)} reviews")
    return sum(p == g for p, g in zip(predicted, gold_labels)) / len(gold_labels)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    parser.add_argument("--model", required=True, help="Folder of the trained PABEE model (torch), exported here.")
    parser.add_argument("--data_dir", required=True, help="SST-2 folder holding dev.tsv.")
    parser.add_argument("--output", required=True, help="JSON file for the figures (refused if it exists).")
    parser.add_argument("--setting", type=lambda text: parse_settings(text)[0], default=None,
                        help="Exit setting of every command, PATIENCE or PATIENCE@GATE (a whole rule, e.g. 1@0.75 "
                             "for the demo's gated patience). Default: the setting saved with the model.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved timing rounds (the median is reported).")
    parser.add_argument("--max_examples", type=int, default=None, help="Use the first dev reviews only.")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if os.path.exists(args.output):  # checked here, not by the parser, so that documented commands parse after a run
        raise SystemExit(f"error: --output {args.output} exists: results are kept; name another file")
    examples = read_glue_split(args.data_dir, get_task("sst-2"), "dev")[: args.max_examples]
    flags = setting_flags(args.setting)
    classify = [sys.executable, "-m", "pabee.classify"]
    results = {"command": shlex.join(["python", *sys.argv]), "cpu_model": cpu_model_name(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
               "setting": "saved with the model" if args.setting is None else setting_label(*args.setting),
               "dev_examples": len(examples)}
    with tempfile.TemporaryDirectory() as work_dir:
        folders = {"torch fp32": args.model,
                   "onnx fp32": export_model(args.model, os.path.join(work_dir, "onnx-fp32")),
                   "onnx int8": export_model(args.model, os.path.join(work_dir, "onnx-int8"), int8=True)}
        reviews = os.path.join(work_dir, "reviews.txt")
        with open(reviews, "w", encoding="utf-8") as file:
            file.writelines(f"{example.text_a}\n" for example in examples)
        label_of = printed_label_names(args.model)
        gold = [label_of(get_task("sst-2").labels.index(example.label)) for example in examples]

        startup = time_contenders({
            "classify, onnx int8": [*classify, "--model", folders["onnx int8"], *flags, SENTENCE],
            "runner, onnx int8": [sys.executable, os.path.join(folders["onnx int8"], RUNNER_FILE), *flags, SENTENCE],
            "classify, torch fp32": [*classify, "--model", folders["torch fp32"], *flags, SENTENCE],
        }, args.rounds, "start-up")
        results["startup"] = {name: {"seconds_median": median(raw), "seconds_raw": raw}
                              for name, (raw, _) in startup.items()}
        dev = time_contenders({name: [*classify, "--model", folder, *flags, "--file", reviews]
                               for name, folder in folders.items()}, args.rounds, "dev file")
        results["dev_file"] = {name: {"seconds_median": median(raw), "seconds_raw": raw,
                                      "examples_per_second": len(examples) / median(raw),
                                      "accuracy": accuracy(stdout, gold)} for name, (raw, stdout) in dev.items()}
    torch_seconds = results["dev_file"]["torch fp32"]["seconds_median"]
    for entry in results["dev_file"].values():
        entry["speedup_over_torch_fp32"] = torch_seconds / entry["seconds_median"]
    runner_seconds = results["startup"]["runner, onnx int8"]["seconds_median"]
    for entry in results["startup"].values():
        entry["seconds_over_runner"] = entry["seconds_median"] / runner_seconds

    print(f"setting: {results['setting']}")
    for name, entry in results["startup"].items():
        print(f"start-up  {name:<22} {entry['seconds_median']:7.2f} s  {entry['seconds_over_runner']:.2f}x the runner")
    for name, entry in results["dev_file"].items():
        print(f"dev file  {name:<22} {entry['seconds_median']:7.2f} s  acc {entry['accuracy']:.4f}  "
              f"{entry['speedup_over_torch_fp32']:.2f}x torch fp32 ({len(examples)} reviews)")
    write_results(results, args.output)
    return results


if __name__ == "__main__":
    main()
