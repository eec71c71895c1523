"""Settings the whole test suite runs under.

Offline mode is set here, before any test module imports transformers, datasets or huggingface_hub: those read the
variables once, when first imported, so setting them later in a test has no effect, and an accidental hub call would
wait on the network instead of failing at once. tests/test_offline.py checks that it holds.

Every test runs torch on one CPU thread: the models are tiny, so extra intra-op threads only add overhead, and they
stall badly when other processes hold the cores.
"""

import os
import sys

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

_imported_too_early = [name for name in ("huggingface_hub", "transformers", "datasets") if name in sys.modules]
if _imported_too_early:
    raise RuntimeError(f"{', '.join(_imported_too_early)} imported before tests/conftest.py set offline mode")
for _name in OFFLINE_VARIABLES:
    os.environ[_name] = "1"


import pytest  # noqa: E402  (after the offline variables: see above)
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_cpu_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
