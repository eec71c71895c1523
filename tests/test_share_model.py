"""A saved PABEE model works with transformers' own clients, and `python -m pabee.classify` tries one on sentences.

A saved folder carries `auto_map` and the modeling file, so that, in a process that has not imported pabee,
AutoModelForSequenceClassification and pipeline rebuild it from the folder's code with trust_remote_code=True
(offline) and answer as the original class does; without it transformers refuses. `import pabee` registers its
classes with the Auto classes: then they load the folder without the flag (and its tokenizer without a prompt), as
this package's classes. Trainer trains and evaluates the classes, and torch.compile gives the same answers. Tiny
random models, CPU, offline.

    python -m pytest tests/test_share_model.py -q
"""

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from fixtures_glue import VOCAB, run_main, save_tiny_model, write_glue_task
from test_modeling import (
    HEAD_FAMILY_VARIANTS,
    LENGTHS,
    NEW_FAMILY_VARIANTS,
    ONE_PER_FAMILY,
    VARIANTS,
    has_spread,
    make_batch,
    make_config,
    make_model,
)
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    BertTokenizerFast,
    Trainer,
    TrainingArguments,
    pipeline,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from pabee import classify
from pabee.modeling_pabee_bert import BertForSequenceClassificationWithPabee, PabeeBertConfig
from pabee.models import MODEL_CLASSES, load_pabee_config

TEXTS = ["a good film", "bad bad plot", "the actor was superb and lovely", "dull", "a weak story , but a fine cast",
         "boring", "great", "an awful movie about the plot"]


