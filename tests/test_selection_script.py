"""run_glue_with_pabee.py chooses its exit setting on a calibration set: --calibration_fraction (held out of the
training data and recorded), --calibration_file, --select_setting, --save_selected; and pabee.calibration's split.
Same tiny models as tests/test_run_glue.py, on a larger SST-2 fixture.

    python -m pytest tests/test_selection_script.py -q
"""

import json
import shutil

import pytest
import torch
from transformers import AutoConfig, BertTokenizerFast, pipeline

import pabee.classify
import run_glue_with_pabee
from fixtures_glue import run_main, write_glue_task
from pabee import BertForSequenceClassificationWithPabee
from pabee.calibration import CALIBRATION_FILE, hold_out
from pabee.evaluation import ExitSetting
from pabee.glue import get_task, read_glue_split
from test_run_glue import models, read_runs  # noqa: F401 (fixtures)

NUM_TRAIN = 120
TEXTS = ["good film", "a dull and boring movie", "the story was lovely", "weak ending", "the cast"]


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    return write_glue_task(tmp_path_factory.mktemp("glue") / "SST-2", "sst-2", num_train=NUM_TRAIN)


def args(models, data_dir, output_dir, *extra):
    return ["--model_name_or_path", models["bert"], "--task_name", "SST-2", "--data_dir", data_dir, "--output_dir",
            output_dir, "--max_seq_length", "32", "--per_gpu_train_batch_size", "8", "--save_steps", "0", "--no_cuda",
            "--max_steps", "6", "--learning_rate", "1e-3", "--do_train", *extra]


SELECT = ["--select_setting", "consistency:0.3", "--selection_confidence", "0.8"]


@pytest.fixture(scope="module")
def selected(models, sst2, tmp_path_factory):
    """A run that holds out half the training data, chooses on it, saves the choice and evaluates on dev."""
    output_dir = tmp_path_factory.mktemp("selected") / "out"
    run_main(args(models, sst2, output_dir, "--calibration_fraction", "0.5", *SELECT, "--save_selected", "--do_eval",
                  "--patience", "0,1", "--sweep_from_one_pass"))
    return output_dir


# ---------------------------------------------------------------------------------------------------------------------
# The split


def test_hold_out_is_a_seeded_partition():
    examples = list(range(50))
    training, calibration, rows = hold_out(examples, 0.2, seed=7)
    assert len(calibration) == 10 and calibration == rows and rows == sorted(rows)
    assert sorted(training + calibration) == examples
    assert hold_out(examples, 0.2, seed=7) == (training, calibration, rows)
    assert hold_out(examples, 0.2, seed=8)[2] != rows


@pytest.mark.parametrize("fraction, words", [(0.001, "empty calibration set"), (0.999, "leaves no training data"),
                                             (0.0, "(0, 1)"), (1.0, "(0, 1)")])
