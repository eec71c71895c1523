"""Learn then Test (pabee.selection): p-values and the fixed sequence against hand-computed values, the guarantee in
simulation, the exit layers of the real model, and the chosen setting saved with the model.

    python -m pytest tests/test_selection.py -q
"""

import math

import numpy as np
import pytest
import torch
from test_modeling import make_batch, make_model
from transformers import AutoModelForSequenceClassification

from pabee import BertForSequenceClassificationWithPabee
from pabee.evaluation import ExitSetting
from pabee.selection import (
    FULL_DEPTH,
    apply_to_config,
    binomial_p_value,
    candidate_outcomes,
    candidate_settings,
    fixed_sequence,
    largest_certifiable_losses,
    learn_then_test,
    parse_goal,
    risk_on,
    select_setting,
    split_for_ordering,
)


# ---------------------------------------------------------------------------------------------------------------------
# The procedure on hand-made numbers


@pytest.mark.parametrize("losses, n, delta, expected", [
    (0, 10, 0.1, 0.3486784401),  # 0.9^10
    (1, 10, 0.1, 0.7360989291),  # 0.9^10 + 10 * 0.1 * 0.9^9
    (0, 100, 0.05, 0.0059205292),  # 0.95^100
    (2, 20, 0.3, 0.0354831323),  # 0.7^20 + 20 * 0.3 * 0.7^19 + 190 * 0.09 * 0.7^18
    (10, 10, 0.5, 1.0),  # every example lost: no evidence at all
])
def test_binomial_p_value_by_hand(losses, n, delta, expected):
    assert binomial_p_value(losses, n, delta) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("n, delta, expected", [
    (10, 0.3, 0),  # 0 losses: 0.7^10 = 0.028 <= 0.05; 1 loss: 0.149
    (10, 0.1, -1),  # even none: 0.9^10 = 0.349
    (100, 0.05, 1),  # 0.95^100 + 100 * 0.05 * 0.95^99 = 0.037; 2 losses: 0.118
])
def test_largest_certifiable_losses_by_hand(n, delta, expected):
    assert largest_certifiable_losses(n, delta, 0.05) == expected


@pytest.mark.parametrize("p_values, expected", [
    ([0.01, 0.04, 0.06, 0.01], 2),  # stops at the first failure, even though a later one passes
    ([0.1, 0.01], 0),
    ([0.05, 0.05], 2),  # p <= epsilon certifies
    ([], 0),
])
def test_fixed_sequence_certifies_the_leading_run(p_values, expected):
    assert fixed_sequence(p_values, 0.05) == expected


def hand_made_outcomes():
    """
    Three candidates on 4 ordering examples (first) and 10 tested ones. On the ordering part A exits at layer 3 with
    no loss, B at layer 2 with no loss, C at 2.5 losing half: C is dominated by B (faster, less risk) and is not
    tested; A, as safe as B there, is tested first. Tested: A loses
    none, B loses one.
    """
    ordering = np.array([True] * 4 + [False] * 10)
    exit_layers = np.array([[3] * 4 + [3] * 10, [2] * 4 + [2] * 10, [2, 3, 2, 3] + [1] * 10])
    losses = np.zeros((3, 14), dtype=bool)
    losses[1, 4] = True  # B: one loss among the tested
    losses[2, [0, 1]] = True  # C: half of the ordering part
    return exit_layers, losses, ordering


def test_learn_then_test_by_hand():
    exit_layers, losses, ordering = hand_made_outcomes()
    # delta 0.3, n = 10: A's p-value is 0.7^10 = 0.0282 (certified at 0.05), B's 0.7^10 + 10 * 0.3 * 0.7^9 = 0.1493.
    chosen, steps = learn_then_test(exit_layers, losses, 0.3, 0.05, ordering)
    assert [step.index for step in steps] == [0, 1]  # slowest first; C dropped
    assert [step.p_value for step in steps] == pytest.approx([0.0282475249, 0.1493083459])
    assert [step.certified for step in steps] == [True, False]
    assert chosen == 0
    # At epsilon 0.2 both pass, and the faster one is chosen.
    chosen, steps = learn_then_test(exit_layers, losses, 0.3, 0.2, ordering)
    assert [step.certified for step in steps] == [True, True] and chosen == 1


def test_a_failure_stops_the_sequence_before_a_faster_safe_candidate():
    """The fixed sequence never skips a failed candidate: the faster one after it is not certified."""
    exit_layers, losses, ordering = hand_made_outcomes()
    losses[0, 4:7] = True  # A now loses 3 of the 10 tested (p = 0.65): the sequence stops there
    chosen, steps = learn_then_test(exit_layers, losses, 0.3, 0.2, ordering)
    assert chosen is None and [step.certified for step in steps] == [False, False]


def test_equal_speed_on_the_ordering_part_keeps_the_listed_order():
    ordering = np.array([True, True, False, False, False])
    exit_layers = np.array([[2, 2, 1, 1, 1], [2, 2, 2, 2, 2]])  # the same speed on the ordering part
    losses = np.zeros((2, 5), dtype=bool)
    _, steps = learn_then_test(exit_layers, losses, 0.5, 0.2, ordering)
    assert [step.index for step in steps] == [0, 1]
    _, steps = learn_then_test(exit_layers[::-1].copy(), losses, 0.5, 0.2, ordering)
    assert [step.index for step in steps] == [0, 1]


