"""The timing engine shared by `pytest bench/` and `toolkit bench`, so both measure the same way.

    cases = plan_cases(root, exps=..., formats=..., devices=..., batches=(1, 256), threads=(1, 2))
    ctx = BenchContext.create(root)          # real test images, Keras/ONNX reference, versions
    result = run_case(case, ctx)             # load outside the timed region, warm up, time, check

How a case is timed:
- the session or interpreter is built, the inputs prepared (and, on GPU, copied to the device)
  before the clock starts; warm-up calls follow, checked like every other call;
- each timed call is one `run` on one batch, read with `time.perf_counter` around the call only
  (GPU calls synchronize inside that span, so the clock never stops before the device does);
- every call's output is checked outside the timed span: shape [N,10], finite values, and for
  trained models the top-1 class against the reference (Keras, or the ONNX float32 export where
  TensorFlow is absent) on the images of that call. A runtime that fails this posts no time;
- p50/p90/p99 come from the raw per-call timings; images/s is batch / p50 (the median call,
  robust to a noisy shared CPU).

TensorFlow fixes its thread count once per process: `toolkit bench` runs the Keras cases of each
thread count in a subprocess (`python -m toolkit.benchmark worker`); pytest runs them in-process
at one count and skips the others with that reason. The matmul peaks used for "% of peak" are
measured here too (numpy float32 GEMM; int8 GEMM through ONNX Runtime's MatMulInteger).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import artifacts, runtimes
from toolkit.errors import ArtifactError, DeviceUnavailableError, ParityError, UsageError

KERAS_KEY = "keras-fp32"  # model.keras, benchmarked like an export
KERAS_RUNTIMES = ("keras", "keras-predict")
DEFAULT_BATCHES = (1, 256)
DEFAULT_THREADS = ("1", "all")
DEFAULT_SECONDS = 1.5  # timed seconds per case (rounds are planned from the warm-up)
FALLBACK_SPECS = ("CNN_1L_Dropout_Exp6", "DNN_1L_No_Dropout_Exp1")
CHECK_IMAGES = 64  # images per call whose top-1 is compared with the reference
MAX_FLIP_RATE = 0.10  # more top-1 disagreements than this over a case: the runtime is broken
GPU_IO_MODES = ("iobind", "e2e")  # input already on the device / host copies in the timed span
# Compute each precision runs on (for "% of peak"): fp16 files compute in float32 on these CPUs
# (weights are up-cast); dynamic quantization runs int8 GEMMs.
PEAK_PRECISION = {"fp32": "fp32", "fp16": "fp32", "int8": "int8", "dynamic": "int8"}


class OutputCheckError(ParityError):
    """A benchmarked call returned a wrong shape, non-finite values or the wrong classes."""


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class BenchCase:
    spec: str
    key: str  # "keras-fp32", "onnx-fp32", "tflite-int8", ...
    format: str
    precision: str
    runtime: str
    device: str
    batch: int
    threads: int
    path: str
    size_bytes: int
    sha256: str | None
    parity: str  # "pass" | "fail" | "reference" | "unknown"
    trained: bool
    origin: str = "artifacts"  # or "temporary-untrained" (the fresh-clone fallback)
    io: str = ""  # GPU only: "iobind" | "e2e"

    @property
    def id(self) -> str:
        device = f"{self.device}-{self.io}" if self.io else self.device
        return f"{self.spec}-{self.key}-{self.runtime}-{device}-b{self.batch}-t{self.threads}"

    @property
    def identity(self) -> tuple:
        """What makes two results comparable: the same file on the same runtime and setting."""
        return (self.spec, self.key, self.runtime, self.device, self.io, self.batch, self.threads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchCase:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def parse_batches(values: Iterable[str | int] | None) -> list[int]:
    out: list[int] = []
    for raw in values or DEFAULT_BATCHES:
        for part in str(raw).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                value = int(part)
            except ValueError:
                raise UsageError(f"batch sizes must be integers, got {part!r} (e.g. --batch 1,256)") from None
            if not 1 <= value <= 65536:
                raise UsageError(f"batch size must be in 1..65536, got {value}")
            out.append(value)
    return list(dict.fromkeys(out))


def parse_threads(values: Iterable[str | int] | None) -> list[int]:
    """'1', '2', 'all' (every core this process may use) -> sorted distinct counts."""
    cores = runtimes.cpu_count()
    out: list[int] = []
    for raw in values or DEFAULT_THREADS:
        for part in str(raw).split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part in ("all", "max"):
                out.append(cores)
                continue
            try:
                value = int(part)
            except ValueError:
                raise UsageError(
                    f"threads must be integers or 'all', got {part!r} (e.g. --threads 1,all)"
                ) from None
            if value < 1:
                raise UsageError(f"threads must be >= 1, got {value}")
            out.append(value)
    return sorted(set(out))


def parse_devices(device: str | None) -> tuple[str, ...]:
    device = (device or "all").lower()
    if device == "all":
        return runtimes.DEVICES
    if device not in runtimes.DEVICES:
        raise UsageError(f"unknown device {device!r}; valid: cpu, gpu, all")
    return (device,)


def _matches(key: str, patterns: Sequence[str] | None) -> bool:
    if not patterns:
        return True
    fmt = key.split("-", 1)[0]
    return any(fnmatch.fnmatch(key, p) or p == fmt for p in patterns)


def _split(values: Iterable[str] | None) -> list[str]:
    return [p.strip().lower() for v in values or () for p in str(v).split(",") if p.strip()]


def validate_filters(formats: Iterable[str] | None, runtime_keys: Iterable[str] | None) -> None:
    from toolkit.export.registry import FORMATS

    keys = [KERAS_KEY, *FORMATS]
    for pattern in _split(formats):
        if not any(_matches(k, [pattern]) for k in keys):
            raise UsageError(
                f"no format matches {pattern!r}; valid: {', '.join(keys)} "
                "(or a format name: keras, onnx, tflite; globs allowed)"
            )
    for key in _split(runtime_keys):
        runtimes.get_runtime(key)


def _parity_status(entry: dict[str, Any]) -> str:
    parity = entry.get("parity")
    if isinstance(parity, dict):
        for name in ("status", "verdict", "result"):
            if isinstance(parity.get(name), str):
                return parity[name].lower()
        if isinstance(parity.get("passed"), bool):
            return "pass" if parity["passed"] else "fail"
    if isinstance(parity, str):
        return parity.lower()
    if isinstance(parity, bool):
        return "pass" if parity else "fail"
    return "unknown"


def _expand(
    base: dict[str, Any],
    runtime_keys: Sequence[str],
    devices: Sequence[str],
    batches: Sequence[int],
    threads: Sequence[int],
) -> list[BenchCase]:
    cases = []
    for key in runtime_keys:
        rt = runtimes.get_runtime(key)
        for device in rt.devices:
            if device not in devices:
                continue
            # A GPU session's speed hardly depends on CPU threads: one count (all cores), two
            # ways of feeding it (input already on the device, and host copies in the clock).
            settings = (
                [(t, "") for t in threads] if device == "cpu" else [(max(threads), io) for io in GPU_IO_MODES]
            )
            for batch in batches:
                for n_threads, io in settings:
                    cases.append(
                        BenchCase(**base, runtime=key, device=device, batch=batch, threads=n_threads, io=io)
                    )
    return cases


def plan_cases(
    root: str | Path | None = None,
    *,
    exps: Sequence[str] | None = None,
    formats: Sequence[str] | None = None,
    runtime_keys: Sequence[str] | None = None,
    devices: Sequence[str] = runtimes.DEVICES,
    batches: Sequence[int] = DEFAULT_BATCHES,
    threads: Sequence[int] | None = None,
) -> list[BenchCase]:
    """Every (file, runtime, device, batch, threads) under `root` that the filters keep.

    Files come from each trained spec's model.keras and from its exports.json (through the
    export registry, never by guessing paths).
    """
    from toolkit.export import registry
    from toolkit.specs import match_specs

    validate_filters(formats, runtime_keys)
    formats, wanted_rt = _split(formats), _split(runtime_keys)
    threads = list(threads or parse_threads(None))
    names = artifacts.trained_specs(root)
    if exps:
        allowed = {s.name for s in match_specs(list(exps))}
        names = [n for n in names if n in allowed]
    cases: list[BenchCase] = []
    for name in names:
        arts = artifacts.spec_artifacts(name, root)
        rts = [r for r in KERAS_RUNTIMES if not wanted_rt or r in wanted_rt]
        if rts and _matches(KERAS_KEY, formats):
            base = dict(
                spec=name,
                key=KERAS_KEY,
                format="keras",
                precision="fp32",
                path=str(arts.model),
                size_bytes=arts.model.stat().st_size,
                sha256=artifacts.sha256_file(arts.model),
                parity="reference",
                trained=True,
            )
            cases += _expand(base, rts, devices, batches, threads)
        for entry in registry.read_exports(arts):
            fmt = registry.FORMATS.get(entry.get("key") or f"{entry.get('format')}-{entry.get('precision')}")
            if fmt is None or not _matches(fmt.key, formats):
                continue
            path = arts.dir / entry["path"]
            if entry.get("status", "exported") != "exported" or not path.is_file():
                continue  # failed or gone: `toolkit export` recreates it; the report says so
            rts = [r for r in fmt.runtimes if not wanted_rt or r in wanted_rt]
            base = dict(
                spec=name,
                key=fmt.key,
                format=fmt.format,
                precision=fmt.precision,
                path=str(path),
                size_bytes=int(entry.get("size_bytes") or path.stat().st_size),
                sha256=entry.get("sha256"),
                parity=_parity_status(entry),
                trained=True,
            )
            cases += _expand(base, rts, devices, batches, threads)
    return cases


def plan_fallback_cases(
    folder: Path,
    *,
    exps: Sequence[str] | None = None,
    formats: Sequence[str] | None = None,
    runtime_keys: Sequence[str] | None = None,
    devices: Sequence[str] = runtimes.DEVICES,
    batches: Sequence[int] = DEFAULT_BATCHES,
    threads: Sequence[int] | None = None,
) -> list[BenchCase]:
    """Cases for untrained models of the default specs, to be exported under `folder`.

    Untrained weights time the same as trained ones; the files are made by `build_fallback`.
    """
    from toolkit.export import registry
    from toolkit.specs import get_spec, match_specs

    validate_filters(formats, runtime_keys)
    formats, wanted_rt = _split(formats), _split(runtime_keys)
    threads = list(threads or parse_threads(None))
    specs = match_specs(list(exps)) if exps else [get_spec(n) for n in FALLBACK_SPECS]
    cases: list[BenchCase] = []
    for spec in specs:
        common = dict(spec=spec.name, size_bytes=0, sha256=None, trained=False, origin="temporary-untrained")
        rts = [r for r in KERAS_RUNTIMES if not wanted_rt or r in wanted_rt]
        if rts and _matches(KERAS_KEY, formats):
            base = dict(
                common,
                key=KERAS_KEY,
                format="keras",
                precision="fp32",
                parity="reference",
                path=str(folder / spec.name / "model.keras"),
            )
            cases += _expand(base, rts, devices, batches, threads)
        for fmt in registry.FORMATS.values():
            if not _matches(fmt.key, formats):
                continue
            rts = [r for r in fmt.runtimes if not wanted_rt or r in wanted_rt]
            base = dict(
                common,
                key=fmt.key,
                format=fmt.format,
                precision=fmt.precision,
                parity="unknown",
                path=str(folder / spec.name / fmt.filename),
            )
            cases += _expand(base, rts, devices, batches, threads)
    return cases


def build_fallback(spec_name: str, folder: Path, keys: Iterable[str]) -> dict[str, str]:
    """Build `spec_name` untrained and export the formats `keys` into folder/NAME/ with the
    registry's exporters. Returns {key: "ok" | reason it failed}."""
    from toolkit.export import registry
    from toolkit.export._common import base_metadata
    from toolkit.models import build_model
    from toolkit.specs import get_spec

    spec = get_spec(spec_name)
    out = folder / spec.name
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(spec)
    model.save(out / "model.keras")
    calibration = _calibration_images()
    status: dict[str, str] = {KERAS_KEY: "ok"}
    for key in keys:
        if key == KERAS_KEY:
            continue
        fmt = registry.FORMATS[key]
        try:
            fmt.exporter_fn()(
                model,
                out / fmt.filename,
                precision=fmt.precision,
                calibration=calibration,
                opset=None,
                metadata={**base_metadata(spec.name, None), "trained": "false"},
            )
            status[key] = "ok"
        except Exception as exc:  # one failing exporter must not hide the others' timings
            status[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return status


def _calibration_images(n: int = 200) -> np.ndarray:
    try:
        from toolkit.data import load
        from toolkit.export._common import calibration_sample

        return calibration_sample(load().x_train, size=n)[0]
    except Exception:  # no dataset on this host: untrained models calibrate on noise just as well
        return np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32)


