"""Training as users run it at scale: killed and restarted, damaged checkpoints, bfloat16, and DistributedDataParallel
over two CPU processes (gloo) under torchrun. The program runs as a separate process here, as it does for users.

    python -m pytest tests/test_training_at_scale.py -q
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures_glue import NUM_DEV, save_tiny_model, snapshot, write_glue_task

REPO_ROOT = Path(__file__).resolve().parent.parent
LEARNING_RATE = 1e-3
SCRIPT = str(REPO_ROOT / "run_glue_with_pabee.py")
# One thread per process: two processes share two cores, and tiny matrices gain nothing from more.
# The subprocesses inherit offline mode from tests/conftest.py.
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    return {"model": save_tiny_model(root / "model", "bert"), "data": write_glue_task(root / "SST-2", "sst-2")}


def command(setup, output_dir, *extra):
    return ["--model_name_or_path", setup["model"], "--task_name", "SST-2", "--data_dir", setup["data"],
            "--output_dir", str(output_dir), "--max_seq_length", "32", "--per_gpu_train_batch_size", "4",
            "--learning_rate", str(LEARNING_RATE), "--no_cuda", "--logging_steps", "5", *extra]


def run_script(arguments, launcher=(sys.executable,), check=True):
    result = subprocess.run([*launcher, SCRIPT, *map(str, arguments)], env=ENVIRONMENT, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def max_difference(first, second):
    assert first.keys() == second.keys()
    return max(float((first[name] - second[name]).abs().max()) for name in first)


def test_killed_run_restarted_gives_the_uninterrupted_weights(setup, tmp_path):
    # 40 examples, batch 4: 10 steps an epoch, so the kill lands inside an epoch and the resume skips batches.
    training = ["--do_train", "--max_steps", "150", "--save_steps", "7"]
    uninterrupted = tmp_path / "uninterrupted"
    run_script(command(setup, uninterrupted, *training))

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, SCRIPT, *map(str, command(setup, interrupted, *training))],
                               env=ENVIRONMENT, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (interrupted / "checkpoint-14").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (interrupted / "model.safetensors").exists()

    result = run_script(command(setup, interrupted, *training))
    resumed_from = [line for line in result.stderr.splitlines() if "Resuming from" in line]
    assert resumed_from and "checkpoint-" in resumed_from[0]
    assert max_difference(weights(uninterrupted), weights(interrupted)) <= 1e-5
    assert not [name for name in os.listdir(interrupted) if name.endswith(".partial")]


def test_damaged_checkpoint_is_reported_by_name(setup, tmp_path):
    output_dir = tmp_path / "out"
    run_script(command(setup, output_dir, "--do_train", "--max_steps", "4", "--save_steps", "2"))
    damaged = output_dir / "checkpoint-4" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    before = snapshot(output_dir)

    result = run_script(command(setup, output_dir, "--do_train", "--max_steps", "6", "--save_steps", "2"),
                        check=False)
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and str(damaged) in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert snapshot(output_dir) == before

    # An earlier checkpoint can be named explicitly.
    result = run_script(command(setup, output_dir, "--do_train", "--max_steps", "6", "--save_steps", "2",
                                "--resume_from_checkpoint", output_dir / "checkpoint-2"))
    assert "checkpoint-2 (step 2" in result.stderr
    assert (output_dir / "checkpoint-6").is_dir()


def test_bf16_on_cpu_trains_and_evaluates(setup, tmp_path):
    output_dir = tmp_path / "out"
    run_script(command(setup, output_dir, "--do_train", "--do_eval", "--bf16", "--max_steps", "4",
                       "--patience", "0,1,2"))
    entries = json.loads((output_dir / "eval_results.json").read_text())["runs"][-1]["entries"]
    entries = [entry for entry in entries if entry["criterion"] == "patience"]  # not the oracle bounds
    assert [entry["patience"] for entry in entries] == [0, 1, 2]
    assert all(entry["simulation_agreement"] == 1.0 for entry in entries)
    # That evaluation ran in bfloat16 is shown inside a layer by tests/test_script_options.py.
    assert [entry["precision"] for entry in entries] == ["bf16"] * 3
    assert all(value.dtype == torch.float32 for value in weights(output_dir).values())  # autocast, float32 weights


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes(setup, tmp_path):
    output_dir = tmp_path / "ddp"
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()))
    sweep = ["--patience", "0,1,2,3", "--per_gpu_eval_batch_size", "5"]
    result = run_script(command(setup, output_dir, "--do_train", "--do_eval", "--max_steps", "6",
                                "--save_steps", "3", *sweep), launcher=torchrun)
    assert "Total train batch size (parallel, distributed & accumulation) = 8" in result.stderr

    # Exactly one copy of each output.
    runs = json.loads((output_dir / "eval_results.json").read_text())["runs"]
    # Four patience values and the two oracle bounds, once each.
    assert len(runs) == 1 and [entry["setting"] for entry in runs[0]["entries"]] == [
        "patience 0", "patience 1", "patience 2", "patience 3", "oracle: full-depth answer", "oracle: earliest correct"]
    assert sorted(name for name in os.listdir(output_dir) if name.startswith("checkpoint-")) == [
        "checkpoint-3", "checkpoint-6"]
    # Each process's RNG states are in each checkpoint: the folder is completed only once both have written theirs.
    for checkpoint in ("checkpoint-3", "checkpoint-6"):
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(output_dir / checkpoint))
    assert len(list((output_dir / "runs").iterdir())) == 1
    # The learning rate decays linearly over the 6 steps: half-way at step 3, whatever the number of processes.
    scheduler = torch.load(output_dir / "checkpoint-3" / "scheduler.bin", weights_only=True)
    assert scheduler["_last_lr"][0] == pytest.approx(LEARNING_RATE / 2)

    # The distributed evaluation's figures equal a single process's on the same model.
    run_script(["--task_name", "SST-2", "--data_dir", setup["data"], "--output_dir", output_dir, "--do_eval",
                "--max_seq_length", "32", "--no_cuda", *sweep])
    distributed, single = (json.loads((output_dir / "eval_results.json").read_text())["runs"][i]["entries"]
                           for i in (0, 1))
    # Every dev example's answer gathered from the two processes, once: 24 examples in shards of 12, batches of 5.
    assert len(distributed) == len(single) == 4 + 2  # four patience values, the two oracle bounds
    assert [entry["examples"] for entry in distributed] == [NUM_DEV] * 6
    for ddp_entry, entry in zip(distributed, single):
        assert ddp_entry["examples"] == entry["examples"]
        assert ddp_entry["exit_histogram"] == entry["exit_histogram"]
        assert ddp_entry["metrics"] == pytest.approx(entry["metrics"])


def test_old_launcher_two_processes(setup, tmp_path):
    # torch.distributed.launch passes each process its rank as `--local-rank=N` (`--local_rank` before torch 2.0).
    # On a machine without CUDA, without --no_cuda: the two processes still train one model together. With mean
    # pooling, the pretrained pooler takes no part in the loss, which DistributedDataParallel must not wait for.
    output_dir = tmp_path / "launch"
    launch = (sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node", "2", "--master_port",
              str(free_port()))
    arguments = command(setup, output_dir, "--do_train", "--do_eval", "--max_steps", "2", "--save_steps", "0",
                        "--patience", "0,2", "--exit_pooling", "mean")
    if not torch.cuda.is_available():
        arguments.remove("--no_cuda")
    result = run_script(arguments, launcher=launch)
    assert "Total train batch size (parallel, distributed & accumulation) = 8" in result.stderr
    runs = json.loads((output_dir / "eval_results.json").read_text())["runs"]
    assert len(runs) == 1 and len(runs[0]["entries"]) == 2 + 2  # two patience values, the two oracle bounds
    assert (output_dir / "model.safetensors").is_file()
