"""The PABEE model classes by backbone family, and the config of a model folder in the family's PABEE config class.

A pretrained backbone's config.json says `"model_type": "bert"` (or "albert", "roberta", ...); a PABEE model saved
from these classes says "pabee_bert" (see `PabeeBertConfig`), so that transformers' Auto classes do not take it for
a plain BERT. Both load into the same class, and the family (the backbone's model type) is what the training script's
`--model_type` names.

    config, family = load_pabee_config("output/demo")
    model = MODEL_CLASSES[family].from_pretrained("output/demo", config=config)

Importing this module registers every class of MODEL_CLASSES with transformers' Auto classes (see pabee/__init__.py).
"""

import importlib
import os

from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedConfig

from .families import FAMILIES, classifier_name

# Keyed by the backbone's model_type
MODEL_CLASSES = {
    family: getattr(importlib.import_module(f".{module}", __package__), classifier_name(prefix))
    for family, (module, prefix) in FAMILIES.items()
}

for _model_class in MODEL_CLASSES.values():
    AutoConfig.register(_model_class.config_class.model_type, _model_class.config_class, exist_ok=True)
    AutoModelForSequenceClassification.register(_model_class.config_class, _model_class, exist_ok=True)
del _model_class


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


def max_model_length(config):
    """
    The longest input the model's position embeddings cover. RoBERTa and XLM-RoBERTa number positions from
    pad_token_id + 1, so they cover pad_token_id + 1 fewer tokens than they have positions (512 of 514).
    """
    if model_family(config.model_type) in ("roberta", "xlm-roberta"):
        return config.max_position_embeddings - config.pad_token_id - 1
    return config.max_position_embeddings


# What a model folder holds when it has a tokenizer of its own (WordPiece, sentencepiece (DeBERTa's spm.model), BPE,
# or the fast tokenizer's single file).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
                   "spm.model", "vocab.json")


def lacks_tokenizer_files(path):
    """
    Whether folder `path` holds none of `TOKENIZER_FILES`. From such a folder transformers builds an empty tokenizer
    (its special tokens only, which maps every word to [UNK]), or none at all for a saved PABEE model.
    """
    return os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES)
