"""int8 dynamic quantization of a PABEE model, for evaluation and serving on a CPU.

    from pabee.quantization import quantize_int8
    model_int8 = quantize_int8(model)  # a copy: every nn.Linear holds int8 weights; activations quantized per call

Every `nn.Linear` of the model (the layers' projections, the pooler and the internal classifiers) is replaced by
torch's dynamically quantized linear: int8 weights (per tensor) and float32 activations, quantized to 8 bits on the
fly at each call from that call's own range (fbgemm / oneDNN kernels, which use VNNI where the CPU has it). The
embeddings, layer norms and the attention arithmetic stay in float32. No calibration data is needed.

Why `torch.ao.quantization.quantize_dynamic`, which warns that it is deprecated in favour of torchao: on a CPU it is
the path with fast kernels. torchao's replacement (`quantize_(model, Int8DynamicActivationInt8WeightConfig())`)
runs its int8 matrix products through `torch._int_mm`, which has no fast CPU kernel in eager mode: on the demo model
it ran 3.5 times slower than float32 at batch 1 and 16 times slower at batch 32, where torch.ao's ran faster than
float32 (indicative figures from a loaded 2-core machine; `docs/deploy.md` gives the command that measures it). The
deprecation warnings are silenced here, in this call only, for that reason.

Batches: the activation range is taken over the whole tensor a linear layer receives, so an int8 answer depends
slightly on the other examples (and the padding) of its batch. Exit rules still act per example, but unlike the
float32 model, whose batched answers equal its one-at-a-time answers to rounding, the int8 model's agree only to the
int8 rounding (a few percent of the logits' size), and an example whose layers are near a tie can exit at another
layer in another batch. torch has no fast CPU kernel for per-token activation scales, which would remove this
(torchao's runs at the speed above), so where batched answers must equal one-at-a-time answers in int8, export the
model to ONNX Runtime (`python -m pabee.export --int8`), whose int8 graphs scale each token alone
(pabee/onnx_int8.py), or run one input at a time.
"""

import copy
import warnings

import torch
from torch import nn


def quantize_int8(model):
    """
    A copy of `model` (in evaluation mode, on the CPU) whose `nn.Linear` layers compute with int8 weights and
    dynamically quantized int8 activations. The original model is left as it is.
    """
    model = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        # torch.ao.quantization's deprecation notices (see the module docstring for why this path is kept).
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def is_quantized(model):
    """Whether `model` holds dynamically quantized linear layers (as `quantize_int8` makes)."""
    return any(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in model.modules())
