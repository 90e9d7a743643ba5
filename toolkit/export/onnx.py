"""Keras -> ONNX, and the ONNX precision variants (fp16, int8 static QDQ, dynamic).

`tf2onnx.convert.from_keras` fails on Keras 3, so the model is traced as a tf.function with a
dynamic batch axis and the contract's names and converted with `tf2onnx.convert.from_function`.
Two clean-ups follow, so the graph carries no layout shuffles the maths does not need:

- the NHWC->NCHW Transpose tf2onnx puts in front of Conv is a Reshape when channels == 1
  (tf2onnx already emits it as such);
- the NCHW->NHWC Transpose before Keras's Flatten is folded into the first Dense layer's
  weights (its rows are permuted once at export time), and Flatten's run-time Shape/Gather/
  Concat arithmetic becomes one constant Reshape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.artifacts import atomic_path
from toolkit.export._common import (
    INPUT_NAME,
    OUTPUT_NAME,
    info,
    require_calibration,
    serving_function,
    version_of,
)

DEFAULT_OPSET = 17
MIN_OPSET = 13  # per-channel QDQ and the Softmax semantics used here need 13+
BATCH_DIM = "batch"


# ---------------------------------------------------------------- fp32


def keras_to_onnx(model, path: str | Path, *, input_name: str = INPUT_NAME,
                  output_name: str = OUTPUT_NAME, opset: int | None = None,
                  metadata: dict[str, str] | None = None) -> None:
    """Convert any single-input, single-output Keras model to ONNX at `path` (atomic write).

    The input is float32 with a dynamic batch axis named `batch`; names follow the arguments;
    `metadata` lands in metadata_props next to the converter versions. onnx.checker must pass.
    """
    proto = convert(model, input_name=input_name, output_name=output_name, opset=opset)
    set_metadata(proto, {**converter_metadata(), **(metadata or {})})
    save(proto, Path(path))


# The last conversion, reused while the same model object is exported at other precisions
# (tf2onnx takes tens of seconds; the variants all start from the same fp32 graph).
_last: dict[str, Any] = {}


def convert(model, *, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME,
            opset: int | None = None):
    """The ModelProto of a Keras model, simplified and checked (not written)."""
    import onnx

    opset = check_opset(opset)
    key = (input_name, output_name, opset)
    if _last.get("model") is model and _last.get("key") == key:
        proto = onnx.ModelProto()
        proto.CopyFrom(_last["proto"])
        return proto
    import tf2onnx  # imports TensorFlow; only the exporter needs it

    fn = serving_function(model, input_name=input_name, output_name=output_name)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=opset)
    _rename_io(proto, input_name, output_name)
    simplify(proto)
    _name_batch_axis(proto)
    proto.producer_name = "fashion-mnist-toolkit (tf2onnx)"
    onnx.checker.check_model(proto, full_check=True)
    _last.update(model=model, key=key, proto=proto)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def check_opset(opset: int | None) -> int:
    from toolkit.core.errors import UsageError

    opset = DEFAULT_OPSET if opset is None else int(opset)
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UsageError(f"--opset {opset} is not supported; use {MIN_OPSET}..{newest} "
                         f"(default {DEFAULT_OPSET})")
    return opset


def converter_metadata() -> dict[str, str]:
    return {
        "converter": f"tf2onnx {version_of('tf2onnx')}",
        "tensorflow_version": version_of("tensorflow"),
        "keras_version": version_of("keras"),
        "onnx_version": version_of("onnx"),
    }


def set_metadata(proto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, str(value)


def read_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def save(proto, path: Path) -> None:
    import onnx

    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


# ---------------------------------------------------------------- graph clean-up


def _rename_io(proto, input_name: str, output_name: str) -> None:
    """tf2onnx keeps TF tensor names ("image:0"); give graph inputs/outputs the contract's."""
    graph = proto.graph
    renames = {}
    for value, wanted in ((graph.input[0], input_name), (graph.output[0], output_name)):
        if value.name != wanted:
            renames[value.name] = wanted
            value.name = wanted
    if not renames:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)


