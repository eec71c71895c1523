# Copyright 2020 Microsoft and the HuggingFace Inc. team.
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
"""DeBERTa-v2 and DeBERTa-v3 with Patience-based Early Exit (PABEE, "BERT Loses Patience", arXiv 2006.04152).

DeBERTa's layers attend with relative positions (disentangled attention: content and relative-position embeddings),
its embeddings are multiplied by the padding mask, an optional convolution (`conv_kernel_size > 0`, as in
deberta-v2-xlarge) mixes the embeddings into layer 1's output, and DeBERTa-v3 has no token types
(`type_vocab_size` 0). The same classes run v2 and v3 checkpoints, as transformers' `DebertaV2Model` does. The
early-exit machinery every family shares is in modeling_pabee.py; copy both files to use them.

    from transformers import AutoTokenizer
    from pabee.modeling_pabee_deberta_v2 import DebertaV2ForSequenceClassificationWithPabee
    tokenizer = AutoTokenizer.from_pretrained("microsoft/deberta-v3-base")
    model = DebertaV2ForSequenceClassificationWithPabee.from_pretrained(
        "microsoft/deberta-v3-base", num_labels=2, patience=3
    )
    output = model.eval()(**tokenizer(["a fine film"], return_tensors="pt"))
    output.logits, output.exit_layers
"""

import torch
from transformers import DebertaV2Config, DebertaV2Model, DebertaV2PreTrainedModel
from transformers.models.deberta_v2.modeling_deberta_v2 import ContextPooler, DebertaV2Layer, DisentangledSelfAttention

from .modeling_pabee import PabeeBackboneMixin, PabeeConfigMixin, PabeeForSequenceClassificationMixin


class PabeeDebertaV2Config(PabeeConfigMixin, DebertaV2Config):
    """The DeBERTa-v2 config plus the early-exit settings (see `PabeeConfigMixin`), saved with the model."""

    model_type = f"pabee_{DebertaV2Config.model_type}"


class DebertaV2ModelWithPabee(PabeeBackboneMixin, DebertaV2Model):
    """
    `DebertaV2Model` that can also be run one layer at a time, as early exit needs. Its `forward` is
    `DebertaV2Model`'s.

    `exit_pooling="pooler"` reads DeBERTa's `ContextPooler` (dense and activation over the first token [CLS], the
    computation `DebertaV2ForSequenceClassification` puts before its output layer), `deberta.pooler`, shared by every
    exit. Pretrained DeBERTa checkpoints hold none: `from_pretrained` reports it as newly initialised beside the
    classifiers; from a fine-tuned `DebertaV2ForSequenceClassification` it loads its `pooler`. With "mean" the model
    has no pooler.
    """

    _can_record_outputs = {"hidden_states": DebertaV2Layer, "attentions": DisentangledSelfAttention}

    def __init__(self, config):
        super().__init__(config)
        self.add_exit_pooler("pooler", lambda: ContextPooler(config))

    def classifier_dropout_prob(self):
        """The dropout before each internal classifier (in training only): `DebertaV2ForSequenceClassification`'s."""
        config = self.config
        return config.cls_dropout if getattr(config, "cls_dropout", None) is not None else config.hidden_dropout_prob

    def embed(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, attention_mask=None):
        """
        The input of layer 1: `(batch_size, seq_len, hidden_size)`, zero at padding (DeBERTa's embeddings are
        multiplied by the padding mask). Token types count only where `type_vocab_size` > 0 (not in DeBERTa-v3).
        """
        if attention_mask is None:
            reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
            attention_mask = torch.ones(reference.shape, dtype=torch.long, device=reference.device)
        return self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, mask=attention_mask,
            inputs_embeds=inputs_embeds,
        )

    def layer_inputs(self, hidden_states, attention_mask):
        """
        What every layer takes: the pairwise attention mask, the relative positions and the relative-position
        embeddings (None without relative attention), and the 0/1 padding mask that the convolution after layer 1
        takes.
        """
        if attention_mask is None:
            attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
        encoder = self.encoder
        return {
            "padding_mask": attention_mask,
            "attention_mask": encoder.get_attention_mask(attention_mask),
            "relative_pos": encoder.get_rel_pos(hidden_states),
            "rel_embeddings": encoder.get_rel_embedding(),
        }

    def run_layer(self, index, hidden_states, layer_inputs):
        """Layer `index` (0-based), and after layer 1 the convolution over the embeddings where the model has one."""
        # output_attentions=True returns the attention probabilities the layer computes anyway, for recording them.
        layer_output, _ = self.encoder.layer[index](
            hidden_states, layer_inputs["attention_mask"], relative_pos=layer_inputs["relative_pos"],
            rel_embeddings=layer_inputs["rel_embeddings"], output_attentions=True,
        )
        if index == 0 and self.encoder.conv is not None:
            layer_output = self.encoder.conv(hidden_states, layer_output, layer_inputs["padding_mask"])
        return layer_output

    def hidden_states_modules(self):
        """The layers, the convolution in layer 1's place where there is one: its output is layer 1's hidden states."""
        layers = list(self.encoder.layer)
        return layers if self.encoder.conv is None else [self.encoder.conv, *layers[1:]]


class DebertaV2ForSequenceClassificationWithPabee(PabeeForSequenceClassificationMixin, DebertaV2PreTrainedModel):
    """DeBERTa-v2/v3 with one linear classifier per layer and patience-based early exit (see the mixin's settings)."""

    config_class = PabeeDebertaV2Config
    backbone_class = DebertaV2ModelWithPabee
    _can_record_outputs = DebertaV2ModelWithPabee._can_record_outputs
    checkpoint_key_mapping = {r"^pooler\.": "deberta.pooler."}  # the pooler of `DebertaV2ForSequenceClassification`


PabeeDebertaV2Config.register_for_auto_class()
DebertaV2ForSequenceClassificationWithPabee.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = ["PabeeDebertaV2Config", "DebertaV2ModelWithPabee", "DebertaV2ForSequenceClassificationWithPabee"]
