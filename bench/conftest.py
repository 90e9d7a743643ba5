"""pytest-benchmark suite over every export under the artifacts root (see bench/README in the docs).

    pytest bench/ --benchmark-only                      # the whole matrix (about 2-4 minutes here)
    pytest bench/ --benchmark-only --bench-exp 'CNN*' --bench-format onnx --bench-batch 1
    pytest bench/ --benchmark-disable --bench-smoke     # two tiny cases, untimed: the README's smoke
    pytest bench/ --benchmark-only --bench-kind training --bench-train-precision off,bf16
                                                        # training steps only: Exp6 in two modes
    pytest bench/ --benchmark-only --bench-repeats 3    # each case in 3 processes: 95% intervals
    pytest bench/ --benchmark-only --bench-memory       # also peak RSS, load time, first call

The driver is toolkit.benchmark.driver (shared with `toolkit bench`: planning, placement, peaks,
the results file); this file only turns its plan into parametrized tests, adapts
pytest-benchmark's `pedantic` as the clock, and maps the driver's skips and failures to pytest's.
Every timed result lands under ARTIFACTS/bench/, so `toolkit report` sees pytest runs too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from toolkit.benchmark.driver import BenchRequest, BenchSession, run_benchmarks  # noqa: E402
from toolkit.benchmark.plan import (  # noqa: E402
    DEFAULT_SECONDS,
    INFERENCE,
    KERAS_RUNTIMES,
    MEMORY,
    TIME_TO_ACCURACY,
    TRAINING,
    BenchCase,
    parse_threads,
)
from toolkit.core import machine  # noqa: E402
from toolkit.core.artifacts import trained_specs  # noqa: E402
from toolkit.core.errors import ToolkitError  # noqa: E402
from toolkit.core.machine import machine_info as toolkit_machine_info  # noqa: E402
from toolkit.core.machine import package_versions  # noqa: E402

SMOKE = {
    "exp": ["DNN_1L_No_Dropout_Exp1"],
    "format": ["onnx-fp32"],
    "batch": ["1"],
    "threads": ["1"],
    "device": "cpu",
    "seconds": 0.2,
    "train_exp": ["DNN_1L_No_Dropout_Exp1"],
    "train_precision": ["off"],
    "train_batch": ["64"],
}
LIST_OPTIONS = ("exp", "format", "runtime", "batch", "threads", "kind", "train_exp", "train_precision",
                "train_batch")
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
    "kind": "TOOLKIT_BENCH_KIND",
    "train_exp": "TOOLKIT_BENCH_TRAIN_EXP",
    "train_precision": "TOOLKIT_BENCH_TRAIN_PRECISION",
    "train_batch": "TOOLKIT_BENCH_TRAIN_BATCH",
    "repeats": "TOOLKIT_BENCH_REPEATS",
    "memory": "TOOLKIT_BENCH_MEMORY",
    "seeds": "TOOLKIT_BENCH_SEEDS",
    "threshold": "TOOLKIT_BENCH_THRESHOLD",
    "epochs": "TOOLKIT_BENCH_EPOCHS",
    "limit_train": "TOOLKIT_BENCH_LIMIT_TRAIN",
}
FIXTURE_KINDS = {"bench_case": INFERENCE, "training_case": TRAINING}


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
        help=f"Timed seconds per case (default {DEFAULT_SECONDS}) [TOOLKIT_BENCH_SECONDS]",
    )
    group.addoption(
        "--bench-keras-threads",
        type=int,
        help="TensorFlow's thread count for this process (default: the largest --bench-threads); "
        "Keras cases at other counts are skipped: use `toolkit bench` for those "
        "[TOOLKIT_BENCH_KERAS_THREADS]",
    )
    group.addoption(
        "--bench-kind", action="append",
        help="inference, training or both (default) [TOOLKIT_BENCH_KIND]",
    )
    group.addoption(
        "--bench-train-exp", action="append",
        help="Training cases: spec name or glob; repeat (default CNN_1L_Dropout_Exp6) "
        "[TOOLKIT_BENCH_TRAIN_EXP]",
    )
    group.addoption(
        "--bench-train-precision", action="append",
        help="Training cases: off, bf16, fp16 (default all three; a type this machine lacks is skipped) "
        "[TOOLKIT_BENCH_TRAIN_PRECISION]",
    )
    group.addoption(
        "--bench-train-batch", action="append",
        help="Training cases: batch sizes or 'spec' (the spec's own), e.g. spec,128 (default) "
        "[TOOLKIT_BENCH_TRAIN_BATCH]",
    )
    group.addoption(
        "--bench-repeats",
        type=int,
        help="Measure each case in this many processes (this one, then workers); >= 2 gives a 95%% "
        "interval (default 1 here; toolkit bench uses 3) [TOOLKIT_BENCH_REPEATS]",
    )
    group.addoption(
        "--bench-memory",
        action="store_true",
        default=None,
        help="Also run the memory cases: peak RSS, load time and first call of each file x runtime, each "
        "in a fresh process [TOOLKIT_BENCH_MEMORY=1]",
    )
    group.addoption("--bench-seeds", type=int,
                    help="Time to accuracy: seeds 0..N-1 of each --bench-exp spec (default 3) "
                         "[TOOLKIT_BENCH_SEEDS]")
    group.addoption("--bench-threshold", type=float,
                    help="Time to accuracy: the test accuracy to reach, e.g. 0.94 [TOOLKIT_BENCH_THRESHOLD]")
    group.addoption("--bench-epochs", type=int,
                    help="Time to accuracy: fewer epochs than the spec's (quick checks) "
                         "[TOOLKIT_BENCH_EPOCHS]")
    group.addoption("--bench-limit-train", type=int,
                    help="Time to accuracy: train on N images (quick checks) [TOOLKIT_BENCH_LIMIT_TRAIN]")
    group.addoption(
        "--bench-smoke",
        action="store_true",
        help="Two tiny cases, each DNN_1L_No_Dropout_Exp1: onnx-fp32 inference at batch 1 on 1 thread "
        "(0.2 s), and a float32 training step at batch 64",
    )


def _option(config: pytest.Config, name: str) -> Any:
    value = config.getoption(f"--bench-{name.replace('_', '-')}")
    if value is None and os.environ.get(ENV[name]):
        value = os.environ[ENV[name]]
        if name in LIST_OPTIONS:
            value = [value]
    if value is None and config.getoption("--bench-smoke") and name in SMOKE:
        value = SMOKE[name]
    return value


class BenchState:
    """The driver's session for one pytest run, and what the header and summary show."""

    def __init__(self, config: pytest.Config) -> None:
        self.error: str | None = None
        self.session: BenchSession | None = None
        self.cases: list[BenchCase] = []
        try:
            threads = parse_threads(_option(config, "threads"))
            keras_threads = _option(config, "keras_threads")
            seconds = _option(config, "seconds")
            repeats = _option(config, "repeats")
            self.session = BenchSession.open(BenchRequest(
                root=None, exps=_option(config, "exp"), formats=_option(config, "format"),
                runtime_keys=_option(config, "runtime"), device=_option(config, "device"),
                batches=_option(config, "batch"), threads=threads,
                seconds=float(seconds) if seconds is not None else DEFAULT_SECONDS,
                keras_threads=int(keras_threads) if keras_threads else max(threads),
                fallback=True, source="pytest", kinds=_kinds(_option(config, "kind")),
                train_exps=_option(config, "train_exp"), train_precisions=_option(config, "train_precision"),
                train_batches=_option(config, "train_batch"),
                repeats=int(repeats) if repeats else 1,
                memory=str(_option(config, "memory") or "").lower() in ("1", "true", "yes"),
                **_t2a_options(config)))
            self.cases = self.session.cases
        except ValueError as exc:
            self.error = f"--bench-repeats / TOOLKIT_BENCH_REPEATS must be an integer ({exc})"
        except ToolkitError as exc:
            self.error = exc.message

    def header(self) -> list[str]:
        if self.error or self.session is None:
            return [f"toolkit bench: {self.error}"]
        session = self.session
        lines = [f"toolkit bench: {len(self.cases)} cases, each measured in {session.repeats} process(es); "
                 f"artifacts root {session.root}"]
        if session.fallback_dir:
            specs = sorted({c.spec for c in self.cases})
            where = ("no trained model or export matching these filters under" if trained_specs(session.root)
                     else "no trained model or export under")
            lines.append(
                f"toolkit bench: {where} {session.root}: building UNTRAINED {', '.join(specs)} and exporting "
                f"them to {session.fallback_dir} with the registry's exporters (untrained weights time the "
                "same; no accuracy, top-1 not checked)")
        if any(c.runtime in KERAS_RUNTIMES for c in self.cases):
            lines.append(
                f"toolkit bench: Keras cases run with TensorFlow at {session.keras_threads} threads (fixed "
                "once per process); Keras cases at other counts are skipped here and run by `toolkit bench` "
                "in subprocesses")
        if "gpu" in session.filters.devices and not session.cuda:
            lines.append("toolkit bench: no CUDA execution provider here: GPU cases are skipped")
        training = [c for c in self.cases if c.kind == TRAINING]
        if training:
            lines.append(
                f"toolkit bench: {len(training)} training-step cases (spec x precision x batch, untrained "
                f"models, real training images) on {training[0].device}, TensorFlow at {training[0].threads} "
                "threads")
        return lines

    def run(self, benchmark, case: BenchCase):
        """One case through the driver, timed by pytest-benchmark; skips and failures as pytest's."""
        assert self.session is not None

        def timer(target, after, rounds):
            benchmark.pedantic(target, teardown=after, rounds=rounds, iterations=1, warmup_rounds=0)
            if benchmark.disabled:  # pedantic ran the target once, untimed, and skipped teardown
                after()
                return None
            return list(benchmark.stats.stats.data)

        benchmark.group = f"{case.spec} {'training ' if case.kind == TRAINING else ''}batch {case.batch}"
        # Repeat 0 runs here under pytest-benchmark's clock, later repeats in worker processes.
        outcomes = run_benchmarks(self.session, cases=[case], timer=timer, timing=not benchmark.disabled)
        result = self._first_result(outcomes)
        benchmark.extra_info.update({k: v for k, v in result.to_dict().items() if k != "versions"})
        benchmark.extra_info["versions"] = result.versions
        if len(outcomes) > 1:
            benchmark.extra_info["p50_ms_per_process"] = [o.result.stats.p50_ms for o in outcomes]
        return result

    def run_untimed(self, case: BenchCase):
        """A case the driver times itself (memory: each repeat in a fresh child process; time to
        accuracy: a whole training); returns its measurements."""
        assert self.session is not None
        outcomes = run_benchmarks(self.session, cases=[case])
        self._first_result(outcomes)
        return [o.result for o in outcomes]

    @staticmethod
    def _first_result(outcomes):
        if outcomes[0].skipped:
            pytest.skip(outcomes[0].skipped)
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
        return outcomes[0].result

    def finish(self) -> list[Path]:
        return self.session.close() if self.session is not None else []


