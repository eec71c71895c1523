"""Patience-based Early Exit (PABEE) for sequence classification with BERT, ALBERT, RoBERTa, XLM-RoBERTa, DistilBERT,
ELECTRA, ModernBERT and DeBERTa-v2/v3 (one line each in pabee/families.py).

Importing pabee (or pabee.models, which every module that loads a torch model imports) registers the PABEE configs
and classifiers with transformers' Auto classes, so that in this process a saved PABEE folder loads without
`trust_remote_code=True` and without running the folder's copy of the code: `AutoConfig`,
`AutoModelForSequenceClassification` and `pipeline` build this package's classes (with `trust_remote_code=True` too:
transformers prefers a registered class to a folder's code), and `AutoTokenizer.from_pretrained(folder)`, which reads
the model's config to pick the tokenizer, no longer asks whether to run the folder's code. Without `import pabee`,
transformers loads the folder's own copy of the modeling file with `trust_remote_code=True` and refuses the folder
without it.

`python -m pabee.<command>` runs this file first, while Python locates the command (sys.argv[0] is then "-m"), and so
does each worker process the command starts with multiprocessing's "spawn" (sys.argv[0] is then the command's file
in this package). There it imports nothing: each command imports what it needs, so that `python -m pabee.classify` on
an exported folder starts without torch or transformers, and the commands that load a torch model register the
classes through pabee.models. The classes are then imported on first use.
"""

import importlib
import os
import sys

from .families import FAMILIES, public_names

# Each public name, by the module that defines it
_EXPORTS = {module: public_names(prefix) for module, prefix in FAMILIES.values()}
_EXPORTS["modeling_pabee"] = ["PabeeSequenceClassifierOutput"]
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(f"{__name__}.models")  # every modeling file, and the Auto classes registered
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})


def _running_a_command():
    """Whether this process runs one of this package's commands (`python -m pabee.<command>`, or a worker of one)."""
    main = sys.argv[0] if sys.argv else ""
    return main == "-m" or os.path.dirname(os.path.abspath(main)) == os.path.dirname(os.path.abspath(__file__))


if not _running_a_command():
    from . import models  # noqa: F401, E402  (registers the Auto classes)
