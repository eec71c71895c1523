"""GLUE data and metrics for the PABEE example, with no dependency on transformers.

transformers 5 no longer ships `transformers.data.processors.glue`, so this module reads GLUE itself:

- `read_glue_split(data_dir, task, split)`: the original TSV release, one folder per task
  (e.g. `data/MRPC/train.tsv`, `data/MNLI/dev_mismatched.tsv`), the layout users of the reference code have;
- `load_hub_glue(task, split)`: the same data through the `datasets` library (`nyu-mll/glue`);
- `load_example_file(path, split_name)`: a user's own csv / json / jsonl file, as in HF `run_glue.py`;
- `compute_metrics(task, predictions, labels)`: the GLUE metric of each task.

Labels stay strings as in the files ("1", "entailment", "3.800") until `GlueTask.label_to_id` turns them into class
ids, in the label order the reference code used, so checkpoints trained with it keep their meaning.

    >>> task = get_task("MRPC")
    >>> examples = read_glue_split("data/MRPC", task, "dev")
    >>> ids = [task.label_to_id(e.label) for e in examples]
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class InputExample:
    """One sentence or sentence pair; `label` is the label string as in the file, None where unlabelled (test)."""

    guid: str
    text_a: str
    text_b: str | None
    label: str | None


class GlueFormatError(ValueError):
    """A data file does not have the layout its task expects; the message names the file and the line."""


@dataclass(frozen=True)
class GlueTask:
    name: str
    labels: tuple[str, ...] | None  # None for regression (sts-b)
    eval_splits: tuple[str, ...]
    test_splits: tuple[str, ...]

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    def label_to_id(self, label: str) -> int | float:
        """Class id of `label` in this task's label order; the float score for regression."""
        if self.labels is None:
            try:
                score = float(label)
            except (TypeError, ValueError):
                raise ValueError(f"task {self.name!r} expects a numeric score as label, got {label!r}") from None
            if not math.isfinite(score):
                raise ValueError(f"task {self.name!r} expects a finite numeric score as label, got {label!r}")
            return score
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(
                f"unknown label {label!r} for task {self.name!r}; expected one of {list(self.labels)}"
            ) from None


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")

# Label orders are the reference code's (transformers' old glue processors), not the hub's: MNLI's hub order is
# entailment/neutral/contradiction, but checkpoints trained with the reference use the order below.
GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("cola", _BINARY, ("dev",), ("test",)),
        GlueTask("sst-2", _BINARY, ("dev",), ("test",)),
        GlueTask("mrpc", _BINARY, ("dev",), ("test",)),
        GlueTask("sts-b", None, ("dev",), ("test",)),
        GlueTask("qqp", _BINARY, ("dev",), ("test",)),
        GlueTask("mnli", ("contradiction", "entailment", "neutral"), ("dev_matched", "dev_mismatched"),
                 ("test_matched", "test_mismatched")),
        GlueTask("qnli", _ENTAILMENT, ("dev",), ("test",)),
        GlueTask("rte", _ENTAILMENT, ("dev",), ("test",)),
        GlueTask("wnli", _BINARY, ("dev",), ("test",)),
    )
}

# Names are matched with case, "-" and "_" ignored, so "SST2", "sts_b" and "STS-B" all work. "mnli-mm" is the
# reference's name for evaluating MNLI on its mismatched dev set; here that set is simply one of mnli's eval_splits.
_ALIASES = {name.replace("-", ""): name for name in GLUE_TASKS} | {"mnlimm": "mnli"}


def get_task(name: str) -> GlueTask:
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in _ALIASES:
        raise ValueError(f"unknown GLUE task {name!r}; valid names are {', '.join(GLUE_TASKS)} (case-insensitive)")
    return GLUE_TASKS[_ALIASES[key]]


# ---------------------------------------------------------------------------------------------------------------------
# The original TSV release
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TsvLayout:
    """Where one kind of GLUE file keeps its fields (0-based columns; label -1 means the last column)."""

    has_header: bool
    text_a: int
    text_b: int | None = None
    label: int | None = None  # None: unlabelled (test files)

    @property
    def min_columns(self) -> int:
        text_columns = max(self.text_a, self.text_b if self.text_b is not None else -1)
        if self.label == -1:  # a last-column label must come after the texts
            return text_columns + 2
        return max(text_columns, self.label if self.label is not None else -1) + 1


