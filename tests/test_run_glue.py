"""End-to-end tests of run_glue_with_pabee.py: `main()` with an argv list, on GLUE folders in the original TSV layout
and tiny random models of every family that the tests write themselves (offline, CPU, no download).

Each task is trained once per session (`trained` fixture); tests that evaluate again work on a copy of its output.

    python -m pytest tests/test_run_glue.py -q
"""

import json
import logging
import os
import shutil
import struct

import datasets
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, BertTokenizerFast, DataCollatorWithPadding

import pabee.training
import run_glue_with_pabee
from fixtures_glue import (
    MODEL_TYPES,
    NUM_DEV,
    NUM_LAYERS,
    NUM_TEST,
    TASK_EVAL_SETS,
    TASK_FOLDERS,
    TASK_METRICS,
    VOCAB,
    Killed,
    changes,
    kill_at,
    run_main,
    save_tiny_model,
    snapshot,
    write_glue_task,
    write_test_split,
)
from pabee import AlbertForSequenceClassificationWithPabee, BertForSequenceClassificationWithPabee
from pabee.evaluation import ORACLES, ExitSetting, predict
from pabee.features import convert_examples_to_features
from pabee.glue import get_task, read_glue_split

TASKS = ["sst-2", "mrpc", "sts-b", "mnli"]
PATIENCES = [0, 1, 2, 3, 4]
DEFAULT_THRESHOLD = run_glue_with_pabee.DEFAULT_REGRESSION_THRESHOLD
STSB_THRESHOLD = 0.01  # not the default (and giving other exits), to see that it is saved with the model


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = {model_type: save_tiny_model(root / model_type, model_type) for model_type in MODEL_TYPES}
    paths["bert-no-dropout"] = save_tiny_model(root / "bert-no-dropout", "bert", dropout=False)
    return paths


