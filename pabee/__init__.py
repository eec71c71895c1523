"""Patience-based Early Exit (PABEE) for BERT and ALBERT sequence classification."""

from .modeling_pabee_albert import AlbertForSequenceClassificationWithPabee, AlbertModelWithPabee, PabeeAlbertConfig
from .modeling_pabee_bert import (
    BertForSequenceClassificationWithPabee,
    BertModelWithPabee,
    PabeeBertConfig,
    PabeeSequenceClassifierOutput,
)

__all__ = [
    "AlbertForSequenceClassificationWithPabee",
    "AlbertModelWithPabee",
    "BertForSequenceClassificationWithPabee",
    "BertModelWithPabee",
    "PabeeAlbertConfig",
    "PabeeBertConfig",
    "PabeeSequenceClassifierOutput",
]