# task -> (layout of train and dev files, layout of test files). Test files drop the label and, for CoLA, SST-2
# and QQP, also other columns, so the texts move.
_TSV_LAYOUTS: dict[str, tuple[_TsvLayout, _TsvLayout]] = {
    # train/dev: source, label, original mark, sentence (no header!); test: index, sentence
    "cola": (_TsvLayout(False, text_a=3, label=1), _TsvLayout(True, text_a=1)),
    # sentence, label; test: index, sentence
    "sst-2": (_TsvLayout(True, text_a=0, label=1), _TsvLayout(True, text_a=1)),
    # Quality, #1 ID, #2 ID, #1 String, #2 String; test: index, #1 ID, #2 ID, #1 String, #2 String
    "mrpc": (_TsvLayout(True, 3, 4, label=0), _TsvLayout(True, 3, 4)),
    # index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score; test: no score
    "sts-b": (_TsvLayout(True, 7, 8, label=-1), _TsvLayout(True, 7, 8)),
    # id, qid1, qid2, question1, question2, is_duplicate; test: id, question1, question2
    "qqp": (_TsvLayout(True, 3, 4, label=5), _TsvLayout(True, 1, 2)),
    # index, promptID, pairID, genre, 4 parse columns, sentence1, sentence2, label1 (dev: to label5), gold_label
    "mnli": (_TsvLayout(True, 8, 9, label=-1), _TsvLayout(True, 8, 9)),
    # index, question, sentence, label
    "qnli": (_TsvLayout(True, 1, 2, label=-1), _TsvLayout(True, 1, 2)),
    # index, sentence1, sentence2, label
    "rte": (_TsvLayout(True, 1, 2, label=-1), _TsvLayout(True, 1, 2)),
    "wnli": (_TsvLayout(True, 1, 2, label=-1), _TsvLayout(True, 1, 2)),
}


def is_sentence_pair_task(task: GlueTask) -> bool:
    """Whether the task's inputs are sentence pairs (MRPC, MNLI, ...) rather than single sentences (CoLA, SST-2)."""
    return _TSV_LAYOUTS[task.name][0].text_b is not None


def finetuned_task(config) -> GlueTask | None:
    """
    The GLUE task a model was fine-tuned on, from its config's `finetuning_task` (which the training script saves);
    None for a model not fine-tuned on a GLUE task this module knows.
    """
    try:
        return get_task(getattr(config, "finetuning_task", None) or "")
    except ValueError:
        return None


def input_kind(task: GlueTask) -> str:
    return "sentence pairs" if is_sentence_pair_task(task) else "single sentences"


def _check_split(task: GlueTask, split: str) -> None:
    valid = ("train",) + task.eval_splits + task.test_splits
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for task {task.name!r}; expected one of {list(valid)}")


def read_glue_split(data_dir: str | os.PathLike, task: GlueTask, split: str) -> list[InputExample]:
    """Read `{data_dir}/{split}.tsv` in the original GLUE layout of `task`."""
    _check_split(task, split)
    path = Path(data_dir) / f"{split}.tsv"
    if not path.is_file():
        files = ", ".join(f"{s}.tsv" for s in ("train",) + task.eval_splits + task.test_splits)
        raise FileNotFoundError(
            f"{path} not found. Expected the original GLUE release: one folder per task (e.g. "
            f"glue_data/{task.name.upper()}/) holding {files}, tab-separated, with the original columns and headers"
        )
    labelled, unlabelled = _TSV_LAYOUTS[task.name]
    layout = unlabelled if split in task.test_splits else labelled

    examples = []
    # newline="" lets csv see the line ends; QUOTE_NONE because GLUE fields contain stray double quotes that are
    # text, not quoting (a quote-aware reader would swallow them and glue lines together).
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            line = reader.line_num  # 1-based; one row per physical line since nothing is quoted
            if layout.has_header and line == 1:
                continue
            if not row:  # a blank line carries no example
                continue
            if len(row) < layout.min_columns:
                raise GlueFormatError(
                    f"{path}, line {line}: expected at least {layout.min_columns} tab-separated columns, "
                    f"found {len(row)}"
                )
            label = None
            if layout.label is not None:
                label = row[layout.label]
                try:
                    task.label_to_id(label)
                except ValueError as e:
                    raise GlueFormatError(f"{path}, line {line}: {e}") from None
            text_b = row[layout.text_b] if layout.text_b is not None else None
            examples.append(InputExample(f"{split}-{len(examples)}", row[layout.text_a], text_b, label))
    if not examples:
        raise GlueFormatError(f"{path} holds no examples{' (only a header line)' if layout.has_header else ''}")
    return examples


# ---------------------------------------------------------------------------------------------------------------------
# The hub copy (nyu-mll/glue through `datasets`)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _HubLayout:
    config: str
    text_a: str
    text_b: str | None
    # hub ClassLabel name -> our label string, in the hub's integer order (used if the dataset has no label names)
    label_names: dict[str, str] | None


