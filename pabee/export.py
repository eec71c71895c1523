"""Export a trained PABEE model to ONNX Runtime, with early exit, as a folder that runs without torch.

    python -m pabee.export --model output/demo --output output/demo-onnx
    python -m pabee.export --model output/demo --output output/demo-onnx-int8 --int8
    python output/demo-onnx/pabee_onnx.py "a gripping, funny film"          # onnxruntime, numpy, tokenizers only
    python -m pabee.classify --model output/demo-onnx "a gripping, funny film"

The folder holds `embeddings.onnx`, one graph per layer (`layer_01.onnx`, ...: the layer and its internal
classifier, returning the layer's hidden states and logits), the exit settings and labels (`pabee_onnx.json`), the
tokenizer (`tokenizer.json` and the files `save_pretrained` writes) and the runner, `pabee_onnx.py`, which applies
the exit rules to each layer's logits in numpy and drops the examples that answered from the batch. `--int8`
quantizes every graph's matrix products with a weight to int8 (pabee/onnx_int8.py): by default each token's
activations get their own scale, so that answers do not depend on the batch.
"""

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import warnings

import torch
from torch import nn

from .classify import EXPORTED_SETTINGS_FILE as SETTINGS_FILE
from .classify import InputError, load_model
from .models import max_model_length, model_family
from .onnx_int8 import ACTIVATION_SCHEMES, quantize_graph

RUNNER_FILE = "pabee_onnx.py"
OPSET = 17


class Embeddings(nn.Module):
    """
    The input of layer 1 from token ids, the attention mask (DeBERTa's embeddings multiply by it; the exporter leaves
    it out of the graph of a family whose embeddings do not read it) and token types (for a model that has several).
    """

    def __init__(self, model, takes_token_types):
        super().__init__()
        self.backbone = model.base_model
        self.takes_token_types = takes_token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        token_type_ids = token_type_ids if self.takes_token_types else None
        return self.backbone.embed(input_ids, token_type_ids, attention_mask=attention_mask)


class LayerWithClassifier(nn.Module):
    """Layer `index` (0-based) and its internal classifier: (hidden states, logits) from the previous hidden states."""

    def __init__(self, model, index):
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, hidden_states, attention_mask):
        backbone = self.model.base_model
        layer_inputs = backbone.layer_inputs(hidden_states, attention_mask)
        hidden_states = backbone.run_layer(self.index, hidden_states, layer_inputs)
        pooling_weights = backbone.pooling_weights(hidden_states, attention_mask)
        return hidden_states, self.model._classify(self.index, hidden_states, pooling_weights)


def takes_token_types(model):
    """
    Whether the model has token types to be given (BERT, ALBERT, ELECTRA, DeBERTa-v2; not RoBERTa's one, nor
    DistilBERT, ModernBERT or DeBERTa-v3).
    """
    return model_family(model.config.model_type) != "distilbert" and getattr(model.config, "type_vocab_size", 0) > 1


