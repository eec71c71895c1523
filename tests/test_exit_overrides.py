"""An exit setting given for one call or one command is a whole rule, at every entry point.

The rule is patience, exit_criterion, exit_threshold and exit_confidence. None of them given: the saved rule runs.
Any of them given: they are the rule, the others at their defaults (patience 0, criterion "patience", no threshold,
gate 0); the saved rule is not mixed in. exit_threshold without exit_criterion, and exit_confidence without patience,
are errors. regression_threshold and the defences (max_exit_layer, slowdown_guard) keep their saved values unless
given.

One tiny model is saved under several settings (the same weights): an entropy rule, a confidence rule and gated
patience, as a selection saves them, and plain patience 0, 1 and 2. At every entry point (forward, pabee.classify on a
torch and on an exported folder, the exported runner, pabee.attack, the deploy benchmark's engines and the studies'
settings) the folders saved with a rule answer `patience=0` at full depth and `patience=k` exactly as the folder saved
with patience k answers without being told. A table of cases, the errors included, is run through the runner's
resolution, the modeling module's and forward, which must all give it.

    python -m pytest tests/test_exit_overrides.py -q
"""

import copy
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures_glue import VOCAB
from test_export import TEXTS
from test_modeling import make_model
from transformers import BertTokenizerFast

from pabee import BertForSequenceClassificationWithPabee, attack, classify, export, onnx_runner
from pabee.evaluation import ExitSetting
from pabee.modeling_pabee import check_pabee_settings, exit_settings_for_call
from pabee.onnx_runner import SETTINGS_FILE, PabeeOnnxModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchmark_deploy  # noqa: E402

NUM_LAYERS = 6
PATIENCES = (0, 1, 2)
RULE_DEFAULTS = {"patience": 0, "exit_criterion": "patience", "exit_threshold": None, "exit_confidence": 0.0}


# ---------------------------------------------------------------------------------------------------------------------
# The rule, as a table


def saved_rule(name):
    """Saved settings of the table's cases: an entropy rule, and gated patience with a depth cap."""
    return {
        "entropy": dict(patience=0, exit_criterion="entropy", exit_threshold=0.4, exit_confidence=0.0,
                        regression_threshold=0.1, max_exit_layer=None),
        "gated, capped": dict(patience=1, exit_criterion="patience", exit_threshold=None, exit_confidence=0.75,
                              regression_threshold=0.1, max_exit_layer=4),
    }[name]


# (saved, given, the settings the call runs with, or the words of its error)
RULE_TABLE = [
    ("entropy", {}, saved_rule("entropy")),
    ("entropy", dict(patience=0), {**saved_rule("entropy"), **RULE_DEFAULTS}),
    ("entropy", dict(patience=3), {**saved_rule("entropy"), **RULE_DEFAULTS, "patience": 3}),
    ("entropy", dict(patience=2, exit_confidence=0.6),
     {**saved_rule("entropy"), **RULE_DEFAULTS, "patience": 2, "exit_confidence": 0.6}),
    ("entropy", dict(exit_criterion="confidence", exit_threshold=0.9),
     {**saved_rule("entropy"), **RULE_DEFAULTS, "exit_criterion": "confidence", "exit_threshold": 0.9}),
    ("entropy", dict(exit_criterion="patience"), {**saved_rule("entropy"), **RULE_DEFAULTS}),
    ("entropy", dict(max_exit_layer=3), {**saved_rule("entropy"), "max_exit_layer": 3}),
    ("entropy", dict(regression_threshold=0.3), {**saved_rule("entropy"), "regression_threshold": 0.3}),
    ("gated, capped", {}, saved_rule("gated, capped")),
    ("gated, capped", dict(patience=2), {**saved_rule("gated, capped"), **RULE_DEFAULTS, "patience": 2}),
    ("gated, capped", dict(patience=0, max_exit_layer=6),
     {**saved_rule("gated, capped"), **RULE_DEFAULTS, "max_exit_layer": 6}),
    ("gated, capped", dict(exit_criterion="entropy", exit_threshold=0.2),
     {**saved_rule("gated, capped"), **RULE_DEFAULTS, "exit_criterion": "entropy", "exit_threshold": 0.2}),
    ("entropy", dict(exit_threshold=0.3), ["exit_threshold", "exit_criterion", "entropy", "confidence"]),
    ("gated, capped", dict(exit_threshold=0.3), ["exit_threshold", "exit_criterion"]),
    ("entropy", dict(exit_confidence=0.7), ["exit_confidence", "patience"]),
    ("gated, capped", dict(exit_confidence=0.9), ["exit_confidence", "patience"]),
    ("gated, capped", dict(exit_criterion="entropy"), ["exit_threshold"]),
]
TABLE_IDS = [f"{saved} given {given}" for saved, given, _ in RULE_TABLE]


