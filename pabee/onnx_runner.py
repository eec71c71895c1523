"""Patience-based early exit on ONNX Runtime, for a folder that `python -m pabee.export` wrote.

This file is copied into every exported folder (as `pabee_onnx.py`) and needs only numpy, onnxruntime and the
`tokenizers` library: no torch, no transformers, no PABEE repository.

    python output/demo-onnx/pabee_onnx.py "a gripping, funny film" "dull and far too long"
    python output/demo-onnx/pabee_onnx.py --patience 3 --file reviews.txt   # one text (or tab-separated pair) a line

    from pabee_onnx import PabeeOnnxModel
    model = PabeeOnnxModel("output/demo-onnx")
    logits, exit_layers = model.classify_texts(["a gripping, funny film"])

The folder holds one graph for the embeddings (`embeddings.onnx`) and one per layer (`layer_01.onnx`, ...), each of
which runs its layer and its internal classifier and returns the layer's hidden states and logits. The loop below
runs the layers one by one on a batch, applies the exit rule to each layer's logits (`exits_at_layer`) and drops
the examples that answered from the batch, as the torch model does, so any batch size gives the answers of one input
at a time. The settings (patience, gate, criterion, thresholds, labels) are read from `pabee_onnx.json`.

The exit rule is patience, exit_criterion, exit_threshold and exit_confidence together. Where a call (or the command
line) gives none of them, the rule saved with the model answers; where it gives any, they are the whole rule and the
others take their defaults (patience 0, criterion "patience", no threshold, gate 0), never the saved values: patience
3 alone is plain PABEE at patience 3 whatever the folder saved. exit_threshold needs exit_criterion ("entropy" or
"confidence") beside it, and exit_confidence needs patience. regression_threshold and the depth cap max_exit_layer
keep their saved values unless given. A folder with a missing or unreadable file is refused when it is opened, with
an `ExportedFolderError` that names the file.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime

SETTINGS_FILE = "pabee_onnx.json"
TOKENIZER_FILE = "tokenizer.json"
# The exit rule: given for a call, these replace the saved rule as a whole, with RULE_DEFAULTS for those left out.
RULE_DEFAULTS = {"patience": 0, "exit_criterion": "patience", "exit_threshold": None, "exit_confidence": 0.0}
# Settings that are not the rule: each keeps its saved value unless given.
OTHER_EXIT_SETTINGS = ("regression_threshold", "max_exit_layer")
EXIT_SETTING_NAMES = (*RULE_DEFAULTS, *OTHER_EXIT_SETTINGS)
EXIT_CRITERIA = ("patience", "entropy", "confidence")
# What the runner reads from the settings file (max_exit_layer, where missing, is no cap)
REQUIRED_SETTINGS = ("embeddings", "layers", "num_labels", "id2label", "max_length", "pad_token_id", "pad_token",
                     "precision", "patience", "exit_criterion", "exit_threshold", "exit_confidence",
                     "regression_threshold")


class ExportedFolderError(ValueError):
    """A folder that is not a whole export: a file is missing or unreadable (the message names it)."""


def exit_settings_for_call(saved, **given):
    """
    The exit settings a call runs with (the keyword arguments of `exits_at_layer`), from the `saved` settings (the
    settings file's, with `num_labels` and `layers`) and the settings `given` for the call (None: not given). See the
    module docstring for the rule; raises a `ValueError` that says how to fix a bad or incomplete setting.
    """
    unknown = sorted(set(given) - set(EXIT_SETTING_NAMES))
    if unknown:
        raise TypeError(f"unknown exit settings {', '.join(unknown)}; the exit settings are "
                        f"{', '.join(EXIT_SETTING_NAMES)}")
    given = {name: value for name, value in given.items() if value is not None}
    rule = {name: given[name] for name in RULE_DEFAULTS if name in given}
    if not rule:
        rule = {name: saved[name] for name in RULE_DEFAULTS}
    elif "exit_threshold" in rule and "exit_criterion" not in rule:
        raise ValueError(f"exit_threshold {rule['exit_threshold']!r} was given without exit_criterion: name the "
                         "criterion it is a threshold of ('entropy' or 'confidence') with it")
    elif "exit_confidence" in rule and "patience" not in rule:
        raise ValueError(f"exit_confidence {rule['exit_confidence']!r} gates the patience rule: give patience with it")
    else:
        rule = {**RULE_DEFAULTS, **rule}
    settings = {**rule, **{name: given.get(name, saved.get(name)) for name in OTHER_EXIT_SETTINGS}}
    check_exit_settings(settings, saved["num_labels"], len(saved["layers"]))
    return settings


def check_exit_settings(settings, num_labels, num_layers):
    """Raise a `ValueError` that says how to fix a bad exit setting (the modeling file's checks of the same)."""
    patience, criterion, threshold = settings["patience"], settings["exit_criterion"], settings["exit_threshold"]
    gate, cap = settings["exit_confidence"], settings["max_exit_layer"]
    if not is_non_negative_integer(patience):
        raise ValueError(f"patience must be an integer >= 0 (0 disables early exit), got {patience!r}")
    if not is_non_negative_number(settings["regression_threshold"]):
        raise ValueError(f"regression_threshold must be a number >= 0, got {settings['regression_threshold']!r}")
    if not is_non_negative_number(gate) or gate > 1:
        raise ValueError(f"exit_confidence must be a probability in [0, 1] (0: plain PABEE), got {gate!r}")
    if gate > 0 and num_labels == 1:
        raise ValueError("exit_confidence gates patience on class probabilities, which regression (num_labels=1) "
                         f"has not: set it to 0, got {gate!r}")
    if cap is not None and (not is_non_negative_integer(cap) or not 1 <= cap <= num_layers):
        raise ValueError(f"max_exit_layer must be a layer in 1..{num_layers} (None: no cap), got {cap!r}")
    if criterion not in EXIT_CRITERIA:
        raise ValueError(f"exit_criterion must be one of {', '.join(EXIT_CRITERIA)}, got {criterion!r}")
    if criterion == "patience":
        return
    if num_labels == 1:
        raise ValueError(f"regression (num_labels=1) exits by patience only, not by {criterion!r}")
    if not is_non_negative_number(threshold) or (criterion == "confidence" and threshold > 1):
        allowed = "a probability in [0, 1]" if criterion == "confidence" else "a number >= 0 (nats)"
        raise ValueError(f"exit_threshold of the {criterion} criterion must be {allowed}, got {threshold!r}")


def is_non_negative_number(value):
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.number)) and value >= 0


