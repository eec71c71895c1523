"""Try a trained PABEE model on your own sentences: the label, its probability and the exit layer of each input.

    python -m pabee.classify --model output/demo "a gripping, funny film" "dull and far too long"
    python -m pabee.classify --model output/demo --file reviews.txt --patience 2   # one text per line
    python -m pabee.classify --model output/demo --patience 1 --exit_confidence 0.75 "a gripping, funny film"
    python -m pabee.classify --model output/demo --exit_criterion entropy --exit_threshold 0.3 "a fine film"
    python -m pabee.classify --model output/demo --patience 1 --exit_confidence 0.75 --max_exit_layer 4 "a fine film"
    printf 'A man plays.\\tSomeone plays.\\n' | python -m pabee.classify --model output/mrpc   # pairs: tab-separated
    python -m pabee.classify --model output/demo --int8 "a gripping, funny film"         # int8 on the CPU
    python -m pabee.classify --model output/demo-onnx "a gripping, funny film"    # a folder pabee.export wrote

Texts come from the arguments, else from --file, else from standard input: one text, or a tab-separated sentence pair,
per line (blank lines are skipped). The exit rule is --patience, --exit_criterion, --exit_threshold and
--exit_confidence together. With none of them the model answers with the rule saved with it (a line on standard error
says which); any of them given make the whole rule, the others taking their defaults (patience 0, criterion patience,
no threshold, gate 0), never the saved values: --patience 0 runs every layer, --patience 3 is plain PABEE at patience
3, whatever the model saved. --exit_threshold needs --exit_criterion, and --exit_confidence needs --patience. The
slowdown defences --max_exit_layer and --slowdown_guard keep their saved values unless given.
Inputs run in batches of --batch_size, with the same answers as one at a time. One line is printed per input, in
order: label (the config's label names where it has them), probability, exit layer out of the model's layers, the
input; a regression model prints its score instead of a label and a probability. With --slowdown_guard, a column
says whether the guard fired.

On a folder that pabee.export wrote, the command runs the folder's ONNX Runtime path and imports neither torch nor
transformers, so that it starts as fast as the folder's own runner.
"""

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np

from .glue import finetuned_task, is_sentence_pair_task

EXPORTED_SETTINGS_FILE = "pabee_onnx.json"  # what pabee.export writes beside the graphs (onnx_runner.SETTINGS_FILE)
# Files only an exported folder holds: a folder with any of them is opened as one (and a missing one named)
EXPORTED_FOLDER_FILES = (EXPORTED_SETTINGS_FILE, "pabee_onnx.py", "embeddings.onnx")
# The exit rule: given for a call, these replace the saved rule as a whole (the defences are not part of it)
RULE_SETTINGS = ("patience", "exit_criterion", "exit_threshold", "exit_confidence")


@dataclass(frozen=True)
class Answer:
    """The model's answer for one input: class id (None for regression), its probability or the score, exit layer."""

    label_id: int | None
    value: float
    exit_layer: int
    guard_fired: bool | None = None  # None when the slowdown guard is off


class InputError(Exception):
    """Bad input, reported as one line without a traceback."""


@dataclass(frozen=True)
class ExportedConfig:
    """What this module reads of an exported model's config, from the folder's settings file."""

    num_labels: int
    num_hidden_layers: int
    id2label: dict
    finetuning_task: str | None
    max_length: int

    @classmethod
    def from_settings(cls, settings):
        return cls(settings["num_labels"], len(settings["layers"]),
                   {int(key): value for key, value in settings["id2label"].items()}, settings.get("finetuning_task"),
                   settings["max_length"])


@dataclass
class ExportedModel:
    """A folder that `python -m pabee.export` wrote: its runner (`PabeeOnnxModel`) and the model's config."""

    runner: object
    config: ExportedConfig


def is_exported_folder(path):
    return any(os.path.isfile(os.path.join(path, name)) for name in EXPORTED_FOLDER_FILES)


def load_exported_model(path, threads=None):
    """
    The exported ONNX model in folder `path` (see pabee.export) and its tokenizer (the `tokenizers` library's, which
    `classify` takes for this model). The folder is checked here: a missing or damaged file is an `InputError`.
    """
    from .onnx_runner import PabeeOnnxModel  # onnxruntime only where an exported folder is run

    try:
        runner = PabeeOnnxModel(path, threads=threads)
        return ExportedModel(runner, ExportedConfig.from_settings(runner.settings)), runner.load_tokenizer()
    except ValueError as error:  # the runner's ExportedFolderError
        raise InputError(first_line(error))


