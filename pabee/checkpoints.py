"""Training checkpoints: `checkpoint-N` folders that are written atomically and found again to resume from.

A checkpoint folder holds the model (`config.json` + `model.safetensors`, loadable with `from_pretrained`), the
tokenizer, the arguments, and the training state saved by accelerate (optimizer, scheduler, RNG states, gradient
scaler) plus `trainer_state.json` (global step, epoch, step in the epoch), written last: a folder holding it is
complete. A checkpoint is written under a temporary name (`.checkpoint-N.partial`) and renamed when complete. When a
`checkpoint-N` is there already (a run resumed from an earlier checkpoint saves step N again), the old one is renamed
aside (`.checkpoint-N.replaced`) before the new one takes its name, and deleted after. So a run killed at any moment
leaves a complete copy of every checkpoint it had, under its own name or under one of those two, and a restart
(`finish_interrupted_saves`) gives that copy its own name back.
"""

import json
import os
import re
import shutil

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# A checkpoint being written, and an older copy being replaced: the names a save that was cut short leaves.
LEFTOVER_PATTERN = re.compile(r"^\.checkpoint-(\d+)\.(partial|replaced)$")
TRAINER_STATE = "trainer_state.json"
MODEL_FILES = ("config.json", "model.safetensors")


def checkpoint_path(output_dir, step):
    return os.path.join(output_dir, f"checkpoint-{step}")


def partial_path(output_dir, step):
    """Where checkpoint `step` is written before it is complete."""
    return os.path.join(output_dir, f".checkpoint-{step}.partial")


def replaced_path(output_dir, step):
    """Where an existing checkpoint `step` waits, while a new one takes its name, until it is deleted."""
    return os.path.join(output_dir, f".checkpoint-{step}.replaced")


def is_complete(path):
    return os.path.isfile(os.path.join(path, TRAINER_STATE))


def find_checkpoints(output_dir):
    """
    {step: folder} of every complete checkpoint in `output_dir`, oldest first. The folder is `checkpoint-N` if that is
    complete; otherwise the copy a save that was cut short left: the new one if it was complete (the save was
    replacing the old one), else the old one set aside.
    """
    copies = {}
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            path = os.path.join(output_dir, name)
            match = CHECKPOINT_PATTERN.match(name) or LEFTOVER_PATTERN.match(name)
            if match and is_complete(path):
                kind = match.group(2) if match.re is LEFTOVER_PATTERN else "final"
                copies.setdefault(int(match.group(1)), {})[kind] = path
    preference = ("final", "partial", "replaced")
    return {step: next(found[kind] for kind in preference if kind in found) for step, found in sorted(copies.items())}


def list_checkpoints(output_dir):
    """The folders of the complete checkpoints in `output_dir` (see `find_checkpoints`), oldest first."""
    return list(find_checkpoints(output_dir).values())


def final_path(path):
    """The name checkpoint folder `path` has once `finish_interrupted_saves` has run: its own `checkpoint-N`."""
    match = LEFTOVER_PATTERN.match(os.path.basename(path))
    return checkpoint_path(os.path.dirname(path), int(match.group(1))) if match else path


def holds_model(path):
    """Whether `path` is a folder with a saved model (config and weights)."""
    return all(os.path.isfile(os.path.join(path, name)) for name in MODEL_FILES)


def remove_checkpoint(path):
    """Delete a checkpoint folder, its trainer state first: if cut short, it leaves no folder that looks complete."""
    if os.path.isfile(os.path.join(path, TRAINER_STATE)):
        os.remove(os.path.join(path, TRAINER_STATE))
    shutil.rmtree(path, ignore_errors=True)


def start_checkpoint(output_dir, step):
    """Create (emptied) the temporary folder of checkpoint `step` and return its path."""
    path = partial_path(output_dir, step)
    remove_checkpoint(path)
    os.makedirs(path)
    return path


def finish_checkpoint(output_dir, step, trainer_state):
    """Write the trainer state, the file that marks a checkpoint complete, then give the folder its final name."""
    path = partial_path(output_dir, step)
    state_path = os.path.join(path, TRAINER_STATE)
    with open(f"{state_path}.partial", "w") as file:
        json.dump(trainer_state, file, indent=2)
    os.replace(f"{state_path}.partial", state_path)
    final = checkpoint_path(output_dir, step)
    if os.path.isdir(final):
        # Rename, not delete, the old copy: until the new one has its name, the old one stays whole.
        os.replace(final, replaced_path(output_dir, step))
        os.replace(path, final)
        remove_checkpoint(replaced_path(output_dir, step))
    else:
        os.replace(path, final)
    return final


def finish_interrupted_saves(output_dir):
    """
    Put right what a run killed while saving left in `output_dir`: the complete copy of each checkpoint (see
    `find_checkpoints`) gets its own name back, and every other temporary or set-aside copy is deleted.
    """
    for step, path in find_checkpoints(output_dir).items():
        if path != checkpoint_path(output_dir, step):
            os.replace(path, checkpoint_path(output_dir, step))
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else ():
        if is_save_leftover(name):
            remove_checkpoint(os.path.join(output_dir, name))


def read_trainer_state(checkpoint_dir):
    with open(os.path.join(checkpoint_dir, TRAINER_STATE)) as file:
        return json.load(file)


def is_save_leftover(name):
    """Whether a folder name is that of a checkpoint being written or replaced (or left so by a kill)."""
    return LEFTOVER_PATTERN.match(name) is not None


class DamagedCheckpointError(ValueError):
    """A checkpoint file that cannot be read: truncated, corrupt, or not what its name says."""


def verify_checkpoint(checkpoint_dir):
    """
    Read every weights and state file of a checkpoint once, safely (safetensors, or torch.load with
    weights_only=True), so that a damaged one is reported by name instead of failing deep inside a library.
    """
    from accelerate.utils import load as safe_torch_load  # torch.load(weights_only=True) plus numpy RNG states
    from safetensors.torch import load_file

    for name in sorted(os.listdir(checkpoint_dir)):
        path = os.path.join(checkpoint_dir, name)
        try:
            if name.endswith(".safetensors"):
                load_file(path)
            elif name.endswith((".bin", ".pkl", ".pt")):
                safe_torch_load(path, map_location="cpu")
            elif name == TRAINER_STATE:
                read_trainer_state(checkpoint_dir)
        except Exception as error:  # each format fails in its own way on a damaged file
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DamagedCheckpointError(f"{path} cannot be read ({message})") from error
