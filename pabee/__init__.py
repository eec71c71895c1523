"""Patience-based Early Exit (PABEE) for BERT, ALBERT, RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA classification.

Importing pabee (or any of its modules) registers the PABEE configs and classifiers with transformers' Auto classes,
so that in this process a saved PABEE folder loads without `trust_remote_code=True` and without running the folder's
copy of the code: `AutoConfig`, `AutoModelForSequenceClassification` and `pipeline` build this package's classes
(with `trust_remote_code=True` too: transformers prefers a registered class to a folder's code), and
`AutoTokenizer.from_pretrained(folder)`, which reads the model's config to pick the tokenizer, no longer asks whether
to run the folder's code. Without `import pabee`, transformers loads the folder's own copy of the modeling file with
`trust_remote_code=True` and refuses the folder without it.
"""

from transformers import AutoConfig, AutoModelForSequenceClassification

from .modeling_pabee_albert import AlbertForSequenceClassificationWithPabee, AlbertModelWithPabee, PabeeAlbertConfig
from .modeling_pabee_bert import (
    BertForSequenceClassificationWithPabee,
    BertModelWithPabee,
    PabeeBertConfig,
    PabeeSequenceClassifierOutput,
)
from .modeling_pabee_deberta_v2 import (
    DebertaV2ForSequenceClassificationWithPabee,
    DebertaV2ModelWithPabee,
    PabeeDebertaV2Config,
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
from .modeling_pabee_modernbert import (
    ModernBertForSequenceClassificationWithPabee,
    ModernBertModelWithPabee,
    PabeeModernBertConfig,
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

for _model_class in (
    AlbertForSequenceClassificationWithPabee,
    BertForSequenceClassificationWithPabee,
    DebertaV2ForSequenceClassificationWithPabee,
    DistilBertForSequenceClassificationWithPabee,
    ElectraForSequenceClassificationWithPabee,
    ModernBertForSequenceClassificationWithPabee,
    RobertaForSequenceClassificationWithPabee,
    XLMRobertaForSequenceClassificationWithPabee,
):
    AutoConfig.register(_model_class.config_class.model_type, _model_class.config_class, exist_ok=True)
    AutoModelForSequenceClassification.register(_model_class.config_class, _model_class, exist_ok=True)
del _model_class

__all__ = [
    "AlbertForSequenceClassificationWithPabee",
    "AlbertModelWithPabee",
    "BertForSequenceClassificationWithPabee",
    "BertModelWithPabee",
    "DebertaV2ForSequenceClassificationWithPabee",
    "DebertaV2ModelWithPabee",
    "DistilBertForSequenceClassificationWithPabee",
    "DistilBertModelWithPabee",
    "ElectraForSequenceClassificationWithPabee",
    "ElectraModelWithPabee",
    "ModernBertForSequenceClassificationWithPabee",
    "ModernBertModelWithPabee",
    "PabeeAlbertConfig",
    "PabeeBertConfig",
    "PabeeDebertaV2Config",
    "PabeeDistilBertConfig",
    "PabeeElectraConfig",
    "PabeeModernBertConfig",
    "PabeeRobertaConfig",
    "PabeeSequenceClassifierOutput",
    "RobertaForSequenceClassificationWithPabee",
    "RobertaModelWithPabee",
    "XLMRobertaForSequenceClassificationWithPabee",
    "PabeeXLMRobertaConfig",
    "XLMRobertaModelWithPabee",
]
