"""Folders saved by an earlier release, whose modeling file held all of the early-exit code, still load and answer as
they did: through their own copy of the code (`trust_remote_code=True`, in a process that never imported pabee) and
through this repository's classes (after `import pabee`, and with the family's class).

tests/fixtures/saved_pabee_<family>/ holds such a folder, as `save_pretrained` wrote it then (config.json, the weights,
and for BERT the modeling file; DistilBERT's, the same code but for its adapter, is left out), and
expected_answers.json: inputs, with the logits and exit layers the model gave at the time.

    python -m pytest tests/test_saved_folders.py -q
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import pabee

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FAMILY_CLASSES = {
    "bert": pabee.BertForSequenceClassificationWithPabee,
    "distilbert": pabee.DistilBertForSequenceClassificationWithPabee,
}


def saved_folder(family, tmp_path):
    """A copy of the saved folder (loading may write beside it) and what it answered when it was saved."""
    folder = tmp_path / f"saved_pabee_{family}"
    shutil.copytree(FIXTURES / f"saved_pabee_{family}", folder)
    expected = json.loads((folder / "expected_answers.json").read_text())
    return folder, expected


def answers(model, expected):
    with torch.no_grad():
        output = model.eval()(input_ids=torch.tensor(expected["input_ids"]),
                              attention_mask=torch.tensor(expected["attention_mask"]), output_all_layer_logits=True)
    return output.logits, output.exit_layers, output.all_layer_logits


def assert_answers_as_saved(model, expected):
    logits, exit_layers, all_layer_logits = answers(model, expected)
    assert exit_layers.tolist() == expected["exit_layers"]
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(all_layer_logits, torch.tensor(expected["all_layer_logits"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILY_CLASSES)
def test_earlier_folder_answers_as_saved_through_this_repositorys_classes(family, tmp_path):
    folder, expected = saved_folder(family, tmp_path)
    assert_answers_as_saved(FAMILY_CLASSES[family].from_pretrained(folder), expected)
    auto_model = AutoModelForSequenceClassification.from_pretrained(folder)  # registered by `import pabee`
    assert type(auto_model) is FAMILY_CLASSES[family]
    assert_answers_as_saved(auto_model, expected)


def test_earlier_folder_answers_as_saved_through_its_own_code_without_pabee(tmp_path):
    folder, expected = saved_folder("bert", tmp_path)
    script = f"""
import json, sys, torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
assert "pabee" not in sys.modules and "transformers_modules" in type(model).__module__, type(model).__module__
expected = json.load(open({str(folder / "expected_answers.json")!r}))
with torch.no_grad():
    output = model(input_ids=torch.tensor(expected["input_ids"]),
                   attention_mask=torch.tensor(expected["attention_mask"]))
print(json.dumps({{"logits": output.logits.tolist(), "exit_layers": output.exit_layers.tolist()}}))
"""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answered = json.loads(result.stdout.strip().splitlines()[-1])
    assert answered["exit_layers"] == expected["exit_layers"]
    torch.testing.assert_close(torch.tensor(answered["logits"]), torch.tensor(expected["logits"]), rtol=1e-5,
                               atol=1e-5)
