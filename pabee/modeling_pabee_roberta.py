# Copyright 2020 Google AI, Google Brain, the HuggingFace Inc. team, Facebook AI Research and Microsoft Corporation.
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
"""RoBERTa with Patience-based Early Exit (PABEE, "BERT Loses Patience", arXiv 2006.04152).

RoBERTa takes no token types (its one token-type embedding is added to every token) and numbers positions from
`pad_token_id + 1`, skipping padding, exactly as `RobertaModel` does.
The early-exit machinery every family shares is in modeling_pabee.py; copy both files to use them.

    from transformers import AutoTokenizer
    from pabee.modeling_pabee_roberta import RobertaForSequenceClassificationWithPabee
    tokenizer = AutoTokenizer.from_pretrained("roberta-base")
    model = RobertaForSequenceClassificationWithPabee.from_pretrained("roberta-base", num_labels=2, patience=3)
    output = model.eval()(**tokenizer(["a fine film"], return_tensors="pt"))
    output.logits, output.exit_layers
"""

from transformers import RobertaConfig, RobertaModel, RobertaPreTrainedModel

from .modeling_pabee import PabeeBackboneMixin, PabeeConfigMixin, PabeeForSequenceClassificationMixin


class PabeeRobertaConfig(PabeeConfigMixin, RobertaConfig):
    """The RoBERTa config plus the early-exit settings (see `PabeeConfigMixin`), saved with the model."""

    model_type = f"pabee_{RobertaConfig.model_type}"


class RobertaModelWithPabee(PabeeBackboneMixin, RobertaModel):
    """
    `RobertaModel` that can also be run one layer at a time, as early exit needs. Its `forward` is `RobertaModel`'s.
    `exit_pooling="pooler"` reads `RobertaModel`'s pooler: dense + tanh over the first token `<s>`, the same
    computation as the first half of `RobertaClassificationHead`, shared by every exit. RoBERTa is pre-trained without
    a sentence-level task, and the released roberta-base and roberta-large checkpoints hold no pooler weights: from
    them `from_pretrained` reports `roberta.pooler` as newly initialised (normal, std `initializer_range`, like the
    classifiers), and it is trained with the classifiers. A checkpoint that has a pooler (a plain
    `RobertaModel` saved with its default `add_pooling_layer=True`, or a PABEE model) loads it. With "mean" the model
    has no pooler.
    """

    def __init__(self, config):
        # Only a model whose classifiers read it has a pooler: an unused one would be reported as newly initialised,
        # never trained, and refused by DistributedDataParallel (a parameter without gradient).
        super().__init__(config, add_pooling_layer=getattr(config, "exit_pooling", "pooler") == "pooler")

    def classifier_dropout_prob(self):
        """The dropout before each internal classifier (in training only): `RobertaClassificationHead`'s."""
        config = self.config
        return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob

    def embed(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, attention_mask=None):
        """
        The input of layer 1: `(batch_size, seq_len, hidden_size)`. Without `position_ids`, positions count the
        tokens that are not `pad_token_id` from `pad_token_id + 1`, so an example gets the same positions alone or
        padded in a batch.
        """
        return self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )

    def run_layer(self, index, hidden_states, layer_inputs):
        """Layer `index` (0-based) of the encoder."""
        return self.encoder.layer[index](hidden_states, layer_inputs)


class RobertaForSequenceClassificationWithPabee(PabeeForSequenceClassificationMixin, RobertaPreTrainedModel):
    """RoBERTa with one linear classifier per layer and patience-based early exit (see the mixin for the settings)."""

    config_class = PabeeRobertaConfig
    backbone_class = RobertaModelWithPabee


PabeeRobertaConfig.register_for_auto_class()
RobertaForSequenceClassificationWithPabee.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = ["PabeeRobertaConfig", "RobertaModelWithPabee", "RobertaForSequenceClassificationWithPabee"]
