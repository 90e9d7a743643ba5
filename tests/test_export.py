"""Export: registry, every format and precision on a trained spec, CLI behaviour and failures."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import conftest
import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.cli.app import app

runner = CliRunner()
SPEC = "DNN_2L_Dropout_Exp2"  # the fastest trained spec to convert


def copy_spec(trained_root: Path, tmp: Path, name: str = SPEC) -> Path:
    return conftest.copy_spec(trained_root, tmp, name)


@pytest.fixture(scope="module")
def exported(trained_root, tmp_path_factory, dataset):
    """SPEC exported to every format and precision through the CLI, parity included."""
    root = copy_spec(trained_root, tmp_path_factory.mktemp("export"))
    result = runner.invoke(app, ["export", "--exp", SPEC, "--format", "all", "--precision", "all",
                                 "--artifacts", str(root)])
    return root, result


# ---------------------------------------------------------------- registry


def test_registry_lists_every_format_and_precision():
    from toolkit.export.registry import FORMATS, PRECISIONS, select

    # Every format in every precision, except int8io, which is TFLite only (the microcontroller build),
    # and the C source for TFLite Micro firmware, made from the int8io file.
    files = {f"{f}-{p}" for f in ("onnx", "tflite") for p in PRECISIONS} - {"onnx-int8io"}
    # ... and OpenVINO's int8 IR (NNCF), the one precision OpenVINO needs a file of its own for.
    # ... and the opt-in flip test-time-augmentation variants (`--tta`), never part of `all`.
    tta = {k for k, f in FORMATS.items() if f.tta}
    assert tta == {"onnx-tta", "tflite-int8-tta"}
    assert set(FORMATS) - tta == files | {"tflm-c", "openvino-int8"}
    assert [f.key for f in select(None, None)] == ["onnx-fp32", "tflite-fp32"]
    assert len(select(["all"], ["all"])) == 11
    assert [f.key for f in select(["openvino"], None)] == ["openvino-int8"]  # its one precision
    assert [f.key for f in select(None, ["int8io"])] == ["tflite-int8io", "tflm-c"]
    assert [f.key for f in select(["c"], None)] == ["tflm-c"]  # its one precision, without --precision
    assert [f.key for f in select(["tflite"], ["int8,dynamic"])] == ["tflite-int8", "tflite-dynamic"]
    for fmt in FORMATS.values():
        assert callable(fmt.exporter_fn())
        if fmt.source:
            assert FORMATS[fmt.source].precision == fmt.precision and not fmt.runtimes
            continue
        if fmt.tta:  # named after its base export, with ".tta" before the suffix
            assert fmt.filename == f"model.{fmt.precision}.tta{fmt.suffix}"
            continue
        assert fmt.key == f"{fmt.format}-{fmt.precision}"
        assert fmt.filename == f"model.{fmt.precision}{fmt.suffix}"


@pytest.mark.parametrize("formats,precisions,bad", [(["keras"], None, "format 'keras'"),
                                                      (["onnx"], ["int4"], "precision 'int4'")])
def test_registry_rejects_unknown_names_listing_valid(formats, precisions, bad):
    from toolkit.core.errors import UsageError
    from toolkit.export.registry import select

    with pytest.raises(UsageError, match=bad) as info:
        select(formats, precisions)
    assert "valid:" in info.value.message


def test_registry_and_runtimes_do_not_import_tensorflow():
    code = ("import sys, toolkit.export.registry, toolkit.runtimes, toolkit.export.parity, "
            "toolkit.runtimes.predict, toolkit.cli.app; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


# ---------------------------------------------------------------- every format and precision


def test_export_all_formats_and_precisions(exported):
    from toolkit.core import artifacts
    from toolkit.export.registry import FORMATS

    root, result = exported
    arts = artifacts.spec_artifacts(SPEC, root)
    doc = json.loads(arts.exports_json.read_text())
    assert doc["schema_version"] == 3
    entries = {e["key"]: e for e in doc["exports"]}
    assert set(entries) == {k for k, f in FORMATS.items() if not f.tta}, result.output  # tta: opt-in
    source = artifacts.sha256_file(arts.model)
    c_source = entries.pop("tflm-c")  # made from tflite-int8io's file: its parity is that file's
    assert c_source["status"] == "exported" and c_source["settings"]["source"] == {
        "key": "tflite-int8io", "sha256": entries["tflite-int8io"]["sha256"]}
    assert [f["path"] for f in c_source["files"]] == [f"export/tflm/{n}" for n in
                                                       ("model_data.h", "model_data.cc", "model_ops.h")]
    assert all(f["sha256"] == artifacts.sha256_file(arts.dir / f["path"]) for f in c_source["files"])
    for key, e in entries.items():
        path = arts.dir / e["path"]
        assert e["status"] == "exported", (key, e.get("error"))
        assert path.name == FORMATS[key].filename and path.parent == arts.export_dir
        assert e["size_bytes"] == artifacts.model_bytes(path) > 0  # an IR's .bin counts too
        assert e["sha256"] == artifacts.sha256_file(path)
        assert e["source_model_sha256"] == source
        assert e["parity"]["status"] in ("pass", "fail") and e["parity"]["images"] == 10_000
        assert e["parity"]["sha256"] == e["sha256"]  # parity names the very file it checked
        if e["precision"] in ("int8", "int8io"):
            assert e["calibration"] == {"size": 1000, "seed": 0, "source": "training images"}
        # The tensor arena sits next to the size, for every TFLite file.
        assert (e["arena_bytes"] > 0) if e["format"] == "tflite" else ("arena_bytes" not in e)
    # fp32 must match Keras; quantized variants are smaller than fp32.
    for fmt in ("onnx", "tflite"):
        assert entries[f"{fmt}-fp32"]["parity"]["status"] == "pass", result.output
        for prec in ("fp16", "int8", "dynamic"):
            assert entries[f"{fmt}-{prec}"]["size_bytes"] < entries[f"{fmt}-fp32"]["size_bytes"]
    assert entries["tflite-int8io"]["size_bytes"] <= entries["tflite-int8"]["size_bytes"]
    # int8 activations: a smaller arena than float32's (the persistent structures are the same).
    assert entries["tflite-int8io"]["arena_bytes"] < entries["tflite-fp32"]["arena_bytes"]
    if importlib.util.find_spec("tflite_micro") is not None:
        for key in ("tflite-int8", "tflite-int8io"):  # TFLM measured them; the estimate is within 10%
            arena = entries[key]["arena"]
            assert arena["sha256"] == entries[key]["sha256"] and arena["reported"] > 0
            assert abs(entries[key]["arena_bytes"] - arena["minimum"]) <= 0.1 * arena["minimum"], arena
            assert arena["recommended"] >= arena["minimum"] and arena["recommended"] % 16 == 0
    parity = json.loads(arts.parity_json.read_text())
    assert parity["test_images"] == 10_000 and {r["key"] for r in parity["exports"]} == set(entries)
    assert parity["schema_version"] == 3
    assert all(r["sha256"] == entries[r["key"]]["sha256"] for r in parity["exports"])
    # One row per file and runtime: each file's primary runtime, and every other runtime of its
    # format that can run here (TFLM for the full-integer files, OpenVINO for ONNX files, ...).
    from toolkit import runtimes

    ran = {(r["key"], r["runtime"]) for r in parity["exports"]}
    assert ran == {(k, rt) for k in entries for i, rt in enumerate(FORMATS[k].runtimes)
                   if i == 0 or runtimes.get_runtime(rt).available()}
    assert set(entries) <= {r["row"] for r in parity["exports"]}  # primary rows keep the key
    # The exit code follows the results: 0 if all passed, 5 if a (quantized) check failed.
    failed = [r["row"] for r in parity["exports"] if not r["passed"]]
    assert result.exit_code == (5 if failed else 0), result.output
    for row in failed:
        assert f"{SPEC}/{row}" in result.output.replace("\n", "")
    assert "passed" in result.output


def test_onnx_contract_metadata_and_dynamic_batch(exported, test_batch):
    import onnx
    import onnxruntime as ort

    root, _ = exported
    images, _ = test_batch
    for prec in ("fp32", "fp16", "int8", "dynamic"):
        path = root / SPEC / "export" / f"model.{prec}.onnx"
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        (inp,), (out,) = proto.graph.input, proto.graph.output
        assert inp.name == "image" and out.name == "probabilities"
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == ["batch", 28, 28, 1]
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["spec_name"] == SPEC and meta["class_names"].split(",")[0] == "T-shirt/top"
        assert {"preprocessing", "source_model_sha256", "toolkit_version", "converter"} <= set(meta)
        assert meta["precision"] == prec
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for n in (1, 7):
            probs = session.run(None, {"image": images[:n]})[0]
            assert probs.shape == (n, 10) and np.allclose(probs.sum(1), 1, atol=1e-2)
        ops = {n.op_type for n in proto.graph.node}
        assert "Transpose" not in ops
        if prec == "int8":
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        if prec == "dynamic":
            assert "MatMulInteger" in ops


def test_tflite_contract_and_variants(exported, test_batch):
    from ai_edge_litert import interpreter as litert

    from toolkit import runtimes

    root, _ = exported
    images, _ = test_batch
    for prec in ("fp32", "fp16", "int8", "dynamic"):
        path = root / SPEC / "export" / f"model.{prec}.tflite"
        interp = litert.Interpreter(model_path=str(path))
        assert interp.get_signature_list() == {
            "serving_default": {"inputs": ["image"], "outputs": ["probabilities"]}}
        inp = interp.get_input_details()[0]
        assert list(inp["shape_signature"]) == [-1, 28, 28, 1] and inp["dtype"] == np.float32
        assert interp.get_output_details()[0]["dtype"] == np.float32
        tensor_types = {t["dtype"] for t in interp.get_tensor_details()}
        if prec == "int8":
            assert np.int8 in tensor_types  # full integer inside, float32 at the edges
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        assert meta["spec_name"] == SPEC and meta["precision"] == prec
        model = runtimes.load(path, "litert")
        assert model.input_name == "image" and model.output_names == ("probabilities",)
        assert model.run(images[:5]).shape == (5, 10)


def test_int8io_file_has_int8_io_its_quantization_in_metadata_and_runs_as_float(exported, test_batch):
    """The microcontroller build: int8 in and out, scale/zero point in its metadata (equal to the
    file's own), and every runtime consumer quantizes/dequantizes with them."""
    from ai_edge_litert import interpreter as litert

    from toolkit import runtimes
    from toolkit.core.contract import INT8_CLASSIFIER

    root, _ = exported
    images, _ = test_batch
    path = root / SPEC / "export" / "model.int8io.tflite"
    interp = litert.Interpreter(model_path=str(path))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    quant = meta["io_quantization"]
    assert (quant["input"]["scale"], quant["input"]["zero_point"]) == pytest.approx(inp["quantization"])
    assert (quant["output"]["scale"], quant["output"]["zero_point"]) == pytest.approx(out["quantization"])
    assert meta["arena_bytes"] > 0 and meta["preprocessing"] == INT8_CLASSIFIER.preprocessing
    model = runtimes.load(path)  # the default contract: accepted as the documented exception
    assert model.quantized_io and model.input_dtype == "int8"
    probs = model.run(images[:16])
    assert probs.dtype == np.float32 and probs.shape == (16, 10)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=0.05)
    # The same numbers by hand: q = round(x / s) + z, then (q - z) * s on the way out.
    s_in, z_in = inp["quantization"]
    q = np.clip(np.round(images[:16] / s_in) + z_in, -128, 127).astype(np.int8)
    interp.resize_tensor_input(inp["index"], [16, 28, 28, 1])
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], q)
    interp.invoke()
    s_out, z_out = out["quantization"]
    by_hand = (interp.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out
    np.testing.assert_allclose(probs, by_hand, atol=1e-7)
    # A float-I/O file is never taken for an int8-I/O one.
    assert not runtimes.load(root / SPEC / "export" / "model.int8.tflite").quantized_io


def test_int8io_file_predicts_and_benchmarks_through_its_quantization(exported, test_batch, tmp_path):
    from PIL import Image

    from toolkit import runtimes
    from toolkit.benchmark.plan import BenchCase

    root, _ = exported
    images, _ = test_batch
    path = root / SPEC / "export" / "model.int8io.tflite"
    png = tmp_path / "item.png"
    Image.fromarray((images[3, ..., 0] * 255).round().astype(np.uint8), "L").save(png)
    result = runner.invoke(app, ["predict", str(path), str(png), "--json"])
    assert result.exit_code == 0, result.output
    expected = runtimes.load(path).run(images[3:4])[0]
    assert json.loads(result.output)[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-6)
    case = BenchCase(spec=SPEC, key="tflite-int8io", format="tflite", precision="int8io", runtime="litert",
                     device="cpu", batch=1, threads=1, path=str(path), size_bytes=path.stat().st_size,
                     sha256=None, parity="unknown", trained=True)
    from toolkit.benchmark import context, inference

    ctx = context.BenchContext(root=root, images=images, inputs_source="real test images", seconds=0.05)
    bench = inference.run_case(case, ctx)
    assert bench.timed and bench.stats.p50_ms > 0 and "quantized before timing" in bench.notes["io_encoding"]
    from toolkit.benchmark.inference_results import InferenceResult

    # Its notes stay notes: none of them overwrites a field of the case when the record is read back.
    assert InferenceResult.from_dict(bench.to_dict(), path=tmp_path / "r.json") == bench
    check = bench.check
    assert check["top1_checked"] and check["top1_mismatches"] <= 0.05 * check["top1_compared"]


@pytest.mark.slow
def test_cnn_onnx_graph_has_no_transposes_and_matches_keras(test_batch, tmp_path):
    """A freshly built two-conv CNN: the NHWC layout shuffles are folded away, values unchanged."""
    import onnx
    import onnxruntime as ort

    from toolkit.export.onnx import keras_to_onnx, op_counts
    from toolkit.specs import get_spec
    from toolkit.specs.models import build_model

    model = build_model(get_spec("CNN_2L_No_Dropout_Exp1"))
    path = tmp_path / "cnn.onnx"
    keras_to_onnx(model, path, metadata={"spec_name": "CNN_2L_No_Dropout_Exp1"})
    counts = op_counts(path)
    assert "Transpose" not in counts and counts["Conv"] == 2, counts
    assert not {"Shape", "Gather", "Concat"} & set(counts)  # Flatten is one constant Reshape
    images, _ = test_batch
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]
    np.testing.assert_allclose(got, model(images, training=False).numpy(), atol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["spec_name"] == "CNN_2L_No_Dropout_Exp1" and meta["converter"].startswith("tf2onnx")


def test_keras_to_onnx_exports_any_single_output_model(trained_root, tmp_path, test_batch):
    """The embedding sub-model (any output name) converts with the same function."""
    import onnxruntime as ort

    from toolkit.export.onnx import keras_to_onnx
    from toolkit.specs.models import embedding_model, load_model

    model = embedding_model(load_model(trained_root / SPEC / "model.keras"))
    path = tmp_path / "embedding.onnx"
    keras_to_onnx(model, path, output_name="embedding")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["embedding"]
    images, _ = test_batch
    np.testing.assert_allclose(session.run(None, {"image": images})[0], model(images).numpy(), atol=1e-4)


# ---------------------------------------------------------------- CLI behaviour


def test_unchanged_exports_are_skipped_unless_forced(exported):
    root, _ = exported
    path = root / SPEC / "export" / "model.fp32.onnx"
    before = path.stat().st_mtime_ns
    result = runner.invoke(app, ["export", "--exp", SPEC, "--format", "onnx", "--artifacts", str(root)])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and path.stat().st_mtime_ns == before
    result = runner.invoke(app, ["export", "--exp", SPEC, "--format", "onnx", "--force",
                                 "--artifacts", str(root)])
    assert result.exit_code == 0, result.output
    assert path.stat().st_mtime_ns != before


def test_export_refuses_untrained_spec_naming_train_command(tmp_path):
    result = runner.invoke(app, ["export", "--exp", "CNN_3L_Dropout_Exp5", "--artifacts", str(tmp_path)])
    assert result.exit_code == 4
    assert "toolkit train --exp CNN_3L_Dropout_Exp5" in result.output
    assert "Traceback" not in result.output


def test_export_with_nothing_trained_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["export", "--artifacts", str(tmp_path)])
    assert result.exit_code == 2 and "no trained specs" in result.output


