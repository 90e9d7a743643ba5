"""pytest-benchmark suite over every export under the artifacts root (see bench/README in the docs).

    pytest bench/ --benchmark-only                      # the whole matrix (about 2-4 minutes here)
    pytest bench/ --benchmark-only --bench-exp 'CNN*' --bench-format onnx --bench-batch 1
    pytest bench/ --benchmark-disable --bench-smoke     # one tiny case, untimed: the README's smoke

The timing engine is toolkit.benchmark (shared with `toolkit bench`); this file only turns its
plan into parametrized tests, adapts pytest-benchmark's `pedantic` as the clock, and records
every timed result under ARTIFACTS/bench/ so `toolkit report` sees pytest runs too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from toolkit import benchmark as engine  # noqa: E402
from toolkit import runtimes  # noqa: E402
from toolkit.artifacts import resolve_root, trained_specs  # noqa: E402
from toolkit.errors import ToolkitError  # noqa: E402

SMOKE = {
    "exp": ["DNN_1L_No_Dropout_Exp1"],
    "format": ["onnx-fp32"],
    "batch": ["1"],
    "threads": ["1"],
    "device": "cpu",
    "seconds": 0.2,
}
# Option -> environment variable used when the option is not given.
ENV = {
    "exp": "TOOLKIT_BENCH_EXP",
    "format": "TOOLKIT_BENCH_FORMAT",
    "runtime": "TOOLKIT_BENCH_RUNTIME",
    "device": "TOOLKIT_BENCH_DEVICE",
    "batch": "TOOLKIT_BENCH_BATCH",
    "threads": "TOOLKIT_BENCH_THREADS",
    "seconds": "TOOLKIT_BENCH_SECONDS",
    "keras_threads": "TOOLKIT_BENCH_KERAS_THREADS",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("toolkit bench", "Narrow or widen the benchmark matrix (env vars in brackets)")
    group.addoption(
        "--bench-exp", action="append", help="Spec name or glob; repeat [TOOLKIT_BENCH_EXP, comma list]"
    )
    group.addoption(
        "--bench-format",
        action="append",
        help="keras, onnx, tflite, a key like onnx-int8, or a glob [TOOLKIT_BENCH_FORMAT]",
    )
    group.addoption(
        "--bench-runtime",
        action="append",
        help="keras, keras-predict, onnxruntime, onnxruntime-cuda, litert [TOOLKIT_BENCH_RUNTIME]",
    )
    group.addoption(
        "--bench-device",
        help="cpu, gpu or all (default all; GPU cases skip without CUDA) [TOOLKIT_BENCH_DEVICE]",
    )
    group.addoption(
        "--bench-batch", action="append", help="Batch sizes, e.g. 1,256 (default) [TOOLKIT_BENCH_BATCH]"
    )
    group.addoption(
        "--bench-threads", action="append", help="Thread counts, e.g. 1,all (default) [TOOLKIT_BENCH_THREADS]"
    )
    group.addoption(
        "--bench-seconds",
        type=float,
        help=f"Timed seconds per case (default {engine.DEFAULT_SECONDS}) [TOOLKIT_BENCH_SECONDS]",
    )
    group.addoption(
        "--bench-keras-threads",
        type=int,
        help="TensorFlow's thread count for this process (default: the largest --bench-threads); "
        "Keras cases at other counts are skipped: use `toolkit bench` for those "
        "[TOOLKIT_BENCH_KERAS_THREADS]",
    )
    group.addoption(
        "--bench-smoke",
        action="store_true",
        help="One tiny case (DNN_1L_No_Dropout_Exp1, onnx-fp32, batch 1, 1 thread, 0.2 s)",
    )


def _option(config: pytest.Config, name: str) -> Any:
    value = config.getoption(f"--bench-{name.replace('_', '-')}")
    if value is None and os.environ.get(ENV[name]):
        value = os.environ[ENV[name]]
        if name in ("exp", "format", "runtime", "batch", "threads"):
            value = [value]
    if value is None and config.getoption("--bench-smoke") and name in SMOKE:
        value = SMOKE[name]
    return value


class BenchState:
    """Plan, shared context and collected results of one pytest session."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.root = resolve_root(None)
        self.error: str | None = None
        self.fallback_dir: Path | None = None
        self.built: dict[str, dict[str, str]] = {}
        self.results: list[dict[str, Any]] = []
        self.peaks: dict[str, Any] | None = None
        self.ctx: engine.BenchContext | None = None
        self.written: Path | None = None
        try:
            self.exps = _option(config, "exp")
            self.formats = _option(config, "format")
            self.runtimes = _option(config, "runtime")
            self.devices = engine.parse_devices(_option(config, "device"))
            self.batches = engine.parse_batches(_option(config, "batch"))
            self.threads = engine.parse_threads(_option(config, "threads"))
            seconds = _option(config, "seconds")
            self.seconds = float(seconds) if seconds is not None else engine.DEFAULT_SECONDS
            keras_threads = _option(config, "keras_threads")
            self.keras_threads = int(keras_threads) if keras_threads else max(self.threads)
            kwargs = dict(
                exps=self.exps,
                formats=self.formats,
                runtime_keys=self.runtimes,
                devices=self.devices,
                batches=self.batches,
                threads=self.threads,
            )
            self.cases = engine.plan_cases(self.root, **kwargs)
            if not self.cases:
                self.fallback_dir = Path(tempfile.mkdtemp(prefix="toolkit-bench-"))
                self.cases = engine.plan_fallback_cases(self.fallback_dir, **kwargs)
        except ToolkitError as exc:
            self.error, self.cases = exc.message, []

    def header(self) -> list[str]:
        if self.error:
            return [f"toolkit bench: {self.error}"]
        lines = [f"toolkit bench: {len(self.cases)} cases; artifacts root {self.root}"]
        if self.fallback_dir:
            specs = sorted({c.spec for c in self.cases})
            where = (
                "no trained model or export matching these filters under"
                if trained_specs(self.root)
                else "no trained model or export under"
            )
            lines.append(
                f"toolkit bench: {where} {self.root}: building UNTRAINED "
                f"{', '.join(specs)} and exporting them to {self.fallback_dir} with the registry's "
                "exporters (untrained weights time the same; no accuracy, top-1 not checked)"
            )
        if any(c.runtime in engine.KERAS_RUNTIMES for c in self.cases):
            lines.append(
                f"toolkit bench: Keras cases run with TensorFlow at {self.keras_threads} threads "
                "(fixed once per process); Keras cases at other counts are skipped here and run by "
                "`toolkit bench` in subprocesses"
            )
        if "gpu" in self.devices and not runtimes.RUNTIMES["onnxruntime-cuda"].available():
            lines.append("toolkit bench: no CUDA execution provider here: GPU cases are skipped")
        return lines

    def context(self) -> engine.BenchContext:
        if self.ctx is None:
            needs_tf = engine.tensorflow_available() and (
                any(c.runtime in engine.KERAS_RUNTIMES or c.trained for c in self.cases) or self.fallback_dir
            )
            keras_threads = engine.configure_tf_threads(self.keras_threads) if needs_tf else None
            self.ctx = engine.BenchContext.create(self.root, seconds=self.seconds)
            self.ctx.keras_threads = keras_threads
        return self.ctx

    def ensure_files(self, case: engine.BenchCase) -> None:
        if not self.fallback_dir:
            return
        if case.spec not in self.built:
            if not engine.tensorflow_available():
                pytest.skip(
                    "no exports under the artifacts root and no TensorFlow here to build the "
                    "fallback models; export on a host with TensorFlow and copy artifacts/"
                )
            keys = sorted({c.key for c in self.cases if c.spec == case.spec})
            self.context()  # TensorFlow's thread count is set before the build touches TF
            self.built[case.spec] = engine.build_fallback(case.spec, self.fallback_dir, keys)
        status = self.built[case.spec].get(case.key, "not built")
        if status != "ok":
            pytest.fail(f"exporting untrained {case.spec} to {case.key} failed: {status}")

    def measure_peaks(self) -> dict[str, Any]:
        if self.peaks is None:
            self.peaks = engine.measure_peaks(self.threads)
        return self.peaks

    def run(self, benchmark, case: engine.BenchCase) -> dict[str, Any]:
        if case.device == "gpu" and not runtimes.RUNTIMES["onnxruntime-cuda"].available():
            import onnxruntime as ort

            pytest.skip(
                f"no CUDA: ONNX Runtime providers here are {ort.get_available_providers()}; "
                "install the `gpu` extra on an NVIDIA host"
            )
        if case.runtime in engine.KERAS_RUNTIMES:
            if not engine.tensorflow_available():
                pytest.skip("TensorFlow is not installed here (ONNX Runtime/LiteRT cases still run)")
            if case.threads != self.keras_threads:
                pytest.skip(
                    f"TensorFlow fixes its thread count once per process and this one runs "
                    f"{self.keras_threads}; use --bench-keras-threads {case.threads} or `toolkit bench`"
                )
        self.ensure_files(case)
        ctx = self.context()
        timing = not benchmark.disabled
        peaks = self.measure_peaks() if timing else None  # outside every case's clock

        def timer(target, after, rounds):
            benchmark.pedantic(target, teardown=after, rounds=rounds, iterations=1, warmup_rounds=0)
            if benchmark.disabled:  # pedantic ran the target once, untimed, and skipped teardown
                after()
                return None
            return list(benchmark.stats.stats.data)

        benchmark.group = f"{case.spec} batch {case.batch}"
        result = engine.run_case(case, ctx, timer=timer, cases=self.cases)
        if result["timed"]:
            peak = engine.peak_for(peaks, case.precision, case.threads)
            if peak:
                result["peak_g_per_s"] = peak
                result["pct_of_peak"] = (
                    100 * result["mflops_per_image"] * result["images_per_s"] / (peak * 1e3)
                )
            self.results.append(result)
        benchmark.extra_info.update({k: v for k, v in result.items() if k not in ("versions",)})
        benchmark.extra_info["versions"] = ctx.versions
        return result

    def finish(self) -> None:
        if self.results:
            self.written = engine.write_run(
                self.root,
                source="pytest",
                results=self.results,
                peaks=self.peaks,
                extra={"fallback_dir": str(self.fallback_dir or "") or None},
            )
        if self.fallback_dir:
            shutil.rmtree(self.fallback_dir, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    config._toolkit_bench = BenchState(config)  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return config._toolkit_bench.header()  # type: ignore[attr-defined]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_case" not in metafunc.fixturenames:
        return
    state: BenchState = metafunc.config._toolkit_bench  # type: ignore[attr-defined]
    if state.error:
        params = [pytest.param(None, marks=pytest.mark.skip(reason=state.error), id="invalid-options")]
    elif not state.cases:
        params = [
            pytest.param(None, marks=pytest.mark.skip(reason="the filters select no case"), id="no-cases")
        ]
    else:
        params = [pytest.param(c, id=c.id) for c in state.cases]
    metafunc.parametrize("bench_case", params)


@pytest.fixture(scope="session")
def bench_state(request: pytest.FixtureRequest) -> BenchState:
    return request.config._toolkit_bench  # type: ignore[attr-defined]


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    # Stable facts only: pytest-benchmark's --benchmark-compare warns when machine_info differs.
    machine_info["toolkit"] = {**engine.machine_info(), "versions": engine.package_versions()}


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    state: BenchState = config._toolkit_bench  # type: ignore[attr-defined]
    state.finish()
    if not state.results:
        return
    tr = terminalreporter
    tr.section("toolkit bench: images/s and latency percentiles (from raw per-call timings)")
    tr.write_line(
        f"{'case':<72} {'img/s':>10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'%peak':>6} {'top1':>7}"
    )
    for r in state.results:
        check = r["check"]
        top1 = f"{check['top1_mismatches']}/{check['top1_compared']}" if check["top1_checked"] else "-"
        pct = f"{r['pct_of_peak']:.0f}" if r.get("pct_of_peak") is not None else "-"
        tr.write_line(
            f"{r['id']:<72} {r['images_per_s']:>10,.0f} {r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} "
            f"{r['p99_ms']:>9.3f} {pct:>6} {top1:>7}"
        )
    if state.peaks:
        fp32 = ", ".join(f"{t} thr {v['gflops']:.0f}" for t, v in state.peaks["fp32"].items())
        int8 = ", ".join(f"{t} thr {v['gops']:.0f}" for t, v in state.peaks["int8"].items())
        kernel = next(iter(state.peaks["fp32"].values())).get("blas_kernel")
        tr.write_line(
            f"measured peaks: numpy fp32 GEMM GFLOP/s: {fp32} (OpenBLAS kernel {kernel}); "
            f"ONNX Runtime int8 GEMM GOP/s: {int8}"
        )
    tr.write_line(
        f"load average at the end: {os.getloadavg()[0]:.2f} on {runtimes.cpu_count()} cores "
        "(timings taken while other work runs are noisy)"
    )
    if state.written:
        tr.write_line(f"results recorded in {state.written} (read by `toolkit report`)")
