"""OpenVINO: the `openvino` (float32 forced) and `openvino-bf16` (the CPU plugin's default) runtimes,
their parity rows, the NNCF `openvino-int8` export, per-runtime peaks, the benchmark and report
rows that state what they computed, `toolkit serve --runtime`, the pick record's schema 2, and
the one-line refusals (missing package, unsupported device, a file OpenVINO cannot compile).

OpenVINO comes from the `openvino` extra; where it is missing the tests that run it skip and say
so, and the refusal is tested instead (in a child process where `import openvino` fails).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.cli.app import app

runner = CliRunner()
SPEC = "CNN_1L_Dropout_Exp6"  # a convolution and two fully connected layers: both kernel families
HAS_OPENVINO = all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO,
                                    reason="openvino/nncf are not installed (pip install -e '.[openvino]')")
BLOCK_OPENVINO = "import sys; sys.modules['openvino'] = None; "  # as if openvino were not installed


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def bf16_here() -> bool:
    from toolkit import runtimes

    return runtimes.get_runtime("openvino-bf16").available()


def run_cli_without_openvino(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    code = BLOCK_OPENVINO + "from toolkit.cli.app import main; sys.argv = ['toolkit', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=900)


@pytest.fixture(scope="module")
def ov_root(trained_root, tmp_path_factory):
    """SPEC's ONNX fp32 and int8 files and its NNCF openvino-int8 file, with parity (every row)."""
    root = tmp_path_factory.mktemp("openvino") / "artifacts"
    shutil.copytree(trained_root / SPEC, root / SPEC, ignore=shutil.ignore_patterns("runs"))
    onnx = invoke("export", "--exp", SPEC, "--format", "onnx", "--precision", "fp32,int8",
                  "--artifacts", root)
    ir = invoke("export", "--exp", SPEC, "--format", "openvino", "--precision", "int8", "--artifacts", root)
    return root, onnx, ir


def entries(root: Path) -> dict:
    doc = json.loads((root / SPEC / "exports.json").read_text())
    return {e["key"]: e for e in doc["exports"]}


# ---------------------------------------------------------------- names, tolerances, peaks (no model)


def test_row_names_state_the_runtime_and_what_it_computes():
    from toolkit.export.registry import FORMATS, row_name

    assert row_name("onnx-fp32", "openvino", "fp32") == "onnx-fp32@openvino"
    assert row_name("onnx-fp32", "openvino-bf16", "bf16") == "onnx-fp32@openvino-bf16"
    assert row_name("onnx-fp16", "openvino", "fp32") == "onnx-fp16@openvino-fp32"
    assert row_name("onnx-int8", "openvino", "int8+fp32") == "onnx-int8@openvino-int8+fp32"
    assert row_name("openvino-int8", "openvino", "int8") == "openvino-int8"  # its primary row
    assert row_name("openvino-int8", "openvino-bf16", "int8") == "openvino-int8@openvino-bf16"
    # The QDQ file does not compile at OpenVINO's bf16 default: only its float32 row is listed.
    assert FORMATS["onnx-int8"].runtimes == ("onnxruntime", "onnxruntime-cuda", "openvino")
    assert FORMATS["openvino-int8"].runtimes == ("openvino", "openvino-bf16")
    assert FORMATS["openvino-int8"].filename == "model.int8.xml" and FORMATS["openvino-int8"].calibrated


def test_a_float32_file_computed_in_bf16_is_judged_by_the_bf16_tolerance():
    from toolkit.export.parity import BF16, QUANTIZED, TOLERANCES, tolerance_of

    assert tolerance_of("fp32", "bf16") is BF16 and tolerance_of("fp32", None) is TOLERANCES["fp32"]
    assert tolerance_of("fp32", "int8+fp32") is QUANTIZED
    assert tolerance_of("fp16", "bf16") is QUANTIZED  # a quantized file keeps its own, looser, bound
    # bf16's bounds sit between float32's and int8's.
    assert TOLERANCES["fp32"].min_agreement > BF16.min_agreement > QUANTIZED.min_agreement
    assert BF16.max_accuracy_drop_pp < QUANTIZED.max_accuracy_drop_pp and BF16.max_abs_diff == 0.1


