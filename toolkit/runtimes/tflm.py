"""TensorFlow Lite for Microcontrollers (TFLM) on this host: the `tflm` runtime, for full-integer
TFLite files (tflite-int8, tflite-int8io).

`tflite-micro` (PyPI; the `mcu` extra) ships TFLM's own interpreter with its reference kernels,
built for the host. What passes here is what a microcontroller build with those kernels computes;
its times are host times of reference kernels, never a device's latency, so the benchmarks do
not time it (the parity rows state them as host time). The interpreter runs one image per call
(a microcontroller's batch), single-threaded.

The arena: TFLM's recording allocator reports the bytes it allocated (`measure_arena`), and a
bisection finds the smallest `arena_size` with which the interpreter allocates and predicts what
it predicts with plenty of room. Both are figures of a 64-bit host: a 32-bit microcontroller's
per-tensor and per-operator structures are smaller, so they are an upper bound for TFLM's
reference kernels there; optimized kernels (CMSIS-NN, ESP-NN) add scratch buffers
(toolkit.runtimes.tflite_info.scratch_bytes), which is the margin a firmware adds.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.errors import ArtifactError, DeviceUnavailableError, UsageError
from toolkit.core.machine import cpu_count
from toolkit.runtimes import tflite_info
from toolkit.runtimes.base import OptionalPackage, TfliteIOModel, dtype_name

DISTRIBUTION = "tflite-micro"
INSTALL = "pip install -e '.[mcu]' (Linux x86-64, CPython 3.10-3.14: the wheels tflite-micro publishes)"
HOST_ARENA = 8 * 1024 * 1024  # plenty for any model here; the measured minimum is far below
CHECK_IMAGES = 16  # images whose outputs must match for an arena size to count as working


def align16(size: int) -> int:
    """Rounded up to TFLM's 16-byte arena alignment."""
    return -(-size // 16) * 16


_PACKAGE = OptionalPackage("tflm", DISTRIBUTION, "tflite_micro.python.tflite_micro.runtime", INSTALL)
available, version = _PACKAGE.available, _PACKAGE.version
require = _PACKAGE.require  # the interpreter module, or one line naming the package (exit 6)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """What TFLM's C++ code prints on file descriptor 2 (its error and allocation reports)."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def check_full_integer(path: Path) -> tflite_info.TfliteInfo:
    """The file's facts; a float or dynamic-range file is one line naming it and what to do."""
    try:
        info = tflite_info.read(path)
    except Exception as exc:  # a corrupt flatbuffer
        raise ArtifactError(f"{path}: not a readable TFLite file ({type(exc).__name__}: {exc}). Re-export "
                            "it: toolkit export --force") from None
    if not info.full_integer:
        raise UsageError(
            f"{path}: the tflm runtime runs full-integer TFLite files (tflite-int8, tflite-int8io); this one "
            f"computes in float ({', '.join(info.float_operators[:3])}). Export the microcontroller build: "
            "toolkit export --exp NAME --format tflite --precision int8io")
    return info


def interpreter(data: bytes, arena_size: int, *, path: Path) -> Any:
    """A TFLM interpreter over the model bytes; TFLM's own complaints become one line."""
    runtime = require()
    with _captured_stderr() as said:
        try:
            return runtime.Interpreter.from_bytes(data, arena_size=arena_size)
        except RuntimeError:
            pass  # what TFLM said is read once the capture ends
    raise _load_error(path, arena_size, said)


def _load_error(path: Path, arena_size: int, said: list[str]) -> ArtifactError:
    found = (re.search(r"Didn't find op for builtin opcode '(\w+)'", line) for line in said)
    missing = sorted({m.group(1) for m in found if m})
    if missing:
        return ArtifactError(f"{path}: TFLM has no kernel for {', '.join(missing)}; export a model without "
                             "those operators (the families' layers use CONV_2D, DEPTHWISE_CONV_2D, "
                             "FULLY_CONNECTED, pooling, MEAN, RESHAPE, SOFTMAX)")
    if any("Failed to allocate" in line or "missing:" in line for line in said):
        return ArtifactError(f"{path}: a {arena_size:,}-byte tensor arena is too small for this model under "
                             "TFLM; give it at least the measured minimum (toolkit parity measures it, "
                             "exports.json and the C header record it)")
    detail = next((line for line in reversed(said) if line.strip()), "no message")
    return ArtifactError(f"{path}: TFLM could not prepare this model ({detail.strip()[:200]}). Re-export it "
                         "with toolkit export --force")


class TflmModel(TfliteIOModel):
    """A full-integer .tflite file on TFLM's interpreter, one image per invoke."""

    def __init__(self, path: Path, *, device: str, threads: int | None, arena_size: int = HOST_ARENA) -> None:
        if device != "cpu":
            raise DeviceUnavailableError("the tflm runtime runs on this host's CPU only (it stands for a "
                                         "microcontroller)")
        require()
        self.info = check_full_integer(path)
        self.path = path
        self.interpreter = interpreter(path.read_bytes(), arena_size, path=path)
        self.runtime, self.device, self.threads = "tflm", device, 1
        self.provider = f"TFLM reference kernels ({DISTRIBUTION} {version()}, host build)"
        inp, out = self.interpreter.get_input_details(0), self.interpreter.get_output_details(0)
        self.input_shape = (None, *(int(d) for d in inp["shape"][1:]))
        self.output_shape = (None, *(int(d) for d in out["shape"][1:]))
        self.input_dtype, self.output_dtype = dtype_name(inp["dtype"]), dtype_name(out["dtype"])
        self.input_quant = _quantization(inp)
        self.output_quant = _quantization(out)
        self.quantized_io = self.input_quant is not None and self.output_quant is not None

    def run_all(self, images: np.ndarray, batch: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Every image, spread over one process per core (TFLM runs one image at a time on one
        thread); with how long each image took on the host and how well the cores were used."""
        return run_parallel(self.path, images, workers=cpu_count())

    def run_encoded(self, batch: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.input_dtype)
        outputs = []
        for image in np.asarray(batch):
            self.interpreter.set_input(np.ascontiguousarray(image[None], dtype=dtype), 0)
            self.interpreter.invoke()
            outputs.append(np.array(self.interpreter.get_output(0)))
        return np.concatenate(outputs) if outputs else np.zeros((0, *self.output_shape[1:]),
                                                                self.output_dtype)


def _run_chunk(job: tuple[str, np.ndarray]) -> tuple[np.ndarray, float]:
    path, images = job
    model = TflmModel(Path(path), device="cpu", threads=None)
    started = time.perf_counter()
    outputs = model.run(images)
    return outputs, time.perf_counter() - started


def run_parallel(path: Path, images: np.ndarray, *, workers: int) -> tuple[np.ndarray, dict[str, Any]]:
    """TFLM's outputs for `images`, split over `workers` fresh processes (spawned: the parent may
    hold TensorFlow's threads, which a fork would copy mid-flight)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(workers, len(images)))
    chunks = np.array_split(np.asarray(images, dtype=np.float32), workers)
    started = time.perf_counter()
    if workers == 1:
        parts = [_run_chunk((str(path), chunks[0]))]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_run_chunk, [(str(path), chunk) for chunk in chunks]))
    wall = time.perf_counter() - started
    busy = sum(seconds for _, seconds in parts)
    return np.concatenate([out for out, _ in parts]), {
        "workers": workers, "ms_per_image": round(busy / len(images) * 1e3, 3),
        "efficiency": round(busy / (workers * wall), 3) if wall else None}


