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
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime

SETTINGS_FILE = "pabee_onnx.json"
EXIT_SETTING_NAMES = ("patience", "exit_confidence", "regression_threshold", "exit_criterion", "exit_threshold",
                      "max_exit_layer")


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
        with open(os.path.join(folder, SETTINGS_FILE), encoding="utf-8") as file:
            self.settings = json.load(file)
        options = onnxruntime.SessionOptions()
        # Without this, the intra-op threads spin after each call and steal the cores from everything else (the
        # tokenizer, the exit rule, the next graph's set-up).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.embeddings = onnxruntime.InferenceSession(os.path.join(folder, self.settings["embeddings"]), options,
                                                       providers=providers)
        self.layers = [onnxruntime.InferenceSession(os.path.join(folder, name), options, providers=providers)
                       for name in self.settings["layers"]]
        self.embeddings_inputs = [i.name for i in self.embeddings.get_inputs()]  # DeBERTa's takes the attention mask
        self.takes_token_types = "token_type_ids" in self.embeddings_inputs

    @property
    def num_layers(self):
        return len(self.layers)

    def exit_settings(self, **overrides):
        """The saved exit settings, with those of `overrides` that are not None in their place."""
        settings = {name: self.settings.get(name) for name in EXIT_SETTING_NAMES}
        settings.update({name: value for name, value in overrides.items() if value is not None})
        return settings

    def __call__(self, input_ids, attention_mask, token_type_ids=None, all_layers=False, **exit_overrides):
        """
        Logits `(batch_size, num_labels)` and 1-based exit layers `(batch_size,)` of int64 arrays `input_ids` and
        `attention_mask` `(batch_size, seq_len)` (and `token_type_ids` for a model that takes them). Exit settings
        (`patience`, `exit_confidence`, ...) given as keywords replace the saved ones for this call.
        `all_layers=True` runs every layer for every example and also returns every classifier's logits
        `(batch_size, num_layers, num_labels)`.
        """
        settings = self.exit_settings(**exit_overrides)
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

        tokenizer = Tokenizer.from_file(os.path.join(self.folder, "tokenizer.json"))
        tokenizer.enable_truncation(max_length or self.settings["max_length"])
        tokenizer.enable_padding(pad_id=self.settings["pad_token_id"], pad_token=self.settings["pad_token"])
        return tokenizer

    def classify_texts(self, texts, texts_b=None, batch_size=32, tokenizer=None, **exit_overrides):
        """Logits and exit layers of each text (or pair, with `texts_b`), run `batch_size` at a time."""
        tokenizer = tokenizer or self.load_tokenizer()
        all_logits, all_exit_layers = [], []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            if texts_b is None:
                encodings = tokenizer.encode_batch(batch)
            else:
                encodings = tokenizer.encode_batch(list(zip(batch, texts_b[start : start + batch_size])))
            logits, exit_layers = self(
                np.array([e.ids for e in encodings], np.int64), np.array([e.attention_mask for e in encodings],
                                                                          np.int64),
                np.array([e.type_ids for e in encodings], np.int64), **exit_overrides,
            )
            all_logits.append(logits)
            all_exit_layers.append(exit_layers)
        return np.concatenate(all_logits), np.concatenate(all_exit_layers)


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
    parser = argparse.ArgumentParser(description="Classify texts with the exported PABEE model beside this file.")
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    parser.add_argument("texts", nargs="*", help="Texts to classify (a pair: two texts joined by a tab). Default: the "
                                                 "lines of --file, else of standard input.")
    parser.add_argument("--model", default=os.path.dirname(os.path.abspath(__file__)),
                        help="The exported folder. Default: the folder of this file.")
    parser.add_argument("--file", help="Read the inputs from this file, one per line.")
    parser.add_argument("--patience", type=int, help="Patience (0: every layer). Default: the saved one.")
    parser.add_argument("--exit_confidence", type=float, help="Confidence gate on the patience counter (0: plain "
                                                              "PABEE). Default: the saved one.")
    parser.add_argument("--batch_size", type=int, default=32, help="Inputs run together (same answers at any size).")
    return parser


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.patience is not None and args.patience < 0:
        parser.error(f"--patience must be >= 0, got {args.patience}")
    if args.exit_confidence is not None and not 0 <= args.exit_confidence <= 1:
        parser.error(f"--exit_confidence must be in [0, 1], got {args.exit_confidence}")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if not os.path.isfile(os.path.join(args.model, SETTINGS_FILE)):
        parser.error(f"{args.model} holds no {SETTINGS_FILE}: not a folder that python -m pabee.export wrote")
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
    pairs = [line.split("\t") for line in lines]
    if any(len(pair) > 2 for pair in pairs) or len({len(pair) for pair in pairs}) > 1:
        parser.error("give one text per line, or two tab-separated texts on every line")
    texts = [pair[0] for pair in pairs]
    texts_b = [pair[1] for pair in pairs] if len(pairs[0]) == 2 else None
    model = PabeeOnnxModel(args.model)
    logits, exit_layers = model.classify_texts(texts, texts_b, args.batch_size, patience=args.patience,
                                               exit_confidence=args.exit_confidence)
    print(format_answers(model.settings, texts, texts_b, logits, exit_layers))


if __name__ == "__main__":
    main()
