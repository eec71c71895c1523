"""What run_glue_with_pabee.py gives for choosing an exit setting: other exit criteria, per-layer metrics, the
one-pass sweep, the trade-off plot, and test-set predictions in GLUE's submission format.

    python -m pytest tests/test_analysis.py -q
"""

import json
import os
import shutil

import matplotlib.image
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import run_glue_with_pabee
from fixtures_glue import NUM_LAYERS, NUM_TEST, run_main, save_tiny_model, write_glue_task, write_test_split
from pabee import BertForSequenceClassificationWithPabee
from pabee.evaluation import ORACLES, oracle_exit_layers
from pabee.glue import get_task, read_glue_split

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`trained(task)`: (data folder, output folder of a short training run) for sst-2 or mnli, made once."""
    root = tmp_path_factory.mktemp("analysis")
    model = save_tiny_model(root / "model", "bert")
    made = {}

    def get(task):
        if task not in made:
            data_dir = write_glue_task(root / task, task)
            write_test_split(data_dir, task)
            output_dir = root / f"out-{task}"
            run_main(["--model_name_or_path", model, "--task_name", task, "--data_dir", data_dir, "--output_dir",
                      output_dir, "--do_train", "--max_steps", "30", "--learning_rate", "3e-3", "--save_steps", "0",
                      "--max_seq_length", "32", "--no_cuda"])
            made[task] = (data_dir, output_dir)
        return made[task]

    return get


def evaluate(data_dir, output_dir, *extra):
    run_main(["--task_name", "sst-2", "--data_dir", data_dir, "--output_dir", output_dir, "--do_eval",
              "--max_seq_length", "32", "--no_cuda", "--per_gpu_eval_batch_size", "5", *extra])
    with open(os.path.join(output_dir, "eval_results.json")) as file:
        return json.load(file)["runs"][-1]


def copy_of(folder, tmp_path):
    shutil.copytree(folder, tmp_path / "out")
    return tmp_path / "out"


@pytest.mark.parametrize("criterion, thresholds", [("entropy", "0.3,0.6,0.7"), ("confidence", "0.5,0.6,0.9")])
def test_criterion_sweep_real_runs_agree_with_one_pass(trained, tmp_path, criterion, thresholds):
    data_dir, trained_dir = trained("sst-2")
    output_dir = copy_of(trained_dir, tmp_path)
    real = evaluate(data_dir, output_dir, "--patience", "0,1,2", "--exit_criterion", criterion,
                    "--exit_thresholds", thresholds)
    one_pass = evaluate(data_dir, output_dir, "--patience", "0,1,2", "--exit_criterion", criterion,
                        "--exit_thresholds", thresholds, "--sweep_from_one_pass")

    entries = [entry for entry in real["entries"] if entry["criterion"] not in ORACLES]
    settings = [entry["setting"] for entry in entries]
    expected_thresholds = [float(t) for t in thresholds.split(",")]
    assert settings[:3] == ["patience 0", "patience 1", "patience 2"]
    assert [entry["threshold"] for entry in entries[3:]] == expected_thresholds
    assert {entry["criterion"] for entry in entries[3:]} == {criterion}
    assert_real_runs_agree_with_one_pass(real, one_pass)
    # Entropy 0.7 is above ln 2, the most two classes can have, and any top probability of two classes is above
    # 0.5 but for exact ties: those thresholds exit early for sure.
    assert any(entry["avg_exit_layer"] < NUM_LAYERS for entry in entries[3:])


def assert_real_runs_agree_with_one_pass(real, one_pass):
    """Timed early-exit runs and the one-pass simulation give the same settings, exits and metrics."""
    assert [entry["setting"] for entry in real["entries"]] == [entry["setting"] for entry in one_pass["entries"]]
    for timed, simulated in zip(real["entries"], one_pass["entries"]):
        if timed["criterion"] in ORACLES:  # never run: both come from the full-depth pass
            assert timed == {**simulated, "wall_speedup": timed["wall_speedup"]}
            continue
        assert timed["simulation_agreement"] == 1.0, timed["setting"]
        assert timed["exit_histogram"] == simulated["exit_histogram"], timed["setting"]
        assert timed["metrics"] == pytest.approx(simulated["metrics"]), timed["setting"]
        assert timed["eval_seconds"] > 0 and simulated["eval_seconds"] is None


def test_gated_patience_grid_real_runs_agree_with_one_pass(trained, tmp_path):
    data_dir, trained_dir = trained("sst-2")
    output_dir = copy_of(trained_dir, tmp_path)
    flags = ["--patience", "0,1,2", "--exit_confidence", "0.5,0.52,0.55"]
    real = evaluate(data_dir, output_dir, *flags)
    one_pass = evaluate(data_dir, output_dir, *flags, "--sweep_from_one_pass")

    # Patience 0 has nothing to gate: the grid is every other patience under every gate.
    assert [entry["setting"] for entry in real["entries"] if entry["criterion"] == "patience"] == [
        "patience 0", "patience 1", "patience 2",
        "patience 1, confidence >= 0.5", "patience 2, confidence >= 0.5",
        "patience 1, confidence >= 0.52", "patience 2, confidence >= 0.52",
        "patience 1, confidence >= 0.55", "patience 2, confidence >= 0.55",
    ]
    assert_real_runs_agree_with_one_pass(real, one_pass)
    by_setting = {entry["setting"]: entry for entry in real["entries"]}
    # A two-class top probability is at least 0.5: that gate lets every layer count, as plain PABEE does.
    for patience in (1, 2):
        assert by_setting[f"patience {patience}, confidence >= 0.5"]["exit_histogram"] == \
            by_setting[f"patience {patience}"]["exit_histogram"]
    # A stricter gate can only delay exits.
    for patience in (1, 2):
        layers = [by_setting[f"patience {patience}, confidence >= {gate}"]["avg_exit_layer"]
                  for gate in ("0.5", "0.52", "0.55")]
        assert layers == sorted(layers)


def test_per_layer_metrics_and_plot(trained, tmp_path):
    data_dir, trained_dir = trained("sst-2")
    output_dir = copy_of(trained_dir, tmp_path)
    result = evaluate(data_dir, output_dir, "--patience", "0,1,2,3")

    (layers,) = result["layer_metrics"]
    assert (layers["checkpoint"], layers["eval_set"]) == ("final", "dev")
    assert [row["layer"] for row in layers["layers"]] == list(range(1, NUM_LAYERS + 1))
    # The last classifier alone is the full-depth model.
    full_depth = next(entry for entry in result["entries"] if entry["patience"] == 0)
    assert layers["layers"][-1]["acc"] == pytest.approx(full_depth["metrics"]["acc"])
    assert all(0 <= row["acc"] <= 1 for row in layers["layers"])

    plot = output_dir / "tradeoff_final_dev.png"
    data = plot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    image = matplotlib.image.imread(plot)  # decodes the whole file: a truncated or corrupt PNG raises
    height, width = image.shape[:2]
    assert width > height > 200  # two panels side by side
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas


@pytest.mark.parametrize("task", ["sst-2", "mnli"])
def test_do_predict_writes_glue_submission_files(trained, tmp_path, task):
    data_dir, trained_dir = trained(task)
    output_dir = copy_of(trained_dir, tmp_path)
    run_main(["--task_name", task, "--data_dir", data_dir, "--output_dir", output_dir, "--do_predict",
              "--patience", "0,2", "--max_seq_length", "32", "--no_cuda", "--per_gpu_eval_batch_size", "6"])

    glue_task = get_task(task)
    model = BertForSequenceClassificationWithPabee.from_pretrained(output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    files = {"sst-2": {"test": "SST-2.tsv"}, "mnli": {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"}}
    for patience in (0, 2):
        folder = output_dir / "predictions" / f"patience_{patience}"
        assert sorted(os.listdir(folder)) == sorted(files[task].values())
        for split, name in files[task].items():
            lines = (folder / name).read_text().splitlines()
            assert lines[0] == "index\tprediction"
            rows = [line.split("\t") for line in lines[1:]]
            assert [int(index) for index, _ in rows] == list(range(NUM_TEST))
            assert {label for _, label in rows} <= set(glue_task.labels)
            # The file's answers are those of real early exit on each test example alone.
            examples = read_glue_split(data_dir, glue_task, split)
            with torch.no_grad():
                for (_, label), example in zip(rows, examples):
                    inputs = tokenizer(example.text_a, example.text_b, return_tensors="pt")
                    answer = model(**inputs, patience=patience).logits.argmax(-1).item()
                    assert label == glue_task.labels[answer]


def test_exit_criterion_on_regression_is_refused(capsys):
    with pytest.raises(SystemExit) as exit:
        run_glue_with_pabee.main(["--task_name", "sts-b", "--output_dir", "unused", "--do_eval",
                                  "--exit_criterion", "entropy", "--exit_thresholds", "0.1"])
    assert exit.value.code != 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "regression" in line and "patience" in line


@pytest.mark.parametrize("extra, words", [
    (["--exit_criterion", "entropy"], ["--exit_thresholds"]),
    (["--exit_thresholds", "0.1"], ["--exit_criterion"]),
    (["--exit_criterion", "confidence", "--exit_thresholds", "0.5,1.5"], ["probabilities"]),
    (["--exit_criterion", "entropy", "--exit_thresholds", "0.1,x"], ["--exit_thresholds"]),
])
def test_bad_exit_criterion_flags(capsys, extra, words):
    with pytest.raises(SystemExit) as exit:
        run_glue_with_pabee.main(["--task_name", "sst-2", "--output_dir", "unused", "--do_eval", *extra])
    assert exit.value.code != 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert all(word in line for word in words), line


def test_oracle_exit_layers_on_hand_made_logits():
    # Four layers, two classes; each row is one example's predicted class per layer (logits +-1 around it).
    classes = np.array([
        [1, 1, 1, 1],  # agrees from layer 1
        [0, 1, 0, 1],  # first agrees at layer 2 (and changes its mind after: the oracle still exits there)
        [0, 0, 0, 1],  # only the last layer agrees
        [1, 0, 0, 0],  # agrees from layer 2
    ])
    logits = np.stack([1.0 - classes, classes.astype(float)], axis=-1) * 2 - 1  # (4, 4, 2)
    labels = np.array([1, 0, 1, 1])
    assert oracle_exit_layers(logits, 0.1).tolist() == [1, 2, 4, 2]
    # Earliest correct: example 2 is right at layer 1; example 4 is right only at layer 1 (full depth is wrong).
    assert oracle_exit_layers(logits, 0.1, labels).tolist() == [1, 1, 4, 1]
    # Regression: within the threshold of the last layer's score, strictly.
    scores = np.array([[[0.0], [2.85], [3.05], [3.0]], [[3.15], [0.0], [0.0], [3.0]]])
    assert oracle_exit_layers(scores, 0.1).tolist() == [3, 4]
    assert oracle_exit_layers(scores, 0.2).tolist() == [2, 1]


def test_oracle_bounds_in_every_evaluation(trained, tmp_path):
    data_dir, trained_dir = trained("sst-2")
    output_dir = copy_of(trained_dir, tmp_path)
    result = evaluate(data_dir, output_dir, "--patience", "0,1", "--sweep_from_one_pass")
    entries = {entry["setting"]: entry for entry in result["entries"]}
    agreeing, correct = entries["oracle: full-depth answer"], entries["oracle: earliest correct"]

    # Recompute both from each layer's answers, as a user would from the per-layer predictions.
    model = BertForSequenceClassificationWithPabee.from_pretrained(output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    examples = read_glue_split(data_dir, get_task("sst-2"), "dev")
    with torch.no_grad():
        inputs = tokenizer([example.text_a for example in examples], padding=True, return_tensors="pt")
        layers = model(**inputs, output_all_layer_logits=True).all_layer_logits.argmax(dim=-1).numpy()
    labels = np.array([int(example.label) for example in examples])
    first_agreeing = [next(i + 1 for i in range(NUM_LAYERS) if row[i] == row[-1]) for row in layers]
    first_correct = [next((i + 1 for i in range(NUM_LAYERS) if row[i] == label), NUM_LAYERS)
                     for row, label in zip(layers, labels)]
    assert agreeing["avg_exit_layer"] == pytest.approx(np.mean(first_agreeing))
    assert correct["avg_exit_layer"] == pytest.approx(np.mean(first_correct))
    assert agreeing["metrics"]["acc"] == pytest.approx(entries["patience 0"]["metrics"]["acc"])  # the same answers
    assert correct["metrics"]["acc"] == pytest.approx(np.mean((layers == labels[:, None]).any(axis=1)))
    assert agreeing["layer_speedup"] == pytest.approx(NUM_LAYERS / np.mean(first_agreeing))
    table = (output_dir / "eval_results.txt").read_text()
    assert "oracle: full-depth answer" in table and "oracle: earliest correct" in table