@pytest.mark.parametrize("saved, given, expected", RULE_TABLE, ids=TABLE_IDS)
def test_the_runners_resolution_gives_the_table(saved, given, expected):
    saved_settings = {**saved_rule(saved), "num_labels": 2, "layers": [f"layer_{i}.onnx" for i in range(NUM_LAYERS)]}
    if isinstance(expected, list):
        with pytest.raises(ValueError) as error:
            onnx_runner.exit_settings_for_call(saved_settings, **given)
        assert all(word in str(error.value) for word in expected), error.value
    else:
        assert onnx_runner.exit_settings_for_call(saved_settings, **given) == expected


def table_config(trained, saved):
    """The trained model's config with the table's saved settings."""
    config = copy.deepcopy(trained["model"].config)
    config.update({**saved_rule(saved), "slowdown_guard": None})
    return config


def table_model(trained, config):
    model = BertForSequenceClassificationWithPabee(config).eval()
    model.load_state_dict(trained["model"].state_dict())
    return model


@pytest.mark.parametrize("saved, given, expected", RULE_TABLE, ids=TABLE_IDS)
def test_the_modeling_modules_resolution_gives_the_table(saved, given, expected, trained):
    """`exit_settings_for_call` resolves the rule; `check_pabee_settings` (which forward runs next) checks values."""
    config = table_config(trained, saved)
    if isinstance(expected, list):
        with pytest.raises(ValueError) as error:
            resolved = exit_settings_for_call(config, **given)
            check_pabee_settings(**resolved, num_labels=config.num_labels, num_layers=NUM_LAYERS)
        assert all(word in str(error.value) for word in expected), error.value
    else:
        resolved = exit_settings_for_call(config, **given)
        assert {name: resolved[name] for name in expected} == expected


@pytest.mark.parametrize("saved, given, expected", RULE_TABLE, ids=TABLE_IDS)
@torch.no_grad()
def test_forward_gives_the_table(saved, given, expected, trained):
    model = table_model(trained, table_config(trained, saved))
    inputs = trained["inputs"]
    if isinstance(expected, list):
        with pytest.raises(ValueError) as error:
            model(**inputs, **given)
        assert all(word in str(error.value) for word in expected), error.value
        return
    reference_config = table_config(trained, saved)
    reference_config.update(expected)
    reference = table_model(trained, reference_config)
    answered, expected_answer = model(**inputs, **given), reference(**inputs)
    assert answered.exit_layers.tolist() == expected_answer.exit_layers.tolist()
    torch.testing.assert_close(answered.logits, expected_answer.logits, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Folders saved with each setting


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """
    A tiny model whose classifiers spread the test texts' exits, saved under each setting of `saved` (torch folders,
    and exported folders with the same settings file fields).
    """
    base = tmp_path_factory.mktemp("saved")
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(VOCAB)}, do_lower_case=True)
    model = make_model("bert", 2, exit_pooling="mean", vocab_size=len(VOCAB))
    model.config.finetuning_task = "sst-2"
    model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        every_layer = model(**inputs, output_all_layer_logits=True).all_layer_logits
        for layer, classifier in enumerate(model.classifiers):
            classifier.bias -= every_layer[:, layer].mean(dim=0)
        probabilities = model(**inputs, output_all_layer_logits=True).all_layer_logits[:, :-1].softmax(dim=-1)
    entropy = float(torch.special.entr(probabilities).sum(dim=-1).median())
    confidence = float(probabilities.amax(dim=-1).median())
    saved = {
        "entropy": dict(exit_criterion="entropy", exit_threshold=entropy, patience=0, exit_confidence=0.0),
        "confidence": dict(exit_criterion="confidence", exit_threshold=confidence, patience=0, exit_confidence=0.0),
        "gated": dict(exit_criterion="patience", exit_threshold=None, patience=1, exit_confidence=confidence),
        **{f"patience {k}": dict(exit_criterion="patience", exit_threshold=None, patience=k, exit_confidence=0.0)
           for k in PATIENCES},
    }
    source = base / "source"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    exported_source = export.export_model(str(source), str(base / "source-onnx"))
    folders, exported = {}, {}
    for name, settings in saved.items():
        folders[name] = str(base / name.replace(" ", "_"))
        shutil.copytree(source, folders[name])
        rewrite_json(os.path.join(folders[name], "config.json"), settings)
        exported[name] = str(base / f"{name.replace(' ', '_')}-onnx")
        shutil.copytree(exported_source, exported[name])
        rewrite_json(os.path.join(exported[name], SETTINGS_FILE), settings)
    return {"model": model, "tokenizer": tokenizer, "inputs": inputs, "saved": saved, "folders": folders,
            "exported": exported}


