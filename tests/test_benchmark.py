"""The timing engine on real runtime calls: statistics, output checks, GPU provider check, peaks,
and the `toolkit bench` command's exit codes."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit import runtimes
from toolkit.benchmark import context, gpu, inference, peaks, plan
from toolkit.benchmark.plan import BenchCase
from toolkit.benchmark.timing import TimingStats
from toolkit.cli.app import app
from toolkit.core import machine
from toolkit.core.errors import ContractError, DeviceUnavailableError, ToolkitError, UsageError

runner = CliRunner()


def _onnx_model(path: Path, *, classes: int = 10, poison: str | None = None) -> Path:
    """A real ONNX classifier in the model contract: image [N,28,28,1] -> softmax [N,classes].

    poison="nan" takes Sqrt of a negative tensor, so ONNX Runtime itself returns NaN.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(784, classes)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 784], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["image", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    last = "logits"
    if poison == "nan":
        minus = numpy_helper.from_array(np.array(-1.0, dtype=np.float32), "minus")
        nodes += [
            helper.make_node("Abs", ["logits"], ["pos"]),
            helper.make_node("Mul", ["pos", "minus"], ["neg"]),
            helper.make_node("Sqrt", ["neg"], ["nan"]),
        ]
        last, extra = "nan", [minus]
    else:
        extra = []
    nodes.append(helper.make_node("Softmax", [last], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 28, 28, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        [weights, shape, *extra],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _case(path: Path, *, batch: int = 1, threads: int = 1, trained: bool = False, **kw) -> BenchCase:
    base = dict(
        spec="DNN_1L_No_Dropout_Exp1",
        key="onnx-fp32",
        format="onnx",
        precision="fp32",
        runtime="onnxruntime",
        device="cpu",
        batch=batch,
        threads=threads,
        path=str(path),
        size_bytes=path.stat().st_size,
        sha256=None,
        parity="unknown",
        trained=trained,
    )
    return BenchCase(**{**base, **kw})


@pytest.fixture(scope="module")
def ctx(test_batch, tmp_path_factory) -> context.BenchContext:
    images, _ = test_batch
    return context.BenchContext(
        root=tmp_path_factory.mktemp("root"), images=images, inputs_source="real test images", seconds=0.05
    )


def test_engine_times_real_onnx_calls(tmp_path, ctx):
    path = _onnx_model(tmp_path / "tiny.onnx")
    for batch in (1, 32):
        result = inference.run_case(_case(path, batch=batch), ctx)
        stats = result.stats
        assert result.timed and stats.rounds >= 20
        assert 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
        assert stats.images_per_s == pytest.approx(batch / (stats.p50_ms / 1e3))
        # Warm-up and timed calls were all checked outside the clock.
        assert result.check["calls_checked"] == stats.rounds + result.warmup_calls
        assert result.id == f"DNN_1L_No_Dropout_Exp1-onnx-fp32-onnxruntime-cpu-b{batch}-t1"
        assert result.notes["provider"] == "CPUExecutionProvider"
        assert result.versions["onnxruntime"]
        # The record written to disk reads back as the same result.
        flat = result.to_dict()
        assert flat["p50_ms"] == stats.p50_ms and flat["kind"] == "inference"
        from toolkit.benchmark.inference_results import InferenceResult

        assert InferenceResult.from_dict(flat, path=tmp_path / "x.json") == result


def test_summarize_percentiles_from_raw_timings():
    stats = TimingStats.from_times([i / 1000 for i in range(1, 101)], batch=4)  # 1..100 ms
    assert stats.rounds == 100
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.images_per_s == pytest.approx(4 / 0.0505)
    with pytest.raises(ToolkitError, match="recorded no calls"):
        TimingStats.from_times([], batch=1)


def test_contract_mismatch_is_refused_at_load(tmp_path, ctx):
    path = _onnx_model(tmp_path / "nine.onnx", classes=9)
    with pytest.raises(ContractError, match=r"output 'probabilities' float32 \[N,9\], expected "
                                            r"'probabilities' float32 \[N,10\]") as err:
        inference.run_case(_case(path), ctx)
    assert err.value.exit_code == 4


def test_a_failing_explicit_data_source_is_an_error(tmp_path, monkeypatch):
    """Only a host with no dataset at all times on noise; a named source that fails stops."""
    from toolkit.core.errors import DataError

    (tmp_path / "fmnist").mkdir()
    monkeypatch.setenv("TOOLKIT_DATA_DIR", str(tmp_path / "fmnist"))
    with pytest.raises(DataError, match="not found"):
        context.BenchContext.create(tmp_path / "root")
    from toolkit.benchmark.fallback import calibration_images

    with pytest.raises(DataError, match="not found"):
        calibration_images()


def test_output_check_rejects_nan(tmp_path, ctx):
    path = _onnx_model(tmp_path / "nan.onnx", poison="nan")
    assert np.isnan(runtimes.load(path).run(ctx.images[:2])).all()  # the runtime really returns NaN
    with pytest.raises(inference.OutputCheckError, match="non-finite"):
        inference.run_case(_case(path, batch=8), ctx)


def test_output_check_rejects_wrong_classes(tmp_path, ctx):
    path = _onnx_model(tmp_path / "tiny.onnx")
    case = _case(path, batch=16, trained=True)
    predicted = np.argmax(runtimes.load(path).run(ctx.images[: context.CHECK_IMAGES]), axis=1)
    ctx.references[case.spec] = predicted  # this runtime against its own output: passes
    assert inference.run_case(case, ctx).check["top1_mismatches"] == 0
    ctx.references[case.spec] = (predicted + 1) % 10  # a reference it never agrees with: refused
    try:
        with pytest.raises(inference.OutputCheckError, match="top-1 disagrees with the reference"):
            inference.run_case(case, ctx)
    finally:
        del ctx.references[case.spec]


def test_gpu_check_rejects_a_cpu_session(tmp_path, ctx):
    import onnxruntime as ort

    path = _onnx_model(tmp_path / "tiny.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def factory(options):
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    nodes = gpu.profiled_node_providers(factory, {"image": ctx.images[:4]})
    assert nodes and set(nodes) == {"CPUExecutionProvider"}  # read from a real ORT profile
    with pytest.raises(DeviceUnavailableError, match="not GPU") as err:
        gpu.require_gpu_execution(session.get_providers(), nodes)
    assert err.value.exit_code == 6
    # A CUDA session with even one node on CPU is a fallback, also refused.
    with pytest.raises(DeviceUnavailableError, match="1 of 4 nodes ran on CPUExecutionProvider"):
        gpu.require_gpu_execution(
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            Counter(CUDAExecutionProvider=3, CPUExecutionProvider=1),
        )


def test_gpu_cases_are_planned_but_refused_without_cuda(tmp_path, ctx):
    path = _onnx_model(tmp_path / "tiny.onnx")
    case = _case(path, runtime="onnxruntime-cuda", device="gpu", io="iobind")
    assert case.id.endswith("-onnxruntime-cuda-gpu-iobind-b1-t1")
    if runtimes.RUNTIMES["onnxruntime-cuda"].available():
        pytest.skip("CUDA is available here: the refusal path cannot be shown")
    with pytest.raises(DeviceUnavailableError, match="no CUDA execution provider"):
        inference.run_case(case, ctx)


def test_matmul_peaks_are_measured():
    fp32 = peaks.fp32_gemm_peak(1, n=256, seconds=0.05)
    int8 = peaks.int8_gemm_peak(1, n=256, seconds=0.05)
    assert fp32["gflops"] > 0.5 and int8["gops"] > 0.5
    assert fp32["blas_threads"] == 1 and fp32["blas"]  # threadpoolctl says which BLAS ran
    measured = {"fp32": {"1": fp32}, "int8": {"1": int8}}
    assert peaks.peak_for(measured, "dynamic", 1) == int8["gops"]
    assert peaks.peak_for(measured, "fp16", 1) == fp32["gflops"]
    assert peaks.peak_for(measured, "fp32", 2) is None


def test_option_parsing():
    assert plan.parse_batches(["1,256", "1"]) == [1, 256]
    assert plan.parse_threads(["1", "all"]) == sorted({1, machine.cpu_count()})
    assert plan.parse_devices("all") == ("cpu", "gpu")
    for bad in (
        lambda: plan.parse_batches(["x"]),
        lambda: plan.parse_threads(["0"]),
        lambda: plan.parse_devices("tpu"),
        lambda: plan.validate_filters(["nope"], None),
    ):
        with pytest.raises(UsageError):
            bad()


# ---------------------------------------------------------------- driver and workers


def _worker_pids() -> list[int]:
    """This process's benchmark workers: children running `python -m toolkit.benchmark.worker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"toolkit.benchmark.worker" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_a_worker_killed_midway_keeps_what_it_measured(tmp_path, monkeypatch):
    from toolkit.benchmark import placement
    from toolkit.benchmark.driver import BenchRequest, BenchSession, run_benchmarks
    from toolkit.benchmark.inference_results import read_runs
    from toolkit.benchmark.worker import WorkerDied

    path = _onnx_model(tmp_path / "tiny.onnx")
    cases = [_case(path, batch=b) for b in (1, 2, 3)]
    # Place them as Keras cases are placed: one worker process runs the three in turn.
    one_worker = placement.Placement(placement.WORKER, group=("w",), label="test worker")
    monkeypatch.setattr(inference.InferenceKind, "place", lambda self, case, env: one_worker)
    session = BenchSession(BenchRequest(root=tmp_path / "root", seconds=0.5, threads=["1"]))
    killed: list[int] = []

    def kill_after_first_result(outcome) -> None:
        if outcome.result is not None and not killed:
            for pid in _worker_pids():  # kill -9, as an OOM killer or a crash would
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    outcomes = run_benchmarks(session, cases=cases, timing=False, on_done=kill_after_first_result)
    written = session.close()
    assert killed and [o.case for o in outcomes] == cases
    assert outcomes[0].result is not None and outcomes[0].result.timed
    for outcome in outcomes[1:]:
        assert isinstance(outcome.error, WorkerDied) and outcome.error.exit_code == 7
        assert "test worker was killed by signal 9 after 1 of 3 cases" in outcome.error.message
    (run,) = read_runs(tmp_path / "root")
    assert [r.id for r in run.results] == [cases[0].id] and run.path == written[0]


# ---------------------------------------------------------------- CLI


def test_bench_cli_usage_errors(tmp_path):
    result = runner.invoke(app, ["bench", "--artifacts", str(tmp_path), "--batch", "x"])
    assert result.exit_code == 2 and "batch sizes must be integers" in result.output
    result = runner.invoke(app, ["bench", "--artifacts", str(tmp_path), "--format", "onnx-fp64"])
    assert result.exit_code == 2 and "no format matches" in result.output
    result = runner.invoke(app, ["bench", "--artifacts", str(tmp_path), "--repeats", "0"])
    assert result.exit_code == 2 and "--repeats" in result.output
    result = runner.invoke(app, ["bench", "--artifacts", str(tmp_path)])
    assert result.exit_code == 4 and "nothing to benchmark" in result.output


def test_bench_cli_runs_and_records(benched_root):
    root, output = benched_root
    # One naming scheme: <time>-<kind>-<source>-<pid>.json.
    files = sorted((root / "bench").glob("*-inference-cli-*.json"))
    assert files, output
    doc = json.loads(files[0].read_text())  # the first run: every format, two repeats, no memory
    ids = {r["id"] for r in doc["results"]}
    assert "DNN_2L_Dropout_Exp2-onnx-fp32-onnxruntime-cpu-b64-t1" in ids
    assert "DNN_2L_Dropout_Exp2-onnx-fp32-onnxruntime-cpu-b64-t1-r1" in ids  # its second process
    assert "DNN_2L_Dropout_Exp2-keras-fp32-keras-cpu-b1-t1" in ids  # ran in a TF subprocess at 1 thread
    keras = [r for r in doc["results"] if r["runtime"] == "keras"]
    assert all(r["tf_threads"] == 1 and r["check"]["top1_checked"] for r in keras)
    assert len({r["pid"] for r in keras}) == 2  # one TensorFlow worker per repeat
    assert doc["peaks"]["fp32"] and doc["peaks"]["int8"]
    assert doc["schema_version"] == 2 and doc["kind"] == "inference"
    assert "Benchmark: one row per file x runtime x device x threads" in output
    memory = json.loads(next((root / "bench").glob("*-memory-cli-*.json")).read_text())
    assert memory["kind"] == "memory" and memory["schema_version"] == 1
    assert {r["runtime"] for r in memory["results"]} == {"onnxruntime"} and len(memory["results"]) == 4
    assert all(r["peaks_mb"]["serving_b1"] > r["peaks_mb"]["python_numpy"] > 0 for r in memory["results"])
    # The second run (memory) checked its p50s against the first run's intervals.
    assert "p50s of this run" in _BENCHED["memory_output"] and "fall inside the 95% intervals" in \
        _BENCHED["memory_output"]


def test_bench_cli_gpu_unavailable(benched_root):
    if runtimes.RUNTIMES["onnxruntime-cuda"].available():
        pytest.skip("CUDA is available here")
    root, _ = benched_root
    result = runner.invoke(app, ["bench", "--artifacts", str(root), "--device", "gpu", "--seconds", "0.05"])
    assert result.exit_code == 6 and "no CUDA provider" in result.output


# ---------------------------------------------------------------- a real benchmarked root

_BENCHED: dict[str, tuple[Path, str]] = {}
BENCH_SPEC = "DNN_2L_Dropout_Exp2"
BENCH_FORMATS = ("onnx-fp32", "onnx-dynamic")


def export_for_tests(root: Path, name: str, keys: tuple[str, ...]) -> None:
    """Export `keys` of a trained spec and check their parity, as `toolkit export` does."""
    from toolkit.core.data import load
    from toolkit.export import parity_rows, registry
    from toolkit.export.pipeline import export_spec

    dataset = load()
    outcome = export_spec(name, [registry.FORMATS[k] for k in keys], root=root, dataset=dataset)
    assert not outcome.failed, outcome.failed
    parity_rows.check_spec(name, root=root, keys=list(keys), dataset=dataset)


def make_benched_root(tmp_path_factory, trained_root: Path) -> tuple[Path, str]:
    """A copy of the 1-epoch DNN_2L_Dropout_Exp2 with two exports, benchmarked by the CLI: every
    case in two processes (ONNX Runtime here and in a worker, Keras in TensorFlow workers), then
    the ONNX files again with their memory cases. Shared by test_report.py."""
    import shutil

    if "root" not in _BENCHED:
        root = tmp_path_factory.mktemp("benched")
        shutil.copytree(trained_root / BENCH_SPEC, root / BENCH_SPEC)
        export_for_tests(root, BENCH_SPEC, BENCH_FORMATS)
        args = [
            "bench",
            "--artifacts",
            str(root),
            "--exp",
            BENCH_SPEC,
            "--device",
            "cpu",
            "--seconds",
            "0.1",
            "--batch",
            "1,64",
            "--threads",
            "1",
            "--runtime",
            "onnxruntime",
            "--runtime",
            "keras",
            "--repeats",
            "2",
            "--no-memory",
        ]
        for key in ("keras-fp32", *BENCH_FORMATS):
            args += ["--format", key]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        # Then the memory cases of the ONNX files (Keras would import TensorFlow in every child),
        # with their inference cases measured again: the interval check of a second run.
        memory = ["bench", "--artifacts", str(root), "--exp", BENCH_SPEC, "--device", "cpu",
                  "--seconds", "0.1", "--batch", "1,64", "--threads", "1", "--runtime", "onnxruntime",
                  "--repeats", "2",
                  *(arg for key in BENCH_FORMATS for arg in ("--format", key))]
        second = runner.invoke(app, memory)
        assert second.exit_code == 0, second.output
        _BENCHED["root"] = (root, result.output)
        _BENCHED["memory_output"] = second.output
    return _BENCHED["root"]


@pytest.fixture(scope="module")
def benched_root(tmp_path_factory, trained_root) -> tuple[Path, str]:
    return make_benched_root(tmp_path_factory, trained_root)


# ---------------------------------------------------------------- training-step cases


@pytest.mark.slow
def test_training_case_times_real_steps_and_round_trips_its_record(tmp_path):
    from toolkit.benchmark import inference_results as results
    from toolkit.benchmark import training
    from toolkit.benchmark.timing import own_timer

    (case,) = training.plan_training_cases(["DNN_1L_No_Dropout_Exp1"], precisions=["off"], batches=["32"],
                                           threads=2)
    assert case.kind == "training"
    assert case.id == "DNN_1L_No_Dropout_Exp1-train-fp32-keras-train-cpu-training-b32-t2"
    result = training.run_training_case(case, timer=own_timer, seconds=0.05)
    assert result.timed and result.stats.rounds >= 10 and result.warmup_steps == training.WARMUP_STEPS + 1
    assert result.check["variables_float32"] and result.check["steps_checked"] == result.stats.rounds + 4
    assert result.stats.images_per_s == pytest.approx(32 / (result.stats.p50_ms / 1e3))
    assert result.policy == "float32" and result.params == 50_890
    path = training.write_training_run(tmp_path, training.TrainingRun(source="pytest", results=[result]))
    doc = json.loads(path.read_text())
    assert doc["kind"] == "training" and doc["schema_version"] == 1 and "-training-" in path.name
    (run,) = training.read_training_runs(tmp_path)
    assert [r.to_dict() for r in run.results] == [result.to_dict()]
    assert results.read_runs(tmp_path) == []  # the inference reader skips training files


def test_training_plan_options():
    from toolkit.benchmark import training
    from toolkit.core.errors import UsageError

    cases = training.plan_training_cases(["CNN_1L_Dropout_Exp6"], precisions=["off,bf16"],
                                         batches=["spec,128", "512"], threads=2)
    expected = [("fp32", 512), ("bf16", 512), ("fp32", 128), ("bf16", 128)]
    assert [(c.precision, c.batch) for c in cases] == expected
    with pytest.raises(UsageError, match="training precision 'auto'"):
        training.plan_training_cases(None, precisions=["auto"], threads=2)
    with pytest.raises(UsageError, match="integers or 'spec'"):
        training.plan_training_cases(None, batches=["big"], threads=2)


def test_a_training_case_of_a_type_the_machine_lacks_is_skipped(monkeypatch):
    from toolkit.benchmark import kinds, training
    from toolkit.training import precision

    monkeypatch.setattr(precision, "detect", lambda: precision.Capabilities(frozenset({"avx2"})))
    (case,) = training.plan_training_cases(["DNN_1L_No_Dropout_Exp1"], precisions=["bf16"], batches=["32"],
                                           threads=1)

    class Env:
        cuda, tensorflow, keras_threads = False, True, 1

    placement = kinds.kind_of(case).place(case, Env())
    assert placement.where == kinds.SKIP and "needs a CPU with avx512_bf16 or amx_bf16" in placement.reason


# ---------------------------------------------------------------- repeats and memory


def test_memory_child_measures_one_runtime_in_a_fresh_process(tmp_path, ctx):
    """Peak RSS after each stage of a fresh child that imports only ONNX Runtime, load time, first
    call and cold start; the stages only grow, and the baselines are the first two readings."""
    from toolkit.benchmark import memory

    path = _onnx_model(tmp_path / "tiny.onnx")
    case = _case(path, batch=16, kind="memory")
    assert case.id.endswith("-onnxruntime-cpu-memory-b16-t1")
    result = memory.measure(case, ctx.images[:32])
    assert result.pid != os.getpid() and result.unavailable is None
    assert result.imported["onnxruntime"] and not result.imported["tensorflow"]
    assert not result.imported["ai_edge_litert"]
    peaks = [result.peaks_mb[s] for s in ("python_numpy", "runtime_imported", "loaded", "serving_b1",
                                          "serving_batch")]
    assert 5 < peaks[0] < peaks[1] and peaks == sorted(peaks)  # numpy, then ORT: a real difference
    ms = result.ms
    assert ms["load"] > 0 and ms["first_call"] > 0 and ms["cold_start"] > ms["load"] + ms["first_call"]
    from toolkit.benchmark.memory import MemoryResult

    assert MemoryResult.from_dict(result.to_dict(), path=tmp_path / "x.json") == result


def test_memory_that_cannot_be_read_is_unavailable_never_zero(monkeypatch, tmp_path):
    import builtins
    import sys

    from toolkit import report
    from toolkit.benchmark import memchild
    from toolkit.benchmark.memory import MemoryResult
    from toolkit.report import join as report_join

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise OSError("no /proc here")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    monkeypatch.setitem(sys.modules, "resource", None)  # as on a platform without it
    value, why = memchild.peak_rss_mb()
    assert value is None and "no /proc/self/status and no resource module" in why
    (tmp_path / "x.onnx").touch()
    case = _case(tmp_path / "x.onnx", kind="memory")
    result = MemoryResult(case=case, peaks_mb=dict.fromkeys(memchild.STAGES), unavailable=why,
                          ms={"load": 12.0, "first_call": 1.0})
    row = report.Row(spec=case.spec, key=case.key, format="onnx", precision="fp32", runtime=case.runtime,
                     device="cpu", threads=1, accuracy=None, keras_accuracy=None, parity="pass", size_mb=1,
                     params=1, mflops=1)
    report_join._attach_memory(row, [result])
    from toolkit.report.columns import BY_KEY

    assert BY_KEY["rss_b1"].text(row, None) == "-" and BY_KEY["load"].text(row, None) == "12"
    assert row.memory_note == f"memory unavailable: {why}"


@pytest.mark.slow  # starts worker processes
def test_repeats_run_in_separate_processes_and_give_intervals(tmp_path):
    from toolkit.benchmark.driver import BenchRequest, BenchSession, run_benchmarks
    from toolkit.benchmark.inference_results import interval_check, read_runs

    path = _onnx_model(tmp_path / "tiny.onnx")
    case = _case(path, batch=1)
    runs = []
    for _ in range(2):  # two back-to-back runs, as the README's interval check
        session = BenchSession(BenchRequest(root=tmp_path / "root", seconds=0.2, threads=["1"], repeats=3))
        outcomes = run_benchmarks(session, cases=[case], timing=False)
        assert len(outcomes) == 1  # without timing only repeat 0 runs (a check run)
        outcomes = run_benchmarks(session, cases=[case])
        assert [o.case.repeat for o in outcomes] == [0, 1, 2] and all(o.result for o in outcomes)
        pids = {o.result.pid for o in outcomes}
        assert len(pids) == 3 and os.getpid() in pids  # repeat 0 here, 1 and 2 in workers
        runs.append(session.close()[0])
    first, second = read_runs(tmp_path / "root")
    (group,) = first.groups
    assert group.processes == 3 and group.case.repeat == 0 and group.p50_interval is not None
    assert group.p50_interval.contains(group.p50_ms)
    check = interval_check(first, second.groups)
    assert check.compared == 1 and check.inside + len(check.outside) == 1
