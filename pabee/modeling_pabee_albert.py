# Copyright 2020 Google AI, Google Brain, the HuggingFace Inc. team and Microsoft Corporation.
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
"""ALBERT with Patience-based Early Exit (PABEE, "BERT Loses Patience", arXiv 2006.04152).

One internal classifier per layer reads the pooled output of that layer. In training every layer runs and the loss
is the average of the per-layer losses weighted 1..L. In evaluation each example stops as soon as its prediction has
stayed the same `patience` times in a row; examples leave the batch one by one, so any batch size gives the answers
of running each example alone. ALBERT shares weights between layers: layer i runs layer group
i * num_hidden_groups // num_hidden_layers, exactly as `AlbertModel` does.

This file needs only torch and transformers: copy it into your own project as it is. The early-exit code is the
same as in modeling_pabee_bert.py (utils/check_copies.py keeps the two in step).

    from pabee.modeling_pabee_albert import AlbertForSequenceClassificationWithPabee
    model = AlbertForSequenceClassificationWithPabee.from_pretrained("albert-base-v2", num_labels=2, patience=3)
    output = model.eval()(**tokenizer(["a fine film"], return_tensors="pt"))
    output.logits, output.exit_layers
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AlbertModel, AlbertPreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import ModelOutput

# Copied from pabee.modeling_pabee_bert.PABEE_DEFAULTS
PABEE_DEFAULTS = {"patience": 0, "regression_threshold": 0.1, "exit_pooling": "pooler"}
# Copied from pabee.modeling_pabee_bert.EXIT_POOLINGS
EXIT_POOLINGS = ("pooler", "mean")


# Copied from pabee.modeling_pabee_bert.PabeeSequenceClassifierOutput
@dataclass
class PabeeSequenceClassifierOutput(ModelOutput):
    """
    Output of a sequence classifier with patience-based early exit.

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `labels` is given):
            Training: the per-layer losses averaged with weights 1..L. Evaluation: the loss of the answered logits.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            For each example, the logits of the classifier of the layer it exited at.
        exit_layers (`torch.LongTensor` of shape `(batch_size,)`):
            For each example, the 1-based index of the layer whose classifier answered.
        all_layer_logits (`torch.FloatTensor` of shape `(batch_size, num_layers, num_labels)`, optional):
            Every classifier's logits for every example, returned with `output_all_layer_logits=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    exit_layers: torch.LongTensor | None = None
    all_layer_logits: torch.FloatTensor | None = None


# Copied from pabee.modeling_pabee_bert.check_pabee_settings
def check_pabee_settings(patience, regression_threshold, exit_pooling="pooler"):
    """Raise a `ValueError` that says how to fix a bad PABEE setting."""
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise ValueError(f"patience must be an integer >= 0 (0 disables early exit), got {patience!r}")
    if isinstance(regression_threshold, bool) or not isinstance(regression_threshold, (int, float)):
        raise ValueError(f"regression_threshold must be a number >= 0, got {regression_threshold!r}")
    if not regression_threshold >= 0:  # also rejects NaN
        raise ValueError(f"regression_threshold must be a number >= 0, got {regression_threshold!r}")
    if exit_pooling not in EXIT_POOLINGS:
        raise ValueError(f"exit_pooling must be one of {', '.join(EXIT_POOLINGS)}, got {exit_pooling!r}")


# Copied from pabee.modeling_pabee_bert.update_patience_counters
def update_patience_counters(counters, previous_logits, logits, regression_threshold):
    """
    One step of the patience rule for a batch: `counters[b]` counts how many times in a row example b's prediction
    stayed the same. Classification compares argmaxes; regression (one logit) counts a change smaller than
    `regression_threshold` (strictly) as "the same".
    """
    if logits.shape[-1] == 1:
        unchanged = (logits - previous_logits).abs().squeeze(-1) < regression_threshold
    else:
        unchanged = logits.argmax(dim=-1) == previous_logits.argmax(dim=-1)
    return torch.where(unchanged, counters + 1, torch.zeros_like(counters))


# Copied from pabee.modeling_pabee_bert.patience_exit_layers
def patience_exit_layers(all_layer_logits, patience, regression_threshold):
    """
    The exit layer (1-based) that early exit with `patience` gives each example, from every layer's logits
    `(batch_size, num_layers, num_labels)`: the first layer at which the counter reaches `patience`, else the last.
    """
    batch_size, num_layers, _ = all_layer_logits.shape
    exit_layers = torch.full((batch_size,), num_layers, dtype=torch.long, device=all_layer_logits.device)
    if patience == 0:
        return exit_layers
    counters = torch.zeros(batch_size, dtype=torch.long, device=all_layer_logits.device)
    for layer in range(1, num_layers):
        counters = update_patience_counters(
            counters, all_layer_logits[:, layer - 1], all_layer_logits[:, layer], regression_threshold
        )
        first_time = (counters == patience) & (exit_layers == num_layers)
        exit_layers[first_time] = layer + 1
    return exit_layers


