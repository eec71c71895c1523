"""How much faster PABEE's early exit really is, and what the early-exit machinery costs.

    python benchmarks/benchmark_speed.py --shapes bert-base,minilm --seq_len 128 --repeats 7 \
        --output benchmarks/results/speed.json
    python benchmarks/benchmark_speed.py --baseline_revision <commit>   # also time that commit's early exit

Models have random weights (speed does not depend on the values), on the GPU when there is one, else the CPU. The
exit layers are forced by setting the internal classifiers' weights, and checked against the `exit_layers` the model
returns. Every comparison is timed inside one run: warm-up first, then the contenders interleaved round by round
(A, B, B, A, ...), the median of `--repeats` rounds reported and stated as a ratio. Sections:

1. forced_exit_batch1: batch 1, every example exits at layer k (k = 2..L) against the same model at full depth.
   exit_cost_batch1: where that time goes, per layer: the layer itself, its internal classifier, the patience rule.
   Both for each way the classifiers read a layer (--exit_poolings): the pooler (the paper's) and the mean.
   against_cut_model: early exit at layer k against the fastest way to answer at layer k: transformers' own model cut
   to its first k layers, with layer k's internal classifier on top (BertForSequenceClassification for the pooler;
   BertModel, a mean over the attended tokens and the classifier for the mean). Batch 1 at every k, and
   --eval_batch_size at k = 2, L // 2, L - 1, for each exit pooling; with --baseline_revision, the early exit of the
   modeling file of that git commit is timed in the same rounds (before and after a change, in one run). Each
   forward's operator calls are counted too; --operators_only counts them without timing anything.
2. batched_early_exit: batches of examples whose exit layers spread over patience+1..L, against full depth; and
   early exit at batch 32 against the same examples one at a time.
3. full_depth_vs_transformers: patience 0 against transformers' BertForSequenceClassification, same weights.
4. training_step: forward + backward + AdamW step against BertForSequenceClassification, same backbone.
5. eval_peak_memory: peak memory of one evaluation forward at batch 32.

`--tiny` runs everything on a 4-layer, hidden-32 model in a few seconds (the smoke test in tests/ uses it).
"""

import argparse
import copy
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
import torch
import transformers
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, when run as a script
from pabee.modeling_pabee import drop_padding_columns, exit_predictions, update_patience_counters  # noqa: E402
from pabee.modeling_pabee_bert import BertForSequenceClassificationWithPabee  # noqa: E402

SHAPES = {
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "minilm": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "tiny": dict(num_hidden_layers=4, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=99),
}
# One thread in the smoke run: tiny operators on several threads crawl when other processes hold the cores.
TINY_SETTINGS = dict(shapes=["tiny"], train_shapes=["tiny"], seq_len=16, repeats=2, cut_repeats=2,
                     batch_sizes=[2, 4, 8], eval_batch_size=8, num_threads=1)
SECTIONS = ["forced_exit_batch1", "exit_cost_batch1", "against_cut_model", "batched_early_exit",
            "full_depth_vs_transformers", "eval_peak_memory", "training_step"]