def is_non_negative_integer(value):
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer)) and value >= 0


def read_settings(folder):
    """The settings file of exported folder `folder`; an `ExportedFolderError` where it is missing or incomplete."""
    path = os.path.join(folder, SETTINGS_FILE)
    if not os.path.isfile(path):
        raise ExportedFolderError(f"{folder} holds no {SETTINGS_FILE}: not a folder that python -m pabee.export "
                                  "wrote, or an incomplete one (export the model again)")
    try:
        with open(path, encoding="utf-8") as file:
            settings = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportedFolderError(f"cannot read {path} ({error}): export the model again")
    if not isinstance(settings, dict):
        raise ExportedFolderError(f"{path} holds no settings object: export the model again")
    missing = [name for name in REQUIRED_SETTINGS if name not in settings]
    if missing:
        raise ExportedFolderError(f"{path} lacks {', '.join(missing)}: export the model again")
    if not isinstance(settings["layers"], list) or not settings["layers"]:
        raise ExportedFolderError(f"{path} lists no layer graphs: export the model again")
    try:
        check_exit_settings({name: settings.get(name) for name in EXIT_SETTING_NAMES}, settings["num_labels"],
                            len(settings["layers"]))
    except ValueError as error:
        raise ExportedFolderError(f"{path} saves a bad exit setting: {error}")
    return settings