def pytest_configure(config: pytest.Config) -> None:
    config._toolkit_bench = BenchState(config)  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return config._toolkit_bench.header()  # type: ignore[attr-defined]


def _t2a_options(config: pytest.Config) -> dict[str, Any]:
    """The time-to-accuracy settings given (the request's defaults otherwise)."""
    out: dict[str, Any] = {}
    for name, kind in (("seeds", int), ("threshold", float), ("epochs", int), ("limit_train", int)):
        value = _option(config, name)
        if value is not None:
            out[name] = kind(value)
    return out


def _kinds(values: list[str] | None) -> tuple[str, ...]:
    parts = [p.strip().lower() for raw in values or [] for p in str(raw).split(",") if p.strip()]
    return tuple(parts) or (INFERENCE, TRAINING)


# Fixture name -> the kind of the cases it takes.
CASE_FIXTURES = {"bench_case": INFERENCE, "training_case": TRAINING, "memory_case": MEMORY,
                 "time_to_accuracy_case": TIME_TO_ACCURACY}


def _no_cases_reason(state: BenchState, kind: str) -> str:
    if kind == MEMORY:
        return "memory cases not requested (--bench-memory or TOOLKIT_BENCH_MEMORY=1)"
    return f"no {kind} cases in this run (--bench-kind {', '.join(state.session.request.kinds)})"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    state: BenchState = metafunc.config._toolkit_bench  # type: ignore[attr-defined]
    for fixture, kind in CASE_FIXTURES.items():
        if fixture not in metafunc.fixturenames:
            continue
        cases = [c for c in state.cases if c.kind == kind]
        if state.error:  # bad options, an unavailable --bench-device, or nothing to benchmark
            params = [pytest.param(None, marks=pytest.mark.skip(reason=state.error), id="invalid-options")]
        elif not cases:
            reason = _no_cases_reason(state, kind)
            params = [pytest.param(None, marks=pytest.mark.skip(reason=reason), id=f"no-{kind}-cases")]
        else:
            params = [pytest.param(c, id=c.id) for c in cases]
        metafunc.parametrize(fixture, params)


