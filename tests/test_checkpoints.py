"""Saving a checkpoint over an existing one, stopped at each of its file operations: a complete copy of the checkpoint
exists at every instant, and a restart (`finish_interrupted_saves`) gives it its own name back.

    python -m pytest tests/test_checkpoints.py -q
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from fixtures_glue import Killed, kill_at
from pabee import checkpoints
from pabee.checkpoints import (
    TRAINER_STATE,
    find_checkpoints,
    finish_checkpoint,
    finish_interrupted_saves,
    read_trainer_state,
    start_checkpoint,
)


def write_checkpoint_files(folder, version):
    """The files of a checkpoint but its trainer state; `version` tells the old copy from the new one."""
    for name in ("config.json", "model.safetensors", "optimizer.bin"):
        (folder / name).write_text(f"{name} of the {version} copy\n")


def existing_checkpoint(output_dir, step):
    """checkpoint-`step` as an earlier run left it."""
    start_checkpoint(output_dir, step)
    write_checkpoint_files(output_dir / f".checkpoint-{step}.partial", "old")
    finish_checkpoint(output_dir, step, {"global_step": step, "version": "old"})


def count_operations(monkeypatch):
    """Make every rename and folder deletion record itself; return the list they are recorded in."""
    done = []
    for module, name in ((os, "replace"), (shutil, "rmtree")):
        real = getattr(module, name)

        def operation(*args, _real=real, _name=name, **kwargs):
            done.append((_name, os.path.basename(str(args[0]))))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, operation)
    return done


def new_copy_written(output_dir, step):
    """A new checkpoint-`step` written, all but its trainer state, which `finish_checkpoint` adds."""
    start_checkpoint(output_dir, step)
    write_checkpoint_files(output_dir / f".checkpoint-{step}.partial", "new")


def assert_complete(folder, version):
    """Every file of the checkpoint is there, from one copy (`version`), and its trainer state reads."""
    assert read_trainer_state(folder)["version"] == version
    for name in ("config.json", "model.safetensors", "optimizer.bin"):
        assert (folder / name).read_text() == f"{name} of the {version} copy\n", name


def test_saving_over_an_existing_checkpoint_renames_and_deletes_in_a_safe_order(tmp_path, monkeypatch):
    existing_checkpoint(tmp_path, 6)
    new_copy_written(tmp_path, 6)
    done = count_operations(monkeypatch)
    finish_checkpoint(tmp_path, 6, {"global_step": 6, "version": "new"})
    monkeypatch.undo()
    assert done == [
        ("replace", f"{TRAINER_STATE}.partial"),  # the new copy is complete
        ("replace", "checkpoint-6"),  # the old one set aside
        ("replace", ".checkpoint-6.partial"),  # the new one takes the name
        ("rmtree", ".checkpoint-6.replaced"),  # the old one goes
    ]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-6"]
    assert_complete(tmp_path / "checkpoint-6", "new")


# The save above has four operations; killed before operation k, which copy must a restart end with?
KILLED_BEFORE = {
    0: "old",  # the new copy was not complete: the old checkpoint-6 stays
    1: "old",  # the new copy was complete but the old one still had the name: it stays
    2: "new",  # the old one was set aside: the complete new copy is the one the save was putting in
    3: "new",  # the new one had the name; the old one was being deleted
    4: "new",  # the save had finished
}


@pytest.mark.parametrize("killed_before, kept", KILLED_BEFORE.items())
def test_save_killed_at_each_step_leaves_a_complete_checkpoint(tmp_path, monkeypatch, killed_before, kept):
    existing_checkpoint(tmp_path, 3)
    existing_checkpoint(tmp_path, 6)
    new_copy_written(tmp_path, 6)
    kill_at(monkeypatch, killed_before)
    try:
        finish_checkpoint(tmp_path, 6, {"global_step": 6, "version": "new"})
    except Killed:
        pass
    else:
        assert killed_before == 4, "the save has fewer steps than the test expects"
    monkeypatch.undo()

    # Right after the kill: a complete copy of checkpoint-6 is found (under whatever name the save had left it).
    found = find_checkpoints(tmp_path)
    assert list(found) == [3, 6]
    assert_complete(Path(found[6]), kept)

    # The restart puts it back under its own name and leaves nothing else.
    finish_interrupted_saves(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3", "checkpoint-6"]
    assert_complete(tmp_path / "checkpoint-6", kept)
    assert_complete(tmp_path / "checkpoint-3", "old")


def test_a_complete_temporary_copy_that_is_the_only_one_is_kept(tmp_path):
    # Killed between the new copy's completion and its rename, with no earlier checkpoint-6.
    new_copy_written(tmp_path, 6)
    (tmp_path / ".checkpoint-6.partial" / TRAINER_STATE).write_text(json.dumps({"global_step": 6, "version": "new"}))
    # and one cut short before it was complete, which is thrown away
    new_copy_written(tmp_path, 9)

    assert list(find_checkpoints(tmp_path)) == [6]
    finish_interrupted_saves(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-6"]
    assert_complete(tmp_path / "checkpoint-6", "new")


def test_leftover_names_map_to_the_checkpoint_name():
    assert checkpoints.final_path("/out/.checkpoint-12.partial") == "/out/checkpoint-12"
    assert checkpoints.final_path("/out/.checkpoint-12.replaced") == "/out/checkpoint-12"
    assert checkpoints.final_path("/out/checkpoint-12") == "/out/checkpoint-12"
    assert [checkpoints.is_save_leftover(name) for name in (".checkpoint-3.partial", ".checkpoint-3.replaced",
                                                            "checkpoint-3", ".checkpoint-x.partial")] == [
        True, True, False, False]
