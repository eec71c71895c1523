"""Tests of the character-edit attack (`pabee.attack`), its metrics (`pabee.robustness`) and the robustness study.

    python -m pytest tests/test_attack.py -q
"""

import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch
from fixtures_glue import save_tiny_model
from test_modeling import plain_pooled
from transformers import AutoTokenizer

from pabee import BertForSequenceClassificationWithPabee
from pabee.models import MODEL_CLASSES
from pabee.attack import (
    EDIT_KINDS,
    AttackConfig,
    Victim,
    attack,
    edit_word,
    main,
    patience_breaking_scores,
    read_outputs,
    slowdown_scores,
    split_words,
)
from pabee.robustness import efficacy, roc_auc

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

TARGET = "superb"  # the word whose edit (an unknown token to the tiny vocabulary) slows the hand-set model down
REVIEWS = ["the actor was superb and lovely", "a good film", "bad bad plot , but a fine cast", "dull",
           "a weak story about the plot", "great"]


# ---------------------------------------------------------------------------------------------------------------------
# Edits


def differs_by(kind, word, edited):
    """Whether `edited` is `word` with exactly one edit of `kind`, by hand."""
    if kind == "swap":
        diffs = [i for i in range(len(word)) if word[i] != edited[i]] if len(edited) == len(word) else None
        return diffs is not None and len(diffs) == 2 and diffs[1] == diffs[0] + 1 and sorted(word) == sorted(edited)
    if kind == "delete":
        return len(edited) == len(word) - 1 and any(word[:i] + word[i + 1:] == edited for i in range(len(word)))
    if kind == "insert":
        return len(edited) == len(word) + 1 and any(edited[:i] + edited[i + 1:] == word for i in range(len(edited)))
    return len(edited) == len(word) and sum(a != b for a, b in zip(word, edited)) == 1


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_each_edit_yields_a_different_string_within_one_edit(kind):
    rng = random.Random(0)
    for word in ["film", "superb", "ab", "Dull!", "o", "aab", "wish-fulfilling"]:
        for _ in range(20):
            edited = edit_word(word, kind, rng)
            if edited is None:
                assert (kind == "swap" and len(set(word)) == 1) or (kind == "delete" and len(word) < 2)
                continue
            assert edited != word and differs_by(kind, word, edited), (word, edited)
    assert edit_word("aa", "swap", rng) is None and edit_word("a", "delete", rng) is None
    with pytest.raises(ValueError, match="unknown edit"):
        edit_word("film", "shuffle", rng)


def test_split_words_joins_back_and_skips_punctuation():
    pieces, editable = split_words("a  fine film , really\tgood")
    assert "".join(pieces) == "a  fine film , really\tgood"
    assert [pieces[i] for i in editable] == ["a", "fine", "film", "really", "good"]


# ---------------------------------------------------------------------------------------------------------------------
# Scores and metrics on hand-built values


def test_slowdown_scores_of_hand_built_logits():
    # Two classes, three layers, patience 1. Layer softmaxes (1/4, 3/4), (1/2, 1/2), (9/10, 1/10):
    # predictions 1, tie (0), 0 -> layer 2 repeats nothing the gate... plain patience: 1 -> 0 resets, 0 -> 0 counts:
    # exit at layer 3. Uncertainty scores 1/2, 1, 1/5: mean 17/30. Score 3 + 17/60.
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [math.log(9), 0.0]]])
    readout = read_outputs(logits, {"patience": 1, "exit_criterion": "patience"})
    assert readout.exit_layers.tolist() == [3]
    assert slowdown_scores(readout).item() == pytest.approx(3 + 17 / 60, abs=1e-6)
    # Patience breaking: layer 2 gives 1/2 to classes other than layer 1's prediction (1); layer 3 gives 1/10 to
    # those other than layer 2's (0): mean 0.3. Score 3 + 0.15.
    assert patience_breaking_scores(logits).item() == pytest.approx(0.3, abs=1e-6)
    assert slowdown_scores(readout, "patience").item() == pytest.approx(3.15, abs=1e-6)


def test_efficacy_and_roc_auc_by_hand():
    # L = 2: exits at 1 and 2 give (3.5 - 1)/3 and (3.5 - 2)/3: mean 2/3
    assert efficacy([1, 2], 2) == pytest.approx(2 / 3)
    assert efficacy([1, 1], 6) == pytest.approx(6.5 / 7) and efficacy([6], 6) == pytest.approx(1.5 / 7)
    assert roc_auc([0.1, 0.2], [0.3, 0.4]) == 1.0 and roc_auc([0.3], [0.3]) == 0.5
    assert roc_auc([0.1, 0.5], [0.3]) == 0.5


