"""The training loop of run_glue_with_pabee.py: AdamW with linear warm-up and decay, gradient accumulation and
clipping, through HF accelerate (devices, DistributedDataParallel, mixed precision, full training state), with
atomic `checkpoint-N` folders that a restarted run resumes from exactly. What to train with is a `TrainingOptions`.

    options = TrainingOptions(output_dir="output/run", learning_rate=2e-5, num_train_epochs=3)
    model, global_step = train(options, Accelerator(), model, tokenizer, train_dataset)
"""

import json
import logging
import math
import os
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup
from transformers.dynamic_module_utils import custom_object_save

from .checkpoints import finish_checkpoint, partial_path, read_trainer_state, start_checkpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingOptions:
    """
    How to train (run_glue_with_pabee.py fills it from its flags of the same names; the batch size is
    --per_gpu_train_batch_size).

    Args:
        output_dir: where the `checkpoint-N` folders go.
        learning_rate: AdamW's peak learning rate, reached after `warmup_steps` and decayed linearly to 0.
        classifier_lr_multiplier: the internal classifiers' learning rate over the backbone's.
        weight_decay, adam_epsilon: AdamW's (no decay on biases and layer norms).
        train_batch_size: examples per batch, per process.
        gradient_accumulation_steps: batches per optimiser step.
        num_train_epochs: how long to train (may be fractional), unless `max_steps` > 0 says it in optimiser steps.
        max_steps, warmup_steps, max_grad_norm: optimiser steps in all, of linear warm-up, and the gradient clip.
        logging_steps: how often the loss is logged (and `train`'s `on_log` called), in optimiser steps.
        save_steps: how often a checkpoint is saved, in optimiser steps (0: never).
        seed: the data order's seed.
        run_arguments: what each checkpoint's `training_args.json` records (the run's command-line arguments); a
            resumed run warns when those of `ARGUMENTS_OF_THE_DATA_ORDER` differ from the checkpoint's.
    """

    output_dir: str
    learning_rate: float = 5e-5
    classifier_lr_multiplier: float = 1.0
    weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 3.0
    max_steps: int = -1
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    logging_steps: int = 500
    save_steps: int = 500
    seed: int = 42
    run_arguments: dict = field(default_factory=dict)


def make_optimizer(options, model):
    """
    AdamW with weight decay on every parameter except biases and layer-norm weights; the internal classifiers'
    learning rate is `classifier_lr_multiplier` times the backbone's (`options`: a `TrainingOptions`, or anything with
    its `learning_rate`, `classifier_lr_multiplier`, `weight_decay` and `adam_epsilon`). Layer norms are found by
    type, not by name: the families name them differently (BERT `LayerNorm`, DistilBERT `sa_layer_norm`, ALBERT
    `full_layer_layer_norm`).
    """
    norm_parameters = {
        id(parameter) for module in model.modules() if isinstance(module, torch.nn.LayerNorm)
        for parameter in module.parameters()
    }
    groups = {}
    for name, parameter in model.named_parameters():
        no_decay = name.endswith("bias") or id(parameter) in norm_parameters
        decay = 0.0 if no_decay else options.weight_decay
        multiplier = options.classifier_lr_multiplier if name.startswith("classifiers.") else 1
        learning_rate = options.learning_rate * multiplier
        groups.setdefault((decay, learning_rate), []).append(parameter)
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": decay, "lr": lr} for (decay, lr), params in groups.items()],
        lr=options.learning_rate,
        eps=options.adam_epsilon,
    )


def save_checkpoint(options, accelerator, model, tokenizer, step, trainer_state):
    """Save a resumable checkpoint-`step`, atomically (see pabee.checkpoints)."""
    if accelerator.is_main_process:
        start_checkpoint(options.output_dir, step)
    accelerator.wait_for_everyone()
    path = partial_path(options.output_dir, step)
    accelerator.save_state(path)  # model weights (safetensors), optimizer, scheduler, RNG states, scaler
    # Every process writes its own RNG states into the folder: it may be completed and renamed only once all have.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        # What save_pretrained adds beside the weights: the model's class in the config's auto_map and the modeling
        # file, so that a checkpoint loads through the Auto classes (trust_remote_code=True) like the final model.
        custom_object_save(unwrapped, path, config=unwrapped.config)
        unwrapped.config.save_pretrained(path)
        tokenizer.save_pretrained(path)
        save_arguments(options.run_arguments, path)
        final_path = finish_checkpoint(options.output_dir, step, trainer_state)
        logger.info("Saved checkpoint %s", final_path)
    accelerator.wait_for_everyone()


def freeze_unused_pooler(model):
    """
    With `exit_pooling="mean"` the pretrained pooler of BERT and ALBERT (the other families then have none) takes no
    part in the loss. DistributedDataParallel waits for a gradient of every parameter that requires one, and stops at
    the next step with "parameters that were not used in producing loss"; so the pooler stops requiring one. It is
    saved unchanged, as training would leave it anyway.
    """
    pooler = getattr(model.base_model, "pooler", None)
    if model.config.exit_pooling == "mean" and isinstance(pooler, torch.nn.Module):
        pooler.requires_grad_(False)


