"""Patience-based Early Exit (PABEE) for BERT and ALBERT sequence classification."""

from .modeling_pabee_albert import AlbertForSequenceClassificationWithPabee, AlbertModelWithPabee
from .modeling_pabee_bert import (
    BertForSequenceClassificationWithPabee,
    BertModelWithPabee,
    PabeeSequenceClassifierOutput,
)

__all__ = [
    "AlbertForSequenceClassificationWithPabee",
    "AlbertModelWithPabee",
    "BertForSequenceClassificationWithPabee",
    "BertModelWithPabee",
    "PabeeSequenceClassifierOutput",
]