def test_without_an_ordering_part_the_listed_order_is_tested():
    exit_layers, losses, _ = hand_made_outcomes()
    no_ordering = np.zeros(14, dtype=bool)
    _, steps = learn_then_test(exit_layers, losses, 0.3, 0.2, no_ordering)
    assert [step.index for step in steps] == [0, 1, 2]
    assert [step.losses for step in steps] == [0, 1, 2]


def test_candidates_go_from_the_safest_setting_of_each_rule():
    candidates = candidate_settings(num_layers=4, num_labels=2)
    patience = [c for c in candidates if c.criterion == "patience" and not c.confidence]
    assert patience == [ExitSetting("patience", 2), ExitSetting("patience", 1)]  # 3 = L - 1 never exits early
    gated = [c for c in candidates if c.confidence]
    assert gated[0] == ExitSetting("patience", 2, 0.95) and gated[-1] == ExitSetting("patience", 1, 0.55)
    entropy = [c.value for c in candidates if c.criterion == "entropy"]
    confidence = [c.value for c in candidates if c.criterion == "confidence"]
    assert entropy == sorted(entropy) and max(entropy) < math.log(2)
    assert confidence == sorted(confidence, reverse=True)
    assert candidate_settings(num_layers=4, num_labels=1) == patience  # regression: patience only


# ---------------------------------------------------------------------------------------------------------------------
# The guarantee, in simulation


def synthetic_logits(num_examples, num_layers, generator):
    """
    Two-class logits of every layer: each example has an easiness, each layer a margin towards the example's
    full-depth class that grows with depth, plus noise, so shallow answers often differ from the full-depth one and
    the rules' risks spread from 0 to well over 10%. The last layer always gives the example's class.
    """
    classes = generator.integers(0, 2, num_examples) * 2 - 1  # +-1
    easiness = generator.normal(size=(num_examples, 1))
    depth = np.arange(1, num_layers + 1)[None, :]
    margins = 0.8 * depth - 1.5 + 1.5 * easiness + generator.normal(size=(num_examples, num_layers))
    margins[:, -1] = np.abs(margins[:, -1]) + 0.1
    logits = np.zeros((num_examples, num_layers, 2), dtype=np.float32)
    logits[..., 1] = classes[:, None] * margins
    return logits


def test_the_guarantee_holds_at_the_stated_rate_over_calibration_draws():
    """
    A population of 20,000 synthetic examples is the true distribution: each candidate's risk is its share of losses
    there. 300 calibration sets of 400 examples are drawn from it (with replacement) and each chooses a setting at
    delta 0.05, epsilon 0.1. The chosen setting's true risk may exceed delta in at most 10% of the draws (up to
    three binomial standard deviations: 45 of 300). Choosing in-sample (the fastest candidate whose risk on the
    calibration set is within delta) must fail far more often, or the test could not tell them apart.
    """
    generator = np.random.default_rng(0)
    population = synthetic_logits(20000, 6, generator)
    candidates = candidate_settings(6, 2)
    exit_layers, losses = candidate_outcomes(population, None, candidates, "consistency", 0.1)
    true_risk = losses.mean(axis=1)
    delta, epsilon, draws, n = 0.05, 0.1, 300, 400
    assert (true_risk > delta).sum() > 10 and (true_risk <= delta).sum() > 10  # risks on both sides of delta
    failures = certified = in_sample_failures = 0
    for draw in range(draws):
        sample = generator.integers(0, len(population), n)
        sample_layers, sample_losses = exit_layers[:, sample], losses[:, sample]
        chosen, _ = learn_then_test(sample_layers, sample_losses, delta, epsilon, split_for_ordering(n, 0.3, draw))
        if chosen is not None:
            certified += 1
            failures += true_risk[chosen] > delta
        within = np.flatnonzero(sample_losses.mean(axis=1) <= delta)
        in_sample = within[np.argmin(sample_layers[within].mean(axis=1))]
        in_sample_failures += true_risk[in_sample] > delta
    assert certified > draws / 2  # the procedure does choose early exit, not only full depth
    assert failures <= epsilon * draws + 3 * math.sqrt(epsilon * (1 - epsilon) * draws)
    assert in_sample_failures > 0.3 * draws


# ---------------------------------------------------------------------------------------------------------------------
# On a real model


@torch.no_grad()
def test_candidate_exit_layers_are_the_models_own():
    """Every candidate's exit layers from every layer's logits equal real early exit by the model on the same batch."""
    model = make_model("bert", 3)
    for classifier in model.classifiers:  # sharper distributions, so that the gates and thresholds are passed
        classifier.weight *= 6
        classifier.bias *= 6
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    all_layer_logits = model(**inputs, output_all_layer_logits=True).all_layer_logits.numpy()
    candidates = candidate_settings(model.config.num_hidden_layers, 3)
    exit_layers, _ = candidate_outcomes(all_layer_logits, None, candidates, "consistency", 0.1)
    spread = set()
    for setting, layers in zip(candidates, exit_layers):
        real = model(**inputs, **setting.model_kwargs(0.1)).exit_layers.numpy()
        np.testing.assert_array_equal(layers, real, err_msg=setting.label)
        if len(set(real.tolist())) > 1:
            spread.add(setting.rule.split(" 0")[0])
    assert spread == {"patience", "gated patience", "entropy", "confidence"}  # exits at several layers under each