def rewrite_json(path, changes):
    with open(path) as file:
        content = json.load(file)
    with open(path, "w") as file:
        json.dump({**content, **changes}, file)


def load(trained, name):
    return BertForSequenceClassificationWithPabee.from_pretrained(trained["folders"][name]).eval()


SAVED_RULES = ("entropy", "confidence", "gated")


@torch.no_grad()
def test_the_saved_rules_exit_early_and_apart(trained):
    """
    The folders differ where it matters: each saved rule answers otherwise than every patience the tests give, so
    that a saved rule mixed into a given patience would show. (With two classes, entropy and confidence rules can
    agree: each is a threshold on the top-class probability.)
    """
    exits = {name: tuple(load(trained, name)(**trained["inputs"]).exit_layers.tolist())
             for name in (*SAVED_RULES, *(f"patience {k}" for k in PATIENCES))}
    assert exits["patience 0"] == (NUM_LAYERS,) * len(TEXTS)
    for name in SAVED_RULES:
        assert all(exits[name] != exits[f"patience {k}"] for k in PATIENCES), exits
        assert len(set(exits[name])) > 1, exits


# ---------------------------------------------------------------------------------------------------------------------
# Every entry point


@pytest.mark.parametrize("saved", SAVED_RULES)
@torch.no_grad()
def test_forward(saved, trained):
    model = load(trained, saved)
    for k in PATIENCES:
        answered = model(**trained["inputs"], patience=k)
        expected = load(trained, f"patience {k}")(**trained["inputs"])
        assert answered.exit_layers.tolist() == expected.exit_layers.tolist(), k
        torch.testing.assert_close(answered.logits, expected.logits, rtol=0, atol=0)
    assert model(**trained["inputs"], patience=0).exit_layers.tolist() == [NUM_LAYERS] * len(TEXTS)


def run_main(module, argv, capsys):
    module.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err


@pytest.mark.parametrize("kind", ["folders", "exported"])
@pytest.mark.parametrize("saved", SAVED_RULES)
def test_classify(kind, saved, trained, capsys):
    for k in PATIENCES:
        answered, _ = run_main(classify, ["--model", trained[kind][saved], "--patience", k, *TEXTS], capsys)
        expected, saved_line = run_main(classify, ["--model", trained[kind][f"patience {k}"], *TEXTS], capsys)
        assert answered == expected, k
        assert saved_line.strip() == (f"exit setting saved with the model: patience {k} (--patience or "
                                      "--exit_criterion chooses another)")
    full_depth, _ = run_main(classify, ["--model", trained[kind][saved], "--patience", 0, *TEXTS], capsys)
    assert [line.split("\t")[2] for line in full_depth[1:]] == [f"{NUM_LAYERS}/{NUM_LAYERS}"] * len(TEXTS)


def test_classify_names_the_saved_setting_only_when_it_answers(trained, capsys):
    threshold = trained["saved"]["entropy"]["exit_threshold"]
    for kind in ("folders", "exported"):
        _, line = run_main(classify, ["--model", trained[kind]["entropy"], *TEXTS], capsys)
        assert line.startswith(f"exit setting saved with the model: entropy < {threshold:g} ")
        assert line.count("\n") == 1
        _, line = run_main(classify, ["--model", trained[kind]["gated"], "--max_exit_layer", 4, *TEXTS], capsys)
        assert f"patience 1, confidence >= {trained['saved']['gated']['exit_confidence']:g}, cap 4 " in line
        for flags in (["--patience", 2], ["--exit_criterion", "patience"]):
            assert run_main(classify, ["--model", trained[kind]["entropy"], *flags, *TEXTS], capsys)[1] == ""


@pytest.mark.parametrize("kind", ["folders", "exported"])
@pytest.mark.parametrize("flags, words", [(["--exit_threshold", 0.3], ["exit_threshold", "exit_criterion"]),
                                          (["--exit_confidence", 0.6], ["exit_confidence", "patience"])])
