"""The one table of export formats and precisions.

The CLI, parity, the benchmarks and the report all read FORMATS, always by key
("onnx-fp32", "tflite-int8", "tflite-int8io", ...). Exporters are named as "module:function" strings and
resolved only when an export runs, so importing this module never imports TensorFlow (an
ONNX Runtime-only host can still read the table and run the files).

A format's `runtimes` are the runtimes that run its file, its primary first: each is a parity row
(toolkit.export.parity_rows), a benchmark row and a report row of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.core.artifacts import SpecArtifacts
from toolkit.core.contract import CLASSIFIER, INT8_CLASSIFIER, PRECISIONS, IOContract
from toolkit.core.errors import UsageError

FORMAT_NAMES: tuple[str, ...] = ("onnx", "tflite", "openvino", "c")
ALL = "all"


@dataclass(frozen=True)
class ExportFormat:
    key: str  # f"{format}-{precision}", the name used everywhere
    format: str  # "onnx" | "tflite" | "openvino" | "c"
    precision: str  # "fp32" | "fp16" | "int8" | "dynamic" | "int8io"
    suffix: str  # ".onnx" | ".tflite" | ".xml" (OpenVINO IR, its weights in the .bin beside it)
    exporter: str  # "module:function", resolved lazily
    runtimes: tuple[str, ...]  # toolkit.runtimes keys that run this file; the first is its primary
    devices: tuple[str, ...]
    description: str = ""
    # The file's inputs and outputs: the classifier contract, except the microcontroller build
    # (tflite-int8io: int8 in and out), which names its own.
    io: IOContract = CLASSIFIER
    # A format made from another export's file rather than from model.keras (the C source, from
    # tflite-int8io), whose parity is that file's.
    source: str | None = None
    name: str | None = None  # the file under export/, where it is not model.PRECISION.SUFFIX
    # Flip test-time augmentation (toolkit.export.tta): the model on the image and its mirror,
    # averaged; opt-in (`--tta`), checked against Keras under the same averaging.
    tta: bool = False

    @property
    def quantized(self) -> bool:
        return self.precision != "fp32"

    @property
    def calibrated(self) -> bool:
        """Full-integer variants calibrate their activation ranges on training images."""
        return self.precision in ("int8", "int8io")

    @property
    def filename(self) -> str:
        return self.name or f"model.{self.precision}{self.suffix}"

    def exporter_fn(self) -> Callable[..., Any]:
        """The exporter: fn(model, path, *, precision, calibration, opset, metadata) -> dict."""
        module, _, name = self.exporter.partition(":")
        return getattr(importlib.import_module(module), name)


def _fmt(format_: str, precision: str, runtimes: tuple[str, ...], devices: tuple[str, ...],
         description: str, io: IOContract = CLASSIFIER) -> ExportFormat:
    suffix = {"onnx": ".onnx", "tflite": ".tflite", "openvino": ".xml"}[format_]
    return ExportFormat(f"{format_}-{precision}", format_, precision, suffix,
                        f"toolkit.export.{format_}:export", runtimes, devices, description, io)


_ORT = ("onnxruntime", "onnxruntime-cuda")
_OPENVINO = ("openvino", "openvino-bf16")  # float32 forced; the CPU plugin's default (bf16 on AMX)
FORMATS: dict[str, ExportFormat] = {
    f.key: f
    for f in (
        _fmt("onnx", "fp32", (*_ORT, *_OPENVINO), ("cpu", "gpu"),
             "ONNX float32 (tf2onnx from a traced tf.function)"),
        _fmt("onnx", "fp16", (*_ORT, *_OPENVINO), ("cpu", "gpu"),
             "ONNX float16 weights and compute, float32 input/output (for GPUs)"),
        # OpenVINO 2026.4's CPU plugin has no kernel for this QDQ file at its bf16 default ("No
        # suitable implementations"): only its float32 row runs it; openvino-int8 is OpenVINO's int8.
        _fmt("onnx", "int8", (*_ORT, "openvino"), ("cpu", "gpu"),
             "ONNX int8 static QDQ, calibrated on a seeded sample of training images"),
        # DynamicQuantizeLinear/MatMulInteger are CPU kernels in ONNX Runtime. OpenVINO runs them
        # as float matrix multiplies (it dequantizes the weights), which the onnx-fp32 rows measure.
        _fmt("onnx", "dynamic", ("onnxruntime",), ("cpu",),
             "ONNX dynamic quantization (int8 weights, activations quantized at run time)"),
        _fmt("tflite", "fp32", ("litert",), ("cpu",), "TFLite float32 (TFLite converter), run on LiteRT"),
        _fmt("tflite", "fp16", ("litert",), ("cpu",), "TFLite float16 weights"),
        _fmt("tflite", "int8", ("litert", "tflm"), ("cpu",),
             "TFLite full-integer int8 with float32 input/output (representative dataset)"),
        _fmt("tflite", "dynamic", ("litert",), ("cpu",), "TFLite dynamic-range (int8 weights)"),
        _fmt("tflite", "int8io", ("litert", "tflm"), ("cpu",),
             "TFLite full-integer int8 with int8 input/output (TFLite Micro convention; scale and zero "
             "point in its metadata)", io=INT8_CLASSIFIER),
        _fmt("openvino", "int8", _OPENVINO, ("cpu",),
             "OpenVINO IR int8 (NNCF post-training quantization of the float32 ONNX graph, calibrated on "
             "the same seeded training images as the other int8 exports)"),
        ExportFormat("onnx-tta", "onnx", "fp32", ".onnx", "toolkit.export.tta:export", _ORT,
                     ("cpu", "gpu"), "ONNX float32 with flip test-time augmentation: the mean of the image's "
                     "and its mirror's probabilities (twice the compute)",
                     name="model.fp32.tta.onnx", tta=True),
        ExportFormat("tflite-int8-tta", "tflite", "int8", ".tflite", "toolkit.export.tta:export",
                     ("litert",), ("cpu",), "TFLite full-integer int8 with flip test-time augmentation "
                     "(twice the compute)", name="model.int8.tta.tflite", tta=True),
        ExportFormat("tflm-c", "c", "int8io", ".cc", "toolkit.export.tflm_c:export", (), ("mcu",),
                     "C++ source for TFLite Micro firmware: the tflite-int8io model as an aligned array, the "
                     "measured tensor arena, I/O quantization, class names, an op resolver of its operators",
                     io=INT8_CLASSIFIER, source="tflite-int8io", name="tflm/model_data.cc"),
    )
}


def row_name(key: str, runtime: str, computes: str | None = None) -> str:
    """The name of a parity row: one file on one runtime, computing at one precision. The
    file's primary row (its first runtime, at the file's own precision) keeps the export key, as
    rows had before runtimes other than the primary ran files: `tflite-int8io`; the others are
    `KEY@RUNTIME` (`tflite-int8io@tflm`), with `-PRECISION` when the runtime computes at another
    precision than the file's (`onnx-fp32@openvino-bf16`)."""
    fmt = FORMATS.get(key)
    primary = fmt.runtimes[0] if fmt else runtime
    precision = fmt.precision if fmt else computes
    computes = computes or precision
    if runtime == primary and computes == precision:
        return key
    # A runtime whose key names the precision it computes (openvino-bf16) is not named twice.
    named = computes == precision or runtime.endswith(f"-{computes}")
    return f"{key}@{runtime}" + ("" if named else f"-{computes}")


