"""int8 quantization of exported ONNX graphs: the matrix products with a weight, in one of two ways.

    from pabee.onnx_int8 import quantize_graph
    quantize_graph("layer_01.onnx", activations="per_token")    # rewrites the file in place

- "per_token" (the default of `python -m pabee.export --int8`): each token's activations get their own scale, from
  that token's largest absolute value, so a token's int8 codes (and so an example's answers) do not depend on the
  other examples or the padding of its batch. Batched answers equal one-at-a-time answers, as in float32, which is
  what early exit with one patience counter per example promises. Finer scales also cost less accuracy: on the demo
  model, full-depth dev accuracy 83.6% against 82.6% per batch (float32: 83.7%).
- "per_batch": onnxruntime's own dynamic quantization (`onnxruntime.quantization.quantize_dynamic`), one scale for
  the whole tensor a product receives. About 15% faster on a 2-core AVX2 CPU, but an example's answer moves with its
  batch: on the demo dev set, 17 of 200 reviews changed a layer's prediction between batched and alone.

No maintained tool makes the first: onnxruntime's `quantize_dynamic` takes one scale per tensor, and its per-row
`MatMulNBits` (8 bits, accuracy level 4) ran at 0.7 times float32's speed on this CPU. So each `MatMul(X, W)` with a
constant `W` is rewritten here with standard operators, each a single pass over the data:

    scale = max(|X|, over the last axis) / 127                         # one per token
    Xq    = QuantizeLinear(X as (tokens, K), scale, zero point 128, axis=0)   # uint8, centred on 128
    Y     = DequantizeLinear(MatMulInteger(Xq, Wq, 128), scale, axis=0) * w_scale

`Wq` is int8 with one scale per output column, on 7 bits (-63..63): the AVX2 instruction behind onnxruntime's
uint8 x int8 products adds pairs of products in 16 bits, and full 8-bit weights can saturate it (on the demo model,
8-bit weights gave 83.0% at full depth against 83.6% with 7 bits). The zero point 128 is the same for every token,
so `MatMulInteger` (which takes one zero point for its first input) applies it exactly.
"""

import logging
import os

import numpy as np

ACTIVATION_SCHEMES = ("per_token", "per_batch")
WEIGHT_LEVELS = 63  # 7-bit weights: see the module docstring
ACTIVATION_LEVELS = 127
ZERO_POINT = 128


def quantize_graph(path, activations="per_token"):
    """Replace the ONNX graph in file `path` by its int8 quantization (see the module docstring)."""
    if activations not in ACTIVATION_SCHEMES:
        raise ValueError(f"activations must be one of {', '.join(ACTIVATION_SCHEMES)}, got {activations!r}")
    if activations == "per_batch":
        quantize_per_batch(path)
    else:
        quantize_per_token(path)


def quantize_per_batch(path):
    """onnxruntime's dynamic quantization of the products with a weight, per-channel int8 weights on 7 bits."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = f"{path}.int8"
    logging.disable(logging.WARNING)  # its advice to pre-process the graph first
    try:
        quantize_dynamic(path, quantized, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul"])
    finally:
        logging.disable(logging.NOTSET)
    os.replace(quantized, path)


def quantize_per_token(path):
    """Rewrite every `MatMul` of the graph in `path` whose second input is a weight (see the module docstring)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(path)
    graph = model.graph
    weights = {initializer.name: initializer for initializer in graph.initializer}

    def constant(name, value):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    levels = constant("int8/activation_levels", np.array(ACTIVATION_LEVELS, np.float32))
    smallest_scale = constant("int8/smallest_scale", np.array(1e-12, np.float32))  # for an all-zero token
    zero_point = constant("int8/zero_point", np.array(ZERO_POINT, np.uint8))
    all_but_last = (constant("int8/start", np.array([0], np.int64)), constant("int8/end", np.array([-1], np.int64)))

    nodes = []
    quantized_inputs = {}  # input name -> (codes, scale, leading dims): the query, key and value share theirs
    for index, node in enumerate(graph.node):
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)  # (K, N)
        weight_scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / WEIGHT_LEVELS
        quantized_weight = np.clip(np.round(weight / weight_scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
        name = f"int8/{index}/"
        values, (inner, outer) = node.input[0], weight.shape

        def add(op_type, inputs, output, **attributes):
            nodes.append(helper.make_node(op_type, inputs, [output], name=name + output.rsplit("/", 1)[-1],
                                          **attributes))
            return output

        if values not in quantized_inputs:
            rows = add("Reshape", [values, constant(name + "rows_shape", np.array([-1, inner], np.int64))],
                       name + "rows")
            largest = add("ReduceMax", [add("Abs", [rows], name + "magnitude")], name + "largest", axes=[1],
                          keepdims=0)
            scale = add("Max", [add("Div", [largest, levels], name + "raw_scale"), smallest_scale], name + "scale")
            zero_points = add("Expand", [zero_point, add("Shape", [scale], name + "tokens")], name + "zero_points")
            codes = add("QuantizeLinear", [rows, scale, zero_points], name + "codes", axis=0)
            leading = add("Slice", [add("Shape", [values], name + "input_shape"), *all_but_last], name + "leading")
            quantized_inputs[values] = codes, scale, leading
        codes, scale, leading = quantized_inputs[values]
        products = add("MatMulInteger", [codes, constant(name + "weight", quantized_weight), zero_point],
                       name + "products")
        scaled = add("DequantizeLinear", [products, scale], name + "scaled", axis=0)
        result = add("Mul", [scaled, constant(name + "weight_scale", weight_scale.astype(np.float32))],
                     name + "result")
        shape = add("Concat", [leading, constant(name + "outer", np.array([outer], np.int64))], name + "shape",
                    axis=0)
        nodes.append(helper.make_node("Reshape", [result, shape], [node.output[0]], name=name + "output"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [initializer for initializer in graph.initializer if initializer.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, path)