@pytest.fixture(autouse=True, scope="module")
def private_modules_cache(tmp_path_factory):
    """
    Remote code copied into a temporary folder rather than the user's
    ~/.cache/huggingface/modules (transformers reads HF_MODULES_CACHE when imported, hence the patched module value).
    """
    modules_cache = str(tmp_path_factory.mktemp("hf_modules"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_MODULES_CACHE", modules_cache)
        patch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", modules_cache)
        patch.setattr(sys, "path", list(sys.path))  # transformers appends the modules cache to it
        yield modules_cache


REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def without_pabee_registered(monkeypatch):
    """
    The Auto classes as in a process that has not imported pabee (which registers its classes with them): what a
    user of transformers alone has. `test_without_import_pabee_auto_classes_run_the_folders_code` checks the same in
    a fresh interpreter.
    """
    for model_class in MODEL_CLASSES.values():
        monkeypatch.delitem(CONFIG_MAPPING._extra_content, model_class.config_class.model_type)
        monkeypatch.delitem(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING._extra_content, model_class.config_class)


def inputs_of(batch):
    input_ids, attention_mask, token_type_ids = batch
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


# ---------------------------------------------------------------------------------------------------------------------
# What a saved folder holds


@pytest.mark.parametrize("variant", ONE_PER_FAMILY)
def test_saved_folder_names_its_classes_and_carries_the_modeling_file(variant, tmp_path):
    family = VARIANTS[variant][0]
    model = make_model(variant, 3, patience=2, exit_pooling="mean")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    module = f"modeling_pabee_{family.replace('-', '_')}"
    assert config["model_type"] == f"pabee_{family}"
    assert type(model.config).__name__ == f"Pabee{type(model).__name__.split('For')[0]}Config"
    assert config["auto_map"] == {
        "AutoConfig": f"{module}.{type(model.config).__name__}",
        "AutoModelForSequenceClassification": f"{module}.{type(model).__name__}",
    }
    assert (config["patience"], config["exit_pooling"]) == (2, "mean")
    source = sys.modules[type(model).__module__].__file__
    assert (tmp_path / f"{module}.py").read_bytes() == open(source, "rb").read()


@pytest.mark.parametrize("variant", ["bert", "bert_eager", "albert", "roberta", "distilbert"])
def test_plain_config_is_taken_over_with_every_setting(variant):
    """A model built from a plain BertConfig / AlbertConfig gets our config class, keeping the backbone's settings."""
    plain = make_config(variant, 3)
    model = make_model(variant, 3, patience=1)
    assert type(model.config) is type(model).config_class and isinstance(model.config, type(plain))
    assert model.config.patience == 1 and model.config.exit_pooling == "pooler"
    for key, value in plain.to_dict().items():
        if key not in ("model_type", "transformers_version"):
            assert getattr(model.config, key) == value, key
    assert model.config._attn_implementation == (plain._attn_implementation or "sdpa")


# ---------------------------------------------------------------------------------------------------------------------
# Auto classes and pipeline


@pytest.mark.parametrize("exit_pooling", ["pooler", "mean"])
@pytest.mark.parametrize("variant", ["bert", "albert_groups2"] + NEW_FAMILY_VARIANTS + HEAD_FAMILY_VARIANTS)
@torch.no_grad()
def test_auto_model_with_trust_remote_code_answers_as_the_original_class(variant, exit_pooling, tmp_path,
                                                                        without_pabee_registered):
    # A saved patience at which the test batch's exits spread over several layers with these random classifiers
    patience = 2 if (variant, exit_pooling) == ("distilbert", "pooler") else 1
    model = make_model(variant, 3, patience=patience, regression_threshold=0.3, exit_pooling=exit_pooling)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()

    # The folder's own copy of the modeling file, not this project's module.
    assert type(loaded).__module__.startswith("transformers_modules.")
    assert type(loaded).__name__ == type(model).__name__
    settings = ("patience", "regression_threshold", "exit_pooling", "exit_criterion", "layer_loss_weights")
    assert [getattr(loaded.config, name) for name in settings] == [getattr(model.config, name) for name in settings]
    inputs = inputs_of(make_batch(config=model.config))
    expected, answer = model(**inputs), loaded(**inputs)
    assert has_spread(expected.exit_layers, model.config.num_hidden_layers)  # the saved patience exits early
    assert torch.equal(answer.exit_layers, expected.exit_layers)
    torch.testing.assert_close(answer.logits, expected.logits, rtol=0, atol=1e-6)
    for patience in (0, 2):
        assert torch.equal(loaded(**inputs, patience=patience).exit_layers,
                           model(**inputs, patience=patience).exit_layers)


def test_folders_the_script_saves_load_through_auto_model(tmp_path, without_pabee_registered):
    """The trained model and its checkpoints, as run_glue_with_pabee.py saves them (the demo's output/demo)."""
    output_dir = tmp_path / "output"
    run_main(["--model_name_or_path", save_tiny_model(tmp_path / "backbone"), "--task_name", "SST-2", "--data_dir",
              write_glue_task(tmp_path / "SST-2", "sst-2"), "--output_dir", output_dir, "--do_train", "--max_steps",
              "2", "--save_steps", "1", "--learning_rate", "1e-2", "--exit_pooling", "mean", "--max_seq_length", "32",
              "--no_cuda"])
    tokenizer = BertTokenizerFast.from_pretrained(output_dir)
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    for folder in (output_dir / "checkpoint-1", output_dir):
        ours = BertForSequenceClassificationWithPabee.from_pretrained(folder).eval()
        loaded = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(loaded).__module__.startswith("transformers_modules.")
        assert loaded.config.exit_pooling == "mean" and loaded.config.finetuning_task == "sst-2"
        with torch.no_grad():
            expected, answer = ours(**inputs, patience=1), loaded(**inputs, patience=1)
        assert torch.equal(answer.exit_layers, expected.exit_layers)
        torch.testing.assert_close(answer.logits, expected.logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ONE_PER_FAMILY)
def test_plain_auto_model_refuses_and_says_to_trust_remote_code(variant, tmp_path, monkeypatch,
                                                                without_pabee_registered):
    """Without trust_remote_code transformers must not build its plain classifier with a new, random head."""
    make_model(variant, 3).save_pretrained(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # transformers asks on a terminal; an answerless one says no
    for load in (AutoModelForSequenceClassification.from_pretrained, AutoConfig.from_pretrained):
        with pytest.raises(ValueError, match="pass the argument `trust_remote_code=True`"):
            load(tmp_path)


def run_python(code, **kwargs):
    """`code` in a fresh interpreter, offline, from the repository root: (exit status, stdout and stderr together)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=300, **kwargs)
    return process.returncode, process.stdout


def test_without_import_pabee_auto_classes_run_the_folders_code(tmp_path):
    """In a fresh process: each folder's own family file and shared module, as transformers copies them along."""
    expected = {}
    for variant in ("bert", "modernbert", "deberta_v2"):  # DeBERTa with its convolution after layer 1
        model = make_model(variant, 3, patience=1)
        model.save_pretrained(tmp_path / variant)
        inputs = inputs_of(make_batch(config=model.config))
        torch.save(inputs, tmp_path / variant / "inputs.pt")
        with torch.no_grad():
            expected[variant] = type(model).__name__, model(**inputs)
    code = f"""
import json
import sys
import torch
from transformers import AutoModelForSequenceClassification
for variant in {list(expected)!r}:
    folder = {str(tmp_path)!r} + "/" + variant
    try:
        AutoModelForSequenceClassification.from_pretrained(folder)
    except ValueError as error:
        print(variant, "refused:", "trust_remote_code=True" in str(error))
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    print(variant, "class:", type(model).__module__.split(".")[0], type(model).__name__)
    with torch.no_grad():
        output = model(**torch.load(folder + "/inputs.pt"))
    print(variant, "answers:", json.dumps([output.exit_layers.tolist(), output.logits.tolist()]))
print("pabee imported:", any(name.split(".")[0] == "pabee" for name in sys.modules))
"""
    status, output = run_python(code, stdin=subprocess.DEVNULL)  # no answer to a prompt: transformers refuses
    assert status == 0, output
    assert "pabee imported: False" in output
    for variant, (class_name, expected_output) in expected.items():
        assert f"{variant} refused: True" in output and f"{variant} class: transformers_modules {class_name}" in output
        exit_layers, logits = json.loads(output.split(f"{variant} answers: ")[1].splitlines()[0])
        assert exit_layers == expected_output.exit_layers.tolist()
        torch.testing.assert_close(torch.tensor(logits), expected_output.logits, rtol=0, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("variant", ONE_PER_FAMILY)
def test_after_import_pabee_auto_classes_build_its_classes_without_the_flag(variant, tmp_path):
    model = make_model(variant, 3, patience=1)
    model.save_pretrained(tmp_path)
    inputs = inputs_of(make_batch(config=model.config))
    expected = model(**inputs)
    for trust_remote_code in (None, True):  # a registered class comes before the folder's code, as transformers does
        assert type(AutoConfig.from_pretrained(tmp_path, trust_remote_code=trust_remote_code)) is type(model.config)
        loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=trust_remote_code)
        assert type(loaded) is type(model) and loaded.config.patience == 1
        answer = loaded.eval()(**inputs)
        assert torch.equal(answer.exit_layers, expected.exit_layers)
        torch.testing.assert_close(answer.logits, expected.logits, rtol=0, atol=1e-6)


def test_pipeline_after_import_pabee_needs_no_flag(trained_folder):
    classifier = pipeline("text-classification", model=str(trained_folder))
    assert type(classifier.model) is BertForSequenceClassificationWithPabee
    assert [result["label"] for result in classifier(TEXTS)] == [label for label, _, _ in one_at_a_time(
        trained_folder, TEXTS)]


def test_saved_tokenizer_loads_silently_at_a_terminal_without_the_flag(tmp_path):
    """
    AutoTokenizer reads the model's config to pick the tokenizer, which for a folder of custom code asks "Do you wish
    to run the custom code? [y/N]" at a terminal unless the config's model type is registered, as `import pabee`
    does. Standard input is a pseudo-terminal here, so that a prompt would show (and wait) as it does for a user.
    """
    folders = {}
    for family in MODEL_CLASSES:
        folder = str(save_tiny_model(tmp_path / family, family))
        MODEL_CLASSES[family].from_pretrained(folder, num_labels=2).save_pretrained(folder)
        expected = type(AutoTokenizer.from_pretrained(folder, config=load_pabee_config(folder)[0])).__name__
        folders[family] = (folder, expected)
    code = f"""
import sys
import pabee
from transformers import AutoTokenizer
for family, (folder, expected) in {folders!r}.items():
    print(family, type(AutoTokenizer.from_pretrained(folder)).__name__ == expected)
print("remote code run:", any(name.startswith("transformers_modules") for name in sys.modules))
"""
    controller, terminal = os.openpty()
    try:
        status, output = run_python(code, stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert status == 0, output
    lines = [line for line in output.splitlines() if line.split(" ")[0] in MODEL_CLASSES or "remote code" in line]
    assert lines == [f"{family} True" for family in MODEL_CLASSES] + ["remote code run: False"], output
    for words in ("custom code", "[y/N]", "trust_remote_code", "model of type"):
        assert words not in output, output


@pytest.mark.parametrize("saved_as", ["plain BertForSequenceClassification", "reference checkpoint"])
def test_plain_bert_folders_still_load_into_our_class_without_a_type_warning(saved_as, tmp_path, caplog):
    config = make_config("bert", 3)
    if saved_as == "reference checkpoint":  # model_type "bert", no PABEE settings, our weights
        make_model("bert", 3).save_pretrained(tmp_path)
        saved = json.loads((tmp_path / "config.json").read_text())
        for name in ("model_type", "auto_map", "patience", "exit_pooling", "exit_criterion", "exit_threshold",
                     "regression_threshold", "layer_loss_weights"):
            saved.pop(name)
        (tmp_path / "config.json").write_text(json.dumps({**saved, "model_type": "bert"}))
        (tmp_path / "modeling_pabee_bert.py").unlink()
    else:
        BertForSequenceClassification(config).save_pretrained(tmp_path)
    assert load_pabee_config(tmp_path)[1] == "bert"  # what run_glue_with_pabee.py's --model_type is checked against
    with caplog.at_level("WARNING"):
        model = BertForSequenceClassificationWithPabee.from_pretrained(tmp_path, patience=2)
    assert not [record for record in caplog.records if "model of type" in record.getMessage()]
    assert type(model.config) is PabeeBertConfig and model.config.patience == 2
    assert model.config.exit_pooling == "pooler" and model.config.num_hidden_layers == config.num_hidden_layers


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """
    A single-sentence (SST-2) model with named labels, a tokenizer for the fixtures' words and classifiers spread so
    that the test texts exit at different layers at the saved patience 1.
    """
    folder = tmp_path_factory.mktemp("trained")
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(VOCAB)}, do_lower_case=True)
    model = make_model("bert", 2, patience=1, exit_pooling="mean")
    model.config.finetuning_task = "sst-2"
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    with torch.no_grad():  # centre each classifier's logits over the test texts, so that their predictions differ
        encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
        all_layer_logits = model(**encoded, output_all_layer_logits=True).all_layer_logits  # (texts, layers, labels)
        for layer, classifier in enumerate(model.classifiers):
            classifier.bias -= all_layer_logits[:, layer].mean(dim=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def one_at_a_time(folder, texts, patience=None, exit_confidence=None):
    """(label name, probability, exit layer) of each text run alone through our class, read from its logits."""
    model = BertForSequenceClassificationWithPabee.from_pretrained(folder).eval()
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    answers = []
    with torch.no_grad():
        for text in texts:
            output = model(**tokenizer(text, return_tensors="pt"), patience=patience, exit_confidence=exit_confidence)
            probabilities = torch.softmax(output.logits[0], dim=-1)
            label = int(probabilities.argmax())
            answers.append((model.config.id2label[label], float(probabilities[label]), int(output.exit_layers[0])))
    return answers


def test_pipeline_with_trust_remote_code_gives_the_labels_and_scores_of_our_class(trained_folder,
                                                                                 without_pabee_registered):
    classifier = pipeline("text-classification", model=str(trained_folder), trust_remote_code=True)
    assert type(classifier.model).__module__.startswith("transformers_modules.")
    expected = one_at_a_time(trained_folder, TEXTS)
    assert len({exit_layer for _, _, exit_layer in expected}) > 1  # early exit at the saved patience 1, spread
    for batch_size in (1, len(TEXTS)):
        results = classifier(TEXTS, batch_size=batch_size)
        assert [result["label"] for result in results] == [label for label, _, _ in expected]
        for result, (_, probability, _) in zip(results, expected):
            assert result["score"] == pytest.approx(probability, abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Trainer and torch.compile


def test_trainer_trains_every_classifier_and_evaluates_with_early_exit(tmp_path):
    torch.manual_seed(0)
    model = make_model("bert", 3, patience=1)
    input_ids, attention_mask, token_type_ids = make_batch()
    labels = torch.arange(len(LENGTHS)) % 3
    dataset = datasets.Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist(),
         "token_type_ids": token_type_ids.tolist(), "labels": labels.tolist()}
    ).with_format("torch")
    before = [classifier.weight.detach().clone() for classifier in model.classifiers]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=8,
                             max_steps=3, learning_rate=1e-2, report_to="none", use_cpu=True, save_strategy="no",
                             disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)

    train_result = trainer.train()
    assert train_result.global_step == 3 and torch.isfinite(torch.tensor(train_result.training_loss))
    for layer, classifier in enumerate(model.classifiers):  # every layer's loss reaches its classifier
        assert not torch.equal(classifier.weight, before[layer]), layer

    metrics = trainer.evaluate()
    prediction = trainer.predict(dataset)
    model.eval()
    with torch.no_grad():  # the same examples straight through the model, one batch
        direct = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels)
    assert metrics["eval_loss"] == pytest.approx(float(direct.loss), abs=1e-5)
    logits, exit_layers = prediction.predictions  # the output's fields after the loss: logits, exit_layers
    torch.testing.assert_close(torch.from_numpy(logits), direct.logits, rtol=0, atol=1e-5)
    assert exit_layers.tolist() == direct.exit_layers.tolist()
    assert has_spread(direct.exit_layers, model.config.num_hidden_layers)


