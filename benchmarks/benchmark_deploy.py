"""Early exit where it is deployed: torch fp32, torch int8, ONNX Runtime fp32 and ONNX Runtime int8 on a CPU.

ONNX Runtime int8 comes twice: the export's default, one activation scale per token (answers independent of the
batch), and onnxruntime's dynamic quantization, one scale per batch ("onnx int8 per batch").

    python benchmarks/benchmark_deploy.py --model output/demo-all --plain_model output/plain \
        --data_dir data/SST-2 --output benchmarks/results/deploy.json
    python benchmarks/benchmark_deploy.py ... --no_timing --output benchmarks/results/deploy_answers.json

The model is exported to ONNX (fp32 and both int8, with `pabee.export`, into a temporary folder) and quantized for
torch (`pabee.quantization`). Two sections:

1. answers (no timing): each engine at every exit setting of the demo's sweep (patience 0 to 5, plain and gated at
   0.75), on the whole dev set at batch 32: accuracy, mean exit layer, exit histogram, and agreement with torch fp32
   at the same setting (exit layers, predictions, the largest logit difference); every review whose exit layer
   differs from torch fp32's is listed with how close its decision was (the smallest top-two logit gap, and the
   smallest distance of a top-class probability to the gate, over its layers up to both exits). Also, for the timed
   settings, the first --max_examples reviews one at a time against the same reviews in batches of 32.
2. timing, at batch 32 (the whole dev set) and batch 1 (the first --max_examples reviews): each engine at full
   depth and at the timed exit settings (--timed_settings), plus the plain fine-tuned model (--plain_model) at full
   depth on every engine. Everything is warmed first, then timed in --rounds interleaved rounds (the order
   rotates every round), one pass over the examples per timing; the median is reported, with every raw time. Tokens
   are made before timing. onnxruntime's intra-op spinning is off, as in the exported runner.

The results name the CPU (its model and torch's capability, `torch.backends.cpu.get_cpu_capability()`: "AVX2",
"AVX512", ...), printed with the table: int8 speed-ups depend on the CPU's instructions (VNNI or not).

`--quick` (with a tiny model, for the smoke test in tests/) shortens everything. `--torchao` also times torchao's
int8 (`Int8DynamicActivationInt8WeightConfig`, `pip install torchao`) against torch.ao's at full depth, the
measurement behind pabee/quantization.py's choice.
"""

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, when run as a script
from pabee.classify import load_model  # noqa: E402
from pabee.export import export_model  # noqa: E402
from pabee.glue import get_task, read_glue_split  # noqa: E402
from pabee.modeling_pabee import simulate_exit_layers  # noqa: E402
from pabee.onnx_runner import PabeeOnnxModel  # noqa: E402
from pabee.quantization import quantize_int8  # noqa: E402

# "onnx int8" is the export's default (a scale per token); "onnx int8 per batch" is onnxruntime's dynamic quantization
ENGINES = ("torch fp32", "torch int8", "onnx fp32", "onnx int8", "onnx int8 per batch")
# The demo's sweep: patience 0 to 5, plain and gated at 0.75 (demo.sh)
DEMO_SETTINGS = [(patience, 0.0) for patience in range(6)] + [(patience, 0.75) for patience in range(1, 6)]
TIMED_SETTINGS = "0,1@0.75,2,3"


def setting_label(patience, gate):
    return f"patience {patience}" + (f", confidence >= {gate:g}" if gate else "")


def parse_settings(text):
    """"0,1@0.75,3" -> [(0, 0.0), (1, 0.75), (3, 0.0)]"""
    settings = []
    for item in text.split(","):
        patience, _, gate = item.partition("@")
        settings.append((int(patience), float(gate) if gate else 0.0))
    return settings