def load_model(path):
    """The trained PABEE model (in evaluation mode) and tokenizer saved in folder `path`."""
    from safetensors import SafetensorError
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from .models import MODEL_CLASSES, TOKENIZER_FILES, lacks_tokenizer_files, load_pabee_config

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


def load_any_model(path):
    """
    (model, tokenizer) of folder `path`: an `ExportedModel` for a folder that pabee.export wrote (torch is not
    imported), else the torch model; either goes to `classify`.
    """
    if not os.path.isdir(path):
        raise InputError(f"--model {path}: no such folder")
    return load_exported_model(path) if is_exported_folder(path) else load_model(path)


def model_max_length(model):
    """The longest input the model takes, in tokens."""
    if isinstance(model, ExportedModel):
        return model.config.max_length
    from .models import max_model_length

    return max_model_length(model.config)


def saved_exit_setting(model, max_exit_layer=None, slowdown_guard=None):
    """
    The exit setting a call that gives no rule runs with: the rule saved with the model, with its slowdown defences
    or those given (as `exit_setting_label` reads it).
    """
    if isinstance(model, ExportedModel):
        return model.runner.exit_settings(max_exit_layer=max_exit_layer)
    config = model.config
    return {**{name: getattr(config, name) for name in RULE_SETTINGS},
            "max_exit_layer": config.max_exit_layer if max_exit_layer is None else max_exit_layer,
            "slowdown_guard": config.slowdown_guard if slowdown_guard is None else slowdown_guard}


def exit_setting_label(settings):
    """An exit setting as the results tables name it: "patience 1, confidence >= 0.75", "entropy < 0.4852, cap 4"."""
    if settings["exit_criterion"] == "patience":
        gate = settings.get("exit_confidence") or 0
        label = f"patience {settings['patience']}" + (f", confidence >= {gate:g}" if gate else "")
    else:
        sign = "<" if settings["exit_criterion"] == "entropy" else ">"
        label = f"{settings['exit_criterion']} {sign} {settings['exit_threshold']:g}"
    if settings.get("max_exit_layer") is not None:
        label += f", cap {settings['max_exit_layer']}"
    if settings.get("slowdown_guard") is not None:
        label += f", guard {settings['slowdown_guard']:g}"
    return label


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


def classify(model, tokenizer, inputs, patience=None, batch_size=32, max_length=None, exit_confidence=None,
             max_exit_layer=None, slowdown_guard=None, exit_criterion=None, exit_threshold=None):
    """
    The model's `Answer` for each (text, text_b or None) of `inputs`, in order, run `batch_size` at a time. `model`
    and `tokenizer` are what `load_any_model` gives: a PABEE model and its transformers tokenizer, or an
    `ExportedModel` (which has no slowdown guard) and its `tokenizers` tokenizer. The exit settings are given to the
    model as they are: none of the rule's (None) runs the saved rule, any of them a whole rule (see the module
    docstring). A bad or incomplete setting is an `InputError` that says how to fix it.
    """
    exported = isinstance(model, ExportedModel)
    max_length = max_length or model_max_length(model)
    exit_settings = dict(patience=patience, exit_criterion=exit_criterion, exit_threshold=exit_threshold,
                         exit_confidence=exit_confidence, max_exit_layer=max_exit_layer)
    if exported:
        if (tokenizer.truncation or {}).get("max_length") != max_length:
            tokenizer.enable_truncation(max_length)
    else:
        import torch

        device = next(model.parameters()).device
    answers = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        texts = [text for text, _ in batch]
        texts_b = [text_b for _, text_b in batch]
        texts_b = texts_b if any(text_b is not None for text_b in texts_b) else None
        fired = [None] * len(batch)
        try:  # the models check the exit settings before they run anything, and raise a ValueError on bad ones
            if exported:
                logits, exit_layers = model.runner(*model.runner.encode(tokenizer, texts, texts_b), **exit_settings)
            else:
                encoded = tokenizer(texts, texts_b, padding=True, truncation=True, max_length=max_length,
                                    return_tensors="pt")
                with torch.no_grad():
                    output = model(**encoded.to(device), **exit_settings, slowdown_guard=slowdown_guard)
                logits, exit_layers = output.logits.float().cpu().numpy(), output.exit_layers.cpu().numpy()
                if output.guard_fired is not None:
                    fired = output.guard_fired.tolist()
        except ValueError as error:
            raise InputError(first_line(error))
        if model.config.num_labels == 1:
            values, label_ids = logits[:, 0].tolist(), [None] * len(batch)
        else:
            values, label_ids = softmax(logits).max(axis=-1).tolist(), logits.argmax(axis=-1).tolist()
        answers += [Answer(*fields) for fields in zip(label_ids, values, exit_layers.tolist(), fired)]
    return answers


