"""The backbone families, one line each: adding a family is its modeling file and its line here.

Each family's file, pabee/modeling_pabee_<module>.py, defines `<Prefix>ForSequenceClassificationWithPabee`,
`<Prefix>ModelWithPabee` and `Pabee<Prefix>Config`. This module imports nothing, so that `import pabee` can name the
classes without importing torch (see pabee/__init__.py); pabee.models imports them.
"""

# The backbone's model_type (the training script's --model_type): (its modeling file's module, its class prefix)
FAMILIES = {
    "bert": ("modeling_pabee_bert", "Bert"),
    "albert": ("modeling_pabee_albert", "Albert"),
    "roberta": ("modeling_pabee_roberta", "Roberta"),
    "xlm-roberta": ("modeling_pabee_xlm_roberta", "XLMRoberta"),
    "distilbert": ("modeling_pabee_distilbert", "DistilBert"),
    "electra": ("modeling_pabee_electra", "Electra"),
    "modernbert": ("modeling_pabee_modernbert", "ModernBert"),
    "deberta-v2": ("modeling_pabee_deberta_v2", "DebertaV2"),  # DeBERTa-v3 too
}


def classifier_name(prefix):
    return f"{prefix}ForSequenceClassificationWithPabee"


def public_names(prefix):
    """The classes a family's modeling file exports: its classifier, its backbone adapter and its config."""
    return [classifier_name(prefix), f"{prefix}ModelWithPabee", f"Pabee{prefix}Config"]
