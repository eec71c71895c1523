"""Tests of the slowdown defences: the depth cap `max_exit_layer` and the uncertainty guard `slowdown_guard`.

Each is checked in the real early-exit loop against the one-pass simulation (`output_all_layer_logits=True`), at any
batch size, for every exit criterion, and against hand-computed scores.

    python -m pytest tests/test_slowdown_defences.py -q
"""

import math

import pytest
import torch
from test_modeling import (
    LENGTHS,
    MAIN_VARIANTS,
    criterion_thresholds,
    example_inputs,
    make_batch,
    make_model,
    set_classifier_outputs,
)

from test_share_model import TEXTS, trained_folder  # noqa: F401 (a fixture)

from pabee.modeling_pabee import guard_flag_layers, uncertainty_scores


def exit_rules(model):
    """(name, forward keyword arguments) of every exit criterion, at settings that spread exits on the test batch."""
    return [
        ("full depth", dict(patience=0)),
        ("patience 1", dict(patience=1)),
        ("patience 2", dict(patience=2)),
        ("gated patience", dict(patience=1, exit_confidence=0.5)),
        ("entropy", dict(exit_criterion="entropy", exit_threshold=criterion_thresholds(model, "entropy")[1])),
        ("confidence", dict(exit_criterion="confidence",
                            exit_threshold=criterion_thresholds(model, "confidence")[1])),
    ]


def guard_thresholds(model):
    """Guards at quantiles of the batch's running scores, so that some examples are flagged and some not."""
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    out = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, output_all_layer_logits=True)
    scores = uncertainty_scores(out.all_layer_logits)
    running = scores.cumsum(dim=1) / torch.arange(1, scores.shape[1] + 1)
    return [float(q) for q in torch.quantile(running.flatten(), torch.tensor([0.3, 0.7]))]


def defences(model):
    num_layers = model.config.num_hidden_layers
    low, high = guard_thresholds(model)
    return [
        dict(max_exit_layer=2),
        dict(max_exit_layer=num_layers - 1),
        dict(slowdown_guard=low),
        dict(slowdown_guard=high),
        dict(max_exit_layer=2, slowdown_guard=low),
        dict(max_exit_layer=num_layers - 1, slowdown_guard=high),
    ]


@pytest.mark.parametrize("variant", MAIN_VARIANTS)
@torch.no_grad()
def test_defences_batched_equal_one_at_a_time_and_the_simulation(variant):
    model = make_model(variant, 3)
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    fired_somewhere, spared_somewhere = False, False
    for name, rule in exit_rules(model):
        for defence in defences(model):
            kwargs = {**rule, **defence}
            batched = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
            simulated = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              output_all_layer_logits=True, **kwargs)
            assert torch.equal(simulated.exit_layers, batched.exit_layers), (name, defence)
            torch.testing.assert_close(simulated.logits, batched.logits, rtol=0, atol=1e-5)
            if "slowdown_guard" in defence:
                assert torch.equal(simulated.guard_fired, batched.guard_fired), (name, defence)
                fired_somewhere = fired_somewhere or bool(batched.guard_fired.any())
                spared_somewhere = spared_somewhere or not bool(batched.guard_fired.all())
            else:
                assert batched.guard_fired is None and simulated.guard_fired is None
            for b in range(len(LENGTHS)):
                alone = model(**example_inputs(input_ids, attention_mask, token_type_ids, b), **kwargs)
                assert int(alone.exit_layers[0]) == int(batched.exit_layers[b]), (name, defence, b)
                torch.testing.assert_close(batched.logits[b], alone.logits[0], rtol=0, atol=1e-5)
                if "slowdown_guard" in defence:
                    assert bool(alone.guard_fired[0]) == bool(batched.guard_fired[b])
            if "max_exit_layer" in defence and "slowdown_guard" not in defence:
                assert int(batched.exit_layers.max()) <= defence["max_exit_layer"]
    assert fired_somewhere and spared_somewhere, "the guards chosen never split the batch: the test proves nothing"


@pytest.mark.parametrize("variant", ["bert", "albert"])
@pytest.mark.parametrize("cap", [1, 2, 3])
@torch.no_grad()
def test_cap_with_patience_zero_exits_every_example_at_the_cap(variant, cap):
    model = make_model(variant, 3)
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    out = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=0,
                max_exit_layer=cap)
    assert out.exit_layers.tolist() == [cap] * len(LENGTHS)
    every_layer = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        output_all_layer_logits=True)
    torch.testing.assert_close(out.logits, every_layer.all_layer_logits[:, cap - 1], rtol=0, atol=1e-5)


