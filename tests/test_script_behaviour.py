"""End-to-end tests of run_glue_with_pabee.py options whose effect is checked against a fact worked out by hand: the
learning-rate schedule of --warmup_steps, the update size under --max_grad_norm, the step count of a fractional
--num_train_epochs, what --config_name, --tokenizer_name, --cache_dir and --overwrite_cache change, STS-B test
predictions clipped to [0, 5], the prediction folders of every kind of exit setting, and damaged checkpoint files.
Same tiny models and GLUE fixtures as tests/test_run_glue.py.

    python -m pytest tests/test_script_behaviour.py -q
"""

import json
import os
import random
import shutil
import struct

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertTokenizerFast

import run_glue_with_pabee
from fixtures_glue import NUM_TRAIN, VOCAB, WORDS, changes, run_main, snapshot, write_test_split
from pabee import BertForSequenceClassificationWithPabee
from pabee.glue import get_task, read_glue_split
from test_run_glue import base_args, copy_task, eval_args, glue, models, read_runs  # noqa: F401

LEARNING_RATE = 1e-3
BATCH_SIZE = 8  # base_args' --per_gpu_train_batch_size: NUM_TRAIN (40) examples are 5 batches an epoch


def train(models, glue, task, output_dir, *extra):
    return run_main(base_args(models["bert"], glue[task], task, output_dir, "--do_train",
                              "--learning_rate", str(LEARNING_RATE), *extra))


def scalar_values(output_dir, tag):
    """[(step, value)] of one scalar in the run's TensorBoard event file (TFRecord framing read by hand)."""
    from tensorboardX.proto import event_pb2

    (path,) = [os.path.join(root, name) for root, _, names in os.walk(output_dir / "runs") for name in names
               if name.startswith("events.out.tfevents")]
    data, offset, values = open(path, "rb").read(), 0, []
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
        values += [(event.step, value.simple_value) for value in event.summary.value if value.tag == tag]
    return values


def backbone_change(model_folder, output_dir):
    """The largest change of any backbone weight between the pretrained model and the trained one."""
    before = load_file(os.path.join(model_folder, "model.safetensors"))
    after = load_file(output_dir / "model.safetensors")
    return max((after[f"bert.{name}"] - weight).abs().max().item() for name, weight in before.items()
               if f"bert.{name}" in after)


# ---------------------------------------------------------------------------------------------------------------------
# Training options


def test_warmup_steps_ramp_the_learning_rate_up_then_down(models, glue, tmp_path):
    output_dir = tmp_path / "out"
    train(models, glue, "sst-2", output_dir, "--max_steps", "6", "--warmup_steps", "4", "--logging_steps", "1",
          "--save_steps", "0")
    # Linear warm-up over 4 steps to the learning rate, then linear decay to 0 at step 6 (after each step's update).
    expected = [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0), (5, 0.5), (6, 0.0)]
    values = scalar_values(output_dir, "train/learning_rate")
    assert [step for step, _ in values] == [step for step, _ in expected]
    for (_, value), (_, share) in zip(values, expected):
        assert value == pytest.approx(share * LEARNING_RATE, rel=1e-6, abs=1e-12)  # stored as float32


def test_max_grad_norm_clips_the_gradient_before_the_update(models, glue, tmp_path):
    """AdamW moves a weight by about the learning rate at its first steps, whatever the gradient's scale, unless the
    gradient is far below its epsilon (1e-8): clipped to a norm of 1e-12, every update is about 1e-4 of that."""
    changes_by_norm = {}
    for norm in ("1.0", "1e-12"):
        output_dir = tmp_path / f"clip-{norm}"
        train(models, glue, "sst-2", output_dir, "--max_steps", "2", "--save_steps", "0", "--max_grad_norm", norm)
        changes_by_norm[norm] = backbone_change(models["bert"], output_dir)
    assert changes_by_norm["1.0"] > 0.5 * LEARNING_RATE
    assert changes_by_norm["1e-12"] < 1e-3 * LEARNING_RATE


def test_fractional_num_train_epochs_trains_that_share_of_the_last_epoch(models, glue, tmp_path, caplog):
    output_dir = tmp_path / "out"
    with caplog.at_level("INFO"):
        train(models, glue, "sst-2", output_dir, "--max_steps", "-1", "--num_train_epochs", "1.5", "--save_steps", "4")
    # 40 examples in batches of 8: 5 steps an epoch; 1.5 epochs are 7.5 steps, rounded up to 8: the whole first
    # epoch and 3 batches of the second.
    assert NUM_TRAIN // BATCH_SIZE == 5
    assert "Total optimization steps = 8" in caplog.text
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    state = json.loads((output_dir / "checkpoint-8" / "trainer_state.json").read_text())
    assert state == {"global_step": 8, "epoch": 1, "batches_in_epoch": 3}


# ---------------------------------------------------------------------------------------------------------------------
# Where the config, the tokenizer and the feature cache come from