@pytest.mark.parametrize("args,needle", [
    (["--format", "coreml"], "valid: onnx, tflite"),
    (["--precision", "int4"], "valid: fp32, fp16, int8, dynamic, int8io"),
    (["--format", "onnx", "--precision", "int8io"], "unsupported export onnx-int8io"),
    (["--format", "onnx", "--opset", "7"], "--opset 7 is not supported"),
])
def test_bad_options_are_rejected_before_any_work(trained_root, tmp_path, args, needle):
    root = copy_spec(trained_root, tmp_path)
    result = runner.invoke(app, ["export", "--exp", SPEC, "--artifacts", str(root), *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not (root / SPEC / "export").exists() and not (root / SPEC / "exports.json").exists()


def test_one_broken_converter_does_not_stop_the_others(trained_root, tmp_path, monkeypatch):
    import toolkit.export.tflite

    def broken(*args, **kwargs):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(toolkit.export.tflite, "to_tflite", broken)
    root = copy_spec(trained_root, tmp_path)
    result = runner.invoke(app, ["export", "--exp", SPEC, "--format", "all", "--artifacts", str(root)])
    assert result.exit_code == 7, result.output
    assert "export failed for DNN_2L_Dropout_Exp2/tflite-fp32" in result.output.replace("\n", "")
    entries = {e["key"]: e for e in json.loads((root / SPEC / "exports.json").read_text())["exports"]}
    assert entries["tflite-fp32"]["status"] == "failed"
    assert "converter exploded" in entries["tflite-fp32"]["error"]
    assert entries["onnx-fp32"]["status"] == "exported"
    assert entries["onnx-fp32"]["parity"]["status"] == "pass"
    assert "export failed" in result.output and "passed" in result.output
    assert not (root / SPEC / "export" / "model.fp32.tflite").exists()


def test_corrupted_model_keras_is_one_line_and_nothing_is_written(trained_root, tmp_path):
    root = copy_spec(trained_root, tmp_path)
    model = root / SPEC / "model.keras"
    model.unlink()  # a hard link to the run's file: replace, never write through it
    model.write_bytes(b"PK\x03\x04 this is not a keras archive")
    result = runner.invoke(app, ["export", "--exp", SPEC, "--artifacts", str(root)])
    assert result.exit_code == 4, result.output
    assert "model.keras" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (root / SPEC / "exports.json").exists()
    assert not any((root / SPEC / "export").glob("*")) if (root / SPEC / "export").exists() else True


def test_export_is_a_stage_of_the_pipeline():
    from toolkit.experiments.pipeline import STAGES

    assert [s.name for s in STAGES][:2] == ["train", "export"]


# ---------------------------------------------------------------- the must-show (slow)


@pytest.mark.slow
def test_every_spec_fp32_export_passes_parity(dataset, tmp_path):
    """Every spec, freshly built: ONNX and TFLite fp32 agree with Keras on the 10k test set."""
    from toolkit.core.data import to_model_input
    from toolkit.export import onnx as onnx_export
    from toolkit.export import parity
    from toolkit.export import tflite as tflite_export
    from toolkit.specs import SPECS
    from toolkit.specs.models import build_model

    images, labels = to_model_input(dataset.x_test), dataset.y_test
    rows = []
    for name, spec in SPECS.items():
        model = build_model(spec)
        reference = parity.run_batched(lambda b, m=model: m(b, training=False).numpy(), images)
        targets = (("onnx", onnx_export, "onnxruntime"), ("tflite", tflite_export, "litert"))
        for fmt, module, runtime in targets:
            path = tmp_path / f"{name}.fp32.{fmt}"
            module.export(model, path, precision="fp32")
            if fmt == "onnx":
                assert "Transpose" not in onnx_export.op_counts(path), name
            result = parity.check_file(path, key=f"{fmt}-fp32", precision="fp32", runtime=runtime,
                                       reference=reference, images=images, labels=labels)
            rows.append({"spec": name, "key": result.key, "status": result.status,
                         "agreement": result.agreement, "max_abs_diff": result.max_abs_diff,
                         "failures": result.failures})
            path.unlink()
    if os.environ.get("TOOLKIT_PARITY_REPORT"):  # where to keep the table for the record
        Path(os.environ["TOOLKIT_PARITY_REPORT"]).write_text(json.dumps(rows, indent=2))
    failed = [r for r in rows if r["status"] != "pass"]
    assert not failed, failed
    assert len(rows) == 2 * len(SPECS)
