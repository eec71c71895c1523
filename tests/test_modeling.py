"""Tests of the PABEE model classes on tiny random configs of every family (CPU, offline, seeded).

Most tests check that two code paths agree (x-transformers style): batched early exit against one example at a time,
patience 0 against the plain transformers backbone, our answers against an independent re-implementation of the
patience rule on top of the plain backbone (minGPT style), save then load.

    python -m pytest tests/test_modeling.py -q
"""

import ast
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    AlbertModel,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DebertaV2Model,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertModel,
    ElectraConfig,
    ElectraForSequenceClassification,
    ElectraModel,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    ModernBertModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from pabee import (
    AlbertForSequenceClassificationWithPabee,
    BertForSequenceClassificationWithPabee,
    DebertaV2ForSequenceClassificationWithPabee,
    DistilBertForSequenceClassificationWithPabee,
    ElectraForSequenceClassificationWithPabee,
    ModernBertForSequenceClassificationWithPabee,
    RobertaForSequenceClassificationWithPabee,
    XLMRobertaForSequenceClassificationWithPabee,
)
from pabee.modeling_pabee import patience_exit_layers
from pabee.models import model_family

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELING_FILES = sorted((REPO_ROOT / "pabee").glob("modeling_pabee*.py"))

VOCAB_SIZE = 99
COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
)
# name: (family, extra config). ALBERT "layers" are passes through a layer group, as AlbertTransformer counts them.
VARIANTS = {
    "bert": ("bert", dict(num_hidden_layers=6)),
    "bert_eager": ("bert", dict(num_hidden_layers=5, attn_implementation="eager")),
    "albert": ("albert", dict(embedding_size=16, num_hidden_layers=4)),
    "albert_groups2": ("albert", dict(embedding_size=16, num_hidden_layers=5, num_hidden_groups=2)),
    "albert_inner2": ("albert", dict(embedding_size=16, num_hidden_layers=4, inner_group_num=2)),
    # RoBERTa and XLM-RoBERTa as released: one token type, padding id 1 (positions count from 2, skipping padding)
    "roberta": ("roberta", dict(num_hidden_layers=5, type_vocab_size=1, pad_token_id=1)),
    "xlm_roberta": ("xlm-roberta", dict(num_hidden_layers=4, type_vocab_size=1, pad_token_id=1)),
    "distilbert": ("distilbert", dict(num_hidden_layers=5)),
    "electra": ("electra", dict(embedding_size=16, num_hidden_layers=4)),  # embeddings projected up to hidden_size
    "electra_unprojected": ("electra", dict(embedding_size=32, num_hidden_layers=3)),  # no projection
    # ModernBERT: global attention in layers 1 and 3, the others within 2 tokens either side, shorter than the inputs
    "modernbert": ("modernbert", dict(num_hidden_layers=4, global_attn_every_n_layers=2, local_attention=4)),
    # its classification head over the mean of the tokens; eager attention (the default is sdpa)
    "modernbert_mean_head": ("modernbert", dict(num_hidden_layers=3, global_attn_every_n_layers=2, local_attention=4,
                                                classifier_pooling="mean", attn_implementation="eager")),
    # DeBERTa-v3 as released: relative positions only, in log buckets beyond 4 tokens; no token types
    "deberta_v3": ("deberta-v2", dict(num_hidden_layers=4, relative_attention=True, position_buckets=8,
                                      norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                                      position_biased_input=False, type_vocab_size=0)),
    # DeBERTa-v2 with absolute and relative positions (own projections, unbucketed), the convolution after layer 1 and
    # token types
    "deberta_v2": ("deberta-v2", dict(num_hidden_layers=3, relative_attention=True, share_att_key=False,
                                      pos_att_type=["p2c", "c2p"], conv_kernel_size=3)),
}
NEW_FAMILY_VARIANTS = ["roberta", "xlm_roberta", "distilbert", "electra"]
# ModernBERT and DeBERTa: the module their exits read by "pooler" is the head of transformers' classifier
HEAD_FAMILY_VARIANTS = ["modernbert", "deberta_v3"]
MAIN_VARIANTS = ["bert", "albert", "albert_groups2", "albert_inner2"] + NEW_FAMILY_VARIANTS + HEAD_FAMILY_VARIANTS
ONE_PER_FAMILY = ["bert", "albert"] + NEW_FAMILY_VARIANTS + HEAD_FAMILY_VARIANTS
FAMILIES = {
    "bert": (BertConfig, BertModel, BertForSequenceClassification, BertForSequenceClassificationWithPabee),
    "albert": (AlbertConfig, AlbertModel, AlbertForSequenceClassification, AlbertForSequenceClassificationWithPabee),
    "roberta": (RobertaConfig, RobertaModel, RobertaForSequenceClassification,
                RobertaForSequenceClassificationWithPabee),
    "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel, XLMRobertaForSequenceClassification,
                    XLMRobertaForSequenceClassificationWithPabee),
    "distilbert": (DistilBertConfig, DistilBertModel, DistilBertForSequenceClassification,
                   DistilBertForSequenceClassificationWithPabee),
    "electra": (ElectraConfig, ElectraModel, ElectraForSequenceClassification,
                ElectraForSequenceClassificationWithPabee),
    "modernbert": (ModernBertConfig, ModernBertModel, ModernBertForSequenceClassification,
                   ModernBertForSequenceClassificationWithPabee),
    "deberta-v2": (DebertaV2Config, DebertaV2Model, DebertaV2ForSequenceClassification,
                   DebertaV2ForSequenceClassificationWithPabee),
}
# Families pre-trained without a pooler: the PABEE backbone adds one (dense + this activation over the first token).
ADDED_POOLER_ACTIVATIONS = {"distilbert": torch.relu, "electra": nn.functional.gelu}
# The weights of the pooler that the PABEE backbone adds (with "pooler" pooling) where transformers' backbone has none:
# DistilBERT's and ELECTRA's, new; ModernBERT's head (without biases, as released) and DeBERTa's ContextPooler, which
# transformers' classifiers of the family hold as `head` and `pooler`
ADDED_POOLER_KEYS = {
    "distilbert": {"distilbert.pooler.dense.weight", "distilbert.pooler.dense.bias"},
    "electra": {"electra.pooler.dense.weight", "electra.pooler.dense.bias"},
    "modernbert": {"model.head.dense.weight", "model.head.norm.weight"},
    "deberta-v2": {"deberta.pooler.dense.weight", "deberta.pooler.dense.bias"},
}
# Where transformers' classifier of ModernBERT and DeBERTa holds the module their "pooler" exits read
HEAD_NAMES = {"modernbert": "head", "deberta-v2": "pooler"}
# Families whose plain transformers backbone takes add_pooling_layer
HAS_POOLING_LAYER_ARGUMENT = {"bert", "albert", "roberta", "xlm-roberta"}
NUM_LABELS = {"classification": 3, "regression": 1}
LENGTHS = [12, 3, 7, 1, 9, 5, 11, 2]
# Thresholds that give a spread of exit layers with the classifiers of `spread_classifiers` (layer-to-layer changes of
# the single logit are ~0.01-1); 0.0 never counts a change as "the same" since the comparison is strict.
REGRESSION_THRESHOLDS = [0.1, 0.4]


def make_config(variant, num_labels, **extra):
    family, variant_extra = VARIANTS[variant]
    kwargs = {**COMMON, **variant_extra, **extra, "num_labels": num_labels}
    if family == "distilbert":  # its own name for the feed-forward size (the others map through attribute_map)
        kwargs["hidden_dim"] = kwargs.pop("intermediate_size")
        del kwargs["type_vocab_size"]  # no token types
    if family == "modernbert":  # no token types; its special tokens' ids within the vocabulary
        del kwargs["type_vocab_size"]
        kwargs.update(pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3)
    attn_implementation = kwargs.pop("attn_implementation", None)
    config = FAMILIES[family][0](**kwargs)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def make_model(variant, num_labels, seed=0, **extra):
    torch.manual_seed(seed)
    model_class = FAMILIES[VARIANTS[variant][0]][3]
    model = model_class(make_config(variant, num_labels, **extra)).eval()
    spread_classifiers(model, seed)
    return model


@torch.no_grad()
def spread_classifiers(model, seed=0):
    """
    Classifiers whose predictions depend on the example, so that examples exit at different layers. With the random
    init every example's pooled output is nearly the same vector and its tiny logits give every example the same exit
    layer. Here classifier i is a shared random direction plus its own noise (so layers tend to agree, but not
    always), with a bias that centres its logits over the test batch. ModernBERT's head ends in a layer norm, whose
    outputs are about ten times those of the other poolers here: its classifiers are scaled down to match, so that the
    same regression thresholds spread its exits too.
    """
    generator = torch.Generator().manual_seed(seed)
    num_labels, hidden_size = model.classifiers[0].weight.shape
    layer_normed = model_family(model.config.model_type) == "modernbert" and model.config.exit_pooling == "pooler"
    scale = 0.1 if layer_normed else 1.0
    shared = torch.randn(num_labels, hidden_size, generator=generator)
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    pooled = plain_pooled(model, input_ids, attention_mask, token_type_ids)  # (batch, L, hidden)
    for i, classifier in enumerate(model.classifiers):
        weight = scale * (shared + 0.7 * torch.randn(num_labels, hidden_size, generator=generator))
        classifier.weight.copy_(weight)
        classifier.bias.copy_(-(pooled[:, i] @ weight.T).mean(0))


