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
"""Patience-based Early Exit (PABEE, "BERT Loses Patience", arXiv 2006.04152) for any transformers encoder.

This module holds what every backbone family shares; a family's file (modeling_pabee_bert.py, ...) holds only its
config class, its backbone adapter and the few lines that declare its classifier. One internal classifier per layer
reads the pooled output of that layer. In training every layer runs and the loss is the average of the per-layer
losses weighted 1..L. In evaluation each example stops as soon as its prediction has stayed the same `patience` times
in a row; examples leave the batch one by one, so any batch size gives the answers of running each example alone.

To use the classes in your own project, copy this file and the family file you need: they need only torch and
transformers. `save_pretrained` copies both beside the weights (with an `auto_map` in config.json), so that a saved
model loads anywhere with `AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`.

A family gives three classes:
- its config: `class PabeeFooConfig(PabeeConfigMixin, FooConfig)` with `model_type = "pabee_foo"`;
- its backbone adapter: `class FooModelWithPabee(PabeeBackboneMixin, FooModel)`, which runs the backbone one layer at a
  time (see `PabeeBackboneMixin` for what it must give);
- its classifier: `class FooForSequenceClassificationWithPabee(PabeeForSequenceClassificationMixin,
  FooPreTrainedModel)` naming `config_class` and `backbone_class`.
"""

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import ModelOutput

PABEE_DEFAULTS = {
    "patience": 0,
    "regression_threshold": 0.1,
    "exit_pooling": "pooler",
    "exit_criterion": "patience",
    "exit_threshold": None,
    "layer_loss_weights": "linear",
    "exit_confidence": 0.0,
    "self_distillation_weight": 0.0,
    "self_distillation_temperature": 1.0,
    "gradient_equilibrium": False,
    "max_exit_layer": None,
    "slowdown_guard": None,
}
EXIT_POOLINGS = ("pooler", "mean")
EXIT_CRITERIA = ("patience", "entropy", "confidence")
LAYER_LOSS_WEIGHTS = ("linear", "uniform", "last")


