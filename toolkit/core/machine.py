"""Every fact about this machine the records state, in one place: the CPU (model, flags, the
cores this process may use), the BLAS numpy runs, a CUDA device ONNX Runtime can use, and the
versions of the packages that compute the figures.

    machine_info()      {"cpu", "cores", "gpu", "blas", ...}: what a bench record's `machine` holds
    package_versions()  {"python", "toolkit", distribution: version}: read from package metadata

Imports nothing heavy: package metadata, /proc/cpuinfo and threadpoolctl only (ONNX Runtime only
when asked whether it has a CUDA provider).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# Distributions whose versions the records name (training metrics, benchmark files).
VERSIONED_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "ai-edge-litert", "tensorflow",
                      "tensorflow-cpu", "keras", "onnx", "openvino", "nncf")
# One module, two wheels: the module's key names whichever wheel is installed (whose own key stays).
_SAME_MODULE = {"tensorflow": ("tensorflow", "tensorflow-cpu"),
                "onnxruntime": ("onnxruntime", "onnxruntime-gpu")}


def package_versions(packages: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """{"python", "toolkit", distribution: version} for the installed ones, read from package
    metadata, so nothing is imported (cheap, and TensorFlow-free on ONNX-only hosts)."""
    from toolkit import __version__

    out = {"python": platform.python_version(), "toolkit": __version__}
    for dist in packages:
        for candidate in _SAME_MODULE.get(dist, (dist,)):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                out.setdefault(dist, importlib.metadata.version(candidate))
    return out


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask), which a container may narrow."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpuinfo_field(name: str, path: Path = CPUINFO) -> str | None:
    """The first processor's `name` line of /proc/cpuinfo (None where there is none)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags(path: Path = CPUINFO) -> frozenset[str]:
    """The instruction-set flags of the first processor (empty where /proc/cpuinfo is missing)."""
    return frozenset((_cpuinfo_field("flags", path) or "").split())


def blas_info() -> dict[str, Any]:
    """Which BLAS numpy runs and which kernel it chose (OPENBLAS_CORETYPE can force a slower one)."""
    out: dict[str, Any] = {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        out["blas"] = "unknown (threadpoolctl not installed)"
        return out
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            out.update(blas=pool.get("internal_api"), blas_version=pool.get("version"),
                       blas_kernel=pool.get("architecture"), blas_threads=pool.get("num_threads"))
            break
    return out


def cuda_available() -> bool:
    """ONNX Runtime is installed here with a CUDA execution provider."""
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def gpu_name() -> str | None:
    """The CUDA device's name when ONNX Runtime can use one, else None."""
    if not cuda_available():
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "CUDA device 0 (nvidia-smi unavailable)"


def machine_info() -> dict[str, Any]:
    """Stable facts about this machine (no measured figures: those vary run to run)."""
    return {"cpu": cpu_model(), "cores": cpu_count(), "gpu": gpu_name(), **blas_info()}


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None