def test_each_row_is_judged_by_its_own_runtimes_peak():
    from toolkit.benchmark.peaks import peak_for, peak_kind

    assert peak_kind("openvino-bf16", "bf16") == "openvino-bf16"
    assert peak_kind("openvino", "int8+fp32") == "openvino-int8"
    assert peak_kind("openvino", "fp32") == "openvino-fp32"
    assert peak_kind("onnxruntime", "fp32") == "fp32_ort" and peak_kind("onnxruntime", "dynamic") == "int8"
    assert peak_kind("litert", "fp16") == "fp32" and peak_kind("litert", "int8io") == "int8"
    measured = {"openvino-bf16": {"1": {"gflops": 500.0}}, "fp32_ort": {"1": {"gflops": 60.0}}}
    assert peak_for(measured, "fp32", 1, runtime="openvino-bf16", computes="bf16") == 500.0
    assert peak_for(measured, "fp32", 1, runtime="onnxruntime") == 60.0
    assert peak_for(measured, "fp32", 1, runtime="openvino") is None  # not measured: no share shown


@needs_openvino
def test_openvino_matmul_peaks_run_the_precision_they_are_named_for():
    from toolkit.benchmark.peaks import openvino_gemm_peak

    int8 = openvino_gemm_peak("int8", 1, n=256, seconds=0.05)
    fp32 = openvino_gemm_peak("fp32", 1, n=256, seconds=0.05)
    assert int8["gops"] > 0 and int8["computes"] == "int8" and int8["primitives"]
    assert fp32["gflops"] > 0 and fp32["computes"] == "fp32"
    if bf16_here():
        bf16 = openvino_gemm_peak("bf16", 1, n=256, seconds=0.05)
        assert bf16["computes"] == "bf16" and any(i.startswith(("AMX", "AVX-512")) for i in bf16["isa"])


def test_pick_record_round_trips_the_runtime_and_precision_and_reads_version_1(tmp_path):
    from toolkit.core.pick_record import FILE, PickedFile, PickRecord, SpecPick, read_picks, write_picks

    settings = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1}
    picked = PickedFile(spec=SPEC, key="onnx-fp32", format="onnx", precision="fp32", runtime="openvino-bf16",
                        device="cpu", threads=2, path="export/model.fp32.onnx", sha256="ab" * 32,
                        accuracy=0.92, p50_ms=0.4, size_mb=44.3, computes="bf16",
                        row="onnx-fp32@openvino-bf16", settings=settings)
    write_picks(tmp_path, PickRecord({}, "rule", "text", picked, {SPEC: SpecPick(SPEC, {}, "rule", "why",
                                                                                   [picked])}))
    assert json.loads((tmp_path / FILE).read_text())["schema_version"] == 2
    back = read_picks(tmp_path)
    assert back.pick == picked and back.specs[SPEC].candidates == [picked] and picked.servable
    # A version-1 record (no computes, row or settings): the file's own precision on its primary row.
    old = {"schema_version": 1, "budget": {}, "rule": "r", "pick_text": "t", "pick": None, "specs": {SPEC: {
        "spec": SPEC, "budget": {}, "rule": "r", "reason": "why", "candidates": [
            {"spec": SPEC, "key": "tflite-int8", "format": "tflite", "precision": "int8", "runtime": "litert",
             "device": "cpu", "threads": 1, "path": "export/model.int8.tflite", "sha256": "cd" * 32}]}}}
    (tmp_path / FILE).write_text(json.dumps(old))
    (candidate,) = read_picks(tmp_path).specs[SPEC].candidates
    assert (candidate.computes, candidate.row, candidate.settings) == ("int8", "tflite-int8", None)
    assert candidate.servable


# ---------------------------------------------------------------- the runtime on real files