@dataclasses.dataclass(kw_only=True, repr=False, eq=False)
class PabeeConfigMixin:
    """
    The early-exit settings that a family's PABEE config adds to its backbone's config, saved with the model:
    `class PabeeBertConfig(PabeeConfigMixin, BertConfig)`, with `model_type = "pabee_bert"`. Its own `model_type`
    keeps transformers from loading a saved PABEE model into its plain `...ForSequenceClassification` (which would drop
    the internal classifiers and answer with a new, random one): without `trust_remote_code=True` the Auto classes
    refuse the folder and say to pass it, unless the class is registered with them (`import pabee` does it).
    A plain backbone config (a pretrained backbone, or a checkpoint of the reference implementation) loads as the
    family's PABEE config, with the settings it lacks at their defaults.

    Args:
        patience (`int`, defaults to 0):
            Evaluation exits an example once its prediction has stayed the same this many times in a row; 0 runs every
            layer.
        regression_threshold (`float`, defaults to 0.1):
            Regression (`num_labels == 1`): two layers' scores closer than this (strictly) count as the same
            prediction.
        exit_pooling (`str`, defaults to "pooler"):
            What the internal classifiers read: "pooler" (the family's pooler, as in the paper: see its backbone
            adapter) or "mean" (the mean of the layer's hidden states over the real tokens).
        exit_criterion (`str`, defaults to "patience"):
            "patience" (PABEE), or, to compare it with other exit rules on the same model, "entropy" or "confidence".
        exit_threshold (`float`, optional):
            The threshold of the "entropy" (nats) or "confidence" (probability) criterion.
        layer_loss_weights (`str`, defaults to "linear"):
            Training loss weights of layers 1..L: "linear" (1..L, the paper's), "uniform", or "last" (plain
            fine-tuning).
        exit_confidence (`float`, defaults to 0.0):
            A gate on the patience counter: an unchanged prediction counts only where its top-class probability is
            at least this; 0 is plain PABEE. Classification only.
        self_distillation_weight (`float`, defaults to 0.0):
            Training: weight of the self-distillation loss of the classifiers below the last (0: off).
        self_distillation_temperature (`float`, defaults to 1.0):
            Training: the temperature of self-distillation.
        gradient_equilibrium (`bool`, defaults to False):
            Training: rescale the gradient each layer receives from the classifiers (gradient equilibrium).
        max_exit_layer (`int`, optional):
            A cap on depth (1..num_hidden_layers): an example still running at this layer answers with its
            classifier, so no input can cost more layers. With `slowdown_guard` set, only the examples the guard flags
            are held to it. None: no cap.
        slowdown_guard (`float`, optional):
            A threshold in [0, 1] on the running uncertainty score (`uncertainty_scores`, averaged over the layers an
            example has run): an example whose running score passes it (strictly) is held to `max_exit_layer`, or,
            with no cap, exits at once. Classification only. None: off.
    """

    patience: int = PABEE_DEFAULTS["patience"]
    regression_threshold: float | int = PABEE_DEFAULTS["regression_threshold"]
    exit_pooling: str = PABEE_DEFAULTS["exit_pooling"]
    exit_criterion: str = PABEE_DEFAULTS["exit_criterion"]
    exit_threshold: float | int | None = PABEE_DEFAULTS["exit_threshold"]
    layer_loss_weights: str = PABEE_DEFAULTS["layer_loss_weights"]
    exit_confidence: float | int = PABEE_DEFAULTS["exit_confidence"]
    self_distillation_weight: float | int = PABEE_DEFAULTS["self_distillation_weight"]
    self_distillation_temperature: float | int = PABEE_DEFAULTS["self_distillation_temperature"]
    gradient_equilibrium: bool = PABEE_DEFAULTS["gradient_equilibrium"]
    max_exit_layer: int | None = PABEE_DEFAULTS["max_exit_layer"]
    slowdown_guard: float | int | None = PABEE_DEFAULTS["slowdown_guard"]

    @classmethod
    def backbone_model_type(cls):
        """The backbone's `model_type` ("bert" for `PabeeBertConfig`): that of the config class this one extends."""
        return next(base.model_type for base in cls.__mro__[1:]
                    if "model_type" in vars(base) and not issubclass(base, PabeeConfigMixin))

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """The saved config's dict; a plain backbone config's reads as this type (no transformers type warning)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == cls.backbone_model_type():
            config_dict["model_type"] = cls.model_type
        return config_dict, kwargs

    @classmethod
    def from_backbone_config(cls, config):
        """This config with every setting of `config`, a plain backbone config (PABEE settings on it kept)."""
        config_dict = {key: value for key, value in config.to_dict().items() if key != "model_type"}
        return cls(**config_dict, attn_implementation=config._attn_implementation)


@dataclass
class PabeeSequenceClassifierOutput(ModelOutput):
    """
    Output of a sequence classifier with patience-based early exit. The first four fields are transformers'
    `SequenceClassifierOutput`'s, in its order (`return_dict=False` gives the fields that are not None as a tuple, in
    this order).

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `labels` is given):
            Training: the per-layer losses averaged with weights 1..L (plus the self-distillation loss when it is
            on). Evaluation: the loss of the answered logits.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            For each example, the logits of the classifier of the layer it exited at.
        hidden_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`):
            As transformers' backbone returns them: the input of layer 1 (the embeddings), then the output of each
            layer, each `(batch_size, seq_len, hidden_size)`, for every example and every layer. Asking for them runs
            every layer for every example (see `exit_layers` for the layer whose classifier answered).
        attentions (`tuple(torch.FloatTensor)`, returned with `output_attentions=True`):
            As transformers' backbone returns them: each layer's attention probabilities, `(batch_size, num_heads,
            seq_len, seq_len)`, for every example and every layer. Needs the "eager" attention implementation.
        exit_layers (`torch.LongTensor` of shape `(batch_size,)`):
            For each example, the 1-based index of the layer whose classifier answered.
        all_layer_logits (`torch.FloatTensor` of shape `(batch_size, num_layers, num_labels)`, optional):
            Every classifier's logits for every example, returned with `output_all_layer_logits=True`.
        guard_fired (`torch.BoolTensor` of shape `(batch_size,)`, returned when `slowdown_guard` is set):
            For each example, whether its running uncertainty score passed the slowdown guard at a layer it ran.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    exit_layers: torch.LongTensor | None = None
    all_layer_logits: torch.FloatTensor | None = None
    guard_fired: torch.BoolTensor | None = None


def check_pabee_settings(
    patience,
    regression_threshold,
    exit_pooling="pooler",
    exit_criterion="patience",
    exit_threshold=None,
    layer_loss_weights="linear",
    num_labels=None,
    exit_confidence=0.0,
    self_distillation_weight=0.0,
    self_distillation_temperature=1.0,
    gradient_equilibrium=False,
    max_exit_layer=None,
    slowdown_guard=None,
    num_layers=None,
):
    """Raise a `ValueError` that says how to fix a bad early-exit or training setting."""
    if max_exit_layer is not None and (
        not is_non_negative_integer(max_exit_layer) or max_exit_layer == 0
        or (num_layers is not None and max_exit_layer > num_layers)
    ):
        layers = f"1..{num_layers}" if num_layers is not None else "an integer >= 1"
        raise ValueError(f"max_exit_layer must be a layer in {layers} (None: no cap), got {max_exit_layer!r}")
    if slowdown_guard is not None:
        if not is_non_negative_number(slowdown_guard) or slowdown_guard > 1:
            raise ValueError(f"slowdown_guard must be a score in [0, 1] (None: off), got {slowdown_guard!r}")
        if num_labels == 1:
            raise ValueError("slowdown_guard reads class probabilities, which regression (num_labels=1) has not: "
                             f"set it to None, got {slowdown_guard!r}")
    if not is_non_negative_integer(patience):
        raise ValueError(f"patience must be an integer >= 0 (0 disables early exit), got {patience!r}")
    if not is_non_negative_number(regression_threshold):
        raise ValueError(f"regression_threshold must be a number >= 0, got {regression_threshold!r}")
    if not is_non_negative_number(exit_confidence) or exit_confidence > 1:
        raise ValueError(f"exit_confidence must be a probability in [0, 1] (0: plain PABEE), got {exit_confidence!r}")
    if exit_confidence > 0 and num_labels == 1:
        raise ValueError("exit_confidence gates patience on class probabilities, which regression (num_labels=1) "
                         f"has not: set it to 0, got {exit_confidence!r}")
    if not is_non_negative_number(self_distillation_weight):
        raise ValueError(f"self_distillation_weight must be a number >= 0 (0: off), got {self_distillation_weight!r}")
    if not is_non_negative_number(self_distillation_temperature) or self_distillation_temperature == 0:
        raise ValueError(f"self_distillation_temperature must be a number > 0, got {self_distillation_temperature!r}")
    if not isinstance(gradient_equilibrium, bool):
        raise ValueError(f"gradient_equilibrium must be True or False, got {gradient_equilibrium!r}")
    if exit_pooling not in EXIT_POOLINGS:
        raise ValueError(f"exit_pooling must be one of {', '.join(EXIT_POOLINGS)}, got {exit_pooling!r}")
    if layer_loss_weights not in LAYER_LOSS_WEIGHTS:
        raise ValueError(
            f"layer_loss_weights must be one of {', '.join(LAYER_LOSS_WEIGHTS)}, got {layer_loss_weights!r}"
        )
    if exit_criterion not in EXIT_CRITERIA:
        raise ValueError(f"exit_criterion must be one of {', '.join(EXIT_CRITERIA)}, got {exit_criterion!r}")
    if exit_criterion == "patience":
        return
    if num_labels == 1:
        raise ValueError(f"regression (num_labels=1) exits by patience only, not by {exit_criterion!r}")
    if not is_non_negative_number(exit_threshold) or (exit_criterion == "confidence" and exit_threshold > 1):
        allowed = "a probability in [0, 1]" if exit_criterion == "confidence" else "a number >= 0 (nats)"
        raise ValueError(f"exit_threshold of the {exit_criterion} criterion must be {allowed}, got {exit_threshold!r}")


def is_non_negative_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value >= 0  # NaN fails `>= 0`


def is_non_negative_integer(value):
    """Python, numpy or 0-d torch integers (anything with `__index__`), but not bools."""
    if isinstance(value, bool) or not hasattr(value, "__index__") or getattr(value, "dtype", None) == torch.bool:
        return False
    try:
        return value.__index__() >= 0
    except TypeError:  # e.g. a torch tensor of several values, or of floats
        return False


RULE_SETTINGS = ("patience", "exit_criterion", "exit_threshold", "exit_confidence")


def exit_settings_for_call(config, patience=None, regression_threshold=None, exit_criterion=None, exit_threshold=None,
                           exit_confidence=None, max_exit_layer=None, slowdown_guard=None):
    """
    The exit settings that one call runs with, from the model's `config` and what the call gives (None: not given).
    A rule given for a call is a whole rule: if any of `patience`, `exit_criterion`, `exit_threshold` and
    `exit_confidence` is given, the rule is made of those alone, the others at their defaults (patience 0, the
    patience criterion, no threshold, no gate), never mixed with the saved rule; with none given, the config's rule
    runs. `regression_threshold`, `max_exit_layer` and `slowdown_guard` keep the config's values unless given. Raises
    a `ValueError` for a threshold without its criterion and for a confidence gate without a patience.
    """
    given = {"patience": patience, "exit_criterion": exit_criterion, "exit_threshold": exit_threshold,
             "exit_confidence": exit_confidence}
    given = {name: value for name, value in given.items() if value is not None}
    if "exit_threshold" in given and "exit_criterion" not in given:
        raise ValueError(f"exit_threshold={given['exit_threshold']!r} needs the criterion it is a threshold of: give "
                         "exit_criterion='entropy' or exit_criterion='confidence' with it")
    if "exit_confidence" in given and "patience" not in given:
        raise ValueError(f"exit_confidence={given['exit_confidence']!r} gates the patience counter: give patience "
                         "with it (the saved rule is not mixed with a setting given for one call)")
    saved = {name: getattr(config, name) for name in RULE_SETTINGS}
    rule = {**{name: PABEE_DEFAULTS[name] for name in RULE_SETTINGS}, **given} if given else saved
    return {
        **rule,
        "regression_threshold": config.regression_threshold if regression_threshold is None else regression_threshold,
        "max_exit_layer": config.max_exit_layer if max_exit_layer is None else max_exit_layer,
        "slowdown_guard": config.slowdown_guard if slowdown_guard is None else slowdown_guard,
    }


def exit_predictions(logits):
    """
    What the patience rule compares from layer to layer, from logits `(..., num_labels)`: the predicted class, or the
    score when there is one logit (regression).
    """
    return logits[..., 0] if logits.shape[-1] == 1 else logits.argmax(dim=-1)


def update_patience_counters(counters, previous_predictions, predictions, regression_threshold, confident=None):
    """
    One step of the patience rule for a batch: `counters[b]` counts how many times in a row example b's prediction
    (see `exit_predictions`) stayed the same. Classes must be equal; a score counts as "the same" when it changed by
    less than `regression_threshold` (strictly). With the confidence gate on (`confident`, see `patience_gate`), an
    unchanged prediction counts only where this layer's classifier is confident enough; otherwise it resets too.
    """
    if predictions.is_floating_point():
        unchanged = (predictions - previous_predictions).abs() < regression_threshold
    else:
        unchanged = predictions == previous_predictions
    if confident is not None:
        unchanged = unchanged & confident
    return (counters + 1).masked_fill_(~unchanged, 0)  # a change (or, gated, a doubt) resets the counter to 0


def patience_gate(logits, exit_confidence):
    """
    The confidence gate on the patience counter, from one layer's logits `(..., num_labels)`: where the top-class
    probability is at least `exit_confidence` (a consecutive-confident-layers idea, after PCEE-BERT). None when the
    gate is off (`exit_confidence` 0, plain PABEE: every probability passes), so that PABEE pays nothing for it.
    Classes only: regression scores have no probability (`check_pabee_settings` refuses a gate on them).
    """
    if not exit_confidence:
        return None
    return logits.float().softmax(dim=-1).amax(dim=-1) >= exit_confidence


def patience_exit_layers(all_layer_logits, patience, regression_threshold, exit_confidence=0.0):
    """
    The exit layer (1-based) that early exit with `patience` (and the confidence gate `exit_confidence`) gives each
    example, from every layer's logits `(batch_size, num_layers, num_labels)`: the first layer at which the counter
    reaches `patience`, else the last.
    """
    batch_size, num_layers, _ = all_layer_logits.shape
    exit_layers = torch.full((batch_size,), num_layers, dtype=torch.long, device=all_layer_logits.device)
    if patience == 0:
        return exit_layers
    counters = torch.zeros(batch_size, dtype=torch.long, device=all_layer_logits.device)
    predictions = exit_predictions(all_layer_logits)  # (batch_size, num_layers)
    confident = patience_gate(all_layer_logits, exit_confidence)  # (batch_size, num_layers) or None
    for layer in range(1, num_layers):
        counters = update_patience_counters(counters, predictions[:, layer - 1], predictions[:, layer],
                                            regression_threshold, None if confident is None else confident[:, layer])
        first_time = (counters == patience) & (exit_layers == num_layers)
        exit_layers[first_time] = layer + 1
    return exit_layers


def confident_exits(logits, exit_criterion, exit_threshold):
    """
    The examples whose classifier is sure enough to answer now, for the criteria compared with patience in the
    early-exit literature: "entropy" (entropy of the predicted distribution below the threshold, in nats; DeeBERT)
    or "confidence" (top-class probability above the threshold).
    """
    probabilities = logits.float().softmax(dim=-1)
    if exit_criterion == "entropy":
        return torch.special.entr(probabilities).sum(dim=-1) < exit_threshold
    return probabilities.max(dim=-1).values > exit_threshold


def simulate_exit_layers(all_layer_logits, patience, regression_threshold, exit_criterion="patience",
                         exit_threshold=None, exit_confidence=0.0, max_exit_layer=None, slowdown_guard=None):
    """
    The exit layer (1-based) of each example under any exit criterion, from every layer's logits: what real early
    exit gives, computed from one full-depth pass, so a whole sweep of settings costs one pass. `max_exit_layer`
    and `slowdown_guard` apply as in the model (see `defended_exit_layers`).
    """
    if exit_criterion == "patience":
        exit_layers = patience_exit_layers(all_layer_logits, patience, regression_threshold, exit_confidence)
    elif all_layer_logits.shape[1] == 1:  # the only layer answers
        exit_layers = torch.ones(all_layer_logits.shape[0], dtype=torch.long, device=all_layer_logits.device)
    else:
        num_layers = all_layer_logits.shape[1]
        exits = confident_exits(all_layer_logits[:, :-1], exit_criterion, exit_threshold)  # (batch, num_layers - 1)
        first_exit = exits.int().argmax(dim=-1) + 1  # argmax returns the first of equal maxima
        exit_layers = torch.where(exits.any(dim=-1), first_exit, torch.full_like(first_exit, num_layers))
    return defended_exit_layers(all_layer_logits, exit_layers, max_exit_layer, slowdown_guard)


def uncertainty_scores(logits):
    """
    The uncertainty score of each classifier, from logits `(..., num_labels)` with at least 2 classes, after WAFFLE
    (Coalson et al., NeurIPS 2023): 1 minus the L1 distance of its softmax from the uniform distribution, normalised
    by the largest distance (a one-hot answer's, 2 (1 - 1/num_labels)). In [0, 1]: 1 for uniform, 0 for certain.
    """
    probabilities = logits.float().softmax(dim=-1)
    num_labels = probabilities.shape[-1]
    distance = (probabilities - 1.0 / num_labels).abs().sum(dim=-1)
    return 1.0 - distance / (2.0 * (1.0 - 1.0 / num_labels))


def guard_flag_layers(all_layer_logits, slowdown_guard):
    """
    The first layer (1-based) at which each example's running uncertainty score (the mean of `uncertainty_scores`
    over layers 1..l) passes `slowdown_guard` (strictly), from every layer's logits; num_layers + 1 where it never
    does. The running sum is taken layer by layer, as early exit takes it.
    """
    batch_size, num_layers, _ = all_layer_logits.shape
    scores = uncertainty_scores(all_layer_logits)  # (batch_size, num_layers)
    flag_layers = torch.full((batch_size,), num_layers + 1, dtype=torch.long, device=all_layer_logits.device)
    score_sums = torch.zeros(batch_size, device=all_layer_logits.device)
    for layer in range(1, num_layers + 1):
        score_sums = score_sums + scores[:, layer - 1]
        first_time = (score_sums / layer > slowdown_guard) & (flag_layers == num_layers + 1)
        flag_layers[first_time] = layer
    return flag_layers


def defended_exit_layers(all_layer_logits, exit_layers, max_exit_layer=None, slowdown_guard=None):
    """
    The exit layers of `exit_layers` (an exit rule's, from every layer's logits `all_layer_logits`) under the slowdown
    defences. With only a cap, every example exits at min(its layer, `max_exit_layer`). With the guard, an example
    flagged at layer f (see `guard_flag_layers`) before its own exit is held to max(f, cap), or exits at f with no
    cap; unflagged examples are not capped.
    """
    num_layers = all_layer_logits.shape[1]
    if slowdown_guard is None:
        return exit_layers if max_exit_layer is None else exit_layers.clamp(max=max_exit_layer)
    flag_layers = guard_flag_layers(all_layer_logits, slowdown_guard)
    held_to = flag_layers if max_exit_layer is None else flag_layers.clamp(min=max_exit_layer)
    return torch.minimum(exit_layers, held_to.clamp(max=num_layers))


def weighted_layer_loss(layer_logits, labels, layer_loss_weights="linear"):
    """
    PABEE's training loss: sum_i w_i * loss_i / sum_i w_i over layers i = 1..L, with w_i = i ("linear", the paper's),
    w_i = 1 ("uniform"), or only the last layer ("last": plain fine-tuning, the baseline early exit is measured
    against); cross-entropy, or MSE when there is one logit.
    """
    num_layers = len(layer_logits)
    total_loss, total_weight = 0.0, 0
    for layer, logits in enumerate(layer_logits, start=1):
        weight = {"linear": layer, "uniform": 1, "last": int(layer == num_layers)}[layer_loss_weights]
        if weight == 0:
            continue
        total_loss = total_loss + weight * sequence_classification_loss(logits, labels)
        total_weight += weight
    return total_loss / total_weight


def self_distillation_loss(layer_logits, temperature):
    """
    Self-distillation of the internal classifiers from the last one, the teacher: the mean over layers i = 1..L-1 of
    T^2 * KL(softmax(z_L / T) || softmax(z_i / T)), averaged over the batch (the T^2 keeps the gradients' size
    independent of the temperature T, as in Hinton et al. 2015), or, with one logit (regression), of the squared error
    (z_i - z_L)^2. The teacher's logits are detached: this loss trains the layers below it, never the teacher.
    """
    *students, teacher = layer_logits
    if not students:  # one layer: nobody to teach
        return teacher.new_zeros(())
    teacher = teacher.detach()
    losses = []
    for logits in students:
        if logits.shape[-1] == 1:
            losses.append(nn.functional.mse_loss(logits, teacher))
        else:
            student_log_probabilities = (logits / temperature).log_softmax(dim=-1)
            teacher_log_probabilities = (teacher / temperature).log_softmax(dim=-1)
            divergence = nn.functional.kl_div(student_log_probabilities, teacher_log_probabilities,
                                              reduction="batchmean", log_target=True)
            losses.append(temperature**2 * divergence)
    return torch.stack(losses).mean()


def sequence_classification_loss(logits, labels):
    """Cross-entropy over `num_labels` classes, or mean squared error when there is a single logit (regression)."""
    if logits.shape[-1] == 1:
        return nn.functional.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
    return nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


class ScaleGradient(torch.autograd.Function):
    """The identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""

    @staticmethod
    def forward(ctx, tensor, scale):
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, gradient):
        return gradient * ctx.scale, None


def move_padding_to_the_right(attention_mask, *token_inputs):
    """
    Left-padded inputs (padding before an example's tokens, as a tokenizer with `padding_side="left"` makes them)
    with the padding moved after the tokens: each example's tokens then sit at the positions, and its first token at
    the place the pooler reads, that they have when it runs alone. `token_inputs` (`(batch_size, seq_len, ...)`
    tensors or None) are reordered the same way; inputs whose first column holds no padding are returned as they are.
    """
    # min rather than all(): half the operators, which count at batch size 1
    if attention_mask is None or not attention_mask.shape[0] or int(attention_mask[:, 0].min()):
        return (attention_mask, *token_inputs)
    order = torch.sort(attention_mask == 0, dim=1, stable=True).indices  # each example's tokens first, in order

    def reorder(tensor):
        if tensor is None:
            return None
        tensor = tensor.expand(attention_mask.shape[0], *tensor.shape[1:])  # position_ids may be (1, seq_len)
        index = order.view(*order.shape, *[1] * (tensor.dim() - 2)).expand_as(tensor)
        return tensor.gather(1, index)

    return (reorder(attention_mask), *[reorder(tensor) for tensor in token_inputs])


def drop_padding_columns(hidden_states, attention_mask):
    """
    Remove trailing sequence positions that no example in the batch attends to. Masked keys get zero attention weight
    and every other operation is per position, so the remaining positions compute exactly what they did before; as
    examples leave the batch the longest remaining one sets the length.
    """
    if attention_mask is None or attention_mask[:, -1].any():  # nothing to drop, as for unpadded inputs
        return hidden_states, attention_mask
    length = int(attention_mask.any(dim=0).nonzero().max()) + 1 if attention_mask.any() else 1
    return hidden_states[:, :length], attention_mask[:, :length]


def mean_pooling_weights(hidden_states, attention_mask):
    """
    `(batch_size, 1, seq_len)` weights, in the dtype of `hidden_states`, whose product with a layer's hidden states
    `(batch_size, seq_len, hidden_size)` is their mean over the positions where `attention_mask` is 1 (all positions
    without a mask).
    """
    batch_size, seq_len = hidden_states.shape[:2]
    if attention_mask is None:
        return hidden_states.new_full((batch_size, 1, seq_len), 1.0 / seq_len)
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(1)
    return weights / weights.sum(dim=-1, keepdim=True).clamp(min=1.0)


class PabeeBackboneMixin:
    """
    What early exit needs of a backbone, beside the transformers base model it extends
    (`class BertModelWithPabee(PabeeBackboneMixin, BertModel)`, whose `forward` stays `BertModel`'s). A family gives:
    - `embed(input_ids, token_type_ids, position_ids, inputs_embeds, attention_mask)`: the input of layer 1,
      `(batch_size, seq_len, hidden_size)`;
    - `run_layer(index, hidden_states, layer_inputs)`: layer `index` (0-based);
    - `pool_first_token(hidden_states)` where `exit_pooling="pooler"` reads a pooler (by default the `pooler` module);
    and, where the defaults below do not fit, `layer_inputs` (what a layer takes besides the hidden states),
    `classifier_dropout_prob`, `pooling_weights`, `pool`, and, for `output_hidden_states`, `hidden_states_modules`
    and `last_hidden_state`.
    """

    def classifier_dropout_prob(self):
        """The dropout before each internal classifier (in training only): the reference's, the hidden dropout."""
        return self.config.hidden_dropout_prob

    def layer_inputs(self, hidden_states, attention_mask):
        """
        What every layer takes besides the hidden states, made once for a batch and made again whenever the batch
        loses examples or trailing padding columns: here the attention mask in the form the attention implementation
        takes, from a 0/1 padding mask.
        """
        return create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )

    def pooling_weights(self, hidden_states, attention_mask):
        """
        What `pool` needs besides a layer's hidden states, made once for a batch rather than at every layer: for
        "mean" pooling, `(batch_size, 1, seq_len)` weights that average over the real tokens; None otherwise.
        """
        if getattr(self.config, "exit_pooling", "pooler") != "mean":
            return None
        return mean_pooling_weights(hidden_states, attention_mask)

    def pool(self, hidden_states, pooling_weights):
        """What an internal classifier reads from a layer's hidden states: `(batch_size, hidden_size)`."""
        if getattr(self.config, "exit_pooling", "pooler") == "mean":
            return torch.bmm(pooling_weights, hidden_states).squeeze(1)  # (batch, 1, seq) @ (batch, seq, hidden)
        if getattr(self, "pooler", None) is None:
            raise ValueError(
                "exit_pooling is 'pooler' but this model was built for 'mean', without a pooler: load it again with "
                "exit_pooling='pooler' (from_pretrained(path, exit_pooling='pooler')) to add one"
            )
        return self.pool_first_token(hidden_states)

    def pool_first_token(self, hidden_states):
        """What "pooler" pooling reads: the family's pooler over the first token, `(batch_size, hidden_size)`."""
        return self.pooler(hidden_states)

    def add_exit_pooler(self, name, make_pooler):
        """
        For a family whose pooler is not part of its transformers backbone: set attribute `name` to `make_pooler()`
        where the classifiers read it (`exit_pooling="pooler"`), else to None (an unused one would be reported as newly
        initialised, never trained, and refused by DistributedDataParallel: a parameter without gradient). Called at
        the end of `__init__`: it initialises the pooler as the family initialises its modules.
        """
        setattr(self, name, None)
        if getattr(self.config, "exit_pooling", "pooler") == "pooler":
            setattr(self, name, make_pooler())
            self.post_init()

    def hidden_states_modules(self):
        """
        The modules whose outputs are the hidden states the backbone returns, in the order they run (the first one's
        input, the embeddings, is recorded too): by default every module of the class its `_can_record_outputs`
        names.
        """
        return [module for module in self.modules() if isinstance(module, self._can_record_outputs["hidden_states"])]

    def last_hidden_state(self, hidden_states):
        """The last layer's output as the backbone returns it (through its final norm, where it has one)."""
        return hidden_states


def dense_tanh_first_token(dense, hidden_states):
    """
    A pretrained pooler (dense + tanh over the first token) as functions: at batch size 1 its module calls cost about
    as much as its arithmetic, after every layer. A dense layer that is no plain `nn.Linear` (a quantized one, whose
    `weight` is a method) is called as the module it is.
    """
    if type(dense) is not nn.Linear:
        return dense(hidden_states[:, 0]).tanh_()
    return nn.functional.linear(hidden_states[:, 0], dense.weight, dense.bias).tanh_()


class FirstTokenPooler(nn.Module):
    """The pooler of a backbone pre-trained without one: a dense layer and an activation over the first token."""

    def __init__(self, hidden_size, activation):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = activation

    def forward(self, hidden_states):
        """`(batch_size, seq_len, hidden_size)` -> `(batch_size, hidden_size)`"""
        return self.activation(self.dense(hidden_states[:, 0]))


class PabeeForSequenceClassificationMixin:
    """
    A backbone with one linear classifier per layer and patience-based early exit. A family's classifier is this mixin
    on its transformers pre-trained model class, naming its config and backbone adapter:

        class BertForSequenceClassificationWithPabee(PabeeForSequenceClassificationMixin, BertPreTrainedModel):
            config_class = PabeeBertConfig
            backbone_class = BertModelWithPabee

    The PABEE settings live on the config (see `PabeeConfigMixin`), so `save_pretrained` keeps them:
    `config.patience` (0: no early exit), `config.regression_threshold` (regression: a change smaller than this
    counts as "the same prediction"), `config.exit_pooling`, `config.layer_loss_weights` (PABEE's "linear" 1..L,
    "uniform", or "last"), `config.exit_confidence` (a gate on the patience counter: an unchanged prediction counts
    only when its top-class probability is at least this; 0 is plain PABEE), and, to compare PABEE with other exit
    rules on the same model, `config.exit_criterion` ("patience", "entropy" or "confidence") with its
    `config.exit_threshold`. Training options that strengthen the shallow classifiers, all off by default:
    `config.self_distillation_weight` and `config.self_distillation_temperature` (see `self_distillation_loss`) and
    `config.gradient_equilibrium` (see `_run_all_layers`). Keyword arguments set them on the config
    (`from_pretrained(path, patience=3)`); `forward` takes an exit setting as keyword arguments for one call (see
    `exit_settings_for_call`). A plain backbone config is taken over into the family's PABEE config, so that the model
    always saves as a PABEE model.
    """

    config_class = None  # the family's PABEE config class
    backbone_class = None  # the family's backbone adapter, stored under the pre-trained model's `base_model_prefix`
    # {pattern: replacement} for checkpoint weights that transformers' classes of the family keep under another name
    # than the backbone adapter does (ModernBERT's classification head: `head.*`, here `model.head.*`)
    checkpoint_key_mapping = None

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """
        transformers' `from_pretrained`, which also reads the weights `checkpoint_key_mapping` renames (and, as
        transformers does with renamed weights, `save_pretrained` writes them back under the checkpoint's names).
        """
        if cls.checkpoint_key_mapping:
            kwargs.setdefault("key_mapping", cls.checkpoint_key_mapping)
        return super().from_pretrained(*args, **kwargs)

    def __init__(self, config, **pabee_settings):
        if not isinstance(config, self.config_class):
            config = self.config_class.from_backbone_config(config)
        super().__init__(config)
        unknown = set(pabee_settings) - set(PABEE_DEFAULTS)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}; PABEE's are {sorted(PABEE_DEFAULTS)}")
        for name, value in pabee_settings.items():
            if value is not None:
                setattr(config, name, value)
        if config.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1 means regression), got {config.num_labels}")
        check_pabee_settings(**{name: getattr(config, name) for name in PABEE_DEFAULTS}, num_labels=config.num_labels,
                             num_layers=config.num_hidden_layers)
        config.patience = config.patience.__index__()  # a plain int, so that the config saves as JSON
        if config.max_exit_layer is not None:
            config.max_exit_layer = config.max_exit_layer.__index__()
        self.num_labels = config.num_labels

        setattr(self, self.base_model_prefix, self.backbone_class(config))
        self.dropout = nn.Dropout(self.base_model.classifier_dropout_prob())
        self.classifiers = nn.ModuleList(
            [nn.Linear(config.hidden_size, config.num_labels) for _ in range(config.num_hidden_layers)]
        )

        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        patience=None,
        regression_threshold=None,
        exit_criterion=None,
        exit_threshold=None,
        exit_confidence=None,
        max_exit_layer=None,
        slowdown_guard=None,
        output_all_layer_logits=False,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
    ):
        """
        In training mode every layer runs and `loss` is PABEE's weighted average of the per-layer losses. In
        evaluation mode each example exits at its own layer, by the config's exit rule or by the one given for this
        call: `patience`, `exit_criterion`, `exit_threshold` and `exit_confidence` given make a whole rule, never mixed
        with the saved one, and `regression_threshold`, `max_exit_layer` and `slowdown_guard` replace the config's
        (see `exit_settings_for_call`; to lift a saved cap pass the number of layers, to lift a saved guard pass 1,
        which no score passes). `output_all_layer_logits=True` runs every layer for every example and also returns all
        the classifiers' logits; the answers are the same as without it.

        `output_hidden_states`, `output_attentions` and `return_dict` are transformers' (their defaults are the
        config's, as in transformers). Under early exit, hidden states and attentions are those of the full-depth
        pass: asking for either runs every layer for every example, as `output_all_layer_logits` does, and returns
        what the plain backbone returns for the same weights and inputs (every layer, at the input's sequence length),
        while `logits` and `exit_layers` stay the early-exit answers, the same as without them. Attention
        probabilities need `attn_implementation="eager"` (sdpa computes none): with another implementation,
        `output_attentions=True` raises a `ValueError`. `return_dict=False` returns the output's fields that are not
        None as a tuple, in the order of `PabeeSequenceClassifierOutput`: (loss), logits, (hidden_states),
        (attentions), exit_layers, (all_layer_logits), (guard_fired).
        """
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        return_dict = config.return_dict if return_dict is None else return_dict
        if output_attentions and config._attn_implementation != "eager":
            raise ValueError(
                "output_attentions needs the eager attention implementation, which computes the attention "
                f"probabilities ({config._attn_implementation!r} does not): load the model with "
                'attn_implementation="eager", or call model.set_attn_implementation("eager")'
            )
        exit_settings = exit_settings_for_call(
            config, patience=patience, regression_threshold=regression_threshold, exit_criterion=exit_criterion,
            exit_threshold=exit_threshold, exit_confidence=exit_confidence, max_exit_layer=max_exit_layer,
            slowdown_guard=slowdown_guard,
        )
        check_pabee_settings(
            **exit_settings,
            exit_pooling=config.exit_pooling,
            layer_loss_weights=config.layer_loss_weights,
            num_labels=self.num_labels,
            self_distillation_weight=config.self_distillation_weight,
            self_distillation_temperature=config.self_distillation_temperature,
            gradient_equilibrium=config.gradient_equilibrium,
            num_layers=len(self.classifiers),
        )
        exit_settings["patience"] = exit_settings["patience"].__index__()  # e.g. a numpy integer from a sweep
        if exit_settings["max_exit_layer"] is not None:
            exit_settings["max_exit_layer"] = exit_settings["max_exit_layer"].__index__()

        backbone = self.base_model
        attention_mask, input_ids, token_type_ids, position_ids, inputs_embeds = move_padding_to_the_right(
            attention_mask, input_ids, token_type_ids, position_ids, inputs_embeds
        )
        hidden_states = backbone.embed(input_ids, token_type_ids, position_ids, inputs_embeds, attention_mask)
        full_depth_outputs = output_hidden_states or output_attentions  # of every layer, at the input's length
        if not full_depth_outputs:
            hidden_states, attention_mask = drop_padding_columns(hidden_states, attention_mask)

        if self.training or output_all_layer_logits or full_depth_outputs:
            all_hidden_states = [] if output_hidden_states else None
            all_attentions = [] if output_attentions else None
            with recorded_outputs(self, all_hidden_states, all_attentions):
                all_layer_logits = self._run_all_layers(hidden_states, attention_mask)
            num_layers = all_layer_logits.shape[1]
            guard_fired = None
            if self.training:
                exit_layers = torch.full_like(all_layer_logits[:, 0, 0], num_layers, dtype=torch.long)
            else:
                exit_layers = simulate_exit_layers(all_layer_logits, **exit_settings)
                if exit_settings["slowdown_guard"] is not None:
                    guard_fired = guard_flag_layers(all_layer_logits, exit_settings["slowdown_guard"]) <= exit_layers
            logits = all_layer_logits[torch.arange(len(exit_layers)), exit_layers - 1]
        else:
            all_layer_logits = None
            logits, exit_layers, guard_fired = self._run_with_early_exit(hidden_states, attention_mask,
                                                                         **exit_settings)

        loss = None
        if labels is not None:
            if self.training:
                layer_logits = all_layer_logits.unbind(dim=1)
                loss = weighted_layer_loss(layer_logits, labels, config.layer_loss_weights)
                if config.self_distillation_weight > 0:
                    distillation = self_distillation_loss(layer_logits, config.self_distillation_temperature)
                    loss = loss + config.self_distillation_weight * distillation
            else:
                loss = sequence_classification_loss(logits, labels)

        output = PabeeSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=(
                (*all_hidden_states[:-1], self.base_model.last_hidden_state(all_hidden_states[-1]))
                if output_hidden_states else None
            ),
            attentions=tuple(all_attentions) if output_attentions else None,
            exit_layers=exit_layers,
            all_layer_logits=all_layer_logits if output_all_layer_logits else None,
            guard_fired=guard_fired,
        )
        return output if return_dict else output.to_tuple()

    def _classify(self, index, hidden_states, pooling_weights):
        """Logits of internal classifier `index` (0-based): `(batch_size, num_labels)`."""
        pooled_output = self.base_model.pool(hidden_states, pooling_weights)
        if self.training:  # dropout is the identity in evaluation: skip the call, which costs at every layer
            pooled_output = self.dropout(pooled_output)
        return self.classifiers[index](pooled_output)

    def _run_all_layers(self, hidden_states, attention_mask):
        """
        Every classifier's logits for every example: `(batch_size, num_layers, num_labels)`.

        With `config.gradient_equilibrium` in training, the gradient each layer's hidden states receive is rescaled
        as in ElasticBERT's `gradient_rescale` (its encoder's forward), which is Li et al.'s gradient equilibrium
        (ICCV 2019, arXiv 1908.06294): of the k classifiers that read this layer or a deeper one, its own classifier's
        gradient weighs 1/k and the gradient from the k - 1 deeper ones (k - 1)/k, so the shallow layers are not
        swamped by the sum of every deeper loss. The forward values are unchanged.
        """
        backbone = self.base_model
        num_layers = len(self.classifiers)
        equilibrium = self.training and self.config.gradient_equilibrium
        layer_inputs = backbone.layer_inputs(hidden_states, attention_mask)
        pooling_weights = backbone.pooling_weights(hidden_states, attention_mask)
        all_layer_logits = []
        for index in range(num_layers):
            hidden_states = backbone.run_layer(index, hidden_states, layer_inputs)
            classifiers_from_here = num_layers - index  # k
            if equilibrium:
                hidden_states = ScaleGradient.apply(hidden_states, 1.0 / classifiers_from_here)
            all_layer_logits.append(self._classify(index, hidden_states, pooling_weights))
            if equilibrium:
                hidden_states = ScaleGradient.apply(hidden_states, classifiers_from_here - 1.0)
        return torch.stack(all_layer_logits, dim=1)

    def _run_with_early_exit(
        self, hidden_states, attention_mask, patience, regression_threshold, exit_criterion, exit_threshold,
        exit_confidence, max_exit_layer=None, slowdown_guard=None,
    ):
        """
        Early exit decided per example (one patience counter each). An example leaves the batch at its exit layer
        and no later layer is computed for it; the others go on with a smaller batch. With the slowdown defences
        (`max_exit_layer`, `slowdown_guard`), an example also leaves at its deadline: the cap, or, once the guard has
        flagged it at layer f, max(f, cap) (f with no cap). Returns the logits, exit layers and, with the guard on,
        whether it fired for each example (else None).
        """
        backbone = self.base_model
        num_layers = len(self.classifiers)
        by_patience = exit_criterion == "patience"
        defended = max_exit_layer is not None or slowdown_guard is not None
        # With patience 0, or patience >= num_layers - 1 (the counter reaches num_layers - 1 at the last layer at the
        # earliest, whose answer full depth gives anyway), nobody exits early: skip the intermediate classifiers so
        # full depth costs what the plain model costs.
        can_exit_early = defended or (0 < patience < num_layers - 1 if by_patience else num_layers > 1)
        # The exit test reads the counters on the host (on a GPU, a wait for the device): skip it while no counter can
        # have reached the patience. A counter starts at 0 at layer 1 (index 0) and grows by at most 1 a layer.
        # The defences test every layer.
        next_exit_test = patience if by_patience and not defended else 0
        guard_fired = None
        if defended:
            batch_size = len(hidden_states)
            # The layer (1-based) each running example must exit at, at the latest; the guard's running score sums
            cap = num_layers if max_exit_layer is None or slowdown_guard is not None else max_exit_layer
            deadlines = torch.full((batch_size,), cap, dtype=torch.long, device=hidden_states.device)
            if slowdown_guard is not None:
                score_sums = torch.zeros(batch_size, device=hidden_states.device)
                flagged = torch.zeros(batch_size, dtype=torch.bool, device=hidden_states.device)
                guard_fired = torch.zeros(batch_size, dtype=torch.bool, device=hidden_states.device)

        exits = []  # (positions in the batch, or None for the whole batch; their logits; 1-based exit layer)
        active = None  # positions in the batch of the running examples, once some have left
        counters = previous_predictions = None
        layer_inputs = backbone.layer_inputs(hidden_states, attention_mask)
        pooling_weights = backbone.pooling_weights(hidden_states, attention_mask)

        for index in range(num_layers):
            hidden_states = backbone.run_layer(index, hidden_states, layer_inputs)
            is_last = index == num_layers - 1
            if not (can_exit_early or is_last):
                continue
            layer_logits = self._classify(index, hidden_states, pooling_weights)  # (active, num_labels)
            if slowdown_guard is not None:
                score_sums = score_sums + uncertainty_scores(layer_logits)
                newly_flagged = (score_sums / (index + 1) > slowdown_guard) & ~flagged
                flagged = flagged | newly_flagged
                guard_fired[newly_flagged if active is None else active[newly_flagged]] = True
                held_to = index + 1 if max_exit_layer is None else max(index + 1, max_exit_layer)
                deadlines = deadlines.masked_fill(newly_flagged, held_to)
            if is_last:
                exits.append((active, layer_logits, num_layers))
                break

            if by_patience:
                predictions = exit_predictions(layer_logits)
                if previous_predictions is None:
                    counters = torch.zeros_like(predictions, dtype=torch.long)
                else:
                    confident = patience_gate(layer_logits, exit_confidence)
                    counters = update_patience_counters(counters, previous_predictions, predictions,
                                                        regression_threshold, confident)
                previous_predictions = predictions
                if index < next_exit_test:
                    continue
                if not defended:
                    highest = int(counters.max())
                    if highest < patience:
                        next_exit_test = index + patience - highest
                        continue
                done = counters == patience if patience > 0 else torch.zeros_like(counters, dtype=torch.bool)
            else:
                done = confident_exits(layer_logits, exit_criterion, exit_threshold)
            if defended:
                done = done | (deadlines == index + 1)
            if not done.any():
                continue
            if len(done) == 1 or done.all():  # every running example exits here
                exits.append((active, layer_logits, index + 1))
                break
            if active is None:
                active = torch.arange(len(done), device=done.device)
            exits.append((active[done], layer_logits[done], index + 1))
            running = ~done
            active = active[running]
            counters = counters[running] if counters is not None else None
            previous_predictions = previous_predictions[running] if previous_predictions is not None else None
            if defended:
                deadlines = deadlines[running]
                if slowdown_guard is not None:
                    score_sums, flagged = score_sums[running], flagged[running]
            hidden_states = hidden_states[running]
            attention_mask = attention_mask[running] if attention_mask is not None else None
            hidden_states, attention_mask = drop_padding_columns(hidden_states, attention_mask)
            layer_inputs = backbone.layer_inputs(hidden_states, attention_mask)
            pooling_weights = backbone.pooling_weights(hidden_states, attention_mask)

        return (*gather_exits(exits), guard_fired)


def gather_exits(exits):
    """
    The batch's logits `(batch_size, num_labels)` and 1-based exit layers `(batch_size,)` from its exits in layer
    order: (positions in the batch, their logits, their exit layer), the positions None when the whole batch exits
    at once. Then its logits are the answer as they are: at batch size 1, nothing is copied.
    """
    positions, logits, exit_layer = exits[0]
    if positions is None:
        return logits, torch.full((len(logits),), exit_layer, dtype=torch.long, device=logits.device)
    batch_size = sum(len(positions) for positions, _, _ in exits)
    all_logits = logits.new_empty(batch_size, logits.shape[-1])
    exit_layers = torch.empty(batch_size, dtype=torch.long, device=logits.device)
    for positions, logits, exit_layer in exits:
        all_logits[positions] = logits
        exit_layers[positions] = exit_layer
    return all_logits, exit_layers


@contextmanager
def recorded_outputs(model, hidden_states=None, attentions=None):
    """
    While inside, record what transformers' `output_hidden_states` and `output_attentions` return, as the modules run:
    into the list `hidden_states`, the input of the first layer and then each layer's output `(batch_size, seq_len,
    hidden_size)`, from the modules the backbone's `hidden_states_modules` gives; into the list `attentions`, the
    probabilities `(batch_size, num_heads, seq_len, seq_len)` of each module of the class `model._can_record_outputs`
    names for them (its second output). A list left None records nothing. The hooks are removed on leaving, so that
    no other call pays for them.
    """

    def record_hidden_states(module, inputs, output):
        if not hidden_states:
            hidden_states.append(inputs[0])
        hidden_states.append(output[0] if isinstance(output, tuple) else output)

    def record_attentions(module, inputs, output):
        attentions.append(output[1])

    handles = []
    if hidden_states is not None:
        handles += [module.register_forward_hook(record_hidden_states)
                    for module in model.base_model.hidden_states_modules()]
    if attentions is not None:
        handles += [module.register_forward_hook(record_attentions) for module in model.modules()
                    if isinstance(module, model._can_record_outputs["attentions"])]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