@torch.no_grad()
def test_torch_compile_gives_the_same_answers():
    """
    The "eager" backend: TorchDynamo captures the forward (graphs broken where early exit decides on data, guards on
    the shrinking batch) and runs the captured graphs as they are. Inductor would also compile each of those small
    graphs into kernels, far slower on 2 CPU cores for a test that is about the captured program, not kernel
    numerics. BERT only, 3 layers: even so, capturing costs seconds (ALBERT's loop is the same code).
    """
    model = make_model("bert", 3, patience=1, num_hidden_layers=3)
    inputs = inputs_of(make_batch(lengths=[5, 3, 4, 2]))
    expected = model(**inputs)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    try:
        answer = compiled(**inputs)
    finally:
        torch._dynamo.reset()
    assert torch.equal(answer.exit_layers, expected.exit_layers)
    assert len(set(expected.exit_layers.tolist())) > 1
    torch.testing.assert_close(answer.logits, expected.logits, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# python -m pabee.classify


def run_classify(capsys, *argv):
    answers = classify.main([str(arg) for arg in argv])
    return answers, capsys.readouterr().out.splitlines()


def printed(lines):
    """(label, probability, exit layer) per printed input line, after the header."""
    assert lines[0] == "label\tprobability\texit layer\tinput"
    rows = [line.split("\t", 3) for line in lines[1:]]
    return [(label, float(probability), int(exit_layer.split("/")[0])) for label, probability, exit_layer, _ in rows]


def test_classify_prints_the_answers_of_each_text_alone_at_any_batch_size(trained_folder, capsys):
    expected = one_at_a_time(trained_folder, TEXTS)
    _, batched = run_classify(capsys, "--model", trained_folder, *TEXTS)
    _, single = run_classify(capsys, "--model", trained_folder, "--batch_size", "1", *TEXTS)
    _, batches_of_3 = run_classify(capsys, "--model", trained_folder, "--batch_size", "3", *TEXTS)
    assert batched == single == batches_of_3
    assert [line.split("\t")[-1] for line in batched[1:]] == TEXTS
    assert [row[2] for row in printed(batched)] == [exit_layer for _, _, exit_layer in expected]
    assert len({row[2] for row in printed(batched)}) > 1
    for (label, probability, _), (expected_label, expected_probability, _) in zip(printed(batched), expected):
        assert label == expected_label and probability == pytest.approx(expected_probability, abs=5e-4)
    assert batched[1].split("\t")[2] == f"{expected[0][2]}/6"  # out of the model's 6 layers


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra", "modernbert", "deberta-v2"])
def test_classify_other_families_batched_as_one_at_a_time(family, tmp_path, capsys):
    """
    Their tokenizers give no token types (RoBERTa, DistilBERT, ModernBERT) or other special tokens, positions start
    later (RoBERTa), or the tokenizer is a sentencepiece model (DeBERTa-v3's).
    """
    folder = save_tiny_model(tmp_path / family, family)
    model = MODEL_CLASSES[family].from_pretrained(folder, num_labels=2, patience=1, exit_pooling="mean").eval()
    model.save_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, config=model.config)
    _, batched = run_classify(capsys, "--model", folder, *TEXTS)
    _, single = run_classify(capsys, "--model", folder, "--batch_size", "1", *TEXTS)
    assert batched == single
    with torch.no_grad():
        for (label, probability, exit_layer), text in zip(printed(batched), TEXTS):
            output = model(**tokenizer(text, return_tensors="pt"))
            probabilities = output.logits[0].softmax(-1)
            assert (label, exit_layer) == (str(int(probabilities.argmax())), int(output.exit_layers[0]))
            assert probability == pytest.approx(float(probabilities.max()), abs=5e-4)
    # transformers' pipeline, on the folder as saved, gives the same classes
    answers = pipeline("text-classification", model=folder)(TEXTS)
    assert [model.config.label2id[answer["label"]] for answer in answers] == [int(row[0]) for row in printed(batched)]