class Engine:
    """One way of running the model: `run(batches, patience, gate)` -> (logits, exit layers) over all batches."""

    def __init__(self, name, model=None, runner=None):
        self.name, self.model, self.runner = name, model, runner
        self.num_layers = runner.num_layers if runner is not None else model.config.num_hidden_layers

    @torch.no_grad()
    def run(self, batches, patience, gate):
        logits, exit_layers = [], []
        for batch in batches:
            if self.runner is not None:
                batch_logits, batch_exits = self.runner(batch["input_ids"], batch["attention_mask"],
                                                        batch.get("token_type_ids"), patience=patience,
                                                        exit_confidence=gate)
            else:
                output = self.model(**batch["torch"], patience=patience, exit_confidence=gate)
                batch_logits, batch_exits = output.logits.numpy(), output.exit_layers.numpy()
            logits.append(batch_logits)
            exit_layers.append(batch_exits)
        return np.concatenate(logits), np.concatenate(exit_layers)

    @torch.no_grad()
    def every_layer(self, batches):
        """Every classifier's logits `(examples, layers, labels)`, from a full-depth pass."""
        out = []
        for batch in batches:
            if self.runner is not None:
                out.append(self.runner(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                       all_layers=True)[2])
            else:
                out.append(self.model(**batch["torch"], output_all_layer_logits=True).all_layer_logits.numpy())
        return np.concatenate(out)


def make_engines(model_path, work_dir, threads, torchao=False):
    """The engines (ENGINES) of the model in `model_path` (ONNX folders exported into `work_dir`)."""
    model, tokenizer = load_model(model_path)
    model = model.cpu().eval()
    name = os.path.basename(os.path.normpath(model_path))
    onnx_fp32 = export_model(model_path, os.path.join(work_dir, f"{name}-onnx"), overwrite=True)
    onnx_int8 = export_model(model_path, os.path.join(work_dir, f"{name}-onnx-int8"), int8=True, overwrite=True)
    onnx_int8_per_batch = export_model(model_path, os.path.join(work_dir, f"{name}-onnx-int8-per-batch"), int8=True,
                                       overwrite=True, int8_activations="per_batch")
    engines = {
        "torch fp32": Engine("torch fp32", model=model),
        "torch int8": Engine("torch int8", model=quantize_int8(model)),
        "onnx fp32": Engine("onnx fp32", runner=PabeeOnnxModel(onnx_fp32, threads=threads)),
        "onnx int8": Engine("onnx int8", runner=PabeeOnnxModel(onnx_int8, threads=threads)),
        "onnx int8 per batch": Engine("onnx int8 per batch",
                                      runner=PabeeOnnxModel(onnx_int8_per_batch, threads=threads)),
    }
    if torchao:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        torchao_model = copy.deepcopy(model)
        quantize_(torchao_model, Int8DynamicActivationInt8WeightConfig())
        engines["torchao int8"] = Engine("torchao int8", model=torchao_model)
    return engines, tokenizer, model.config


def cpu_model_name():
    """The CPU's model name ("AMD EPYC 9R14"), from /proc/cpuinfo where there is one, else the platform's."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_batches(tokenizer, examples, batch_size, max_length, takes_token_types):
    """Tokenised batches, padded to their longest review, as numpy arrays and as torch tensors."""
    batches = []
    for start in range(0, len(examples), batch_size):
        texts = [example.text_a for example in examples[start : start + batch_size]]
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        batch = {"input_ids": encoded["input_ids"].astype(np.int64),
                 "attention_mask": encoded["attention_mask"].astype(np.int64)}
        if takes_token_types and "token_type_ids" in encoded:
            batch["token_type_ids"] = encoded["token_type_ids"].astype(np.int64)
        batch["torch"] = {key: torch.from_numpy(value) for key, value in batch.items()}
        batches.append(batch)
    return batches


def near_tie(every_layer, up_to, gate):
    """How close an example's exit decisions were, over layers 1..up_to: top-two logit gap, distance to the gate."""
    logits = every_layer[:up_to]
    ordered = np.sort(logits, axis=-1)
    gap = float((ordered[:, -1] - ordered[:, -2]).min()) if logits.shape[-1] > 1 else None
    distance = None
    if gate:
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        top = (shifted / shifted.sum(axis=-1, keepdims=True)).max(axis=-1)
        distance = float(np.abs(top - gate).min())
    return {"smallest_top_two_logit_gap": gap, "smallest_distance_to_gate": distance}


