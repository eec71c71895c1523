"""Damaged model folders end in one line on standard error and a non-zero exit, never a traceback.

An exported folder is checked when it is opened, by `python -m pabee.classify` and by the folder's own runner
(`pabee_onnx.py`): a missing or truncated graph, a settings file that is not JSON or lacks a field, and a missing
tokenizer are each named. A torch folder whose weights are truncated is refused the same way.

    python -m pytest tests/test_damaged_folders.py -q
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from test_export import TEXTS, save_model
from test_modeling import make_model

from pabee import classify, export
from pabee.onnx_runner import SETTINGS_FILE, PabeeOnnxModel, read_settings

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_model(make_model("bert", 2, patience=1), tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def exported_folder(model_folder, tmp_path_factory):
    return export.export_model(model_folder, str(tmp_path_factory.mktemp("exported") / "onnx"))


def truncate(path):
    with open(path, "rb") as file:
        content = file.read()
    with open(path, "wb") as file:
        file.write(content[: len(content) // 2])


def edit_settings(folder, edit):
    path = os.path.join(folder, SETTINGS_FILE)
    with open(path) as file:
        settings = json.load(file)
    edit(settings)
    with open(path, "w") as file:
        json.dump(settings, file)


# case -> (how the folder is damaged, words the error must hold)
DAMAGES = {
    "missing graph": (lambda folder: os.remove(os.path.join(folder, "layer_02.onnx")), ["layer_02.onnx", "lacks"]),
    "missing embeddings graph": (lambda folder: os.remove(os.path.join(folder, "embeddings.onnx")),
                                 ["embeddings.onnx", "lacks"]),
    "truncated graph": (lambda folder: truncate(os.path.join(folder, "layer_03.onnx")),
                        ["layer_03.onnx", "damaged"]),
    "settings not JSON": (lambda folder: open(os.path.join(folder, SETTINGS_FILE), "w").write('{"layers": ['),
                          [SETTINGS_FILE, "cannot read"]),
    "settings not an object": (lambda folder: open(os.path.join(folder, SETTINGS_FILE), "w").write("[1, 2]"),
                               [SETTINGS_FILE, "no settings"]),
    "settings lack the layers": (lambda folder: edit_settings(folder, lambda settings: settings.pop("layers")),
                                 [SETTINGS_FILE, "lacks layers"]),
    "settings lack the patience": (lambda folder: edit_settings(folder, lambda settings: settings.pop("patience")),
                                   [SETTINGS_FILE, "lacks patience"]),
    "settings hold a bad rule": (lambda folder: edit_settings(folder, lambda settings: settings.update(
        exit_criterion="entropy", exit_threshold=None)), [SETTINGS_FILE, "exit_threshold"]),
    "settings file missing": (lambda folder: os.remove(os.path.join(folder, SETTINGS_FILE)),
                              [SETTINGS_FILE, "holds no"]),
    "missing tokenizer": (lambda folder: os.remove(os.path.join(folder, "tokenizer.json")),
                          ["tokenizer.json", "lacks"]),
    "truncated tokenizer": (lambda folder: truncate(os.path.join(folder, "tokenizer.json")),
                            ["tokenizer.json", "cannot load"]),
}


@pytest.fixture
def damaged(exported_folder, tmp_path):
    def make(case):
        folder = str(tmp_path / case.replace(" ", "_"))
        shutil.copytree(exported_folder, folder)
        DAMAGES[case][0](folder)
        return folder

    return make


def run(*command):
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, command)], env=env, capture_output=True, text=True,
                          cwd=REPO_ROOT)


def assert_one_line_error(result, words):
    assert result.returncode != 0 and result.stdout == "", result
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(word in result.stderr for word in words), result.stderr


@pytest.mark.parametrize("case", DAMAGES)
def test_classify_on_a_damaged_exported_folder_is_one_line(case, damaged):
    folder = damaged(case)
    result = run("-m", "pabee.classify", "--model", folder, *TEXTS[:2])
    assert_one_line_error(result, DAMAGES[case][1])
    assert result.stderr.startswith("error: ")


@pytest.mark.parametrize("case", DAMAGES)
def test_the_folders_runner_on_its_damaged_folder_is_one_line(case, damaged, exported_folder):
    folder = damaged(case)
    result = run(os.path.join(exported_folder, "pabee_onnx.py"), "--model", folder, *TEXTS[:2])
    assert_one_line_error(result, DAMAGES[case][1])
    assert result.returncode == 2 and result.stderr.startswith("pabee_onnx.py: error: ")


def test_the_undamaged_folder_answers(exported_folder):
    """The damages above are what fails: the same commands on the intact folder answer every text."""
    for command in (["-m", "pabee.classify"], [os.path.join(exported_folder, "pabee_onnx.py")]):
        result = run(*command, "--model", exported_folder, *TEXTS[:2])
        assert result.returncode == 0, result.stderr
        assert [line.split("\t")[-1] for line in result.stdout.splitlines()[1:]] == TEXTS[:2]


def test_the_runner_checks_the_folder_when_it_is_opened(damaged):
    """In Python too: PabeeOnnxModel and load_exported_model refuse the folder before anything runs."""
    for case in ("missing graph", "settings lack the layers"):
        folder = damaged(case)
        with pytest.raises(ValueError, match=DAMAGES[case][1][0]):
            PabeeOnnxModel(folder)
        with pytest.raises(classify.InputError, match=DAMAGES[case][1][0]):
            classify.load_exported_model(folder)
    with pytest.raises(ValueError, match="lacks layers"):
        read_settings(folder)


def test_a_torch_folder_with_truncated_weights_is_one_line(model_folder, tmp_path, capsys):
    folder = tmp_path / "truncated"
    shutil.copytree(model_folder, folder)
    truncate(folder / "model.safetensors")
    with pytest.raises(SystemExit) as exit_info:
        classify.main(["--model", str(folder), *TEXTS[:2]])
    message = str(exit_info.value.code)
    assert message.startswith("error: cannot load the model in") and str(folder) in message
    assert len(message.splitlines()) == 1
    assert capsys.readouterr().out == ""
