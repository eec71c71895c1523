"""End-to-end tests of run_glue_with_pabee.py's options: mixed precision in every evaluation and prediction, the
internal classifiers' learning rate, ALBERT exiting early, and the eval set of a --validation_file. Same tiny models
and GLUE fixtures as tests/test_run_glue.py.

    python -m pytest tests/test_script_options.py -q
"""

import json
import shutil

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

import run_glue_with_pabee
from fixtures_glue import NUM_DEV, NUM_LAYERS, run_main
from test_run_glue import (  # noqa: F401 (fixtures)
    base_args,
    by_key,
    eval_args,
    glue,
    models,
    read_runs,
)

# ---------------------------------------------------------------------------------------------------------------------
# Mixed precision


def run_fresh(argv):
    """
    run_main, with accelerate's per-process state (which keeps the first run's mixed precision: a process runs the
    script once) reset before and after, as accelerate's own tests do.
    """
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        run_main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture
def dtypes_inside_a_layer(monkeypatch):
    """
    {folder: dtypes} of the output of the first layer's feed-forward matrix product, in evaluation (not training)
    forwards, for every model the script loads, by the folder it was loaded from. A model trained in the run is the
    one loaded from --model_name_or_path.
    """
    seen = {}
    load_model = run_glue_with_pabee.load_model

    def load_and_watch(args, path, for_training):
        model = load_model(args, path, for_training)

        def record(module, inputs, output):
            if not module.training:
                seen.setdefault(str(path), set()).add(output.dtype)

        model.base_model.encoder.layer[0].intermediate.dense.register_forward_hook(record)
        return model

    monkeypatch.setattr(run_glue_with_pabee, "load_model", load_and_watch)
    return seen


def test_bf16_runs_every_evaluation_and_prediction_in_bfloat16(models, glue, tmp_path, dtypes_inside_a_layer):
    seen = dtypes_inside_a_layer
    data_dir = shutil.copytree(glue["sst-2"], tmp_path / "SST-2")
    (data_dir / "test.tsv").write_text("index\tsentence\n0\ta good film\n1\ta dull film\n")
    output_dir = tmp_path / "out"
    checkpoints = [str(output_dir / "checkpoint-3"), str(output_dir / "checkpoint-6")]
    sweep = ["--patience", "0,2", "--eval_all_checkpoints"]

    # Training, then evaluation of every checkpoint and of the model just trained (the final one).
    run_fresh(base_args(models["bert"], data_dir, "sst-2", output_dir, "--do_train", "--do_eval", "--max_steps", "6",
                        "--learning_rate", "1e-3", "--bf16", *sweep))
    assert seen == {path: {torch.bfloat16} for path in [models["bert"], *checkpoints]}
    entries = by_key(read_runs(output_dir)[-1]["entries"])
    assert {entry["precision"] for entry in entries.values()} == {"bf16"}
    # checkpoint-6 holds the final model's weights: evaluated the same way, it gives the same figures.
    for patience in (0, 2):
        checkpoint, final = entries[("checkpoint-6", "dev", patience)], entries[("final", "dev", patience)]
        assert checkpoint["exit_histogram"] == final["exit_histogram"]
        assert checkpoint["metrics"] == final["metrics"]

    # Evaluation only: the saved model and every checkpoint.
    seen.clear()
    run_fresh(eval_args({"sst-2": data_dir}, "sst-2", output_dir, "--bf16", *sweep))
    assert seen == {path: {torch.bfloat16} for path in [str(output_dir), *checkpoints]}
    assert {entry["precision"] for entry in read_runs(output_dir)[-1]["entries"]} == {"bf16"}

    # Test-set predictions.
    seen.clear()
    run_fresh(["--task_name", "SST-2", "--data_dir", data_dir, "--output_dir", output_dir, "--do_predict",
               "--max_seq_length", "32", "--no_cuda", "--bf16"])
    assert seen == {str(output_dir): {torch.bfloat16}}
    assert (output_dir / "predictions" / "patience_0" / "SST-2.tsv").read_text().count("\n") == 3

    # Without --bf16, the same model is evaluated in float32, and the entries say so.
    seen.clear()
    run_fresh(eval_args({"sst-2": data_dir}, "sst-2", output_dir, "--patience", "0"))
    assert seen == {str(output_dir): {torch.float32}}
    # patience 0, then the two oracle bounds from the same pass
    assert [entry["precision"] for entry in read_runs(output_dir)[-1]["entries"]] == ["fp32"] * 3


