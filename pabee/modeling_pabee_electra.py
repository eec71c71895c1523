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
"""ELECTRA with Patience-based Early Exit (PABEE, "BERT Loses Patience", arXiv 2006.04152).

Fine-tune the discriminator (google/electra-*-discriminator): it has no pre-trained pooler (see
`ElectraModelWithPabee` for what the classifiers read), and where its embeddings are smaller than its layers
(`embedding_size < hidden_size`) they are projected up, exactly as `ElectraModel` does. The early-exit machinery
every family shares is in modeling_pabee.py; copy both files to use them.

    from transformers import AutoTokenizer
    from pabee.modeling_pabee_electra import ElectraForSequenceClassificationWithPabee
    tokenizer = AutoTokenizer.from_pretrained("google/electra-base-discriminator")
    model = ElectraForSequenceClassificationWithPabee.from_pretrained(
        "google/electra-base-discriminator", num_labels=2, patience=3
    )
    output = model.eval()(**tokenizer(["a fine film"], return_tensors="pt"))
    output.logits, output.exit_layers
"""

from torch import nn
from transformers import ElectraConfig, ElectraModel, ElectraPreTrainedModel

from .modeling_pabee import (
    FirstTokenPooler,
    PabeeBackboneMixin,
    PabeeConfigMixin,
    PabeeForSequenceClassificationMixin,
)


class PabeeElectraConfig(PabeeConfigMixin, ElectraConfig):
    """The ELECTRA config plus the early-exit settings (see `PabeeConfigMixin`), saved with the model."""

    model_type = f"pabee_{ElectraConfig.model_type}"


class ElectraModelWithPabee(PabeeBackboneMixin, ElectraModel):
    """
    `ElectraModel` that can also be run one layer at a time, as early exit needs. Its `forward` is `ElectraModel`'s.

    ELECTRA is pre-trained without a pooler, so `exit_pooling="pooler"` reads one made here, `electra.pooler`:
    dense + GELU over the first token [CLS], the computation `ElectraClassificationHead` puts before its output layer,
    shared by every exit. No ELECTRA checkpoint holds it: `from_pretrained` reports `electra.pooler` as newly
    initialised beside the classifiers (normal, std `initializer_range`, zero bias, like them), and it is trained with
    them. With "mean" the model has no pooler.
    """

    def __init__(self, config):
        super().__init__(config)
        # Only a model whose classifiers read it has a pooler: an unused one would be reported as newly initialised,
        # never trained, and refused by DistributedDataParallel (a parameter without gradient).
        self.pooler = None
        if getattr(config, "exit_pooling", "pooler") == "pooler":
            self.pooler = FirstTokenPooler(config.hidden_size, nn.GELU())
            self.post_init()  # initialises the pooler added after `ElectraModel.__init__` had initialised the rest

    def classifier_dropout_prob(self):
        """The dropout before each internal classifier (in training only): `ElectraClassificationHead`'s."""
        config = self.config
        return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob

    def embed(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, attention_mask=None):
        """The input of layer 1: `(batch_size, seq_len, hidden_size)`, after the embedding projection if any."""
        embeddings = self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
        if hasattr(self, "embeddings_project"):  # embedding_size != hidden_size
            embeddings = self.embeddings_project(embeddings)
        return embeddings

    def run_layer(self, index, hidden_states, layer_inputs):
        """Layer `index` (0-based) of the encoder."""
        return self.encoder.layer[index](hidden_states, layer_inputs)


class ElectraForSequenceClassificationWithPabee(PabeeForSequenceClassificationMixin, ElectraPreTrainedModel):
    """ELECTRA with one linear classifier per layer and patience-based early exit (see the mixin for the settings)."""

    config_class = PabeeElectraConfig
    backbone_class = ElectraModelWithPabee


PabeeElectraConfig.register_for_auto_class()
ElectraForSequenceClassificationWithPabee.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = ["PabeeElectraConfig", "ElectraModelWithPabee", "ElectraForSequenceClassificationWithPabee"]
