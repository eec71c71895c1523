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
"""XLM-RoBERTa with Patience-based Early Exit (PABEE, "BERT Loses Patience", arXiv 2006.04152).

XLM-RoBERTa is RoBERTa's architecture trained on a hundred languages: it takes no token types and numbers
positions from `pad_token_id + 1`, skipping padding, exactly as `XLMRobertaModel` does. As in transformers, the
backbone's weights sit under `roberta.`.
The early-exit machinery every family shares is in modeling_pabee.py; copy both files to use them.

    from transformers import AutoTokenizer
    from pabee.modeling_pabee_xlm_roberta import XLMRobertaForSequenceClassificationWithPabee
    tokenizer = AutoTokenizer.from_pretrained("xlm-roberta-base")
    model = XLMRobertaForSequenceClassificationWithPabee.from_pretrained("xlm-roberta-base", num_labels=2, patience=3)
    output = model.eval()(**tokenizer(["a fine film"], return_tensors="pt"))
    output.logits, output.exit_layers
"""

from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaPreTrainedModel

from .modeling_pabee import PabeeBackboneMixin, PabeeConfigMixin, PabeeForSequenceClassificationMixin


class PabeeXLMRobertaConfig(PabeeConfigMixin, XLMRobertaConfig):
    """The XLM-RoBERTa config plus the early-exit settings (see `PabeeConfigMixin`), saved with the model."""

    model_type = f"pabee_{XLMRobertaConfig.model_type}"


class XLMRobertaModelWithPabee(PabeeBackboneMixin, XLMRobertaModel):
    """
    `XLMRobertaModel` that can also be run one layer at a time, as early exit needs. Its `forward` is
    `XLMRobertaModel`'s. `exit_pooling="pooler"` reads `XLMRobertaModel`'s pooler: dense + tanh over the first token
    `<s>`, the same computation as the first half of `XLMRobertaClassificationHead`, shared by every exit. The model is
    pre-trained by masked language modelling only, so the pooler is not a pre-trained part: where a checkpoint holds no
    pooler weights, `from_pretrained` reports `roberta.pooler` as newly initialised (normal, std `initializer_range`,
    like the classifiers), and it is trained with the classifiers. A checkpoint that has a pooler (a plain
    `XLMRobertaModel` saved with its default `add_pooling_layer=True`, or a PABEE model) loads it. With "mean" the
    model has no pooler.
    """

    def __init__(self, config):
        # Only a model whose classifiers read it has a pooler: an unused one would be reported as newly initialised,
        # never trained, and refused by DistributedDataParallel (a parameter without gradient).
        super().__init__(config, add_pooling_layer=getattr(config, "exit_pooling", "pooler") == "pooler")

    def classifier_dropout_prob(self):
        """The dropout before each internal classifier (in training only): `XLMRobertaClassificationHead`'s."""
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


class XLMRobertaForSequenceClassificationWithPabee(PabeeForSequenceClassificationMixin, XLMRobertaPreTrainedModel):
    """XLM-RoBERTa with one linear classifier per layer and patience-based early exit (see the mixin's settings)."""

    config_class = PabeeXLMRobertaConfig
    backbone_class = XLMRobertaModelWithPabee


PabeeXLMRobertaConfig.register_for_auto_class()
XLMRobertaForSequenceClassificationWithPabee.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = ["PabeeXLMRobertaConfig", "XLMRobertaModelWithPabee", "XLMRobertaForSequenceClassificationWithPabee"]