def test_config_name_gives_the_model_its_config(models, glue, tmp_path):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    config = json.loads(open(os.path.join(models["bert"], "config.json")).read())
    assert config["hidden_dropout_prob"] != 0.25
    config["hidden_dropout_prob"] = 0.25
    (config_dir / "config.json").write_text(json.dumps(config))
    output_dir = tmp_path / "out"
    train(models, glue, "sst-2", output_dir, "--max_steps", "1", "--save_steps", "0", "--config_name", config_dir)
    model = BertForSequenceClassificationWithPabee.from_pretrained(output_dir)
    assert model.config.hidden_dropout_prob == 0.25
    assert model.dropout.p == 0.25  # the internal classifiers' dropout is BERT's hidden dropout


def test_tokenizer_name_tokenizes_for_a_model_folder_without_one(models, glue, tmp_path):
    """A folder with only the weights and --tokenizer_name: the run tokenises with that tokenizer and saves it with
    the model. Its vocabulary is the model's in another order, so each word's id tells which tokenizer made it."""
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(models["bert"], name), weights_only)
    shuffled = VOCAB[:5] + random.Random(0).sample(VOCAB[5:], len(VOCAB) - 5)  # special tokens keep their ids
    assert shuffled != VOCAB
    tokenizer_dir = tmp_path / "tokenizer"
    BertTokenizerFast(vocab={token: index for index, token in enumerate(shuffled)}).save_pretrained(tokenizer_dir)

    output_dir = tmp_path / "out"
    train(models, glue, "sst-2", output_dir, "--max_steps", "1", "--save_steps", "0", "--model_name_or_path",
          weights_only, "--tokenizer_name", tokenizer_dir)
    saved = AutoTokenizer.from_pretrained(output_dir)
    assert saved.convert_tokens_to_ids(WORDS) == [shuffled.index(word) for word in WORDS]
    (cache,) = (output_dir / "cached_features").glob("cached_sst-2_train_*")
    first = read_glue_split(glue["sst-2"], get_task("sst-2"), "train")[0]
    expected = [shuffled.index(token) for token in ["[CLS]", *first.text_a.split(), "[SEP]"]]
    assert datasets.load_from_disk(cache)[0]["input_ids"] == expected


def test_cache_dir_holds_the_features_and_overwrite_cache_rebuilds_them(models, glue, tmp_path):
    cache_dir = tmp_path / "cache"
    output_dir = tmp_path / "out"
    train(models, glue, "sst-2", output_dir, "--max_steps", "6", "--save_steps", "0", "--cache_dir", cache_dir)
    assert not (output_dir / "cached_features").exists()
    assert len(list((cache_dir / "cached_features").glob("cached_sst-2_train_*"))) == 1

    def accuracy(*extra):
        run_main(eval_args(glue, "sst-2", output_dir, "--patience", "0", "--cache_dir", cache_dir, *extra))
        (entry,) = [entry for entry in read_runs(output_dir)[-1]["entries"] if entry["criterion"] == "patience"]
        return entry["metrics"]["acc"]

    right = accuracy()
    (dev_cache,) = (cache_dir / "cached_features").glob("cached_sst-2_dev_*")
    # The cached dev features with every label flipped: read from the cache, they turn each right answer wrong.
    flipped = datasets.load_from_disk(dev_cache).map(lambda row: {"labels": 1 - row["labels"]})
    flipped.save_to_disk(tmp_path / "flipped")
    shutil.rmtree(dev_cache)
    shutil.move(tmp_path / "flipped", dev_cache)
    assert accuracy() == pytest.approx(1 - right)
    assert accuracy("--overwrite_cache") == pytest.approx(right)  # rebuilt from dev.tsv
    assert accuracy() == pytest.approx(right)  # and the rebuilt cache is the one kept


# ---------------------------------------------------------------------------------------------------------------------
# Test-set predictions


def write_stsb_test_split(folder, num_test=12):
    """STS-B's test.tsv: its dev columns without the score."""
    rng = random.Random("sts-b")
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
    rows = [header] + [[str(i), "main-news", "headlines", "2015", str(i), "none", "none",
                        " ".join(rng.choices(WORDS, k=5)), " ".join(rng.choices(WORDS, k=4))] for i in range(num_test)]
    (folder / "test.tsv").write_text("".join("\t".join(row) + "\n" for row in rows))


