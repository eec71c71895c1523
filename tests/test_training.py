"""Tests of pabee.training's optimizer set-up over every backbone family, and of `train` called directly with a
`TrainingOptions` (tiny random configs, CPU).

    python -m pytest tests/test_training.py -q
"""

import json

import datasets
import pytest
import torch
from accelerate import Accelerator

from fixtures_glue import MODEL_TYPES, make_tokenizer
from run_glue_with_pabee import MODEL_CLASSES
from test_modeling import LENGTHS, ONE_PER_FAMILY, VARIANTS, make_batch, make_config, make_model

from pabee.training import TrainingOptions, freeze_unused_pooler, make_optimizer, train

FAMILY_VARIANTS = {family: variant for variant, (family, _) in reversed(list(VARIANTS.items()))}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_weight_decay_spares_every_bias_and_layer_norm(model_type):
    model = MODEL_CLASSES[model_type](make_config(FAMILY_VARIANTS[model_type], 3))
    options = TrainingOptions(output_dir="unused", learning_rate=1e-3, classifier_lr_multiplier=10, weight_decay=0.01,
                              adam_epsilon=1e-8)
    optimizer = make_optimizer(options, model)

    names = {id(parameter): name for name, parameter in model.named_parameters()}
    undecayed = {names[id(p)] for group in optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    # By hand: the biases, and the parameters of the modules that are layer norms, whatever each family calls them.
    norms = {f"{module_name}.{name}" for module_name, module in model.named_modules()
             if isinstance(module, torch.nn.LayerNorm) for name, _ in module.named_parameters()}
    biases = {name for name in names.values() if name.split(".")[-1] == "bias"}
    assert undecayed == norms | biases
    assert any("LayerNorm" not in name for name in norms) == (model_type in ("albert", "distilbert", "modernbert"))
    fast = {names[id(p)] for group in optimizer.param_groups if group["lr"] == 1e-2 for p in group["params"]}
    assert fast == {name for name in names.values() if name.startswith("classifiers.")}
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(names)


@pytest.mark.parametrize("exit_pooling", ["pooler", "mean"])
@pytest.mark.parametrize("variant", ONE_PER_FAMILY)
def test_every_parameter_left_trainable_gets_a_gradient(variant, exit_pooling):
    # What DistributedDataParallel needs at every step: a parameter that requires a gradient and gets none stops the
    # next step (BERT's and ALBERT's pretrained pooler under mean pooling). The loss reads every classifier.
    model = make_model(variant, 3, exit_pooling=exit_pooling).train()
    freeze_unused_pooler(model)
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    loss = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                 labels=torch.arange(len(input_ids)) % 3).loss
    loss.backward()
    without_gradient = [name for name, parameter in model.named_parameters()
                        if parameter.requires_grad and parameter.grad is None]
    assert without_gradient == []
    frozen = [name for name, parameter in model.named_parameters() if not parameter.requires_grad]
    has_pretrained_pooler = VARIANTS[variant][0] in ("bert", "albert")
    assert bool(frozen) == (exit_pooling == "mean" and has_pretrained_pooler)
    assert all(".pooler." in f".{name}" for name in frozen), frozen


def test_train_called_directly_steps_logs_and_saves_checkpoints(tmp_path):
    model = make_model("bert", 3, patience=1)
    input_ids, attention_mask, token_type_ids = make_batch()
    dataset = datasets.Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist(),
         "token_type_ids": token_type_ids.tolist(), "labels": [b % 3 for b in range(len(LENGTHS))]}
    ).with_format("torch")
    before = [classifier.weight.detach().clone() for classifier in model.classifiers]
    options = TrainingOptions(output_dir=str(tmp_path), learning_rate=1e-2, train_batch_size=4, max_steps=3,
                              save_steps=2, logging_steps=1, run_arguments={"seed": 42, "note": "called directly"})
    logged = []
    trained, global_step = train(options, Accelerator(cpu=True), model, make_tokenizer("bert", str(tmp_path)),
                                 dataset, on_log=lambda unwrapped, step: logged.append(step))

    assert global_step == 3 and logged == [1, 2, 3]
    for layer, classifier in enumerate(trained.classifiers):
        assert not torch.equal(classifier.weight, before[layer]), layer
    checkpoint = tmp_path / "checkpoint-2"  # save_steps 2 of 3 steps: the one checkpoint
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((checkpoint / "training_args.json").read_text()) == options.run_arguments
    # 8 examples in batches of 4: step 2 ends the first epoch
    assert json.loads((checkpoint / "trainer_state.json").read_text()) == {
        "global_step": 2, "epoch": 1, "batches_in_epoch": 0}
