"""The one table of export formats and precisions.

The CLI, parity, the benchmarks and the report all read FORMATS, always by key
("onnx-fp32", "tflite-int8", "tflite-int8io", ...). Exporters are named as "module:function" strings and
resolved only when an export runs, so importing this module never imports TensorFlow (an
ONNX Runtime-only host can still read the table and run the files).
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

FORMAT_NAMES: tuple[str, ...] = ("onnx", "tflite")
ALL = "all"


@dataclass(frozen=True)
class ExportFormat:
    key: str  # f"{format}-{precision}", the name used everywhere
    format: str  # "onnx" | "tflite"
    precision: str  # "fp32" | "fp16" | "int8" | "dynamic"
    suffix: str  # ".onnx" | ".tflite"
    exporter: str  # "module:function", resolved lazily
    runtimes: tuple[str, ...]  # toolkit.runtimes keys that run this file
    devices: tuple[str, ...]
    description: str = ""
    # The file's inputs and outputs: the classifier contract, except the microcontroller build
    # (tflite-int8io: int8 in and out), which names its own.
    io: IOContract = CLASSIFIER

    @property
    def quantized(self) -> bool:
        return self.precision != "fp32"

    @property
    def calibrated(self) -> bool:
        """Full-integer variants calibrate their activation ranges on training images."""
        return self.precision in ("int8", "int8io")

    @property
    def filename(self) -> str:
        return f"model.{self.precision}{self.suffix}"

    def exporter_fn(self) -> Callable[..., Any]:
        """The exporter: fn(model, path, *, precision, calibration, opset, metadata) -> dict."""
        module, _, name = self.exporter.partition(":")
        return getattr(importlib.import_module(module), name)


def _fmt(format_: str, precision: str, runtimes: tuple[str, ...], devices: tuple[str, ...],
         description: str, io: IOContract = CLASSIFIER) -> ExportFormat:
    suffix = {"onnx": ".onnx", "tflite": ".tflite"}[format_]
    return ExportFormat(f"{format_}-{precision}", format_, precision, suffix,
                        f"toolkit.export.{format_}:export", runtimes, devices, description, io)


_ORT = ("onnxruntime", "onnxruntime-cuda")
FORMATS: dict[str, ExportFormat] = {
    f.key: f
    for f in (
        _fmt("onnx", "fp32", _ORT, ("cpu", "gpu"), "ONNX float32 (tf2onnx from a traced tf.function)"),
        _fmt("onnx", "fp16", _ORT, ("cpu", "gpu"),
             "ONNX float16 weights and compute, float32 input/output (for GPUs)"),
        _fmt("onnx", "int8", _ORT, ("cpu", "gpu"),
             "ONNX int8 static QDQ, calibrated on a seeded sample of training images"),
        # DynamicQuantizeLinear/MatMulInteger are CPU kernels in ONNX Runtime.
        _fmt("onnx", "dynamic", ("onnxruntime",), ("cpu",),
             "ONNX dynamic quantization (int8 weights, activations quantized at run time)"),
        _fmt("tflite", "fp32", ("litert",), ("cpu",), "TFLite float32 (TFLite converter), run on LiteRT"),
        _fmt("tflite", "fp16", ("litert",), ("cpu",), "TFLite float16 weights"),
        _fmt("tflite", "int8", ("litert",), ("cpu",),
             "TFLite full-integer int8 with float32 input/output (representative dataset)"),
        _fmt("tflite", "dynamic", ("litert",), ("cpu",), "TFLite dynamic-range (int8 weights)"),
        _fmt("tflite", "int8io", ("litert",), ("cpu",),
             "TFLite full-integer int8 with int8 input/output (TFLite Micro convention; scale and zero "
             "point in its metadata)", io=INT8_CLASSIFIER),
    )
}


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


def select(formats: list[str] | None, precisions: list[str] | None) -> list[ExportFormat]:
    """The export formats for --format/--precision (default: every format that has the precision;
    fp32 only).

    Rejects unknown names and unsupported pairs before any work, listing the valid keys.
    """
    names = _expand(formats, FORMAT_NAMES, "format", FORMAT_NAMES)
    precs = _expand(precisions, PRECISIONS, "precision", ("fp32",))
    chosen = [FORMATS[f"{n}-{p}"] for n in names for p in precs if f"{n}-{p}" in FORMATS]
    missing = [f"{n}-{p}" for n in names for p in precs if f"{n}-{p}" not in FORMATS]
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