def plain_backbone(model):
    """The plain transformers backbone (BertModel, RobertaModel, ...) holding the same weights as `model`'s."""
    family = model_family(model.config.model_type)
    backbone_class = FAMILIES[family][1]
    if family in HAS_POOLING_LAYER_ARGUMENT:
        backbone = backbone_class(copy.deepcopy(model.config), add_pooling_layer=True)
    else:
        backbone = backbone_class(copy.deepcopy(model.config))
    missing, unexpected = backbone.load_state_dict(model.base_model.state_dict(), strict=False)
    pooler_keys = {"pooler.dense.weight", "pooler.dense.bias"}
    # RoBERTa's "mean" models have no pooler; DistilBERT, ELECTRA, ModernBERT and DeBERTa have one only with
    # "pooler", which their transformers backbone has not.
    assert set(missing) <= (pooler_keys if family in ("roberta", "xlm-roberta") else set())
    added = {key.split(".", 1)[1] for key in ADDED_POOLER_KEYS.get(family, ())}  # without the prefix
    assert set(unexpected) == (added if model.config.exit_pooling == "pooler" else set())
    return backbone.eval()


def plain_pool(model, backbone, hidden_states, attention_mask, exit_pooling):
    """
    The pooled output of a layer, from the plain backbone's own pooler modules, or for a family without one, the
    added pooler's weights applied by hand. (batch, hidden)
    """
    if exit_pooling == "mean":
        weights = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * weights).sum(1) / weights.sum(1)
    family = model_family(model.config.model_type)
    if family in ADDED_POOLER_ACTIVATIONS:
        dense = model.base_model.pooler.dense
        return ADDED_POOLER_ACTIVATIONS[family](hidden_states[:, 0] @ dense.weight.T + dense.bias)
    if family == "modernbert":  # ModernBertForSequenceClassification's pooling, then its head
        if model.config.classifier_pooling == "mean":
            weights = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
            return model.base_model.head((hidden_states * weights).sum(1) / weights.sum(1))
        return model.base_model.head(hidden_states[:, 0])
    if family == "deberta-v2":
        return model.base_model.pooler(hidden_states)  # ContextPooler: dense + GELU over token 0
    if family == "albert":
        return backbone.pooler_activation(backbone.pooler(hidden_states[:, 0]))
    return backbone.pooler(hidden_states)  # BERT, RoBERTa: dense + tanh over token 0


def plain_inputs(input_ids, attention_mask=None, token_type_ids=None):
    """Keyword arguments for a plain backbone: no token_type_ids where there are none (DistilBERT takes none)."""
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    if token_type_ids is not None:
        inputs["token_type_ids"] = token_type_ids
    return inputs