_HUB_LAYOUTS: dict[str, _HubLayout] = {
    "cola": _HubLayout("cola", "sentence", None, {"unacceptable": "0", "acceptable": "1"}),
    "sst-2": _HubLayout("sst2", "sentence", None, {"negative": "0", "positive": "1"}),
    "mrpc": _HubLayout("mrpc", "sentence1", "sentence2", {"not_equivalent": "0", "equivalent": "1"}),
    "sts-b": _HubLayout("stsb", "sentence1", "sentence2", None),
    "qqp": _HubLayout("qqp", "question1", "question2", {"not_duplicate": "0", "duplicate": "1"}),
    "mnli": _HubLayout("mnli", "premise", "hypothesis",
                       {"entailment": "entailment", "neutral": "neutral", "contradiction": "contradiction"}),
    "qnli": _HubLayout("qnli", "question", "sentence", {name: name for name in _ENTAILMENT}),
    "rte": _HubLayout("rte", "sentence1", "sentence2", {name: name for name in _ENTAILMENT}),
    # In the TSV release WNLI's 1 means entailment; the hub names its classes not_entailment (0), entailment (1).
    "wnli": _HubLayout("wnli", "sentence1", "sentence2", {"not_entailment": "0", "entailment": "1"}),
}


def _hub_split_name(split: str) -> str:
    return split.replace("dev", "validation")  # dev -> validation, dev_matched -> validation_matched; test as is


def load_hub_glue(task: GlueTask, split: str, cache_dir=None) -> list[InputExample]:
    """Load `split` (our names: train, dev, dev_matched, test, ...) of `task` with `datasets.load_dataset`."""
    _check_split(task, split)
    try:
        import datasets  # optional: only this loader needs it
    except ImportError as e:
        raise ImportError("loading GLUE from the hub needs the `datasets` package: pip install datasets") from e

    layout = _HUB_LAYOUTS[task.name]
    hub_split = _hub_split_name(split)
    try:
        dataset = datasets.load_dataset("nyu-mll/glue", layout.config, split=hub_split, cache_dir=cache_dir)
    except Exception as e:  # offline, not cached, or a hub error: say how to get around it
        raise ValueError(
            f"could not load GLUE {layout.config!r} split {hub_split!r} with datasets ({type(e).__name__}: {e}). "
            "Without network access, either pre-fill the datasets cache (and set HF_DATASETS_OFFLINE=1) or read the "
            "original TSV files with read_glue_split / --data_dir."
        ) from e

    # Map hub label ids to our strings by name, so that our label order (not the hub's) decides the class ids.
    id_to_label = None
    if layout.label_names is not None:
        features = getattr(dataset, "features", None)
        hub_names = getattr(features.get("label"), "names", None) if features else None
        hub_names = hub_names or list(layout.label_names)
        unknown = [name for name in hub_names if name not in layout.label_names]
        if unknown:
            raise ValueError(
                f"hub GLUE {layout.config!r} has label names {hub_names}, expected {list(layout.label_names)}"
            )
        id_to_label = [layout.label_names[name] for name in hub_names]

    examples = []
    for i, row in enumerate(dataset):
        value = row["label"]
        if value is None or value == -1:  # test splits carry -1
            label = None
        elif id_to_label is None:
            label = str(float(value))
        else:
            label = id_to_label[int(value)]
        text_b = row[layout.text_b] if layout.text_b is not None else None
        examples.append(InputExample(f"{split}-{i}", row[layout.text_a], text_b, label))
    return examples


# ---------------------------------------------------------------------------------------------------------------------
# A user's own csv / json file (HF run_glue.py's --train_file / --validation_file)
# ---------------------------------------------------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    if suffix not in (".json", ".jsonl"):
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use a .csv, .json or .jsonl file")
    with open(path, encoding="utf-8") as f:
        content = f.read()
    if suffix == ".json":
        # A .json file may hold one document (a list of rows, or {"data": rows}); else treat it as JSON lines,
        # as the `datasets` json loader does.
        try:
            document = json.loads(content)
        except json.JSONDecodeError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("data"), list):
            document = document["data"]
        if isinstance(document, list):
            return document
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not valid JSON ({e})") from None
    return rows


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _text_columns(rows: list[dict]) -> list[str]:
    columns = [c for c in rows[0] if c != "label"]
    if "sentence1" in columns and "sentence2" in columns:
        return ["sentence1", "sentence2"]
    if "sentence" in columns:
        return ["sentence"]
    # Otherwise the first one or two text columns; a column of numbers (an id, say) is not text.
    text = [c for c in columns
            if any(isinstance(row.get(c), str) and row.get(c) and not _is_number(row.get(c)) for row in rows)]
    return text[:2]