def test_hold_out_refuses_an_empty_part(fraction, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        hold_out(list(range(50)), fraction, seed=0)


def test_held_out_examples_are_recorded_with_their_training_rows(selected, sst2):
    train = read_glue_split(sst2, get_task("sst-2"), "train")
    records = [json.loads(line) for line in (selected / CALIBRATION_FILE).read_text().splitlines()]
    assert len(records) == NUM_TRAIN // 2
    for record in records:
        example = train[record["train_index"]]
        assert (record["sentence"], record["label"]) == (example.text_a, example.label)
    training_args = json.loads((selected / "training_args.json").read_text())
    assert training_args["calibration_fraction"] == 0.5


def test_training_sees_only_the_rest(models, sst2, tmp_path, caplog):
    with caplog.at_level("INFO", logger="pabee.training"):
        run_main(args(models, sst2, tmp_path / "out", "--calibration_fraction", "0.25"))
    assert f"Num examples = {NUM_TRAIN - NUM_TRAIN // 4}" in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# The choice, saved and reported


def chosen_setting(config):
    if config.exit_criterion == "patience":
        return ExitSetting("patience", config.patience, config.exit_confidence)
    return ExitSetting(config.exit_criterion, config.exit_threshold)


def test_choice_is_saved_in_the_config_with_how_it_was_made(selected):
    config = json.loads((selected / "config.json").read_text())
    record = config["exit_selection"]
    assert record["risk"] == "consistency" and record["delta"] == 0.3 and record["epsilon"] == pytest.approx(0.2)
    assert record["calibration_examples"] == NUM_TRAIN // 2
    assert record["ordering_examples"] + record["tested_examples"] == NUM_TRAIN // 2
    model = BertForSequenceClassificationWithPabee.from_pretrained(selected)
    assert chosen_setting(model.config).label == record["setting"]
    # The folder still loads through its own copy of the modeling code, with the record.
    assert AutoConfig.from_pretrained(selected, trust_remote_code=True).exit_selection == record


def test_results_mark_the_chosen_row_with_its_dev_risk(selected):
    record = json.loads((selected / "config.json").read_text())["exit_selection"]
    entries = read_runs(selected)[-1]["entries"]
    marked = [entry for entry in entries if entry.get("selected")]
    assert len(marked) == 1 and marked[0]["setting"] == record["setting"] and marked[0]["eval_set"] == "dev"
    assert 0 <= marked[0]["selected"]["eval_risk"] <= 1 and marked[0]["selected"]["delta"] == 0.3
    table = (selected / "eval_results.txt").read_text()
    assert f"{record['setting']} (selected)" in table
    assert "consistency <= 0.3 at confidence 0.8" in table and "consistency on dev:" in table


@torch.no_grad()
def test_classify_answers_with_the_chosen_setting(selected, capsys):
    model = BertForSequenceClassificationWithPabee.from_pretrained(selected).eval()
    tokenizer = BertTokenizerFast.from_pretrained(selected)
    setting = chosen_setting(model.config)
    expected = [int(model(**tokenizer(text, return_tensors="pt"), **setting.model_kwargs(0.1)).exit_layers[0])
                for text in TEXTS]
    assert min(expected) < model.config.num_hidden_layers  # the chosen setting exits early: full depth would not do
    answers = pabee.classify.main(["--model", str(selected), *TEXTS])
    assert [answer.exit_layer for answer in answers] == expected


def test_pipeline_answers_with_the_chosen_setting(selected):
    answers = pabee.classify.main(["--model", str(selected), *TEXTS])
    classifier = pipeline("text-classification", model=str(selected), trust_remote_code=True)
    for answer, result in zip(answers, classifier(TEXTS)):
        # The label and the probability of the logits of the layer the chosen setting exits at.
        assert result["label"] == classifier.model.config.id2label[answer.label_id]
        assert result["score"] == pytest.approx(answer.value, abs=1e-5)


def test_evaluation_only_run_takes_the_recorded_calibration_set(selected, sst2, tmp_path, capsys):
    output_dir = tmp_path / "out"
    shutil.copytree(selected, output_dir)
    record = json.loads((selected / "config.json").read_text())["exit_selection"]
    run_main(["--task_name", "SST-2", "--data_dir", sst2, "--output_dir", output_dir, "--do_eval", "--no_cuda",
              "--max_seq_length", "32", *SELECT])
    assert f"Exit setting chosen on the calibration set: {record['setting']}" in capsys.readouterr().out
    marked = [entry for entry in read_runs(output_dir)[-1]["entries"] if entry.get("selected")]
    assert marked[0]["selected"]["calibration_examples"] == NUM_TRAIN // 2


def write_unlabelled(path, texts):
    path.write_text("".join(json.dumps({"sentence": text}) + "\n" for text in texts))
    return path


def test_unlabelled_calibration_file_is_enough_for_consistency(models, sst2, tmp_path, capsys):
    train = read_glue_split(sst2, get_task("sst-2"), "train")
    calibration = write_unlabelled(tmp_path / "unlabelled.jsonl", [example.text_a for example in train[:40]])
    run_main(args(models, sst2, tmp_path / "out", "--calibration_file", calibration, *SELECT))
    assert "Exit setting chosen on the calibration set" in capsys.readouterr().out


def test_nothing_certifiable_chooses_full_depth_and_says_so(models, sst2, tmp_path, capsys):
    output_dir = tmp_path / "out"
    run_main(args(models, sst2, output_dir, "--calibration_fraction", "0.25", "--select_setting", "consistency:0.01",
                  "--save_selected", "--do_eval", "--patience", "0,1", "--sweep_from_one_pass"))
    out = capsys.readouterr().out
    assert "nothing faster than full depth could be certified" in out and "patience 0 (selected)" in out
    config = json.loads((output_dir / "config.json").read_text())
    assert config["patience"] == 0 and config["exit_criterion"] == "patience"
    assert config["exit_selection"]["certified"] is False


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one line, nothing written


def _empty_calibration_file(models, data_dir, tmp_path, output_dir):
    (tmp_path / "empty.jsonl").write_text("")
    return args(models, data_dir, output_dir, "--calibration_file", tmp_path / "empty.jsonl", *SELECT), \
        ["empty calibration set"]


def _accuracy_drop_without_labels(models, data_dir, tmp_path, output_dir):
    calibration = write_unlabelled(tmp_path / "unlabelled.jsonl", ["good film", "dull film"])
    return args(models, data_dir, output_dir, "--calibration_file", calibration, "--select_setting",
                "accuracy_drop:0.1"), ["accuracy_drop", "label"]


BAD = {
    "delta 0": lambda m, d, t, o: (args(m, d, o, "--calibration_fraction", "0.2", "--select_setting",
                                        "consistency:0"), ["--select_setting", "delta must be in (0, 1)"]),
    "delta 1.5": lambda m, d, t, o: (args(m, d, o, "--calibration_fraction", "0.2", "--select_setting",
                                          "consistency:1.5"), ["delta must be in (0, 1)"]),
    "unknown risk": lambda m, d, t, o: (args(m, d, o, "--calibration_fraction", "0.2", "--select_setting",
                                             "accuracy:0.1"), ["consistency", "accuracy_drop"]),
    "selection confidence 1": lambda m, d, t, o: (args(m, d, o, "--calibration_fraction", "0.2", *SELECT[:2],
                                                       "--selection_confidence", "1"), ["--selection_confidence"]),
    "empty calibration file": _empty_calibration_file,
    "accuracy_drop without labels": _accuracy_drop_without_labels,
    "calibration fraction leaving no training data": lambda m, d, t, o: (
        args(m, d, o, "--calibration_fraction", "0.999"), ["leaves no training data"]),
    "calibration fraction giving no calibration set": lambda m, d, t, o: (
        args(m, d, o, "--calibration_fraction", "0.001"), ["empty calibration set"]),
    "calibration fraction 1": lambda m, d, t, o: (args(m, d, o, "--calibration_fraction", "1"), ["(0, 1)"]),
    "select_setting without a calibration set": lambda m, d, t, o: (args(m, d, o, *SELECT), ["calibration"]),
    "save_selected without select_setting": lambda m, d, t, o: (
        args(m, d, o, "--calibration_fraction", "0.2", "--save_selected"), ["--select_setting"]),
    "calibration fraction and file": lambda m, d, t, o: (
        args(m, d, o, "--calibration_fraction", "0.2", "--calibration_file", f"{d}/dev.tsv"), ["choose one"]),
}


@pytest.mark.parametrize("make", BAD.values(), ids=BAD.keys())
def test_bad_selection_input_is_one_line_and_writes_nothing(make, models, sst2, tmp_path, capsys):
    output_dir = tmp_path / "out"
    argv, words = make(models, sst2, tmp_path, output_dir)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_glue_with_pabee.main([str(arg) for arg in argv])
    code = exited.value.code
    stderr = capsys.readouterr().err + (code + "\n" if isinstance(code, str) else "")
    assert code not in (0, None) and "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0]
    assert all(word in lines[0] for word in words), lines[0]
    assert not output_dir.exists()


def test_evaluation_only_selection_without_a_recorded_set_is_an_error(models, sst2, tmp_path):
    output_dir = tmp_path / "out"
    run_main(args(models, sst2, output_dir))
    with pytest.raises(SystemExit) as exited:
        run_glue_with_pabee.main([str(arg) for arg in ["--task_name", "SST-2", "--data_dir", sst2, "--output_dir",
                                                       output_dir, "--do_eval", "--no_cuda", "--max_seq_length", "32",
                                                       *SELECT]])
    assert CALIBRATION_FILE in str(exited.value.code) and "--calibration_file" in str(exited.value.code)
