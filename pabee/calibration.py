"""The calibration set an exit setting is chosen on: held out of the training data, or read from a file.

A setting chosen on the dev set and then reported on it looks better than it is; `pabee.selection` chooses on data
the model never trained on and the report never uses. `hold_out` takes a seeded share of the training examples
before training; `write_calibration_file` records the examples it took (with their row numbers in the training data)
as `calibration.jsonl` in the output folder, a file that `--calibration_file` (or `pabee.glue.load_example_file`)
reads back, so that an evaluation-only run of the same model can choose on the same examples.
"""

import json
import os
import random

from .glue import InputExample

CALIBRATION_FILE = "calibration.jsonl"


def hold_out(examples, fraction, seed):
    """
    Split `examples` into (training examples, calibration examples, calibration row numbers): a share `fraction`
    in (0, 1), rounded to the nearest count, drawn with `random.Random(seed)` (not numpy's or torch's global state,
    so the split does not depend on what ran before). Both parts keep the examples' original order. Raises a
    `ValueError` when either part would be empty.
    """
    if not 0 < fraction < 1:  # NaN fails too
        raise ValueError(f"the calibration fraction must be in (0, 1), got {fraction}")
    count = round(fraction * len(examples))
    if count == 0:
        raise ValueError(f"a calibration fraction of {fraction:g} of {len(examples)} training examples is an empty "
                         "calibration set: raise it, or pass a calibration file")
    if count == len(examples):
        raise ValueError(f"a calibration fraction of {fraction:g} of {len(examples)} training examples leaves no "
                         "training data: lower it")
    held_out = sorted(random.Random(seed).sample(range(len(examples)), count))
    chosen = set(held_out)
    training = [example for index, example in enumerate(examples) if index not in chosen]
    return training, [examples[index] for index in held_out], held_out


def write_calibration_file(path, examples, rows):
    """
    The calibration examples as JSON lines (written to a temporary file, then renamed): "train_index" (the row
    number, from 0, in the training data), "sentence" (or "sentence1" and "sentence2") and "label" as in the data
    file.
    """
    lines = []
    for row, example in zip(rows, examples):
        record = {"train_index": row}
        if example.text_b is None:
            record["sentence"] = example.text_a
        else:
            record["sentence1"], record["sentence2"] = example.text_a, example.text_b
        if example.label is not None:
            record["label"] = example.label
        lines.append(json.dumps(record, ensure_ascii=False))
    partial_path = f"{path}.partial-{os.getpid()}"
    with open(partial_path, "w", encoding="utf-8") as file:
        file.write("".join(line + "\n" for line in lines))
    os.replace(partial_path, path)
    return path


def as_examples(examples, split="calibration"):
    """`examples` renamed as the split `split` (their guids say where they are used)."""
    return [InputExample(f"{split}-{index}", example.text_a, example.text_b, example.label)
            for index, example in enumerate(examples)]