def test_classify_patience_overrides_the_saved_one(trained_folder, capsys):
    _, lines = run_classify(capsys, "--model", trained_folder, "--patience", "0", *TEXTS)
    assert {row[2] for row in printed(lines)} == {6}
    _, lines = run_classify(capsys, "--model", trained_folder, "--patience", "2", *TEXTS)
    assert [row[2] for row in printed(lines)] == [layer for _, _, layer in one_at_a_time(trained_folder, TEXTS, 2)]


def test_classify_confidence_gate_answers_as_the_gated_model_alone(trained_folder, capsys):
    answers = {}
    for gate in (0.0, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0):
        expected = [layer for _, _, layer in one_at_a_time(trained_folder, TEXTS, 1, gate)]
        _, lines = run_classify(capsys, "--model", trained_folder, "--patience", "1", "--exit_confidence", str(gate),
                                "--batch_size", "3", *TEXTS)
        answers[gate] = [row[2] for row in printed(lines)]
        assert answers[gate] == expected
    assert answers[0.0] == [layer for _, _, layer in one_at_a_time(trained_folder, TEXTS, 1)]  # 0: plain PABEE
    assert answers[0.0] != answers[1.0]  # the gate holds texts back (at 1.0, every one to the last layer)


@pytest.mark.parametrize("gate", ["-0.1", "1.5", "nan"])
def test_classify_refuses_a_gate_outside_0_1(trained_folder, capsys, gate):
    with pytest.raises(SystemExit) as exit_info:
        run_classify(capsys, "--model", trained_folder, "--exit_confidence", gate, *TEXTS)
    assert exit_info.value.code == 2
    assert "--exit_confidence must be a probability" in capsys.readouterr().err