def train(options, accelerator, model, tokenizer, train_dataset, resume_from=None, tb_writer=None, on_log=None):
    """
    Fine-tune `model` on `train_dataset` as `options` (a `TrainingOptions`) say, resuming from checkpoint folder
    `resume_from` if given. Every `logging_steps`: loss and learning rate to `tb_writer`, then
    `on_log(unwrapped_model, step)` (evaluation during training). Returns the unwrapped model, without the
    mixed-precision wrapper of training (evaluation applies its own, the same to every model), and the number of
    optimiser steps done.
    """
    # Lengths in multiples of 8 let float16 matrix products use tensor cores.
    pad_to_multiple_of = 8 if accelerator.mixed_precision == "fp16" else None
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
    # A generator of its own keeps the data order off the global RNG, which dropout uses: a resumed run then draws
    # the same dropout masks as an uninterrupted one.
    train_dataloader = DataLoader(train_dataset, shuffle=True, batch_size=options.train_batch_size,
                                  collate_fn=collator, generator=torch.Generator().manual_seed(options.seed))
    freeze_unused_pooler(model)
    optimizer = make_optimizer(options, model)

    batches_per_epoch = math.ceil(len(train_dataset) / (options.train_batch_size * accelerator.num_processes))
    # accelerate also steps the optimiser on an epoch's last batch, when fewer than gradient_accumulation_steps remain.
    steps_per_epoch = math.ceil(batches_per_epoch / options.gradient_accumulation_steps)
    if options.max_steps > 0:
        total_steps = options.max_steps
        num_epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        total_steps = math.ceil(options.num_train_epochs * steps_per_epoch)
        num_epochs = math.ceil(options.num_train_epochs)
    # accelerate steps a prepared scheduler once per process at every optimiser step (it expects schedules counted
    # in single-process batches), so the schedule's lengths are counted that way too.
    scheduler = get_linear_schedule_with_warmup(
        optimizer, options.warmup_steps * accelerator.num_processes, total_steps * accelerator.num_processes
    )
    model, optimizer, train_dataloader, scheduler = accelerator.prepare(model, optimizer, train_dataloader, scheduler)

    global_step, start_epoch, batches_done = 0, 0, 0
    if resume_from:
        accelerator.load_state(resume_from, load_kwargs={"weights_only": True})  # tensors only, never code
        state = read_trainer_state(resume_from)
        global_step, start_epoch, batches_done = state["global_step"], state["epoch"], state["batches_in_epoch"]
        logger.info("Resuming from %s (step %d, epoch %d)", resume_from, global_step, start_epoch)
        warn_about_changed_arguments(options.run_arguments, resume_from)

    total_batch_size = options.train_batch_size * accelerator.num_processes * options.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info("  Num examples = %d", len(train_dataset))
    logger.info("  Num epochs = %d", num_epochs)
    logger.info("  Batch size per process = %d", options.train_batch_size)
    logger.info("  Total train batch size (parallel, distributed & accumulation) = %d", total_batch_size)
    logger.info("  Gradient accumulation steps = %d", options.gradient_accumulation_steps)
    logger.info("  Total optimization steps = %d", total_steps)

    progress = tqdm(total=total_steps, initial=global_step, desc="Training",
                    disable=not accelerator.is_local_main_process)
    logged_loss, loss_since_log, batches_since_log = 0.0, 0.0, 0
    model.train()
    for epoch in range(start_epoch, num_epochs):
        if global_step >= total_steps:
            break
        train_dataloader.set_epoch(epoch)
        skip = batches_done if epoch == start_epoch else 0
        batches = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
        for batch_index, batch in enumerate(batches, start=skip):
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), options.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            loss_since_log += loss.detach().float().item()
            batches_since_log += 1
            if not accelerator.sync_gradients:
                continue

            global_step += 1
            progress.update(1)
            if global_step % options.logging_steps == 0:
                logged_loss = accelerator.reduce(
                    torch.tensor(loss_since_log / batches_since_log, device=accelerator.device), reduction="mean"
                ).item()
                loss_since_log, batches_since_log = 0.0, 0
                progress.set_postfix(loss=f"{logged_loss:.4f}")
                if tb_writer is not None:
                    tb_writer.add_scalar("train/loss", logged_loss, global_step)
                    tb_writer.add_scalar("train/learning_rate", scheduler.get_last_lr()[0], global_step)
                if on_log is not None:
                    on_log(accelerator.unwrap_model(model), global_step)
                    model.train()
            if options.save_steps > 0 and global_step % options.save_steps == 0:
                trainer_state = {"global_step": global_step, "epoch": epoch, "batches_in_epoch": batch_index + 1}
                if batch_index + 1 == len(train_dataloader):
                    trainer_state.update(epoch=epoch + 1, batches_in_epoch=0)
                save_checkpoint(options, accelerator, model, tokenizer, global_step, trainer_state)
            if global_step >= total_steps:
                break
    progress.close()
    return accelerator.unwrap_model(model, keep_fp32_wrapper=False), global_step


# What fixes the data a resumed run skips to find its place in the epoch, and the order it goes on in.
ARGUMENTS_OF_THE_DATA_ORDER = ("task_name", "data_dir", "train_file", "max_seq_length", "per_gpu_train_batch_size",
                               "gradient_accumulation_steps", "seed", "num_processes")


def warn_about_changed_arguments(run_arguments, checkpoint_dir):
    """
    Warn when a resumed run's data order cannot be the interrupted run's: an argument that sets it (a key of dict
    `run_arguments`) differs from the one the checkpoint's `training_args.json` records.
    """
    path = os.path.join(checkpoint_dir, "training_args.json")
    if not os.path.isfile(path):
        return
    with open(path) as file:
        saved = json.load(file)
    current = run_arguments
    for name in ARGUMENTS_OF_THE_DATA_ORDER:
        if name in saved and saved[name] != current.get(name):
            logger.warning("Resuming from %s, which was trained with %s=%r, now %r: the batches it skips and the "
                           "order of the rest differ from the interrupted run's", checkpoint_dir, name, saved[name],
                           current.get(name))


def save_arguments(run_arguments, path):
    """The run's arguments (a dict of JSON values) as `training_args.json` in `path`, beside the model they made."""
    with open(os.path.join(path, "training_args.json"), "w") as file:
        json.dump(run_arguments, file, indent=2)