TARGETS = {
    "forced_exit_batch1": "efficiency >= 0.97 at every exit layer",
    "exit_cost_batch1": "(what limits forced_exit_batch1: a breakdown, no target of its own)",
    "against_cut_model": "cut model time / early exit time >= 0.97 at every exit layer at batch 1",
    "batched_early_exit": "efficiency >= 0.95 at batch 32",
    "full_depth_vs_transformers": "time ratio <= 1.02",
    "training_step": "time ratio <= 1.10",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="bert-base,minilm",
                        help=f"Comma-separated model shapes for the evaluation sections, from: {', '.join(SHAPES)}.")
    parser.add_argument("--train_shapes", default=None,
                        help="Comma-separated shapes for the training-step section. Default: minilm on CPU (a "
                             "BERT-base step at batch 32, length 128 takes tens of seconds on 2 CPU cores), --shapes "
                             "on a GPU.")
    parser.add_argument("--exit_poolings", default="pooler,mean",
                        help="Comma-separated exit poolings for the batch-1 sections (pooler: the paper's, over the "
                             "first token; mean: over all tokens). The other sections use the pooler.")
    parser.add_argument("--seq_len", type=int, default=128, help="Sequence length of every input (no padding).")
    parser.add_argument("--repeats", type=int, default=7, help="Timed rounds per comparison; the median is reported.")
    parser.add_argument("--cut_repeats", type=int, default=31,
                        help="Timed rounds of the batch-1 comparisons with the cut model (differences of a few "
                             "percent: more rounds than --repeats).")
    parser.add_argument("--baseline_revision", default=None,
                        help="A git commit (or branch) of this repository whose pabee/modeling_pabee_bert.py is timed "
                             "beside the current one against the cut model, in the same rounds.")
    parser.add_argument("--batch_sizes", default="8,32,128",
                        help="Comma-separated batch sizes for the batched early-exit section.")
    parser.add_argument("--eval_batch_size", type=int, default=32,
                        help="Batch size of the early exit vs batch 1, full depth vs transformers, training and "
                             "memory sections.")
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch.set_num_threads before timing. Default: torch's own choice. On a loaded CPU, "
                             "fewer threads than cores avoids threads waiting on each other.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for weights, inputs and exit layers.")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"Comma-separated sections to run, from: {', '.join(SECTIONS)}. Default: all. "
                             "eval_peak_memory uses the examples of batched_early_exit, so needs it.")
    parser.add_argument("--operators_only", action="store_true",
                        help="Run only section 1c (against_cut_model) and time nothing: count the operators each "
                             "forward dispatches (the same on a loaded machine as on a quiet one).")
    parser.add_argument("--output", default="benchmarks/results/speed.json", help="Where to write the JSON results.")
    parser.add_argument("--tiny", action="store_true",
                        help="Tiny shapes (4 layers, hidden 32, length 16, 2 repeats, batches 2,4,8): a smoke run of "
                             "a few seconds on one thread. Overrides --shapes, --train_shapes, --seq_len, --repeats, "
                             "--batch_sizes, --eval_batch_size and --num_threads.")
    args = parser.parse_args(argv)

    args.shapes = args.shapes.split(",")
    args.train_shapes = args.train_shapes.split(",") if args.train_shapes else None
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    args.exit_poolings = args.exit_poolings.split(",")
    args.sections = ["against_cut_model"] if args.operators_only else args.sections.split(",")
    if not set(args.sections) <= set(SECTIONS):
        parser.error(f"--sections: choose from {', '.join(SECTIONS)}; got {','.join(args.sections)}")
    if "eval_peak_memory" in args.sections and "batched_early_exit" not in args.sections:
        parser.error("--sections: eval_peak_memory measures the examples of batched_early_exit: add it")
    if not set(args.exit_poolings) <= {"pooler", "mean"}:
        parser.error(f"--exit_poolings: choose from pooler, mean; got {','.join(args.exit_poolings)}")
    if args.tiny:
        vars(args).update(copy.deepcopy(TINY_SETTINGS))
    for shape in args.shapes + (args.train_shapes or []):
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape!r}: choose from {', '.join(SHAPES)}")
    if min(args.repeats, args.cut_repeats, args.seq_len, args.eval_batch_size, *args.batch_sizes) < 1:
        parser.error("--repeats, --cut_repeats, --seq_len, --eval_batch_size and --batch_sizes must be positive")
    return args


# ----------------------------------------------------------------------------------------------------------- timing


def time_call(fn, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()  # CUDA kernels run asynchronously: time the work launched, not the launching
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def compare(fns, repeats, device):
    """
    Seconds per call of each function in `fns` (name -> callable): {name: [one time per round]}. The calls are
    interleaved, and each round starts one contender later than the previous one, so that drifts in machine load and
    "who runs second" effects hit every contender alike.
    """
    print(f"    timing {' vs '.join(fns)} ({repeats} rounds)", flush=True)
    for fn in fns.values():
        if time_call(fn, device) < 1.0:  # warm-up; a second one when it is cheap (first calls allocate and tune)
            time_call(fn, device)
    names = list(fns)
    times = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_call(fns[name], device))
    return times


def ratio_interval(numerator_times, denominator_times, resamples=2000, seed=0):
    """
    95% bootstrap interval of median(numerator_times) / median(denominator_times), resampling the rounds with both
    contenders' times of a round kept together (they were timed side by side): how far the ratio of the medians
    could move on another run of as many rounds, on the same machine.
    """
    numerator, denominator = np.asarray(numerator_times), np.asarray(denominator_times)
    rounds = np.random.default_rng(seed).integers(0, len(numerator), size=(resamples, len(numerator)))
    ratios = np.median(numerator[rounds], axis=1) / np.median(denominator[rounds], axis=1)
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]


def operator_calls(fn):
    """How many aten operators one call of `fn` dispatches (nested ones included), counted by torch.profiler: the
    number that per-operator latency multiplies, the same on a quiet machine as on a loaded one."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(event.count for event in prof.key_averages() if event.key.startswith("aten::"))


def inference(model, input_ids, attention_mask, **kwargs):
    with torch.inference_mode():
        return model(input_ids, attention_mask=attention_mask, **kwargs)


# ----------------------------------------------------------------------------------------------------------- models


def make_models(shape, seed, device):
    """A PABEE model with random weights, and transformers' BertForSequenceClassification holding the same weights."""
    config = BertConfig(**{"vocab_size": 30522, **SHAPES[shape]}, num_labels=2, max_position_embeddings=512)
    torch.manual_seed(seed)
    pabee = BertForSequenceClassificationWithPabee(copy.deepcopy(config)).to(device).eval()
    plain = BertForSequenceClassification(copy.deepcopy(config)).to(device).eval()
    copy_weights_to_plain(pabee, plain)
    return pabee, plain