def test_stsb_test_predictions_are_clipped_to_the_score_range(models, glue, tmp_path):
    data_dir = copy_task(glue, "sts-b", tmp_path)
    write_stsb_test_split(data_dir)
    output_dir = tmp_path / "out"
    train(models, {"sts-b": data_dir}, "sts-b", output_dir, "--max_steps", "2", "--save_steps", "0")

    # Stretch the last classifier's scores so that some fall below 0 and some above 5.
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = BertForSequenceClassificationWithPabee.from_pretrained(output_dir).eval()
    examples = read_glue_split(data_dir, get_task("sts-b"), "test")

    @torch.no_grad()
    def scores():
        return [model(**tokenizer(example.text_a, example.text_b, return_tensors="pt"), patience=0).logits.item()
                for example in examples]

    raw = scores()
    low, high = min(raw), max(raw)
    scale = 10 / (high - low)
    classifier = model.classifiers[-1]
    with torch.no_grad():
        classifier.weight.mul_(scale)
        classifier.bias.mul_(scale).add_(2.5 - scale * (low + high) / 2)  # scores now spread over [-2.5, 7.5]
    model.save_pretrained(output_dir)
    stretched = scores()
    assert min(stretched) < 0 and max(stretched) > 5

    run_main(eval_args({"sts-b": data_dir}, "sts-b", output_dir, "--do_predict", "--patience", "0"))
    lines = (output_dir / "predictions" / "patience_0" / "STS-B.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 1 + len(examples)
    written = [float(line.split("\t")[1]) for line in lines[1:]]
    for value, score in zip(written, stretched):
        assert value == pytest.approx(min(max(score, 0.0), 5.0), abs=1e-3)
    assert 0.0 in written and 5.0 in written and any(0 < value < 5 for value in written)


def test_every_exit_setting_gets_its_own_prediction_folder(models, glue, tmp_path):
    data_dir = copy_task(glue, "sst-2", tmp_path)
    write_test_split(data_dir, "sst-2")
    output_dir = tmp_path / "out"
    train(models, {"sst-2": data_dir}, "sst-2", output_dir, "--max_steps", "6", "--save_steps", "0")
    run_main(eval_args({"sst-2": data_dir}, "sst-2", output_dir, "--do_predict", "--patience", "0,2",
                       "--exit_confidence", "0.7", "--exit_criterion", "entropy", "--exit_thresholds", "0.3"))
    run_main(eval_args({"sst-2": data_dir}, "sst-2", output_dir, "--do_predict", "--patience", "1",
                       "--exit_criterion", "confidence", "--exit_thresholds", "0.9"))
    folders = {
        "patience_0": {"patience": 0},
        "patience_1": {"patience": 1},
        "patience_2": {"patience": 2},
        "patience_2_confidence_ge_0.7": {"patience": 2, "exit_confidence": 0.7},
        "entropy_lt_0.3": {"exit_criterion": "entropy", "exit_threshold": 0.3},
        "confidence_gt_0.9": {"exit_criterion": "confidence", "exit_threshold": 0.9},
    }
    assert sorted(path.name for path in (output_dir / "predictions").iterdir()) == sorted(folders)

    # Each folder holds the answers of its own setting, run on each test example alone.
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = BertForSequenceClassificationWithPabee.from_pretrained(output_dir).eval()
    examples = read_glue_split(data_dir, get_task("sst-2"), "test")
    for folder, kwargs in folders.items():
        lines = (output_dir / "predictions" / folder / "SST-2.tsv").read_text().splitlines()
        assert len(lines) == 1 + len(examples), folder
        for line, example in zip(lines[1:], examples):
            with torch.no_grad():
                logits = model(**tokenizer(example.text_a, return_tensors="pt"), **kwargs).logits
            answer = logits.argmax(-1).item()
            assert line.split("\t")[1] == model.config.id2label[answer], folder


# ---------------------------------------------------------------------------------------------------------------------
# A damaged checkpoint is a one-line error that names the file


def cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def with_checkpoints(models, glue, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("checkpoints") / "out"
    train(models, glue, "sst-2", output_dir, "--max_steps", "6", "--save_steps", "3")
    return output_dir


@pytest.mark.parametrize("name, damage", [
    ("optimizer.bin", cut_short),
    ("scheduler.bin", cut_short),
    ("random_states_0.pkl", cut_short),
    ("trainer_state.json", lambda path: path.write_text('{"global_step": 6, ')),
])
def test_damaged_checkpoint_file_is_a_one_line_error(with_checkpoints, models, glue, tmp_path, capsys, name, damage):
    output_dir = shutil.copytree(with_checkpoints, tmp_path / "out")
    damaged = output_dir / "checkpoint-6" / name
    assert damaged.is_file()
    damage(damaged)
    before = snapshot(output_dir)
    capsys.readouterr()
    argv = base_args(models["bert"], glue["sst-2"], "sst-2", output_dir, "--do_train", "--max_steps", "9")
    with pytest.raises(SystemExit) as exited:
        run_glue_with_pabee.main([str(argument) for argument in argv])  # resumes from the newest, checkpoint-6
    code = exited.value.code
    message = (capsys.readouterr().err + (code if isinstance(code, str) else "")).strip()
    assert code not in (0, None)
    assert "\n" not in message and "Traceback" not in message
    assert str(damaged) in message and "cannot resume" in message
    assert changes(before, snapshot(output_dir)) == []
