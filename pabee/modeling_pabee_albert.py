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

ALBERT shares weights between layers: layer i runs layer group i * num_hidden_groups // num_hidden_layers, exactly as
`AlbertModel` does. The early-exit machinery every family shares is in modeling_pabee.py; copy both files to use them.

    from transformers import AutoTokenizer
    from pabee.modeling_pabee_albert import AlbertForSequenceClassificationWithPabee
    tokenizer = AutoTokenizer.from_pretrained("albert-base-v2")
    model = AlbertForSequenceClassificationWithPabee.from_pretrained("albert-base-v2", num_labels=2, patience=3)
    output = model.eval()(**tokenizer(["a fine film"], return_tensors="pt"))
    output.logits, output.exit_layers
"""

from transformers import AlbertConfig, AlbertModel, AlbertPreTrainedModel

from .modeling_pabee import (
    PabeeBackboneMixin,
    PabeeConfigMixin,
    PabeeForSequenceClassificationMixin,
    dense_tanh_first_token,
)


class PabeeAlbertConfig(PabeeConfigMixin, AlbertConfig):
    """The ALBERT config plus the early-exit settings (see `PabeeConfigMixin`), saved with the model."""

    model_type = f"pabee_{AlbertConfig.model_type}"


class AlbertModelWithPabee(PabeeBackboneMixin, AlbertModel):
    """
    `AlbertModel` that can also be run one layer at a time, as early exit needs. Its `forward` is `AlbertModel`'s.
    `exit_pooling="pooler"` reads the pretrained pooler (dense + tanh over the first token), as the reference does.
    The dropout before each classifier is the reference's, the hidden dropout (0 in the released ALBERT configs;
    `AlbertForSequenceClassification` uses `classifier_dropout_prob` instead).
    """

    def __init__(self, config):
        super().__init__(config, add_pooling_layer=True)

    def embed(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, attention_mask=None):
        """The input of layer 1: `(batch_size, seq_len, hidden_size)`, after ALBERT's embedding projection."""
        embeddings = self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
        return self.encoder.embedding_hidden_mapping_in(embeddings)

    def run_layer(self, index, hidden_states, layer_inputs):
        """Layer `index` (0-based): a pass through the layer group that `AlbertTransformer` uses for it."""
        group_index = int(index / (self.config.num_hidden_layers / self.config.num_hidden_groups))
        return self.encoder.albert_layer_groups[group_index](hidden_states, layer_inputs)

    def pool_first_token(self, hidden_states):
        return dense_tanh_first_token(self.pooler, hidden_states)  # ALBERT's pooler is the dense layer itself


class AlbertForSequenceClassificationWithPabee(PabeeForSequenceClassificationMixin, AlbertPreTrainedModel):
    """ALBERT with one linear classifier per layer and patience-based early exit (see the mixin for the settings)."""

    config_class = PabeeAlbertConfig
    backbone_class = AlbertModelWithPabee


PabeeAlbertConfig.register_for_auto_class()
AlbertForSequenceClassificationWithPabee.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = ["PabeeAlbertConfig", "AlbertModelWithPabee", "AlbertForSequenceClassificationWithPabee"]
