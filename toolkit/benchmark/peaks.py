"""This machine's measured matrix-multiply peaks, which "% of peak" is judged by: each row against
its own runtime's matrix multiply at the precision the row computes, where the toolkit can build
one (a peak another library reaches says little of what this runtime could do):

    fp32           numpy float32 GEMM (its BLAS): Keras and LiteRT float rows
    int8           ONNX Runtime MatMulInteger (u8 x s8 -> s32): ONNX Runtime int8 and dynamic rows;
                   LiteRT int8 rows too, for want of a LiteRT GEMM built without TensorFlow
    fp32_ort       ONNX Runtime MatMul float32 (MLAS): ONNX Runtime float rows
    openvino-fp32  OpenVINO CPU MatMul at INFERENCE_PRECISION_HINT=f32
    openvino-bf16  ... at bf16 (AMX-BF16 where the CPU has it), on CPUs with native bf16
    openvino-int8  ... a FakeQuantize'd input times int8 weights (AMX-INT8 / VNNI kernels)

Each peak is keyed by thread count and says how it was measured; OpenVINO's also say which
kernels ran it (`primitives`, `isa`), read from the compiled model like a model's."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from toolkit import runtimes
from toolkit.core.machine import blas_info, load_average
from toolkit.core.records import now

# Compute each file precision runs on: fp16 files compute in float32 on these CPUs (weights are
# up-cast); dynamic quantization runs int8 GEMMs.
PEAK_PRECISION = {"fp32": "fp32", "fp16": "fp32", "bf16": "bf16", "int8": "int8", "dynamic": "int8",
                  "int8io": "int8"}
OPENVINO_PEAKS = {"fp32": "openvino-fp32", "bf16": "openvino-bf16", "int8": "openvino-int8"}
OPENVINO_RUNTIMES = ("openvino", "openvino-bf16")
PEAK_KINDS = ("fp32", "int8", "fp32_ort", *OPENVINO_PEAKS.values())


def peak_kind(runtime: str | None, computes: str) -> str:
    """The peak a row of `runtime` computing `computes` (a precision, or a mix like "int8+fp32",
    judged by its fastest part) is measured against."""
    parts = [PEAK_PRECISION.get(p, "fp32") for p in computes.split("+")]
    compute = "int8" if "int8" in parts else "bf16" if "bf16" in parts else "fp32"
    if runtime in OPENVINO_RUNTIMES:
        return OPENVINO_PEAKS[compute]
    if compute == "int8":
        return "int8"
    return "fp32_ort" if runtime == "onnxruntime" else "fp32"


def fp32_gemm_peak(threads: int, *, n: int = 1024, seconds: float = 0.6) -> dict[str, Any]:
    """Best-of float32 GEMM throughput through numpy's BLAS on `threads` threads (GFLOP/s)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        best = _best_rate(lambda: a @ b, 2 * n**3, seconds)
        info = blas_info()
    return {"gflops": best / 1e9, "how": f"numpy float32 {n}x{n} matmul, best of repeated calls", **info}


def _ort_gemm_session(op: str, a_type: int, weights: np.ndarray, out_type: int, threads: int):
    n = weights.shape[0]
    return runtimes.constant_op_session(op, input_name="a", input_type=a_type, input_shape=[n, n],
                                        constants={"b": weights}, output_type=out_type,
                                        output_shape=[n, n], threads=threads)


def int8_gemm_peak(threads: int, *, n: int = 1024, seconds: float = 0.6) -> dict[str, Any]:
    """Best-of int8 GEMM throughput through ONNX Runtime's MatMulInteger (GOP/s)."""
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, size=(n, n), dtype=np.int8)
    session = _ort_gemm_session("MatMulInteger", TensorProto.UINT8, weights, TensorProto.INT32, threads)
    a = rng.integers(0, 256, size=(n, n), dtype=np.uint8)
    best = _best_rate(lambda: session.run(None, {"a": a}), 2 * n**3, seconds)
    return {"gops": best / 1e9,
            "how": f"ONNX Runtime MatMulInteger uint8x{n}x{n} int8 -> int32, best of calls"}