def plain_pooled(model, input_ids, attention_mask=None, token_type_ids=None):
    """
    What each classifier reads, computed without our backbone code: the plain transformers backbone with
    output_hidden_states=True, then its pooler on each layer's hidden states. (batch, L, hidden)
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    backbone = plain_backbone(model)
    out = backbone(**plain_inputs(input_ids, attention_mask, token_type_ids), output_hidden_states=True)
    num_layers = model.config.num_hidden_layers
    # ALBERT records the output of each inner layer: a layer (one pass through a group) is inner_group_num of them.
    per_layer = getattr(model.config, "inner_group_num", 1)
    assert len(out.hidden_states) == 1 + num_layers * per_layer
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    layer_hidden_states = [out.hidden_states[per_layer * (i + 1)] for i in range(num_layers)]
    if model_family(model.config.model_type) == "modernbert":  # every exit reads through the final norm
        layer_hidden_states = [backbone.final_norm(h) for h in layer_hidden_states[:-1]] + [out.last_hidden_state]
    pooled = [plain_pool(model, backbone, h, attention_mask, model.config.exit_pooling) for h in layer_hidden_states]
    return torch.stack(pooled, dim=1)


def plain_layer_logits(model, input_ids, attention_mask=None, token_type_ids=None):
    """Every classifier's logits on the plain backbone's pooled layer outputs: (batch, L, num_labels)."""
    pooled = plain_pooled(model, input_ids, attention_mask, token_type_ids)
    return torch.stack([classifier(pooled[:, i]) for i, classifier in enumerate(model.classifiers)], dim=1)


def reference_patience_rule(layer_logits, patience, regression_threshold):
    """
    The patience rule as PABEE.md (and the reference code at batch size 1) states it, for ONE example:
    `layer_logits` is a list of (num_labels,) tensors, one per layer. Returns (exit layer, 1-based; logits).
    """
    num_layers = len(layer_logits)
    if patience == 0:
        return num_layers, layer_logits[-1]
    regression = layer_logits[0].shape[-1] == 1
    counter, previous = 0, None
    for i, logits in enumerate(layer_logits):
        if previous is None:
            same = False
        elif regression:
            same = abs(float(logits[0]) - float(previous[0])) < regression_threshold
        else:
            same = int(logits.argmax()) == int(previous.argmax())
        counter = counter + 1 if same else 0
        previous = logits
        if counter == patience:
            return i + 1, logits
    return num_layers, previous


def make_batch(lengths=LENGTHS, pad_to=None, seed=1, config=None):
    """
    Right-padded random batch: input_ids (padded with `config`'s padding id), attention_mask, token_type_ids (second
    half of each example is type 1; None for a model without token types, as RoBERTa's or DistilBERT's tokenizer
    gives).
    """
    pad_to = pad_to or max(lengths)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB_SIZE, (len(lengths), max(lengths)), generator=generator)
    input_ids = nn.functional.pad(input_ids, (0, pad_to - max(lengths)))  # the same tokens whatever pad_to is
    positions = torch.arange(pad_to)[None]
    lengths_t = torch.tensor(lengths)[:, None]
    attention_mask = (positions < lengths_t).long()
    token_type_ids = ((positions >= (lengths_t + 1) // 2) & (attention_mask == 1)).long()
    if config is not None and getattr(config, "type_vocab_size", 0) < 2:
        token_type_ids = None
    pad_token_id = 0 if config is None or config.pad_token_id is None else config.pad_token_id
    return torch.where(attention_mask == 1, input_ids, pad_token_id), attention_mask, token_type_ids


def patience_values(num_layers):
    return sorted({0, 1, 2, num_layers - 1, num_layers, num_layers + 3})


def settings(task, num_layers):
    """(patience, regression_threshold) pairs to sweep."""
    if task == "classification":
        return [(p, 0.1) for p in patience_values(num_layers)]
    return [(p, t) for p in patience_values(num_layers) for t in REGRESSION_THRESHOLDS] + [(1, 0.0)]


def has_spread(exit_layers, num_layers):
    return len(set(exit_layers.tolist())) > 1 and int(exit_layers.min()) < num_layers


def example_inputs(input_ids, attention_mask, token_type_ids, b):
    """Example b alone, its padding removed, without an attention mask."""
    length = int(attention_mask[b].sum())
    types = None if token_type_ids is None else token_type_ids[b : b + 1, :length]
    return dict(input_ids=input_ids[b : b + 1, :length], token_type_ids=types)


# ---------------------------------------------------------------------------------------------------------------------
# Batched early exit == one example at a time


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize(
    "variant, exit_pooling",
    [(v, "pooler") for v in VARIANTS]
    + [(v, "mean") for v in ["bert", "albert_groups2", "albert_inner2", "xlm_roberta", "distilbert", "electra",
                             "modernbert"]],
)
@torch.no_grad()
def test_batched_early_exit_equals_one_example_at_a_time(variant, exit_pooling, task):
    model = make_model(variant, NUM_LABELS[task], exit_pooling=exit_pooling)
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    # the same examples with more padding
    long_ids, long_mask, long_types = make_batch(pad_to=max(LENGTHS) + 7, config=model.config)
    assert torch.equal(long_ids[:, : max(LENGTHS)], input_ids)

    spread = False
    for patience, threshold in settings(task, num_layers):
        kwargs = dict(patience=patience, regression_threshold=threshold)
        batched = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        assert batched.logits.shape == (len(LENGTHS), NUM_LABELS[task])
        assert batched.exit_layers.dtype == torch.long and batched.exit_layers.shape == (len(LENGTHS),)
        for b in range(len(LENGTHS)):
            alone = model(**example_inputs(input_ids, attention_mask, token_type_ids, b), **kwargs)
            assert int(alone.exit_layers[0]) == int(batched.exit_layers[b]), (patience, threshold, b)
            torch.testing.assert_close(batched.logits[b], alone.logits[0], rtol=0, atol=1e-5)

        padded = model(long_ids, attention_mask=long_mask, token_type_ids=long_types, **kwargs)
        assert torch.equal(padded.exit_layers, batched.exit_layers), (patience, threshold)
        torch.testing.assert_close(padded.logits, batched.logits, rtol=0, atol=1e-5)

        if patience == 0 or patience >= num_layers:
            assert batched.exit_layers.tolist() == [num_layers] * len(LENGTHS)
        spread = spread or has_spread(batched.exit_layers, num_layers)
    assert spread, "no setting gave examples different exit layers: the test would not exercise early exit"


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("variant", MAIN_VARIANTS)
@torch.no_grad()
def test_retired_examples_are_not_computed_further(variant, task):
    """Layer j (0-based) only runs the examples that exit after it, over the longest of their lengths."""
    model = make_model(variant, NUM_LABELS[task])
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask, token_type_ids = make_batch(pad_to=max(LENGTHS) + 4, config=model.config)
    lengths = torch.tensor(LENGTHS)
    layers = {"albert": "encoder.albert_layer_groups", "distilbert": "transformer.layer", "modernbert": "layers"}
    layers = model.base_model.get_submodule(layers.get(model_family(model.config.model_type), "encoder.layer"))
    calls, classifier_calls = [], []
    # (batch, seq) of each layer's input, in call order (an ALBERT group is called once per layer it serves)
    record = lambda module, args: calls.append(tuple(args[0].shape[:2]))  # noqa: E731
    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    hooks += [
        c.register_forward_hook(lambda m, args, out, i=i: classifier_calls.append(i))
        for i, c in enumerate(model.classifiers)
    ]
    try:
        spread = False
        for patience, threshold in settings(task, num_layers):
            calls.clear()
            classifier_calls.clear()
            out = model(
                input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                patience=patience,
                regression_threshold=threshold,
            )
            expected = []
            for j in range(num_layers):
                running = out.exit_layers > j
                if running.any():
                    expected.append((int(running.sum()), int(lengths[running].max())))
            assert calls == expected, (patience, threshold, out.exit_layers.tolist())
            if patience == 0 or patience >= num_layers - 1:
                # no exit before the last layer possible: the intermediate classifiers are skipped
                assert classifier_calls == [num_layers - 1]
            else:
                assert classifier_calls == [j for j in range(num_layers) if (out.exit_layers > j).any()]
            spread = spread or has_spread(out.exit_layers, num_layers)
        assert spread
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("variant", ["bert", "albert"])
@torch.no_grad()
def test_batch_without_attention_mask(variant):
    model = make_model(variant, 3)
    input_ids, _, token_type_ids = make_batch(lengths=[6] * 5, config=model.config)
    for patience in patience_values(model.config.num_hidden_layers):
        batched = model(input_ids, token_type_ids=token_type_ids, patience=patience)
        ones = torch.ones_like(input_ids)
        masked = model(input_ids, attention_mask=ones, token_type_ids=token_type_ids, patience=patience)
        assert torch.equal(batched.exit_layers, masked.exit_layers)
        torch.testing.assert_close(batched.logits, masked.logits, rtol=0, atol=1e-5)
        for b in range(len(input_ids)):
            alone = model(input_ids[b : b + 1], token_type_ids=token_type_ids[b : b + 1], patience=patience)
            assert int(alone.exit_layers[0]) == int(batched.exit_layers[b])
            torch.testing.assert_close(batched.logits[b], alone.logits[0], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Agreement with the plain transformers backbone and with an independent implementation of the patience rule


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize(
    "variant, exit_pooling",
    [(v, "pooler") for v in MAIN_VARIANTS + ["modernbert_mean_head", "deberta_v2"]]
    + [(v, "mean") for v in ["bert", "albert", "xlm_roberta", "distilbert", "modernbert", "deberta_v3"]],
)
@torch.no_grad()
def test_patience_zero_equals_plain_backbone_and_last_classifier(variant, exit_pooling, task):
    model = make_model(variant, NUM_LABELS[task], exit_pooling=exit_pooling)
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    out = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=0)

    backbone = plain_backbone(model)
    backbone_out = backbone(**plain_inputs(input_ids, attention_mask, token_type_ids))
    if exit_pooling == "pooler" and model_family(model.config.model_type) in HAS_POOLING_LAYER_ARGUMENT:
        pooled = backbone_out.pooler_output
    else:
        pooled = plain_pool(model, backbone, backbone_out.last_hidden_state, attention_mask, exit_pooling)
    expected = model.classifiers[-1](pooled)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-5)
    assert out.exit_layers.tolist() == [model.config.num_hidden_layers] * len(LENGTHS)
    # the config default is patience 0 as well
    default = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    torch.testing.assert_close(default.logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("variant", HEAD_FAMILY_VARIANTS + ["modernbert_mean_head", "deberta_v2"])
@torch.no_grad()
def test_patience_zero_equals_the_familys_transformers_classifier(variant, task, tmp_path):
    """
    ModernBERT's and DeBERTa's "pooler" exits read the head of transformers' own classifier of the family, so at
    patience 0 the model is that classifier with the last exit's output layer. A saved transformers classifier loads
    with its head; given its output layer as the last classifier, the model answers as it does.
    """
    family = VARIANTS[variant][0]
    classification_class = FAMILIES[family][2]
    model = make_model(variant, NUM_LABELS[task])
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    inputs = plain_inputs(input_ids, attention_mask, token_type_ids)
    prefix, head = PREFIXES[family], HEAD_NAMES[family]
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(f"{prefix}.{head}."):  # transformers' classifier holds it beside the backbone
            state[key.removeprefix(f"{prefix}.")] = value
        elif not key.startswith("classifiers."):
            state[key] = value
    state.update({f"classifier.{name}": value for name, value in model.classifiers[-1].state_dict().items()})
    plain = classification_class(copy.deepcopy(model.config)).eval()
    plain.load_state_dict(state)  # every weight, none left over
    expected = plain(**inputs).logits
    torch.testing.assert_close(model(**inputs, patience=0).logits, expected, rtol=0, atol=1e-5)

    plain.save_pretrained(tmp_path)
    loaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert {key.split(".")[0] for key in info["missing_keys"]} == {"classifiers"}  # the head is read
    assert set(info["unexpected_keys"]) == {"classifier.weight", "classifier.bias"}
    loaded.classifiers[-1].load_state_dict(plain.classifier.state_dict())
    torch.testing.assert_close(loaded.eval()(**inputs).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize(
    "variant, exit_pooling",
    [(v, "pooler") for v in VARIANTS] + [(v, "mean") for v in ["bert", "albert_groups2", "electra"]],
)
@torch.no_grad()
def test_same_answers_as_reference_rule_on_plain_backbone(variant, exit_pooling, task):
    """Per-layer logits from the plain backbone, the patience rule applied one example at a time, vs our batch."""
    model = make_model(variant, NUM_LABELS[task], exit_pooling=exit_pooling)
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    reference_layer_logits = [
        plain_layer_logits(model, **example_inputs(input_ids, attention_mask, token_type_ids, b))[0]
        for b in range(len(LENGTHS))
    ]  # one (L, num_labels) per example

    spread = False
    for patience, threshold in settings(task, num_layers):
        ours = model(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            patience=patience,
            regression_threshold=threshold,
        )
        for b, layer_logits in enumerate(reference_layer_logits):
            exit_layer, logits = reference_patience_rule(list(layer_logits), patience, threshold)
            assert int(ours.exit_layers[b]) == exit_layer, (patience, threshold, b)
            torch.testing.assert_close(ours.logits[b], logits, rtol=0, atol=1e-5)
        spread = spread or has_spread(ours.exit_layers, num_layers)
    assert spread

    # all-layer logits agree with the plain backbone's too
    all_layers = model(
        input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, output_all_layer_logits=True
    ).all_layer_logits
    for b, layer_logits in enumerate(reference_layer_logits):
        torch.testing.assert_close(all_layers[b], layer_logits, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Exit layers on hand-made classifier outputs


def set_classifier_outputs(model, per_layer_bias):
    """Zero every classifier's weight so layer i always outputs per_layer_bias[i], whatever the input."""
    with torch.no_grad():
        for classifier, bias in zip(model.classifiers, per_layer_bias):
            classifier.weight.zero_()
            classifier.bias.copy_(torch.tensor(bias, dtype=torch.float))


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("variant", MAIN_VARIANTS)
@torch.no_grad()
def test_forced_agreement_exits_at_patience_plus_one(variant, task):
    model = make_model(variant, NUM_LABELS[task])
    num_layers = model.config.num_hidden_layers
    constant = [0.3, -0.1, 0.2] if task == "classification" else [0.7]
    set_classifier_outputs(model, [constant] * num_layers)
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    for patience in range(num_layers + 4):
        out = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=patience)
        expected = patience + 1 if 1 <= patience < num_layers else num_layers
        assert out.exit_layers.tolist() == [expected] * len(LENGTHS), patience
        torch.testing.assert_close(out.logits, torch.tensor([constant] * len(LENGTHS)), rtol=0, atol=0)
    if task == "regression":
        # identical outputs, but the comparison is strict: threshold 0 never exits early
        out = model(input_ids, attention_mask=attention_mask, patience=1, regression_threshold=0.0)
        assert out.exit_layers.tolist() == [num_layers] * len(LENGTHS)


@pytest.mark.parametrize(
    "pattern, patience, threshold, expected",
    [
        # classification: predicted classes per layer 0 0 1 1 1 1
        ("classes", 1, 0.1, 2),
        ("classes", 2, 0.1, 5),  # the counter resets at layer 3: counts 1, 0, 1, 2
        ("classes", 3, 0.1, 6),
        ("classes", 5, 0.1, 6),
        # predicted classes 1 0 0 0 1 1: at layer 3 the counter is 1 of 2, so layer 4 is the next that can exit
        ("late_agreement", 1, 0.1, 3),
        ("late_agreement", 2, 0.1, 4),
        ("late_agreement", 3, 0.1, 6),
        # regression: outputs 0, 0.25, 0.5, 0.75, 1.0, 1.25 (exact in float): each change is exactly 0.25
        ("steps", 1, 0.25, 6),  # strict <: a change equal to the threshold is a change
        ("steps", 1, 0.2500001, 2),
        ("steps", 4, 0.26, 5),
        ("steps", 5, 0.26, 6),
        # regression: 0, 0.05, 1.0, 1.02, 1.04, 1.06 with threshold 0.1
        ("jump", 1, 0.1, 2),
        ("jump", 2, 0.1, 5),  # counts 1, 0, 1, 2
        ("jump", 3, 0.1, 6),
    ],
)
@pytest.mark.parametrize("variant", ["bert", "albert"])
@torch.no_grad()
def test_patience_counter_on_hand_made_predictions(variant, pattern, patience, threshold, expected):
    biases = {
        "classes": [[1.0, 0.0, 0.0]] * 2 + [[0.0, 1.0, 0.0]] * 4,
        "late_agreement": [[0.0, 1.0, 0.0]] + [[1.0, 0.0, 0.0]] * 3 + [[0.0, 1.0, 0.0]] * 2,
        "steps": [[0.25 * i] for i in range(6)],
        "jump": [[0.0], [0.05], [1.0], [1.02], [1.04], [1.06]],
    }[pattern]
    model = make_model(variant, len(biases[0]), num_hidden_layers=6)
    set_classifier_outputs(model, biases)
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    out = model(
        input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        patience=patience,
        regression_threshold=threshold,
    )
    assert out.exit_layers.tolist() == [expected] * len(LENGTHS)
    torch.testing.assert_close(out.logits, torch.tensor([biases[expected - 1]] * len(LENGTHS)), rtol=0, atol=0)
    all_layers = torch.tensor([biases] * len(LENGTHS))
    assert patience_exit_layers(all_layers, patience, threshold).tolist() == [expected] * len(LENGTHS)


