"""The timing engine on real runtime calls: statistics, output checks, GPU provider check, peaks,
and the `toolkit bench` command's exit codes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit import benchmark as engine
from toolkit import runtimes
from toolkit.cli import app
from toolkit.errors import DeviceUnavailableError, ParityError, UsageError

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


def _case(path: Path, *, batch: int = 1, threads: int = 1, trained: bool = False, **kw) -> engine.BenchCase:
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
    return engine.BenchCase(**{**base, **kw})


@pytest.fixture(scope="module")
def ctx(test_batch, tmp_path_factory) -> engine.BenchContext:
    images, _ = test_batch
    return engine.BenchContext(
        root=tmp_path_factory.mktemp("root"), images=images, inputs_source="real test images", seconds=0.05
    )


def test_engine_times_real_onnx_calls(tmp_path, ctx):
    path = _onnx_model(tmp_path / "tiny.onnx")
    for batch in (1, 32):
        result = engine.run_case(_case(path, batch=batch), ctx)
        assert result["timed"] and result["rounds"] >= 20
        assert (
            0
            < result["min_ms"]
            <= result["p50_ms"]
            <= result["p90_ms"]
            <= result["p99_ms"]
            <= result["max_ms"]
        )
        assert result["images_per_s"] == pytest.approx(batch / (result["p50_ms"] / 1e3))
        # Warm-up and timed calls were all checked outside the clock.
        assert result["check"]["calls_checked"] == result["rounds"] + result["warmup_calls"]
        assert result["id"] == f"DNN_1L_No_Dropout_Exp1-onnx-fp32-onnxruntime-cpu-b{batch}-t1"
        assert result["provider"] == "CPUExecutionProvider"
        assert result["versions"]["onnxruntime"]


def test_summarize_percentiles_from_raw_timings():
    stats = engine.summarize([i / 1000 for i in range(1, 101)], batch=4)  # 1..100 ms
    assert stats["rounds"] == 100
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["images_per_s"] == pytest.approx(4 / 0.0505)
    with pytest.raises(ValueError):
        engine.summarize([], batch=1)


def test_output_check_rejects_wrong_shape(tmp_path, ctx):
    path = _onnx_model(tmp_path / "nine.onnx", classes=9)
    with pytest.raises(ParityError, match=r"output shape \(1, 9\), expected \(1, 10\)") as err:
        engine.run_case(_case(path), ctx)
    assert err.value.exit_code == 5


def test_output_check_rejects_nan(tmp_path, ctx):
    path = _onnx_model(tmp_path / "nan.onnx", poison="nan")
    assert np.isnan(runtimes.load(path).run(ctx.images[:2])).all()  # the runtime really returns NaN
    with pytest.raises(engine.OutputCheckError, match="non-finite"):
        engine.run_case(_case(path, batch=8), ctx)


def test_output_check_rejects_wrong_classes(tmp_path, ctx):
    path = _onnx_model(tmp_path / "tiny.onnx")
    case = _case(path, batch=16, trained=True)
    predicted = np.argmax(runtimes.load(path).run(ctx.images[: engine.CHECK_IMAGES]), axis=1)
    ctx.references[case.spec] = predicted  # this runtime against its own output: passes
    assert engine.run_case(case, ctx)["check"]["top1_mismatches"] == 0
    ctx.references[case.spec] = (predicted + 1) % 10  # a reference it never agrees with: refused
    try:
        with pytest.raises(engine.OutputCheckError, match="top-1 disagrees with the reference"):
            engine.run_case(case, ctx)
    finally:
        del ctx.references[case.spec]


def test_gpu_check_rejects_a_cpu_session(tmp_path, ctx):
    import onnxruntime as ort

    path = _onnx_model(tmp_path / "tiny.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def factory(options):
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    nodes = engine.profiled_node_providers(factory, {"image": ctx.images[:4]})
    assert nodes and set(nodes) == {"CPUExecutionProvider"}  # read from a real ORT profile
    with pytest.raises(DeviceUnavailableError, match="not GPU") as err:
        engine.require_gpu_execution(session.get_providers(), nodes)
    assert err.value.exit_code == 6
    # A CUDA session with even one node on CPU is a fallback, also refused.
    with pytest.raises(DeviceUnavailableError, match="1 of 4 nodes ran on CPUExecutionProvider"):
        engine.require_gpu_execution(
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
        engine.run_case(case, ctx)


def test_matmul_peaks_are_measured():
    fp32 = engine.fp32_gemm_peak(1, n=256, seconds=0.05)
    int8 = engine.int8_gemm_peak(1, n=256, seconds=0.05)
    assert fp32["gflops"] > 0.5 and int8["gops"] > 0.5
    assert fp32["blas_threads"] == 1 and fp32["blas"]  # threadpoolctl says which BLAS ran
    peaks = {"fp32": {"1": fp32}, "int8": {"1": int8}}
    assert engine.peak_for(peaks, "dynamic", 1) == int8["gops"]
    assert engine.peak_for(peaks, "fp16", 1) == fp32["gflops"]
    assert engine.peak_for(peaks, "fp32", 2) is None


def test_option_parsing():
    assert engine.parse_batches(["1,256", "1"]) == [1, 256]
    assert engine.parse_threads(["1", "all"]) == sorted({1, runtimes.cpu_count()})
    assert engine.parse_devices("all") == ("cpu", "gpu")
    for bad in (
        lambda: engine.parse_batches(["x"]),
        lambda: engine.parse_threads(["0"]),
        lambda: engine.parse_devices("tpu"),
        lambda: engine.validate_filters(["nope"], None),
    ):
        with pytest.raises(UsageError):
            bad()


# ---------------------------------------------------------------- CLI


def test_bench_cli_usage_errors(tmp_path):
    result = runner.invoke(app, ["bench", "--artifacts", str(tmp_path), "--batch", "x"])
    assert result.exit_code == 2 and "batch sizes must be integers" in result.output
    result = runner.invoke(app, ["bench", "--artifacts", str(tmp_path), "--format", "onnx-fp64"])
    assert result.exit_code == 2 and "no format matches" in result.output
    result = runner.invoke(app, ["bench", "--artifacts", str(tmp_path)])
    assert result.exit_code == 4 and "nothing to benchmark" in result.output


def test_bench_cli_runs_and_records(benched_root):
    root, output = benched_root
    files = sorted((root / "bench").glob("*-cli-*.json"))
    assert files, output
    doc = json.loads(files[-1].read_text())
    ids = {r["id"] for r in doc["results"]}
    assert "DNN_2L_Dropout_Exp2-onnx-fp32-onnxruntime-cpu-b64-t1" in ids
    assert "DNN_2L_Dropout_Exp2-keras-fp32-keras-cpu-b1-t1" in ids  # ran in a TF subprocess at 1 thread
    keras = next(r for r in doc["results"] if r["runtime"] == "keras")
    assert keras["tf_threads"] == 1 and keras["check"]["top1_checked"]
    assert doc["peaks"]["fp32"] and doc["peaks"]["int8"]
    assert "Benchmark (p50/p90/p99" in output


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
    from toolkit import parity
    from toolkit.data import load
    from toolkit.export import registry
    from toolkit.export.pipeline import export_spec

    dataset = load()
    outcome = export_spec(name, [registry.FORMATS[k] for k in keys], root=root, dataset=dataset)
    assert not outcome.failed, outcome.failed
    parity.check_spec(name, root=root, keys=list(keys), dataset=dataset)


def make_benched_root(tmp_path_factory, trained_root: Path) -> tuple[Path, str]:
    """A copy of the 1-epoch DNN_2L_Dropout_Exp2 with two exports, benchmarked once by the CLI
    (ONNX Runtime in-process, Keras in its TensorFlow subprocess). Shared by test_report.py."""
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
        ]
        for key in ("keras-fp32", *BENCH_FORMATS):
            args += ["--format", key]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        _BENCHED["root"] = (root, result.output)
    return _BENCHED["root"]


@pytest.fixture(scope="module")
def benched_root(tmp_path_factory, trained_root) -> tuple[Path, str]:
    return make_benched_root(tmp_path_factory, trained_root)