@needs_openvino
def test_runtime_runs_an_onnx_file_at_both_precisions_and_says_what_it_computes(ov_root, test_batch):
    from toolkit import runtimes

    root, onnx, _ = ov_root
    assert onnx.exit_code in (0, 5), onnx.output
    path = root / SPEC / "export" / "model.fp32.onnx"
    images, _ = test_batch
    reference = runtimes.load(path, "onnxruntime").run(images)
    f32 = runtimes.load(path, "openvino", threads=1)
    out = f32.run(images)
    assert out.shape == (len(images), 10) and f32.computes == "fp32"
    assert np.abs(out - reference).max() < 1e-4  # float32 forced: the same numbers as ONNX Runtime
    facts = f32.run_facts()
    assert facts["openvino"]["INFERENCE_PRECISION_HINT"] == "f32" and facts["openvino"]["NUM_STREAMS"] == 1
    assert facts["openvino"]["INFERENCE_NUM_THREADS"] == 1 and "synchronous" in facts["openvino"]["inference"]
    assert set(facts["primitives"]) == {"Convolution", "FullyConnected"}
    assert not any(k.startswith("undef") for ks in facts["primitives"].values() for k in ks)  # after a call
    if not bf16_here():
        with pytest.raises(runtimes.base.DeviceUnavailableError, match="native bf16"):
            runtimes.load(path, "openvino-bf16")
        return
    bf16 = runtimes.load(path, "openvino-bf16", threads=1)
    out16 = bf16.run(images)
    assert bf16.computes == "bf16" and bf16.run_facts()["openvino"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert "bf16" in bf16.provider and {"AMX-BF16", "AVX-512"} & set(bf16.run_facts()["isa"])
    # bf16 rounding: close, not equal, and the classes all but agree.
    assert 1e-4 < np.abs(out16 - reference).max() < 0.1
    assert np.mean(out16.argmax(1) == reference.argmax(1)) >= 0.98


@needs_openvino
def test_parity_rows_at_both_precisions(ov_root):
    from toolkit.export.parity import BF16

    root, onnx, _ = ov_root
    rows = entries(root)["onnx-fp32"]["rows"]
    parity = {r["row"]: r for r in json.loads((root / SPEC / "parity.json").read_text())["exports"]}
    f32 = rows["onnx-fp32@openvino"]
    assert f32["runtime"] == "openvino" and f32["computes"] == "fp32" and f32["status"] == "pass"
    assert f32["images"] == 10_000 and f32["differing_from_primary"] <= 2 and f32["mcnemar_p"] is not None
    assert parity["onnx-fp32@openvino"]["tolerance"]["max_abs_diff"] == 1e-4  # judged as float32
    if not bf16_here():
        assert "onnx-fp32@openvino-bf16 skipped" in " ".join(onnx.output.split())
        return
    bf16 = parity["onnx-fp32@openvino-bf16"]
    assert (bf16["runtime"], bf16["computes"], bf16["primary_row"]) == ("openvino-bf16", "bf16", "onnx-fp32")
    assert bf16["tolerance"] == {"min_agreement": BF16.min_agreement, "max_abs_diff": BF16.max_abs_diff,
                                 "max_accuracy_drop_pp": BF16.max_accuracy_drop_pp}
    assert bf16["max_abs_diff"] > 1e-4  # it really computed in bf16 ...
    assert bf16["status"] == "pass", bf16["failures"]  # ... within bf16's bounds
    low, high = bf16["accuracy_ci"]
    assert low <= bf16["test_accuracy"] <= high
    assert len(np.load(root / SPEC / bf16["predictions"]["file"])) == 10_000
    assert rows["onnx-fp32@openvino-bf16"]["computes"] == "bf16"
    for name in ("onnx-fp32", "onnx-fp32@openvino", "onnx-fp32@openvino-bf16"):
        assert name in onnx.output
    # The QDQ int8 file runs on OpenVINO with float32 forced, and says which parts are int8.
    int8 = entries(root)["onnx-int8"]["rows"]
    (name,) = [n for n in int8 if n.startswith("onnx-int8@openvino")]
    computes = int8[name]["computes"]
    assert computes.startswith("int8") and name == f"onnx-int8@openvino-{computes}"


@needs_openvino
def test_nncf_int8_export_and_its_parity(ov_root, tmp_path):
    from toolkit import runtimes
    from toolkit.core import artifacts
    from toolkit.core.errors import ArtifactError

    root, _, ir = ov_root
    assert ir.exit_code in (0, 5), ir.output  # 5: the 1-epoch model's int8 agreement may fall short
    entry = entries(root)["openvino-int8"]
    assert entry["status"] == "exported" and entry["calibration"] == {"size": 1000, "seed": 0,
                                                                     "source": "training images"}
    assert [f["path"] for f in entry["files"]] == ["export/model.int8.xml", "export/model.int8.bin"]
    assert all(f["sha256"] == artifacts.sha256_file(root / SPEC / f["path"]) for f in entry["files"])
    assert entry["size_bytes"] == sum(f["size_bytes"] for f in entry["files"])
    assert entry["fake_quantize"] > 0 and entry["settings"]["tools"]["nncf"] != "not installed"
    assert entry["parity"]["images"] == 10_000 and entry["parity"]["mcnemar_p"] is not None
    assert entry["parity"]["status"] == "pass" or "top-1 agreement" in " ".join(entry["parity"]["failures"])
    xml = root / SPEC / entry["path"]
    model = runtimes.load(xml, "openvino")
    assert model.computes == "int8"
    assert model.input_name == "image" and model.output_names == ("probabilities",)
    if bf16_here():  # both precision hints run NNCF's graph with int8 kernels
        row = entry["rows"]["openvino-int8@openvino-bf16"]
        assert row["computes"] == "int8" and row["differing_from_primary"] == 0
    # Weights replaced on their own: the graph records their sha256, so loading refuses.
    copy = tmp_path / "model.int8.xml"
    shutil.copy(xml, copy)
    weights = bytearray((xml.with_suffix(".bin")).read_bytes())
    weights[-1] ^= 1
    copy.with_suffix(".bin").write_bytes(bytes(weights))
    with pytest.raises(ArtifactError, match="not the weights model.int8.xml was exported with"):
        runtimes.load(copy, "openvino")


# ---------------------------------------------------------------- refusals: one line, documented exit


@needs_openvino
def test_a_file_openvino_cannot_compile_at_its_default_is_one_line_exit_4(ov_root, dataset, tmp_path):
    from conftest import png

    if not bf16_here():
        pytest.skip("no native bf16 here: OpenVINO's default is float32, which compiles the file")
    root, _, _ = ov_root
    image = tmp_path / "one.png"
    image.write_bytes(png(dataset.x_test[0]))
    qdq = root / SPEC / "export" / "model.int8.onnx"
    result = invoke("predict", qdq, image, "--runtime", "openvino-bf16")
    assert result.exit_code == 4, result.output
    assert "No suitable implementations" in result.output and "--runtime openvino" in result.output
    assert "Traceback" not in result.output
    ok = invoke("predict", qdq, image, "--runtime", "openvino", "--json")
    assert ok.exit_code == 0 and json.loads(ok.output)[0]["class"]


@needs_openvino
def test_not_a_model_and_an_unsupported_device_are_one_line_each(tmp_path):
    from toolkit import runtimes
    from toolkit.core.errors import ArtifactError, DeviceUnavailableError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ArtifactError, match="not an ONNX model OpenVINO can read") as info:
        runtimes.load(bad, "openvino")
    assert info.value.exit_code == 4 and "\n" not in info.value.message
    with pytest.raises(DeviceUnavailableError, match="CPU plugin only") as info:
        runtimes.load(bad, "openvino", device="gpu")
    assert info.value.exit_code == 6 and "\n" not in info.value.message


