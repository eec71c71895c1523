"""Left-padded batches (a tokenizer with padding_side="left") give the answers of right-padded ones, and of each
example run alone, in every family, for both exit poolings, classification and regression.

    python -m pytest tests/test_left_padding.py -q
"""

import pytest
import torch

from test_modeling import NUM_LABELS, make_batch, make_model

# DeBERTa with its convolution after layer 1, which mixes each token with its neighbours, padding included
FAMILY_VARIANTS = ["bert", "albert", "roberta", "xlm_roberta", "distilbert", "electra", "modernbert", "deberta_v2"]
LENGTHS = [12, 3, 7, 1, 9, 5]


def left_padded(tensor, attention_mask, pad_value):
    """`tensor` (right-padded) with each example's tokens moved to the end of its row, padding before them."""
    moved = torch.full_like(tensor, pad_value)
    for row, length in enumerate(attention_mask.sum(dim=1).tolist()):
        moved[row, tensor.shape[1] - length:] = tensor[row, :length]
    return moved


def inputs(input_ids, attention_mask, token_type_ids):
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            **({} if token_type_ids is None else {"token_type_ids": token_type_ids})}


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("exit_pooling", ["mean", "pooler"])
@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
@torch.no_grad()
def test_left_padding_answers_as_right_padding_and_as_alone(variant, exit_pooling, task):
    model = make_model(variant, NUM_LABELS[task], exit_pooling=exit_pooling)
    input_ids, attention_mask, token_type_ids = make_batch(LENGTHS, config=model.config)
    pad_token_id = model.config.pad_token_id or 0
    left = inputs(left_padded(input_ids, attention_mask, pad_token_id), left_padded(attention_mask, attention_mask, 0),
                  None if token_type_ids is None else left_padded(token_type_ids, attention_mask, 0))
    assert left["attention_mask"][:, 0].tolist() == [1, 0, 0, 0, 0, 0]  # padding first, but for the longest

    for patience in (0, 1, 2):
        right_output = model(**inputs(input_ids, attention_mask, token_type_ids), patience=patience)
        left_output = model(**left, patience=patience)
        torch.testing.assert_close(left_output.logits, right_output.logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(left_output.exit_layers, right_output.exit_layers), patience
        for row, length in enumerate(LENGTHS):
            alone = model(**inputs(input_ids[row:row + 1, :length], attention_mask[row:row + 1, :length],
                                   None if token_type_ids is None else token_type_ids[row:row + 1, :length]),
                          patience=patience)
            torch.testing.assert_close(left_output.logits[row:row + 1], alone.logits, rtol=1e-5, atol=1e-5)
            assert left_output.exit_layers[row] == alone.exit_layers[0]

    # Every layer's logits too, and the training forward's loss.
    every_layer = model(**left, output_all_layer_logits=True).all_layer_logits
    expected = model(**inputs(input_ids, attention_mask, token_type_ids), output_all_layer_logits=True)
    torch.testing.assert_close(every_layer, expected.all_layer_logits, rtol=1e-5, atol=1e-5)
    labels = torch.zeros(len(LENGTHS), dtype=torch.long) if task == "classification" else torch.zeros(len(LENGTHS))
    model.train()
    losses = []
    for batch in (left, inputs(input_ids, attention_mask, token_type_ids)):
        torch.manual_seed(0)  # the same dropout masks
        losses.append(model(**batch, labels=labels).loss)
    torch.testing.assert_close(losses[0], losses[1])


@torch.no_grad()
def test_left_padding_with_given_position_ids_keeps_them_with_their_tokens():
    """Position ids given for a left-padded batch (counting from its first token, as generation code makes them)
    follow their tokens: the answers are right padding's with its own positions."""
    model = make_model("bert", 3)
    input_ids, attention_mask, token_type_ids = make_batch(LENGTHS, config=model.config)
    left_mask = left_padded(attention_mask, attention_mask, 0)
    left_positions = (left_mask.cumsum(dim=1) - 1).clamp(min=0)
    left = model(left_padded(input_ids, attention_mask, 0), attention_mask=left_mask,
                 token_type_ids=left_padded(token_type_ids, attention_mask, 0), position_ids=left_positions, patience=1)
    right = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=1)
    torch.testing.assert_close(left.logits, right.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(left.exit_layers, right.exit_layers)