def summarize(logits, exit_layers, labels, num_layers):
    return {
        "accuracy": float((logits.argmax(axis=-1) == labels).mean()),
        "avg_exit_layer": float(exit_layers.mean()),
        "exit_histogram": {str(layer): int((exit_layers == layer).sum()) for layer in range(1, num_layers + 1)},
    }


def answers_section(engines, batches_32, alone_batches, labels, num_layers, timed_settings, from_one_pass=False,
                    checked_settings=((1, 0.75),)):
    """
    Accuracy, exits and agreement with torch fp32 for every engine at every demo setting (no timing). With
    `from_one_pass`, each engine's answers at every setting come from one full-depth pass of it (the modeling file's
    `simulate_exit_layers` on its every-layer logits) and real early-exit runs are made at `checked_settings` only,
    to check them against it; otherwise every setting is run for real, and the timed settings one review at a time
    too.
    """
    every_layer = {name: engine.every_layer(batches_32) for name, engine in tqdm(engines.items(), desc="every layer")}
    reference_layers = every_layer["torch fp32"]

    def answers(name, patience, gate):
        if not from_one_pass:
            return engines[name].run(batches_32, patience, gate)
        exits = simulate_exit_layers(torch.from_numpy(every_layer[name]), patience, 0.1,
                                     exit_confidence=gate).numpy()
        return every_layer[name][np.arange(len(exits)), exits - 1], exits

    results = []
    progress = tqdm(total=len(DEMO_SETTINGS) * len(engines), desc="answers")
    for patience, gate in DEMO_SETTINGS:
        reference_logits, reference_exits = answers("torch fp32", patience, gate)
        for name, engine in engines.items():
            logits, exit_layers = answers(name, patience, gate)
            progress.update()
            differ = np.flatnonzero(exit_layers != reference_exits)
            entry = {"engine": name, "setting": setting_label(patience, gate), "patience": patience,
                     "exit_confidence": gate, "batch_size": 32, "from_one_pass": from_one_pass,
                     **summarize(logits, exit_layers, labels, num_layers),
                     "exit_layer_agreement_with_torch_fp32": float((exit_layers == reference_exits).mean()),
                     "prediction_agreement_with_torch_fp32": float((logits.argmax(-1) ==
                                                                    reference_logits.argmax(-1)).mean()),
                     "max_logit_difference_from_torch_fp32_where_exits_agree": float(
                         np.abs(logits - reference_logits)[exit_layers == reference_exits].max()),
                     "exit_layer_differences": [
                         {"review": int(i), "torch_fp32": int(reference_exits[i]), name: int(exit_layers[i]),
                          **near_tie(reference_layers[i], max(reference_exits[i], exit_layers[i]), gate)}
                         for i in differ]}
            if from_one_pass and (patience, gate) in checked_settings:
                real_logits, real_exits = engine.run(batches_32, patience, gate)
                entry["real_run"] = {**summarize(real_logits, real_exits, labels, num_layers),
                                     "exit_layer_agreement_with_one_pass": float((real_exits == exit_layers).mean()),
                                     "exit_layer_agreement_with_torch_fp32": float(
                                         (real_exits == reference_exits).mean())}
            if not from_one_pass and (patience, gate) in timed_settings:
                alone_logits, alone_exits = engine.run(alone_batches, patience, gate)
                count = len(alone_exits)
                entry["batch_1_vs_batch_32"] = {
                    "reviews": count,
                    "exit_layer_agreement": float((alone_exits == exit_layers[:count]).mean()),
                    "prediction_agreement": float((alone_logits.argmax(-1) == logits[:count].argmax(-1)).mean()),
                    "max_logit_difference": float(np.abs(alone_logits - logits[:count]).max()),
                }
            results.append(entry)
    every_layer_difference = {name: float(np.abs(layers - reference_layers).max())
                              for name, layers in every_layer.items() if name != "torch fp32"}
    return {"entries": results, "max_every_layer_logit_difference_from_torch_fp32": every_layer_difference}


