"""Exporters (one module per format), the registry of formats and precisions, the export pipeline,
its record (exports.json) and parity (validation beside conversion).

    registry  FORMATS, read by key ("onnx-int8", "tflite-int8io", ...)
    onnx, tflite, quantize, tflite_info   the formats
    pipeline  one spec to the chosen formats; run: several specs, with parity
    record    exports.json; parity: parity.json

Importing this package is cheap: exporters import TensorFlow only when they run.
"""