def test_classify_reads_a_file_and_standard_input(trained_folder, tmp_path, capsys, monkeypatch):
    _, from_arguments = run_classify(capsys, "--model", trained_folder, *TEXTS)
    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(TEXTS[:4]) + "\n\n" + "\r\n".join(TEXTS[4:]) + "\n")  # a blank line, CRLF lines
    _, from_file = run_classify(capsys, "--model", trained_folder, "--file", text_file)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(TEXTS)))
    _, from_stdin = run_classify(capsys, "--model", trained_folder)
    assert from_file == from_stdin == from_arguments


def test_classify_label_names_and_pairs(tmp_path, capsys):
    """LABEL_0-style names print as the class id; a model of a pair task takes tab-separated pairs."""
    folder = save_tiny_model(tmp_path / "mrpc", "bert")
    model = MODEL_CLASSES["bert"].from_pretrained(folder, num_labels=2)
    model.config.finetuning_task = "mrpc"
    model.save_pretrained(folder)
    pairs = ["a good film\tthe film was good", "dull\tgreat"]
    answers, lines = run_classify(capsys, "--model", folder, *pairs)
    assert [line.split("\t", 3)[3] for line in lines[1:]] == pairs
    assert [row[0] for row in printed(lines)] == [str(answer.label_id) for answer in answers]
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    with torch.no_grad():
        logits = model.eval()(**tokenizer("a good film", "the film was good", return_tensors="pt")).logits[0]
    assert answers[0].value == pytest.approx(float(logits.softmax(-1).max()), abs=1e-6)