def _quantization(details: dict[str, Any]) -> tuple[float, int] | None:
    params = details.get("quantization_parameters") or {}
    scales, zeros = params.get("scales", []), params.get("zero_points", [])
    if np.dtype(details["dtype"]).kind not in "iu" or len(scales) != 1:
        return None
    return float(scales[0]), int(zeros[0])


# ---------------------------------------------------------------- the arena


@dataclass(frozen=True)
class Arena:
    """What TFLM's allocator reports for a file, and the smallest arena that works (bytes)."""

    reported: int  # "Arena allocation total"
    head: int  # non-persistent: the activations' plan
    tail: int  # persistent: tensors, operators, their data
    minimum: int  # the smallest arena_size that allocates and predicts what a large one does
    scratch: int  # the largest CMSIS-NN im2col buffer among its convolutions (the margin)
    estimate: int  # toolkit.runtimes.tflite_info's estimate, before any interpreter ran
    tflm_version: str | None
    crashes: int = 0  # sizes at which TFLM crashed instead of failing cleanly (counted too small)

    @property
    def recommended(self) -> int:
        """What a firmware should reserve: the minimum, 16-byte aligned, plus the margin."""
        return align16(self.minimum) + align16(self.scratch)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recommended": self.recommended,
                "host": "x86-64 host build of TFLM's reference kernels (64-bit structures)",
                "margin": "scratch: the largest CMSIS-NN im2col buffer among the file's convolutions"}


