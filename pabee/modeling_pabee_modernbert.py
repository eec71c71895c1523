# Copyright 2024 Answer.AI, LightOn, and contributors, and the HuggingFace Inc. team.
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
"""ModernBERT with Patience-based Early Exit (PABEE, "BERT Loses Patience", arXiv 2006.04152).

ModernBERT's layers alternate global attention and attention within a sliding window (`config.layer_types`, the
window `local_attention`), each kind with its own rotary position embeddings, and a final norm follows the last layer.
Every exit reads its layer's hidden states through that final norm, so that the last exit reads what the plain
`ModernBertModel` outputs. The early-exit machinery every family shares is in modeling_pabee.py; copy both files to use
them.

    from transformers import AutoTokenizer
    from pabee.modeling_pabee_modernbert import ModernBertForSequenceClassificationWithPabee
    tokenizer = AutoTokenizer.from_pretrained("answerdotai/ModernBERT-base")
    model = ModernBertForSequenceClassificationWithPabee.from_pretrained(
        "answerdotai/ModernBERT-base", num_labels=2, patience=3
    )
    output = model.eval()(**tokenizer(["a fine film"], return_tensors="pt"))
    output.logits, output.exit_layers
"""

import torch
from transformers import ModernBertConfig, ModernBertModel, ModernBertPreTrainedModel
from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask
from transformers.models.modernbert.modeling_modernbert import ModernBertPredictionHead

from .modeling_pabee import (
    PabeeBackboneMixin,
    PabeeConfigMixin,
    PabeeForSequenceClassificationMixin,
    mean_pooling_weights,
)

MASK_FUNCTIONS = {
    "full_attention": create_bidirectional_mask,
    "sliding_attention": create_bidirectional_sliding_window_mask,
}


class PabeeModernBertConfig(PabeeConfigMixin, ModernBertConfig):
    """The ModernBERT config plus the early-exit settings (see `PabeeConfigMixin`), saved with the model."""

    model_type = f"pabee_{ModernBertConfig.model_type}"


class ModernBertModelWithPabee(PabeeBackboneMixin, ModernBertModel):
    """
    `ModernBertModel` that can also be run one layer at a time, as early exit needs. Its `forward` is
    `ModernBertModel`'s.

    Every exit reads a layer's hidden states through `final_norm`, the norm `ModernBertModel` applies after its last
    layer. `exit_pooling="pooler"` reads ModernBERT's classification head, `model.head` (dense, activation and norm,
    `ModernBertPredictionHead`), over the first token [CLS] or over the mean of the real tokens, as
    `config.classifier_pooling` says ("cls" or "mean"), as `ModernBertForSequenceClassification` does before its
    output layer; one head serves every exit. `from_pretrained` loads it from the checkpoint's `head` (the masked-LM
    head of a pretrained ModernBERT, which `ModernBertForSequenceClassification` starts from too, or the head of a
    fine-tuned `ModernBertForSequenceClassification`) and otherwise reports it as newly initialised. With "mean" the
    model has no head. ModernBERT has no token types and numbers positions 0, 1, ... itself.
    """

    def __init__(self, config):
        super().__init__(config)
        self.add_exit_pooler("head", lambda: ModernBertPredictionHead(config))

    def classifier_dropout_prob(self):
        """The dropout before each internal classifier (in training only): `ModernBertForSequenceClassification`'s."""
        return self.config.classifier_dropout

    def embed(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, attention_mask=None):
        """The input of layer 1: `(batch_size, seq_len, hidden_size)`."""
        if token_type_ids is not None:
            raise ValueError(
                "ModernBERT has no token type embeddings: leave token_type_ids out (its tokenizer does not make them)"
            )
        if position_ids is not None:
            raise ValueError(
                "ModernBERT's rotary embeddings are computed for positions 0, 1, ... of each example (left padding "
                "is moved after the tokens first): leave position_ids out"
            )
        return self.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)

    def layer_inputs(self, hidden_states, attention_mask):
        """
        For each kind of layer ("full_attention", "sliding_attention"): its attention mask (the sliding window's
        limits included) and its rotary embeddings (cos, sin) of positions 0..seq_len-1.
        """
        position_ids = torch.arange(hidden_states.shape[1], device=hidden_states.device).unsqueeze(0)
        return {
            layer_type: (
                MASK_FUNCTIONS[layer_type](
                    config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
                ),
                self.rotary_emb(hidden_states, position_ids, layer_type),
            )
            for layer_type in set(self.config.layer_types)
        }

    def run_layer(self, index, hidden_states, layer_inputs):
        """Layer `index` (0-based), with the mask and rotary embeddings of its kind."""
        layer = self.layers[index]
        attention_mask, position_embeddings = layer_inputs[layer.attention_type]
        return layer(hidden_states, attention_mask=attention_mask, position_embeddings=position_embeddings)

    def last_hidden_state(self, hidden_states):
        """The last layer's output as `ModernBertModel` returns it: through the final norm."""
        return self.final_norm(hidden_states)

    def pooling_weights(self, hidden_states, attention_mask):
        """The weights of the mean over the real tokens where the exits read it ("mean", or the head's); else None."""
        config = self.config
        if config.exit_pooling == "mean" or (self.head is not None and config.classifier_pooling == "mean"):
            return mean_pooling_weights(hidden_states, attention_mask)
        return None

    def pool(self, hidden_states, pooling_weights):
        """What an internal classifier reads of a layer's hidden states, through the final norm: `(batch, hidden)`."""
        config = self.config
        if config.exit_pooling == "pooler" and self.head is None:
            raise ValueError(
                "exit_pooling is 'pooler' but this model was built for 'mean', without a head: load it again with "
                "exit_pooling='pooler' (from_pretrained(path, exit_pooling='pooler')) to add one"
            )
        if pooling_weights is None:  # the head over [CLS]: the norm works per token, so only [CLS]'s is needed
            return self.head(self.final_norm(hidden_states[:, 0]))
        # (batch, 1, seq) @ (batch, seq, hidden)
        pooled_output = torch.bmm(pooling_weights, self.final_norm(hidden_states)).squeeze(1)
        return pooled_output if config.exit_pooling == "mean" else self.head(pooled_output)


class ModernBertForSequenceClassificationWithPabee(PabeeForSequenceClassificationMixin, ModernBertPreTrainedModel):
    """ModernBERT with one linear classifier per layer and patience-based early exit (see the mixin's settings)."""

    config_class = PabeeModernBertConfig
    backbone_class = ModernBertModelWithPabee
    checkpoint_key_mapping = {r"^head\.": "model.head."}  # the head of transformers' ModernBERT classes


PabeeModernBertConfig.register_for_auto_class()
ModernBertForSequenceClassificationWithPabee.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = ["PabeeModernBertConfig", "ModernBertModelWithPabee", "ModernBertForSequenceClassificationWithPabee"]