def test_classify_regression_model_prints_its_score(tmp_path, capsys):
    folder = save_tiny_model(tmp_path / "sts-b", "bert")
    model = MODEL_CLASSES["bert"].from_pretrained(folder, num_labels=1, patience=1, regression_threshold=0.05)
    model.config.finetuning_task = "sts-b"
    model.save_pretrained(folder)
    pair = ("a good film", "the film was good")
    _, lines = run_classify(capsys, "--model", folder, "\t".join(pair))
    assert lines[0] == "score\texit layer\tinput"
    score, exit_layer, *texts = lines[1].split("\t")
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    with torch.no_grad():
        output = model.eval()(**tokenizer(*pair, return_tensors="pt"))
    assert float(score) == pytest.approx(float(output.logits[0, 0]), abs=5e-4)
    assert exit_layer == f"{int(output.exit_layers[0])}/4" and tuple(texts) == pair


def weights_only(folder, copy):
    """A copy of model folder `folder` without its tokenizer files."""
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        (copy / name).write_bytes((Path(folder) / name).read_bytes())
    return copy


@pytest.mark.parametrize("argv, words", [(["--patience", "-1"], ["--patience", ">= 0"]),
                                         (["--batch_size", "0"], ["--batch_size"]),
                                         (["--file", "texts.txt", "a text"], ["not both"])])