def copy_weights_to_plain(pabee, plain):
    """Same backbone; the plain model's classifier is PABEE's last classifier (what patience 0 answers with)."""
    state = {key: value for key, value in pabee.state_dict().items() if not key.startswith("classifiers.")}
    state.update({f"classifier.{key}": value for key, value in pabee.classifiers[-1].state_dict().items()})
    plain.load_state_dict(state)


class MeanPooledClassifier(nn.Module):
    """transformers' BertModel without its pooler, the mean of its last hidden states over the attended tokens, and a
    linear classifier: the plain model a mean-pooling exit answers like."""

    def __init__(self, backbone, classifier):
        super().__init__()
        self.bert, self.classifier = backbone, classifier

    def forward(self, input_ids, attention_mask):
        hidden_states = self.bert(input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        return self.classifier((hidden_states * weights).sum(dim=1) / weights.sum(dim=1))


def make_cut_model(model, exit_layer):
    """
    transformers' classifier cut to the first `exit_layer` layers of `model`, with the internal classifier of layer
    `exit_layer` on top, reading what it reads (`model.config.exit_pooling`): the least work that answers there.
    """
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = exit_layer
    pooler_exit = model.config.exit_pooling == "pooler"
    state = {key: value for key, value in model.base_model.state_dict().items()
             if not (key.startswith("encoder.layer.") and int(key.split(".")[2]) >= exit_layer)
             and (pooler_exit or not key.startswith("pooler."))}
    classifier = copy.deepcopy(model.classifiers[exit_layer - 1])
    if pooler_exit:
        cut = BertForSequenceClassification(config)
        cut.classifier = classifier
    else:
        cut = MeanPooledClassifier(BertModel(config, add_pooling_layer=False), classifier)
    cut.bert.load_state_dict(state)
    return cut.to(model.device).eval()


def load_baseline_model_class(revision):
    """
    BertForSequenceClassificationWithPabee as git commit `revision` defines it: its pabee/modeling_pabee_bert.py, with
    the shared pabee/modeling_pabee.py it imports where that commit has one, loaded as a package of their own.
    """
    repo_root = Path(__file__).resolve().parents[1]
    package = Path(tempfile.mkdtemp()) / "baseline_pabee"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("modeling_pabee_bert.py", "modeling_pabee.py"):
        source = subprocess.run(["git", "show", f"{revision}:pabee/{name}"], cwd=repo_root, capture_output=True,
                                text=True)
        if source.returncode == 0:
            (package / name).write_text(source.stdout)
        elif name == "modeling_pabee_bert.py":
            raise SystemExit(f"--baseline_revision {revision}: {source.stderr.strip()}")
    sys.path.insert(0, str(package.parent))
    try:
        module = importlib.import_module("baseline_pabee.modeling_pabee_bert")
    finally:
        sys.path.remove(str(package.parent))
    shutil.rmtree(package.parent)
    return module.BertForSequenceClassificationWithPabee


def make_inputs(batch_size, seq_len, vocab_size, seed, device):
    """Random token ids, every position attended: full-length inputs, so no padding columns can be dropped."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    return input_ids.to(device), torch.ones_like(input_ids).to(device)


@torch.no_grad()
def set_constant_classifiers(model):
    """Every classifier predicts class 0 for every input: with patience k - 1 every example exits at layer k."""
    for classifier in model.classifiers:
        classifier.weight.zero_()  # zero weights still cost the same matrix product as trained ones
        classifier.bias.copy_(torch.tensor([1.0, 0.0]))


def wanted_predictions(exit_layers, patience, num_layers):
    """
    Per-layer predictions (0/1) that make the patience rule exit each example at `exit_layers` (each >= patience + 1):
    alternate 1, 0, 1, ... up to layer exit - patience (the counter is 0 there), then hold that prediction, so the
    counter reaches `patience` exactly at the exit layer. Returns `(num_examples, num_layers)`.
    """
    layers = torch.arange(1, num_layers + 1)
    last_change = (exit_layers - patience).unsqueeze(1)
    return torch.minimum(layers, last_change) % 2


@torch.no_grad()
def fit_exit_classifiers(model, input_ids, attention_mask, exit_layers, patience):
    """
    Set each classifier so that example b of `input_ids` exits at `exit_layers[b]` with `patience`. Classifier i reads
    the pooled output of layer i: we record it for every example (a full-depth pass) and solve for the minimum-norm
    linear map sending it to +1 / -1 per the wanted prediction: exact while examples are fewer than hidden units.
    """
    if len(input_ids) > model.config.hidden_size:
        raise ValueError(f"{len(input_ids)} examples cannot be given arbitrary exit layers by linear classifiers on "
                         f"{model.config.hidden_size} hidden units: use batch sizes <= {model.config.hidden_size}")
    num_layers = len(model.classifiers)
    inputs = [None] * num_layers
    hooks = [
        classifier.register_forward_pre_hook(lambda _, args, i=i: inputs.__setitem__(i, args[0].double().cpu()))
        for i, classifier in enumerate(model.classifiers)
    ]
    inference(model, input_ids, attention_mask, output_all_layer_logits=True)
    for hook in hooks:
        hook.remove()
    wanted = wanted_predictions(exit_layers.cpu(), patience, num_layers).double() * 2 - 1  # (examples, L) of +-1
    for i, classifier in enumerate(model.classifiers):
        features = torch.cat([inputs[i], torch.ones(len(inputs[i]), 1, dtype=torch.float64)], dim=1)
        solution = torch.linalg.pinv(features) @ wanted[:, i]  # logit of class 1 minus logit of class 0
        classifier.weight.zero_()
        classifier.weight[1] = solution[:-1].to(classifier.weight)
        classifier.bias.zero_()
        classifier.bias[1] = solution[-1].to(classifier.bias)


def measured_exit_layers(model, input_ids, attention_mask, patience, batch_size):
    """The exit layers the model reports when run `batch_size` examples at a time."""
    return torch.cat([
        inference(model, input_ids[start:start + batch_size], attention_mask[start:start + batch_size],
                  patience=patience).exit_layers.cpu()
        for start in range(0, len(input_ids), batch_size)
    ])


def check_exit_layers(measured, wanted, what):
    if not torch.equal(measured, wanted.cpu()):
        raise RuntimeError(f"{what}: the model exited at {measured.tolist()}, the benchmark wanted {wanted.tolist()}")


# --------------------------------------------------------------------------------------------------------- sections


def bench_forced_exit(model, args, device):
    """
    Section 1: batch 1, exit forced at layer k by constant classifiers with patience k - 1. At k = L the model runs as
    at full depth (patience L - 1 can only exit at the last layer, so it skips the classifiers).
    """
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask = make_inputs(1, args.seq_len, model.config.vocab_size, args.seed, device)
    set_constant_classifiers(model)
    fns = {"full_depth": lambda: inference(model, input_ids, attention_mask, patience=0)}
    rows = []
    # Layer 1 cannot be forced: the counter reaches patience p at layer p + 1 at the earliest, and p = 0 means no exit.
    for exit_layer in range(2, num_layers + 1):
        exit_layers = measured_exit_layers(model, input_ids, attention_mask, exit_layer - 1, 1)
        check_exit_layers(exit_layers, torch.tensor([exit_layer]), f"forced exit at layer {exit_layer}")
        rows.append({"exit_layer": exit_layer, "patience": exit_layer - 1,
                     "measured_mean_exit_layer": exit_layers.double().mean().item()})
        fns[f"exit_{exit_layer}"] = lambda p=exit_layer - 1: inference(model, input_ids, attention_mask, patience=p)
    times = compare(fns, args.repeats, device)
    full = median(times["full_depth"])
    for row in rows:
        row["time_s"] = median(times[f"exit_{row['exit_layer']}"])
        row["wall_speedup"] = full / row["time_s"]
        row["layer_speedup"] = num_layers / row["exit_layer"]
        row["efficiency"] = row["wall_speedup"] / row["layer_speedup"]
    print_table(f"1. forced exit at batch 1 (full depth: {full:.4g} s)", rows,
                ["exit_layer", "time_s", "wall_speedup", "layer_speedup", "efficiency"])
    return {"full_depth_time_s": full, "rows": rows, "times_s": times}


def bench_exit_cost(model, args, device):
    """
    Section 1b: where batch-1 early exit spends its time, per layer. The early-exit loop is run instrumented: the
    model's own calls (a layer, the layer's internal classifier, the patience update and exit test) each timed with
    the clock, over a forward in which the example exits at the last layer L, so that every part runs at every layer:
    layer 1's classifier predicts class 1 and all others class 0, so with patience L - 2 the counter first reaches
    the patience at layer L. (With patience L - 1 the model skips the classifiers: no exit before layer L can happen.)
    Medians over rounds; the instrumented loop's total is checked against the real forward.
    """
    num_layers = model.config.num_hidden_layers
    patience = num_layers - 2
    input_ids, attention_mask = make_inputs(1, args.seq_len, model.config.vocab_size, args.seed, device)
    set_constant_classifiers(model)
    with torch.no_grad():
        model.classifiers[0].bias.copy_(torch.tensor([0.0, 1.0]))
    backbone = model.base_model
    threshold = model.config.regression_threshold
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def clock():
        sync()
        return time.perf_counter()

    @torch.inference_mode()
    def instrumented():
        seconds = {"layers": 0.0, "classifiers": 0.0, "exit_rule": 0.0}
        begin = clock()
        hidden_states = backbone.embed(input_ids)
        hidden_states, mask = drop_padding_columns(hidden_states, attention_mask)
        layer_inputs = backbone.layer_inputs(hidden_states, mask)
        pooling_weights = backbone.pooling_weights(hidden_states, mask)
        counters = torch.zeros(1, dtype=torch.long, device=device)
        previous_predictions = None
        seconds["embeddings"] = clock() - begin
        for index in range(num_layers):
            start = clock()
            hidden_states = backbone.run_layer(index, hidden_states, layer_inputs)
            layer_done = clock()
            logits = model._classify(index, hidden_states, pooling_weights)
            classifier_done = clock()
            predictions = exit_predictions(logits)
            if previous_predictions is not None:
                counters = update_patience_counters(counters, previous_predictions, predictions, threshold)
            previous_predictions = predictions
            if index >= patience:  # the exit test, which the loop needs on the host, where a counter can reach it
                int(counters.max())
            seconds["layers"] += layer_done - start
            seconds["classifiers"] += classifier_done - layer_done
            seconds["exit_rule"] += clock() - classifier_done
        seconds["total"] = clock() - begin
        return seconds

    check_exit_layers(measured_exit_layers(model, input_ids, attention_mask, patience, 1),
                      torch.tensor([num_layers]), "layer 1 disagreeing, patience L - 2")
    rounds = 2 * args.repeats + 1  # the parts are small: more rounds than elsewhere
    print(f"    timing the parts of the early-exit loop ({rounds} rounds)", flush=True)
    forward = lambda: inference(model, input_ids, attention_mask, patience=patience)  # noqa: E731
    for _ in range(2):
        instrumented(), forward()  # warm-up
    parts, forward_times = [], []
    for _ in range(rounds):
        parts.append(instrumented())
        forward_times.append(time_call(forward, device))
    part = {name: median(round_parts[name] for round_parts in parts) for name in parts[0]}
    layer = part["layers"] / num_layers
    row = {"layer_ms": 1e3 * layer,
           "classifier_us_per_layer": 1e6 * part["classifiers"] / num_layers,
           "exit_rule_us_per_layer": 1e6 * part["exit_rule"] / num_layers,
           "embeddings_ms": 1e3 * part["embeddings"]}
    row["classifier_share"] = part["classifiers"] / part["layers"]
    row["exit_rule_share"] = part["exit_rule"] / part["layers"]
    # Were nothing lost but these per-layer costs, an exit at layer k would be (L / k) * layer / (layer + costs)
    # faster than full depth (which runs no classifier): the efficiency the machinery allows.
    row["efficiency_bound"] = 1 / (1 + row["classifier_share"] + row["exit_rule_share"])
    row["instrumented_over_forward"] = part["total"] / median(forward_times)
    print_table("1b. where batch-1 early exit spends its time, per layer", [row], list(row))
    return {**row, "seconds": {"instrumented": parts, "forward": forward_times}}


def bench_against_cut_model(model, args, device, baseline=None):
    """
    Section 1c: early exit at layer k (constant classifiers, patience k - 1) against transformers' model cut to k
    layers with layer k's classifier on top (`make_cut_model`), interleaved: batch 1 at every k, and
    `--eval_batch_size` (every example exiting at k) at k = 2, L // 2, L - 1. `baseline`, when given, is the same model
    under an earlier revision's code, timed in the same rounds.
    """
    num_layers = model.config.num_hidden_layers
    set_constant_classifiers(model)
    with torch.no_grad():  # small weights keep class 0 but make the logits depend on what the classifier reads
        generator = torch.Generator().manual_seed(args.seed)
        for classifier in model.classifiers:
            classifier.weight.copy_(1e-3 * torch.randn(classifier.weight.shape, generator=generator))
    if baseline is not None:
        baseline.load_state_dict(model.state_dict())
        baseline.config.exit_pooling = model.config.exit_pooling
    rows = []
    for batch_size in sorted({1, args.eval_batch_size}):
        input_ids, attention_mask = make_inputs(batch_size, args.seq_len, model.config.vocab_size, args.seed, device)
        exit_layers = range(2, num_layers + 1) if batch_size == 1 else sorted({2, num_layers // 2, num_layers - 1})
        for exit_layer in exit_layers:
            patience = exit_layer - 1
            cut = make_cut_model(model, exit_layer)
            early = inference(model, input_ids, attention_mask, patience=patience)
            check_exit_layers(early.exit_layers.cpu(), torch.full((batch_size,), exit_layer), f"exit at {exit_layer}")
            cut_logits = inference(cut, input_ids, attention_mask)
            cut_logits = getattr(cut_logits, "logits", cut_logits)
            if not torch.allclose(early.logits, cut_logits, atol=1e-5, rtol=1e-4):
                raise RuntimeError(f"early exit at layer {exit_layer} and the cut model disagree: {early.logits} vs "
                                   f"{cut_logits}")
            fns = {"cut_model": lambda: inference(cut, input_ids, attention_mask),
                   "early_exit": lambda p=patience: inference(model, input_ids, attention_mask, patience=p)}
            if baseline is not None:
                fns["baseline_early_exit"] = lambda p=patience: inference(baseline, input_ids, attention_mask,
                                                                          patience=p)
            row = {"batch_size": batch_size, "exit_layer": exit_layer, "patience": patience}
            row.update({f"{name}_operators": operator_calls(fn) for name, fn in fns.items()})
            if args.operators_only:
                rows.append(row)
                continue
            times = compare(fns, args.cut_repeats if batch_size == 1 else args.repeats, device)
            row.update({"cut_model_time_s": median(times["cut_model"]),
                        "early_exit_time_s": median(times["early_exit"])})
            row["cut_over_early_exit"] = row["cut_model_time_s"] / row["early_exit_time_s"]
            row["cut_over_early_exit_95ci"] = ratio_interval(times["cut_model"], times["early_exit"])
            if baseline is not None:
                row["baseline_time_s"] = median(times["baseline_early_exit"])
                row["cut_over_baseline"] = row["cut_model_time_s"] / row["baseline_time_s"]
                row["baseline_over_early_exit"] = row["baseline_time_s"] / row["early_exit_time_s"]
            rows.append({**row, "times_s": times})
            del cut
    columns = ["batch_size", "exit_layer", "cut_model_operators", "early_exit_operators"]
    columns += ["baseline_early_exit_operators"] if baseline is not None else []
    if not args.operators_only:
        columns += ["cut_model_time_s", "early_exit_time_s", "cut_over_early_exit", "cut_over_early_exit_95ci"]
        columns += ["baseline_time_s", "cut_over_baseline", "baseline_over_early_exit"] if baseline is not None else []
    print_table("1c. early exit at layer k vs transformers' model cut to k layers", rows, columns)
    return {"cut_model": "BertForSequenceClassification" if model.config.exit_pooling == "pooler" else
            "BertModel without pooler + mean over attended tokens + linear", "rows": rows}


def bench_batched_early_exit(model, args, device):
    """Section 2: per-example exit layers spread over patience+1..L; returns the inputs and patience for section 5."""
    num_layers = model.config.num_hidden_layers
    patience = max(1, num_layers // 4)  # BERT-base: 3, MiniLM: 1; the exit layers spread over patience+1..L
    num_examples = max(args.batch_sizes + [args.eval_batch_size])
    input_ids, attention_mask = make_inputs(num_examples, args.seq_len, model.config.vocab_size, args.seed, device)
    generator = torch.Generator().manual_seed(args.seed)
    wanted = torch.randint(patience + 1, num_layers + 1, (num_examples,), generator=generator)
    fit_exit_classifiers(model, input_ids, attention_mask, wanted, patience)

    rows = []
    for batch_size in args.batch_sizes:
        ids, mask = input_ids[:batch_size], attention_mask[:batch_size]
        exit_layers = measured_exit_layers(model, ids, mask, patience, batch_size)
        check_exit_layers(exit_layers, wanted[:batch_size], f"spread of exit layers at batch {batch_size}")
        times = compare({"full_depth": lambda: inference(model, ids, mask, patience=0),
                         "early_exit": lambda: inference(model, ids, mask, patience=patience)}, args.repeats, device)
        mean_exit = exit_layers.double().mean().item()
        full, early = median(times["full_depth"]), median(times["early_exit"])
        rows.append({"batch_size": batch_size, "mean_exit_layer": mean_exit,
                     "full_depth_examples_per_s": batch_size / full, "early_exit_examples_per_s": batch_size / early,
                     "wall_speedup": full / early, "layer_speedup": num_layers / mean_exit,
                     "efficiency": (full / early) / (num_layers / mean_exit), "times_s": times})
    print_table(f"2. batched early exit (patience {patience})", rows,
                ["batch_size", "mean_exit_layer", "full_depth_examples_per_s", "early_exit_examples_per_s",
                 "wall_speedup", "layer_speedup", "efficiency"])

    # What a batch-size-1 restriction (the reference implementation's) costs: the same examples one at a time.
    size = args.eval_batch_size
    ids, mask = input_ids[:size], attention_mask[:size]
    check_exit_layers(measured_exit_layers(model, ids, mask, patience, 1), wanted[:size], "exit layers at batch 1")
    times = compare({f"batch_{size}": lambda: inference(model, ids, mask, patience=patience),
                     "batch_1": lambda: measured_exit_layers(model, ids, mask, patience, 1)}, args.repeats, device)
    batched = {"batch_size": size, "mean_exit_layer": wanted[:size].double().mean().item(),
               "batched_examples_per_s": size / median(times[f"batch_{size}"]),
               "batch_1_examples_per_s": size / median(times["batch_1"]), "times_s": times}
    batched["batched_over_batch_1"] = batched["batched_examples_per_s"] / batched["batch_1_examples_per_s"]
    print_table(f"2b. early exit at batch {size} vs the same examples one at a time", [batched],
                ["batch_size", "mean_exit_layer", "batched_examples_per_s", "batch_1_examples_per_s",
                 "batched_over_batch_1"])
    result = {"patience": patience, "wanted_exit_layers": "uniform over patience+1..L", "rows": rows,
              "batched_vs_batch_1": batched}
    return result, (input_ids[:size], attention_mask[:size], patience)


def bench_against_transformers(model, plain, args, device):
    """Section 3: patience 0 against transformers' own model with the same weights."""
    copy_weights_to_plain(model, plain)
    rows = []
    for batch_size in sorted({1, args.eval_batch_size}):
        ids, mask = make_inputs(batch_size, args.seq_len, model.config.vocab_size, args.seed, device)
        ours, theirs = inference(model, ids, mask, patience=0).logits, inference(plain, ids, mask).logits
        if not torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4):
            raise RuntimeError(f"patience 0 and BertForSequenceClassification disagree: {ours} vs {theirs}")
        times = compare({"pabee_patience_0": lambda: inference(model, ids, mask, patience=0),
                         "transformers": lambda: inference(plain, ids, mask)}, args.repeats, device)
        pabee, transformers_time = median(times["pabee_patience_0"]), median(times["transformers"])
        rows.append({"batch_size": batch_size, "pabee_time_s": pabee, "transformers_time_s": transformers_time,
                     "time_ratio": pabee / transformers_time, "times_s": times})
    print_table("3. full depth: patience 0 vs BertForSequenceClassification", rows,
                ["batch_size", "pabee_time_s", "transformers_time_s", "time_ratio"])
    return {"rows": rows}