def softmax(logits):
    """Class probabilities from logits `(batch_size, num_labels)`, in float32 as the torch model computes them."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def exits_at_layer(logits, previous_predictions, counters, layer, num_layers, patience=0, exit_confidence=0.0,
                   regression_threshold=0.1, exit_criterion="patience", exit_threshold=None, max_exit_layer=None):
    """
    The exit rule, for the running examples after layer `layer` (1-based) of `num_layers`, from that layer's logits
    `(batch_size, num_labels)` (a single logit: regression), and what the previous layer's call returned for the same
    examples (`previous_predictions` and `counters`: None at layer 1). Returns (a boolean array: which examples
    answer with these logits now; this layer's predictions; the patience counters, None for the other criteria).

    - "patience" (PABEE): a counter per example counts how many layers in a row its prediction (the argmax, or for
      regression the score) stayed the same as the previous layer's; a score counts as the same when it moved by
      less than `regression_threshold` (strictly). With the gate `exit_confidence` > 0, an unchanged prediction
      counts only where its top-class probability is at least the gate; otherwise the counter resets. An example
      exits when its counter reaches `patience` (0: never early).
    - "entropy": exits when the entropy of the class probabilities (nats) is below `exit_threshold`.
    - "confidence": exits when the top-class probability is above `exit_threshold`.
    Every example still running at the last layer, or at the depth cap `max_exit_layer` (None: no cap), answers
    there.
    """
    batch_size = len(logits)
    regression = logits.shape[-1] == 1
    predictions = logits[:, 0] if regression else logits.argmax(axis=-1)
    if exit_criterion == "patience":
        if previous_predictions is None:
            counters = np.zeros(batch_size, dtype=np.int64)
        else:
            if regression:
                unchanged = np.abs(predictions - previous_predictions) < np.float32(regression_threshold)
            else:
                unchanged = predictions == previous_predictions
            if exit_confidence:
                unchanged &= softmax(logits).max(axis=-1) >= np.float32(exit_confidence)
            counters = np.where(unchanged, counters + 1, 0)
        done = counters == patience if patience > 0 else np.zeros(batch_size, dtype=bool)
    elif exit_criterion == "entropy":
        probabilities = softmax(logits)
        entropy = -(probabilities * np.log(np.where(probabilities > 0, probabilities, 1))).sum(axis=-1)
        done = entropy < np.float32(exit_threshold)
    elif exit_criterion == "confidence":
        done = softmax(logits).max(axis=-1) > np.float32(exit_threshold)
    else:
        raise ValueError(f"exit_criterion must be patience, entropy or confidence, got {exit_criterion!r}")
    if layer >= min(num_layers, max_exit_layer or num_layers):
        done = np.ones(batch_size, dtype=bool)
    return done, predictions, counters


def exit_layers_from_logits(all_layer_logits, **exit_settings):
    """
    The 1-based exit layer of each example from every layer's logits `(batch_size, num_layers, num_labels)`, by the
    same loop as `PabeeOnnxModel` runs (the batch shrinking as examples answer): to check the rule against others.
    """
    batch_size, num_layers, _ = all_layer_logits.shape
    exit_layers = np.zeros(batch_size, np.int64)
    active = np.arange(batch_size)
    predictions = counters = None
    for layer in range(1, num_layers + 1):
        done, predictions, counters = exits_at_layer(all_layer_logits[active, layer - 1], predictions, counters, layer,
                                                     num_layers, **exit_settings)
        exit_layers[active[done]] = layer
        running = ~done
        active, predictions = active[running], predictions[running]
        counters = None if counters is None else counters[running]
        if not len(active):
            break
    return exit_layers


class PabeeOnnxModel:
    """The exported model: `model(input_ids, attention_mask)` gives each example's logits and 1-based exit layer."""

    def __init__(self, folder, threads=None):
        self.folder = folder
        self.settings = read_settings(folder)
        options = onnxruntime.SessionOptions()
        # Without this, the intra-op threads spin after each call and steal the cores from everything else (the
        # tokenizer, the exit rule, the next graph's set-up).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.embeddings = self.open_graph(self.settings["embeddings"], options)
        self.layers = [self.open_graph(name, options) for name in self.settings["layers"]]
        self.embeddings_inputs = [i.name for i in self.embeddings.get_inputs()]  # DeBERTa's takes the attention mask
        self.takes_token_types = "token_type_ids" in self.embeddings_inputs

    def open_graph(self, name, options):
        path = os.path.join(self.folder, name)
        if not os.path.isfile(path):
            raise ExportedFolderError(f"{self.folder} lacks {name}, which {SETTINGS_FILE} lists: the export is "
                                      "incomplete (export the model again)")
        try:
            return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from Exception alone
            raise ExportedFolderError(f"cannot load {path}, a damaged graph ({first_line(error)}): export the model "
                                      "again")

    @property
    def num_layers(self):
        return len(self.layers)

    def exit_settings(self, **given):
        """The exit settings a call with the settings `given` runs with (see `exit_settings_for_call`)."""
        return exit_settings_for_call(self.settings, **given)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, all_layers=False, **exit_settings):
        """
        Logits `(batch_size, num_labels)` and 1-based exit layers `(batch_size,)` of int64 arrays `input_ids` and
        `attention_mask` `(batch_size, seq_len)` (and `token_type_ids` for a model that takes them). Exit settings
        (`patience`, `exit_confidence`, ...) given as keywords apply to this call (see `exit_settings_for_call`).
        `all_layers=True` runs every layer for every example and also returns every classifier's logits
        `(batch_size, num_layers, num_labels)`.
        """
        settings = self.exit_settings(**exit_settings)
        input_ids, attention_mask = np.asarray(input_ids, np.int64), np.asarray(attention_mask, np.int64)
        length = longest_length(attention_mask)  # trailing padding no example attends to is dropped
        attention_mask = attention_mask[:, :length]
        inputs = {"input_ids": input_ids[:, :length], "attention_mask": attention_mask}
        if self.takes_token_types:
            inputs["token_type_ids"] = (np.zeros_like(input_ids) if token_type_ids is None
                                        else np.asarray(token_type_ids, np.int64))[:, :length]
        feeds = {name: inputs[name] for name in self.embeddings_inputs}
        (hidden_states,) = self.embeddings.run(None, feeds)  # (batch, seq, hidden)

        batch_size = len(input_ids)
        logits_out = np.zeros((batch_size, self.settings["num_labels"]), np.float32)
        exit_layers = np.zeros(batch_size, np.int64)
        every_layer = [] if all_layers else None
        active = np.arange(batch_size)  # positions in the batch of the running examples
        predictions = counters = None
        for layer, session in enumerate(self.layers, start=1):
            hidden_states, logits = session.run(None, {"hidden_states": hidden_states,
                                                       "attention_mask": attention_mask})
            if all_layers:
                every_layer.append(logits)
                continue
            done, predictions, counters = exits_at_layer(logits, predictions, counters, layer, self.num_layers,
                                                         **settings)
            if not done.any():
                continue
            logits_out[active[done]], exit_layers[active[done]] = logits[done], layer
            if done.all():
                break
            running = ~done
            active, predictions = active[running], predictions[running]
            counters = None if counters is None else counters[running]  # no counters but for patience
            attention_mask = attention_mask[running]
            length = longest_length(attention_mask)
            hidden_states, attention_mask = hidden_states[running, :length], attention_mask[:, :length]
        if all_layers:
            all_layer_logits = np.stack(every_layer, axis=1)  # (batch, layers, labels)
            return all_layer_logits[:, -1], np.full(batch_size, self.num_layers, np.int64), all_layer_logits
        return logits_out, exit_layers

    def load_tokenizer(self, max_length=None):
        """The model's tokenizer (the `tokenizers` library), padding each batch to its longest input."""
        from tokenizers import Tokenizer

        path = os.path.join(self.folder, TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise ExportedFolderError(f"{self.folder} lacks its tokenizer, {TOKENIZER_FILE}: export the model again")
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as error:  # the tokenizers library raises plain Exceptions
            raise ExportedFolderError(f"cannot load the tokenizer {path} ({first_line(error)}): export the model "
                                      "again")
        tokenizer.enable_truncation(max_length or self.settings["max_length"])
        tokenizer.enable_padding(pad_id=self.settings["pad_token_id"], pad_token=self.settings["pad_token"])
        return tokenizer

    @staticmethod
    def encode(tokenizer, texts, texts_b=None):
        """Token ids, attention mask and token types `(len(texts), longest)` of texts (or pairs, with `texts_b`)."""
        encodings = tokenizer.encode_batch(list(texts) if texts_b is None else list(zip(texts, texts_b)))
        return tuple(np.array([getattr(e, field) for e in encodings], np.int64)
                     for field in ("ids", "attention_mask", "type_ids"))

    def classify_texts(self, texts, texts_b=None, batch_size=32, tokenizer=None, **exit_settings):
        """Logits and exit layers of each text (or pair, with `texts_b`), run `batch_size` at a time."""
        tokenizer = tokenizer or self.load_tokenizer()
        all_logits, all_exit_layers = [], []
        for start in range(0, len(texts), batch_size):
            end = start + batch_size
            encoded = self.encode(tokenizer, texts[start:end], None if texts_b is None else texts_b[start:end])
            logits, exit_layers = self(*encoded, **exit_settings)
            all_logits.append(logits)
            all_exit_layers.append(exit_layers)
        return np.concatenate(all_logits), np.concatenate(all_exit_layers)


def first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def longest_length(attention_mask):
    """The length that keeps every attended position of the batch (at least 1)."""
    attended = np.flatnonzero(attention_mask.any(axis=0))
    return int(attended[-1]) + 1 if len(attended) else 1


def format_answers(settings, texts, texts_b, logits, exit_layers):
    """One tab-separated line per input after a header, as `python -m pabee.classify` prints them."""
    num_layers = len(settings["layers"])
    if settings["num_labels"] == 1:
        lines = ["score\texit layer\tinput"]
        for index, text in enumerate(texts):
            shown = text if texts_b is None else f"{text}\t{texts_b[index]}"
            lines.append(f"{logits[index, 0]:.3f}\t{exit_layers[index]}/{num_layers}\t{shown}")
        return "\n".join(lines)
    probabilities = softmax(logits)
    lines = ["label\tprobability\texit layer\tinput"]
    for index, text in enumerate(texts):
        label_id = int(probabilities[index].argmax())
        name = settings["id2label"].get(str(label_id), str(label_id))
        shown = text if texts_b is None else f"{text}\t{texts_b[index]}"
        lines.append(f"{name}\t{probabilities[index, label_id]:.3f}\t{exit_layers[index]}/{num_layers}\t{shown}")
    return "\n".join(lines)


def make_parser():
    """The command line of this runner (`python pabee_onnx.py --help`)."""
    parser = argparse.ArgumentParser(
        description="Classify texts with the exported PABEE model beside this file. The exit rule is --patience, "
                    "--exit_criterion, --exit_threshold and --exit_confidence together: with none of them the rule "
                    "saved with the model answers; any of them given make the whole rule, the others taking their "
                    "defaults (patience 0, criterion patience, no threshold, gate 0), so --patience 0 runs every "
                    "layer whatever the folder saved.")
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    parser.add_argument("texts", nargs="*", help="Texts to classify (a pair: two texts joined by a tab). Default: the "
                                                 "lines of --file, else of standard input.")
    parser.add_argument("--model", default=os.path.dirname(os.path.abspath(__file__)),
                        help="The exported folder. Default: the folder of this file.")
    parser.add_argument("--file", help="Read the inputs from this file, one per line.")
    parser.add_argument("--patience", type=int, help="Patience (0: every layer). Default: the saved rule.")
    parser.add_argument("--exit_confidence", type=float, help="Confidence gate on the patience counter (0: plain "
                                                              "PABEE); goes with --patience. Default: the saved rule.")
    parser.add_argument("--exit_criterion", choices=EXIT_CRITERIA,
                        help="Exit rule: patience, or entropy or confidence with --exit_threshold. Default: the "
                             "saved rule.")
    parser.add_argument("--exit_threshold", type=float,
                        help="Threshold of --exit_criterion entropy (exit below it, in nats) or confidence (exit "
                             "above it).")
    parser.add_argument("--batch_size", type=int, default=32, help="Inputs run together (same answers at any size).")
    return parser


def read_lines(args, parser):
    """The non-blank input lines, from the arguments, --file or standard input."""
    if args.texts:
        lines = args.texts
    elif args.file:
        try:
            with open(args.file, encoding="utf-8") as source:
                lines = [line.rstrip("\r\n") for line in source]
        except (OSError, UnicodeDecodeError) as error:
            parser.error(f"cannot read --file {args.file}: {error}")
    elif sys.stdin.isatty():
        parser.error("no input: give texts as arguments, --file, or lines on standard input")
    else:
        lines = [line.rstrip("\r\n") for line in sys.stdin]
    lines = [line for line in lines if line.strip()]
    if not lines:
        parser.error("no input")
    return lines


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.patience is not None and args.patience < 0:
        parser.error(f"--patience must be >= 0, got {args.patience}")
    if args.exit_confidence is not None and not 0 <= args.exit_confidence <= 1:
        parser.error(f"--exit_confidence must be in [0, 1], got {args.exit_confidence}")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    given = {name: getattr(args, name) for name in ("patience", "exit_criterion", "exit_threshold", "exit_confidence")}
    lines = read_lines(args, parser)
    pairs = [line.split("\t") for line in lines]
    if any(len(pair) > 2 for pair in pairs) or len({len(pair) for pair in pairs}) > 1:
        parser.error("give one text per line, or two tab-separated texts on every line")
    texts = [pair[0] for pair in pairs]
    texts_b = [pair[1] for pair in pairs] if len(pairs[0]) == 2 else None
    try:
        model = PabeeOnnxModel(args.model)
        tokenizer = model.load_tokenizer()
        model.exit_settings(**given)  # a bad or incomplete rule is reported before anything runs
    except ValueError as error:  # ExportedFolderError included
        parser.error(str(error))
    logits, exit_layers = model.classify_texts(texts, texts_b, args.batch_size, tokenizer, **given)
    print(format_answers(model.settings, texts, texts_b, logits, exit_layers))


if __name__ == "__main__":
    main()