def _name_batch_axis(proto) -> None:
    for value in (*proto.graph.input, *proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = BATCH_DIM
    # Intermediate value_info with tf2onnx's "unk__N" names only confuse readers.
    del proto.graph.value_info[:]


def simplify(proto) -> None:
    """Fold Transpose->Flatten->MatMul into permuted weights; make Flatten a constant Reshape."""
    from onnx import numpy_helper, shape_inference

    graph = proto.graph
    inferred = shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                       for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}

    def consumers(name: str) -> list:
        return [n for n in graph.node if name in n.input]

    for reshape in [n for n in graph.node if n.op_type == "Reshape"]:
        data, out = reshape.input[0], reshape.output[0]
        in_shape, out_shape = shapes.get(data), shapes.get(out)
        shape_src = producers.get(reshape.input[1])
        while shape_src is not None and shape_src.op_type == "Cast":
            shape_src = producers.get(shape_src.input[0])
        # Keras Flatten: [N, ...static dims] -> [N, prod(dims)], its shape computed at run time.
        if (not in_shape or not out_shape or len(in_shape) < 3 or len(out_shape) != 2
                or None in in_shape[1:] or shape_src is None or shape_src.op_type != "Concat"):
            continue
        flat = int(np.prod(in_shape[1:]))
        transpose = producers.get(data)
        users = consumers(out)
        if (transpose is not None and transpose.op_type == "Transpose" and len(users) == 1
                and users[0].op_type == "MatMul" and users[0].input[1] in inits):
            perm = list(next(a.ints for a in transpose.attribute if a.name == "perm"))
            src_shape = shapes.get(transpose.input[0])
            if perm == [0, 2, 3, 1] and src_shape and None not in src_shape[1:]:
                _, c, h, w = src_shape
                weight = inits[users[0].input[1]]
                array = numpy_helper.to_array(weight)
                # Row r of the NHWC-flattened input is (h, w, c); reorder rows to (c, h, w).
                permuted = array.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(flat, -1)
                weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(permuted), weight.name))
                reshape.input[0] = transpose.input[0]
        # allowzero=0: a 0 copies the batch size from the input, so the batch axis stays dynamic.
        const_name = f"{reshape.name or out}_flatten_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([0, flat], dtype=np.int64), const_name))
        reshape.input[1] = const_name
    _remove_dead_nodes(proto)


def _remove_dead_nodes(proto) -> None:
    graph = proto.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    live_inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(live_inits)


def toposort(proto) -> None:
    """Order nodes so each follows its inputs' producers (the fp16 converter appends Casts)."""
    graph = proto.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            from toolkit.core.errors import ArtifactError

            stuck = ", ".join(sorted(n.name or n.op_type for n in pending)[:5])
            raise ArtifactError(f"the converted ONNX graph has a cycle or an input nothing produces (at "
                                f"{stuck}), so it cannot be written; rerun with --verbose and report it")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if not any(n is r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def op_counts(path_or_proto) -> dict[str, int]:
    """Node counts by op type (tests and the report check for stray Transposes)."""
    import onnx

    proto = onnx.load(str(path_or_proto)) if isinstance(path_or_proto, str | Path) else path_or_proto
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# ---------------------------------------------------------------- precisions


def export(model, path: str | Path, *, precision: str = "fp32", calibration: np.ndarray | None = None,
           opset: int | None = None, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """The exporter signature shared by export/*: write `path`, return facts to record."""
    from toolkit.export.quantize import onnx_dynamic, onnx_fp16, onnx_int8

    path = Path(path)
    proto = convert(model, opset=opset)
    meta = {**converter_metadata(), **(metadata or {}), "precision": precision}
    facts: dict[str, Any] = {}
    if precision == "fp16":
        proto, facts = onnx_fp16(proto)
    elif precision == "int8":
        proto, facts = onnx_int8(proto, require_calibration(calibration, "ONNX int8"))
    elif precision == "dynamic":
        proto, facts = onnx_dynamic(proto)
    elif precision != "fp32":
        from toolkit.core.errors import UsageError

        raise UsageError(f"ONNX precision {precision!r} is not supported; valid: fp32, fp16, int8, dynamic")
    toposort(proto)
    set_metadata(proto, {**meta, **{f"quantization_{k}": str(v) for k, v in facts.items()}})
    import onnx

    onnx.checker.check_model(proto, full_check=True)
    save(proto, path)
    return info(converter=meta["converter"], opset=_opset_of(proto), ops=op_counts(proto),
                metadata=meta, **facts)


def _opset_of(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