def hand_score(probabilities):
    """WAFFLE's score of one softmax, by hand: 1 - sum |p_k - 1/K| / (2 (1 - 1/K))."""
    k = len(probabilities)
    return 1 - sum(abs(p - 1 / k) for p in probabilities) / (2 * (1 - 1 / k))


def test_uncertainty_score_of_hand_built_logits():
    # Two classes, logits (0, log 3): softmax (1/4, 3/4); distance 1/2 of a largest 1: score 1/2.
    # Three classes, logits (0, 0, 0): uniform, score 1; (log 8, 0, 0): softmax (0.8, 0.1, 0.1), distance
    # 0.4667 + 0.2333 + 0.2333 = 0.9333 of 4/3: score 0.3.
    logits = torch.tensor([[0.0, math.log(3)]])
    assert uncertainty_scores(logits).item() == pytest.approx(0.5, abs=1e-6)
    three = torch.tensor([[0.0, 0.0, 0.0], [math.log(8), 0.0, 0.0]])
    torch.testing.assert_close(uncertainty_scores(three), torch.tensor([1.0, 0.3]), rtol=0, atol=1e-6)
    assert hand_score([0.8, 0.1, 0.1]) == pytest.approx(0.3)


@pytest.mark.parametrize("variant", ["bert", "albert"])
@torch.no_grad()
def test_guard_fires_where_the_hand_computed_running_score_passes(variant):
    model = make_model(variant, 2)
    num_layers = model.config.num_hidden_layers  # 6 (BERT), 4 (ALBERT)
    # Every example gets the same outputs: confident layers 1-2 (score 0.1 each), then unsure ones (score 0.9).
    confident, unsure = [0.0, math.log(19)], [0.0, math.log(1.1 / 0.9)]  # softmax (0.05, 0.95), (0.45, 0.55)
    assert hand_score([0.05, 0.95]) == pytest.approx(0.1) and hand_score([0.45, 0.55]) == pytest.approx(0.9)
    set_classifier_outputs(model, [confident, confident] + [unsure] * (num_layers - 2))
    # Running means: 0.1, 0.1, 0.3667, 0.5, 0.58, 0.6333
    running = [(0.1 * min(layer, 2) + 0.9 * max(layer - 2, 0)) / layer for layer in range(1, num_layers + 1)]
    input_ids, attention_mask, _ = make_batch(config=model.config)
    for guard in [0.05, 0.2, 0.45, 0.95]:
        flag_layer = next((layer for layer, score in enumerate(running, start=1) if score > guard), None)
        out = model(input_ids, attention_mask=attention_mask, patience=0, slowdown_guard=guard)
        expected = num_layers if flag_layer is None else flag_layer  # no cap: a flagged example exits at once
        assert out.exit_layers.tolist() == [expected] * len(LENGTHS), guard
        assert out.guard_fired.tolist() == [flag_layer is not None] * len(LENGTHS), guard
        # With a cap of 3 the flagged examples are held to max(flag layer, 3); the others are not capped.
        capped = model(input_ids, attention_mask=attention_mask, patience=0, slowdown_guard=guard, max_exit_layer=3)
        expected = num_layers if flag_layer is None else max(flag_layer, 3)
        assert capped.exit_layers.tolist() == [expected] * len(LENGTHS), guard
    every_layer = model(input_ids, attention_mask=attention_mask, output_all_layer_logits=True)
    assert guard_flag_layers(every_layer.all_layer_logits, 0.2).tolist() == [3] * len(LENGTHS)
    # A guard of 1 never fires: no score is above 1.
    assert not model(input_ids, attention_mask=attention_mask, slowdown_guard=1.0).guard_fired.any()


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_exit_layer=0), "max_exit_layer"),
        (dict(max_exit_layer=7), r"max_exit_layer must be a layer in 1\.\.6"),
        (dict(max_exit_layer=2.0), "max_exit_layer"),
        (dict(max_exit_layer="3"), "max_exit_layer"),
        (dict(max_exit_layer=True), "max_exit_layer"),
        (dict(slowdown_guard=-0.1), "slowdown_guard"),
        (dict(slowdown_guard=1.5), "slowdown_guard"),
        (dict(slowdown_guard=float("nan")), "slowdown_guard"),
        (dict(slowdown_guard="0.5"), "slowdown_guard"),
    ],
)
def test_bad_defence_settings_are_one_line_errors(settings, message):
    model = make_model("bert", 3)  # 6 layers
    input_ids, attention_mask, _ = make_batch(config=model.config)
    for make in (lambda: model(input_ids, attention_mask=attention_mask, **settings),
                 lambda: make_model("bert", 3, **settings)):
        with pytest.raises(ValueError, match=message) as raised:
            make()
        assert "\n" not in str(raised.value)


