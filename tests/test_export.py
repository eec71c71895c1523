"""Export to ONNX Runtime (`python -m pabee.export`) and its runner: the same answers and exit layers as torch.

Tiny random models of every family are exported; the runner's logits must equal torch's within 1e-4 and its exit
layers must be identical, under patience, gated patience, entropy, confidence and regression thresholds, batched and
one at a time. The runner's exit rule is also checked against the modeling file's `simulate_exit_layers` on the same
logits, and the exported folder is run in a process where torch cannot be imported.

    python -m pytest tests/test_export.py -q
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from fixtures_glue import VOCAB
from test_modeling import (
    LENGTHS,
    REGRESSION_THRESHOLDS,
    criterion_thresholds,
    example_inputs,
    gates_between_probabilities,
    has_spread,
    make_batch,
    make_model,
    patience_values,
)
from transformers import BertTokenizerFast

from pabee import classify, export
from pabee.classify import EXPORTED_SETTINGS_FILE
from pabee.modeling_pabee import simulate_exit_layers
from pabee.onnx_int8 import ACTIVATION_SCHEMES
from pabee.onnx_runner import SETTINGS_FILE, PabeeOnnxModel, exit_layers_from_logits

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (variant of test_modeling, exit pooling, task): every family with the paper's pooler (DeBERTa with and without its
# convolution and token types), mean pooling on three, and regression on two.
EXPORTED = [(variant, "pooler", "classification") for variant in
            ["bert", "albert", "roberta", "xlm_roberta", "distilbert", "electra", "modernbert", "deberta_v3",
             "deberta_v2"]] + [
    ("bert", "mean", "classification"), ("distilbert", "mean", "classification"),
    ("electra", "mean", "classification"),
    ("bert", "pooler", "regression"), ("albert", "pooler", "regression"), ("distilbert", "mean", "regression"),
]
NUM_LABELS = {"classification": 3, "regression": 1}
TEXTS = ["a good film", "bad bad plot", "the actor was superb and lovely", "dull", "a weak story , but a fine cast",
         "boring", "great", "an awful movie about the plot"]


def save_model(model, folder):
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(VOCAB)}, do_lower_case=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(torch model, its runner) per entry of EXPORTED, exported once for the module."""
    cache = {}

    def get(variant, exit_pooling, task):
        key = (variant, exit_pooling, task)
        if key not in cache:
            model = make_model(variant, NUM_LABELS[task], exit_pooling=exit_pooling)
            folder = save_model(model, tmp_path_factory.mktemp(f"{variant}-{exit_pooling}-{task}"))
            output = export.export_model(folder, os.path.join(folder, "onnx"))
            cache[key] = model, PabeeOnnxModel(output, threads=1)
        return cache[key]

    return get


def numpy_inputs(input_ids, attention_mask, token_type_ids):
    return (input_ids.numpy(), attention_mask.numpy(), None if token_type_ids is None else token_type_ids.numpy())


def exit_settings(model, task):
    """Every rule with values that spread the tiny model's exits: patience, gated patience, entropy, confidence."""
    num_layers = model.config.num_hidden_layers
    if task == "regression":
        return [dict(patience=p, regression_threshold=t) for p in patience_values(num_layers)
                for t in REGRESSION_THRESHOLDS]
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    gates = gates_between_probabilities(model, input_ids, attention_mask, token_type_ids)
    return ([dict(patience=p) for p in patience_values(num_layers)]
            + [dict(patience=p, exit_confidence=g) for p in (1, 2) for g in gates]
            + [dict(exit_criterion=c, exit_threshold=t) for c in ("entropy", "confidence")
               for t in criterion_thresholds(model, c)])


@pytest.mark.parametrize("variant, exit_pooling, task", EXPORTED)
@torch.no_grad()
def test_every_layer_logits_equal_torch(exported, variant, exit_pooling, task):
    model, runner = exported(variant, exit_pooling, task)
    inputs = make_batch(config=model.config)
    expected = model(inputs[0], attention_mask=inputs[1], token_type_ids=inputs[2], patience=0,
                     output_all_layer_logits=True).all_layer_logits.numpy()
    _, exit_layers, all_layer_logits = runner(*numpy_inputs(*inputs), all_layers=True)
    assert all_layer_logits.shape == expected.shape
    np.testing.assert_allclose(all_layer_logits, expected, rtol=0, atol=1e-4)
    assert exit_layers.tolist() == [model.config.num_hidden_layers] * len(LENGTHS)