# ---------------------------------------------------------------------------------------------------------------------
# All-layer logits


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("variant", MAIN_VARIANTS)
@torch.no_grad()
def test_output_all_layer_logits(variant, task):
    model = make_model(variant, NUM_LABELS[task])
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    spread = False
    for patience, threshold in settings(task, num_layers):
        kwargs = dict(patience=patience, regression_threshold=threshold)
        plain = model(**inputs, **kwargs)
        assert plain.all_layer_logits is None
        full = model(**inputs, output_all_layer_logits=True, **kwargs)
        assert full.all_layer_logits.shape == (len(LENGTHS), num_layers, NUM_LABELS[task])
        assert torch.equal(full.exit_layers, plain.exit_layers), (patience, threshold)
        torch.testing.assert_close(full.logits, plain.logits, rtol=0, atol=1e-5)
        answered = full.all_layer_logits[torch.arange(len(LENGTHS)), full.exit_layers - 1]
        assert torch.equal(answered, full.logits)
        recomputed = patience_exit_layers(full.all_layer_logits, patience, threshold)
        assert torch.equal(recomputed, plain.exit_layers), (patience, threshold)
        spread = spread or has_spread(plain.exit_layers, num_layers)
    assert spread


# ---------------------------------------------------------------------------------------------------------------------
# transformers' output_hidden_states, output_attentions and return_dict


@pytest.mark.parametrize("variant", MAIN_VARIANTS + ["electra_unprojected", "deberta_v2"])
@torch.no_grad()
def test_hidden_states_and_attentions_are_the_plain_backbones_and_answers_unchanged(variant):
    model = make_model(variant, 3, attn_implementation="eager")
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    plain = plain_backbone(model)(**plain_inputs(input_ids, attention_mask, token_type_ids),
                                  output_hidden_states=True, output_attentions=True)
    # ALBERT records every inner layer of a group, as transformers does
    per_layer = getattr(model.config, "inner_group_num", 1)
    assert len(plain.hidden_states) == 1 + model.config.num_hidden_layers * per_layer
    assert len(plain.attentions) == model.config.num_hidden_layers * per_layer

    spread = False
    for patience in (0, 1, 2):
        early_exit = model(**inputs, patience=patience)
        spread = spread or has_spread(early_exit.exit_layers, model.config.num_hidden_layers)
        both = model(**inputs, patience=patience, output_hidden_states=True, output_attentions=True)
        for name, plain_outputs in (("hidden_states", plain.hidden_states), ("attentions", plain.attentions)):
            outputs = getattr(both, name)
            assert isinstance(outputs, tuple) and len(outputs) == len(plain_outputs), name
            for ours, theirs in zip(outputs, plain_outputs):
                assert ours.shape == theirs.shape  # every example, at the input's length, padding included
                torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        assert torch.equal(both.exit_layers, early_exit.exit_layers), patience
        torch.testing.assert_close(both.logits, early_exit.logits, rtol=0, atol=1e-5)
        hidden_only = model(**inputs, patience=patience, output_hidden_states=True)
        assert hidden_only.attentions is None and len(hidden_only.hidden_states) == len(plain.hidden_states)
    assert spread  # some examples exit early: the outputs are still every layer's


@pytest.mark.parametrize("variant", ONE_PER_FAMILY)
@torch.no_grad()
def test_config_output_defaults_are_honoured_as_in_transformers(variant):
    model = make_model(variant, 3, attn_implementation="eager")
    model.config.output_hidden_states = model.config.output_attentions = True
    model.config.return_dict = False
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=1)
    logits, hidden_states, attentions, exit_layers = model(**inputs)
    num_layers = model.config.num_hidden_layers
    assert (len(hidden_states), len(attentions)) == (num_layers + 1, num_layers)
    output = model(**inputs, output_hidden_states=False, output_attentions=False, return_dict=True)
    assert (output.hidden_states, output.attentions) == (None, None)
    assert torch.equal(output.exit_layers, exit_layers)
    torch.testing.assert_close(output.logits, logits, rtol=0, atol=1e-5)  # early exit's, by another path


@torch.no_grad()
def test_return_dict_false_gives_transformers_tuple_order():
    model = make_model("bert", 3, attn_implementation="eager")
    input_ids, attention_mask, token_type_ids = make_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=1)
    labels = torch.arange(len(LENGTHS)) % 3
    output = model(**inputs, labels=labels, output_hidden_states=True, output_attentions=True,
                   output_all_layer_logits=True)
    as_tuple = model(**inputs, labels=labels, output_hidden_states=True, output_attentions=True,
                     output_all_layer_logits=True, return_dict=False)
    # transformers' (loss, logits, hidden_states, attentions), then what early exit adds
    expected = (output.loss, output.logits, output.hidden_states, output.attentions, output.exit_layers,
                output.all_layer_logits)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(expected)
    for ours, theirs in zip(as_tuple, expected):
        if isinstance(theirs, tuple):
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
        else:
            assert torch.equal(ours, theirs)
    logits, exit_layers = model(**inputs, return_dict=False)  # fields left None are left out, as in transformers
    assert torch.equal(exit_layers, output.exit_layers)
    torch.testing.assert_close(logits, output.logits, rtol=0, atol=1e-5)  # early exit's, by another path


def test_output_attentions_needs_eager_attention():
    model = make_model("bert", 3)
    assert model.config._attn_implementation == "sdpa"
    input_ids, attention_mask, token_type_ids = make_batch()
    with pytest.raises(ValueError, match='attn_implementation="eager"'):
        model(input_ids, attention_mask=attention_mask, output_attentions=True)
    with torch.no_grad():  # hidden states need no attention probabilities
        assert len(model(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states) == 7
    model.set_attn_implementation("eager")
    with torch.no_grad():
        assert len(model(input_ids, attention_mask=attention_mask, output_attentions=True).attentions) == 6


def test_hidden_states_in_training_carry_gradients_and_leave_the_loss_unchanged():
    model = make_model("bert", 3).train()
    input_ids, attention_mask, token_type_ids = make_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=torch.arange(len(LENGTHS)) % 3)
    torch.manual_seed(0)
    loss = model(**inputs).loss
    torch.manual_seed(0)
    output = model(**inputs, output_hidden_states=True)
    torch.testing.assert_close(output.loss, loss, rtol=0, atol=1e-6)
    assert all(hidden_states.requires_grad for hidden_states in output.hidden_states)


# ---------------------------------------------------------------------------------------------------------------------
# Losses


def no_dropout(variant):
    family = VARIANTS[variant][0]
    if family == "distilbert":
        return dict(dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)
    if family == "modernbert":  # its dropouts are 0 unless set
        return {}
    extra = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "albert":
        extra["classifier_dropout_prob"] = 0.0
    return extra


def make_labels(task, batch_size, seed=2):
    generator = torch.Generator().manual_seed(seed)
    if task == "classification":
        return torch.randint(0, 3, (batch_size,), generator=generator)
    return torch.randn(batch_size, generator=generator)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("variant", MAIN_VARIANTS)