def test_classify_refuses_an_incomplete_rule_in_one_line(kind, flags, words, trained, capsys):
    with pytest.raises(SystemExit) as exit_info:
        classify.main(["--model", trained[kind]["entropy"], *map(str, flags), *TEXTS])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and len(message.splitlines()) == 1
    assert all(word in message for word in words), message
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("saved", SAVED_RULES)
def test_the_exported_runner(saved, trained, capsys):
    runner = PabeeOnnxModel(trained["exported"][saved], threads=1)
    for k in PATIENCES:
        expected_runner = PabeeOnnxModel(trained["exported"][f"patience {k}"], threads=1)
        logits, exit_layers = runner.classify_texts(TEXTS, patience=k)
        expected_logits, expected_exit_layers = expected_runner.classify_texts(TEXTS)
        assert exit_layers.tolist() == expected_exit_layers.tolist(), k
        np.testing.assert_array_equal(logits, expected_logits)
        answered, _ = run_main(onnx_runner, ["--model", trained["exported"][saved], "--patience", k, *TEXTS], capsys)
        expected, _ = run_main(onnx_runner, ["--model", trained["exported"][f"patience {k}"], *TEXTS], capsys)
        assert answered == expected, k
    assert runner.classify_texts(TEXTS, patience=0)[1].tolist() == [NUM_LAYERS] * len(TEXTS)


@pytest.mark.parametrize("saved", SAVED_RULES)
def test_attack(saved, trained, capsys):
    options = ["--goal", "slowdown", "--query_budget", 6, *TEXTS[:4]]
    for k in PATIENCES:
        answered, _ = run_main(attack, ["--model", trained["folders"][saved], "--patience", k, *options], capsys)
        expected, saved_line = run_main(attack, ["--model", trained["folders"][f"patience {k}"], *options], capsys)
        assert answered == expected, k
        assert saved_line.startswith(f"exit setting saved with the model: patience {k} ")
    full_depth, _ = run_main(attack, ["--model", trained["folders"][saved], "--patience", 0, *options], capsys)
    assert all(f"exit {NUM_LAYERS}/{NUM_LAYERS}" in line for line in full_depth if "] clean" in line)


@pytest.mark.parametrize("saved", SAVED_RULES)
def test_the_deploy_benchmarks_timed_settings(saved, trained):
    """benchmark_deploy's engines run each timed setting (PATIENCE@GATE) as that whole rule, torch and ONNX alike."""
    examples = [SimpleNamespace(text_a=text) for text in TEXTS]
    batches = benchmark_deploy.make_batches(trained["tokenizer"], examples, 3, 64, takes_token_types=True)

    for k in PATIENCES:
        torch_model, runner = load(trained, f"patience {k}"), PabeeOnnxModel(trained["exported"][f"patience {k}"])
        with torch.no_grad():  # the folder saved with patience k, told nothing
            expected = {"torch fp32": [torch_model(**batch["torch"]).exit_layers.numpy() for batch in batches],
                        "onnx fp32": [runner(batch["input_ids"], batch["attention_mask"],
                                             batch["token_type_ids"])[1] for batch in batches]}
        for engine in (benchmark_deploy.Engine("torch fp32", model=load(trained, saved)),
                       benchmark_deploy.Engine("onnx fp32", runner=PabeeOnnxModel(trained["exported"][saved]))):
            _, exit_layers = engine.run(batches, k, 0.0)
            assert exit_layers.tolist() == np.concatenate(expected[engine.name]).tolist(), (engine.name, k)


@pytest.mark.parametrize("saved", SAVED_RULES)
@torch.no_grad()
def test_the_studies_and_the_sweeps_settings(saved, trained):
    """What the studies and the sweep run (`ExitSetting.model_kwargs`) answers as a folder saved with that setting."""
    model = load(trained, saved)
    settings = {f"patience {k}": ExitSetting("patience", k) for k in PATIENCES}
    for name in ("entropy", "confidence"):
        settings[name] = ExitSetting(name, trained["saved"][name]["exit_threshold"])
    settings["gated"] = ExitSetting("patience", 1, trained["saved"]["gated"]["exit_confidence"])
    for name, setting in settings.items():
        answered = model(**trained["inputs"], **setting.model_kwargs(0.1))
        expected = load(trained, name)(**trained["inputs"])
        assert answered.exit_layers.tolist() == expected.exit_layers.tolist(), name