@pytest.fixture(scope="session")
def bench_state(request: pytest.FixtureRequest) -> BenchState:
    return request.config._toolkit_bench  # type: ignore[attr-defined]


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    # Stable facts only: pytest-benchmark's --benchmark-compare warns when machine_info differs.
    machine_info["toolkit"] = {**toolkit_machine_info(), "versions": package_versions()}


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    state: BenchState = config._toolkit_bench  # type: ignore[attr-defined]
    results = [r for r in state.session.results if r.timed] if state.session else []
    written = state.finish()
    if not results:
        return
    tr = terminalreporter
    inference = [r for r in results if r.case.kind not in (TRAINING, TIME_TO_ACCURACY)]  # memory joins them
    training = [r for r in results if r.case.kind == TRAINING]
    for r in (r for r in results if r.case.kind == TIME_TO_ACCURACY):
        reached = "" if r.reached is None else f", reached {r.threshold}: {r.reached}"
        tr.write_line(f"time to accuracy: {r.case.spec} seed {r.seed}: {r.train_seconds / 60:.2f} min, test "
                      f"accuracy {r.test_accuracy:.4f}{reached}" + (" (reused run)" if r.reused else ""))
    if inference:
        _inference_summary(tr, inference, state.session.peaks)
    if training:
        _training_summary(tr, training)
    tr.write_line(
        f"load average at the end: {os.getloadavg()[0]:.2f} on {machine.cpu_count()} cores "
        "(timings taken while other work runs are noisy)"
    )
    for path in written:
        tr.write_line(f"results recorded in {path}")