def time_pass(engine, batches, patience, gate):
    start = time.perf_counter()
    engine.run(batches, patience, gate)
    return time.perf_counter() - start


def timing_section(contenders, rounds, labels_by_batch_size):
    """
    `contenders`: (model name, engine, batch size, batches, patience, gate). Warm each, then time them in `rounds`
    interleaved rounds, rotating the order each round. Returns one entry per contender.
    """
    for model_name, engine, batch_size, batches, patience, gate in tqdm(contenders, desc="warm-up"):
        engine.run(batches[:8], patience, gate)
    times = [[] for _ in contenders]
    for round_index in tqdm(range(rounds), desc="rounds"):
        order = list(range(len(contenders)))
        shift = round_index * len(order) // max(rounds, 1)
        order = order[shift:] + order[:shift]
        if round_index % 2:
            order.reverse()
        for index in order:
            _, engine, _, batches, patience, gate = contenders[index]
            times[index].append(time_pass(engine, batches, patience, gate))
    entries = []
    for (model_name, engine, batch_size, batches, patience, gate), raw in zip(contenders, times):
        logits, exit_layers = engine.run(batches, patience, gate)
        examples = len(exit_layers)
        entries.append({"model": model_name, "engine": engine.name, "batch_size": batch_size,
                        "setting": setting_label(patience, gate), "patience": patience, "exit_confidence": gate,
                        "examples": examples, "seconds_median": median(raw), "seconds_raw": raw,
                        "examples_per_second": examples / median(raw),
                        **summarize(logits, exit_layers, labels_by_batch_size[batch_size], engine.num_layers)})
    for entry in entries:  # against torch fp32 at full depth, same model and batch size
        baseline = next(other for other in entries if other["model"] == entry["model"]
                        and other["batch_size"] == entry["batch_size"] and other["engine"] == "torch fp32"
                        and other["patience"] == 0)
        entry["speedup_over_torch_fp32_full_depth"] = baseline["seconds_median"] / entry["seconds_median"]
        demo_baseline = next((other for other in entries if other["model"] == "model"
                              and other["batch_size"] == entry["batch_size"] and other["engine"] == "torch fp32"
                              and other["patience"] == 0), baseline)
        entry["speedup_over_model_torch_fp32_full_depth"] = demo_baseline["seconds_median"] / entry["seconds_median"]
    return entries