# Copied from pabee.modeling_pabee_bert.weighted_layer_loss
def weighted_layer_loss(layer_logits, labels):
    """PABEE's training loss: sum_i i * loss_i / sum_i i over layers i = 1..L (MSE when there is one logit)."""
    total_loss, total_weight = 0.0, 0
    for weight, logits in enumerate(layer_logits, start=1):
        total_loss = total_loss + weight * sequence_classification_loss(logits, labels)
        total_weight += weight
    return total_loss / total_weight


# Copied from pabee.modeling_pabee_bert.sequence_classification_loss
def sequence_classification_loss(logits, labels):
    """Cross-entropy over `num_labels` classes, or mean squared error when there is a single logit (regression)."""
    if logits.shape[-1] == 1:
        return nn.functional.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
    return nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


# Copied from pabee.modeling_pabee_bert.drop_padding_columns
def drop_padding_columns(hidden_states, attention_mask):
    """
    Remove trailing sequence positions that no example in the batch attends to. Masked keys get zero attention weight
    and every other operation is per position, so the remaining positions compute exactly what they did before; as
    examples leave the batch the longest remaining one sets the length.
    """
    if attention_mask is None:
        return hidden_states, attention_mask
    length = int(attention_mask.any(dim=0).nonzero().max()) + 1 if attention_mask.any() else 1
    return hidden_states[:, :length], attention_mask[:, :length]


class AlbertModelWithPabee(AlbertModel):
    """
    `AlbertModel` that can also be run one layer at a time, as early exit needs. Its `forward` is `AlbertModel`'s.
    `config.exit_pooling` picks what the internal classifiers read: "pooler" (the reference: the pretrained pooler,
    dense + tanh over the first token) or "mean" (the mean of the layer's hidden states over real tokens).
    """

    def __init__(self, config):
        super().__init__(config, add_pooling_layer=True)

    def embed(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        """The input of layer 1: `(batch_size, seq_len, hidden_size)`, after ALBERT's embedding projection."""
        embeddings = self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
        return self.encoder.embedding_hidden_mapping_in(embeddings)

    def layer_attention_mask(self, hidden_states, attention_mask):
        """The mask the layers take (its form depends on the attention implementation) from a 0/1 padding mask."""
        return create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )

    def run_layer(self, index, hidden_states, layer_attention_mask):
        """Layer `index` (0-based): a pass through the layer group that `AlbertTransformer` uses for it."""
        group_index = int(index / (self.config.num_hidden_layers / self.config.num_hidden_groups))
        return self.encoder.albert_layer_groups[group_index](hidden_states, layer_attention_mask)

    def pool(self, hidden_states, attention_mask):
        """What an internal classifier reads from a layer's hidden states: `(batch_size, hidden_size)`."""
        if getattr(self.config, "exit_pooling", "pooler") == "mean":
            return masked_mean(hidden_states, attention_mask)
        return self.pooler_activation(self.pooler(hidden_states[:, 0]))


# Copied from pabee.modeling_pabee_bert.masked_mean
def masked_mean(hidden_states, attention_mask):
    """Mean of `(batch_size, seq_len, hidden_size)` over the positions where `attention_mask` is 1."""
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