def test_training_loss_is_weighted_average_and_reaches_every_parameter(variant, task):
    model = make_model(variant, NUM_LABELS[task], **no_dropout(variant)).train()
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    labels = make_labels(task, len(LENGTHS))
    out = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels, patience=1)

    with torch.no_grad():
        layer_logits = plain_layer_logits(model, input_ids, attention_mask, token_type_ids)
    per_layer = []
    for i in range(num_layers):
        if task == "classification":
            per_layer.append(nn.functional.cross_entropy(layer_logits[:, i], labels))
        else:
            per_layer.append(((layer_logits[:, i, 0] - labels) ** 2).mean())
    expected = sum((i + 1) * loss for i, loss in enumerate(per_layer)) / sum(range(1, num_layers + 1))
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    # the layers' losses differ, so the check above tells the 1..L weighting from a plain mean or the last layer's loss
    per_layer = torch.stack(per_layer)
    assert per_layer.max() - per_layer.min() > 0.05 * per_layer.mean(), per_layer
    # training runs every layer: the answer is the last layer's
    assert out.exit_layers.tolist() == [num_layers] * len(LENGTHS)
    torch.testing.assert_close(out.logits, layer_logits[:, -1], rtol=0, atol=1e-5)

    out.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_dropout_sits_before_the_classifiers_in_training_only():
    model = make_model("bert", 3, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.0)
    seen = []
    hook = model.classifiers[-1].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    input_ids, attention_mask, _ = make_batch(config=model.config)
    with torch.no_grad():
        model.train()(input_ids, attention_mask=attention_mask)
        model.eval()(input_ids, attention_mask=attention_mask, patience=0)
    hook.remove()
    train_input, eval_input = seen
    assert (eval_input != 0).all()
    assert (train_input == 0).float().mean() > 0.2  # about half the pooled features dropped in training


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("variant", ["bert", "albert"])
@torch.no_grad()
def test_eval_loss_is_loss_of_answered_logits(variant, task):
    model = make_model(variant, NUM_LABELS[task])
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    labels = make_labels(task, len(LENGTHS))
    threshold = 0.1
    patience = 1
    out = model(
        input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        labels=labels,
        patience=patience,
        regression_threshold=threshold,
        output_all_layer_logits=True,
    )
    assert has_spread(out.exit_layers, num_layers), out.exit_layers
    if task == "classification":
        expected = nn.functional.cross_entropy(out.logits, labels)
        last_layer = nn.functional.cross_entropy(out.all_layer_logits[:, -1], labels)
    else:
        expected = ((out.logits[:, 0] - labels) ** 2).mean()
        last_layer = ((out.all_layer_logits[:, -1, 0] - labels) ** 2).mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-7)
    assert not torch.isclose(out.loss, last_layer)
    # the same without output_all_layer_logits
    plain = model(
        input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        labels=labels,
        patience=patience,
        regression_threshold=threshold,
    )
    torch.testing.assert_close(plain.loss, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Saving and loading


@pytest.mark.parametrize("variant", MAIN_VARIANTS)
@torch.no_grad()
def test_save_and_load_keeps_weights_and_pabee_settings(variant, tmp_path):
    model = make_model(variant, 3, patience=1, regression_threshold=0.25, exit_pooling="mean")
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    settings_after = (loaded.config.patience, loaded.config.regression_threshold, loaded.config.exit_pooling)
    assert settings_after == (1, 0.25, "mean")
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for key in state:
        assert torch.equal(state[key], loaded_state[key]), key
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    before, after = model(**inputs), loaded(**inputs)
    assert torch.equal(before.exit_layers, after.exit_layers)
    # equal weights; the last bits can differ as the loaded tensors sit elsewhere in memory (other kernels' paths)
    torch.testing.assert_close(before.logits, after.logits, rtol=0, atol=1e-6)
    assert has_spread(after.exit_layers, model.config.num_hidden_layers)  # the saved patience is in use


# The prefix of the backbone's weights, as in transformers' own classes of each family
PREFIXES = {"bert": "bert", "albert": "albert", "roberta": "roberta", "xlm-roberta": "roberta",
            "distilbert": "distilbert", "electra": "electra", "modernbert": "model", "deberta-v2": "deberta"}


def added_pooler_keys(family):
    """The weights the PABEE backbone adds where transformers' backbone of the family has no pooler."""
    return ADDED_POOLER_KEYS.get(family, set())


@pytest.mark.parametrize("variant", ["bert", "albert", "albert_groups2"] + NEW_FAMILY_VARIANTS + HEAD_FAMILY_VARIANTS)
def test_state_dict_follows_reference_layout(variant, tmp_path):
    model = make_model(variant, 3)
    family, prefix = VARIANTS[variant][0], PREFIXES[VARIANTS[variant][0]]
    num_layers = model.config.num_hidden_layers
    backbone_keys = {f"{prefix}.{k}" for k in plain_backbone(model).state_dict()} | added_pooler_keys(family)
    classifier_keys = {f"classifiers.{i}.{p}" for i in range(num_layers) for p in ("weight", "bias")}
    keys = set(model.state_dict())
    assert {k.split(".")[0] for k in keys} == {prefix, "classifiers"}
    assert keys == backbone_keys | classifier_keys
    for i in range(num_layers):
        assert model.classifiers[i].weight.shape == (3, 32)
    pooler = "pooler.weight" if family == "albert" else f"{HEAD_NAMES.get(family, 'pooler')}.dense.weight"
    pooler = f"{prefix}.{pooler}"
    assert pooler in keys  # one pooler, shared by every exit
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert set(f.keys()) == keys


@pytest.mark.parametrize("variant", ["bert", "albert_groups2"])
@torch.no_grad()
def test_checkpoint_in_the_reference_format_loads_and_answers_the_same(variant, tmp_path):
    """
    A checkpoint as the reference implementation saves it: its state dict (backbone under bert./albert., one
    classifiers.{i} per layer) and a config with none of our PABEE settings. It loads without missing or unexpected
    keys, and answers as the reference's rule on the same weights; saving it again keeps the reference's keys.
    """
    trained = make_model(variant, 3)
    state = {key: value.contiguous() for key, value in trained.state_dict().items()}
    config = make_config(variant, 3).to_dict()
    config["architectures"] = [type(trained).__name__]
    for name in ("patience", "regression_threshold", "exit_pooling", "exit_criterion", "exit_threshold",
                 "layer_loss_weights"):
        config.pop(name, None)
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    (reference_dir / "config.json").write_text(json.dumps(config))
    save_file(state, reference_dir / "model.safetensors", metadata={"format": "pt"})

    model, info = type(trained).from_pretrained(reference_dir, patience=2, output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    ours = model.eval()(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    for b in range(len(LENGTHS)):
        layer_logits = plain_layer_logits(trained, **example_inputs(input_ids, attention_mask, token_type_ids, b))[0]
        exit_layer, logits = reference_patience_rule(list(layer_logits), 2, 0.1)
        assert int(ours.exit_layers[b]) == exit_layer
        torch.testing.assert_close(ours.logits[b], logits, rtol=0, atol=1e-5)

    model.save_pretrained(tmp_path / "ours")
    with safe_open(tmp_path / "ours" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(state)


@pytest.mark.parametrize("plain_class", ["for_sequence_classification", "model"])
@pytest.mark.parametrize("variant", ONE_PER_FAMILY)
@torch.no_grad()
def test_from_pretrained_on_plain_checkpoint_loads_backbone_and_inits_classifiers(variant, plain_class, tmp_path):
    family = VARIANTS[variant][0]
    prefix = PREFIXES[family]
    config_class, model_class, classification_class, pabee_class = FAMILIES[family]
    config = make_config(variant, 3)
    torch.manual_seed(3)
    plain = (classification_class if plain_class == "for_sequence_classification" else model_class)(config)
    plain.save_pretrained(tmp_path)
    plain_backbone_state = (plain.base_model if plain_class == "for_sequence_classification" else plain).state_dict()

    model, info = pabee_class.from_pretrained(tmp_path, output_loading_info=True)
    model.eval()
    num_layers = config.num_hidden_layers
    # New: the classifiers, and a pooler where the checkpoint has none: DistilBERT and ELECTRA never have one;
    # RobertaForSequenceClassification has its own head instead (as the released RoBERTa checkpoints have no pooler).
    # ModernBERT's and DeBERTa's are read from their transformers classifier, which holds them beside the backbone.
    classifier_keys = {f"classifiers.{i}.{p}" for i in range(num_layers) for p in ("weight", "bias")}
    beyond_backbone = {f"{prefix}.{key}" for key in model.base_model.state_dict() if key not in plain_backbone_state}
    expected_new_poolers = added_pooler_keys(family)
    if family in ("roberta", "xlm-roberta") and plain_class == "for_sequence_classification":
        expected_new_poolers = {f"{prefix}.pooler.dense.weight", f"{prefix}.pooler.dense.bias"}
    assert beyond_backbone == expected_new_poolers
    pooler = getattr(model.base_model, HEAD_NAMES.get(family, "pooler"))
    if family in HEAD_NAMES and plain_class == "for_sequence_classification":
        for key, value in getattr(plain, HEAD_NAMES[family]).state_dict().items():
            assert torch.equal(pooler.state_dict()[key], value), key
        expected_new_poolers = set()
    assert set(info["missing_keys"]) == classifier_keys | expected_new_poolers
    assert (model.config.patience, model.config.regression_threshold, model.config.exit_pooling) == (0, 0.1, "pooler")
    state = model.base_model.state_dict()
    assert set(plain_backbone_state) <= set(state)
    for key in plain_backbone_state:
        assert torch.equal(state[key], plain_backbone_state[key]), key
    weights = torch.stack([c.weight for c in model.classifiers])
    assert torch.isfinite(weights).all() and weights.std() > 0
    assert 0.005 < float(weights.std()) < 0.1  # initializer_range 0.02, not the ~1/sqrt(32) of a default nn.Linear
    assert not torch.equal(model.classifiers[0].weight, model.classifiers[1].weight)
    for classifier in model.classifiers:
        assert torch.equal(classifier.bias, torch.zeros(3))
    if expected_new_poolers:  # initialised like the classifiers (ModernBERT's as its own head: std 0.02/sqrt(8))
        assert 0.005 < float(pooler.dense.weight.std()) < 0.1
        assert pooler.dense.bias is None or torch.equal(pooler.dense.bias, torch.zeros(32))
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    out = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=2)
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("variant", ONE_PER_FAMILY)
def test_from_pretrained_on_plain_checkpoint_takes_pabee_settings(variant, tmp_path):
    """The usage in the modeling files' docstrings: from_pretrained("bert-base-uncased", num_labels=2, patience=3)."""
    _, model_class, _, pabee_class = FAMILIES[VARIANTS[variant][0]]
    torch.manual_seed(3)
    model_class(make_config(variant, 2)).save_pretrained(tmp_path)
    model = pabee_class.from_pretrained(
        tmp_path, num_labels=3, patience=2, regression_threshold=0.2, exit_pooling="mean"
    )
    settings_after = (model.config.num_labels, model.config.patience, model.config.regression_threshold)
    assert settings_after == (3, 2, 0.2) and model.config.exit_pooling == "mean"
    assert len(model.classifiers) == model.config.num_hidden_layers and model.classifiers[0].out_features == 3
    with pytest.raises(ValueError, match="patience must be an integer"):
        pabee_class.from_pretrained(tmp_path, patience=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize("variant", ["bert", "albert"])
@torch.no_grad()
def test_forward_arguments_override_config_for_one_call(variant):
    input_ids, attention_mask, token_type_ids = make_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    model = make_model(variant, 3, patience=2)
    num_layers = model.config.num_hidden_layers
    with_config = model(**inputs)
    override = model(**inputs, patience=0)  # 0 is falsy: must still override
    assert override.exit_layers.tolist() == [num_layers] * len(LENGTHS)
    assert model.config.patience == 2
    assert torch.equal(model(**inputs).exit_layers, with_config.exit_layers)
    assert has_spread(with_config.exit_layers, num_layers)
    override = model(**inputs, patience=1)
    assert model.config.patience == 2
    reference = make_model(variant, 3, patience=1)(**inputs)
    assert torch.equal(override.exit_layers, reference.exit_layers)
    assert not torch.equal(override.exit_layers, with_config.exit_layers)

    regression = make_model(variant, 1, patience=1, regression_threshold=0.1)
    set_classifier_outputs(regression, [[0.5]] * num_layers)  # every layer agrees: exit at layer 2 unless threshold 0
    assert regression(**inputs).exit_layers.tolist() == [2] * len(LENGTHS)
    override = regression(**inputs, regression_threshold=0.0)  # 0.0 is falsy too
    assert override.exit_layers.tolist() == [num_layers] * len(LENGTHS)
    assert regression.config.regression_threshold == 0.1
    assert regression(**inputs).exit_layers.tolist() == [2] * len(LENGTHS)


@pytest.mark.parametrize("variant", ["bert", "albert"])
@pytest.mark.parametrize("patience", [-1, 1.5, "3", True, 2.0])
def test_bad_patience_raises(variant, patience):
    with pytest.raises(ValueError, match="patience must be an integer"):
        make_model(variant, 3, patience=patience)
    model = make_model(variant, 3)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    with pytest.raises(ValueError, match="patience must be an integer"):
        model(input_ids, attention_mask=attention_mask, patience=patience)


@pytest.mark.parametrize("variant", ["bert", "albert"])
@pytest.mark.parametrize("patience", [np.int64(2), torch.tensor(2)], ids=["numpy", "torch"])
@torch.no_grad()
def test_numpy_and_torch_integer_patience_act_as_int(variant, patience):
    input_ids, attention_mask, _ = make_batch()
    expected = make_model(variant, 3)(input_ids, attention_mask=attention_mask, patience=2)
    model = make_model(variant, 3, patience=patience)
    assert type(model.config.patience) is int and model.config.patience == 2  # so the config still saves as JSON
    assert torch.equal(model(input_ids, attention_mask=attention_mask).exit_layers, expected.exit_layers)
    assert torch.equal(make_model(variant, 3)(input_ids, attention_mask=attention_mask, patience=patience).exit_layers,
                       expected.exit_layers)
    for bad in (np.float64(2.0), torch.tensor([1, 2]), torch.tensor(True), np.int64(-1)):
        with pytest.raises(ValueError, match="patience must be an integer"):
            model(input_ids, attention_mask=attention_mask, patience=bad)


@pytest.mark.parametrize("variant", ["bert", "albert"])
@pytest.mark.parametrize("threshold", [-0.1, float("nan"), "0.1"])
def test_bad_regression_threshold_raises(variant, threshold):
    with pytest.raises(ValueError, match="regression_threshold must be a number >= 0"):
        make_model(variant, 1, regression_threshold=threshold)
    model = make_model(variant, 1)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    with pytest.raises(ValueError, match="regression_threshold must be a number >= 0"):
        model(input_ids, attention_mask=attention_mask, patience=1, regression_threshold=threshold)


@pytest.mark.parametrize("variant", ["bert", "albert"])
def test_bad_num_labels_raises(variant):
    config = make_config(variant, 3)
    config.num_labels = 0
    with pytest.raises(ValueError, match="num_labels must be >= 1"):
        FAMILIES[VARIANTS[variant][0]][3](config)


@pytest.mark.parametrize("variant", ["bert", "albert"])
def test_unknown_exit_pooling_raises(variant):
    with pytest.raises(ValueError, match="exit_pooling must be one of pooler, mean"):
        make_model(variant, 3, exit_pooling="max")
    model = make_model(variant, 3)
    model.config.exit_pooling = "cls"
    input_ids, attention_mask, _ = make_batch(config=model.config)
    with pytest.raises(ValueError, match="exit_pooling"):
        model(input_ids, attention_mask=attention_mask)


def test_defaults_are_written_to_the_config():
    model = make_model("bert", 3)
    assert (model.config.patience, model.config.regression_threshold, model.config.exit_pooling) == (0, 0.1, "pooler")


# ---------------------------------------------------------------------------------------------------------------------
# The modeling files stand alone: a family's file and the shared module, copied together, need only torch and
# transformers


@pytest.mark.parametrize("path", MODELING_FILES, ids=lambda p: p.name)
def test_modeling_file_imports_only_torch_transformers_and_the_shared_module(path):
    allowed = {"torch", "transformers", "contextlib", "dataclasses", "__future__", "typing", "math"}
    imported, relative = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            relative.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported and imported <= allowed, imported - allowed
    expected_relative = set() if path.name == "modeling_pabee.py" else {"modeling_pabee"}
    assert relative == expected_relative, f"{path.name} must import only the shared module of this package"


# ---------------------------------------------------------------------------------------------------------------------
# Other exit criteria (entropy, confidence) and the uniform loss weighting


def entropy_and_confidence(logits):
    probabilities = logits.softmax(dim=-1)
    entropy = -(probabilities * probabilities.log()).sum(dim=-1)
    return entropy, probabilities.max(dim=-1).values


def reference_threshold_rule(layer_logits, criterion, threshold):
    """The first layer whose entropy is below (or top probability above) the threshold, else the last: by hand."""
    for layer, logits in enumerate(layer_logits[:-1], start=1):
        entropy, confidence = entropy_and_confidence(logits)
        if (criterion == "entropy" and entropy < threshold) or (criterion == "confidence" and confidence > threshold):
            return layer
    return len(layer_logits)


def criterion_thresholds(model, criterion):
    """Thresholds at quantiles of the batch's own per-layer entropies or confidences, so that exits spread out."""
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    layer_logits = plain_layer_logits(model, input_ids, attention_mask, token_type_ids)
    entropy, confidence = entropy_and_confidence(layer_logits)
    values = entropy if criterion == "entropy" else confidence
    return [float(q) for q in torch.quantile(values.flatten(), torch.tensor([0.2, 0.5, 0.8]))]


@pytest.mark.parametrize("criterion", ["entropy", "confidence"])
@pytest.mark.parametrize("variant", MAIN_VARIANTS)
@torch.no_grad()
def test_threshold_criteria_batched_equal_one_at_a_time_and_the_rule_by_hand(variant, criterion):
    model = make_model(variant, 3)
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    layer_logits = plain_layer_logits(model, input_ids, attention_mask, token_type_ids)
    spread = False
    for threshold in criterion_thresholds(model, criterion):
        kwargs = dict(exit_criterion=criterion, exit_threshold=threshold)
        batched = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        for b in range(len(LENGTHS)):
            alone = model(**example_inputs(input_ids, attention_mask, token_type_ids, b), **kwargs)
            assert int(alone.exit_layers[0]) == int(batched.exit_layers[b]), (threshold, b)
            torch.testing.assert_close(batched.logits[b], alone.logits[0], rtol=0, atol=1e-5)
            expected = reference_threshold_rule(layer_logits[b], criterion, threshold)
            assert int(batched.exit_layers[b]) == expected, (threshold, b)
        simulated = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                          output_all_layer_logits=True, **kwargs)
        assert torch.equal(simulated.exit_layers, batched.exit_layers)
        torch.testing.assert_close(simulated.logits, batched.logits, rtol=0, atol=1e-5)
        spread = spread or has_spread(batched.exit_layers, num_layers)
    assert spread, "no threshold gave examples different exit layers"


@pytest.mark.parametrize("criterion, threshold", [("entropy", 0.5), ("confidence", 0.5), ("patience", None)])
@pytest.mark.parametrize("variant", ["bert", "albert"])
@torch.no_grad()
def test_one_layer_model_answers_with_its_only_classifier(variant, criterion, threshold):
    model = make_model(variant, 3, num_hidden_layers=1)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    kwargs = dict(exit_criterion=criterion, exit_threshold=threshold, patience=1)
    real = model(input_ids, attention_mask=attention_mask, **kwargs)
    simulated = model(input_ids, attention_mask=attention_mask, output_all_layer_logits=True, **kwargs)
    assert real.exit_layers.tolist() == simulated.exit_layers.tolist() == [1] * len(LENGTHS)
    torch.testing.assert_close(simulated.logits, real.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(simulated.all_layer_logits[:, 0], real.logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["bert", "albert"])
@torch.no_grad()
def test_confidence_threshold_extremes(variant):
    model = make_model(variant, 3)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    # Any top-class probability is above 0: everyone answers at layer 1. None is above 1: everyone runs every layer.
    first = model(input_ids, attention_mask=attention_mask, exit_criterion="confidence", exit_threshold=0.0)
    assert first.exit_layers.tolist() == [1] * len(LENGTHS)
    last = model(input_ids, attention_mask=attention_mask, exit_criterion="confidence", exit_threshold=1.0)
    assert last.exit_layers.tolist() == [model.config.num_hidden_layers] * len(LENGTHS)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(exit_criterion="depth"), "exit_criterion"),
        (dict(exit_criterion="entropy"), "exit_threshold"),
        (dict(exit_criterion="entropy", exit_threshold=-1.0), "exit_threshold"),
        (dict(exit_criterion="confidence", exit_threshold=1.5), "probability"),
    ],
)
def test_bad_exit_criterion_settings_raise(settings, message):
    model = make_model("bert", 3)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    with pytest.raises(ValueError, match=message):
        model(input_ids, attention_mask=attention_mask, **settings)


def test_regression_exits_by_patience_only():
    model = make_model("bert", 1)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    with pytest.raises(ValueError, match="regression"):
        model(input_ids, attention_mask=attention_mask, exit_criterion="entropy", exit_threshold=0.5)
    with pytest.raises(ValueError, match="regression"):
        make_model("bert", 1, exit_criterion="confidence", exit_threshold=0.9)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_uniform_layer_loss_weights(task):
    model = make_model("bert", NUM_LABELS[task], layer_loss_weights="uniform", **no_dropout("bert")).train()
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    labels = make_labels(task, len(LENGTHS))
    out = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels)
    with torch.no_grad():
        layer_logits = plain_layer_logits(model, input_ids, attention_mask, token_type_ids)
    if task == "classification":
        per_layer = [nn.functional.cross_entropy(layer_logits[:, i], labels) for i in range(layer_logits.shape[1])]
    else:
        per_layer = [((layer_logits[:, i, 0] - labels) ** 2).mean() for i in range(layer_logits.shape[1])]
    torch.testing.assert_close(out.loss, torch.stack(per_layer).mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="layer_loss_weights"):
        make_model("bert", 3, layer_loss_weights="quadratic")