# ---------------------------------------------------------------------------------------------------------------------
# The search on a tiny model whose classifiers are set by hand


@pytest.fixture(scope="module")
def slowed_model(tmp_path_factory):
    """
    A tiny BERT (mean pooling, patience 1) whose classifiers agree (class 0) at every layer on the reviews as they
    are, but alternate between the classes when TARGET in the first review is an unknown token, as any edit of it is:
    its patience counter then resets at every layer, so it runs every layer.
    """
    folder = save_tiny_model(tmp_path_factory.mktemp("attack") / "tiny")
    model = BertForSequenceClassificationWithPabee.from_pretrained(folder, num_labels=2, patience=1,
                                                                   exit_pooling="mean").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    clean = tokenizer(REVIEWS[0], return_tensors="pt")
    unknown = tokenizer(REVIEWS[0].replace(TARGET, "[UNK]"), return_tensors="pt")
    with torch.no_grad():
        pooled_clean = plain_pooled(model, clean["input_ids"], clean["attention_mask"], clean["token_type_ids"])[0]
        pooled_unknown = plain_pooled(model, unknown["input_ids"], unknown["attention_mask"],
                                      unknown["token_type_ids"])[0]
        for layer, classifier in enumerate(model.classifiers):
            flips = layer % 2  # layers 2, 4 answer class 1 on the unknown token; 1, 3 never
            delta = pooled_unknown[layer] - pooled_clean[layer]
            weight = flips * delta / delta.dot(delta)
            classifier.weight.zero_()
            classifier.weight[1] = weight
            classifier.bias.copy_(torch.tensor([0.0, -float(weight.dot(pooled_clean[layer])) - 0.5]))
    model.save_pretrained(folder)
    return folder, model, tokenizer


def test_search_finds_the_edit_that_raises_the_exit_layer(slowed_model):
    _, model, tokenizer = slowed_model
    num_layers = model.config.num_hidden_layers
    victim = Victim(model, tokenizer, batch_size=4)
    results = attack(victim, REVIEWS[:1], {"patience": 1}, AttackConfig(goal="slowdown", query_budget=20, seed=3),
                     progress=False)
    result = results[0]
    assert (result.clean_exit_layer, result.attacked_exit_layer, result.success) == (2, num_layers, True)
    edited = [word for word in result.adversarial.split() if word not in result.text.split()]
    assert len(edited) == 1 and edited[0] != TARGET and result.words_changed == 1
    # The real early exit of the model agrees
    with torch.no_grad():
        real = model(**tokenizer([result.text, result.adversarial], return_tensors="pt", padding=True), patience=1)
    assert real.exit_layers.tolist() == [2, num_layers]


@pytest.mark.parametrize("goal", ["slowdown", "slowdown-patience", "misclassification"])
def test_search_keeps_its_budgets_and_is_deterministic_under_a_seed(slowed_model, goal):
    _, model, tokenizer = slowed_model
    config = AttackConfig(goal=goal, query_budget=6, max_word_share=0.3, seed=1)
    kwargs = {"patience": 1, "max_exit_layer": 3, "slowdown_guard": 0.9}
    first = attack(Victim(model, tokenizer, batch_size=3), REVIEWS, kwargs, config, progress=False)
    again = attack(Victim(model, tokenizer, batch_size=3), REVIEWS, kwargs, config, progress=False)
    assert first == again
    # Other batches pad differently (float noise in the scores), but the search makes the same choices
    other = attack(Victim(model, tokenizer, batch_size=5), REVIEWS, kwargs, config, progress=False)
    assert [(r.adversarial, r.attacked_exit_layer, r.queries) for r in other] == [
        (r.adversarial, r.attacked_exit_layer, r.queries) for r in first]
    for result in first:
        assert result.queries <= config.query_budget
        assert result.words_changed <= max(1, math.floor(0.3 * result.words))
        clean_words, adversarial_words = result.text.split(), result.adversarial.split()
        assert len(clean_words) == len(adversarial_words)  # edits stay inside words: at most one each
        assert sum(a != b for a, b in zip(clean_words, adversarial_words)) == result.words_changed
    budgets = attack(Victim(model, tokenizer), REVIEWS, kwargs, AttackConfig(goal=goal, query_budget=2),
                     progress=False)
    assert all(result.queries <= 2 for result in budgets)