# ---------------------------------------------------------------------------------------------------------------------
# Training options


def test_classifier_lr_multiplier_sets_the_internal_classifiers_learning_rate(models, glue, tmp_path):
    output_dir = tmp_path / "out"
    run_main(base_args(models["bert"], glue["sst-2"], "sst-2", output_dir, "--do_train", "--max_steps", "1",
                       "--save_steps", "1", "--learning_rate", "1e-3", "--classifier_lr_multiplier", "10"))
    optimizer = torch.load(output_dir / "checkpoint-1" / "optimizer.bin", weights_only=True)
    # The shapes of each learning rate's parameters, read from their Adam moments (a parameter's shape).
    shapes = {}
    state = optimizer["state"]
    for group in optimizer["param_groups"]:
        shapes.setdefault(round(group["initial_lr"], 12), []).extend(
            tuple(state[index]["exp_avg"].shape) for index in group["params"] if index in state
        )
    assert set(shapes) == {1e-3, 1e-2}
    # The ten-times rate is the internal classifiers': one Linear(hidden 32, 2 labels) per layer, and nothing else.
    assert sorted(shapes[1e-2]) == sorted([(2,), (2, 32)] * NUM_LAYERS)
    assert len(shapes[1e-3]) > 2 * NUM_LAYERS


def test_albert_exits_early_through_the_script(models, glue, tmp_path):
    output_dir = tmp_path / "albert"
    sweep = ["--patience", "0,1,2,3"]
    run_main(base_args(models["albert"], glue["sst-2"], "sst-2", output_dir, "--model_type", "albert", "--do_train",
                       "--do_eval", "--max_steps", "6", "--learning_rate", "1e-3", "--per_gpu_eval_batch_size", "1",
                       *sweep))
    run_main(eval_args(glue, "sst-2", output_dir, "--per_gpu_eval_batch_size", "16", *sweep))
    one, sixteen = (by_key(run["entries"]) for run in read_runs(output_dir))
    assert set(one) == set(sixteen) == {("final", "dev", patience) for patience in (0, 1, 2, 3)}
    for (_, _, patience), entry in one.items():
        histogram = {int(layer): count for layer, count in entry["exit_histogram"].items()}
        assert sum(histogram.values()) == NUM_DEV
        earliest = NUM_LAYERS if patience == 0 else patience + 1
        assert all(count == 0 for layer, count in histogram.items() if layer < earliest), (patience, histogram)
        assert entry["simulation_agreement"] == 1.0
        # Batch size 16 gives the exits of batch size 1.
        assert sixteen[("final", "dev", patience)]["exit_histogram"] == entry["exit_histogram"]
    assert one[("final", "dev", 1)]["avg_exit_layer"] < NUM_LAYERS, "patience 1 never exited early"


# ---------------------------------------------------------------------------------------------------------------------
# Data options


def test_validation_file_is_evaluated_under_its_own_name(models, tmp_path):
    rows = [("a film", "always a film", "entailment"), ("a dog", "never a dog", "contradiction"),
            ("a car", "maybe a car", "neutral")] * 3
    for name in ("train.csv", "validation.csv"):
        (tmp_path / name).write_text("sentence1,sentence2,label\n" + "".join(",".join(row) + "\n" for row in rows))
    output_dir = tmp_path / "out"
    run_main(["--task_name", "MNLI", "--train_file", tmp_path / "train.csv", "--validation_file",
              tmp_path / "validation.csv", "--model_name_or_path", models["bert"], "--output_dir", output_dir,
              "--do_train", "--do_eval", "--max_steps", "1", "--no_cuda", "--max_seq_length", "32"])
    # One evaluation set, the file given: not MNLI's dev_matched.
    entries = read_runs(output_dir)[-1]["entries"]
    # patience 0 and the two oracle bounds, all on the file given
    assert [(entry["eval_set"], entry["examples"]) for entry in entries] == [("validation", len(rows))] * 3
    layer_metrics = json.loads((output_dir / "eval_results.json").read_text())["runs"][-1]["layer_metrics"]
    assert [layers["eval_set"] for layers in layer_metrics] == ["validation"]
    assert (output_dir / "tradeoff_final_validation.png").is_file()