def test_new_settings_survive_save_and_load(tmp_path):
    model = make_model("albert", 3, exit_criterion="entropy", exit_threshold=0.3, layer_loss_weights="uniform")
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    assert (reloaded.config.exit_criterion, reloaded.config.exit_threshold) == ("entropy", 0.3)
    assert reloaded.config.layer_loss_weights == "uniform"


@pytest.mark.parametrize("variant", ["bert", "albert"])
@torch.no_grad()
def test_threshold_criteria_are_strict(variant):
    model = make_model(variant, 3)
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask, _ = make_batch(config=model.config)
    # Equal logits: top probability exactly 1/3 and entropy exactly log(3) at every layer, equal to the thresholds.
    set_classifier_outputs(model, [[0.0, 0.0, 0.0]] * num_layers)
    uniform = torch.full((3,), 1 / 3)
    for criterion, threshold in [("confidence", uniform.max().item()), ("entropy", -(uniform * uniform.log()).sum())]:
        kwargs = dict(exit_criterion=criterion, exit_threshold=float(threshold))
        out = model(input_ids, attention_mask=attention_mask, **kwargs)
        assert out.exit_layers.tolist() == [num_layers] * len(LENGTHS), criterion


def test_last_layer_loss_weights_are_plain_fine_tuning():
    model = make_model("bert", 3, layer_loss_weights="last", **no_dropout("bert")).train()
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    labels = make_labels("classification", len(LENGTHS))
    out = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels)
    with torch.no_grad():
        layer_logits = plain_layer_logits(model, input_ids, attention_mask, token_type_ids)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(layer_logits[:, -1], labels), rtol=1e-5,
                               atol=1e-6)
    out.loss.backward()
    # Only the last classifier learns; the others get zero gradient.
    assert all(not classifier.weight.grad.any() for classifier in model.classifiers[:-1])
    assert model.classifiers[-1].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------------