def bench_training(shape, args, device):
    """Section 4: one optimisation step (forward, backward, AdamW) against plain sequence classification."""
    model, plain = make_models(shape, args.seed, device)
    size = args.eval_batch_size
    ids, mask = make_inputs(size, args.seq_len, model.config.vocab_size, args.seed, device)
    labels = torch.randint(0, 2, (size,), generator=torch.Generator().manual_seed(args.seed)).to(device)

    def make_step(net):
        net.train()  # dropout on, and PABEE runs every layer and every classifier (its weighted loss needs them)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)

        def step():
            optimizer.zero_grad(set_to_none=True)
            net(ids, attention_mask=mask, labels=labels).loss.backward()
            optimizer.step()
        return step

    times = compare({"pabee": make_step(model), "transformers": make_step(plain)}, args.repeats, device)
    row = {"shape": shape, "batch_size": size, "seq_len": args.seq_len, "pabee_time_s": median(times["pabee"]),
           "transformers_time_s": median(times["transformers"]), "times_s": times}
    row["time_ratio"] = row["pabee_time_s"] / row["transformers_time_s"]
    print_table(f"4. training step, {shape}", [row],
                ["batch_size", "pabee_time_s", "transformers_time_s", "time_ratio"])
    return row


def peak_memory_bytes(fn, device):
    """
    Peak bytes allocated by torch during `fn()` above what was allocated before. CUDA: the caching allocator's own
    statistics. CPU: torch.profiler's record of every tensor allocation and free, summed in time order (torch
    tensors only, not the Python heap nor the allocator's cached pages, so less than the growth of the process RSS).
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # kineto_results holds the raw "[memory]" events (+bytes on allocation, -bytes on free); prof.events() folds them
    # into the operators, which loses their order.
    events = sorted((event.start_ns(), event.nbytes()) for event in prof.profiler.kineto_results.events()
                    if event.name() == "[memory]")
    allocated = peak = 0
    for _, nbytes in events:
        allocated += nbytes
        peak = max(peak, allocated)
    return peak


def bench_eval_memory(model, plain, spread_inputs, device):
    """Section 6: peak memory of one evaluation forward at batch 32, on the examples of section 2."""
    ids, mask, patience = spread_inputs
    fns = {"transformers": lambda: inference(plain, ids, mask),
           "pabee_patience_0": lambda: inference(model, ids, mask, patience=0),
           "pabee_early_exit": lambda: inference(model, ids, mask, patience=patience)}
    for fn in fns.values():
        fn()  # warm-up: one-time allocations (e.g. of oneDNN's scratch space) are not the model's
    weights = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    row = {"batch_size": len(ids), "early_exit_patience": patience, "weights_mib": weights / 2**20}
    row.update({f"{name}_peak_mib": peak_memory_bytes(fn, device) / 2**20 for name, fn in fns.items()})
    row["patience_0_over_transformers"] = row["pabee_patience_0_peak_mib"] / row["transformers_peak_mib"]
    print_table("5. peak memory of evaluation (MiB above the weights)", [row], list(row))
    if device.type == "cuda":
        method = "torch.cuda.max_memory_allocated during one forward minus memory_allocated before"
    else:
        method = ("torch.profiler memory events (CPU tensor allocations and frees) during one forward: peak of the "
                  "running sum; the weights, the Python heap and the allocator's cached pages are not counted")
    return {"method": method, **row}


# ---------------------------------------------------------------------------------------------------------- output


def print_table(title, rows, columns):
    def cell(value):
        if isinstance(value, list):  # an interval
            return " to ".join(f"{bound:.3f}" for bound in value)
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    widths = [max(len(column), *(len(cell(row[column])) for row in rows)) for column in columns]
    print(f"\n  {title}")
    print("  " + "  ".join(column.rjust(width) for column, width in zip(columns, widths)))
    for row in rows:
        print("  " + "  ".join(cell(row[column]).rjust(width) for column, width in zip(columns, widths)))
    print(flush=True)


def machine_info(device):
    cpu_model = platform.processor()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu_model = names[0] if names else cpu_model
    return {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "cpu_model": cpu_model, "cpu_count": os.cpu_count(), "torch_num_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": os.getloadavg()}


def main(argv=None):
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        return run_benchmark(args)
    finally:
        torch.set_num_threads(threads_before)  # main() may be called in a process that goes on (the smoke test)


def run_benchmark(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_shapes = args.train_shapes or (args.shapes if device.type == "cuda" or args.tiny else ["minilm"])
    baseline_class = load_baseline_model_class(args.baseline_revision) if args.baseline_revision else None
    results = {"machine": machine_info(device), "settings": {**vars(args), "train_shapes": train_shapes},
               "targets": TARGETS, "forced_exit_batch1": {}, "exit_cost_batch1": {}, "against_cut_model": {},
               "batched_early_exit": {}, "full_depth_vs_transformers": {}, "training_step": {},
               "eval_peak_memory": {}}
    print(f"***** PABEE speed benchmark on {device} ({results['machine']['cpu_model']}, "
          f"{torch.get_num_threads()} threads) *****", flush=True)

    for shape in args.shapes:
        print(f"\n===== {shape}: {SHAPES[shape]}, sequence length {args.seq_len} =====", flush=True)
        model, plain = make_models(shape, args.seed, device)
        baseline = baseline_class(copy.deepcopy(model.config)).to(device).eval() if baseline_class else None
        for section in ("forced_exit_batch1", "exit_cost_batch1", "against_cut_model"):
            results[section][shape] = {}
        for pooling in args.exit_poolings:
            print(f"\n  --- internal classifiers over the {pooling} ---", flush=True)
            model.config.exit_pooling = pooling
            if "forced_exit_batch1" in args.sections:
                results["forced_exit_batch1"][shape][pooling] = bench_forced_exit(model, args, device)
            if "exit_cost_batch1" in args.sections:
                results["exit_cost_batch1"][shape][pooling] = bench_exit_cost(model, args, device)
            if "against_cut_model" in args.sections:
                results["against_cut_model"][shape][pooling] = bench_against_cut_model(model, args, device, baseline)
        del baseline
        model.config.exit_pooling = "pooler"
        if "batched_early_exit" in args.sections:
            results["batched_early_exit"][shape], spread_inputs = bench_batched_early_exit(model, args, device)
        if "full_depth_vs_transformers" in args.sections:
            results["full_depth_vs_transformers"][shape] = bench_against_transformers(model, plain, args, device)
        if "eval_peak_memory" in args.sections:
            results["eval_peak_memory"][shape] = bench_eval_memory(model, plain, spread_inputs, device)
        del model, plain

    for shape in train_shapes if "training_step" in args.sections else []:
        print(f"\n===== training step: {shape}, batch {args.eval_batch_size}, length {args.seq_len} =====", flush=True)
        results["training_step"][shape] = bench_training(shape, args, device)

    results["machine"]["load_average_at_end"] = os.getloadavg()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Results written to {output}")
    return results


if __name__ == "__main__":
    main()