def test_missing_openvino_is_one_line_and_exit_6(ov_root, tmp_path):
    from PIL import Image

    root, _, _ = ov_root
    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    done = run_cli_without_openvino("predict", root / SPEC / "export" / "model.fp32.onnx", "x.png",
                                    "--runtime", "openvino", cwd=tmp_path)
    assert done.returncode == 6, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "openvino" in lines[0] and "pip install -e '.[openvino]'" in lines[0], done.stderr
    bench = run_cli_without_openvino("bench", "--runtime", "openvino", "--artifacts", root, cwd=tmp_path)
    assert bench.returncode == 6 and "pip install" in bench.stderr, bench.stderr


def test_without_openvino_parity_skips_its_rows_and_the_other_rows_run(ov_root, tmp_path):
    source, _, _ = ov_root
    root = tmp_path / "artifacts"
    shutil.copytree(source / SPEC, root / SPEC)
    done = run_cli_without_openvino("parity", "--exp", SPEC, "--format", "onnx-fp32", "--artifacts", root,
                                    cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join(done.stdout.split())
    assert "onnx-fp32@openvino skipped: openvino is not installed here" in said
    assert "onnx-fp32@openvino-bf16 skipped" in said
    assert entries(root)["onnx-fp32"]["parity"]["status"] == "pass"  # ONNX Runtime's row still ran


# ---------------------------------------------------------------- bench, report, serve


@needs_openvino
def test_bench_and_report_rows_state_precision_settings_and_their_own_parity(ov_root, tmp_path):
    source, _, _ = ov_root
    root = tmp_path / "artifacts"
    shutil.copytree(source / SPEC, root / SPEC)
    bench = invoke("bench", "--exp", SPEC, "--artifacts", root, "--runtime",
                   "openvino,openvino-bf16,onnxruntime", "--format", "onnx-fp32", "--format", "openvino-int8",
                   "--batch", "1,16", "--threads", "1", "--seconds", "0.1", "--repeats", "1")
    assert bench.exit_code == 0, bench.output
    (path,) = (root / "bench").glob("*-inference-*.json")
    doc = json.loads(path.read_text())
    assert {"openvino-fp32", "openvino-int8"} <= set(doc["peaks"])
    results = [r for r in doc["results"] if r["runtime"].startswith("openvino")]
    for r in results:
        assert r["openvino"]["NUM_STREAMS"] == 1 and r["openvino"]["PERFORMANCE_HINT"] == "LATENCY"
        assert r["openvino"]["INFERENCE_NUM_THREADS"] == 1 and r["isa"] and r["computes"]
        assert r["peak_kind"] == f"openvino-{r['computes']}" and r["pct_of_peak"] > 0
    fp32 = [r for r in results if r["key"] == "onnx-fp32"]
    assert {r["computes"] for r in fp32} == ({"fp32", "bf16"} if bf16_here() else {"fp32"})
    report = invoke("report", "--artifacts", root)
    assert report.exit_code == 0, report.output
    from toolkit.report.build import build_report

    rep = build_report(root)
    rows = {(r.key, r.runtime): r for r in rep.rows}
    exports = entries(root)
    primary = exports["onnx-fp32"]["parity"]
    assert rows[("onnx-fp32", "onnxruntime")].accuracy == primary["test_accuracy"]
    assert rows[("onnx-fp32", "openvino")].computes == "fp32"
    assert rows[("openvino-int8", "openvino")].computes == "int8"
    assert rows[("onnx-fp32", "openvino")].settings["INFERENCE_PRECISION_HINT"] == "f32"
    if bf16_here():
        bf16 = rows[("onnx-fp32", "openvino-bf16")]
        own = exports["onnx-fp32"]["rows"]["onnx-fp32@openvino-bf16"]
        # Its own parity row's accuracy and predictions, never the ONNX Runtime row's.
        assert bf16.computes == "bf16" and bf16.accuracy == own["test_accuracy"] and bf16.parity == "pass"
        assert bf16.peak_kind == "openvino-bf16" and "(bf16)" in bf16.label
    csv = (root / "report.csv").read_text().splitlines()
    assert "computes" in csv[0] and "peak_kind" in csv[0] and "runtime_settings" in csv[0]


@needs_openvino
def test_serve_runtime_openvino_starts_and_classifies(served_root, dataset, tmp_path):
    import httpx
    from conftest import SERVE_SPEC, png

    from toolkit.core.errors import UsageError
    from toolkit.serve.loading import choose_export
    from toolkit.serve.process import spawn

    root = tmp_path / "artifacts"
    shutil.copytree(served_root / SERVE_SPEC, root / SERVE_SPEC)
    choice = choose_export(SERVE_SPEC, root, runtime="openvino")
    assert choice.runtime == "openvino" and choice.parity["row"] == "onnx-fp32@openvino"
    with pytest.raises(UsageError, match="does not run onnx files") as info:
        choose_export(SERVE_SPEC, root, format="onnx", runtime="litert")
    assert info.value.exit_code == 2
    args = ["--exp", SERVE_SPEC, "--artifacts", str(root), "--runtime", "openvino", "--no-similar"]
    with spawn(args) as server:
        answer = httpx.post(server.url + "/v1/classify",
                            files={"image": ("t.png", png(dataset.x_test[0]), "image/png")})
        assert answer.status_code == 200, answer.text
        model = httpx.get(server.url + "/v1/model").json()
    from toolkit import CLASS_NAMES, runtimes
    from toolkit.core.data import to_model_input

    expected = runtimes.load(root / SERVE_SPEC / "export" / "model.fp32.onnx", "onnxruntime")
    top1 = int(expected.run(to_model_input(dataset.x_test[:1])).argmax())
    assert answer.json()["class"] == CLASS_NAMES[top1]
    assert model["classifier"]["runtime"] == "openvino" and model["classifier"]["computes"] == "fp32"
    assert model["classifier"]["parity"]["row"] == "onnx-fp32@openvino"
    assert "on openvino [OpenVINO" in server.log and "onnx-fp32@openvino" in server.log