def get_format(key: str) -> ExportFormat:
    try:
        return FORMATS[key]
    except KeyError:
        raise UsageError(f"unknown export {key!r}; valid: {', '.join(FORMATS)}") from None


def _expand(values: Iterable[str] | None, valid: tuple[str, ...], what: str,
            default: tuple[str, ...]) -> list[str]:
    if not values:
        return list(default)
    chosen: list[str] = []
    for raw in values:
        for value in str(raw).split(","):
            value = value.strip().lower()
            if not value:
                continue
            if value == ALL:
                chosen.extend(valid)
            elif value in valid:
                chosen.append(value)
            else:
                raise UsageError(f"unknown {what} {value!r}; valid: {', '.join(valid)}, all")
    return list(dict.fromkeys(chosen))


def select(formats: list[str] | None, precisions: list[str] | None, *,
           tta: bool = False) -> list[ExportFormat]:
    """The export formats for --format/--precision (default: every format that has the precision;
    fp32 only); with `tta`, also the test-time-augmentation variant of each chosen one that has one.

    Rejects unknown names and unsupported pairs before any work, listing the valid keys.
    """
    chosen = _select(formats, precisions)
    if tta:
        pairs = {(c.format, c.precision) for c in chosen}
        variants = [f for f in FORMATS.values() if f.tta and (f.format, f.precision) in pairs]
        if not variants:
            raise UsageError("--tta: none of the chosen exports has a test-time-augmentation variant; it "
                             f"exists for {', '.join(k for k, f in FORMATS.items() if f.tta)}")
        chosen += variants
    return chosen


def _select(formats: list[str] | None, precisions: list[str] | None) -> list[ExportFormat]:
    names = _expand(formats, FORMAT_NAMES, "format", FORMAT_NAMES)
    by_pair = {(f.format, f.precision): f for f in FORMATS.values() if not f.tta}
    if precisions:
        wanted = [(n, p) for n in names for p in _expand(precisions, PRECISIONS, "precision", ())]
    else:  # fp32; a format without it (the C source) in its own precision, when named outright
        named = {str(v).strip().lower() for raw in formats or () for v in str(raw).split(",")}
        wanted = [(n, "fp32") for n in names if (n, "fp32") in by_pair]
        wanted += [(f.format, f.precision) for f in FORMATS.values()
                   if f.format in named and (f.format, "fp32") not in by_pair]
    chosen = [by_pair[pair] for pair in wanted if pair in by_pair]
    missing = [f"{n}-{p}" for n, p in wanted if (n, p) not in by_pair]
    explicit_all = any(ALL in str(v).lower() for v in (*(formats or ()), *(precisions or ())))
    # A pair that does not exist is an error only when the user named both sides of it
    # (`--precision int8io` alone means the formats that have it: TFLite).
    if missing and formats and not explicit_all:
        raise UsageError(f"unsupported export {', '.join(missing)}; valid: {', '.join(FORMATS)}")
    if not chosen:
        raise UsageError(f"no export matches; valid: {', '.join(FORMATS)}")
    return chosen


def export_path(arts: SpecArtifacts, fmt: ExportFormat) -> Path:
    """ROOT/NAME/export/model.PRECISION.SUFFIX, e.g. model.int8.tflite."""
    return arts.export_dir / fmt.filename




def parity_keys(formats: Iterable[str] | None) -> list[str] | None:
    """The export keys `toolkit parity --format` names: format names (onnx, tflite), keys
    (onnx-int8) or all (None: every export)."""
    if not formats:
        return None
    keys: list[str] = []
    for raw in formats:
        for value in (v.strip().lower() for v in str(raw).split(",") if v.strip()):
            if value == ALL:
                return None
            if value in FORMATS:
                keys.append(value)
            elif value in FORMAT_NAMES:
                keys += [k for k, f in FORMATS.items() if f.format == value]
            else:
                raise UsageError(f"unknown format {value!r}; valid: {', '.join(FORMAT_NAMES)}, "
                                 f"{', '.join(FORMATS)}, all")
    return keys