# What differs between the families


@pytest.mark.parametrize("variant", NEW_FAMILY_VARIANTS + HEAD_FAMILY_VARIANTS)
@torch.no_grad()
def test_mean_pooling_models_have_no_pooler(variant, tmp_path):
    """Where the pooler is not pretrained, a model whose classifiers do not read it does not carry it."""
    family = VARIANTS[variant][0]
    prefix = PREFIXES[family]
    torch.manual_seed(3)
    FAMILIES[family][1](make_config(variant, 3)).save_pretrained(tmp_path)
    model, info = FAMILIES[family][3].from_pretrained(tmp_path, exit_pooling="mean", output_loading_info=True)
    assert {key.split(".")[0] for key in info["missing_keys"]} == {"classifiers"}
    assert not any(key.startswith(f"{prefix}.{HEAD_NAMES.get(family, 'pooler')}.") for key in model.state_dict())
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    model.eval()(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=1)
    model.config.exit_pooling = "pooler"
    with pytest.raises(ValueError, match="without a (pooler|head): load it again with exit_pooling='pooler'"):
        model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def test_distilbert_refuses_token_types():
    model = make_model("distilbert", 3)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    with pytest.raises(ValueError, match="DistilBERT has no token type embeddings"):
        model(input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids))


def test_modernbert_refuses_token_types_and_position_ids():
    model = make_model("modernbert", 3)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    with pytest.raises(ValueError, match="ModernBERT has no token type embeddings"):
        model(input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids))
    with pytest.raises(ValueError, match="leave position_ids out"):
        model(input_ids, attention_mask=attention_mask, position_ids=torch.arange(input_ids.shape[1])[None])


@torch.no_grad()
def test_deberta_v3_takes_no_token_types_as_transformers_does():
    """DeBERTa-v3 has none (type_vocab_size 0): token types given, as its tokenizer makes them, change nothing."""
    model = make_model("deberta_v3", 3)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    _, _, token_type_ids = make_batch()  # half of each example of type 1
    assert token_type_ids.any()
    without = model(input_ids, attention_mask=attention_mask, patience=1)
    given = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=1)
    assert torch.equal(given.logits, without.logits) and torch.equal(given.exit_layers, without.exit_layers)


@pytest.mark.parametrize(
    "variant, settings, expected",
    [
        ("bert", dict(hidden_dropout_prob=0.3, classifier_dropout=0.2), 0.3),  # the reference's choice
        ("albert", dict(hidden_dropout_prob=0.3, classifier_dropout_prob=0.2), 0.3),
        ("roberta", dict(hidden_dropout_prob=0.3, classifier_dropout=0.2), 0.2),  # RobertaClassificationHead's
        ("roberta", dict(hidden_dropout_prob=0.3), 0.3),
        ("electra", dict(hidden_dropout_prob=0.3, classifier_dropout=0.2), 0.2),  # ElectraClassificationHead's
        ("distilbert", dict(dropout=0.3, seq_classif_dropout=0.2), 0.2),  # DistilBertForSequenceClassification's
        ("modernbert", dict(mlp_dropout=0.3, classifier_dropout=0.2), 0.2),  # ModernBertForSequenceClassification's
        ("deberta_v3", dict(hidden_dropout_prob=0.3, cls_dropout=0.2), 0.2),  # DebertaV2ForSequenceClassification's
        ("deberta_v3", dict(hidden_dropout_prob=0.3), 0.3),
    ],
)
def test_classifier_dropout_is_the_familys_own(variant, settings, expected):
    assert make_model(variant, 3, **settings).dropout.p == expected


# The confidence gate on the patience counter


def reference_gated_patience_rule(layer_logits, patience, exit_confidence):
    """
    Gated patience as the README states it, for ONE example (`layer_logits`: a list of (num_labels,) tensors): a
    layer counts toward patience only if its class equals the previous layer's and its top-class probability is at
    least `exit_confidence`. Returns the exit layer, 1-based.
    """
    counter, previous = 0, None
    for i, logits in enumerate(layer_logits):
        probabilities = torch.softmax(logits.double(), dim=-1)
        confident = float(probabilities.max()) >= exit_confidence
        counts = previous is not None and int(logits.argmax()) == previous and confident
        counter = counter + 1 if counts else 0
        previous = int(logits.argmax())
        if patience and counter == patience:
            return i + 1
    return len(layer_logits)


def gates_between_probabilities(model, input_ids, attention_mask, token_type_ids, quantiles=(0.3, 0.6)):
    """
    Gates that fall between the batch's top-class probabilities (never on one, where float rounding could decide),
    at the given quantiles of them: gates that change some exits but not all.
    """
    with torch.no_grad():
        logits = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                       output_all_layer_logits=True).all_layer_logits
    top = torch.unique(logits.softmax(dim=-1).amax(dim=-1).flatten())  # sorted
    return [float(top[int(q * (len(top) - 1))] + top[int(q * (len(top) - 1)) + 1]) / 2 for q in quantiles]


@pytest.mark.parametrize("variant", MAIN_VARIANTS)
@torch.no_grad()
def test_gated_patience_batched_equals_one_at_a_time_simulation_and_reference(variant):
    model = make_model(variant, 3)
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    gates = gates_between_probabilities(model, input_ids, attention_mask, token_type_ids)
    layer_logits = plain_layer_logits(model, input_ids, attention_mask, token_type_ids)

    gate_mattered = False
    for patience in (1, 2, 3):
        pabee = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=patience)
        for gate in gates:
            kwargs = dict(patience=patience, exit_confidence=gate)
            batched = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
            simulated = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              output_all_layer_logits=True, **kwargs)
            assert torch.equal(simulated.exit_layers, batched.exit_layers), (patience, gate)
            torch.testing.assert_close(simulated.logits, batched.logits, rtol=0, atol=1e-5)
            for b in range(len(LENGTHS)):
                alone = model(**example_inputs(input_ids, attention_mask, token_type_ids, b), **kwargs)
                assert int(alone.exit_layers[0]) == int(batched.exit_layers[b]), (patience, gate, b)
                torch.testing.assert_close(batched.logits[b], alone.logits[0], rtol=0, atol=1e-5)
                expected = reference_gated_patience_rule(list(layer_logits[b]), patience, gate)
                assert int(batched.exit_layers[b]) == expected, (patience, gate, b)
            # A gate can only delay an exit.
            assert (batched.exit_layers >= pabee.exit_layers).all()
            gate_mattered = gate_mattered or not torch.equal(batched.exit_layers, pabee.exit_layers)
            if patience < num_layers - 1:
                assert int(batched.exit_layers.min()) >= patience + 1
    assert gate_mattered, "no gate changed an exit layer: the test would not exercise the gate"


@pytest.mark.parametrize("variant", MAIN_VARIANTS)
@torch.no_grad()
def test_gate_zero_is_exactly_pabee(variant):
    model = make_model(variant, 3)
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    layer_logits = plain_layer_logits(model, input_ids, attention_mask, token_type_ids)
    for patience in patience_values(num_layers):
        # 0 turns the gate off; a gate below every probability runs the gate and must let every layer count.
        for gate in (0.0, 0, 1e-9):
            out = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=patience,
                        exit_confidence=gate)
            expected = [reference_patience_rule(list(layer_logits[b]), patience, 0.1)[0] for b in range(len(LENGTHS))]
            assert out.exit_layers.tolist() == expected, (patience, gate)
            assert torch.equal(patience_exit_layers(layer_logits, patience, 0.1, gate),
                               patience_exit_layers(layer_logits, patience, 0.1)), (patience, gate)


