"""The PABEE model classes by backbone family, and the config of a model folder in the family's PABEE config class.

A pretrained backbone's config.json says `"model_type": "bert"` (or "albert"); a PABEE model saved from these classes
says "pabee_bert" (or "pabee_albert", see `PabeeBertConfig`), so that transformers' Auto classes do not take it for
a plain BERT. Both load into the same class, and the family ("bert", "albert") is what the training script's
`--model_type` names.

    config, family = load_pabee_config("output/demo")
    model = MODEL_CLASSES[family].from_pretrained("output/demo", config=config)
"""

from transformers import PreTrainedConfig

from .modeling_pabee_albert import AlbertForSequenceClassificationWithPabee
from .modeling_pabee_bert import BertForSequenceClassificationWithPabee

MODEL_CLASSES = {
    "bert": BertForSequenceClassificationWithPabee,
    "albert": AlbertForSequenceClassificationWithPabee,
}


def model_family(model_type):
    """The family of a `model_type`: a backbone's ("bert") or a saved PABEE model's ("pabee_bert"); else None."""
    for family, model_class in MODEL_CLASSES.items():
        if model_type in (family, model_class.config_class.model_type):
            return family
    return None


def load_pabee_config(path, **kwargs):
    """
    The config at `path` (a folder or a Hub name; `kwargs` go to `from_pretrained`, e.g. `cache_dir`) as its family's
    PABEE config (a backbone's gets the default PABEE settings), and the family. Raises `OSError` when there is no
    config to read and `ValueError` when its model type has no PABEE class.
    """
    config_dict = PreTrainedConfig.get_config_dict(path, **kwargs)[0]
    if not config_dict:  # what a folder without config.json gives
        raise OSError(f"no config.json in {path}")
    model_type = config_dict.get("model_type")
    family = model_family(model_type)
    if family is None:
        raise ValueError(f"{path} holds a {model_type!r} model; supported model types: {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[family].config_class.from_pretrained(path, **kwargs), family
