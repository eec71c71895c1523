"""int8 dynamic quantization (pabee.quantization) of tiny models of every family and both exit poolings.

    python -m pytest tests/test_quantization.py -q
"""

import warnings

import pytest
import torch
from test_modeling import LENGTHS, ONE_PER_FAMILY, example_inputs, has_spread, make_batch, make_model
from test_run_glue import base_args, glue, models, read_runs  # noqa: F401 (fixtures)
from torch import nn

from pabee.modeling_pabee import simulate_exit_layers
from pabee.modeling_pabee_bert import BertForSequenceClassificationWithPabee
from pabee.quantization import is_quantized, quantize_int8

NUM_LABELS = {"classification": 3, "regression": 1}
# int8 weights and activations: every logit within 10% of the largest fp32 logit of the batch, or 0.05 where all are
# small (the error comes from the hidden states' range, not the logits': the tiny models' worst was 0.034).
TOLERANCE, SMALLEST_TOLERANCE = 0.1, 0.05


def assert_close_to(got, expected, reference):
    tolerance = max(TOLERANCE * float(reference.abs().max()), SMALLEST_TOLERANCE)
    torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("exit_pooling", ["pooler", "mean"])
@pytest.mark.parametrize("variant", ONE_PER_FAMILY)
@torch.no_grad()
def test_int8_model_answers_close_to_fp32_batched_and_alone(variant, exit_pooling, task):
    model = make_model(variant, NUM_LABELS[task], exit_pooling=exit_pooling)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.ao's deprecation notices are silenced where they are explained
        int8 = quantize_int8(model)
    assert is_quantized(int8) and not is_quantized(model)
    assert type(model.classifiers[0]) is nn.Linear  # the original is left as it is
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    fp32_layers = model(**inputs, output_all_layer_logits=True).all_layer_logits
    int8_layers = int8(**inputs, output_all_layer_logits=True).all_layer_logits
    assert_close_to(int8_layers, fp32_layers, fp32_layers)
    assert not torch.equal(int8_layers, fp32_layers)

    # Early exit on the int8 model: every rule runs; one at a time, each example exits where the rule applied to its
    # own every-layer logits says (the same tensors at batch size 1), and batched answers are close to those.
    settings = [dict(patience=p) for p in (0, 1, 2)]
    if task == "regression":  # thresholds that let the scores of the mean-pooling models (larger) exit too
        settings += [dict(patience=p, regression_threshold=t) for p in (1, 2) for t in (0.4, 1.0)]
    else:
        settings += [dict(patience=1, exit_confidence=0.4), dict(exit_criterion="entropy", exit_threshold=1.0),
                     dict(exit_criterion="confidence", exit_threshold=0.5)]
    spread, same_exit, answers = False, 0, 0
    for setting in settings:
        batched = int8(**inputs, **setting)
        for b in range(len(LENGTHS)):
            alone_inputs = example_inputs(input_ids, attention_mask, token_type_ids, b)
            alone = int8(**alone_inputs, **setting)
            every_layer = int8(**alone_inputs, output_all_layer_logits=True).all_layer_logits
            rule = {"patience": 0, "regression_threshold": 0.1, **setting}
            assert torch.equal(alone.exit_layers, simulate_exit_layers(every_layer, **rule)), (setting, b)
            answers += 1
            if int(batched.exit_layers[b]) == int(alone.exit_layers[0]):  # else a near-tie fell the other way
                same_exit += 1
                assert_close_to(batched.logits[b], alone.logits[0], fp32_layers)
        spread = spread or has_spread(batched.exit_layers, model.config.num_hidden_layers)
    assert spread, "no setting spread the exits"
    assert same_exit >= 0.8 * answers, f"only {same_exit} of {answers} answers exit at the same layer batched"


