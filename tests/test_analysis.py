"""What run_glue_with_pabee.py gives for choosing an exit setting: other exit criteria, per-layer metrics, the
one-pass sweep, the trade-off plot, and test-set predictions in GLUE's submission format.

    python -m pytest tests/test_analysis.py -q
"""

import json
import os
import shutil

import matplotlib.image
import pytest
import torch
from transformers import AutoTokenizer

import run_glue_with_pabee
from fixtures_glue import NUM_LAYERS, NUM_TEST, run_main, save_tiny_model, write_glue_task, write_test_split
from pabee import BertForSequenceClassificationWithPabee
from pabee.glue import get_task, read_glue_split

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def offline_and_single_threaded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
        yield
    torch.set_num_threads(threads)


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

    settings = [entry["setting"] for entry in real["entries"]]
    expected_thresholds = [float(t) for t in thresholds.split(",")]
    assert settings[:3] == ["patience 0", "patience 1", "patience 2"]
    assert [entry["threshold"] for entry in real["entries"][3:]] == expected_thresholds
    assert {entry["criterion"] for entry in real["entries"][3:]} == {criterion}
    for timed, simulated in zip(real["entries"], one_pass["entries"]):
        assert timed["setting"] == simulated["setting"]
        assert timed["simulation_agreement"] == 1.0, timed["setting"]
        assert timed["exit_histogram"] == simulated["exit_histogram"], timed["setting"]
        assert timed["metrics"] == pytest.approx(simulated["metrics"]), timed["setting"]
        assert timed["eval_seconds"] > 0 and simulated["eval_seconds"] is None
    # Entropy 0.7 is above ln 2, the most two classes can have, and any top probability of two classes is above
    # 0.5 but for exact ties: those thresholds exit early for sure.
    assert any(entry["avg_exit_layer"] < NUM_LAYERS for entry in real["entries"][3:])


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