def measure_arena(path: Path, images: np.ndarray) -> Arena:
    """The arena TFLM allocates for `path` and the smallest that works on `images` (float32
    [N,28,28,1] in [0,1]; the first CHECK_IMAGES are compared), by bisection on 16-byte steps."""
    big = TflmModel(path, device="cpu", threads=None)
    sample = big.encode(np.asarray(images[:CHECK_IMAGES], dtype=np.float32))
    expected = big.run_encoded(sample)
    with _captured_stderr() as said:
        big.interpreter.print_allocations()
    reported = _allocation(said, "total")
    with _Prober(path, sample, expected) as prober:
        low, high = 0, max(reported, 16)
        while not prober.works(high):  # the report is a lower bound on some builds: grow until it works
            low, high = high, high * 2
        while high - low > 16:
            middle = (low + high) // 2 // 16 * 16 or 16
            if prober.works(middle):
                high = middle
            else:
                low = middle
    return Arena(reported=reported, head=_allocation(said, "head"), tail=_allocation(said, "tail"),
                 minimum=high, scratch=big.info.scratch_bytes, estimate=big.info.arena_bytes,
                 tflm_version=version(), crashes=prober.crashes)


class _Prober:
    """Tries arena sizes in a child process. TFLM's allocator does not always fail cleanly: with
    some sizes below the minimum, tflite-micro 0.dev20261023 crashes (SIGSEGV) while preparing
    the model instead of reporting the shortfall. A crash costs only the child, and marks that
    size as too small; the next size starts a fresh child."""

    TIMEOUT_S = 120.0

    def __init__(self, path: Path, sample: np.ndarray, expected: np.ndarray) -> None:
        self.job = (str(path), sample, expected)
        self.process: Any = None
        self.conn: Any = None
        self.crashes = 0

    def __enter__(self) -> _Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _start(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # the parent may hold TensorFlow's threads
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_probe_sizes, args=(child, *self.job), daemon=True)
        self.process.start()
        child.close()

    def _stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
            self.process = None

    def works(self, size: int) -> bool:
        if self.process is None:
            self._start()
        try:
            self.conn.send(size)
            if self.conn.poll(self.TIMEOUT_S):
                return bool(self.conn.recv())
        except (EOFError, OSError):
            pass
        self.crashes += 1  # the child died (or hung) on this size: too small, by TFLM's own crash
        self.process.kill()
        self.process.join()
        self.process = None
        return False


def _probe_sizes(conn: Any, path: str, sample: np.ndarray, expected: np.ndarray) -> None:
    """The prober's child: for each size received, whether TFLM allocates with it and predicts
    what it predicts with plenty of room."""
    while (size := conn.recv()) is not None:
        try:
            model = TflmModel(Path(path), device="cpu", threads=None, arena_size=size)
            conn.send(bool(np.array_equal(model.run_encoded(sample), expected)))
        except ArtifactError:
            conn.send(False)


def _allocation(lines: list[str], which: str) -> int:
    for line in lines:
        match = re.search(rf"Arena allocation {which} (\d+) bytes", line)
        if match:
            return int(match.group(1))
    return 0