@pytest.mark.parametrize("variant, exit_pooling, task", EXPORTED)
@torch.no_grad()
def test_early_exit_gives_torchs_exit_layers_batched_and_alone(exported, variant, exit_pooling, task):
    model, runner = exported(variant, exit_pooling, task)
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    spread = False
    for settings in exit_settings(model, task):
        expected = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **settings)
        logits, exit_layers = runner(*numpy_inputs(input_ids, attention_mask, token_type_ids), **settings)
        assert exit_layers.tolist() == expected.exit_layers.tolist(), settings
        np.testing.assert_allclose(logits, expected.logits.numpy(), rtol=0, atol=1e-4)
        for b in range(len(LENGTHS)):
            alone = example_inputs(input_ids, attention_mask, token_type_ids, b)
            types = alone["token_type_ids"]
            alone_logits, alone_exit = runner(alone["input_ids"].numpy(), np.ones_like(alone["input_ids"].numpy()),
                                              None if types is None else types.numpy(), **settings)
            assert int(alone_exit[0]) == int(exit_layers[b]), (settings, b)
            np.testing.assert_allclose(alone_logits[0], logits[b], rtol=0, atol=1e-5)
        spread = spread or has_spread(expected.exit_layers, model.config.num_hidden_layers)
    assert spread, "no setting spread the exits: the test would not exercise early exit"