def format_table(entries):
    header = ["model", "batch", "engine", "setting", "acc", "avg exit", "examples/s", "speed-up"]
    rows = [header] + [[entry["model"], str(entry["batch_size"]), entry["engine"], entry["setting"],
                        f"{entry['accuracy']:.4f}", f"{entry['avg_exit_layer']:.2f}",
                        f"{entry['examples_per_second']:.1f}",
                        f"{entry['speedup_over_model_torch_fp32_full_depth']:.2f}x"]
                       for entry in entries]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    parser.add_argument("--model", required=True, help="Folder of the trained PABEE model (the demo's).")
    parser.add_argument("--plain_model", default=None,
                        help="Folder of the plain fine-tuned model (--layer_loss_weights last), timed at full depth "
                             "on every engine. Default: none.")
    parser.add_argument("--data_dir", required=True, help="SST-2 folder holding dev.tsv.")
    parser.add_argument("--output", required=True, help="JSON file for the raw figures.")
    parser.add_argument("--max_seq_length", type=int, default=64, help="Token limit per review (the demo's: 64).")
    parser.add_argument("--max_examples", type=int, default=300,
                        help="Reviews timed at batch 1 (and compared one at a time against batch 32).")
    parser.add_argument("--timed_settings", type=parse_settings, default=parse_settings(TIMED_SETTINGS),
                        help=f"Exit settings timed, PATIENCE or PATIENCE@GATE, comma-separated (default "
                             f"{TIMED_SETTINGS}: full depth, the demo's gated patience, patience 2 and 3). Each is a "
                             "whole rule: PATIENCE alone is plain patience, whatever rule the model saved.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved timing rounds (the median is reported).")
    parser.add_argument("--threads", type=int, default=None,
                        help="Threads of torch and onnxruntime (default: torch's default, the cores).")
    parser.add_argument("--no_timing", action="store_true", help="Only the answers section (figures that do not "
                                                                 "depend on time).")
    parser.add_argument("--answers_from_one_pass", action="store_true",
                        help="Answers section: each engine's answers at every setting from one full-depth pass of it "
                             "(exact for fp32; int8 answers then come from full batches), with real runs at the "
                             "demo's gated patience only, checked against it. Much faster.")
    parser.add_argument("--skip_answers", action="store_true", help="Only the timing section.")
    parser.add_argument("--torchao", action="store_true",
                        help="Also time torchao's int8 against torch.ao's, at full depth (needs pip install torchao).")
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: 2 rounds, 40 reviews at batch 32 and 6 at batch 1.")
    args = parser.parse_args(argv)
    if args.no_timing and args.skip_answers:
        parser.error("--no_timing and --skip_answers leave nothing to do")
    for name in ("max_examples", "rounds", "max_seq_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if (0, 0.0) not in args.timed_settings:
        parser.error("--timed_settings must hold 0 (full depth): the speed-ups are against it")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.rounds, args.max_examples = min(args.rounds, 2), min(args.max_examples, 6)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    task = get_task("sst-2")
    examples = read_glue_split(args.data_dir, task, "dev")
    if args.quick:
        examples = examples[:40]
    labels = np.array([task.labels.index(example.label) for example in examples])
    alone_examples = examples[: args.max_examples]

    with tempfile.TemporaryDirectory() as work_dir:
        models = {"model": args.model}
        if args.plain_model:
            models["plain"] = args.plain_model
        results = {"command": " ".join(["python", *sys.argv]), "machine": platform.processor() or platform.machine(),
                   "cpu_model": cpu_model_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "cpu_count": os.cpu_count(), "threads": threads, "torch": torch.__version__,
                   "onnxruntime": __import__("onnxruntime").__version__, "max_seq_length": args.max_seq_length,
                   "dev_examples": len(examples), "batch_1_examples": len(alone_examples)}
        contenders = []
        for model_name, path in models.items():
            engines, tokenizer, config = make_engines(path, work_dir, threads, args.torchao and model_name == "model")
            takes_types = engines["onnx fp32"].runner.takes_token_types
            batches_32 = make_batches(tokenizer, examples, 32, args.max_seq_length, takes_types)
            batches_1 = make_batches(tokenizer, alone_examples, 1, args.max_seq_length, takes_types)
            if model_name == "model" and not args.skip_answers:
                results["answers"] = answers_section(engines, batches_32, batches_1, labels,
                                                     config.num_hidden_layers, args.timed_settings,
                                                     args.answers_from_one_pass)
            settings = args.timed_settings if model_name == "model" else [(0, 0.0)]
            for batch_size, batches in ((32, batches_32), (1, batches_1)):
                for engine in engines.values():
                    for patience, gate in settings:
                        if engine.name == "torchao int8" and patience:
                            continue
                        contenders.append((model_name, engine, batch_size, batches, patience, gate))
        if not args.no_timing:
            results["timing"] = timing_section(contenders, args.rounds, {32: labels, 1: labels[: len(alone_examples)]})
            print(format_table(results["timing"]))
    write_results(results, args.output)
    return results


def write_results(results, path):
    """Print the CPU the figures come from (int8 products are much faster with AVX-512 VNNI than with AVX2) and
    write `results` as JSON to `path`."""
    print(f"CPU: {results['cpu_model']}, {results['cpu_count']} cores, torch capability {results['cpu_capability']}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as file:
        json.dump(results, file, indent=2)
        file.write("\n")
    print(f"Results written to {path}")


if __name__ == "__main__":
    main()