def test_consistency_and_accuracy_drop_count_the_right_examples():
    # Two layers, three examples; the shallow layer answers (1, 0, 0), the last (1, 1, 0); labels (1, 1, 1).
    logits = np.zeros((3, 2, 2), dtype=np.float32)
    logits[[0], 0, 1] = 5
    logits[[1, 2], 0, 0] = 5
    logits[[0, 1], 1, 1] = 5
    logits[[2], 1, 0] = 5
    labels = np.array([1, 1, 1])
    first_layer = ExitSetting("confidence", 0.5)  # every example exits at layer 1
    assert risk_on(logits, None, first_layer, "consistency") == pytest.approx(1 / 3)  # example 1 differs
    # Example 1: right at full depth, wrong early. Example 2 is wrong both ways and does not count.
    assert risk_on(logits, labels, first_layer, "accuracy_drop") == pytest.approx(1 / 3)
    assert risk_on(logits, labels, FULL_DEPTH, "accuracy_drop") == 0


def test_nothing_certifiable_selects_full_depth_and_says_so():
    logits = synthetic_logits(5, 4, np.random.default_rng(1))  # 5 examples: even no loss gives p >= 0.99^5
    selection = select_setting(logits, None, "consistency", 0.01, 0.05)
    assert selection.setting == FULL_DEPTH and not selection.certified
    assert "nothing faster than full depth could be certified" in selection.reason
    assert selection.record()["certified"] is False


def test_selection_certifies_on_a_large_calibration_set():
    logits = synthetic_logits(3000, 6, np.random.default_rng(2))
    selection = select_setting(logits, None, "consistency", 0.05, 0.05, seed=3)
    assert selection.certified and selection.setting != FULL_DEPTH
    assert selection.calibration_examples == 3000 and selection.ordering_examples == 900
    assert selection.tested_examples == 2100 and selection.calibration_risk <= 0.05
    assert binomial_p_value(round(selection.calibration_risk * 2100), 2100, 0.05) == pytest.approx(selection.p_value)


@pytest.mark.parametrize("text", ["consistency:0", "consistency:1", "consistency:1.5", "consistency:-0.1",
                                  "consistency:nan", "consistency:x", "consistency", "accuracy:0.01", ""])
def test_bad_goals_are_value_errors(text):
    with pytest.raises(ValueError):
        parse_goal(text)


def test_goal_parses():
    assert parse_goal("accuracy_drop:0.01") == ("accuracy_drop", 0.01)


def test_bad_inputs_are_value_errors():
    logits = synthetic_logits(50, 4, np.random.default_rng(4))
    with pytest.raises(ValueError, match="accuracy_drop needs the labels"):
        select_setting(logits, None, "accuracy_drop", 0.05, 0.05)
    with pytest.raises(ValueError, match="empty"):
        select_setting(np.zeros((0, 4, 2), dtype=np.float32), None, "consistency", 0.05, 0.05)
    for delta in (0, 1, -0.5, float("nan")):
        with pytest.raises(ValueError, match="delta must be in"):
            select_setting(logits, None, "consistency", delta, 0.05)
    with pytest.raises(ValueError, match="epsilon must be in"):
        select_setting(logits, None, "consistency", 0.05, 1.0)
    with pytest.raises(ValueError, match="regression"):
        select_setting(logits[..., :1], None, "consistency", 0.05, 0.05)


# ---------------------------------------------------------------------------------------------------------------------
# Saved with the model


@pytest.mark.parametrize("setting", [ExitSetting("patience", 1, 0.6), ExitSetting("entropy", 0.3),
                                     ExitSetting("patience", 2)])
@torch.no_grad()
def test_selected_setting_survives_save_and_load_and_remote_code(setting, tmp_path):
    model = make_model("bert", 3)
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    expected = model(**inputs, **setting.model_kwargs(0.1)).exit_layers
    logits = synthetic_logits(20, 6, np.random.default_rng(5))
    selection = select_setting(logits, None, "consistency", 0.5, 0.5)
    selection.setting = setting  # whatever was chosen, it is what the config must carry
    apply_to_config(model.config, selection)
    model.save_pretrained(tmp_path)
    for loaded in (BertForSequenceClassificationWithPabee.from_pretrained(tmp_path),
                   AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)):
        loaded.eval()
        torch.testing.assert_close(loaded(**inputs).exit_layers, expected)  # the config's defaults are the setting
        record = loaded.config.exit_selection
        assert record["setting"] == setting.label and record["delta"] == 0.5 and record["epsilon"] == 0.5
        assert record["calibration_examples"] == 20 and "calibration_risk" in record
