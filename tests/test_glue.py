"""Tests of pabee.glue on small files written in the exact layouts of the original GLUE release."""

import json

import numpy as np
import pytest

from pabee.glue import (
    GLUE_TASKS,
    GlueFormatError,
    InputExample,
    compute_metrics,
    get_task,
    load_example_file,
    load_hub_glue,
    main_metric_name,
    read_glue_split,
)


def write_tsv(path, rows):
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER[:10]


def mnli_row(index, premise, hypothesis, labels):
    parse = "( ( x ) )"
    return [str(index), "31193", f"{index}n", "government", parse, parse, "(ROOT x)", "(ROOT x)",
            premise, hypothesis] + labels


STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]


def stsb_row(index, s1, s2, *score):
    return [str(index), "main-captions", "MSRvid", "2012test", "0001", "none", "none", s1, s2, *score]


# task -> split -> (file rows, expected (text_a, text_b, label) of each example). Rows are verbatim GLUE layouts.
FIXTURES = {
    "cola": {
        "train": ([["gj04", "1", "", "Our friends won't buy this analysis."],
                   ["gj04", "0", "*", "They drank the pub."]],
                  [("Our friends won't buy this analysis.", None, "1"), ("They drank the pub.", None, "0")]),
        "dev": ([["gj04", "0", "*", "The more you eat, the more."]],
                [("The more you eat, the more.", None, "0")]),
        "test": ([["index", "sentence"], ["0", "Bill whistled past the house."]],
                 [("Bill whistled past the house.", None, None)]),
    },
    "sst-2": {
        "train": ([["sentence", "label"], ["hide new secretions from the parental units ", "0"],
                   ["the greatest musicians ", "1"]],
                  [("hide new secretions from the parental units ", None, "0"),
                   ("the greatest musicians ", None, "1")]),
        "dev": ([["sentence", "label"], ["it 's a charming and often affecting journey . ", "1"]],
                [("it 's a charming and often affecting journey . ", None, "1")]),
        "test": ([["index", "sentence"], ["0", "uneasy mishmash of styles and genres ."]],
                 [("uneasy mishmash of styles and genres .", None, None)]),
    },
    "mrpc": {
        "train": ([["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                   ["1", "702876", "702977", "Amrozi accused his brother .", "Referring to him , Amrozi accused ."],
                   ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."]],
                  [("Amrozi accused his brother .", "Referring to him , Amrozi accused .", "1"),
                   ("Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's .", "0")]),
        "dev": ([["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                 ["1", "1355540", "1355592", "He said the foodservice .", "The foodservice pie ."]],
                [("He said the foodservice .", "The foodservice pie .", "1")]),
        "test": ([["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                  ["0", "1089874", "1089925", "PCCW 's chief operating officer .", "Current Chief Operating ."]],
                 [("PCCW 's chief operating officer .", "Current Chief Operating .", None)]),
    },
    "sts-b": {
        "train": ([STSB_HEADER + ["score"], stsb_row(0, "A plane is taking off.", "An air plane is taking off.",
                                                     "5.000")],
                  [("A plane is taking off.", "An air plane is taking off.", "5.000")]),
        "dev": ([STSB_HEADER + ["score"], stsb_row(0, "A man with a hard hat.", "A man wearing a hard hat.", "3.800")],
                [("A man with a hard hat.", "A man wearing a hard hat.", "3.800")]),
        "test": ([STSB_HEADER, stsb_row(0, "A girl is styling her hair.", "A girl is brushing her hair.")],
                 [("A girl is styling her hair.", "A girl is brushing her hair.", None)]),
    },
    "qqp": {
        "train": ([["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                   ["133273", "213221", "213222", "How is the life of a math student?", "Which level?", "0"]],
                  [("How is the life of a math student?", "Which level?", "0")]),
        "dev": ([["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                 ["201359", "303345", "303346", "Why are African-Americans so beautiful?", "Why are hispanics?", "1"]],
                [("Why are African-Americans so beautiful?", "Why are hispanics?", "1")]),
        "test": ([["id", "question1", "question2"], ["0", "Would the idea work?", "Would it happen?"]],
                 [("Would the idea work?", "Would it happen?", None)]),
    },
    "mnli": {
        "train": ([MNLI_TRAIN_HEADER, mnli_row(0, "Conceptually cream skimming.", "Product and geography.",
                                               ["neutral", "neutral"])],
                  [("Conceptually cream skimming.", "Product and geography.", "neutral")]),
        "dev_matched": ([MNLI_DEV_HEADER, mnli_row(0, "The new rights are nice.", "Everyone likes the benefits.",
                                                   ["neutral", "entailment", "neutral", "neutral", "neutral",
                                                    "entailment"])],
                        [("The new rights are nice.", "Everyone likes the benefits.", "entailment")]),
        "dev_mismatched": ([MNLI_DEV_HEADER, mnli_row(0, "Your contribution helped.", "It did not help.",
                                                      ["contradiction"] * 6)],
                           [("Your contribution helped.", "It did not help.", "contradiction")]),
        "test_matched": ([MNLI_TEST_HEADER, mnli_row(0, "Hierbas, ans seco.", "Hierbas is a name.", [])],
                         [("Hierbas, ans seco.", "Hierbas is a name.", None)]),
        "test_mismatched": ([MNLI_TEST_HEADER, mnli_row(0, "What have you decided?", "I need a decision.", [])],
                            [("What have you decided?", "I need a decision.", None)]),
    },
    "qnli": {
        "train": ([["index", "question", "sentence", "label"],
                   ["0", "When did the third Digimon series begin?", "Unlike the two seasons before it.",
                    "not_entailment"]],
                  [("When did the third Digimon series begin?", "Unlike the two seasons before it.",
                    "not_entailment")]),
        "dev": ([["index", "question", "sentence", "label"], ["0", "What came into force?", "The treaty.",
                                                              "entailment"]],
                [("What came into force?", "The treaty.", "entailment")]),
        "test": ([["index", "question", "sentence"], ["0", "What organization is IUCN?", "The IUCN is a union."]],
                 [("What organization is IUCN?", "The IUCN is a union.", None)]),
    },
    "rte": {
        "train": ([["index", "sentence1", "sentence2", "label"],
                   ["0", "No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons Found in Iraq.",
                    "not_entailment"]],
                  [("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons Found in Iraq.", "not_entailment")]),
        "dev": ([["index", "sentence1", "sentence2", "label"], ["0", "Dana Reeve died.", "Reeve died.", "entailment"]],
                [("Dana Reeve died.", "Reeve died.", "entailment")]),
        "test": ([["index", "sentence1", "sentence2"], ["0", "Mangla was a hit.", "Mangla was popular."]],
                 [("Mangla was a hit.", "Mangla was popular.", None)]),
    },
    "wnli": {
        "train": ([["index", "sentence1", "sentence2", "label"],
                   ["0", "I stuck a pin through a carrot.", "The carrot had a hole.", "1"]],
                  [("I stuck a pin through a carrot.", "The carrot had a hole.", "1")]),
        "dev": ([["index", "sentence1", "sentence2", "label"], ["0", "The drain is clogged.", "The hair is.", "0"]],
                [("The drain is clogged.", "The hair is.", "0")]),
        "test": ([["index", "sentence1", "sentence2"], ["0", "Maude and Dora saw trains.", "Dora saw trains."]],
                 [("Maude and Dora saw trains.", "Dora saw trains.", None)]),
    },
}
CASES = [(task, split) for task, splits in FIXTURES.items() for split in splits]


def test_fixtures_cover_every_task_and_split():
    assert set(FIXTURES) == set(GLUE_TASKS)
    for name, task in GLUE_TASKS.items():
        assert set(FIXTURES[name]) == {"train", *task.eval_splits, *task.test_splits}


@pytest.mark.parametrize("task_name,split", CASES, ids=[f"{t}-{s}" for t, s in CASES])
def test_read_glue_split_reads_texts_and_labels(tmp_path, task_name, split):
    rows, expected = FIXTURES[task_name][split]
    write_tsv(tmp_path / f"{split}.tsv", rows)
    task = get_task(task_name)
    examples = read_glue_split(tmp_path, task, split)
    assert [(e.text_a, e.text_b, e.label) for e in examples] == expected
    assert [e.guid for e in examples] == [f"{split}-{i}" for i in range(len(expected))]
    for example in examples:
        if example.label is not None:
            task.label_to_id(example.label)  # every label read is one the task knows


def test_double_quotes_survive(tmp_path):
    # A quote-aware reader would drop these quotes and, for the unbalanced one, swallow the following lines.
    texts = ['"Hello," he said', 'a "quoted" word', '" unbalanced quote at the start']
    write_tsv(tmp_path / "train.tsv", [["sentence", "label"]] + [[t, "1"] for t in texts])
    write_tsv(tmp_path / "dev.tsv", [["index", "sentence1", "sentence2", "label"], ["0", 'He said "no', 'x"', "0"]])
    assert [e.text_a for e in read_glue_split(tmp_path, get_task("sst-2"), "train")] == texts
    (example,) = read_glue_split(tmp_path, get_task("wnli"), "dev")
    assert (example.text_a, example.text_b) == ('He said "no', 'x"')


def test_blank_lines_are_skipped_and_windows_line_ends_read(tmp_path):
    (tmp_path / "dev.tsv").write_bytes(b"sentence\tlabel\r\nfine film\t1\r\n\r\nbad film\t0\r\n")
    examples = read_glue_split(tmp_path, get_task("sst-2"), "dev")
    assert [(e.text_a, e.label) for e in examples] == [("fine film", "1"), ("bad film", "0")]


def test_too_few_columns_names_file_and_line(tmp_path):
    rows = FIXTURES["mrpc"]["train"][0] + [["1", "1", "2"]]  # line 4
    path = write_tsv(tmp_path / "train.tsv", rows)
    with pytest.raises(GlueFormatError) as info:
        read_glue_split(tmp_path, get_task("mrpc"), "train")
    assert str(info.value) == f"{path}, line 4: expected at least 5 tab-separated columns, found 3"
    assert isinstance(info.value, ValueError)


def test_mnli_label_must_come_after_the_texts(tmp_path):
    # A test-layout file passed as dev: sentence2 must not be taken for the label.
    path = write_tsv(tmp_path / "dev_matched.tsv", FIXTURES["mnli"]["test_matched"][0])
    with pytest.raises(GlueFormatError, match=f"{path}, line 2: expected at least 11 "):
        read_glue_split(tmp_path, get_task("mnli"), "dev_matched")


def test_cola_has_no_header_so_its_first_line_is_checked(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", [["gj04", "yes", "", "A sentence."], ["gj04", "1", "", "B."]])
    with pytest.raises(GlueFormatError, match=f"{path}, line 1: unknown label 'yes'"):
        read_glue_split(tmp_path, get_task("cola"), "train")


def test_unknown_label_names_file_line_and_valid_labels(tmp_path):
    rows = [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "entailment"], ["1", "a", "b", "neutral"]]
    path = write_tsv(tmp_path / "dev.tsv", rows)
    with pytest.raises(GlueFormatError) as info:
        read_glue_split(tmp_path, get_task("rte"), "dev")
    message = str(info.value)
    assert message.startswith(f"{path}, line 3: unknown label 'neutral'")
    assert "'entailment', 'not_entailment'" in message


def test_unparsable_stsb_score_names_file_and_line(tmp_path):
    path = write_tsv(tmp_path / "dev.tsv", [STSB_HEADER + ["score"], stsb_row(0, "a", "b", "high")])
    with pytest.raises(GlueFormatError, match=f"{path}, line 2: .*numeric score.*'high'"):
        read_glue_split(tmp_path, get_task("sts-b"), "dev")


def test_missing_file_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_glue_split(tmp_path, get_task("mnli"), "dev_mismatched")
    message = str(info.value)
    assert str(tmp_path / "dev_mismatched.tsv") in message
    assert "train.tsv" in message and "dev_matched.tsv" in message


@pytest.mark.parametrize("task_name, lines, note", [
    ("sst-2", [["sentence", "label"]], " (only a header line)"),
    ("cola", [], ""),  # CoLA has no header: an empty file
])
def test_file_without_examples_names_the_file(tmp_path, task_name, lines, note):
    path = write_tsv(tmp_path / "dev.tsv", lines + [[]])  # a blank line is no example either
    with pytest.raises(GlueFormatError) as info:
        read_glue_split(tmp_path, get_task(task_name), "dev")
    assert str(info.value) == f"{path} holds no examples{note}"


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="'dev_matched'.*expected one of \\['train', 'dev', 'test'\\]"):
        read_glue_split(tmp_path, get_task("rte"), "dev_matched")


@pytest.mark.parametrize("alias,name", [
    ("CoLA", "cola"), ("sst2", "sst-2"), ("SST-2", "sst-2"), ("stsb", "sts-b"), ("STS_B", "sts-b"),
    ("mnli-mm", "mnli"), ("MNLI", "mnli"), (" qqp ", "qqp"), ("RTE", "rte"),
])
def test_get_task_aliases(alias, name):
    assert get_task(alias) is GLUE_TASKS[name]


def test_get_task_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_task("squad")
    assert "'squad'" in str(info.value)
    assert all(name in str(info.value) for name in GLUE_TASKS)


def test_task_table():
    assert list(GLUE_TASKS) == ["cola", "sst-2", "mrpc", "sts-b", "qqp", "mnli", "qnli", "rte", "wnli"]
    mnli = GLUE_TASKS["mnli"]
    assert mnli.eval_splits == ("dev_matched", "dev_mismatched")
    assert mnli.test_splits == ("test_matched", "test_mismatched")
    assert GLUE_TASKS["sts-b"].is_regression and GLUE_TASKS["sts-b"].num_labels == 1
    assert not GLUE_TASKS["rte"].is_regression and GLUE_TASKS["rte"].num_labels == 2
    assert mnli.num_labels == 3


def test_label_to_id_order():
    mnli = get_task("mnli")  # the reference's order, not the hub's entailment/neutral/contradiction
    assert [mnli.label_to_id(x) for x in ("contradiction", "entailment", "neutral")] == [0, 1, 2]
    assert get_task("qnli").label_to_id("not_entailment") == 1
    assert get_task("cola").label_to_id("0") == 0 and get_task("cola").label_to_id("1") == 1
    assert get_task("sts-b").label_to_id("3.800") == pytest.approx(3.8)
    with pytest.raises(ValueError, match="unknown label '2' for task 'mrpc'"):
        get_task("mrpc").label_to_id("2")
    with pytest.raises(ValueError, match="numeric score"):
        get_task("sts-b").label_to_id("nan")


# Metrics, against values worked out by hand.

def test_mcc_known_value():
    # labels 1 1 1 0 0, predictions 1 1 0 0 1: TP=2 TN=1 FP=1 FN=1 -> (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    result = compute_metrics(get_task("cola"), np.array([1, 1, 0, 0, 1]), np.array([1, 1, 1, 0, 0]))
    assert result == {"mcc": pytest.approx(1 / 6)}
    assert type(result["mcc"]) is float


@pytest.mark.parametrize("name", ["mrpc", "qqp"])
def test_acc_and_f1_known_values(name):
    # TP=2 FP=1 FN=1 TN=1: precision = recall = 2/3 -> F1 = 2/3; accuracy 3/5
    result = compute_metrics(get_task(name), np.array([1, 1, 0, 0, 1]), np.array([1, 1, 1, 0, 0]))
    assert result == pytest.approx({"acc": 0.6, "f1": 2 / 3, "acc_and_f1": (0.6 + 2 / 3) / 2})
    assert all(type(v) is float for v in result.values())


def test_pearson_and_spearman_known_values():
    # x = 1 2 3, y = 1 3 2: deviations (-1 0 1) and (-1 1 0) -> Pearson = 1 / (sqrt 2 * sqrt 2) = 0.5; the values
    # are their own ranks, so Spearman is 0.5 too. Predictions as a (batch, 1) logit column are accepted.
    result = compute_metrics(get_task("sts-b"), np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 3.0, 2.0]))
    assert result == pytest.approx({"pearson": 0.5, "spearmanr": 0.5, "corr": 0.5})
    # A monotone but non-linear relation: Spearman 1, Pearson below 1.
    result = compute_metrics(get_task("stsb"), np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 40.0]))
    assert result["spearmanr"] == pytest.approx(1.0) and result["pearson"] < 0.9
    assert result["corr"] == pytest.approx((result["pearson"] + 1.0) / 2)
    assert all(type(v) is float for v in result.values())


@pytest.mark.parametrize("name", ["sst-2", "mnli", "qnli", "rte", "wnli"])
def test_accuracy_tasks(name):
    result = compute_metrics(get_task(name), np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    assert result == {"acc": 0.75}


def test_metrics_reject_logits_and_length_mismatch():
    with pytest.raises(ValueError, match="argmax"):
        compute_metrics(get_task("rte"), np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics(get_task("rte"), np.zeros(3), np.zeros(2))


def test_main_metric_name_is_a_key_of_compute_metrics():
    expected = {"cola": "mcc", "mrpc": "acc_and_f1", "qqp": "acc_and_f1", "sts-b": "corr"}
    for name, task in GLUE_TASKS.items():
        assert main_metric_name(task) == expected.get(name, "acc")
        values = np.array([0.0, 1.0, 1.0, 0.0]) if task.is_regression else np.array([0, 1, 1, 0])
        assert main_metric_name(task) in compute_metrics(task, values, values[::-1].copy())


# User files in HF run_glue.py's csv / json formats.

def test_load_example_file_csv_pairs_with_quotes_and_commas(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('idx,sentence1,sentence2,label\n0,"A, b",plain,1\n1,"say ""hi""",x,0\n', encoding="utf-8")
    examples = load_example_file(path, "train")
    assert examples == [InputExample("train-0", "A, b", "plain", "1"), InputExample("train-1", 'say "hi"', "x", "0")]


def test_load_example_file_csv_single_sentence_without_label(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("id,text\n7,good movie\n8,bad movie\n", encoding="utf-8")
    examples = load_example_file(path, "test")  # no "sentence" column: the id column is numbers, so "text" is used
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [("good movie", None, None), ("bad movie", None, None)]


def test_load_example_file_jsonl(tmp_path):
    rows = [{"sentence": "fine", "label": 1, "idx": 0}, {"sentence": "awful", "label": 0, "idx": 1}]
    path = tmp_path / "dev.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    examples = load_example_file(path, "dev")
    assert examples == [InputExample("dev-0", "fine", None, "1"), InputExample("dev-1", "awful", None, "0")]


def test_load_example_file_json_first_two_text_columns(tmp_path):
    rows = [{"id": 3, "premise": "a", "hypothesis": "b", "label": 2.5}]
    for path, content in [(tmp_path / "a.json", json.dumps(rows)), (tmp_path / "b.json", json.dumps(rows[0]))]:
        path.write_text(content, encoding="utf-8")  # a JSON list, then the same row as JSON lines
        assert load_example_file(path, "dev") == [InputExample("dev-0", "a", "b", "2.5")]


def test_load_example_file_errors(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_example_file(path, "train")
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_example_file(path, "train")


def test_load_example_file_with_required_labels(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\nfine,1\ndull,\nbad,0\n", encoding="utf-8")
    assert [e.label for e in load_example_file(path, "train")] == ["1", None, "0"]  # labels optional by default
    with pytest.raises(ValueError, match=r"train.csv, row 2: no value in column 'label'"):
        load_example_file(path, "train", require_labels=True)
    path.write_text("sentence\nfine\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.csv: no 'label' column"):
        load_example_file(path, "train", require_labels=True)


# The hub loader, with datasets.load_dataset replaced by an in-memory dataset.

@pytest.fixture
def fake_hub(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def install(dataset):
        def load_dataset(path, name, split, cache_dir=None):
            calls.append((path, name, split, cache_dir))
            return dataset
        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
        return calls

    return datasets, install


def test_load_hub_glue_maps_mnli_labels_by_name(fake_hub):
    datasets, install = fake_hub
    features = datasets.Features({
        "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]), "idx": datasets.Value("int32"),
    })
    dataset = datasets.Dataset.from_dict(
        {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"], "label": [0, 1, 2], "idx": [0, 1, 2]},
        features=features)
    calls = install(dataset)
    task = get_task("mnli")
    examples = load_hub_glue(task, "dev_mismatched", cache_dir="/cache")
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched", "/cache")]
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("p0", "h0", "entailment"), ("p1", "h1", "neutral"), ("p2", "h2", "contradiction")]
    assert [task.label_to_id(e.label) for e in examples] == [1, 2, 0]

    # The names the dataset carries decide, not a fixed assumption about the hub's order.
    features["label"] = datasets.ClassLabel(names=["neutral", "contradiction", "entailment"])
    install(dataset.cast(features))
    assert [e.label for e in load_hub_glue(task, "train")] == ["neutral", "contradiction", "entailment"]

    features["label"] = datasets.ClassLabel(names=["yes", "no", "maybe"])
    install(dataset.cast(features))
    with pytest.raises(ValueError, match="label names \\['yes', 'no', 'maybe'\\]"):
        load_hub_glue(task, "train")


def test_load_hub_glue_wnli_keeps_tsv_meaning(fake_hub):
    # In the TSV release WNLI's "1" is entailment; the hub calls its class 1 "entailment" and 0 "not_entailment".
    datasets, install = fake_hub
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["not_entailment", "entailment"])})
    install(datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1, 0]},
                                       features=features))
    assert [e.label for e in load_hub_glue(get_task("wnli"), "dev")] == ["1", "0"]


def test_load_hub_glue_binary_regression_and_test_labels(fake_hub):
    datasets, install = fake_hub
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["unacceptable", "acceptable"])})
    install(datasets.Dataset.from_dict({"sentence": ["bad", "good"], "label": [0, 1]}, features=features))
    assert [(e.text_a, e.label) for e in load_hub_glue(get_task("cola"), "dev")] == [("bad", "0"), ("good", "1")]

    install([{"sentence1": "a", "sentence2": "b", "label": 3.8, "idx": 0}])  # a plain list: no features
    (example,) = load_hub_glue(get_task("sts-b"), "train")
    assert (example.text_a, example.text_b, get_task("sts-b").label_to_id(example.label)) == ("a", "b", 3.8)

    calls = install([{"question1": "q1", "question2": "q2", "label": -1, "idx": 0}])
    assert load_hub_glue(get_task("qqp"), "test") == [InputExample("test-0", "q1", "q2", None)]
    assert calls[-1][2] == "test"


def test_load_hub_glue_failure_is_a_clear_value_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def load_dataset(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(ValueError, match="could not load GLUE 'rte' split 'validation'.*no network.*TSV"):
        load_hub_glue(get_task("rte"), "dev")