def softmax(logits):
    """Class probabilities from float32 logits `(batch_size, num_labels)`."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


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


def add_exit_flags(parser, regression_threshold=False):
    """
    The exit flags that pabee.classify, pabee.attack and pabee.serve share, on `parser` (or an argument group), with
    `--regression_threshold` too where asked. Each defaults to None: not given.
    """
    parser.add_argument("--patience", type=int, default=None,
                        help="Patience of the early exit (0: every layer). The exit rule is --patience, "
                             "--exit_criterion, --exit_threshold and --exit_confidence together: any of them given "
                             "make the whole rule, the others taking their defaults (patience 0, criterion patience, "
                             "no threshold, gate 0), never the saved values. Default: with none of them, the rule "
                             "saved with the model (standard error says which).")
    parser.add_argument("--exit_confidence", type=float, default=None,
                        help="Confidence gate on the patience counter: a layer counts toward the patience only if its "
                             "prediction agrees with the previous layer's at a top-class probability of at least "
                             "this (0: plain PABEE; classification only). Goes with --patience.")
    parser.add_argument("--exit_criterion", choices=("patience", "entropy", "confidence"), default=None,
                        help="Exit rule: patience (PABEE), or, with --exit_threshold, entropy (exit when the entropy "
                             "of the class probabilities is below the threshold) or confidence (when the top-class "
                             "probability is above it). Classification only for entropy and confidence.")
    parser.add_argument("--exit_threshold", type=float, default=None,
                        help="Threshold of --exit_criterion entropy (in nats) or confidence (a probability); needs "
                             "--exit_criterion.")
    parser.add_argument("--max_exit_layer", type=int, default=None,
                        help="Slowdown defence: a cap on depth; an input still running at this layer answers with its "
                             "classifier (with --slowdown_guard, only the inputs the guard flags are held to it). "
                             "Default: the one saved with the model (usually none).")
    parser.add_argument("--slowdown_guard", type=float, default=None,
                        help="Slowdown defence: a threshold in [0, 1] on the running uncertainty score of the layers "
                             "run so far; an input whose score passes it is held to --max_exit_layer, or exits at "
                             "once with no cap. Classification only. Default: the one saved with the model (usually "
                             "none; 1 lifts a saved one).")
    if regression_threshold:
        parser.add_argument("--regression_threshold", type=float, default=None,
                            help="Regression: two layers' scores closer than this count as the same prediction. "
                                 "Default: the one saved with the model.")


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
    add_exit_flags(parser)
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
    if args.exit_threshold is not None and not args.exit_threshold >= 0:  # NaN fails
        parser.error(f"--exit_threshold must be >= 0, got {args.exit_threshold}")
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
    given = {name: getattr(args, name) for name in (*RULE_SETTINGS, "max_exit_layer", "slowdown_guard")}
    try:
        inputs = gather_inputs(args)
        if not inputs:
            raise InputError("no input: only blank lines; give one text (or tab-separated pair) per line")
        model, tokenizer = load_any_model(args.model)
        exported = isinstance(model, ExportedModel)
        if exported and args.int8 and model.runner.settings["precision"] != "int8":
            raise InputError(f"--int8: {args.model} was exported in fp32; export an int8 folder with python -m "
                             "pabee.export --int8, or leave out --int8")
        if args.int8 and not exported:
            from .quantization import quantize_int8

            model = quantize_int8(model)
        check_input_kind(inputs, model.config)
        longest = model_max_length(model)
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
        if args.slowdown_guard is not None and exported:
            raise InputError(f"--slowdown_guard runs in the torch model only; {args.model} is an exported folder: "
                             "classify with the model folder it was exported from, or use --max_exit_layer alone")
        if all(given[name] is None for name in RULE_SETTINGS):
            saved = saved_exit_setting(model, args.max_exit_layer, args.slowdown_guard)
            print(f"exit setting saved with the model: {exit_setting_label(saved)} (--patience or --exit_criterion "
                  "chooses another)", file=sys.stderr)
        if not (args.int8 or exported):
            import torch

            if torch.cuda.is_available():
                model = model.cuda()
        answers = classify(model, tokenizer, inputs, batch_size=args.batch_size, max_length=args.max_seq_length,
                           **given)
    except InputError as error:
        raise SystemExit(f"error: {error}") from None
    print(format_answers(model.config, inputs, answers))
    return answers


if __name__ == "__main__":
    main()
