"""Check that code marked `# Copied from pabee.<module>.<name>` is still the same as its original.

The modeling files are meant to be copied alone into other projects, so each family's file repeats the early-exit
code of the BERT file instead of importing it. A marker above a top-level definition, or above a method of a top-level
class (`Class.method`, the marker indented like the method), names the original and, optionally, renamings to apply
to it. Each renaming applies in the case it is written in and in lower and upper case (`with Bert->Albert`: BERT->ALBERT
and bert->albert follow), except where another renaming is written out in that case (`with Bert->Roberta,
BERT->RoBERTa` writes RoBERTa for BERT, not ROBERTA):

    # Copied from pabee.modeling_pabee_bert.BertForSequenceClassificationWithPabee with Bert->Albert
    # Copied from pabee.modeling_pabee_bert.BertForSequenceClassificationWithPabee with Bert->Roberta, BERT->RoBERTa
    # Copied from pabee.modeling_pabee_bert.BertModelWithPabee.pooling_weights

A marker longer than the line limit may end in `  # noqa: E501`.

    python utils/check_copies.py          # exit 1 and list the copies that differ
    python utils/check_copies.py --fix    # rewrite them from their originals
"""

import argparse
import ast
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(
    r"^ *# Copied from pabee\.(?P<module>\w+)\.(?P<name>\w+(?:\.\w+)?)(?: with (?P<renames>.+?))?(?:  # noqa: E501)?$"
)


def definition_blocks(source):
    """
    Map each top-level name, and each method of a top-level class as `Class.method`, to its (first line, last line),
    0-based and inclusive, decorators included.
    """
    blocks = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            blocks[node.name] = block_span(node)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    blocks[target.id] = block_span(node)
        if isinstance(node, ast.ClassDef):
            for method in node.body:
                if isinstance(method, ast.FunctionDef):
                    blocks[f"{node.name}.{method.name}"] = block_span(method)
    return blocks


def block_span(node):
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    return first, node.end_lineno - 1


def apply_renames(text, renames):
    """Apply `Old->New` renamings in all three cases at once (a sequential replace would rename its own output)."""
    pairs = [[part.strip() for part in rename.split("->")] for rename in (renames or "").split(",") if rename.strip()]
    mapping = {case(old): case(new) for old, new in pairs for case in (str.lower, str.upper)}
    mapping.update({old: new for old, new in pairs})  # a case written out wins over one derived from another renaming
    if not mapping:
        return text
    return re.sub("|".join(map(re.escape, mapping)), lambda match: mapping[match.group(0)], text)


def check_file(path, fix=False):
    """Return a description of each copy in `path` that differs from its original; rewrite them if `fix`."""
    lines = path.read_text().splitlines(keepends=True)
    copy_blocks = {span[0]: span for span in definition_blocks("".join(lines)).values()}
    problems, replacements = [], []
    for marker_line, line in enumerate(lines):
        match = MARKER.match(line.rstrip("\n"))
        if not match:
            continue
        original_path = REPO_ROOT / "pabee" / f"{match['module']}.py"
        original_source = original_path.read_text()
        original_blocks = definition_blocks(original_source)
        if match["name"] not in original_blocks:
            problems.append(f"{path}:{marker_line + 1}: {match['name']} not found in {original_path}")
            continue
        first, last = original_blocks[match["name"]]
        original_text = "".join(original_source.splitlines(keepends=True)[first : last + 1])
        expected = apply_renames(original_text, match["renames"])

        if marker_line + 1 not in copy_blocks:
            problems.append(f"{path}:{marker_line + 1}: the marker must stand right above a top-level definition "
                            "or a method of a top-level class")
            continue
        copy_first, copy_last = copy_blocks[marker_line + 1]
        if "".join(lines[copy_first : copy_last + 1]) != expected:
            problems.append(f"{path}:{marker_line + 1}: differs from pabee.{match['module']}.{match['name']}")
            replacements.append((copy_first, copy_last, expected))
    if fix and replacements:
        for first, last, expected in sorted(replacements, reverse=True):
            lines[first : last + 1] = [expected]
        path.write_text("".join(lines))
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fix", action="store_true", help="Rewrite the copies that differ from their originals.")
    args = parser.parse_args(argv)
    problems = [p for path in sorted((REPO_ROOT / "pabee").glob("*.py")) for p in check_file(path, fix=args.fix)]
    for problem in problems:
        print(problem)
    if problems and not args.fix:
        print("Run `python utils/check_copies.py --fix` to update the copies from their originals.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