def test_classify_bad_flags_are_one_line(argv, words, trained_folder, capsys):
    with pytest.raises(SystemExit):
        classify.main(["--model", str(trained_folder), *argv])
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and message.startswith("python -m pabee.classify: error: ")
    assert all(word in message for word in words), message


@pytest.mark.parametrize("case", ["no such folder", "empty folder", "backbone only", "pair to single-sentence model",
                                  "single text to pair model", "mixed", "only blank lines", "three columns",
                                  "longer than the model's positions", "no tokenizer files"])
def test_classify_errors_are_one_line(case, trained_folder, tmp_path, capsys, monkeypatch):
    model_folder, texts, words = {
        "no such folder": (tmp_path / "absent", ["a film"], ["absent", "no such folder"]),
        "empty folder": (tmp_path, ["a film"], ["no PABEE model", "config.json"]),
        "backbone only": (save_tiny_model(tmp_path / "backbone", "bert"), ["a film"],
                          ["no trained PABEE classifiers", "run_glue_with_pabee.py"]),
        "pair to single-sentence model": (trained_folder, ["a film\tanother film"], ["pair", "sst-2", "single texts"]),
        "single text to pair model": (None, ["a film"], ["single text", "mrpc", "pairs"]),
        "mixed": (trained_folder, ["a film", "a film\tanother"], ["input 2", "mix"]),
        "only blank lines": (trained_folder, None, ["no input", "blank"]),
        "three columns": (trained_folder, ["a\tb\tc"], ["argument 1", "two tab-separated texts"]),
        # 65 tokens for a model with 64 positions: without the check, truncating to 65 fails inside the embeddings
        "longer than the model's positions": (trained_folder, ["--max_seq_length", "65", " ".join(["film"] * 70)],
                                              ["--max_seq_length 65", "64 tokens"]),
        "no tokenizer files": (weights_only(trained_folder, tmp_path / "weights"), ["a film"],
                               ["weights", "no tokenizer files", "save_pretrained"]),
    }[case]
    if model_folder is None:
        model_folder = save_tiny_model(tmp_path / "mrpc", "bert")
        model = MODEL_CLASSES["bert"].from_pretrained(model_folder, num_labels=2)
        model.config.finetuning_task = "mrpc"
        model.save_pretrained(model_folder)
    if texts is None:
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n  \n\n"))
        texts = []
    with pytest.raises(SystemExit) as error:
        classify.main(["--model", str(model_folder), *texts])
    message = str(error.value)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, (word, message)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------------------------------
