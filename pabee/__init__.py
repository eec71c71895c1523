"""Patience-based Early Exit (PABEE) for BERT, ALBERT, RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA classification."""

from .modeling_pabee_albert import AlbertForSequenceClassificationWithPabee, AlbertModelWithPabee
from .modeling_pabee_bert import (
    BertForSequenceClassificationWithPabee,
    BertModelWithPabee,
    PabeeSequenceClassifierOutput,
)
from .modeling_pabee_distilbert import DistilBertForSequenceClassificationWithPabee, DistilBertModelWithPabee
from .modeling_pabee_electra import ElectraForSequenceClassificationWithPabee, ElectraModelWithPabee
from .modeling_pabee_roberta import RobertaForSequenceClassificationWithPabee, RobertaModelWithPabee
from .modeling_pabee_xlm_roberta import XLMRobertaForSequenceClassificationWithPabee, XLMRobertaModelWithPabee

__all__ = [
    "AlbertForSequenceClassificationWithPabee",
    "AlbertModelWithPabee",
    "BertForSequenceClassificationWithPabee",
    "BertModelWithPabee",
    "DistilBertForSequenceClassificationWithPabee",
    "DistilBertModelWithPabee",
    "ElectraForSequenceClassificationWithPabee",
    "ElectraModelWithPabee",
    "PabeeSequenceClassifierOutput",
    "RobertaForSequenceClassificationWithPabee",
    "RobertaModelWithPabee",
    "XLMRobertaForSequenceClassificationWithPabee",
    "XLMRobertaModelWithPabee",
]