def test_attack_config_refuses_bad_budgets():
    for kwargs, name in [(dict(goal="faster"), "goal"), (dict(query_budget=1), "query_budget"),
                         (dict(max_word_share=0.0), "max_word_share"), (dict(ranking="gradient"), "ranking")]:
        with pytest.raises(ValueError, match=name):
            AttackConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# python -m pabee.attack and the study script


def test_attack_command_prints_each_input_and_its_adversarial_version(slowed_model, tmp_path, capsys):
    folder, model, _ = slowed_model
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("\n".join(REVIEWS[:2]) + "\n")
    results = main(["--model", str(folder), "--goal", "slowdown", "--patience", "1", "--file", str(reviews),
                    "--query_budget", "20"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * len(results) == 6
    assert lines[0] == f"[1] clean\t0\texit 2/{model.config.num_hidden_layers}\t{REVIEWS[0]}"
    assert lines[1].startswith(f"[1] attacked\t") and lines[1].endswith(results[0].adversarial)
    assert f"exit {model.config.num_hidden_layers}/" in lines[1] and lines[2].startswith("[1] success")


@pytest.mark.parametrize("argv, words", [(["--query_budget", "1"], "--query_budget"),
                                         (["--slowdown_guard", "2"], "--slowdown_guard"),
                                         (["--max_word_share", "0"], "--max_word_share"),
                                         (["--exit_criterion", "entropy"], "--exit_threshold")])
def test_attack_command_bad_arguments_are_one_line(slowed_model, argv, words, capsys):
    folder = slowed_model[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(folder), *argv, "a film"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and words in message, message


def test_attack_command_errors_need_no_traceback(slowed_model, tmp_path):
    folder = slowed_model[0]
    with pytest.raises(SystemExit, match="max_exit_layer must be a layer in 1..4"):
        main(["--model", str(folder), "--max_exit_layer", "9", "a film"])
    with pytest.raises(SystemExit, match="unknown label"):
        main(["--model", str(folder), "--file", str(_write(tmp_path / "bad.txt", "a film\tmaybe\n"))])


@pytest.mark.parametrize("family", ["modernbert", "deberta-v2"])
def test_attack_command_on_the_newer_families_reads_their_exits(family, tmp_path, capsys):
    """The search's exit layers are the model's own on each text alone, with the family's own tokenizer."""
    folder = save_tiny_model(tmp_path / family, family)
    model = MODEL_CLASSES[family].from_pretrained(folder, num_labels=2, patience=1, exit_pooling="mean").eval()
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    results = main(["--model", folder, "--goal", "slowdown", "--query_budget", "6", *REVIEWS[:3]])
    assert len(capsys.readouterr().out.splitlines()) == 3 * len(REVIEWS[:3])
    with torch.no_grad():
        for result in results:
            for text, exit_layer in ((result.text, result.clean_exit_layer),
                                     (result.adversarial, result.attacked_exit_layer)):
                assert int(model(**tokenizer(text, return_tensors="pt")).exit_layers[0]) == exit_layer, text


def _write(path, text):
    path.write_text(text)
    return path


def test_study_script_smoke_run(slowed_model, tmp_path):
    import study_robustness

    folder = slowed_model[0]
    data = tmp_path / "SST-2"
    data.mkdir()
    rows = [f"{review}\t{index % 2}" for index, review in enumerate(REVIEWS * 2)]
    (data / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    argv = ["--models", f"tiny={folder}", "--data_dir", str(data), "--examples", "6", "--query_budget", "6",
            "--output_json", str(out / "r.json"), "--output_md", str(out / "r.md"), "--plot", str(out / "r.png"),
            "--max_runs", "4"]
    study_robustness.main(argv)
    study = json.loads((out / "r.json").read_text())
    runs = study["runs"]
    assert [run["goal"] for run in runs][:1] == ["slowdown"] and len(runs) == 4
    assert {run["rule"] for run in runs} >= {"full depth", "gated patience (demo)"}
    for run in runs:
        assert run["examples"] == 6 and run["avg_queries"]["value"] <= 6
    examples = json.loads((out / "r_examples.json").read_text())
    assert set(examples) == {run["key"] for run in runs}
    markdown = (out / "r.md").read_text()
    assert "### Slowdown" in markdown and "### Misclassification" in markdown and (out / "r.png").stat().st_size
    # Resumed, it keeps the finished runs and does the next ones
    study_robustness.main(argv[:-1] + ["5", "--resume"])
    resumed = json.loads((out / "r.json").read_text())["runs"]
    assert resumed[:4] == runs and len(resumed) == 5
    with pytest.raises(SystemExit, match="leaves no held-out reviews"):
        study_robustness.main(argv[:5] + ["12"] + argv[6:])
