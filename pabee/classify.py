"""Try a trained PABEE model on your own sentences: the label, its probability and the exit layer of each input.

    python -m pabee.classify --model output/demo "a gripping, funny film" "dull and far too long"
    python -m pabee.classify --model output/demo --file reviews.txt --patience 2   # one text per line
    python -m pabee.classify --model output/demo --patience 1 --exit_confidence 0.75 "a gripping, funny film"
    python -m pabee.classify --model output/demo --patience 1 --exit_confidence 0.75 --max_exit_layer 4 "a fine film"
    printf 'A man plays.\\tSomeone plays.\\n' | python -m pabee.classify --model output/mrpc   # pairs: tab-separated
    python -m pabee.classify --model output/demo --int8 "a gripping, funny film"         # int8 on the CPU
    python -m pabee.classify --model output/demo-onnx "a gripping, funny film"    # a folder pabee.export wrote

Texts come from the arguments, else from --file, else from standard input: one text, or a tab-separated sentence pair,
per line (blank lines are skipped). The model answers with early exit at the patience (and confidence gate) saved
with it, or --patience (and --exit_confidence).
Inputs run in batches of --batch_size, with the same answers as one at a time. One line is printed per input, in
order: label (the config's label names where it has them), probability, exit layer out of the model's layers, the
input; a regression model prints its score instead of a label and a probability. With --slowdown_guard, a column
says whether the guard fired.
"""

import argparse
import os
import sys
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from transformers import AutoTokenizer
from transformers.utils import logging as transformers_logging

from .glue import finetuned_task, is_sentence_pair_task
from .models import MODEL_CLASSES, TOKENIZER_FILES, lacks_tokenizer_files, load_pabee_config, max_model_length
from .quantization import quantize_int8

EXPORTED_SETTINGS_FILE = "pabee_onnx.json"  # what pabee.export writes beside the graphs (onnx_runner.SETTINGS_FILE)


@dataclass(frozen=True)
class Answer:
    """The model's answer for one input: class id (None for regression), its probability or the score, exit layer."""

    label_id: int | None
    value: float
    exit_layer: int
    guard_fired: bool | None = None  # None when the slowdown guard is off


class InputError(Exception):
    """Bad input, reported as one line without a traceback."""


@dataclass
class ExportedModel:
    """A folder that `python -m pabee.export` wrote: its runner (`PabeeOnnxModel`) and the model's config."""

    runner: object
    config: object


def is_exported_folder(path):
    return os.path.isfile(os.path.join(path, EXPORTED_SETTINGS_FILE))


def load_exported_model(path):
    """The exported ONNX model in folder `path` (see pabee.export) and the tokenizer saved with it."""
    from .onnx_runner import PabeeOnnxModel  # onnxruntime only where an exported folder is run

    try:
        config, _ = load_pabee_config(path)
        tokenizer = AutoTokenizer.from_pretrained(path, config=config)
        return ExportedModel(PabeeOnnxModel(path), config), tokenizer
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"cannot load the exported model in {path}: {first_line(error)}")