def test_guard_needs_classes_and_defences_survive_save_and_load(tmp_path):
    with pytest.raises(ValueError, match="regression"):
        make_model("bert", 1, slowdown_guard=0.5)
    assert make_model("bert", 1, max_exit_layer=2).config.max_exit_layer == 2  # a cap works for regression too
    model = make_model("albert", 3, max_exit_layer=3, slowdown_guard=0.4)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    assert (reloaded.config.max_exit_layer, reloaded.config.slowdown_guard) == (3, 0.4)
    input_ids, attention_mask, _ = make_batch(config=model.config)
    with torch.no_grad():
        saved = reloaded(input_ids, attention_mask=attention_mask, patience=0)
        lifted = reloaded(input_ids, attention_mask=attention_mask, patience=0, max_exit_layer=4, slowdown_guard=1.0)
    assert not lifted.guard_fired.any() and lifted.exit_layers.tolist() == [4] * len(LENGTHS)
    assert saved.guard_fired is not None


# ---------------------------------------------------------------------------------------------------------------------
# The defences from the command lines and in the sweep's settings


def classify_lines(capsys, folder, *argv):
    from pabee import classify

    classify.main(["--model", str(folder), *map(str, argv)])
    return capsys.readouterr().out.splitlines()


def test_classify_takes_the_defences(trained_folder, capsys):
    lines = classify_lines(capsys, trained_folder, "--patience", "0", "--max_exit_layer", "2", *TEXTS)
    assert [line.split("\t")[2] for line in lines[1:]] == ["2/6"] * len(TEXTS)
    # Every running score is above 0: a guard of 0 flags every text at layer 1, which then exits there (no cap).
    lines = classify_lines(capsys, trained_folder, "--patience", "0", "--slowdown_guard", "0", *TEXTS)
    assert lines[0] == "label\tprobability\texit layer\tguard\tinput"
    assert [tuple(line.split("\t")[2:4]) for line in lines[1:]] == [("1/6", "fired")] * len(TEXTS)
    lines = classify_lines(capsys, trained_folder, "--slowdown_guard", "1", *TEXTS)
    assert {line.split("\t")[3] for line in lines[1:]} == {"-"}


@pytest.mark.parametrize("argv, words", [(["--max_exit_layer", "0"], "--max_exit_layer must be"),
                                         (["--max_exit_layer", "7"], "more than the 6 layers"),
                                         (["--slowdown_guard", "1.5"], "--slowdown_guard must be"),
                                         (["--slowdown_guard", "nan"], "--slowdown_guard must be")])
def test_classify_bad_defences_are_one_line_errors(argv, words, trained_folder, capsys):
    from pabee import classify

    with pytest.raises(SystemExit) as exit_info:
        classify.main(["--model", str(trained_folder), *argv, "a film"])
    # argparse's errors are printed (exit code 2); those that need the model are the exit message
    code = exit_info.value.code
    message = capsys.readouterr().err if code == 2 else f"{code}\n"
    assert message.count("\n") == 1 and words in message, message


def test_sweep_adds_each_setting_under_the_defences():
    from argparse import Namespace

    from pabee.evaluation import ExitSetting
    from pabee.sweep import exit_settings

    args = Namespace(patience=[0, 2], exit_confidence=[0.75], exit_criterion="entropy", exit_thresholds=[0.2],
                     max_exit_layer=4, slowdown_guard=None)
    settings = exit_settings(args)
    plain = [ExitSetting("patience", 0), ExitSetting("patience", 2), ExitSetting("patience", 2, 0.75),
             ExitSetting("entropy", 0.2)]
    assert settings == plain + [setting.defended(4, None) for setting in plain]
    assert settings[-1].label == "entropy < 0.2, cap 4"
    assert settings[-1].model_kwargs(0.1)["max_exit_layer"] == 4
    assert ExitSetting.from_entry(settings[-1].as_dict()) == settings[-1]
    guarded = ExitSetting("patience", 1, 0.75).defended(4, 0.3)
    assert guarded.slug == "patience_1_confidence_ge_0.75_cap_4_guard_0.3"
    assert ExitSetting.from_entry(guarded.as_dict()) == guarded and not guarded.defended().is_defended