# README's "Share and use a trained model" runs as written, on a small trained folder in place of output/demo

README_SECTION = (Path(__file__).resolve().parent.parent / "README.md").read_text().split(
    "## Share and use a trained model")[1].split("\n## ")[0]


def test_readme_share_section_commands_run(trained_folder, tmp_path, capsys, monkeypatch):
    bash_blocks = re.findall(r"```bash\n(.*?)```", README_SECTION, flags=re.DOTALL)
    for line in (line for block in bash_blocks for line in block.splitlines()):
        piped_input = None
        if line.startswith("printf "):
            printf, line = line.split(" | ", 1)
            piped_input = shlex.split(printf)[1].replace("\\n", "\n")
            monkeypatch.setattr(sys, "stdin", io.StringIO(piped_input))
        argv = shlex.split(line.replace("output/demo", str(trained_folder)))
        assert argv[:3] == ["python", "-m", "pabee.classify"]
        answers = classify.main(argv[3:])
        lines = capsys.readouterr().out.splitlines()
        assert len(answers) == len(lines) - 1 == 2 and lines[1].endswith("a gripping, funny film")

    (block,) = re.findall(r"```python\n(.*?)```", README_SECTION, flags=re.DOTALL)
    block = block.replace('"output/demo-patience3"', repr(str(tmp_path / "copy"))).replace(
        '"output/demo"', repr(str(trained_folder)))
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["output"].exit_layers.shape == (1,)
    copy = AutoModelForSequenceClassification.from_pretrained(tmp_path / "copy", trust_remote_code=True)
    assert copy.config.patience == 3 and (tmp_path / "copy" / "tokenizer.json").is_file()