def export_graphs(model, folder):
    """Write embeddings.onnx and layer_NN.onnx for `model` (float32, evaluation mode) into `folder`; their names."""
    # A batch of two, one padded, so that the traced graphs keep the attention mask.
    input_ids = torch.full((2, 8), 5, dtype=torch.long)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    token_types = takes_token_types(model)
    dynamic = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values taken as constants (checked by tests)
        # Each wrapper in evaluation mode: the exporter restores a module's mode when it is done, recursively, and a
        # new module is in training mode.
        embeddings = Embeddings(model, token_types).eval()
        embeddings_inputs = (input_ids, attention_mask) + ((torch.zeros_like(input_ids),) if token_types else ())
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
        torch.onnx.export(embeddings, embeddings_inputs, os.path.join(folder, "embeddings.onnx"),
                          input_names=names, output_names=["hidden_states"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={**{name: dynamic for name in names}, "hidden_states": dynamic})
        with torch.no_grad():
            hidden_states = embeddings(*embeddings_inputs)
        layers = []
        for index in range(model.config.num_hidden_layers):
            name = f"layer_{index + 1:02d}.onnx"
            torch.onnx.export(LayerWithClassifier(model, index).eval(), (hidden_states, attention_mask),
                              os.path.join(folder, name), input_names=["hidden_states", "attention_mask"],
                              output_names=["hidden_states_out", "logits"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"hidden_states": dynamic, "attention_mask": dynamic,
                                            "hidden_states_out": dynamic, "logits": {0: "batch"}})
            layers.append(name)
    return "embeddings.onnx", layers


def export_model(model_path, output, int8=False, overwrite=False, int8_activations="per_token"):
    """
    Export the trained PABEE model in folder `model_path` to folder `output` (see the module docstring). Raises a
    `ValueError` (one line) for a folder that is not a PABEE model, an exported folder, or a non-empty `output`
    without `overwrite`. The folder is written under a temporary name and renamed when complete.
    """
    if os.path.isfile(os.path.join(model_path, SETTINGS_FILE)):
        raise ValueError(f"{model_path} is an exported ONNX folder already: export the torch model folder it was "
                         "exported from")
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {output} is a file, not a folder")
    if os.path.isdir(output) and os.listdir(output) and not overwrite:
        raise ValueError(f"--output {output} is not empty: pass --overwrite to replace what it holds")
    if os.path.abspath(output) == os.path.abspath(model_path):
        raise ValueError("--output must be another folder than --model")
    try:
        model, tokenizer = load_model(model_path)
    except InputError as error:
        raise ValueError(str(error)) from None
    if not tokenizer.is_fast:
        raise ValueError(f"the tokenizer in {model_path} has no tokenizer.json (a fast tokenizer), which the runner "
                         "reads with the tokenizers library")
    model = model.cpu().float().eval()
    config = model.config
    if getattr(config, "slowdown_guard", None) is not None:
        raise ValueError(f"the model in {model_path} saves a slowdown_guard, which the exported runner does not run: "
                         "set config.slowdown_guard = None (a max_exit_layer cap alone is exported) and save it again")

    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output))}.partial-", dir=parent)
    try:
        embeddings, layers = export_graphs(model, partial)
        if int8:
            for name in [embeddings] + layers:
                quantize_graph(os.path.join(partial, name), activations=int8_activations)
        tokenizer.save_pretrained(partial)
        config = copy.deepcopy(config)
        config._auto_class = None  # no auto_map: the folder holds no modeling code to trust
        if hasattr(config, "auto_map"):
            del config.auto_map
        config.save_pretrained(partial)  # the labels and settings, for python -m pabee.classify
        settings = {
            "format": "pabee-onnx",
            "family": model_family(config.model_type),
            "precision": "int8" if int8 else "fp32",
            "int8_activations": int8_activations if int8 else None,
            "embeddings": embeddings,
            "layers": layers,
            "num_labels": config.num_labels,
            "id2label": {str(key): value for key, value in (config.id2label or {}).items()
                         if value != f"LABEL_{key}"},
            "finetuning_task": getattr(config, "finetuning_task", None),
            "patience": config.patience,
            "exit_confidence": config.exit_confidence,
            "regression_threshold": config.regression_threshold,
            "exit_criterion": config.exit_criterion,
            "exit_threshold": config.exit_threshold,
            "max_exit_layer": getattr(config, "max_exit_layer", None),  # a depth cap, where the model has one
            "exit_pooling": config.exit_pooling,
            "max_length": max_model_length(config),
            "pad_token_id": tokenizer.pad_token_id,
            "pad_token": tokenizer.pad_token,
            "source": os.path.abspath(model_path),
        }
        with open(os.path.join(partial, SETTINGS_FILE), "w", encoding="utf-8") as file:
            json.dump(settings, file, indent=2)
            file.write("\n")
        shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "onnx_runner.py"),
                        os.path.join(partial, RUNNER_FILE))
        os.chmod(partial, 0o755)
        if os.path.isdir(output):
            shutil.rmtree(output)
        os.replace(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return output


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pabee.export", description=__doc__.split("\n\n")[0])
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")  # one line, without the usage
    parser.add_argument("--model", required=True,
                        help="Folder of a trained PABEE model, as run_glue_with_pabee.py saves it (e.g. output/demo).")
    parser.add_argument("--output", required=True,
                        help="Folder to write the ONNX graphs, settings, tokenizer and runner into (e.g. "
                             "output/demo-onnx).")
    parser.add_argument("--int8", action="store_true",
                        help="Quantize the graphs' matrix products to int8 (7-bit weights, activations quantized at "
                             "each call): faster on a CPU, at a small cost in accuracy.")
    parser.add_argument("--int8_activations", default="per_token", choices=ACTIVATION_SCHEMES,
                        help="With --int8: per_token (default) gives each token its own activation scale, so that "
                             "batched answers equal one-at-a-time answers; per_batch is onnxruntime's dynamic "
                             "quantization, one scale per batch, about 15%% faster on a 2-core AVX2 CPU but an "
                             "answer can move with its batch (see pabee/onnx_int8.py).")
    parser.add_argument("--overwrite", action="store_true", help="Replace what a non-empty --output holds.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if not os.path.isdir(args.model):
            raise ValueError(f"--model {args.model}: no such folder")
        if args.int8_activations != "per_token" and not args.int8:
            raise ValueError("--int8_activations goes with --int8")
        output = export_model(args.model, args.output, int8=args.int8, overwrite=args.overwrite,
                              int8_activations=args.int8_activations)
    except ValueError as error:
        print(f"python -m pabee.export: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"Exported {args.model} ({'int8' if args.int8 else 'fp32'}) to {output}: run it with "
          f"python {os.path.join(output, RUNNER_FILE)} \"a text\" or python -m pabee.classify --model {output}")


if __name__ == "__main__":
    main()