@pytest.fixture(scope="session")
def glue(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue_data")
    return {task: write_glue_task(root / TASK_FOLDERS[task], task) for task in TASKS}


def base_args(model, data_dir, task, output_dir, *extra):
    return ["--model_name_or_path", str(model), "--task_name", TASK_FOLDERS.get(task, task), "--data_dir",
            str(data_dir), "--output_dir", str(output_dir), "--max_seq_length", "32",
            "--per_gpu_train_batch_size", "8", "--logging_steps", "2", "--save_steps", "3", "--no_cuda", *extra]


def train_args(models, glue, task, output_dir, *extra):
    """Train for 6 steps (checkpoints at 3 and 6), then evaluate at patience 0 to 4."""
    # MRPC gets its patience list with spaces, as users type it.
    patience = "0, 1,2 ,3,4" if task == "mrpc" else ",".join(map(str, PATIENCES))
    threshold = ["--regression_threshold", str(STSB_THRESHOLD)] if task == "sts-b" else []
    return base_args(models["bert"], glue[task], task, output_dir, "--model_type", "bert", "--do_train", "--do_eval",
                     "--max_steps", "6", "--learning_rate", "1e-3", "--patience", patience, *threshold, *extra)


def eval_args(glue, task, output_dir, *extra):
    """Evaluate the model saved in `output_dir` (no --model_name_or_path, as in the reference inference command)."""
    return ["--task_name", TASK_FOLDERS[task], "--data_dir", str(glue[task]), "--output_dir", str(output_dir),
            "--do_eval", "--max_seq_length", "32", "--no_cuda", *extra]


@pytest.fixture(scope="session")
def trained(models, glue, tmp_path_factory):
    """`trained(task)`: the output folder of a training run of `task` (run once per session; do not modify it)."""
    outputs = {}

    def get(task):
        if task not in outputs:
            output_dir = tmp_path_factory.mktemp(f"trained-{task}") / "out"
            run_main(train_args(models, glue, task, output_dir))
            outputs[task] = output_dir
        return outputs[task]

    return get


def copy_of(folder, tmp_path, name="out"):
    destination = tmp_path / name
    shutil.copytree(folder, destination)
    return destination


def read_runs(output_dir):
    with open(os.path.join(output_dir, "eval_results.json")) as file:
        return json.load(file)["runs"]


def by_key(entries):
    """
    Result entries of the exit settings by (checkpoint, eval set, patience), checking that no key appears twice. The
    oracle bounds, which every evaluation adds, are left out (see `oracle_entries`).
    """
    settings = [entry for entry in entries if entry["criterion"] not in ORACLES]
    keyed = {(entry["checkpoint"], entry["eval_set"], entry["patience"]): entry for entry in settings}
    assert len(keyed) == len(settings), "two entries for the same checkpoint, eval set and patience"
    return keyed


def oracle_entries(entries):
    """The oracle-bound entries by (checkpoint, eval set, oracle)."""
    return {(entry["checkpoint"], entry["eval_set"], entry["criterion"]): entry for entry in entries
            if entry["criterion"] in ORACLES}


def tensorboard_scalars(path):
    """{tag: [steps]} of the scalars in a TensorBoard event file (TFRecord framing read by hand)."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    with open(path, "rb") as file:
        data = file.read()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append(event.step)
    return scalars


# ---------------------------------------------------------------------------------------------------------------------
# 1. Train, then sweep patience


@pytest.mark.parametrize("task", TASKS)
def test_train_then_patience_sweep_writes_everything(trained, task):
    output_dir = trained(task)

    # The final model, tokenizer and arguments.
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_args.json",
                 "eval_results.json", "eval_results.txt"):
        assert (output_dir / name).is_file(), name
    arguments = json.loads((output_dir / "training_args.json").read_text())
    assert arguments["patience"] == PATIENCES and arguments["max_steps"] == 6

    # TensorBoard: loss and learning rate every --logging_steps (2) of the 6 steps.
    event_files = list((output_dir / "runs").glob("**/events.out.tfevents.*"))
    assert len(event_files) == 1
    scalars = tensorboard_scalars(event_files[0])
    assert scalars["train/loss"] == [2, 4, 6]
    assert scalars["train/learning_rate"] == [2, 4, 6]
    # ...and the final evaluation at step 6: per setting its metrics, mean exit layer and exit histogram; per layer
    # each classifier's metrics.
    for eval_set in TASK_EVAL_SETS[task]:
        for patience in PATIENCES:
            prefix = f"eval/{eval_set}/patience_{patience}"
            assert scalars[f"{prefix}/avg_exit_layer"] == [6] and scalars[f"{prefix}/exit_layers"] == [6]
            assert all(scalars[f"{prefix}/{metric}"] == [6] for metric in TASK_METRICS[task])
        for layer in range(1, NUM_LAYERS + 1):
            assert all(scalars[f"eval/{eval_set}/layer_{layer}/{metric}"] == [6] for metric in TASK_METRICS[task])

    # A resumable checkpoint every --save_steps (3).
    checkpoints = sorted(path.name for path in output_dir.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3", "checkpoint-6"]
    for step in (3, 6):
        checkpoint = output_dir / f"checkpoint-{step}"
        for name in ("trainer_state.json", "optimizer.bin", "scheduler.bin", "config.json", "model.safetensors",
                     "tokenizer.json"):
            assert (checkpoint / name).is_file(), f"checkpoint-{step}/{name}"
        assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert not list(output_dir.glob(".checkpoint-*")), "a temporary checkpoint folder was left behind"

    # One entry per (eval set, patience), with the task's metrics and coherent exit statistics.
    runs = read_runs(output_dir)
    assert len(runs) == 1
    entries = by_key(runs[0]["entries"])
    assert set(entries) == {("final", eval_set, patience)
                            for eval_set in TASK_EVAL_SETS[task] for patience in PATIENCES}
    for (_, eval_set, patience), entry in entries.items():
        assert TASK_METRICS[task] <= set(entry["metrics"]), (eval_set, patience)
        assert entry["examples"] == NUM_DEV
        assert entry["num_layers"] == NUM_LAYERS
        assert 1 <= entry["avg_exit_layer"] <= NUM_LAYERS
        histogram = {int(layer): count for layer, count in entry["exit_histogram"].items()}
        assert set(histogram) == set(range(1, NUM_LAYERS + 1))
        assert sum(histogram.values()) == NUM_DEV
        mean_from_histogram = sum(layer * count for layer, count in histogram.items()) / NUM_DEV
        assert entry["avg_exit_layer"] == pytest.approx(mean_from_histogram)
        # The earliest possible exit is layer patience + 1; patience 0 (and >= L - 1 here) runs every layer.
        earliest = NUM_LAYERS if patience == 0 else min(patience + 1, NUM_LAYERS)
        assert all(count == 0 for layer, count in histogram.items() if layer < earliest), (patience, histogram)
        assert entry["wall_speedup"] is not None and entry["wall_speedup"] > 0  # patience 0 is in the list
        if patience == 0:  # every example ran all 6 layers (the histogram above): 6 / 6
            assert entry["layer_speedup"] == 1.0
        assert entry["eval_seconds"] > 0 and entry["examples_per_second"] > 0
    table = (output_dir / "eval_results.txt").read_text()
    assert "patience" in table and "avg exit layer" in table
    oracles = oracle_entries(runs[0]["entries"])
    assert len([line for line in table.splitlines() if line.startswith("final")]) == len(entries) + len(oracles)

    # The saved model reloads, with its labels and early-exit settings on its config.
    model = BertForSequenceClassificationWithPabee.from_pretrained(output_dir)
    task_info = get_task(task)
    assert model.config.num_labels == task_info.num_labels
    assert model.config.num_hidden_layers == NUM_LAYERS
    expected_threshold = STSB_THRESHOLD if task == "sts-b" else DEFAULT_THRESHOLD
    assert model.config.regression_threshold == pytest.approx(expected_threshold)
    if not task_info.is_regression:
        assert [model.config.id2label[i] for i in range(task_info.num_labels)] == list(task_info.labels)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    encoded = tokenizer(["the film is good ."], return_tensors="pt")
    assert tokenizer.unk_token_id not in encoded["input_ids"][0].tolist()
    assert model(**encoded, patience=2).logits.shape == (1, task_info.num_labels)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Any eval batch size gives the answers of batch size 1


@pytest.mark.parametrize("task", TASKS)
def test_eval_batch_size_does_not_change_results(trained, glue, task, tmp_path):
    output_dir = copy_of(trained(task), tmp_path)
    for batch_size in (1, 16):
        # STS-B's saved threshold (STSB_THRESHOLD) gives the tiny model no early exit: evaluate at one that does.
        threshold = ["--regression_threshold", DEFAULT_THRESHOLD] if task == "sts-b" else []
        run_main(eval_args(glue, task, output_dir, "--patience", "0,1,2,3,4", "--per_gpu_eval_batch_size",
                           batch_size, *threshold))
    runs = read_runs(output_dir)
    assert len(runs) == 3  # training run, batch size 1, batch size 16
    one, sixteen = by_key(runs[1]["entries"]), by_key(runs[2]["entries"])
    assert set(one) == set(sixteen) and len(one) == len(TASK_EVAL_SETS[task]) * len(PATIENCES)
    early_exits = 0
    for key in one:
        assert one[key]["batch_size"] == 1 and sixteen[key]["batch_size"] == 16
        assert one[key]["exit_histogram"] == sixteen[key]["exit_histogram"], key
        assert one[key]["avg_exit_layer"] == sixteen[key]["avg_exit_layer"], key
        # float32 logits of padded and unpadded inputs differ by ~1e-7, which moves a correlation by ~1e-5.
        assert one[key]["metrics"] == pytest.approx(sixteen[key]["metrics"], abs=1e-4), key
        early_exits += one[key]["avg_exit_layer"] < NUM_LAYERS
    assert early_exits > 0, "no patience exited early: the comparison would not test early exit"


@pytest.mark.parametrize("task", ["sst-2", "mrpc", "sts-b"])
def test_predict_batched_equals_one_example_at_a_time(trained, glue, task):
    """pabee.evaluation.predict on the trained model: per-example exit layers and logits do not depend on the batch."""
    output_dir = trained(task)
    task_info = get_task(task)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = BertForSequenceClassificationWithPabee.from_pretrained(output_dir).eval()
    features = convert_examples_to_features(read_glue_split(glue[task], task_info, "dev"), task_info, tokenizer, 32)
    collator = DataCollatorWithPadding(tokenizer)
    accelerator = Accelerator(cpu=True)
    spread = set()
    for patience in (1, 2):
        answers = {}
        for batch_size in (1, 7):  # 7: batches of mixed lengths and a short last batch
            loader = DataLoader(features, batch_size=batch_size, collate_fn=collator)
            setting = ExitSetting("patience", patience).model_kwargs(DEFAULT_THRESHOLD)
            answers[batch_size] = predict(model, loader, accelerator, setting)
        assert answers[1].exit_layers.tolist() == answers[7].exit_layers.tolist()
        torch.testing.assert_close(torch.from_numpy(answers[7].logits), torch.from_numpy(answers[1].logits),
                                   atol=1e-5, rtol=1e-4)
        assert answers[1].labels.tolist() == answers[7].labels.tolist()
        spread |= set(answers[1].exit_layers.tolist())
    # The tiny regression model answers nearly the same for every input, so its examples all exit together;
    # tests/test_modeling.py compares batched and one-at-a-time regression exits on spread classifiers.
    if not task_info.is_regression:
        assert len(spread) > 1, "every example exited at the same layer: the comparison would be weak"


# ---------------------------------------------------------------------------------------------------------------------
# 3. Results are kept


def test_second_evaluation_appends_and_keeps_first(trained, glue, tmp_path):
    output_dir = copy_of(trained("sst-2"), tmp_path)
    before = read_runs(output_dir)
    table_before = (output_dir / "eval_results.txt").read_text()

    run_main(eval_args(glue, "sst-2", output_dir, "--patience", "2,0", "--per_gpu_eval_batch_size", "5"))

    after = read_runs(output_dir)
    assert len(after) == len(before) + 1
    assert after[:len(before)] == before  # earlier runs unchanged, entry for entry
    new = by_key(after[-1]["entries"])
    assert set(new) == {("final", "dev", 2), ("final", "dev", 0)}
    assert new[("final", "dev", 0)]["wall_speedup"] == 1.0
    # The same model at the same patience gives the same figures as the training run did.
    first = by_key(before[0]["entries"])
    for patience in (0, 2):
        key = ("final", "dev", patience)
        assert new[key]["exit_histogram"] == first[key]["exit_histogram"]
        assert new[key]["metrics"] == pytest.approx(first[key]["metrics"])
    table_after = (output_dir / "eval_results.txt").read_text()
    assert table_after.startswith(table_before.rstrip("\n"))
    assert table_after.count("Run started") == 2


class SavedThresholdIgnored(AssertionError):
    """An eval-only run without --regression_threshold did not use the threshold saved with the model."""


def test_eval_only_uses_the_threshold_saved_with_the_model(trained, glue, tmp_path):
    output_dir = copy_of(trained("sts-b"), tmp_path)  # trained (and saved) with --regression_threshold STSB_THRESHOLD
    for threshold in (STSB_THRESHOLD, DEFAULT_THRESHOLD, None):
        flag = [] if threshold is None else ["--regression_threshold", threshold]
        run_main(eval_args(glue, "sts-b", output_dir, "--patience", "1,2", *flag))
    saved, default, unflagged = (by_key(run["entries"]) for run in read_runs(output_dir)[1:])
    assert any(saved[key]["exit_histogram"] != default[key]["exit_histogram"] for key in saved), \
        "the two thresholds give the same exits: the test cannot tell them apart"
    if any(unflagged[key]["exit_histogram"] != saved[key]["exit_histogram"] for key in saved):
        raise SavedThresholdIgnored(f"exits at the default threshold {DEFAULT_THRESHOLD}, not the saved "
                                    f"{STSB_THRESHOLD}")


def test_results_record_the_command_given_to_main(trained, glue, tmp_path):
    output_dir = copy_of(trained("sst-2"), tmp_path)
    run_main(eval_args(glue, "sst-2", output_dir, "--patience", "3", "--per_gpu_eval_batch_size", "11"))
    run = read_runs(output_dir)[-1]
    assert "--per_gpu_eval_batch_size 11" in run["command"] and "--patience 3" in run["command"]
    assert run["model"] == str(output_dir)  # the model evaluated, not the default backbone


def test_evaluation_reuses_the_features_cached_by_training(trained, glue, tmp_path):
    output_dir = copy_of(trained("sst-2"), tmp_path)
    cached = sorted(path.name for path in (output_dir / "cached_features").iterdir())
    assert any("_dev_" in name for name in cached)
    run_main(eval_args(glue, "sst-2", output_dir, "--patience", "2"))  # with the tokenizer saved by training
    assert sorted(path.name for path in (output_dir / "cached_features").iterdir()) == cached


def test_results_table_of_another_program_is_kept(trained, glue, tmp_path):
    output_dir = copy_of(trained("sst-2"), tmp_path)
    os.remove(output_dir / "eval_results.json")
    (output_dir / "eval_results.txt").write_text("acc = 0.5\n")  # as the reference script writes it
    run_main(eval_args(glue, "sst-2", output_dir, "--patience", "2"))
    assert (output_dir / "eval_results.earlier.txt").read_text() == "acc = 0.5\n"
    assert "patience 2" in (output_dir / "eval_results.txt").read_text()
    assert len(read_runs(output_dir)) == 1


# ---------------------------------------------------------------------------------------------------------------------
# 4. --eval_all_checkpoints


@pytest.mark.parametrize("task", ["sst-2", "mnli"])
def test_eval_all_checkpoints(trained, glue, task, tmp_path):
    output_dir = copy_of(trained(task), tmp_path)
    run_main(eval_args(glue, task, output_dir, "--eval_all_checkpoints", "--patience", "0,2"))
    entries = by_key(read_runs(output_dir)[-1]["entries"])
    expected_steps = {"checkpoint-3": 3, "checkpoint-6": 6, "final": None}
    assert set(entries) == {(checkpoint, eval_set, patience) for checkpoint in expected_steps
                            for eval_set in TASK_EVAL_SETS[task] for patience in (0, 2)}
    for (checkpoint, eval_set, patience), entry in entries.items():
        assert entry["step"] == expected_steps[checkpoint]
        assert entry["wall_speedup"] is not None
        # checkpoint-6 holds the same weights as the final model.
        if checkpoint == "checkpoint-6":
            final = entries[("final", eval_set, patience)]
            assert entry["exit_histogram"] == final["exit_histogram"]
            assert entry["metrics"] == pytest.approx(final["metrics"])
    oracles = [key for key in oracle_entries(read_runs(output_dir)[-1]["entries"]) if key[0] == "checkpoint-3"]
    assert (output_dir / "eval_results.txt").read_text().count("checkpoint-3") == \
        2 * len(TASK_EVAL_SETS[task]) + len(oracles)


# ---------------------------------------------------------------------------------------------------------------------
# 5. Resuming, and starting over


def left_by_a_killed_run(output_dir, finished_dir, *names, **renamed):
    """`output_dir` holding only copies of the folders `names` of `finished_dir`, and of the `renamed` ones (new name:
    folder of `finished_dir`): what a run killed at some point leaves."""
    output_dir.mkdir()
    for name, source in {**{name: name for name in names}, **renamed}.items():
        shutil.copytree(finished_dir / source, output_dir / name)
    return output_dir


def assert_same_weights(resumed_dir, uninterrupted_dir):
    """The saved models hold the same weights (up to float32 noise): training resumed exactly."""
    resumed = load_file(resumed_dir / "model.safetensors")
    reference = load_file(uninterrupted_dir / "model.safetensors")
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("model_name", [
    "bert-no-dropout",
    "bert",
    "distilbert",  # with dropout of its own names, and no token types
])
def test_resume_from_checkpoint_gives_the_uninterrupted_result(models, glue, tmp_path, caplog, model_name):
    def command(output_dir):
        return base_args(models[model_name], glue["sst-2"], "sst-2", output_dir, "--do_train", "--max_steps", "6",
                         "--learning_rate", "1e-3")

    uninterrupted = tmp_path / "uninterrupted"
    run_main(command(uninterrupted))
    # The run was "killed" after checkpoint-3: only checkpoint-3 (and the cached features) remain.
    output_dir = left_by_a_killed_run(tmp_path / "out", uninterrupted, "checkpoint-3", "cached_features")
    checkpoint_3 = snapshot(output_dir / "checkpoint-3")

    with caplog.at_level(logging.INFO):
        run_main(command(output_dir))
    assert any("Resuming from" in message and "checkpoint-3" in message for message in caplog.messages)

    assert snapshot(output_dir / "checkpoint-3") == checkpoint_3, "resuming rewrote the checkpoint it started from"
    assert json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    # Same weights as the run that was not interrupted: optimizer, scheduler, data order (and dropout) all resumed.
    assert_same_weights(output_dir, uninterrupted)


@pytest.mark.parametrize("killed_before", [
    1,  # the old checkpoint-6 being set aside
    2,  # the new one taking its name: checkpoint-6 is only under the temporary names
    3,  # the old one being deleted
])
def test_restart_after_a_kill_while_a_checkpoint_was_replaced(models, glue, tmp_path, monkeypatch, caplog,
                                                              killed_before):
    def command(output_dir, *extra):
        return base_args(models["bert"], glue["sst-2"], "sst-2", output_dir, "--do_train", "--max_steps", "9",
                         "--learning_rate", "1e-3", *extra)

    uninterrupted = tmp_path / "uninterrupted"
    run_main(command(uninterrupted))
    # An earlier run left checkpoint-3 and checkpoint-6; this one resumes from checkpoint-3, so it saves step 6 over
    # the one there, and is killed during that save (os.replace and shutil.rmtree counted from the trainer state's
    # rename, see pabee.checkpoints.finish_checkpoint).
    output_dir = left_by_a_killed_run(tmp_path / "out", uninterrupted, "checkpoint-3", "checkpoint-6",
                                      "cached_features")
    finish_checkpoint = pabee.training.finish_checkpoint

    def killed_while_saving_step_6(output_dir, step, trainer_state):
        if step == 6:
            kill_at(monkeypatch, killed_before)
        return finish_checkpoint(output_dir, step, trainer_state)

    monkeypatch.setattr(pabee.training, "finish_checkpoint", killed_while_saving_step_6)
    with pytest.raises(Killed):
        run_glue_with_pabee.main([str(arg) for arg in command(output_dir, "--resume_from_checkpoint",
                                                               output_dir / "checkpoint-3")])
    monkeypatch.undo()

    # The same command without --resume_from_checkpoint resumes from the newest checkpoint: checkpoint-6.
    with caplog.at_level(logging.INFO):
        run_main(command(output_dir))
    assert any("Resuming from" in message and "checkpoint-6 (step 6" in message for message in caplog.messages)
    # Every checkpoint under its own name, and no copy left under a temporary one.
    assert sorted(name for name in os.listdir(output_dir) if "checkpoint-" in name) == [
        "checkpoint-3", "checkpoint-6", "checkpoint-9"]
    assert_same_weights(output_dir, uninterrupted)


def test_longer_max_steps_continues_from_the_last_checkpoint(models, glue, tmp_path, caplog):
    output_dir = tmp_path / "out"
    args = base_args(models["bert"], glue["sst-2"], "sst-2", output_dir, "--do_train")
    run_main([*args, "--max_steps", "3"])
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-3"]
    with caplog.at_level(logging.INFO):
        run_main([*args, "--max_steps", "6"])
    assert any("Resuming from" in message and "checkpoint-3" in message for message in caplog.messages)
    assert not any("which was trained with" in message for message in caplog.messages)  # --max_steps is no such
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    assert json.loads((output_dir / "training_args.json").read_text())["max_steps"] == 6


def test_resume_with_another_data_order_is_warned_about(models, glue, tmp_path, caplog):
    output_dir = tmp_path / "out"
    args = base_args(models["bert"], glue["sst-2"], "sst-2", output_dir, "--do_train")
    run_main([*args, "--max_steps", "3"])
    assert json.loads((output_dir / "checkpoint-3" / "training_args.json").read_text())["num_processes"] == 1
    with caplog.at_level(logging.INFO):
        run_main([*args, "--max_steps", "6", "--seed", "7", "--per_gpu_train_batch_size", "4"])
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("seed=42, now 7" in message for message in warnings), warnings
    assert any("per_gpu_train_batch_size=8, now 4" in message for message in warnings), warnings


def test_overwrite_output_dir_trains_into_a_folder_without_checkpoints(models, glue, tmp_path):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("mine\n")
    args = base_args(models["bert"], glue["sst-2"], "sst-2", output_dir, "--do_train", "--max_steps", "3")
    with pytest.raises(SystemExit) as refused:
        run_glue_with_pabee.main(args)
    assert refused.value.code not in (0, None)
    run_main([*args, "--overwrite_output_dir"])
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "checkpoint-3").is_dir()
    assert (output_dir / "notes.txt").read_text() == "mine\n"


def test_run_killed_before_its_first_checkpoint_starts_again_with_the_same_command(models, glue, tmp_path, caplog):
    def command(output_dir):
        return base_args(models["bert"], glue["sst-2"], "sst-2", output_dir, "--do_train", "--max_steps", "3")

    run_main(command(tmp_path / "out"))
    # What a run killed while writing its first checkpoint leaves: caches, TensorBoard logs, a partial checkpoint.
    output_dir = left_by_a_killed_run(tmp_path / "killed", tmp_path / "out", "cached_features", "runs",
                                      **{".checkpoint-3.partial": "checkpoint-3"})
    os.remove(output_dir / ".checkpoint-3.partial" / "trainer_state.json")

    with caplog.at_level(logging.INFO):
        run_main(command(output_dir))
    assert not any("Resuming from" in message for message in caplog.messages)
    assert not (output_dir / ".checkpoint-3.partial").exists()
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "checkpoint-3").is_dir()


def test_run_killed_while_naming_its_first_checkpoint_resumes_from_it(models, glue, tmp_path, caplog):
    def command(output_dir):
        return base_args(models["bert"], glue["sst-2"], "sst-2", output_dir, "--do_train", "--max_steps", "6",
                         "--learning_rate", "1e-3")

    uninterrupted = tmp_path / "uninterrupted"
    run_main(command(uninterrupted))
    # Killed after checkpoint-3 was complete, before it was renamed: the complete copy has its temporary name only.
    output_dir = left_by_a_killed_run(tmp_path / "killed", uninterrupted, "cached_features", "runs",
                                      **{".checkpoint-3.partial": "checkpoint-3"})

    with caplog.at_level(logging.INFO):
        run_main(command(output_dir))
    assert any("Resuming from" in message and "checkpoint-3 (step 3" in message for message in caplog.messages)
    assert sorted(name for name in os.listdir(output_dir) if "checkpoint-" in name) == ["checkpoint-3", "checkpoint-6"]
    assert_same_weights(output_dir, uninterrupted)


def test_gradient_accumulation_takes_every_epoch_whole(models, glue, tmp_path, caplog):
    # 40 examples in batches of 8 give 5 batches an epoch: with accumulation 2, steps after batches 2, 4 and 5.
    output_dir = tmp_path / "out"
    args = base_args(models["bert"], glue["sst-2"], "sst-2", output_dir, "--do_train", "--num_train_epochs", "2",
                     "--gradient_accumulation_steps", "2")
    with caplog.at_level(logging.INFO):
        run_main(args)
    assert any("Total optimization steps = 6" in message for message in caplog.messages)
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert json.loads((output_dir / "checkpoint-3" / "trainer_state.json").read_text())["epoch"] == 1
    last = json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert (last["global_step"], last["epoch"], last["batches_in_epoch"]) == (6, 2, 0)


def test_old_launcher_spelling_of_local_rank():
    for flag in ("--local_rank=1", "--local-rank=1"):
        args = run_glue_with_pabee.parse_args(["--task_name", "SST-2", "--do_eval", "--output_dir", "out", flag])
        assert args.local_rank == 1


def test_overwrite_output_dir_starts_over(models, glue, trained, tmp_path, caplog):
    output_dir = copy_of(trained("sst-2"), tmp_path)
    args = base_args(models["bert"], glue["sst-2"], "sst-2", output_dir, "--do_train", "--max_steps", "3",
                     "--overwrite_output_dir")
    with caplog.at_level(logging.INFO):
        run_main(args)
    assert not any("Resuming from" in message for message in caplog.messages)
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-3"]  # checkpoint-6 removed
    assert json.loads((output_dir / "training_args.json").read_text())["max_steps"] == 3


# ---------------------------------------------------------------------------------------------------------------------
# 6. The other families; ALBERT, with the two commands of the reference README


@pytest.mark.parametrize("model_type, give_model_type", [
    ("roberta", True),
    ("xlm-roberta", False),  # read from the config
    ("distilbert", True),
    ("electra", False),
    ("modernbert", True),
    ("deberta-v2", False),  # DeBERTa-v3's settings and sentencepiece tokenizer
])
def test_other_families_train_sweep_and_predict(models, glue, tmp_path, model_type, give_model_type):
    """MRPC (sentence pairs, so token types would differ from 0) trained, swept over patience and predicted."""
    data_dir = copy_task(glue, "mrpc", tmp_path)
    write_test_split(data_dir, "mrpc")
    output_dir = tmp_path / "out"
    run_main(["--model_name_or_path", models[model_type], "--task_name", "MRPC", "--data_dir", data_dir,
              "--output_dir", output_dir, "--do_train", "--do_eval", "--do_predict", "--max_steps", "10",
              "--learning_rate", "3e-3", "--per_gpu_train_batch_size", "8", "--save_steps", "0",
              "--patience", "0,1,2,3", "--per_gpu_eval_batch_size", "7", "--max_seq_length", "32", "--no_cuda",
              *(["--model_type", model_type] if give_model_type else [])])

    pabee_class = run_glue_with_pabee.MODEL_CLASSES[model_type]
    model = pabee_class.from_pretrained(output_dir).eval()
    assert model.config.model_type == f"pabee_{model_type}" and model.config.num_labels == 2
    prefix = {"xlm-roberta": "roberta", "modernbert": "model", "deberta-v2": "deberta"}.get(model_type, model_type)
    assert {key.split(".")[0] for key in load_file(output_dir / "model.safetensors")} == {prefix, "classifiers"}
    # Token types reach only the family that has them (ELECTRA); RoBERTa's and DistilBERT's features hold none.
    caches = list((output_dir / "cached_features").glob("cached_mrpc_train_*"))
    assert len(caches) == 1
    has_token_types = "token_type_ids" in datasets.load_from_disk(caches[0]).column_names
    assert has_token_types == (model_type == "electra")

    # The sweep, with an early exit that does happen.
    entries = by_key(read_runs(output_dir)[0]["entries"])
    assert set(entries) == {("final", "dev", patience) for patience in range(4)}
    assert entries[("final", "dev", 0)]["avg_exit_layer"] == NUM_LAYERS
    assert min(entry["avg_exit_layer"] for entry in entries.values()) < NUM_LAYERS

    # The predictions are those of early exit on each test example alone, tokenised as users would.
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    examples = read_glue_split(data_dir, get_task("mrpc"), "test")
    for patience in (0, 2):
        lines = (output_dir / "predictions" / f"patience_{patience}" / "MRPC.tsv").read_text().splitlines()
        assert lines[0] == "index\tprediction" and len(lines) == 1 + NUM_TEST
        with torch.no_grad():
            for line, example in zip(lines[1:], examples):
                inputs = tokenizer(example.text_a, example.text_b, return_tensors="pt")
                answer = model(**inputs, patience=patience).logits.argmax(-1).item()
                assert line.split("\t")[1] == model.config.id2label[answer]


def test_albert_reference_commands(models, glue, tmp_path):
    output_dir = tmp_path / "albert-sst2"
    common = ["--model_type", "albert", "--task_name", "SST-2", "--do_lower_case", "--data_dir", glue["sst-2"],
              "--max_seq_length", "32", "--no_cuda"]
    # Training (reference: train on MRPC and evaluate during training), short.
    run_main([*common, "--model_name_or_path", models["albert"], "--do_train", "--do_eval",
              "--per_gpu_train_batch_size", "8", "--per_gpu_eval_batch_size", "8", "--learning_rate", "2e-5",
              "--save_steps", "5", "--logging_steps", "2", "--num_train_epochs", "1", "--output_dir", output_dir,
              "--evaluate_during_training"])
    # Inference with the reference's patience list and batch size 1.
    run_main([*common, "--model_name_or_path", output_dir, "--do_eval", "--output_dir", output_dir,
              "--per_gpu_eval_batch_size", "1", "--patience", "3,4,5,6,7,8"])

    saved_config = json.loads((output_dir / "config.json").read_text())
    assert saved_config["model_type"] == "pabee_albert"  # ALBERT with its PABEE settings; read as --model_type albert
    assert saved_config["auto_map"]["AutoConfig"] == "modeling_pabee_albert.PabeeAlbertConfig"
    assert (output_dir / "checkpoint-5" / "optimizer.bin").is_file()
    runs = read_runs(output_dir)
    # Evaluations during training (steps 2 and 4), the final evaluation of the training run, then inference.
    checkpoints = dict.fromkeys(entry["checkpoint"] for run in runs for entry in run["entries"])
    assert list(checkpoints)[:3] == ["step-2", "step-4", "final"]
    entries = by_key(runs[-1]["entries"])
    assert set(entries) == {("final", "dev", patience) for patience in range(3, 9)}
    for entry in entries.values():
        # 4 layers: patience 3 can first exit at layer 4, higher patience never exits early.
        assert entry["avg_exit_layer"] == NUM_LAYERS and entry["exit_histogram"][str(NUM_LAYERS)] == NUM_DEV
        assert entry["wall_speedup"] is None  # no patience 0 in the list
        assert "acc" in entry["metrics"]
    model = AlbertForSequenceClassificationWithPabee.from_pretrained(output_dir)
    assert model.config.num_labels == 2 and model.config.regression_threshold == pytest.approx(DEFAULT_THRESHOLD)


# ---------------------------------------------------------------------------------------------------------------------
# 7. Bad input: one line, non-zero exit, nothing touched


def write_bad_row(folder, file_name, line, row):
    """Replace line `line` (1-based) of `folder/file_name` by `row` (tab-joined)."""
    path = os.path.join(folder, file_name)
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()
    lines[line - 1] = "\t".join(row)
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("task", ["sst-2", "sts-b"])
def test_training_options_are_saved_with_the_run(models, glue, tmp_path, task):
    output_dir = tmp_path / "out"
    run_main(_train(models, glue, task, output_dir, "--self_distillation_weight", "0.5",
                    "--self_distillation_temperature", "3", "--gradient_equilibrium"))
    options = {"self_distillation_weight": 0.5, "self_distillation_temperature": 3.0, "gradient_equilibrium": True}
    config = json.loads((output_dir / "config.json").read_text())
    arguments = json.loads((output_dir / "training_args.json").read_text())
    assert {name: config[name] for name in options} == options
    assert {name: arguments[name] for name in options} == options
    # Off by default: a run without the flags trains as before.
    run_main(_train(models, glue, task, tmp_path / "default"))
    config = json.loads((tmp_path / "default" / "config.json").read_text())
    assert {name: config[name] for name in options} == {"self_distillation_weight": 0.0,
                                                        "self_distillation_temperature": 1.0,
                                                        "gradient_equilibrium": False}


def copy_task(glue, task, tmp_path):
    return shutil.copytree(glue[task], tmp_path / "data" / TASK_FOLDERS[task])


def _train(models, glue, task, output_dir, *extra, data_dir=None):
    return base_args(models["bert"], data_dir or glue[task], task, output_dir, "--do_train", "--do_eval",
                     "--overwrite_output_dir", "--max_steps", "1", *extra)


def _no_data_dir(m, g, t, o):
    return _train(m, g, "sst-2", o, data_dir=t / "glue" / "SST-2"), ["SST-2", "not found"]


def _no_dev_file(m, g, t, o):
    data_dir = copy_task(g, "sst-2", t)
    os.remove(data_dir / "dev.tsv")
    return _train(m, g, "sst-2", o, data_dir=data_dir), ["dev.tsv", "not found"]


def _no_mnli_mismatched(m, g, t, o):
    data_dir = copy_task(g, "mnli", t)
    os.remove(data_dir / "dev_mismatched.tsv")
    return _train(m, g, "mnli", o, data_dir=data_dir), ["dev_mismatched.tsv", "not found"]


def _without_data_dir_offline(m, g, t, o):
    args = _train(m, g, "sst-2", o)
    index = args.index("--data_dir")
    return args[:index] + args[index + 2:], ["sst2"]


def _damaged_weights(m, g, t, o):
    weights = o / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    return eval_args(g, "sst-2", o), ["cannot load the model", str(o)]


def _output_dir_is_a_file(m, g, t, o):
    o.write_text("not a folder\n")
    return _train(m, g, "sst-2", o), ["output_dir", "is a file"]


def _unreadable_results(m, g, t, o):
    (o / "eval_results.json").write_text('{"runs": [')  # cut short
    return eval_args(g, "sst-2", o), ["eval_results.json", "move it away"]


def _short_row(task, file_name, line, row):
    def make(m, g, t, o):
        data_dir = copy_task(g, task, t)
        path = write_bad_row(data_dir, file_name, line, row)
        return _train(m, g, task, o, data_dir=data_dir), [str(path), f"line {line}", "columns"]

    return make


def _short_dev_row(task, file_name, line, row):
    """A bad dev row, evaluating a model trained on the task."""

    def make(m, g, t, o):
        data_dir = copy_task(g, task, t)
        path = write_bad_row(data_dir, file_name, line, row)
        return eval_args({task: data_dir}, task, o, "--patience", "0,2"), [str(path), f"line {line}", "columns"]

    return make


def _model_without_tokenizer(m, g, t, o):
    folder = shutil.copytree(m["bert"], t / "weights-only")
    for name in os.listdir(folder):
        if name not in ("config.json", "model.safetensors"):
            os.remove(folder / name)
    return _train(m, g, "sst-2", o, "--model_name_or_path", folder), [str(folder), "--tokenizer_name"]


def _saved_model_without_tokenizer(m, g, t, o):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (o / name).exists():
            os.remove(o / name)
    return eval_args(g, "sst-2", o), [str(o), "--tokenizer_name"]


def _tokenizer_of_size(size):
    """--tokenizer_name of a WordPiece tokenizer with `size` tokens, for a model of len(VOCAB) (98) tokens."""

    def make(m, g, t, o):
        folder = t / f"tokenizer-{size}"
        tokens = (VOCAB + [f"word{index}" for index in range(size)])[:size]
        BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)}).save_pretrained(folder)
        words = [str(folder), f"{size} tokens", "--tokenizer_name"]
        return _train(m, g, "sst-2", o, "--tokenizer_name", folder), words

    return make


def _empty_dev_file(m, g, t, o):
    data_dir = copy_task(g, "sst-2", t)
    (data_dir / "dev.tsv").write_text("sentence\tlabel\n")
    return eval_args({"sst-2": data_dir}, "sst-2", o), [str(data_dir / "dev.tsv"), "no examples"]


def _incomplete_resume_checkpoint(m, g, t, o):
    os.remove(o / "checkpoint-3" / "trainer_state.json")
    args = base_args(m["bert"], g["sst-2"], "sst-2", o, "--do_train", "--max_steps", "6", "--resume_from_checkpoint",
                     o / "checkpoint-3")
    return args, [str(o / "checkpoint-3"), "not a complete checkpoint"]


def _no_train_epochs(epochs):
    return "absent", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--max_steps", "-1", "--num_train_epochs", epochs), ["--num_train_epochs", epochs])


# name -> (output folder before the run: "trained" (a copy of a trained SST-2 output; "trained:TASK" of TASK), "notes"
# (a file of the user's), or "absent"; function of (models, glue, tmp_path, output_dir) returning the argv and the
# words the error message must contain).
BAD_INPUTS = {
    "missing data_dir folder": ("trained", _no_data_dir),
    "missing dev.tsv": ("trained", _no_dev_file),
    "missing MNLI dev_mismatched.tsv": ("absent", _no_mnli_mismatched),
    "unknown task": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--task_name", "SST-3"), ["SST-3", "task"])),
    "unknown model_type": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--model_type", "gpt2"), ["model_type", "gpt2"])),
    "model_type not the model's": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--model_type", "albert"), ["albert", "bert"])),
    "model_type of another new family": ("absent", lambda m, g, t, o: (
        base_args(m["distilbert"], g["sst-2"], "sst-2", o, "--do_train", "--model_type", "electra"),
        ["electra", "distilbert"])),
    # RoBERTa numbers positions from pad_token_id + 1 = 2: 64 positions cover 62 tokens
    "max_seq_length beyond RoBERTa's positions": ("absent", lambda m, g, t, o: (
        base_args(m["roberta"], g["sst-2"], "sst-2", o, "--do_train", "--max_seq_length", "63"),
        ["--max_seq_length 63", "62 tokens"])),
    "patience 3,x": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--patience", "3,x"), ["patience", "3,x"])),
    "patience -1": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--patience", "-1"), ["patience", "-1"])),
    "patience empty": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--patience", ""), ["patience"])),
    "patience 1.5": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--patience", "1.5"), ["patience", "1.5"])),
    "negative regression_threshold": ("trained", lambda m, g, t, o: (
        _train(m, g, "sts-b", o, "--regression_threshold", "-0.1"), ["regression_threshold", "-0.1"])),
    "nan regression_threshold": ("trained", lambda m, g, t, o: (
        _train(m, g, "sts-b", o, "--regression_threshold", "nan"), ["regression_threshold", "nan"])),
    "exit_confidence above 1": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--exit_confidence", "0.6,1.5"), ["exit_confidence", "0.6,1.5"])),
    "negative exit_confidence": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--exit_confidence", "-0.1"), ["exit_confidence", "-0.1"])),
    "nan exit_confidence": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--exit_confidence", "nan"), ["exit_confidence", "nan"])),
    "exit_confidence on regression": ("trained", lambda m, g, t, o: (
        _train(m, g, "sts-b", o, "--exit_confidence", "0.7"), ["exit_confidence", "regression"])),
    "negative self_distillation_weight": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--self_distillation_weight", "-1"), ["self_distillation_weight", "-1"])),
    "zero self_distillation_temperature": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--self_distillation_temperature", "0"), ["self_distillation_temperature", "0"])),
    "model folder that does not exist": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--model_name_or_path", t / "no-such-model"), ["no-such-model"])),
    "model name not on disk, offline": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--model_name_or_path", "no-such-model-xyz"), ["no-such-model-xyz"])),
    "non-empty output without checkpoint": ("notes", lambda m, g, t, o: (
        [a for a in _train(m, g, "sst-2", o) if a != "--overwrite_output_dir"],
        ["not empty", "overwrite_output_dir"])),
    "do_eval alone, no model in output": ("notes", lambda m, g, t, o: (
        eval_args(g, "sst-2", o), ["holds none", str(o)])),
    "do_eval alone, output missing": ("absent", lambda m, g, t, o: (
        eval_args(g, "sst-2", o), ["holds none", str(o)])),
    "do_eval of a model for another task": ("trained", lambda m, g, t, o: (
        eval_args(g, "mnli", o), ["labels", "mnli"])),
    "do_eval of a single-sentence model on sentence pairs": ("trained", lambda m, g, t, o: (
        eval_args(g, "mrpc", o), ["sst-2", "single sentences", "mrpc", "sentence pairs"])),
    "damaged model weights": ("trained", _damaged_weights),
    "output_dir is a file": ("absent", _output_dir_is_a_file),
    "unreadable eval_results.json": ("trained", _unreadable_results),
    "short SST-2 train row": ("trained", _short_row("sst-2", "train.tsv", 5, ["a sentence without its label"])),
    "short STS-B dev row (no score)": ("trained:sts-b", _short_dev_row(
        "sts-b", "dev.tsv", 3, ["2", "main-captions", "MSRvid", "2012test", "0002", "none", "none", "a b", "c d"])),
    "short MNLI dev_mismatched row": ("trained:mnli", _short_dev_row(
        "mnli", "dev_mismatched.tsv", 4, ["3", "30003", "30003e", "letters", "x", "x", "x", "x", "the dog"])),
    "short MRPC dev row": ("trained:mrpc", _short_dev_row("mrpc", "dev.tsv", 4, ["1", "1001", "2001", "one string"])),
    "dev.tsv with its header only": ("trained", _empty_dev_file),
    "model folder without tokenizer files": ("absent", _model_without_tokenizer),
    "do_eval alone, saved model without tokenizer files": ("trained", _saved_model_without_tokenizer),
    "tokenizer of far fewer tokens than the model's": ("absent", _tokenizer_of_size(20)),
    "tokenizer of more tokens than the model's": ("absent", _tokenizer_of_size(150)),
    "num_train_epochs 0": _no_train_epochs("0"),
    "num_train_epochs -1": _no_train_epochs("-1"),
    "num_train_epochs inf": _no_train_epochs("inf"),
    "fp16 without CUDA": ("trained", lambda m, g, t, o: (_train(m, g, "sst-2", o, "--fp16"), ["--fp16", "CUDA"])),
    "max_seq_length beyond the model's positions": ("trained", lambda m, g, t, o: (
        _train(m, g, "sst-2", o, "--max_seq_length", "100"), ["--max_seq_length 100", "64 positions"])),
    "incomplete resume_from_checkpoint": ("trained", _incomplete_resume_checkpoint),
    "do_predict without test.tsv": ("trained", lambda m, g, t, o: (
        eval_args(g, "sst-2", o, "--do_predict"), ["test.tsv", "not found", "--do_predict"])),
}


class StderrNotOneLine(AssertionError):
    """The error was reported, but stderr holds more than its one line."""


def bad_input_cases():
    cases = [pytest.param(setup, make, id=name) for name, (setup, make) in BAD_INPUTS.items()]
    cases.append(pytest.param("trained", _without_data_dir_offline, id="without --data_dir, offline"))
    return cases


@pytest.mark.parametrize("setup, make", bad_input_cases())
def test_bad_input_is_one_line_nonzero_exit_and_touches_nothing(setup, make, models, glue, trained, tmp_path, capsys):
    output_dir = tmp_path / "out"
    if setup.startswith("trained"):
        copy_of(trained(setup.partition(":")[2] or "sst-2"), tmp_path)
    elif setup == "notes":
        output_dir.mkdir()
        (output_dir / "notes.txt").write_text("mine\n")
    argv, words = make(models, glue, tmp_path, output_dir)
    before = snapshot(output_dir)
    capsys.readouterr()

    with pytest.raises(SystemExit) as exited:
        run_glue_with_pabee.main([str(arg) for arg in argv])

    # sys.exit("message") prints the message to stderr and exits with 1; argparse prints, then exits with 2.
    code = exited.value.code
    stderr = capsys.readouterr().err + (code + "\n" if isinstance(code, str) else "")
    status = 1 if isinstance(code, str) else code
    assert status not in (0, None)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "error:" in lines[-1]
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    # Feature caches of the splits read before the bad one may be added (with --do_eval alone they are not: see
    # test_bad_dev_row_found_before_anything_is_written); nothing else.
    assert changes(before, snapshot(output_dir), allowed_new_prefix="cached_features") == []
    if len(lines) != 1:
        raise StderrNotOneLine(f"stderr is not one line:\n{stderr}")


def test_bad_dev_row_found_before_anything_is_written(models, glue, tmp_path, capsys):
    data_dir = copy_task(glue, "sst-2", tmp_path)
    write_bad_row(data_dir, "dev.tsv", 3, ["no label here"])
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        run_glue_with_pabee.main([str(a) for a in _train(models, glue, "sst-2", output_dir, data_dir=data_dir)])
    assert "dev.tsv, line 3" in str(exited.value.code)
    assert not output_dir.exists()


# ---------------------------------------------------------------------------------------------------------------------
# 8. --help


def test_help_explains_patience_and_threshold(capsys):
    with pytest.raises(SystemExit) as exited:
        run_glue_with_pabee.main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "PATIENCE+1" in text and "0 runs every layer" in text
    assert "--regression_threshold" in text and "differ by less than" in text
    assert "Backbone family: bert, albert, roberta, xlm-roberta, distilbert, electra, modernbert, deberta-v2." in text
    # Every flag of the reference script is there.
    for flag in ("data_dir", "model_type", "model_name_or_path", "task_name", "output_dir", "patience",
                 "regression_threshold", "config_name", "tokenizer_name", "cache_dir", "max_seq_length", "do_train",
                 "do_eval", "evaluate_during_training", "do_lower_case", "per_gpu_train_batch_size",
                 "per_gpu_eval_batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay",
                 "adam_epsilon", "max_grad_norm", "num_train_epochs", "max_steps", "warmup_steps", "logging_steps",
                 "save_steps", "eval_all_checkpoints", "no_cuda", "overwrite_output_dir", "overwrite_cache", "seed",
                 "local_rank", "fp16"):
        assert f"--{flag}" in text, flag


GOOD_ROWS = "sentence,label\nfine,1\n"


@pytest.mark.parametrize("train_rows, validation_name, validation_rows, words", [
    ("sentence,label\na good film,1\na dull film,maybe\n", "dev.csv", GOOD_ROWS, ["unknown label", "maybe"]),
    ("sentence,label\na good film,1\n", "dev.txt", GOOD_ROWS, ["dev.txt", "unsupported file type"]),
    ("sentence\na good film\n", "dev.csv", GOOD_ROWS, ["train.csv", "no 'label' column"]),
    ("sentence,label\na good film,1\n", "dev.csv", "sentence,label\nfine,1\ndull,\n", ["dev.csv, row 2", "'label'"]),
    ("sentence,label\na good film,1\n", "dev.jsonl", '{"sentence": "fine", "label": "1"}\n{"sentence": "dull"}\n',
     ["dev.jsonl, row 2", "'label'"]),
    ("sentence,label\na good film,1\n", "dev.json", '[{"sentence": "fine"}]', ["dev.json", "no 'label' column"]),
])
def test_bad_csv_or_json_files_are_one_line_errors(models, tmp_path, train_rows, validation_name, validation_rows,
                                                   words):
    (tmp_path / "train.csv").write_text(train_rows)
    (tmp_path / validation_name).write_text(validation_rows)
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exit:
        run_glue_with_pabee.main([
            "--task_name", "sst-2", "--train_file", str(tmp_path / "train.csv"), "--validation_file",
            str(tmp_path / validation_name), "--model_name_or_path", str(models["bert"]), "--output_dir",
            str(output_dir), "--do_train", "--do_eval", "--no_cuda", "--max_seq_length", "32",
        ])
    # sys.exit("run_glue_with_pabee.py: error: ...") prints that one line and exits with 1.
    line = str(exit.value.code)
    assert line.startswith("run_glue_with_pabee.py: error:") and "\n" not in line
    assert all(word in line for word in words), line
    assert not output_dir.exists()