def load_example_file(path: str | os.PathLike, split_name: str, require_labels: bool = False) -> list[InputExample]:
    """
    Read a csv/json/jsonl file with "sentence1"/"sentence2" (or "sentence") and a "label" column, optional unless
    `require_labels` (data to train or evaluate on: a row without its label raises a `ValueError` naming the file).
    """
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no rows found")
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path}: every row must be an object with named columns")
    columns = _text_columns(rows)
    if not columns:
        raise ValueError(f"{path}: no text column found; name it 'sentence' (or 'sentence1' and 'sentence2')")
    if require_labels and not any("label" in row for row in rows):
        raise ValueError(f"{path}: no 'label' column; training and evaluation need each example's label there")

    examples = []
    for i, row in enumerate(rows):
        texts = [row.get(c) for c in columns]
        if any(t is None for t in texts):
            raise ValueError(f"{path}, row {i + 1}: missing value in column(s) {columns}")
        label = row.get("label")
        label = None if label is None or label == "" else str(label)
        if require_labels and label is None:
            raise ValueError(f"{path}, row {i + 1}: no value in column 'label'")
        examples.append(InputExample(f"{split_name}-{i}", str(texts[0]),
                                     str(texts[1]) if len(texts) > 1 else None, label))
    return examples


# ---------------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------------


def main_metric_name(task: GlueTask) -> str:
    """The one number used to pick checkpoints and compare runs."""
    return {"cola": "mcc", "mrpc": "acc_and_f1", "qqp": "acc_and_f1", "sts-b": "corr"}.get(task.name, "acc")


def compute_metrics(task: GlueTask, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE metrics from class ids (classification) or scores (regression), as plain floats."""
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if task.is_regression and predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]  # logits of a num_labels=1 head: (batch, 1) -> (batch,)
    if predictions.ndim != 1:
        raise ValueError(
            f"predictions must be 1-D (class ids, or scores for regression), got shape {predictions.shape}; "
            "for logits pass logits.argmax(-1)"
        )
    if predictions.shape != labels.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("cannot compute metrics of an empty set")
    # Here rather than at the top: scipy and sklearn take seconds to import, which python -m pabee.classify (which
    # reads the task names of this module) should not pay.
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    if task.is_regression:
        pearson = float(pearsonr(predictions, labels)[0])
        spearman = float(spearmanr(predictions, labels)[0])
        return {"pearson": pearson, "spearmanr": spearman, "corr": (pearson + spearman) / 2}
    if task.name == "cola":
        return {"mcc": float(matthews_corrcoef(labels, predictions))}
    acc = float((predictions == labels).mean())
    if task.name in ("mrpc", "qqp"):
        f1 = float(f1_score(y_true=labels, y_pred=predictions))  # class 1 (paraphrase / duplicate) is positive
        return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    return {"acc": acc}


# The file names the GLUE benchmark expects in a submission, by task and test split.
_SUBMISSION_NAMES = {
    ("cola", "test"): "CoLA", ("sst-2", "test"): "SST-2", ("mrpc", "test"): "MRPC", ("sts-b", "test"): "STS-B",
    ("qqp", "test"): "QQP", ("mnli", "test_matched"): "MNLI-m", ("mnli", "test_mismatched"): "MNLI-mm",
    ("qnli", "test"): "QNLI", ("rte", "test"): "RTE", ("wnli", "test"): "WNLI",
}


def submission_file_name(task: GlueTask, split: str) -> str:
    """E.g. "SST-2.tsv", "MNLI-mm.tsv": the name GLUE's submission format gives the predictions of a test split."""
    return f"{_SUBMISSION_NAMES[(task.name, split)]}.tsv"


def write_submission(path: str | os.PathLike, task: GlueTask, predictions: np.ndarray) -> None:
    """
    Write test-set predictions in GLUE's submission format: a header `index<TAB>prediction`, then one row per test
    example in file order; label names for classification, scores clipped to [0, 5] for STS-B. `predictions` are
    class ids, or scores for regression. Written to a temporary file and renamed, so it is complete or absent.
    """
    path = Path(path)
    rows = ["index\tprediction"]
    for index, prediction in enumerate(predictions):
        value = f"{min(max(float(prediction), 0.0), 5.0):.3f}" if task.is_regression else task.labels[int(prediction)]
        rows.append(f"{index}\t{value}")
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(rows) + "\n")
    os.replace(partial, path)