# Copied from pabee.modeling_pabee_bert.BertForSequenceClassificationWithPabee with Bert->Albert
class AlbertForSequenceClassificationWithPabee(AlbertPreTrainedModel):
    """
    ALBERT with one linear classifier per layer and patience-based early exit.

    The PABEE settings live on the config, so `save_pretrained` keeps them: `config.patience` (0: no early exit),
    `config.regression_threshold` (regression: a change smaller than this counts as "the same prediction") and
    `config.exit_pooling`. They can also be given as keyword arguments (`from_pretrained(path, patience=3)`), which
    set them on the config. `forward` takes `patience=` and `regression_threshold=` to override them for one call.
    """

    def __init__(self, config, **pabee_settings):
        super().__init__(config)
        unknown = set(pabee_settings) - set(PABEE_DEFAULTS)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}; PABEE's are {sorted(PABEE_DEFAULTS)}")
        for name, default in PABEE_DEFAULTS.items():
            if pabee_settings.get(name) is not None:
                setattr(config, name, pabee_settings[name])
            elif getattr(config, name, None) is None:
                setattr(config, name, default)
        check_pabee_settings(config.patience, config.regression_threshold, config.exit_pooling)
        if config.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1 means regression), got {config.num_labels}")
        self.num_labels = config.num_labels

        self.albert = AlbertModelWithPabee(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
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
        output_all_layer_logits=False,
    ):
        """
        In training mode every layer runs and `loss` is PABEE's weighted average of the per-layer losses. In
        evaluation mode each example exits at its own layer. `output_all_layer_logits=True` runs every layer for
        every example and also returns all the classifiers' logits; the answers are the same as without it.
        """
        patience = self.config.patience if patience is None else patience
        if regression_threshold is None:
            regression_threshold = self.config.regression_threshold
        check_pabee_settings(patience, regression_threshold, self.config.exit_pooling)

        backbone = self.base_model
        hidden_states = backbone.embed(input_ids, token_type_ids, position_ids, inputs_embeds)
        hidden_states, attention_mask = drop_padding_columns(hidden_states, attention_mask)

        if self.training or output_all_layer_logits:
            all_layer_logits = self._run_all_layers(hidden_states, attention_mask)
            num_layers = all_layer_logits.shape[1]
            if self.training:
                exit_layers = torch.full_like(all_layer_logits[:, 0, 0], num_layers, dtype=torch.long)
            else:
                exit_layers = patience_exit_layers(all_layer_logits, patience, regression_threshold)
            logits = all_layer_logits[torch.arange(len(exit_layers)), exit_layers - 1]
        else:
            all_layer_logits = None
            logits, exit_layers = self._run_with_early_exit(
                hidden_states, attention_mask, patience, regression_threshold
            )

        loss = None
        if labels is not None:
            if self.training:
                loss = weighted_layer_loss(all_layer_logits.unbind(dim=1), labels)
            else:
                loss = sequence_classification_loss(logits, labels)

        return PabeeSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            exit_layers=exit_layers,
            all_layer_logits=all_layer_logits if output_all_layer_logits else None,
        )

    def _classify(self, index, hidden_states, attention_mask):
        """Logits of internal classifier `index` (0-based): `(batch_size, num_labels)`."""
        pooled_output = self.base_model.pool(hidden_states, attention_mask)
        return self.classifiers[index](self.dropout(pooled_output))

    def _run_all_layers(self, hidden_states, attention_mask):
        """Every classifier's logits for every example: `(batch_size, num_layers, num_labels)`."""
        backbone = self.base_model
        layer_attention_mask = backbone.layer_attention_mask(hidden_states, attention_mask)
        all_layer_logits = []
        for index in range(len(self.classifiers)):
            hidden_states = backbone.run_layer(index, hidden_states, layer_attention_mask)
            all_layer_logits.append(self._classify(index, hidden_states, attention_mask))
        return torch.stack(all_layer_logits, dim=1)

    def _run_with_early_exit(self, hidden_states, attention_mask, patience, regression_threshold):
        """
        Patience-based early exit with one counter per example. An example leaves the batch at its exit layer and
        no later layer is computed for it; the others go on with a smaller batch.
        """
        backbone = self.base_model
        num_layers = len(self.classifiers)
        batch_size = hidden_states.shape[0]
        # With patience 0, or patience >= num_layers (the counter can reach at most num_layers - 1), nobody exits
        # early: skip the intermediate classifiers so full depth costs what the plain model costs.
        can_exit_early = 0 < patience < num_layers

        logits = None
        exit_layers = torch.full((batch_size,), num_layers, dtype=torch.long, device=hidden_states.device)
        active = torch.arange(batch_size, device=hidden_states.device)  # original positions of the running examples
        counters = torch.zeros_like(active)
        previous_logits = None
        layer_attention_mask = backbone.layer_attention_mask(hidden_states, attention_mask)

        for index in range(num_layers):
            hidden_states = backbone.run_layer(index, hidden_states, layer_attention_mask)
            is_last = index == num_layers - 1
            if not (can_exit_early or is_last):
                continue
            layer_logits = self._classify(index, hidden_states, attention_mask)  # (active, num_labels)
            if logits is None:
                logits = layer_logits.new_zeros(batch_size, layer_logits.shape[-1])
            if is_last:
                logits[active] = layer_logits
                break

            if previous_logits is not None:
                counters = update_patience_counters(counters, previous_logits, layer_logits, regression_threshold)
            previous_logits = layer_logits
            done = counters == patience
            if not done.any():
                continue
            logits[active[done]] = layer_logits[done]
            exit_layers[active[done]] = index + 1
            if done.all():
                break
            running = ~done
            active, counters, previous_logits = active[running], counters[running], previous_logits[running]
            hidden_states = hidden_states[running]
            attention_mask = attention_mask[running] if attention_mask is not None else None
            hidden_states, attention_mask = drop_padding_columns(hidden_states, attention_mask)
            layer_attention_mask = backbone.layer_attention_mask(hidden_states, attention_mask)

        return logits, exit_layers


__all__ = [
    "AlbertModelWithPabee",
    "AlbertForSequenceClassificationWithPabee",
    "PabeeSequenceClassifierOutput",
]