@pytest.mark.parametrize(
    "probabilities, patience, gate, expected",
    [
        # class 0 at every layer; top-class probabilities per layer. A doubtful layer resets the counter.
        ([0.9, 0.6, 0.9, 0.9], 2, 0.7, 4),
        ([0.9, 0.6, 0.9, 0.9], 2, 0.0, 3),
        ([0.9, 0.6, 0.9, 0.9], 1, 0.7, 3),
        ([0.9, 0.6, 0.9, 0.9], 1, 0.6, 2),  # "at least": a probability equal to the gate counts
        ([0.5, 0.9, 0.9, 0.9], 1, 0.7, 2),  # layer 1's own confidence does not matter, only the counting layers'
        ([0.9, 0.9, 0.65, 0.9], 3, 0.7, 4),  # never three in a row: the last layer answers
    ],
)
def test_gate_on_hand_made_probabilities(probabilities, patience, gate, expected):
    # Two classes with p(class 0) = p: logits (log p, log(1 - p)).
    probabilities = torch.tensor(probabilities, dtype=torch.float64)
    logits = torch.stack([probabilities.log(), (1 - probabilities).log()], dim=-1)[None]  # (1, 4, 2)
    assert patience_exit_layers(logits, patience, 0.1, gate).tolist() == [expected]


@pytest.mark.parametrize("variant", ["bert", "albert"])
@pytest.mark.parametrize("gate", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_bad_exit_confidence_raises(variant, gate):
    model = make_model(variant, 3)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    if gate is not None:  # None in the constructor means "the default"
        with pytest.raises(ValueError, match=r"exit_confidence must be a probability in \[0, 1\]"):
            make_model(variant, 3, exit_confidence=gate)
        with pytest.raises(ValueError, match=r"exit_confidence must be a probability in \[0, 1\]"):
            model(input_ids, attention_mask=attention_mask, patience=1, exit_confidence=gate)  # for one call
    model.config.patience, model.config.exit_confidence = 1, gate  # saved with the model
    with pytest.raises(ValueError, match=r"exit_confidence must be a probability in \[0, 1\]") as error:
        model(input_ids, attention_mask=attention_mask)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("variant", ["bert", "albert"])
def test_gate_on_regression_is_refused(variant):
    with pytest.raises(ValueError, match="regression"):
        make_model(variant, 1, exit_confidence=0.5)
    model = make_model(variant, 1)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    with pytest.raises(ValueError, match="regression"):
        model(input_ids, attention_mask=attention_mask, patience=1, exit_confidence=0.5)
    assert model(input_ids, attention_mask=attention_mask, patience=1, exit_confidence=0.0).logits.shape[-1] == 1


# ---------------------------------------------------------------------------------------------------------------------
# Training options that strengthen the shallow classifiers


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("variant", ["bert", "albert"])
def test_self_distillation_loss_by_hand(variant, task):
    weight, temperature = 0.7, 2.0
    model = make_model(variant, NUM_LABELS[task], self_distillation_weight=weight,
                       self_distillation_temperature=temperature, **no_dropout(variant)).train()
    num_layers = model.config.num_hidden_layers
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    labels = make_labels(task, len(LENGTHS))
    loss = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels).loss

    with torch.no_grad():
        z = plain_layer_logits(model, input_ids, attention_mask, token_type_ids).double().numpy()  # (batch, L, C)
    y = labels.numpy()
    if task == "classification":
        def log_softmax(x):
            x = x - x.max(axis=-1, keepdims=True)
            return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

        per_layer = [-log_softmax(z[:, i])[np.arange(len(y)), y].mean() for i in range(num_layers)]
        teacher = np.exp(log_softmax(z[:, -1] / temperature))
        distillation = [
            temperature**2 * (teacher * (np.log(teacher) - log_softmax(z[:, i] / temperature))).sum(axis=-1).mean()
            for i in range(num_layers - 1)
        ]
    else:
        per_layer = [((z[:, i, 0] - y) ** 2).mean() for i in range(num_layers)]
        distillation = [((z[:, i, 0] - z[:, -1, 0]) ** 2).mean() for i in range(num_layers - 1)]
    supervised = sum((i + 1) * value for i, value in enumerate(per_layer)) / sum(range(1, num_layers + 1))
    expected = supervised + weight * np.mean(distillation)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert weight * np.mean(distillation) > 0.01 * supervised  # the distillation term is there to be checked


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("variant", ["bert", "albert"])
def test_self_distillation_trains_every_classifier_but_not_its_teacher(variant, task):
    """With only the last layer's supervised loss, the lower classifiers learn from distillation alone."""
    input_ids, attention_mask, token_type_ids = make_batch()
    labels = make_labels(task, len(LENGTHS))
    gradients = {}
    for weight in (0.0, 1.0):
        model = make_model(variant, NUM_LABELS[task], layer_loss_weights="last", self_distillation_weight=weight,
                           self_distillation_temperature=3.0, **no_dropout(variant)).train()
        model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels).loss.backward()
        gradients[weight] = [classifier.weight.grad.clone() for classifier in model.classifiers]
    assert all(float(gradient.abs().sum()) == 0 for gradient in gradients[0.0][:-1])
    assert all(float(gradient.abs().sum()) > 0 for gradient in gradients[1.0])
    # The teacher is detached: distillation leaves the last classifier's gradient as it was.
    torch.testing.assert_close(gradients[1.0][-1], gradients[0.0][-1], rtol=1e-6, atol=1e-8)


def backbone_gradients(model, input_ids, attention_mask, labels):
    model(input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


@pytest.mark.parametrize(
    "num_layers, layer_loss_weights, expected_scales",
    [
        # Only the last classifier's loss: layer i (1-based) of L gets it through the L - i deeper layers, each
        # passing on (k - 1)/k of what it receives: a product that telescopes to 1/(L - i + 1).
        (3, "last", [1 / 3, 1 / 2, 1]),
        (4, "last", [1 / 4, 1 / 3, 1 / 2, 1]),
        # Two layers, any loss weights: layer 1 receives half of (its own classifier's + layer 2's), layer 2 all.
        (2, "linear", [1 / 2, 1]),
        (2, "uniform", [1 / 2, 1]),
    ],
)
def test_gradient_equilibrium_rescales_backbone_gradients(num_layers, layer_loss_weights, expected_scales):
    input_ids, attention_mask, _ = make_batch()
    labels = make_labels("classification", len(LENGTHS))
    models = {
        equilibrium: make_model("bert", 3, num_hidden_layers=num_layers, layer_loss_weights=layer_loss_weights,
                                gradient_equilibrium=equilibrium, **no_dropout("bert")).train()
        for equilibrium in (False, True)
    }
    losses = [model(input_ids, attention_mask=attention_mask, labels=labels).loss for model in models.values()]
    assert float(losses[0]) == float(losses[1])  # the forward pass is unchanged
    plain = backbone_gradients(models[False], input_ids, attention_mask, labels)
    rescaled = backbone_gradients(models[True], input_ids, attention_mask, labels)
    for name, gradient in plain.items():
        if name.startswith("bert.encoder.layer."):
            scale = expected_scales[int(name.split(".")[3])]
        elif name.startswith("bert.embeddings."):
            scale = expected_scales[0]  # everything below layer 1 gets what layer 1 passes down
        else:  # the pooler and the classifiers read the layers: their own gradients are not rescaled
            scale = 1.0
        if name.startswith("bert."):
            assert float(gradient.abs().sum()) > 0, name  # else the comparison below would prove nothing
        torch.testing.assert_close(rescaled[name], scale * gradient, rtol=1e-4, atol=1e-9, msg=name)


@pytest.mark.parametrize("variant", ["bert", "albert"])
@torch.no_grad()
def test_training_options_leave_evaluation_unchanged(variant):
    """Self-distillation and gradient equilibrium act on training only: the same weights answer the same."""
    input_ids, attention_mask, token_type_ids = make_batch()
    plain = make_model(variant, 3)
    options = make_model(variant, 3, self_distillation_weight=1.0, self_distillation_temperature=2.0,
                         gradient_equilibrium=True)
    for patience in (0, 1, 2):
        for kwargs in ({}, {"output_all_layer_logits": True}):
            expected = plain(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             patience=patience, **kwargs)
            out = options(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=patience,
                          **kwargs)
            assert torch.equal(out.exit_layers, expected.exit_layers) and torch.equal(out.logits, expected.logits)


@pytest.mark.parametrize(
    "setting, message",
    [
        (dict(self_distillation_weight=-1.0), "self_distillation_weight must be a number >= 0"),
        (dict(self_distillation_weight=float("nan")), "self_distillation_weight must be a number >= 0"),
        (dict(self_distillation_temperature=0.0), "self_distillation_temperature must be a number > 0"),
        (dict(self_distillation_temperature=-2.0), "self_distillation_temperature must be a number > 0"),
        (dict(gradient_equilibrium="yes"), "gradient_equilibrium must be True or False"),
    ],
)
def test_bad_training_options_raise(setting, message):
    with pytest.raises(ValueError, match=message):
        make_model("bert", 3, **setting)


@pytest.mark.parametrize("variant", ["bert", "albert"])
def test_save_and_load_keeps_training_options_and_gate(variant, tmp_path):
    settings = dict(exit_confidence=0.7, self_distillation_weight=0.5, self_distillation_temperature=3.0,
                    gradient_equilibrium=True)
    make_model(variant, 3, **settings).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {name: saved[name] for name in settings} == settings
    loaded = FAMILIES[VARIANTS[variant][0]][3].from_pretrained(tmp_path)
    assert {name: getattr(loaded.config, name) for name in settings} == settings
