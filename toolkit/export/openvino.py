"""Keras -> OpenVINO IR int8 (`openvino-int8`): NNCF post-training quantization of the float32 ONNX
graph (the onnx-fp32 export's own conversion), calibrated on the same seeded training images as
the other int8 exports, written as OpenVINO IR: model.int8.xml (the graph, with FakeQuantize
layers the CPU plugin runs as int8 kernels) and model.int8.bin (its weights).

Why a variant of its own: ONNX Runtime's static QDQ file (onnx-int8) does not compile on
OpenVINO's CPU plugin at its default precision (bf16 on AMX CPUs: "No suitable implementations"),
and with float32 forced part of it runs in float32. NNCF is OpenVINO's own quantizer: its graph is
what the plugin's low-precision transformations expect, so every weighted layer runs an int8
kernel (AMX-INT8 or VNNI where the CPU has them) at either precision hint.

The .xml records the .bin's sha256 in its rt_info (and the usual metadata: spec, classes,
preprocessing, source sha256, versions), so the .xml's sha256, which exports.json, parity and the
benchmarks key everything by, also pins its weights: a .bin replaced on its own is refused at
load (toolkit.runtimes.openvino.read_model). Both files are written under temporary names and
renamed into place, the weights first.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import artifacts
from toolkit.core.errors import UsageError
from toolkit.export._common import info, require_calibration, version_of
from toolkit.runtimes.base import RuntimeUnavailableError

INSTALL = "pip install -e '.[openvino]'"
METHOD = ("nncf.quantize: post-training quantization (MinMax ranges of every calibration image, "
          "fast bias correction), preset performance (symmetric int8 weights and activations)")


def require_tools() -> tuple[Any, Any]:
    """(openvino, nncf), or one line naming what is missing and how to install it (exit 6)."""
    import importlib.util

    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeUnavailableError(f"the openvino-int8 export needs {' and '.join(missing)}, not "
                                      f"installed here; install them with: {INSTALL}")
    import openvino

    return openvino, _import_nncf()


def _import_nncf():
    """nncf, with its telemetry off: at import NNCF starts OpenVINO's telemetry, which sends usage
    events and writes a client id under the home folder unless it runs in CI. The toolkit sends
    nothing about its users, so NNCF is imported as in CI (NNCF_CI stays set for its later calls)."""
    import os

    saved = os.environ.get("CI")
    os.environ["CI"], os.environ["NNCF_CI"] = "true", "1"
    try:
        import nncf
    finally:
        if saved is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = saved
    return nncf


def export(model: Any, path: str | Path, *, precision: str = "int8", calibration: np.ndarray | None = None,
           opset: int | None = None, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """The exporter signature shared by export/*: write `path` (.xml) and its .bin, return facts."""
    if precision != "int8":
        raise UsageError(f"OpenVINO IR precision {precision!r} is not exported; valid: int8 (the float "
                         "files are the ONNX exports, which OpenVINO runs as they are)")
    ov, nncf = require_tools()
    from toolkit.export.onnx import _opset_of, convert, converter_metadata
    from toolkit.runtimes.openvino import RT_INFO, core, sha256_of

    images = require_calibration(calibration, "OpenVINO int8")
    proto = convert(model, opset=opset)
    float_model = core().read_model(proto.SerializeToString(), ov.Tensor(np.empty(0, dtype=np.uint8)))
    quantized = _quantize(nncf, float_model, images)
    meta = {**converter_metadata(), **(metadata or {}), "precision": precision, "quantizer": METHOD,
            "nncf_version": version_of("nncf"), "openvino_version": version_of("openvino"),
            "onnx_opset": str(_opset_of(proto))}
    for key, value in meta.items():
        quantized.set_rt_info(str(value), [RT_INFO, key])
    path = Path(path)
    weights = path.with_suffix(".bin")
    # The weights first, then the graph that names their sha256: a run killed between the two
    # leaves a graph whose recorded weights do not match, which loading refuses.
    with artifacts.atomic_path(path) as tmp_xml, artifacts.atomic_path(weights) as tmp_bin:
        staged = tmp_xml.with_name(tmp_xml.stem + ".staged.xml")
        try:
            ov.save_model(quantized, str(staged), compress_to_fp16=False)
            quantized.set_rt_info(sha256_of(staged.with_suffix(".bin")), [RT_INFO, "weights_sha256"])
            ov.save_model(quantized, str(staged), compress_to_fp16=False)
            staged.replace(tmp_xml)
            staged.with_suffix(".bin").replace(tmp_bin)
        finally:
            for leftover in (staged, staged.with_suffix(".bin")):
                leftover.unlink(missing_ok=True)
    ops = _op_counts(quantized)
    return info(converter=meta["converter"], method=METHOD, quantizer=f"nncf {meta['nncf_version']}",
                openvino=meta["openvino_version"], opset=_opset_of(proto), calibration_images=len(images),
                ops=ops, fake_quantize=ops.get("FakeQuantize", 0), metadata=meta,
                files=[{"path": p.name, "size_bytes": p.stat().st_size, "sha256": artifacts.sha256_file(p)}
                       for p in (path, weights)])


def _quantize(nncf: Any, model: Any, images: np.ndarray) -> Any:
    """NNCF's post-training quantization over every calibration image, one image per item (its
    statistics are per image), quietly: NNCF logs and draws progress bars on stdout."""
    dataset = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(model, dataset, subset_size=len(images),
                                 preset=nncf.QuantizationPreset.PERFORMANCE)
    finally:
        logger.setLevel(level)


def _op_counts(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in model.get_ops():
        name = op.get_type_name()
        if name not in ("Parameter", "Result", "Constant"):
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