def load_model(path):
    """The trained PABEE model (in evaluation mode) and tokenizer saved in folder `path`."""
    if not os.path.isdir(path):
        raise InputError(f"--model {path}: no such folder")
    try:
        config, family = load_pabee_config(path)
    except (OSError, ValueError) as error:
        raise InputError(f"no PABEE model in {path}: {first_line(error)}")
    if lacks_tokenizer_files(path):
        raise InputError(f"{path} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}): save the model's "
                         f"tokenizer there with its save_pretrained")
    # Quietly: no progress bars, and no transformers warnings (a backbone given by mistake is reported below).
    verbosity, progress_bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        # With the config given, AutoTokenizer does not read it again through AutoConfig (which would ask whether to
        # run the folder's copy of the modeling code).
        tokenizer = AutoTokenizer.from_pretrained(path, config=config)
        model, loading_info = MODEL_CLASSES[family].from_pretrained(path, config=config, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # missing or damaged files
        raise InputError(f"cannot load the model in {path}: {first_line(error)}")
    finally:
        transformers_logging.set_verbosity(verbosity)
        if progress_bars:
            transformers_logging.enable_progress_bar()
    missing = sorted(loading_info["missing_keys"])
    if missing:
        raise InputError(f"{path} holds no trained PABEE classifiers (missing {missing[0]}): it is a backbone to "
                         f"fine-tune with run_glue_with_pabee.py, not a trained model")
    return model.eval(), tokenizer


def read_inputs(lines, where):
    """
    (text, text_b or None) per non-blank line; a tab separates the two texts of a pair. `where` names a line in
    errors: a format string taking its 1-based number.
    """
    inputs = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        texts = line.split("\t")
        if len(texts) > 2 or not all(text.strip() for text in texts):
            raise InputError(f"{where.format(number)}: expected a text or two tab-separated texts, got {line!r}")
        inputs.append((texts[0], texts[1] if len(texts) == 2 else None))
    return inputs


def check_input_kind(inputs, config):
    """
    All inputs single texts or all pairs; and, for a model fine-tuned on a GLUE task, the kind the task takes (the
    training script saves the task's name in `config.finetuning_task`).
    """
    pairs = inputs[0][1] is not None
    for number, (_, text_b) in enumerate(inputs, start=1):
        if (text_b is not None) != pairs:
            raise InputError(f"input {number}: the inputs mix single texts and tab-separated pairs; give one kind")
    task = finetuned_task(config)
    if task is None:  # not fine-tuned on a GLUE task this project knows: either kind may be right
        return
    if pairs != is_sentence_pair_task(task):
        given = "a tab-separated pair" if pairs else "a single text"
        expected = "sentence pairs (two texts per line, tab-separated)" if not pairs else "single texts (no tab)"
        raise InputError(f"input 1 is {given}, but the model was fine-tuned on {task.name}, which takes {expected}")


@torch.no_grad()
def classify(model, tokenizer, inputs, patience=None, batch_size=32, max_length=None, exit_confidence=None,
             max_exit_layer=None, slowdown_guard=None):
    """
    The model's `Answer` for each (text, text_b or None) of `inputs`, in order, run `batch_size` at a time. `model` is
    a PABEE model or an `ExportedModel` (which has no slowdown guard). The exit settings left None are the model's
    own.
    """
    exported = isinstance(model, ExportedModel)
    device = None if exported else next(model.parameters()).device
    answers = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        texts_b = [text_b for _, text_b in batch]
        encoded = tokenizer(
            [text for text, _ in batch],
            texts_b if any(text_b is not None for text_b in texts_b) else None,
            padding=True,
            truncation=True,
            max_length=max_length or max_model_length(model.config),
            return_tensors="np" if exported else "pt",
        )
        fired = [None] * len(batch)
        if exported:
            logits, exit_layers = model.runner(encoded["input_ids"], encoded["attention_mask"],
                                               encoded.get("token_type_ids"), patience=patience,
                                               exit_confidence=exit_confidence, max_exit_layer=max_exit_layer)
            logits, exit_layers = torch.from_numpy(logits), torch.from_numpy(exit_layers)
        else:
            output = model(**encoded.to(device), patience=patience, exit_confidence=exit_confidence,
                           max_exit_layer=max_exit_layer, slowdown_guard=slowdown_guard)
            logits, exit_layers = output.logits, output.exit_layers
            if output.guard_fired is not None:
                fired = output.guard_fired.tolist()
        if model.config.num_labels == 1:
            values, label_ids = logits[:, 0].tolist(), [None] * len(batch)
        else:
            probabilities, ids = logits.float().softmax(dim=-1).max(dim=-1)
            values, label_ids = probabilities.tolist(), ids.tolist()
        answers += [Answer(*fields) for fields in zip(label_ids, values, exit_layers.tolist(), fired)]
    return answers


def label_name(config, label_id):
    """The config's name for a class ("entailment"), or its id where the names are transformers' LABEL_0 defaults."""
    name = (config.id2label or {}).get(label_id)
    return str(label_id) if name is None or name == f"LABEL_{label_id}" else str(name)


def format_answers(config, inputs, answers):
    num_layers = config.num_hidden_layers
    regression = config.num_labels == 1
    guarded = any(answer.guard_fired is not None for answer in answers)
    lines = ["score\texit layer\tinput" if regression else "label\tprobability\texit layer\tinput"]
    if guarded:
        lines[0] = lines[0].replace("exit layer", "exit layer\tguard")
    for (text, text_b), answer in zip(inputs, answers):
        shown = text if text_b is None else f"{text}\t{text_b}"
        exit_layer = f"{answer.exit_layer}/{num_layers}"
        if guarded:
            exit_layer += "\tfired" if answer.guard_fired else "\t-"
        if regression:
            lines.append(f"{answer.value:.3f}\t{exit_layer}\t{shown}")
        else:
            lines.append(f"{label_name(config, answer.label_id)}\t{answer.value:.3f}\t{exit_layer}\t{shown}")
    return "\n".join(lines)


def first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pabee.classify", description=__doc__.split("\n\n")[0])
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")  # one line, without the usage
    parser.add_argument("texts", nargs="*",
                        help="Texts to classify; a sentence pair is two texts joined by a tab. Default: the lines "
                             "of --file, else of standard input.")
    parser.add_argument("--model", required=True,
                        help="Folder of a trained PABEE model, as run_glue_with_pabee.py saves it (e.g. output/demo), "
                             "or a folder that python -m pabee.export wrote from one (runs on onnxruntime).")
    parser.add_argument("--int8", action="store_true",
                        help="Run the model quantized to int8 (torch dynamic quantization, on the CPU). An exported "
                             "folder is int8 when it was exported with --int8.")
    parser.add_argument("--file", default=None,
                        help="Read the inputs from this file: one text, or two tab-separated texts, per line.")
    parser.add_argument("--patience", type=int, default=None,
                        help="Patience of the early exit (0: every layer). Default: the one saved with the model.")
    parser.add_argument("--exit_confidence", type=float, default=None,
                        help="Confidence gate on the patience counter: a layer counts toward the patience only if its "
                             "prediction agrees with the previous layer's at a top-class probability of at least "
                             "this (0: plain PABEE; classification only). Default: the one saved with the model.")
    parser.add_argument("--max_exit_layer", type=int, default=None,
                        help="Slowdown defence: a cap on depth; an input still running at this layer answers with its "
                             "classifier (with --slowdown_guard, only the inputs the guard flags are held to it). "
                             "Default: the one saved with the model (usually none).")
    parser.add_argument("--slowdown_guard", type=float, default=None,
                        help="Slowdown defence: a threshold in [0, 1] on the running uncertainty score of the layers "
                             "run so far; an input whose score passes it is held to --max_exit_layer, or exits at "
                             "once with no cap. Classification only. Default: the one saved with the model (usually "
                             "none).")
    parser.add_argument("--batch_size", type=int, default=32,
                        help="Inputs run together; the answers are the same at any batch size.")
    parser.add_argument("--max_seq_length", type=int, default=None,
                        help="Longer inputs are truncated to this many tokens. Default: the model's maximum.")
    args = parser.parse_args(argv)
    if args.texts and args.file:
        parser.error("give texts as arguments or --file, not both")
    if args.patience is not None and args.patience < 0:
        parser.error(f"--patience must be >= 0 (0 runs every layer), got {args.patience}")
    if args.exit_confidence is not None and not 0 <= args.exit_confidence <= 1:  # NaN fails both
        parser.error(f"--exit_confidence must be a probability in [0, 1] (0: plain PABEE), got {args.exit_confidence}")
    if args.max_exit_layer is not None and args.max_exit_layer < 1:
        parser.error(f"--max_exit_layer must be a layer >= 1, got {args.max_exit_layer}")
    if args.slowdown_guard is not None and not 0 <= args.slowdown_guard <= 1:  # NaN fails both
        parser.error(f"--slowdown_guard must be a score in [0, 1], got {args.slowdown_guard}")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.max_seq_length is not None and args.max_seq_length < 2:
        parser.error(f"--max_seq_length must be >= 2, got {args.max_seq_length}")
    return args


def gather_inputs(args):
    if args.texts:
        return read_inputs(args.texts, "argument {}")
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as file:
                return read_inputs(file, f"{args.file}, line {{}}")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read --file {args.file}: {first_line(error)}")
    if sys.stdin.isatty():
        raise InputError("no input: give texts as arguments, --file, or lines on standard input")
    return read_inputs(sys.stdin, "standard input, line {}")


def main(argv=None):
    args = parse_args(argv)
    try:
        inputs = gather_inputs(args)
        if not inputs:
            raise InputError("no input: only blank lines; give one text (or tab-separated pair) per line")
        if not os.path.isdir(args.model):
            raise InputError(f"--model {args.model}: no such folder")
        if is_exported_folder(args.model):
            model, tokenizer = load_exported_model(args.model)
            if args.int8 and model.runner.settings["precision"] != "int8":
                raise InputError(f"--int8: {args.model} was exported in fp32; export an int8 folder with python -m "
                                 "pabee.export --int8, or leave out --int8")
        else:
            model, tokenizer = load_model(args.model)
            if args.int8:
                model = quantize_int8(model)
        check_input_kind(inputs, model.config)
        longest = max_model_length(model.config)
        if args.max_seq_length is not None and args.max_seq_length > longest:
            raise InputError(f"--max_seq_length {args.max_seq_length} is more than the {longest} tokens the model in "
                             f"{args.model} takes")
        if args.exit_confidence and model.config.num_labels == 1:
            raise InputError(f"--exit_confidence gates on class probabilities; the model in {args.model} is a "
                             "regression model, which has none")
        if args.max_exit_layer is not None and args.max_exit_layer > model.config.num_hidden_layers:
            raise InputError(f"--max_exit_layer {args.max_exit_layer} is more than the "
                             f"{model.config.num_hidden_layers} layers of the model in {args.model}")
        if args.slowdown_guard is not None and model.config.num_labels == 1:
            raise InputError(f"--slowdown_guard reads class probabilities; the model in {args.model} is a "
                             "regression model, which has none")
        if args.slowdown_guard is not None and isinstance(model, ExportedModel):
            raise InputError(f"--slowdown_guard runs in the torch model only; {args.model} is an exported folder: "
                             "classify with the model folder it was exported from, or use --max_exit_layer alone")
        if torch.cuda.is_available() and not (args.int8 or isinstance(model, ExportedModel)):
            model = model.cuda()
        answers = classify(model, tokenizer, inputs, args.patience, args.batch_size, args.max_seq_length,
                           args.exit_confidence, args.max_exit_layer, args.slowdown_guard)
    except InputError as error:
        raise SystemExit(f"error: {error}") from None
    print(format_answers(model.config, inputs, answers))
    return answers


if __name__ == "__main__":
    main()