# ---------------------------------------------------------------- context


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "numpy",
        "onnxruntime",
        "onnxruntime-gpu",
        "ai-edge-litert",
        "tensorflow",
        "tensorflow-cpu",
        "keras",
        "onnx",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The CUDA device's name when ONNX Runtime can use one, else None."""
    if not runtimes.RUNTIMES["onnxruntime-cuda"].available():
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "CUDA device 0 (nvidia-smi unavailable)"


def machine_info() -> dict[str, Any]:
    """Stable facts about this machine (no measured figures: those vary run to run)."""
    info = {"cpu": cpu_model(), "cores": runtimes.cpu_count(), "gpu": gpu_name()}
    info.update(blas_info())
    return info


def blas_info() -> dict[str, Any]:
    """Which BLAS numpy runs and which kernel it chose (OPENBLAS_CORETYPE can force a slower one)."""
    out: dict[str, Any] = {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                out.update(
                    blas=pool.get("internal_api"),
                    blas_version=pool.get("version"),
                    blas_kernel=pool.get("architecture"),
                    blas_threads=pool.get("num_threads"),
                )
                break
    except ImportError:
        out["blas"] = "unknown (threadpoolctl not installed)"
    return out


def configure_tf_threads(threads: int) -> int:
    """Set TensorFlow's intra-op threads before its runtime starts; returns the count in force.

    Once TF has run anything the count is fixed for the process; then the current one is returned.
    """
    from toolkit._tf import tf

    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 2)
    return tf.config.threading.get_intra_op_parallelism_threads() or runtimes.cpu_count()


