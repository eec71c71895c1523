"""Training checkpoints: `checkpoint-N` folders that are written atomically and found again to resume from.

A checkpoint folder holds the model (`config.json` + `model.safetensors`, loadable with `from_pretrained`), the
tokenizer, the arguments, and the training state saved by accelerate (optimizer, scheduler, RNG states, gradient
scaler) plus `trainer_state.json` (global step, epoch, step in the epoch). It is written under a hidden temporary
name and renamed when complete, so a run killed while saving leaves no `checkpoint-N` folder that is incomplete.
"""

import json
import os
import re
import shutil

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
MODEL_FILES = ("config.json", "model.safetensors")


def list_checkpoints(output_dir):
    """Complete `checkpoint-N` folders in `output_dir`, oldest (smallest N) first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_PATTERN.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, TRAINER_STATE)):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def holds_model(path):
    """Whether `path` is a folder with a saved model (config and weights)."""
    return all(os.path.isfile(os.path.join(path, name)) for name in MODEL_FILES)


def partial_path(output_dir, step):
    """Where checkpoint `step` is written before it is complete."""
    return os.path.join(output_dir, f".checkpoint-{step}.partial")


def start_checkpoint(output_dir, step):
    """Create (emptied) the temporary folder of checkpoint `step` and return its path."""
    path = partial_path(output_dir, step)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def finish_checkpoint(output_dir, step, trainer_state):
    """Write the trainer state, the file that marks a checkpoint complete, then give the folder its final name."""
    path = partial_path(output_dir, step)
    with open(os.path.join(path, TRAINER_STATE), "w") as file:
        json.dump(trainer_state, file, indent=2)
    final_path = os.path.join(output_dir, f"checkpoint-{step}")
    if os.path.isdir(final_path):
        shutil.rmtree(final_path)
    os.replace(path, final_path)
    return final_path


def read_trainer_state(checkpoint_dir):
    with open(os.path.join(checkpoint_dir, TRAINER_STATE)) as file:
        return json.load(file)


def is_partial_checkpoint(name):
    """Whether a folder name is that of a checkpoint still being written (or cut short by a kill)."""
    return name.startswith(".checkpoint-") and name.endswith(".partial")


def remove_stale_partials(output_dir):
    """Remove temporary checkpoint folders left by a run that was killed while saving."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if is_partial_checkpoint(name):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


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