def random_layer_logits(seed, batch_size=64, num_layers=6, num_labels=3):
    """Logits rounded to a coarse grid, so that layers often agree and top-class probabilities repeat exactly."""
    generator = np.random.default_rng(seed)
    logits = np.round(generator.normal(size=(batch_size, num_layers, num_labels)) * 2) / 2
    if num_labels > 1:
        logits[:, :, 0] += generator.uniform(0, 1.5, size=(batch_size, 1))  # a class that tends to win every layer
    return logits.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_exit_rule_equals_the_modeling_files_on_the_same_logits(seed):
    classes = random_layer_logits(seed)
    scores = random_layer_logits(seed, num_labels=1) / 4
    probabilities = torch.from_numpy(classes).softmax(dim=-1)
    top = probabilities.amax(dim=-1).flatten().unique()
    entropy = torch.special.entr(probabilities).sum(dim=-1).flatten().unique()
    cases = [(classes, dict(patience=p, exit_confidence=g)) for p in range(0, 8) for g in
             [0.0, float(top[len(top) // 3]), float(top[len(top) // 2])]]  # gates equal to probabilities: ties
    # Entropies are sums of logarithms, which numpy and torch may round differently: thresholds between the values
    middles = (entropy[1:] + entropy[:-1]) / 2
    cases += [(classes, dict(exit_criterion="entropy", exit_threshold=float(t)))
              for t in middles[:: len(middles) // 5]]
    cases += [(classes, dict(exit_criterion="confidence", exit_threshold=float(t))) for t in top[:: len(top) // 5]]
    cases += [(scores, dict(patience=p, regression_threshold=t)) for p in range(0, 7) for t in (0.0, 0.125, 0.3)]
    spread = 0
    for logits, settings in cases:
        expected = simulate_exit_layers(torch.from_numpy(logits), settings.get("patience", 0),
                                        settings.get("regression_threshold", 0.1),
                                        settings.get("exit_criterion", "patience"), settings.get("exit_threshold"),
                                        settings.get("exit_confidence", 0.0))
        got = exit_layers_from_logits(logits, **settings)
        assert got.tolist() == expected.tolist(), settings
        spread += len(set(got.tolist())) > 2
    assert spread >= 10, "too few settings spread the exits over more than two layers"


def test_depth_cap_answers_at_the_cap():
    logits = random_layer_logits(3)
    uncapped = exit_layers_from_logits(logits, patience=1)
    capped = exit_layers_from_logits(logits, patience=1, max_exit_layer=3)
    assert capped.tolist() == np.minimum(uncapped, 3).tolist()
    assert (uncapped > 3).any() and (uncapped < 3).any()


# ---------------------------------------------------------------------------------------------------------------------
# The exported folder: a trained-looking model with a tokenizer and named labels


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A torch model folder whose classifiers spread the test texts' exits at the saved patience 1."""
    folder = tmp_path_factory.mktemp("trained")
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(VOCAB)}, do_lower_case=True)
    model = make_model("bert", 2, patience=1, exit_pooling="mean", vocab_size=len(VOCAB))
    model.config.finetuning_task = "sst-2"
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    with torch.no_grad():
        encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
        all_layer_logits = model(**encoded, output_all_layer_logits=True).all_layer_logits
        for layer, classifier in enumerate(model.classifiers):
            classifier.bias -= all_layer_logits[:, layer].mean(dim=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def exported_folder(model_folder, tmp_path_factory):
    return export.export_model(model_folder, str(tmp_path_factory.mktemp("exported") / "onnx"))


def run_classify(capsys, *argv):
    classify.main([str(arg) for arg in argv])
    return capsys.readouterr().out.splitlines()


def test_folder_holds_graphs_settings_tokenizer_and_runner(exported_folder, model_folder):
    names = set(os.listdir(exported_folder))
    assert {"embeddings.onnx", "layer_01.onnx", "layer_06.onnx", "pabee_onnx.py", SETTINGS_FILE,
            "tokenizer.json"} <= names
    assert not any(name.endswith(".safetensors") for name in names)
    with open(os.path.join(exported_folder, SETTINGS_FILE)) as file:
        settings = json.load(file)
    assert settings["precision"] == "fp32" and settings["patience"] == 1 and settings["num_labels"] == 2
    assert settings["id2label"] == {"0": "negative", "1": "positive"}
    assert SETTINGS_FILE == EXPORTED_SETTINGS_FILE
    with open(os.path.join(exported_folder, "config.json")) as file:
        assert "auto_map" not in json.load(file)  # no modeling code in the folder to point at
    with open(os.path.join(REPO_ROOT, "pabee", "onnx_runner.py")) as original:
        with open(os.path.join(exported_folder, "pabee_onnx.py")) as copy:
            assert copy.read() == original.read()


def test_classify_on_the_exported_folder_prints_what_the_torch_folder_prints(model_folder, exported_folder, capsys):
    for options in ([], ["--patience", "2"], ["--patience", "1", "--exit_confidence", "0.55"], ["--batch_size", "3"]):
        torch_lines = run_classify(capsys, "--model", model_folder, *options, *TEXTS)
        onnx_lines = run_classify(capsys, "--model", exported_folder, *options, *TEXTS)
        assert onnx_lines == torch_lines, options
    layers = {line.split("\t")[2] for line in torch_lines[1:]}
    assert len(layers) > 1, "the texts should exit at different layers"


BLOCK_TORCH = textwrap.dedent("""
    import sys

    class BlockTorch:
        '''Make `import torch` (and transformers, and this repository) fail, as where none is installed.'''

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "pabee"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
            return None

    sys.meta_path.insert(0, BlockTorch())
""")


def test_exported_folder_runs_where_torch_cannot_be_imported(model_folder, exported_folder, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": str(blocker), "OMP_NUM_THREADS": "1"}
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True,
                           cwd=tmp_path)
    assert check.returncode != 0 and "blocked" in check.stderr
    result = subprocess.run([sys.executable, os.path.join(exported_folder, "pabee_onnx.py"), "--patience", "2",
                             *TEXTS], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == run_classify(capsys, "--model", model_folder, "--patience", "2", *TEXTS)


BLOCK_FRAMEWORKS = textwrap.dedent("""
    import sys

    class BlockFrameworks:
        '''Make torch, transformers, this repository's modeling files, scipy and sklearn fail to import.'''

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "scipy", "sklearn") or name.startswith(
                    "pabee.modeling"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
            return None

    sys.meta_path.insert(0, BlockFrameworks())
""")


def run_python(arguments, tmp_path, block=True):
    """Python on `arguments` in a fresh process that finds this repository (and, with `block`, no frameworks)."""
    paths = [REPO_ROOT]
    if block:
        blocker = tmp_path / "blocker"
        blocker.mkdir(exist_ok=True)
        (blocker / "sitecustomize.py").write_text(BLOCK_FRAMEWORKS)
        paths.insert(0, str(blocker))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, arguments)], env=env, capture_output=True, text=True,
                          cwd=tmp_path)


def test_classify_on_an_exported_folder_imports_no_framework(model_folder, exported_folder, tmp_path, capsys):
    """
    `python -m pabee.classify` on an exported folder runs the runner's path: it starts without torch, transformers,
    the modeling files, scipy or sklearn (which the blocker makes fail to import), and prints what the torch folder
    prints. `import pabee` in a program still imports them (and registers the Auto classes).
    """
    check = run_python(["-c", "import pabee"], tmp_path)
    assert check.returncode != 0 and "blocked" in check.stderr
    for options in ([], ["--patience", "2"], ["--exit_criterion", "confidence", "--exit_threshold", "0.6"]):
        result = run_python(["-m", "pabee.classify", "--model", exported_folder, *options, *TEXTS], tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == run_classify(capsys, "--model", model_folder, *options, *TEXTS), options


def test_classify_on_a_torch_folder_from_the_command_line(model_folder, tmp_path, capsys):
    """The same command on a torch folder imports the model classes itself, without `import pabee`'s eager imports."""
    result = run_python(["-m", "pabee.classify", "--model", model_folder, "--patience", "2", *TEXTS], tmp_path,
                        block=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == run_classify(capsys, "--model", model_folder, "--patience", "2", *TEXTS)


# ---------------------------------------------------------------------------------------------------------------------
# int8 and errors


def test_int8_export_answers_close_to_fp32(model_folder, exported_folder, tmp_path, capsys):
    fp32 = PabeeOnnxModel(exported_folder, threads=1)
    encodings = fp32.load_tokenizer().encode_batch(TEXTS)
    ids, mask = np.array([e.ids for e in encodings]), np.array([e.attention_mask for e in encodings])
    _, _, expected = fp32(ids, mask, all_layers=True)
    for activations in ACTIVATION_SCHEMES:
        int8_folder = export.export_model(model_folder, str(tmp_path / activations), int8=True,
                                          int8_activations=activations)
        int8 = PabeeOnnxModel(int8_folder, threads=1)
        assert (int8.settings["precision"], int8.settings["int8_activations"]) == ("int8", activations)
        assert os.path.getsize(os.path.join(int8_folder, "layer_01.onnx")) < os.path.getsize(
            os.path.join(exported_folder, "layer_01.onnx"))
        _, _, got = int8(ids, mask, all_layers=True)
        # int8 weights and activations: every layer's logits within 5% of the largest fp32 logit
        np.testing.assert_allclose(got, expected, rtol=0, atol=0.05 * np.abs(expected).max(), err_msg=activations)
        assert not np.array_equal(got, expected)
        lines = run_classify(capsys, "--model", int8_folder, "--int8", *TEXTS)
        assert [line.split("\t")[-1] for line in lines[1:]] == TEXTS


@pytest.mark.parametrize("variant, exit_pooling, task", [entry for entry in EXPORTED if entry[0] != "deberta_v2"])
@torch.no_grad()
def test_per_token_int8_answers_batched_equal_alone(exported, variant, exit_pooling, task, tmp_path):
    """The int8 export's default scales each token alone, so neither the batch nor its padding moves an answer."""
    model, fp32 = exported(variant, exit_pooling, task)
    int8 = PabeeOnnxModel(export.export_model(fp32.settings["source"], str(tmp_path / "int8"), int8=True),
                          threads=1)
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    inputs = numpy_inputs(input_ids, attention_mask, token_type_ids)
    _, _, every_layer = int8(*inputs, all_layers=True)
    _, _, fp32_every_layer = fp32(*inputs, all_layers=True)
    assert not np.allclose(every_layer, fp32_every_layer, rtol=0, atol=1e-4)  # the int8 graphs run, not fp32's
    for settings in exit_settings(model, task):
        logits, exit_layers = int8(*inputs, **settings)
        for b in range(len(LENGTHS)):
            alone = {name: None if value is None else value.numpy()
                     for name, value in example_inputs(input_ids, attention_mask, token_type_ids, b).items()}
            alone_logits, alone_exit = int8(alone["input_ids"], np.ones_like(alone["input_ids"]),
                                            alone["token_type_ids"], **settings)
            assert int(alone_exit[0]) == int(exit_layers[b]), (settings, b)
            np.testing.assert_allclose(alone_logits[0], logits[b], rtol=0, atol=1e-5)


def test_per_batch_int8_answers_move_with_the_batch(exported, tmp_path):
    """Why per_token is the default: one scale per batch lets a large input change a small one's answer."""
    model, fp32 = exported("bert", "pooler", "classification")
    answers = {}
    for activations in ACTIVATION_SCHEMES:
        runner = PabeeOnnxModel(export.export_model(fp32.settings["source"], str(tmp_path / activations), int8=True,
                                                    int8_activations=activations), threads=1)
        input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
        inputs = numpy_inputs(input_ids, attention_mask, token_type_ids)
        _, _, batched = runner(*inputs, all_layers=True)
        alone = example_inputs(input_ids, attention_mask, token_type_ids, 0)
        types = alone["token_type_ids"]
        _, _, first_alone = runner(alone["input_ids"].numpy(), np.ones_like(alone["input_ids"].numpy()),
                                   None if types is None else types.numpy(), all_layers=True)
        answers[activations] = np.abs(batched[0] - first_alone[0]).max()
    assert answers["per_token"] < 1e-5 < answers["per_batch"]


def run_failing(capsys, module, *argv):
    with pytest.raises(SystemExit) as exit_info:
        module.main([str(arg) for arg in argv])
    error = capsys.readouterr().err
    return exit_info.value.code, error


def test_one_line_errors(model_folder, exported_folder, tmp_path, capsys):
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    code, error = run_failing(capsys, export, "--model", not_a_model, "--output", tmp_path / "out")
    assert code == 2 and len(error.strip().splitlines()) == 1 and "no PABEE model" in error
    assert not (tmp_path / "out").exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    code, error = run_failing(capsys, export, "--model", model_folder, "--output", occupied)
    assert code == 2 and len(error.strip().splitlines()) == 1 and "--overwrite" in error
    assert os.listdir(occupied) == ["keep.txt"]

    code, error = run_failing(capsys, export, "--model", exported_folder, "--output", tmp_path / "again")
    assert code == 2 and "exported" in error and len(error.strip().splitlines()) == 1

    code, error = run_failing(capsys, export, "--model", model_folder, "--output", tmp_path / "fp32",
                              "--int8_activations", "per_batch")
    assert code == 2 and "--int8" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "fp32").exists()

    with pytest.raises(SystemExit) as exit_info:
        classify.main(["--model", exported_folder, "--int8", "a good film"])
    message = str(exit_info.value.code)
    assert "fp32" in message and "--int8" in message and len(message.splitlines()) == 1
    capsys.readouterr()


def test_overwrite_replaces_the_folder(model_folder, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    export.export_model(model_folder, str(output), overwrite=True)
    assert not (output / "old.txt").exists() and (output / SETTINGS_FILE).exists()
    assert not [name for name in os.listdir(tmp_path) if "partial" in name]


def test_the_slowdown_guard_is_refused_where_the_runner_has_none(model_folder, exported_folder, tmp_path, capsys):
    guarded = tmp_path / "guarded"
    shutil.copytree(str(model_folder), guarded)
    config = json.loads((guarded / "config.json").read_text())
    (guarded / "config.json").write_text(json.dumps({**config, "slowdown_guard": 0.5}))
    code, error = run_failing(capsys, export, "--model", guarded, "--output", tmp_path / "out")
    assert code == 2 and "slowdown_guard" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()

    with pytest.raises(SystemExit) as exit_info:
        classify.main(["--model", exported_folder, "--slowdown_guard", "0.5", "a good film"])
    message = str(exit_info.value.code)
    assert "--slowdown_guard" in message and len(message.splitlines()) == 1
    capsys.readouterr()