def tensorflow_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


@dataclass
class BenchContext:
    """What every case of one run shares: inputs, references, versions, where results go."""

    root: Path
    images: np.ndarray  # float32 [M,28,28,1] in [0,1]
    inputs_source: str
    references: dict[str, np.ndarray | None] = field(default_factory=dict)
    reference_source: dict[str, str] = field(default_factory=dict)
    keras_threads: int | None = None  # TensorFlow's thread count in this process, once set
    versions: dict[str, str] = field(default_factory=package_versions)
    machine: dict[str, Any] = field(default_factory=machine_info)
    seconds: float = DEFAULT_SECONDS

    @classmethod
    def create(
        cls, root: str | Path | None = None, *, seconds: float = DEFAULT_SECONDS, n_images: int = 256
    ) -> BenchContext:
        try:
            from toolkit.data import load, to_model_input

            images = to_model_input(load().x_test[:n_images])
            source = f"the first {n_images} Fashion-MNIST test images"
        except Exception as exc:  # e.g. a GPU host without the dataset: timings do not depend on pixels
            images = np.random.default_rng(0).random((n_images, 28, 28, 1), dtype=np.float32)
            source = f"seeded uniform noise (dataset unavailable: {str(exc).splitlines()[0][:100]})"
        return cls(root=artifacts.resolve_root(root), images=images, inputs_source=source, seconds=seconds)

    def batch_inputs(self, batch: int) -> list[np.ndarray]:
        """Inputs a case cycles through: 64 single images at batch 1, else one batch of `batch`."""
        if batch == 1:
            return [
                np.ascontiguousarray(self.images[i : i + 1])
                for i in range(min(CHECK_IMAGES, len(self.images)))
            ]
        reps = -(-batch // len(self.images))
        return [np.ascontiguousarray(np.concatenate([self.images] * reps)[:batch])]

    def reference(self, case: BenchCase, cases: Sequence[BenchCase] = ()) -> np.ndarray | None:
        """Top-1 classes of the spec's reference on the first CHECK_IMAGES images (trained only)."""
        if not case.trained:
            return None
        if case.spec not in self.references:
            self.references[case.spec], self.reference_source[case.spec] = self._compute_reference(
                case, cases
            )
        return self.references[case.spec]

    def _compute_reference(
        self, case: BenchCase, cases: Sequence[BenchCase]
    ) -> tuple[np.ndarray | None, str]:
        images = self.images[:CHECK_IMAGES]
        keras_path = artifacts.spec_artifacts(case.spec, self.root).model
        if tensorflow_available() and keras_path.is_file():
            model = runtimes.load(keras_path, "keras")
            return np.argmax(model.run(images), axis=1), "Keras model.keras"
        onnx = [c for c in cases if c.spec == case.spec and c.key == "onnx-fp32"]
        if onnx:
            model = runtimes.load(onnx[0].path, "onnxruntime", threads=1)
            return (
                np.argmax(model.run(images), axis=1),
                "onnx-fp32 on ONNX Runtime CPU (TensorFlow not installed here)",
            )
        return None, "none (no TensorFlow and no onnx-fp32 export): top-1 not checked"


# ---------------------------------------------------------------- output check


class OutputChecker:
    """Checks each call's output outside the timed span; a broken runtime raises, never times."""

    def __init__(self, case: BenchCase, inputs: list[np.ndarray], reference: np.ndarray | None) -> None:
        self.case = case
        self.n_inputs = len(inputs)
        self.reference = reference
        self.calls = 0
        self.compared = 0
        self.mismatches = 0

    def check(self, index: int, output: Any) -> None:
        out = np.asarray(output)
        expected = (self.case.batch, 10)
        if out.shape != expected:
            raise OutputCheckError(
                f"{self.case.id}: output shape {out.shape}, expected {expected}; "
                "the runtime is not running this model correctly, so it posts no time"
            )
        if not np.all(np.isfinite(out)):
            bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
            raise OutputCheckError(
                f"{self.case.id}: {bad} non-finite output values (NaN/inf); "
                "a broken runtime posts no time. Re-export the model and rerun"
            )
        self.calls += 1
        if self.reference is None:
            return
        if self.case.batch == 1:
            ref = self.reference[index % self.n_inputs : index % self.n_inputs + 1]
        else:
            n = min(len(self.reference), self.case.batch)
            ref, out = self.reference[:n], out[:n]
        self.compared += len(ref)
        self.mismatches += int(np.count_nonzero(np.argmax(out[: len(ref)], axis=1) != ref))
        # Fail early on a clearly broken runtime; the end-of-case verdict uses the whole count.
        if self.compared >= 16 and self.mismatches > MAX_FLIP_RATE * self.compared + 1:
            self.finish()

    def finish(self) -> dict[str, Any]:
        if self.reference is not None and self.compared and self.mismatches > MAX_FLIP_RATE * self.compared:
            raise OutputCheckError(
                f"{self.case.id}: top-1 disagrees with the reference on {self.mismatches}/{self.compared} "
                f"checked images (limit {MAX_FLIP_RATE:.0%}); a broken runtime posts no time. "
                "Check parity with `toolkit export` and rerun"
            )
        return {
            "calls_checked": self.calls,
            "top1_compared": self.compared,
            "top1_mismatches": self.mismatches if self.reference is not None else None,
            "top1_checked": self.reference is not None,
        }


# ---------------------------------------------------------------- GPU provider check


def profiled_node_providers(session_factory: Callable[[Any], Any], feed: dict[str, np.ndarray]) -> Counter:
    """Run once with ONNX Runtime profiling on; count the nodes each execution provider ran.

    `session_factory(options)` builds the session from the given SessionOptions, so the check
    profiles exactly the providers and settings the benchmark uses.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="toolkit-ort-profile-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = session_factory(options)
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    providers: Counter = Counter()
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args:
            providers[args["provider"]] += 1
    return providers


def require_gpu_execution(session_providers: Sequence[str], node_providers: Counter) -> None:
    """Refuse anything that is not CUDA all the way: a CPU session, or any node run on CPU."""
    if not session_providers or session_providers[0] != "CUDAExecutionProvider":
        raise DeviceUnavailableError(
            f"not GPU: the session's providers are {list(session_providers)}; a CPU fallback must not "
            "be reported as a GPU time. Install the `gpu` extra on a host with CUDA"
        )
    if not node_providers:
        raise DeviceUnavailableError("not GPU: the ONNX Runtime profile recorded no node executions")
    others = {p: n for p, n in node_providers.items() if p != "CUDAExecutionProvider"}
    if others:
        raise DeviceUnavailableError(
            f"not GPU: {sum(others.values())} of {sum(node_providers.values())} nodes ran on "
            f"{', '.join(sorted(others))}; refusing to report a CPU fallback as a GPU time"
        )


def check_gpu_session(path: str | Path, session, feed: dict[str, np.ndarray], threads: int | None) -> Counter:
    """Profile a second session built like `session` and require every node on CUDA."""
    import onnxruntime as ort

    def factory(options):
        base = runtimes.ort_session_options(threads)
        options.intra_op_num_threads = base.intra_op_num_threads
        options.graph_optimization_level = base.graph_optimization_level
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        return ort.InferenceSession(str(path), sess_options=options, providers=["CUDAExecutionProvider"])

    nodes = profiled_node_providers(factory, feed)
    require_gpu_execution(session.get_providers(), nodes)
    return nodes


# ---------------------------------------------------------------- one case


@dataclass
class Prepared:
    """A loaded model with its inputs and the two functions the clock wraps or not."""

    case: BenchCase
    model: runtimes.LoadedModel
    inputs: list[np.ndarray]
    call: Callable[[int], Any]  # timed: run input i (and synchronize, on GPU)
    fetch: Callable[[Any], np.ndarray]  # untimed: the call's result as host numpy
    checker: OutputChecker
    notes: dict[str, Any] = field(default_factory=dict)


def prepare(case: BenchCase, ctx: BenchContext, cases: Sequence[BenchCase] = ()) -> Prepared:
    if case.runtime in KERAS_RUNTIMES:
        threads = ctx.keras_threads or configure_tf_threads(case.threads)
        ctx.keras_threads = threads
        if threads != case.threads:
            raise UsageError(
                f"{case.id}: TensorFlow in this process runs {threads} threads, not "
                f"{case.threads}; it fixes the count once per process (run it in a worker)"
            )
    model = runtimes.load(case.path, case.runtime, device=case.device, threads=case.threads)
    inputs = ctx.batch_inputs(case.batch)
    checker = OutputChecker(case, inputs, ctx.reference(case, cases))
    notes: dict[str, Any] = {"provider": model.provider}
    if case.device == "gpu":
        return _prepare_gpu(case, model, inputs, checker, notes)
    return Prepared(
        case, model, inputs, lambda i: model.run(inputs[i % len(inputs)]), lambda out: out, checker, notes
    )


def _prepare_gpu(case, model, inputs, checker, notes) -> Prepared:
    import onnxruntime as ort

    session = model.session
    nodes = check_gpu_session(case.path, session, {model.input_name: inputs[0]}, case.threads)
    notes.update(gpu=gpu_name(), gpu_nodes=dict(nodes), gpu_check="all nodes on CUDAExecutionProvider")
    if case.io == "e2e":  # host array in, host array out: the copies are inside the clock
        return Prepared(
            case, model, inputs, lambda i: model.run(inputs[i % len(inputs)]), lambda out: out, checker, notes
        )
    bindings = []
    for x in inputs:
        binding = session.io_binding()
        binding.bind_ortvalue_input(model.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(model.output_names[0], "cuda")
        bindings.append(binding)

    def call(i: int):
        binding = bindings[i % len(bindings)]
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the clock stops only after the device finished
        return binding

    return Prepared(case, model, inputs, call, lambda b: b.copy_outputs_to_cpu()[0], checker, notes)


def warm_up(prep: Prepared, *, min_calls: int = 5, max_calls: int = 50, seconds: float = 0.3) -> list[float]:
    """Checked warm-up calls; returns their durations (to plan the timed rounds)."""
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < min_calls or (i < max_calls and time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        out = prep.call(i)
        times.append(time.perf_counter() - t0)
        prep.checker.check(i, prep.fetch(out))
        i += 1
    return times


def plan_rounds(
    warmup_times: Sequence[float], seconds: float, *, min_rounds: int = 20, max_rounds: int = 2000
) -> int:
    settled = sorted(warmup_times[2:] or warmup_times)
    estimate = max(settled[len(settled) // 2], 1e-6)
    return int(min(max_rounds, max(min_rounds, seconds / estimate)))


def summarize(times_s: Sequence[float], batch: int) -> dict[str, Any]:
    """Statistics of raw per-call timings (seconds) -> milliseconds and images/s."""
    arr = np.asarray(times_s, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no timings to summarize")
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "rounds": int(arr.size),
        "p50_ms": float(p50 * 1e3),
        "p90_ms": float(p90 * 1e3),
        "p99_ms": float(p99 * 1e3),
        "mean_ms": float(arr.mean() * 1e3),
        "min_ms": float(arr.min() * 1e3),
        "max_ms": float(arr.max() * 1e3),
        "stddev_ms": float(arr.std(ddof=1) * 1e3) if arr.size > 1 else 0.0,
        "images_per_s": float(batch / p50),
    }


Timer = Callable[[Callable[[], Any], Callable[[], None], int], "list[float] | None"]


def own_timer(target: Callable[[], Any], after: Callable[[], None], rounds: int) -> list[float]:
    """The CLI's clock: perf_counter around the call only; the check runs after each call."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        target()
        times.append(time.perf_counter() - t0)
        after()
    return times


def run_case(
    case: BenchCase, ctx: BenchContext, *, timer: Timer = own_timer, cases: Sequence[BenchCase] = ()
) -> dict[str, Any]:
    """Prepare, warm up, time and check one case; the result dict recorded under artifacts/bench/.

    `timer(target, after, rounds)` returns raw per-call seconds (None when timing is disabled,
    e.g. pytest --benchmark-disable, which still runs and checks the calls).
    """
    from toolkit.specs import get_spec

    prep = prepare(case, ctx, cases)
    warm = warm_up(prep)
    rounds = plan_rounds(warm, ctx.seconds)
    state = {"i": len(warm), "out": None}

    def target() -> None:
        state["out"] = prep.call(state["i"])

    def after() -> None:
        prep.checker.check(state["i"], prep.fetch(state["out"]))
        state["i"] += 1

    raw = timer(target, after, rounds)
    check = prep.checker.finish()
    spec = get_spec(case.spec)
    result: dict[str, Any] = {
        **case.to_dict(),
        "id": case.id,
        "timed": raw is not None,
        "warmup_calls": len(warm),
        "params": spec.param_count(),
        "mflops_per_image": spec.mflops_per_image(),
        "inputs": ctx.inputs_source,
        "reference": ctx.reference_source.get(case.spec),
        "check": check,
        "versions": ctx.versions,
        "measured_at": _now(),
        "tf_threads": ctx.keras_threads if case.runtime in KERAS_RUNTIMES else None,
        "load_avg_1m": os.getloadavg()[0],
        **prep.notes,
    }
    if raw is not None:
        result.update(summarize(raw, case.batch))
    return result


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- matmul peaks


def fp32_gemm_peak(threads: int, *, n: int = 1024, seconds: float = 0.6) -> dict[str, Any]:
    """Best-of float32 GEMM throughput through numpy's BLAS on `threads` threads (GFLOP/s)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        best = _best_rate(lambda: a @ b, 2 * n**3, seconds)
        info = blas_info()
    return {"gflops": best / 1e9, "how": f"numpy float32 {n}x{n} matmul, best of repeated calls", **info}


def int8_gemm_peak(threads: int, *, n: int = 1024, seconds: float = 0.6) -> dict[str, Any]:
    """Best-of int8 GEMM throughput through ONNX Runtime's MatMulInteger (GOP/s): the kernel
    family that quantized models run on this runtime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, size=(n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        [numpy_helper.from_array(weights, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(
        model.SerializeToString(),
        sess_options=runtimes.ort_session_options(threads),
        providers=["CPUExecutionProvider"],
    )
    a = rng.integers(0, 256, size=(n, n), dtype=np.uint8)
    best = _best_rate(lambda: session.run(None, {"a": a}), 2 * n**3, seconds)
    return {
        "gops": best / 1e9,
        "how": f"ONNX Runtime MatMulInteger uint8x{n}x{n} int8 -> int32, best of calls",
    }


def ort_fp32_gemm_peak(threads: int, *, n: int = 1024, seconds: float = 0.6) -> dict[str, Any]:
    """The same float32 GEMM through ONNX Runtime (MLAS), for comparison with numpy's BLAS."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "fp32_gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(rng.random((n, n), dtype=np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    session = ort.InferenceSession(
        model.SerializeToString(),
        sess_options=runtimes.ort_session_options(threads),
        providers=["CPUExecutionProvider"],
    )
    a = rng.random((n, n), dtype=np.float32)
    return {
        "gflops": _best_rate(lambda: session.run(None, {"a": a}), 2 * n**3, seconds) / 1e9,
        "how": f"ONNX Runtime MatMul float32 {n}x{n}",
    }


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


def measure_peaks(threads: Iterable[int]) -> dict[str, Any]:
    """{"fp32": {"1": {...}, "2": {...}}, "int8": {...}, "fp32_ort": {...}} per thread count."""
    peaks: dict[str, Any] = {
        "fp32": {},
        "int8": {},
        "fp32_ort": {},
        "measured_at": _now(),
        "load_avg_1m": os.getloadavg()[0],
    }
    for t in sorted(set(threads)):
        peaks["fp32"][str(t)] = fp32_gemm_peak(t)
        peaks["int8"][str(t)] = int8_gemm_peak(t)
        peaks["fp32_ort"][str(t)] = ort_fp32_gemm_peak(t)
    return peaks


def peak_for(peaks: dict[str, Any] | None, precision: str, threads: int) -> float | None:
    """The measured peak (G(FL)OP/s) a result of `precision` on `threads` threads is judged by."""
    if not peaks:
        return None
    kind = PEAK_PRECISION.get(precision, "fp32")
    entry = (peaks.get(kind) or {}).get(str(threads))
    if not entry:
        return None
    return entry.get("gflops") or entry.get("gops")


# ---------------------------------------------------------------- results on disk


def write_run(
    root: str | Path | None,
    *,
    source: str,
    results: list[dict[str, Any]],
    peaks: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """One file per run under ROOT/bench/ (atomic), read by `toolkit report`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = artifacts.bench_dir(root) / f"{stamp}-{source}-{os.getpid()}.json"
    artifacts.write_json(
        path,
        {
            "source": source,
            "written_at": _now(),
            "machine": machine_info(),
            "versions": package_versions(),
            "peaks": peaks,
            **(extra or {}),
            "results": results,
        },
    )
    return path


def load_runs(root: str | Path | None) -> list[dict[str, Any]]:
    """Every bench run under ROOT/bench/, oldest first (a corrupt file is an ArtifactError)."""
    folder = artifacts.bench_dir(root)
    if not folder.is_dir():
        return []
    runs = []
    for path in sorted(folder.glob("*.json")):
        doc = artifacts.read_json(path, what="benchmark results", fix="Delete it and rerun `toolkit bench`.")
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            raise ArtifactError(
                f"{path}: not a benchmark results file (no 'results' list). "
                "Delete it and rerun `toolkit bench`"
            )
        doc["file"] = str(path)
        runs.append(doc)
    runs.sort(key=lambda d: (d.get("written_at") or "", d["file"]))
    return runs


# ---------------------------------------------------------------- worker (Keras thread counts)


def run_in_worker(
    cases: Sequence[BenchCase],
    *,
    root: Path,
    seconds: float,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    references: dict[str, list[int] | None] | None = None,
) -> list[dict[str, Any]]:
    """Run Keras cases of ONE thread count in a fresh Python process (TF's count is per process)."""
    threads = {c.threads for c in cases}
    if len(threads) != 1:
        raise ValueError("a worker runs cases of one thread count")
    job = {
        "root": str(root),
        "seconds": seconds,
        "cases": [c.to_dict() for c in cases],
        "references": references or {},
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit.benchmark", "worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin and proc.stdout
    proc.stdin.write(json.dumps(job))
    proc.stdin.close()
    results = []
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        item = json.loads(line)
        if "error" in item:
            item_case = BenchCase.from_dict(item["case"])
            results.append({**item_case.to_dict(), "id": item_case.id, "error": item["error"]})
        else:
            results.append(item)
        if on_result:
            on_result(results[-1])
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0 and len(results) < len(cases):
        tail = stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"benchmark worker exited with {proc.returncode}: {tail[0][:300]}")
    return results


def _worker_main() -> int:
    job = json.loads(sys.stdin.read())
    cases = [BenchCase.from_dict(c) for c in job["cases"]]
    ctx = BenchContext.create(job["root"], seconds=job["seconds"])
    ctx.keras_threads = configure_tf_threads(cases[0].threads)
    for spec, ref in (job.get("references") or {}).items():
        ctx.references[spec] = None if ref is None else np.asarray(ref)
        ctx.reference_source[spec] = "Keras model.keras (computed by the parent process)"
    for case in cases:
        try:
            item = run_case(case, ctx, cases=cases)
        except Exception as exc:  # reported per case, like pytest would
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            item = {"case": case.to_dict(), "error": message}
        print(json.dumps(item, default=str), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        sys.exit(_worker_main())
    sys.exit("usage: python -m toolkit.benchmark worker  (reads a JSON job on stdin)")
