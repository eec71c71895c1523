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
"""BERT with Patience-based Early Exit (PABEE, "BERT Loses Patience", arXiv 2006.04152).

The early-exit machinery every family shares is in modeling_pabee.py; this file holds BERT's config, its backbone
adapter and its classifier. Copy both files into your own project to use them (they need only torch and
transformers); `save_pretrained` copies both beside the weights, so that a saved model loads anywhere with
`AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`.

    from transformers import AutoTokenizer
    from pabee.modeling_pabee_bert import BertForSequenceClassificationWithPabee
    tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")
    model = BertForSequenceClassificationWithPabee.from_pretrained("bert-base-uncased", num_labels=2, patience=3)
    output = model.eval()(**tokenizer(["a fine film"], return_tensors="pt"))
    output.logits, output.exit_layers
"""

from transformers import BertConfig, BertModel, BertPreTrainedModel

from .modeling_pabee import (
    PabeeBackboneMixin,
    PabeeConfigMixin,
    PabeeForSequenceClassificationMixin,
    PabeeSequenceClassifierOutput,
    dense_tanh_first_token,
)


class PabeeBertConfig(PabeeConfigMixin, BertConfig):
    """The BERT config plus the early-exit settings (see `PabeeConfigMixin`), saved with the model."""

    model_type = f"pabee_{BertConfig.model_type}"


class BertModelWithPabee(PabeeBackboneMixin, BertModel):
    """
    `BertModel` that can also be run one layer at a time, as early exit needs. Its `forward` is `BertModel`'s.
    `exit_pooling="pooler"` reads the pretrained pooler (dense + tanh over the first token), as the reference does.
    """

    def __init__(self, config):
        super().__init__(config, add_pooling_layer=True)

    def embed(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, attention_mask=None):
        """The input of layer 1: `(batch_size, seq_len, hidden_size)`."""
        return self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )

    def run_layer(self, index, hidden_states, layer_inputs):
        """Layer `index` (0-based) of the encoder."""
        return self.encoder.layer[index](hidden_states, layer_inputs)

    def pool_first_token(self, hidden_states):
        return dense_tanh_first_token(self.pooler.dense, hidden_states)


class BertForSequenceClassificationWithPabee(PabeeForSequenceClassificationMixin, BertPreTrainedModel):
    """BERT with one linear classifier per layer and patience-based early exit (see the mixin for the settings)."""

    config_class = PabeeBertConfig
    backbone_class = BertModelWithPabee


# `save_pretrained` writes `auto_map` into config.json and copies this file and modeling_pabee.py beside the weights:
# then `AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)` and `pipeline` rebuild it.
PabeeBertConfig.register_for_auto_class()
BertForSequenceClassificationWithPabee.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "PabeeBertConfig",
    "BertModelWithPabee",
    "BertForSequenceClassificationWithPabee",
    "PabeeSequenceClassifierOutput",
]
