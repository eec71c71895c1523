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
"""DistilBERT with Patience-based Early Exit (PABEE, "BERT Loses Patience", arXiv 2006.04152).

DistilBERT has no token types and no pre-trained pooler: see `DistilBertModelWithPabee` for what the classifiers
read. The early-exit machinery every family shares is in modeling_pabee.py; copy both files to use them.

    from transformers import AutoTokenizer
    from pabee.modeling_pabee_distilbert import DistilBertForSequenceClassificationWithPabee
    tokenizer = AutoTokenizer.from_pretrained("distilbert-base-uncased")
    model = DistilBertForSequenceClassificationWithPabee.from_pretrained(
        "distilbert-base-uncased", num_labels=2, patience=3
    )
    output = model.eval()(**tokenizer(["a fine film"], return_tensors="pt"))
    output.logits, output.exit_layers
"""

from torch import nn
from transformers import DistilBertConfig, DistilBertModel, DistilBertPreTrainedModel

from .modeling_pabee import (
    FirstTokenPooler,
    PabeeBackboneMixin,
    PabeeConfigMixin,
    PabeeForSequenceClassificationMixin,
)


class PabeeDistilBertConfig(PabeeConfigMixin, DistilBertConfig):
    """The DistilBERT config plus the early-exit settings (see `PabeeConfigMixin`), saved with the model."""

    model_type = f"pabee_{DistilBertConfig.model_type}"


class DistilBertModelWithPabee(PabeeBackboneMixin, DistilBertModel):
    """
    `DistilBertModel` that can also be run one layer at a time, as early exit needs. Its `forward` is
    `DistilBertModel`'s.

    DistilBERT is distilled without a pooler, so `exit_pooling="pooler"` reads one made here, `distilbert.pooler`:
    dense + ReLU over the first token [CLS], the computation `DistilBertForSequenceClassification` puts before its
    classifier (`pre_classifier`), shared by every exit. No checkpoint of DistilBERT itself holds it:
    `from_pretrained` reports `distilbert.pooler` as newly initialised beside the classifiers (normal, std
    `initializer_range`, zero bias, like them), and it is trained with them. With "mean" the model has no pooler.
    """

    def __init__(self, config):
        super().__init__(config)
        # Only a model whose classifiers read it has a pooler: an unused one would be reported as newly initialised,
        # never trained, and refused by DistributedDataParallel (a parameter without gradient).
        self.pooler = None
        if getattr(config, "exit_pooling", "pooler") == "pooler":
            self.pooler = FirstTokenPooler(config.dim, nn.ReLU())
            self.post_init()  # initialises the pooler added after `DistilBertModel.__init__` had initialised the rest

    def classifier_dropout_prob(self):
        """The dropout before each internal classifier (in training only): `DistilBertForSequenceClassification`'s."""
        return self.config.seq_classif_dropout

    def embed(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, attention_mask=None):
        """The input of layer 1: `(batch_size, seq_len, hidden_size)`. DistilBERT has no token types."""
        if token_type_ids is not None:
            raise ValueError(
                "DistilBERT has no token type embeddings: leave token_type_ids out (its tokenizer does not make them)"
            )
        return self.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds, position_ids=position_ids)

    def run_layer(self, index, hidden_states, layer_inputs):
        """Layer `index` (0-based) of the transformer."""
        return self.transformer.layer[index](hidden_states, layer_inputs)


class DistilBertForSequenceClassificationWithPabee(PabeeForSequenceClassificationMixin, DistilBertPreTrainedModel):
    """DistilBERT with one linear classifier per layer and patience-based early exit (see the mixin's settings)."""

    config_class = PabeeDistilBertConfig
    backbone_class = DistilBertModelWithPabee


PabeeDistilBertConfig.register_for_auto_class()
DistilBertForSequenceClassificationWithPabee.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = ["PabeeDistilBertConfig", "DistilBertModelWithPabee", "DistilBertForSequenceClassificationWithPabee"]