def ort_fp32_gemm_peak(threads: int, *, n: int = 1024, seconds: float = 0.6) -> dict[str, Any]:
    """The same float32 GEMM through ONNX Runtime (MLAS), for comparison with numpy's BLAS."""
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    weights = rng.random((n, n), dtype=np.float32)
    session = _ort_gemm_session("MatMul", TensorProto.FLOAT, weights, TensorProto.FLOAT, threads)
    a = rng.random((n, n), dtype=np.float32)
    return {"gflops": _best_rate(lambda: session.run(None, {"a": a}), 2 * n**3, seconds) / 1e9,
            "how": f"ONNX Runtime MatMul float32 {n}x{n}"}


def _best_rate(fn: Callable[[], Any], ops: float, seconds: float) -> float:
    fn()
    best = float("inf")
    start = time.perf_counter()
    calls = 0
    while calls < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return ops / best


def openvino_gemm_peak(precision: str, threads: int, *, n: int = 1024,
                       seconds: float = 0.6) -> dict[str, Any]:
    """Best-of throughput of OpenVINO's CPU plugin multiplying n x n matrices at `precision`."""
    from toolkit.runtimes.openvino import matmul_request

    request, a, facts = matmul_request(precision, n=n, threads=threads)
    rate = _best_rate(lambda: request.infer({0: a}, share_inputs=True), 2 * n**3, seconds) / 1e9
    unit = "gops" if precision == "int8" else "gflops"
    kernels = ", ".join(k for ks in facts["primitives"].values() for k in ks)
    return {unit: rate, "how": f"OpenVINO CPU MatMul {n}x{n} at {precision} ({kernels}), best of calls",
            **facts}


def measure_peaks(threads: Iterable[int], runtime_keys: Iterable[str] = ()) -> dict[str, Any]:
    """{"fp32": {"1": {...}, "2": {...}}, "int8": {...}, "fp32_ort": {...}} per thread count, and
    OpenVINO's peaks when `runtime_keys` (the runtimes the run measures) include OpenVINO's."""
    planned = set(runtime_keys)
    peaks: dict[str, Any] = {
        "fp32": {}, "int8": {}, "fp32_ort": {},
        "measured_at": now(),
        "load_avg_1m": load_average(),
    }
    openvino = [p for p, runtime in (("fp32", "openvino"), ("int8", "openvino"), ("bf16", "openvino-bf16"))
                if planned & set(OPENVINO_RUNTIMES) and runtimes.get_runtime(runtime).available()]
    for kind in (OPENVINO_PEAKS[p] for p in openvino):
        peaks[kind] = {}
    for t in sorted(set(threads)):
        peaks["fp32"][str(t)] = fp32_gemm_peak(t)
        peaks["int8"][str(t)] = int8_gemm_peak(t)
        peaks["fp32_ort"][str(t)] = ort_fp32_gemm_peak(t)
        for precision in openvino:
            peaks[OPENVINO_PEAKS[precision]][str(t)] = openvino_gemm_peak(precision, t)
    return peaks


def peak_value(entry: dict[str, Any] | None) -> float | None:
    """G(FL)OP/s of one measured peak entry: float peaks say "gflops", int8 ones "gops"."""
    if not entry:
        return None
    return entry.get("gflops") or entry.get("gops")


def peak_for(peaks: dict[str, Any] | None, precision: str, threads: int, *, runtime: str | None = None,
             computes: str | None = None) -> float | None:
    """The measured peak (G(FL)OP/s) a result of a `precision` file on `runtime`, computing
    `computes` (None: the file's precision), on `threads` threads is judged by."""
    if not peaks:
        return None
    return peak_value((peaks.get(peak_kind(runtime, computes or precision)) or {}).get(str(threads)))


def pct_of_peak(*, mflops_per_image: float, images_per_s: float, peak: float) -> float:
    return 100 * mflops_per_image * images_per_s / (peak * 1e3)
