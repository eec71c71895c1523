"""The feature cache: a new entry whenever what produced the features changes (tokenizer vocabulary, maximum length,
model type, data file), and the same entry, not tokenised again, otherwise.

    python -m pytest tests/test_features.py -q
"""

import os
import shutil
import time

import pytest
from transformers import AutoTokenizer, BertTokenizerFast

from fixtures_glue import VOCAB, save_tiny_model, write_glue_task
from pabee.features import file_identity, load_feature_sets
from pabee.glue import get_task, read_glue_split

TASK = get_task("sst-2")


@pytest.fixture
def setting(tmp_path):
    """A tokenizer saved to a folder, an SST-2 folder, and the cache folder."""
    model = save_tiny_model(tmp_path / "model", "bert")
    return {"tokenizer": AutoTokenizer.from_pretrained(model), "model": model,
            "data": write_glue_task(tmp_path / "SST-2", "sst-2"), "cache": str(tmp_path / "cache")}


def load(setting, tokenizer=None, max_seq_length=32, model_type="bert"):
    """The dev features, and whether the data file was read (tokenised) to make them rather than taken from cache."""
    reads = []

    def read_examples():
        reads.append(True)
        return read_glue_split(setting["data"], TASK, "dev")

    source = file_identity(os.path.join(setting["data"], "dev.tsv"))
    features = load_feature_sets(TASK, {"dev": (read_examples, source)}, tokenizer or setting["tokenizer"],
                                 max_seq_length, model_type, setting["cache"])["dev"]
    return features, bool(reads)


def cache_entries(setting):
    return sorted(os.listdir(setting["cache"]))


def test_same_inputs_reuse_the_cache(setting, tmp_path):
    first, tokenised = load(setting)
    assert tokenised and len(cache_entries(setting)) == 1
    again, tokenised = load(setting)
    assert not tokenised and again["input_ids"] == first["input_ids"]
    # The same tokenizer from another folder (a trained model's copy of it) is the same tokenizer.
    copy = shutil.copytree(setting["model"], tmp_path / "copy")
    _, tokenised = load(setting, tokenizer=AutoTokenizer.from_pretrained(copy))
    assert not tokenised and len(cache_entries(setting)) == 1


def test_another_vocabulary_gets_its_own_cache(setting):
    first, _ = load(setting)
    # Same size, two words swapped: every sentence with either word gets other ids.
    swapped = list(VOCAB)
    good, bad = swapped.index("good"), swapped.index("bad")
    swapped[good], swapped[bad] = "bad", "good"
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(swapped)}, do_lower_case=True)
    features, tokenised = load(setting, tokenizer=tokenizer)
    assert tokenised and len(cache_entries(setting)) == 2
    assert features["input_ids"] != first["input_ids"]


def test_another_max_seq_length_gets_its_own_cache(setting):
    first, _ = load(setting)
    shorter, tokenised = load(setting, max_seq_length=6)
    assert tokenised and len(cache_entries(setting)) == 2
    assert max(len(ids) for ids in shorter["input_ids"]) == 6 < max(len(ids) for ids in first["input_ids"])


def test_another_model_type_gets_its_own_cache(setting):
    load(setting)
    _, tokenised = load(setting, model_type="albert")
    assert tokenised and len(cache_entries(setting)) == 2


def test_an_edited_data_file_gets_its_own_cache(setting):
    first, _ = load(setting)
    path = os.path.join(setting["data"], "dev.tsv")
    with open(path) as file:
        lines = file.read().splitlines()
    time.sleep(0.01)  # a modification time of its own even on coarse clocks
    with open(path, "w") as file:
        file.write("\n".join(lines[:-1] + ["a good film\t1"]) + "\n")
    edited, tokenised = load(setting)
    assert tokenised and len(cache_entries(setting)) == 2
    assert len(edited) == len(first) and edited["input_ids"][-1] != first["input_ids"][-1]