def test_pooler_exits_quantize_where_they_broke():
    """The paper's pooler exit read `pooler.dense.weight`, which a quantized linear has as a method."""
    model = make_model("bert", 2, exit_pooling="pooler")
    int8 = quantize_int8(model)
    assert callable(int8.base_model.pooler.dense.weight)
    input_ids, attention_mask, token_type_ids = make_batch(config=model.config)
    with torch.no_grad():
        output = int8(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, patience=1)
    assert output.logits.shape == (len(LENGTHS), 2)


# ---------------------------------------------------------------------------------------------------------------------
# --int8 in run_glue_with_pabee.py and pabee.classify


def test_run_glue_evaluates_and_predicts_in_int8(models, glue, tmp_path, monkeypatch):
    import shutil

    import run_glue_with_pabee
    from test_script_options import run_fresh

    evaluated = []
    evaluate, predict = run_glue_with_pabee.evaluate, run_glue_with_pabee.write_test_predictions

    def watch_evaluate(args, accelerator, model, *rest):
        evaluated.append(("eval", is_quantized(model)))
        return evaluate(args, accelerator, model, *rest)

    def watch_predict(args, accelerator, model, *rest):
        evaluated.append(("predict", is_quantized(model)))
        return predict(args, accelerator, model, *rest)

    monkeypatch.setattr(run_glue_with_pabee, "evaluate", watch_evaluate)
    monkeypatch.setattr(run_glue_with_pabee, "write_test_predictions", watch_predict)
    data_dir = shutil.copytree(glue["sst-2"], tmp_path / "SST-2")
    (data_dir / "test.tsv").write_text("index\tsentence\n0\ta good film\n1\ta dull film\n")
    output_dir = tmp_path / "out"
    run_fresh(base_args(models["bert"], data_dir, "sst-2", output_dir, "--do_train", "--do_eval", "--do_predict",
                        "--max_steps", "4", "--learning_rate", "1e-3", "--patience", "0,1", "--int8",
                        "--evaluate_during_training"))
    assert evaluated == [("eval", True), ("eval", True), ("eval", True), ("predict", True)]  # steps 2 and 4, final
    entries = read_runs(output_dir)[-1]["entries"]
    assert {entry["precision"] for entry in entries} == {"int8"}
    assert (output_dir / "predictions" / "patience_1" / "SST-2.tsv").read_text().count("\n") == 3
    # The saved weights stay float32: the model folder is not quantized.
    assert not is_quantized(BertForSequenceClassificationWithPabee.from_pretrained(output_dir))


def test_int8_refuses_mixed_precision(models, glue, tmp_path, capsys):
    import run_glue_with_pabee

    with pytest.raises(SystemExit) as exit_info:
        run_glue_with_pabee.main(base_args(models["bert"], glue["sst-2"], "sst-2", tmp_path / "out", "--do_eval",
                                           "--int8", "--bf16"))
    assert exit_info.value.code == 2 and "--int8" in capsys.readouterr().err


def test_classify_int8_answers_close_to_fp32(tmp_path, capsys):
    from fixtures_glue import VOCAB
    from transformers import BertTokenizerFast

    from pabee import classify

    folder = tmp_path / "model"
    make_model("bert", 2, exit_pooling="pooler", vocab_size=len(VOCAB), patience=1).save_pretrained(folder)
    BertTokenizerFast(vocab={token: index for index, token in enumerate(VOCAB)}, do_lower_case=True).save_pretrained(
        folder)
    texts = ["a good film", "bad bad plot", "dull", "the actor was superb and lovely"]
    fp32 = classify.main(["--model", str(folder), *texts])
    int8 = classify.main(["--model", str(folder), "--int8", *texts])
    capsys.readouterr()
    assert len(int8) == len(fp32) and int8 != fp32  # int8 answers, not the fp32 ones
    same_exit = [(a, b) for a, b in zip(int8, fp32) if a.exit_layer == b.exit_layer]
    assert len(same_exit) >= len(texts) - 1
    for a, b in same_exit:
        assert a.label_id == b.label_id and abs(a.value - b.value) < 0.05
