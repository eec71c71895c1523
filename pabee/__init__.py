"""Patience-based Early Exit (PABEE) for BERT, ALBERT, RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA classification."""

from .modeling_pabee_albert import AlbertForSequenceClassificationWithPabee, AlbertModelWithPabee, PabeeAlbertConfig
from .modeling_pabee_bert import (
    BertForSequenceClassificationWithPabee,
    BertModelWithPabee,
    PabeeBertConfig,
    PabeeSequenceClassifierOutput,
)
from .modeling_pabee_distilbert import (
    DistilBertForSequenceClassificationWithPabee,
    DistilBertModelWithPabee,
    PabeeDistilBertConfig,
)
from .modeling_pabee_electra import (
    ElectraForSequenceClassificationWithPabee,
    ElectraModelWithPabee,
    PabeeElectraConfig,
)
from .modeling_pabee_roberta import (
    PabeeRobertaConfig,
    RobertaForSequenceClassificationWithPabee,
    RobertaModelWithPabee,
)
from .modeling_pabee_xlm_roberta import (
    PabeeXLMRobertaConfig,
    XLMRobertaForSequenceClassificationWithPabee,
    XLMRobertaModelWithPabee,
)

__all__ = [
    "AlbertForSequenceClassificationWithPabee",
    "AlbertModelWithPabee",
    "BertForSequenceClassificationWithPabee",
    "BertModelWithPabee",
    "DistilBertForSequenceClassificationWithPabee",
    "DistilBertModelWithPabee",
    "ElectraForSequenceClassificationWithPabee",
    "ElectraModelWithPabee",
    "PabeeAlbertConfig",
    "PabeeBertConfig",
    "PabeeDistilBertConfig",
    "PabeeElectraConfig",
    "PabeeRobertaConfig",
    "PabeeSequenceClassifierOutput",
    "RobertaForSequenceClassificationWithPabee",
    "RobertaModelWithPabee",
    "XLMRobertaForSequenceClassificationWithPabee",
    "PabeeXLMRobertaConfig",
    "XLMRobertaModelWithPabee",
]