def _inference_summary(tr, results, peaks) -> None:
    from toolkit.report.columns import BENCH_TABLE, columns_for
    from toolkit.report.join import rows_from_results

    tr.section("toolkit bench: one row per file x runtime x device x threads (geometric means across "
               "processes, 95% intervals)")
    columns = columns_for(BENCH_TABLE)
    cells = [[c.title for c in columns]]
    cells += [[c.text(r, None) for c in columns] for r in rows_from_results(results, peaks)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        tr.write_line("  ".join(cell.rjust(w) if c.align == "right" else cell.ljust(w)
                                for cell, w, c in zip(row, widths, columns, strict=True)))
    if peaks:
        fp32 = ", ".join(f"{t} thr {v['gflops']:.0f}" for t, v in peaks["fp32"].items())
        int8 = ", ".join(f"{t} thr {v['gops']:.0f}" for t, v in peaks["int8"].items())
        kernel = next(iter(peaks["fp32"].values())).get("blas_kernel")
        tr.write_line(
            f"measured peaks: numpy fp32 GEMM GFLOP/s: {fp32} (OpenBLAS kernel {kernel}); "
            f"ONNX Runtime int8 GEMM GOP/s: {int8}"
        )


def _training_summary(tr, results) -> None:
    tr.section("toolkit bench: training steps, images/s after warm-up (batch / p50 step time)")
    tr.write_line(f"{'spec':<28} {'precision':>9} {'batch':>6} {'img/s':>9} {'p50 ms':>9} {'p90 ms':>9} "
                  f"{'steps':>6} {'vs fp32':>8}")
    fp32 = {(r.case.spec, r.case.batch): r.stats.images_per_s for r in results if r.case.precision == "fp32"}
    for r in results:
        base = fp32.get((r.case.spec, r.case.batch))
        case, stats = r.case, r.stats
        ratio = f"{stats.images_per_s / base:.2f}x" if base else "-"
        tr.write_line(f"{case.spec:<28} {case.precision:>9} {case.batch:>6} {stats.images_per_s:>9,.0f} "
                      f"{stats.p50_ms:>9.1f} {stats.p90_ms:>9.1f} {stats.rounds:>6} {ratio:>8}")
