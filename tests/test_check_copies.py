"""Tests of utils/check_copies.py: the repository's copies are in sync, and a changed copy is caught.

    python -m pytest tests/test_check_copies.py -q
"""

import ast
import importlib.util
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ALBERT_FILE = REPO_ROOT / "pabee" / "modeling_pabee_albert.py"
BERT_FILE = REPO_ROOT / "pabee" / "modeling_pabee_bert.py"
FAMILY_FILES = sorted(set((REPO_ROOT / "pabee").glob("modeling_pabee_*.py")) - {BERT_FILE})
CLASS = "BertForSequenceClassificationWithPabee"


def load_check_copies():
    # utils/ is not a package: load the script as a module
    spec = importlib.util.spec_from_file_location("check_copies", REPO_ROOT / "utils" / "check_copies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_copies = load_check_copies()


def test_repository_copies_are_in_sync(capsys):
    for path in sorted((REPO_ROOT / "pabee").glob("*.py")):
        assert check_copies.check_file(path) == [], path.name
    assert check_copies.main([]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("path", FAMILY_FILES, ids=lambda path: path.name)
def test_family_files_mark_their_copies(path):
    """The check has something to check: the shared early-exit code in each family's file is marked as copied."""
    markers = [check_copies.MARKER.match(line) for line in path.read_text().splitlines()]
    names = {m["name"]: m["renames"] for m in markers if m}
    family = path.stem.removeprefix("modeling_pabee_")
    assert (names.get(CLASS) or "").startswith("Bert->"), names.get(CLASS)
    # Every top-level name the two files share is marked, so none can drift unseen (the classifier, named after its
    # backbone in each file, is marked above; the backbone wrappers differ on purpose).
    shared = top_level_names(BERT_FILE) & top_level_names(path)
    own = {"__all__"}
    assert shared - own <= set(names), shared - own - set(names)
    assert {"update_patience_counters", "patience_exit_layers", "weighted_layer_loss", "check_pabee_settings"} <= \
        shared
    # the backbone's methods that need nothing of the family's own are copies too
    assert "BertModelWithPabee.pooling_weights" in names, family


def top_level_names(path):
    """Functions, classes and assigned names defined at the top level of a module."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return names


def copy_with_change(tmp_path, old, new):
    text = ALBERT_FILE.read_text()
    assert text.count(old) == 1, old
    copy = tmp_path / ALBERT_FILE.name
    copy.write_text(text.replace(old, new))
    return copy


def marker_line(path, name):
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if re.match(rf"# Copied from pabee\.modeling_pabee_bert\.{name}\b", line):
            return number
    raise AssertionError(f"no marker for {name}")


@pytest.mark.parametrize(
    "old, new, name",
    [
        # a changed line inside a copied function
        ("return (counters + 1).masked_fill_(", "return (counters + 2).masked_fill_(", "update_patience_counters"),
        # inside the copied class (compared after the Bert->Albert renaming)
        ("if len(done) == 1 or done.all():", "if done.all():", CLASS),
        # the renaming is applied: a name left as in the original is a difference
        ("self.albert = AlbertModelWithPabee(config)", "self.bert = AlbertModelWithPabee(config)", CLASS),
        # a copied constant
        ('EXIT_POOLINGS = ("pooler", "mean")', 'EXIT_POOLINGS = ("pooler", "mean", "max")', "EXIT_POOLINGS"),
    ],
)
def test_changed_copy_is_reported_and_fixed(tmp_path, old, new, name):
    copy = copy_with_change(tmp_path, old, new)
    problems = check_copies.check_file(copy)
    assert len(problems) == 1, problems
    assert f"{copy}:{marker_line(copy, name)}:" in problems[0]
    assert f"differs from pabee.modeling_pabee_bert.{name}" in problems[0]

    assert check_copies.check_file(copy, fix=True) == problems
    assert copy.read_text() == ALBERT_FILE.read_text()
    assert check_copies.check_file(copy) == []


def test_unchanged_copy_elsewhere_passes_and_uncopied_code_is_free(tmp_path):
    copy = tmp_path / ALBERT_FILE.name
    copy.write_text(ALBERT_FILE.read_text())
    assert check_copies.check_file(copy) == []
    # AlbertModelWithPabee is ALBERT's own code, not a copy: changing it is not a difference
    old = "return nn.functional.linear(hidden_states[:, 0], pooler.weight, pooler.bias).tanh_()"
    changed = copy_with_change(tmp_path, old, "return nn.functional.linear(hidden_states[:, 0], pooler.weight)")
    assert check_copies.check_file(changed) == []


def test_marker_naming_a_missing_original_is_reported(tmp_path):
    old = "# Copied from pabee.modeling_pabee_bert.update_patience_counters\n"
    copy = copy_with_change(tmp_path, old, "# Copied from pabee.modeling_pabee_bert.update_patience_counterz\n")
    problems = check_copies.check_file(copy)
    assert len(problems) == 1 and "update_patience_counterz not found" in problems[0], problems


@pytest.mark.parametrize(
    "renames, expected",
    [
        ("Bert->Albert", "ALBERT Albert albert AlbertModel"),
        # a case written out wins over the one derived from another renaming
        ("Bert->Roberta, BERT->RoBERTa", "RoBERTa Roberta roberta RobertaModel"),
        ("Bert->XLMRoberta, bert->roberta, BERT->XLM-RoBERTa", "XLM-RoBERTa XLMRoberta roberta XLMRobertaModel"),
        ("Bert->DistilBert, BERT->DistilBERT", "DistilBERT DistilBert distilbert DistilBertModel"),
    ],
)
def test_renames_in_each_case(renames, expected):
    assert check_copies.apply_renames("BERT Bert bert BertModel", renames) == expected


def test_changed_method_copy_is_reported_and_fixed(tmp_path):
    """A method of a class can be a copy too: the marker stands above it, indented like it."""
    original = REPO_ROOT / "pabee" / "modeling_pabee_roberta.py"
    text = original.read_text()
    old = "            return None\n        return mean_pooling_weights(hidden_states, attention_mask)\n"
    assert text.count(old) == 1
    copy = tmp_path / original.name
    copy.write_text(text.replace(old, old.replace("return None", "return 0")))
    problems = check_copies.check_file(copy)
    assert len(problems) == 1 and "differs from pabee.modeling_pabee_bert.BertModelWithPabee.pooling_weights" in \
        problems[0], problems
    assert check_copies.check_file(copy, fix=True) == problems
    assert copy.read_text() == text


def test_long_marker_may_end_in_noqa():
    line = f"# Copied from pabee.modeling_pabee_bert.{CLASS} with Bert->X, BERT->Y  # noqa: E501"
    match = check_copies.MARKER.match(line)
    assert match["name"] == CLASS and match["renames"] == "Bert->X, BERT->Y"
